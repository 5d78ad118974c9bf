//! The modules built into the binary, and the mix a fresh data directory starts with.

use std::collections::BTreeMap;

use usm_engine::{Installed, ModuleFiles, Registry, RegistryError};
use usm_model::Actor;

/// A module built into the binary: its directory name and files.
pub struct BundledModule {
    /// The directory it was built from, e.g. `itil4`.
    pub dir: &'static str,
    /// Its files, by path inside the module.
    pub files: &'static [(&'static str, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// Where each bundled module is enabled on a fresh data directory, and what it is granted:
/// `it` runs USM with ITIL 4, COBIT 2019 and ISO/IEC 20000; `hr` runs USM with the HR module and
/// COBIT 2019; `facilities` runs USM with the facilities module.
pub const DEFAULT_MIX: &[(&str, &[&str], &[&str])] = &[
    ("usm-core", &["it", "hr", "facilities"], &[]),
    ("itil4", &["it"], &["records:read"]),
    ("cobit2019", &["it", "hr"], &[]),
    ("iso20000", &["it"], &[]),
    ("hr", &["hr"], &[]),
    ("facilities", &["facilities"], &[]),
];

/// The settings key recording that the default mix was applied once.
const MIX_APPLIED: &str = "bundled/mix-applied";

/// Installs the bundled modules (or upgrades older installed versions); on a fresh data
/// directory, also enables the default mix in the configured domains.
pub fn install(
    registry: &Registry,
    store: &dyn usm_store::Store,
    domains: &[String],
) -> Result<(), RegistryError> {
    let system = Actor::new("system", [usm_model::Role::Admin]);
    for module in BUNDLED {
        let files: ModuleFiles = module
            .files
            .iter()
            .map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec()))
            .collect::<BTreeMap<_, _>>();
        match registry.install(&system, files) {
            Ok((info, Installed::Installed)) => {
                tracing::info!(module = %info.id, version = %info.version, "bundled module installed")
            }
            Ok((info, Installed::Upgraded { from })) => {
                tracing::info!(module = %info.id, version = %info.version, %from, "bundled module upgraded");
            }
            Ok((_, Installed::Unchanged)) => {}
            // An admin installed a newer version: keep it.
            Err(RegistryError::NotNewer { id, installed, .. }) => {
                tracing::info!(module = %id, %installed, "keeping the newer installed version of a bundled module");
            }
            Err(error) => return Err(error),
        }
    }
    if store.setting(MIX_APPLIED)?.is_some() {
        return Ok(());
    }
    for (id, wanted, grants) in DEFAULT_MIX {
        let enabled: Vec<String> = wanted
            .iter()
            .filter(|d| domains.iter().any(|c| c == *d))
            .map(|d| (*d).to_owned())
            .collect();
        if enabled.is_empty() {
            continue;
        }
        let grants = (!grants.is_empty()).then(|| grants.iter().map(|g| (*g).to_owned()).collect());
        registry.enable(&system, id, &enabled, grants)?;
    }
    store.write_settings(&[(MIX_APPLIED.to_owned(), b"1".to_vec())], &[])?;
    tracing::info!("default module mix enabled");
    Ok(())
}

/// The teams the bundled modules and automations assign records to, by domain: created (without
/// members) on a fresh data directory, since an assignment must name a group of the record's
/// domain. Admins add the people.
pub const DEFAULT_GROUPS: &[(&str, &str, &str)] = &[
    ("service-desk", "it", "Service desk"),
    ("major-incident-team", "it", "Major incident team"),
    ("change-authority", "it", "Change authority"),
    ("facilities-helpdesk", "facilities", "Facilities helpdesk"),
    ("site-hq", "facilities", "HQ site team"),
    ("site-lab", "facilities", "Lab site team"),
    ("site-logistics", "facilities", "Warehouse site team"),
    ("it-identity", "it", "Identity and access"),
    ("it-workplace", "it", "Workplace IT"),
    ("facilities-workplace", "facilities", "Workplace services"),
    ("facilities-security", "facilities", "Security and badges"),
];

/// The settings key listing the default groups created so far (one id per line).
const GROUPS_CREATED: &str = "bundled/groups-created";

/// Creates the default groups of the configured domains that were never created on this data
/// directory: a group added to the defaults in a later version is created on upgrade, and one
/// an admin deleted stays deleted.
pub fn default_groups(engine: &usm_engine::Engine, domains: &[String]) -> anyhow::Result<()> {
    let store = engine.store();
    let created = store.setting(GROUPS_CREATED)?.unwrap_or_default();
    let created = String::from_utf8_lossy(&created).into_owned();
    // Before groups were listed here, the key held "1" once the first seven defaults existed.
    const LISTED_SINCE: usize = 7;
    let mut known: Vec<String> = if created == "1" {
        DEFAULT_GROUPS[..LISTED_SINCE]
            .iter()
            .map(|(id, ..)| (*id).to_owned())
            .collect()
    } else {
        created.lines().map(str::to_owned).collect()
    };
    let system = Actor::new("system", [usm_model::Role::Admin]);
    let mut changed = created == "1";
    for (id, domain, name) in DEFAULT_GROUPS {
        if !domains.iter().any(|d| d == domain) || known.iter().any(|k| k == id) {
            continue;
        }
        let new = usm_directory::NewGroup {
            id: (*id).to_owned(),
            name: (*name).to_owned(),
            domain: (*domain).to_owned(),
            members: Vec::new(),
        };
        match engine.directory().create_group(&system, new) {
            Ok(_) | Err(usm_directory::DirectoryError::Taken(_)) => {}
            Err(error) => return Err(error.into()),
        }
        known.push((*id).to_owned());
        changed = true;
    }
    if changed {
        store.write_settings(
            &[(GROUPS_CREATED.to_owned(), known.join("\n").into_bytes())],
            &[],
        )?;
    }
    Ok(())
}

/// The settings key recording that the default agreements were created.
const AGREEMENTS_CREATED: &str = "bundled/agreements-created";

/// Creates and activates a standard service agreement in each domain, once per data directory,
/// so SLA clocks run out of the box.
pub fn default_agreements(engine: &usm_engine::Engine, domains: &[String]) -> anyhow::Result<()> {
    let store = engine.store();
    if store.setting(AGREEMENTS_CREATED)?.is_some() {
        return Ok(());
    }
    let system = Actor::new("system", [usm_model::Role::Admin]);
    let weekday = serde_json::json!(["08:00-18:00"]);
    for domain in domains {
        let new: usm_engine::NewRecord = serde_json::from_value(serde_json::json!({
            "kind": "agreement",
            "domain": domain,
            "title": format!("Standard service agreement ({domain})"),
            "fields": {
                "agreement_type": "sla",
                "description": "Default targets per priority: P1 around the clock, the others in business hours; the clocks pause only while a record is on hold awaiting the customer. Adjust or replace.",
                "targets": {
                    "P1": {"response_minutes": 15, "resolution_minutes": 240, "around_the_clock": true},
                    "P2": {"response_minutes": 30, "resolution_minutes": 480},
                    "P3": {"response_minutes": 120, "resolution_minutes": 1440},
                    "P4": {"response_minutes": 240, "resolution_minutes": 2880},
                    "P5": {"response_minutes": 480, "resolution_minutes": 4800},
                    "default": {"response_minutes": 240, "resolution_minutes": 2880}
                },
                "calendar": {"timezone": "UTC", "weekly": {"mon": weekday, "tue": weekday, "wed": weekday, "thu": weekday, "fri": weekday}},
                "pause_states": ["on_hold"],
                "pause_reasons": ["awaiting_customer"],
                "applies_to": ["incident", "request"],
                "warning_percent": 75
            }
        }))?;
        let created = engine.create(&system, new, None)?;
        engine.transition(
            &system,
            created.record.id.as_str(),
            "active",
            Some("default agreement".into()),
            None,
        )?;
        tracing::info!(domain = %domain, agreement = %created.record.id, "default service agreement created");
    }
    store.write_settings(&[(AGREEMENTS_CREATED.to_owned(), b"1".to_vec())], &[])?;
    Ok(())
}

/// The definition file of a bundled automation (the script is its own file).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AutomationFile {
    #[serde(default)]
    description: String,
    trigger: usm_script_host::automation::Trigger,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    config: toml::Table,
}

/// Defines the bundled automations (replacing earlier definitions of the same ids).
pub fn define_automations(
    automations: &usm_script_host::automation::Automations,
) -> anyhow::Result<()> {
    let system = usm_model::Actor::new("system", [usm_model::Role::Admin]);
    for (id, definition, script) in BUNDLED_AUTOMATIONS {
        let file: AutomationFile =
            toml::from_str(definition).map_err(|e| anyhow::anyhow!("automation {id}: {e}"))?;
        automations
            .define(
                &system,
                usm_script_host::automation::AutomationSpec {
                    id: (*id).to_owned(),
                    description: file.description,
                    trigger: file.trigger,
                    script: (*script).to_owned(),
                    domains: file.domains,
                    config: serde_json::from_value(serde_json::to_value(file.config)?)?,
                },
            )
            .map_err(|e| anyhow::anyhow!("automation {id}: {e}"))?;
    }
    Ok(())
}
