//! What the modules enabled in a domain add to its notifications: rules and template sets a
//! module declares in `module.toml` (`[[notification_rules]]`, `[[notification_templates]]`).
//! They sit between the built-in defaults and what the domain's admins write: a module's rule
//! with a default's id replaces that default, a module's template set with a built-in name
//! replaces the built-in, and an admin's own rule or set replaces the module's.

use usm_engine::{Manifest, ManifestCheck, ModuleError, Registry};
use usm_model::Domain;

use crate::{NotifyError, Rule, TemplateSet, templates};

/// Most notification rules of one module.
const MAX_RULES: usize = 50;
/// Most notification template sets of one module.
const MAX_TEMPLATES: usize = 100;

/// The rules and template sets of the modules enabled in one domain, by module.
#[derive(Debug, Clone, Default)]
pub struct ModuleNotifications {
    /// Each rule with its module.
    pub rules: Vec<(String, Rule)>,
    /// Each template set with its module.
    pub templates: Vec<(String, TemplateSet)>,
}

fn parsed(manifest: &Manifest) -> Result<(Vec<Rule>, Vec<TemplateSet>), ModuleError> {
    let error = |location: String, message: String| ModuleError { location, message };
    if manifest.notification_rules.len() > MAX_RULES {
        return Err(error(
            "module.toml: notification_rules".into(),
            format!("at most {MAX_RULES} rules"),
        ));
    }
    if manifest.notification_templates.len() > MAX_TEMPLATES {
        return Err(error(
            "module.toml: notification_templates".into(),
            format!("at most {MAX_TEMPLATES} template sets"),
        ));
    }
    let mut sets = Vec::with_capacity(manifest.notification_templates.len());
    for (at, value) in manifest.notification_templates.iter().enumerate() {
        let location = format!("module.toml: notification_templates[{at}]");
        let set: TemplateSet = serde_json::from_value(value.clone())
            .map_err(|e| error(location.clone(), e.to_string()))?;
        set.check().map_err(|e| match e {
            NotifyError::Invalid { field, message } => error(format!("{location}{field}"), message),
            other => error(location.clone(), other.to_string()),
        })?;
        sets.push(set);
    }
    let mut rules = Vec::with_capacity(manifest.notification_rules.len());
    for (at, value) in manifest.notification_rules.iter().enumerate() {
        let location = format!("module.toml: notification_rules[{at}]");
        let rule: Rule = serde_json::from_value(value.clone())
            .map_err(|e| error(location.clone(), e.to_string()))?;
        let known = |name: &str| {
            templates::BUILT_IN.contains(&name) || sets.iter().any(|set| set.name == name)
        };
        rule.check(known).map_err(|e| match e {
            NotifyError::Invalid { field, message } => error(format!("{location}{field}"), message),
            other => error(location.clone(), other.to_string()),
        })?;
        rules.push(rule);
    }
    Ok((rules, sets))
}

impl ModuleNotifications {
    /// What the modules enabled in `domain` add, modules in id order.
    pub fn of(registry: &Registry, domain: &Domain) -> Self {
        let mut found = Self::default();
        for info in registry.list() {
            if !info.domains.contains(domain) {
                continue;
            }
            let Some(module) = registry.module(&info.id) else {
                continue;
            };
            match parsed(&module.manifest) {
                Ok((rules, sets)) => {
                    found
                        .rules
                        .extend(rules.into_iter().map(|r| (info.id.clone(), r)));
                    found
                        .templates
                        .extend(sets.into_iter().map(|s| (info.id.clone(), s)));
                }
                // Checked when it was installed; a module installed before the check existed.
                Err(error) => {
                    tracing::warn!(module = %info.id, %error, "a module's notifications are ignored");
                }
            }
        }
        found
    }

    /// The set `name` for exactly `locale` (`None`: for everyone).
    pub(crate) fn template(&self, name: &str, locale: Option<&str>) -> Option<&TemplateSet> {
        self.templates
            .iter()
            .map(|(_, set)| set)
            .find(|set| set.name == name && set.locale.as_deref() == locale)
    }

    /// Whether a module provides a set called `name`.
    pub fn has_template(&self, name: &str) -> bool {
        self.templates.iter().any(|(_, set)| set.name == name)
    }
}

/// Refuses a module whose notification rules or template sets are not acceptable, naming the
/// entry and member.
pub struct ModuleNotificationsCheck;

impl ManifestCheck for ModuleNotificationsCheck {
    fn check(&self, manifest: &Manifest) -> Result<(), ModuleError> {
        parsed(manifest).map(drop)
    }
}
