//! The module registry: installed modules, their bundles and where they are enabled, persisted
//! in the store; every change composes new pipelines and swaps them in whole.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use usm_model::{
    Actor, Catalog, CatalogAdditions, CatalogError, Domain, ErrorCode, Kind, RecordId, State,
    Timestamp,
};
use usm_store::{ListQuery, StoreError};

use crate::{
    BoundStep, Catalogs, Engine, Module, ModuleError, ModuleFiles, Pipelines, PreviewChange,
    PreviewReport, Runtimes,
    auth::{self, Forbidden},
    bundle,
    workflow::{DocumentType, Reason, WifDocument, WifError},
};

const MODULE_PREFIX: &str = "module/";
const WORKFLOW_PREFIX: &str = "workflow/";

/// A workflow as the list shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowSummary {
    /// Identifier in URLs.
    pub slug: String,
    /// Display name (the slug for a template without one).
    pub name: String,
    /// `workflow-template` or `workflow`.
    #[serde(rename = "type")]
    pub document_type: DocumentType,
    /// Position among the eight USM workflows, for the templates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// `reactive` or `proactive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// `module:<id>` for a template a module ships, `imported` for an upload.
    pub source: String,
    /// Number of steps.
    pub steps: usize,
}

fn summary(document: &WifDocument, source: String) -> WorkflowSummary {
    WorkflowSummary {
        slug: document.slug.clone(),
        name: document
            .name
            .clone()
            .unwrap_or_else(|| document.slug.clone()),
        document_type: document.document_type,
        number: document.number,
        trigger: document.trigger.clone(),
        source,
        steps: document.steps.len(),
    }
}

/// An imported workflow as stored: always 1.0.0 since this release, the draft shape before.
fn stored_workflow(bytes: &[u8]) -> Result<WifDocument, RegistryError> {
    crate::workflow::parse(bytes, None).map_err(|e| {
        RegistryError::Store(StoreError::Corrupt {
            what: "workflow",
            detail: e.to_string(),
        })
    })
}

/// Why a module operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The bundle or manifest is invalid.
    #[error("{0}")]
    Invalid(ModuleError),
    /// No such module.
    #[error("module {0} is not installed")]
    NotFound(String),
    /// An upload that does not upgrade the installed module.
    #[error(
        "module {id} {installed} is installed; upload a newer version to upgrade (got {uploaded})"
    )]
    NotNewer {
        /// The module.
        id: String,
        /// The installed version.
        installed: String,
        /// The uploaded version.
        uploaded: String,
    },
    /// A domain the server does not serve.
    #[error("unknown domain {0:?}")]
    UnknownDomain(String),
    /// No workflow with that slug.
    #[error("no workflow {0}")]
    WorkflowNotFound(String),
    /// A USM-WIF document that does not parse or check.
    #[error(transparent)]
    InvalidWorkflow(WifError),
    /// Removing or upgrading the module would drop a kind or state records use, or a kind
    /// another module extends; or the module is still enabled somewhere.
    #[error("{0}")]
    InUse(String),
    /// An import would replace a module's workflow template without naming a version.
    #[error("{0}")]
    WorkflowConflict(String),
    /// The caller may not do this.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::ModuleInvalid,
            Self::NotFound(_) => ErrorCode::ModuleNotFound,
            Self::NotNewer { .. } => ErrorCode::ModuleVersionConflict,
            Self::InUse(_) => ErrorCode::ModuleInUse,
            Self::WorkflowConflict(_) => ErrorCode::WorkflowConflict,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::UnknownDomain(_) => ErrorCode::InvalidInput,
            Self::InvalidWorkflow(e) if e.reason == Reason::NotJson => ErrorCode::MalformedJson,
            Self::InvalidWorkflow(_) => ErrorCode::WorkflowInvalid,
            Self::WorkflowNotFound(_) => ErrorCode::WorkflowNotFound,
            Self::Store(_) => ErrorCode::Internal,
        }
    }

    /// Where the problem is (a file, key or line of the bundle), when there is one.
    pub fn location(&self) -> Option<&str> {
        match self {
            Self::Invalid(error) => Some(&error.location),
            Self::UnknownDomain(_) => Some("/domains"),
            Self::InvalidWorkflow(e) if e.reason != Reason::NotJson => Some(&e.pointer),
            Self::WorkflowConflict(_) => Some("/workflow-version"),
            _ => None,
        }
    }

    /// Which USM-WIF rule a refused workflow broke.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::InvalidWorkflow(e) if e.reason != Reason::NotJson => Some(e.reason.as_str()),
            _ => None,
        }
    }
}

/// What is persisted for an installed module.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModuleRecord {
    id: String,
    version: String,
    digest: String,
    domains: BTreeSet<Domain>,
    grants: Vec<String>,
    installed_at: Timestamp,
    installed_by: String,
}

/// An installed module as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleInfo {
    /// The module id.
    pub id: String,
    /// Its version.
    pub version: String,
    /// `usm`, `itil4`, `cobit2019`, `iso20000` or custom.
    pub framework: String,
    /// What it does.
    pub description: String,
    /// `enabled` when enabled in at least one domain, `installed` otherwise.
    pub status: &'static str,
    /// Where it is enabled.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub domains: Vec<Domain>,
    /// Capabilities the manifest asks for.
    pub capabilities: Vec<String>,
    /// Capabilities the admin granted.
    pub grants: Vec<String>,
    /// Number of pipeline steps.
    pub steps: usize,
    /// sha256 of the bundle.
    pub digest: String,
    /// When it was installed (or last upgraded).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub installed_at: Timestamp,
    /// Who installed it.
    pub installed_by: String,
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Installed {
    /// A new module.
    Installed,
    /// A newer version replaced the installed one; its domains and grants were kept.
    Upgraded {
        /// The version it replaced.
        from: String,
    },
    /// The same bundle was already installed; nothing changed.
    Unchanged,
}

struct Entry {
    record: ModuleRecord,
    module: Arc<Module>,
}

/// What a catalog change may do to the records of a kind or state it drops from a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropping {
    /// Nothing: the change is refused.
    Refused,
    /// A disable: refused, or with `force` done, leaving those records read-only.
    Disabling {
        /// Leave them read-only.
        force: bool,
    },
}

/// Installed modules and their enablement.
pub struct Registry {
    engine: Arc<Engine>,
    runtimes: Runtimes,
    modules: Mutex<BTreeMap<String, Entry>>,
}

fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn bundle_key(digest: &str) -> String {
    format!("bundle/{digest}")
}

impl Registry {
    /// Loads every installed module from the store (compiled artifacts come from the cache) and
    /// swaps in their pipelines.
    pub fn open(engine: Arc<Engine>, runtimes: Runtimes) -> Result<Self, RegistryError> {
        let registry = Self {
            engine,
            runtimes,
            modules: Mutex::new(BTreeMap::new()),
        };
        let mut modules = registry.lock();
        let stored = registry.stored_records()?;
        let loaded = registry.load(stored, &BTreeMap::new())?;
        registry.compose(&loaded)?;
        *modules = loaded;
        drop(modules);
        Ok(registry)
    }

    /// Reads the installed modules again, for the installs, upgrades, enablements and removals
    /// other nodes sharing the store made, and swaps in the result as a local change would.
    /// Modules whose bundle and grants did not change are kept as built. Returns whether
    /// anything changed.
    pub fn refresh(&self) -> Result<bool, RegistryError> {
        let mut modules = self.lock();
        let stored = self.stored_records()?;
        let same = stored.len() == modules.len()
            && stored.iter().zip(modules.values()).all(|(new, old)| {
                (
                    &new.id,
                    &new.digest,
                    &new.domains,
                    &new.grants,
                    &new.version,
                ) == (
                    &old.record.id,
                    &old.record.digest,
                    &old.record.domains,
                    &old.record.grants,
                    &old.record.version,
                )
            });
        if same {
            return Ok(false);
        }
        let loaded = self.load(stored, &modules)?;
        self.compose(&loaded)?;
        *modules = loaded;
        tracing::info!(
            modules = modules.len(),
            "modules changed by another node swapped in"
        );
        Ok(true)
    }

    /// The stored module records, by id.
    fn stored_records(&self) -> Result<Vec<ModuleRecord>, RegistryError> {
        self.engine
            .store()
            .settings(MODULE_PREFIX)?
            .into_iter()
            .map(|(key, bytes)| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    RegistryError::Store(StoreError::Corrupt {
                        what: "module record",
                        detail: format!("{key}: {e}"),
                    })
                })
            })
            .collect()
    }

    /// Builds the modules of `records`, reusing those of `built` with the same bundle and
    /// grants.
    fn load(
        &self,
        records: Vec<ModuleRecord>,
        built: &BTreeMap<String, Entry>,
    ) -> Result<BTreeMap<String, Entry>, RegistryError> {
        let store = self.engine.store();
        let mut modules = BTreeMap::new();
        for record in records {
            if let Some(entry) = built.get(&record.id)
                && entry.record.digest == record.digest
                && entry.record.grants == record.grants
            {
                let module = Arc::clone(&entry.module);
                modules.insert(record.id.clone(), Entry { record, module });
                continue;
            }
            let key = format!("{MODULE_PREFIX}{}", record.id);
            let bundle = store
                .artifact(&bundle_key(&record.digest))?
                .ok_or_else(|| StoreError::Corrupt {
                    what: "module bundle",
                    detail: format!("{key}: bundle {} is missing", record.digest),
                })?;
            let files = bundle::unpack(&bundle).map_err(|message| {
                RegistryError::Invalid(ModuleError {
                    location: key.clone(),
                    message,
                })
            })?;
            let module = Module::build(files, &self.runtimes, &record.grants)
                .map_err(RegistryError::Invalid)?;
            tracing::info!(module = %record.id, version = %record.version, domains = ?record.domains, "module loaded");
            modules.insert(
                record.id.clone(),
                Entry {
                    record,
                    module: Arc::new(module),
                },
            );
        }
        Ok(modules)
    }

    /// Composes the catalogs of `modules` and swaps them in with their pipelines.
    fn compose(&self, modules: &BTreeMap<String, Entry>) -> Result<(), RegistryError> {
        let catalogs = self
            .next_catalog(modules, "", None)
            .and_then(|_| self.next_catalogs(modules, "", None))
            .map_err(|error| RegistryError::Invalid(catalog_error(&error)))?;
        self.swap(modules, catalogs);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.modules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The catalog every installed module composes, enabled or not, with `replacement` in
    /// place of module `id` (`None`: without it). Installed modules must compose together, so
    /// any set of them can be enabled in a domain.
    fn next_catalog(
        &self,
        modules: &BTreeMap<String, Entry>,
        id: &str,
        replacement: Option<&CatalogAdditions>,
    ) -> Result<Catalog, CatalogError> {
        let mut all: Vec<(&str, &CatalogAdditions)> = modules
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .map(|(other, entry)| (other.as_str(), &entry.module.catalog))
            .chain(replacement.map(|additions| (id, additions)))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        self.engine.compose_catalog(all)
    }

    /// The catalogs of each domain from the modules enabled there, with module `id` enabled in
    /// `replacement`'s domains with its additions (`None`: without it).
    fn next_catalogs(
        &self,
        modules: &BTreeMap<String, Entry>,
        id: &str,
        replacement: Option<(&CatalogAdditions, &BTreeSet<Domain>)>,
    ) -> Result<Catalogs, CatalogError> {
        let enabled = |domains: &BTreeSet<Domain>| domains.iter().cloned().collect::<Vec<_>>();
        let mut all: Vec<(&str, &CatalogAdditions, Vec<Domain>)> = modules
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .map(|(other, entry)| {
                (
                    other.as_str(),
                    &entry.module.catalog,
                    enabled(&entry.record.domains),
                )
            })
            .chain(replacement.map(|(additions, domains)| (id, additions, enabled(domains))))
            .collect();
        all.sort_by_key(|(id, ..)| *id);
        self.engine.compose_catalogs(&all)
    }

    /// Refuses catalogs that drop, in some domain, a kind or a state a record of that domain
    /// still has, unless `dropping` is a forced disabling (those records stay, read-only);
    /// and refuses, always, catalogs whose installed modules no longer add a kind or state some
    /// record has anywhere (nothing could make it writable again).
    fn check_in_use(&self, next: &Catalogs, dropping: Dropping) -> Result<(), RegistryError> {
        let current = self.engine.catalogs();
        let mut dropped: Vec<(Kind, Option<State>, Option<Domain>)> = Vec::new();
        let mut compare = |now: &Catalog, then: &Catalog, scope: Option<&Domain>| {
            for def in now.kinds() {
                let Some(next_def) = then.get(&def.name) else {
                    dropped.push((def.name.clone(), None, scope.cloned()));
                    continue;
                };
                for state in def.lifecycle.states() {
                    if next_def.lifecycle.state(&state.name).is_none() {
                        dropped.push((def.name.clone(), Some(state.name.clone()), scope.cloned()));
                    }
                }
            }
        };
        for domain in self.engine.domains() {
            compare(current.domain(domain), next.domain(domain), Some(domain));
        }
        compare(current.installed(), next.installed(), None);
        let (mut in_use, mut forced_or_not) = (Vec::new(), Vec::new());
        for (kind, state, scope) in dropped {
            let (state, scope) = (state.as_ref(), scope.as_ref());
            let (count, Some(example)) = self.records_of(&kind, state, scope)? else {
                continue;
            };
            let what = match state {
                None => format!("{count} record(s) of kind {kind}"),
                Some(state) => format!("{count} record(s) of kind {kind} in state {state}"),
            };
            let Some(domain) = scope else {
                // Whatever the domains say: nothing could make these writable again.
                forced_or_not.push(format!(
                    "{what} exist (e.g. {example}); no installed module would add what they use"
                ));
                continue;
            };
            if dropping == (Dropping::Disabling { force: true }) {
                tracing::warn!(%kind, state = ?state.map(State::as_str), %domain, count, "a forced disable leaves records read-only");
            } else {
                let gone = if state.is_some() { "state" } else { "kind" };
                in_use.push(format!(
                    "{what} exist in {domain} (e.g. {example}); the {gone} cannot go there"
                ));
            }
        }
        if !forced_or_not.is_empty() {
            in_use.extend(forced_or_not);
            return Err(RegistryError::InUse(in_use.join("; ")));
        }
        if in_use.is_empty() {
            return Ok(());
        }
        let mut message = in_use.join("; ");
        if dropping == (Dropping::Disabling { force: false }) {
            message.push_str(
                ". Disabling with force=true leaves them readable but read-only until the module is enabled there again",
            );
        }
        Err(RegistryError::InUse(message))
    }

    /// How many records of `kind` (in `state`) are in `domain` (anywhere: `None`), and one.
    fn records_of(
        &self,
        kind: &Kind,
        state: Option<&State>,
        domain: Option<&Domain>,
    ) -> Result<(u64, Option<RecordId>), StoreError> {
        let mut query = ListQuery {
            kind: Some(kind.clone()),
            state: state.cloned(),
            domain: domain.cloned(),
            within: None,
            owner: None,
            after: None,
            limit: 500,
        };
        let (mut count, mut example) = (0, None);
        loop {
            let page = self.engine.store().list(&query)?;
            count += page.records.len() as u64;
            if example.is_none() {
                example = page.records.first().map(|record| record.id.clone());
            }
            match page.next {
                Some(after) => query.after = Some(after),
                None => return Ok((count, example)),
            }
        }
    }

    /// Swaps in `catalogs`, then the pipelines of the enabled modules.
    fn swap(&self, modules: &BTreeMap<String, Entry>, catalogs: Catalogs) {
        self.engine.set_catalogs(catalogs);
        let enabled =
            modules.values().flat_map(|entry| {
                entry.record.domains.iter().flat_map(move |domain| {
                    entry.module.steps.iter().map(move |step| (domain, step))
                })
            });
        self.engine.set_pipelines(Pipelines::compose(enabled));
    }

    fn info(entry: &Entry) -> ModuleInfo {
        let manifest = &entry.module.manifest;
        ModuleInfo {
            id: manifest.id.clone(),
            version: manifest.version.to_string(),
            framework: manifest.framework.clone(),
            description: manifest.description.clone(),
            status: if entry.record.domains.is_empty() {
                "installed"
            } else {
                "enabled"
            },
            domains: entry.record.domains.iter().cloned().collect(),
            capabilities: manifest.capabilities.clone(),
            grants: entry.record.grants.clone(),
            steps: entry.module.steps.len(),
            digest: entry.record.digest.clone(),
            installed_at: entry.record.installed_at,
            installed_by: entry.record.installed_by.clone(),
        }
    }

    /// The installed modules, by id.
    pub fn list(&self) -> Vec<ModuleInfo> {
        self.lock().values().map(Self::info).collect()
    }

    /// One installed module.
    pub fn get(&self, id: &str) -> Result<ModuleInfo, RegistryError> {
        self.lock()
            .get(id)
            .map(Self::info)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))
    }

    /// The files of an installed module (for workflow templates and inspection).
    pub fn module(&self, id: &str) -> Option<Arc<Module>> {
        self.lock().get(id).map(|e| Arc::clone(&e.module))
    }

    /// Installs an uploaded `.tar.gz` bundle; module bundles are server-wide code, so `actor`
    /// must be a global admin.
    pub fn install_bundle(
        &self,
        actor: &Actor,
        bytes: &[u8],
    ) -> Result<(ModuleInfo, Installed), RegistryError> {
        auth::global_admin(actor, "installing or upgrading a module")?;
        let files = bundle::unpack(bytes).map_err(|message| {
            RegistryError::Invalid(ModuleError {
                location: "bundle".into(),
                message,
            })
        })?;
        self.install(actor, files)
    }

    /// Installs a module, or upgrades it when a newer version of the same id is installed
    /// (keeping where it is enabled and what it was granted). The module is built — manifest
    /// checked, every step compiled — before anything is stored; a broken module changes nothing.
    pub fn install(
        &self,
        actor: &Actor,
        files: ModuleFiles,
    ) -> Result<(ModuleInfo, Installed), RegistryError> {
        self.install_with(actor, files, false)
    }

    /// Installs a module the operator declares (a directory in the configuration): different
    /// content replaces the installed module even at the same version — the directory is the
    /// source of truth.
    pub fn install_declared(
        &self,
        actor: &Actor,
        files: ModuleFiles,
    ) -> Result<(ModuleInfo, Installed), RegistryError> {
        self.install_with(actor, files, true)
    }

    fn install_with(
        &self,
        actor: &Actor,
        files: ModuleFiles,
        replace_same_version: bool,
    ) -> Result<(ModuleInfo, Installed), RegistryError> {
        auth::global_admin(actor, "installing or upgrading a module")?;
        let packed = bundle::pack(&files).map_err(|message| {
            RegistryError::Invalid(ModuleError {
                location: "bundle".into(),
                message,
            })
        })?;
        let digest = digest(&packed);
        let mut modules = self.lock();
        // Peek at the id and version to keep grants on upgrade; `build` validates for real.
        let manifest = crate::module::peek_manifest(&files).map_err(RegistryError::Invalid)?;
        let (grants, domains, action) = match modules.get(&manifest.id) {
            Some(existing) if existing.record.digest == digest => {
                return Ok((Self::info(existing), Installed::Unchanged));
            }
            Some(existing) => {
                let installed = &existing.module.manifest.version;
                let allowed = manifest.version > *installed
                    || (replace_same_version && manifest.version == *installed);
                if !allowed {
                    return Err(RegistryError::NotNewer {
                        id: manifest.id.clone(),
                        installed: installed.to_string(),
                        uploaded: manifest.version.to_string(),
                    });
                }
                (
                    existing.record.grants.clone(),
                    existing.record.domains.clone(),
                    Installed::Upgraded {
                        from: installed.to_string(),
                    },
                )
            }
            None => (Vec::new(), BTreeSet::new(), Installed::Installed),
        };
        let manifest_text = files
            .get("module.toml")
            .map(|text| String::from_utf8_lossy(text).into_owned())
            .unwrap_or_default();
        let module =
            Module::build(files, &self.runtimes, &grants).map_err(RegistryError::Invalid)?;
        let composed = self
            .next_catalog(&modules, &manifest.id, Some(&module.catalog))
            .map_err(|error| RegistryError::Invalid(catalog_error(&error)))?;
        crate::module::check_step_kinds(&module, &manifest_text, &composed)
            .map_err(RegistryError::Invalid)?;
        let catalogs = self
            .next_catalogs(&modules, &manifest.id, Some((&module.catalog, &domains)))
            .map_err(|error| RegistryError::Invalid(catalog_error(&error)))?;
        let _writes_held = self.engine.hold_writes();
        self.check_in_use(&catalogs, Dropping::Refused)?;
        let record = ModuleRecord {
            id: module.manifest.id.clone(),
            version: module.manifest.version.to_string(),
            digest: digest.clone(),
            domains,
            grants,
            installed_at: Timestamp::now(),
            installed_by: actor.name.clone(),
        };
        let store = self.engine.store();
        store.put_artifact(&bundle_key(&digest), &packed)?;
        store.write_settings(
            &[(format!("{MODULE_PREFIX}{}", record.id), encode(&record)?)],
            &[],
        )?;
        let previous = modules.insert(
            record.id.clone(),
            Entry {
                record,
                module: Arc::new(module),
            },
        );
        let before = previous.as_ref().map(Self::info);
        if let Some(previous) = previous {
            self.forget_bundle(&modules, &previous.record.digest);
        }
        self.swap(&modules, catalogs);
        let info = Self::info(&modules[&manifest.id]);
        tracing::info!(module = %manifest.id, version = %manifest.version, ?action, actor = %actor.name, "module installed");
        let verb = if before.is_some() {
            "module.upgrade"
        } else {
            "module.install"
        };
        self.audit(
            actor,
            (verb, None),
            &manifest.id,
            before.as_ref(),
            Some(&info),
        );
        Ok((info, action))
    }

    /// Enables a module in more domains, optionally replacing its capability grants. `actor`
    /// must administer those domains; grants bind the module wherever it runs, so changing
    /// them also needs every domain the module is enabled in.
    pub fn enable(
        &self,
        actor: &Actor,
        id: &str,
        domains: &[String],
        grants: Option<Vec<String>>,
    ) -> Result<ModuleInfo, RegistryError> {
        let domains = self.domains(domains)?;
        auth::admin_over(actor, Some(&domains))?;
        self.change(
            actor,
            id,
            ("module.enable", &domains),
            Dropping::Refused,
            |record| {
                record.domains.extend(domains.iter().cloned());
                match grants {
                    Some(grants) if record.grants != grants => {
                        auth::admin_over(actor, Some(&record.domains))?;
                        record.grants = grants;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )
    }

    /// Disables a module in some domains, which `actor` must administer. Where records of a
    /// kind or in a state only it adds remain, this is refused, unless `force`: then those
    /// records stay readable and are read-only until the module is enabled there again.
    pub fn disable(
        &self,
        actor: &Actor,
        id: &str,
        domains: &[String],
        force: bool,
    ) -> Result<ModuleInfo, RegistryError> {
        let domains = self.domains(domains)?;
        auth::admin_over(actor, Some(&domains))?;
        let dropping = Dropping::Disabling { force };
        self.change(
            actor,
            id,
            ("module.disable", &domains),
            dropping,
            |record| {
                record.domains.retain(|d| !domains.contains(d));
                Ok(false)
            },
        )
    }

    /// Removes a module and its pipelines; server-wide, so `actor` must be a global admin. A
    /// module still enabled somewhere is refused: disable it first.
    pub fn remove(&self, actor: &Actor, id: &str) -> Result<ModuleInfo, RegistryError> {
        auth::global_admin(actor, "removing a module")?;
        let mut modules = self.lock();
        let Some(entry) = modules.get(id) else {
            return Err(RegistryError::NotFound(id.to_owned()));
        };
        if !entry.record.domains.is_empty() {
            let domains: Vec<&str> = entry.record.domains.iter().map(Domain::as_str).collect();
            return Err(RegistryError::InUse(format!(
                "module {id} is enabled in {}; disable it there first",
                domains.join(", ")
            )));
        }
        let catalogs = self
            .next_catalog(&modules, id, None)
            .and_then(|_| self.next_catalogs(&modules, id, None))
            .map_err(|error| RegistryError::InUse(error.to_string()))?;
        let _writes_held = self.engine.hold_writes();
        self.check_in_use(&catalogs, Dropping::Refused)?;
        let entry = modules
            .remove(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        if let Err(error) = self
            .engine
            .store()
            .write_settings(&[], &[format!("{MODULE_PREFIX}{id}")])
        {
            modules.insert(id.to_owned(), entry);
            return Err(error.into());
        }
        self.forget_bundle(&modules, &entry.record.digest);
        self.swap(&modules, catalogs);
        tracing::info!(module = %id, actor = %actor.name, "module removed");
        let info = Self::info(&entry);
        self.audit(actor, ("module.remove", None), id, Some(&info), None);
        Ok(info)
    }

    /// Applies `edit` to a module's record; rebuilds the module when `edit` says its grants
    /// changed (capabilities are bound into the built steps).
    fn change(
        &self,
        actor: &Actor,
        id: &str,
        (verb, scope): (&str, &BTreeSet<Domain>),
        dropping: Dropping,
        edit: impl FnOnce(&mut ModuleRecord) -> Result<bool, RegistryError>,
    ) -> Result<ModuleInfo, RegistryError> {
        let mut modules = self.lock();
        let entry = modules
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        let before = Self::info(entry);
        let mut record = entry.record.clone();
        let regrant = edit(&mut record)?;
        let module = if regrant {
            let bundle = self
                .engine
                .store()
                .artifact(&bundle_key(&record.digest))?
                .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
            let files = bundle::unpack(&bundle).map_err(|message| {
                RegistryError::Invalid(ModuleError {
                    location: "bundle".into(),
                    message,
                })
            })?;
            Arc::new(
                Module::build(files, &self.runtimes, &record.grants)
                    .map_err(RegistryError::Invalid)?,
            )
        } else {
            Arc::clone(&entry.module)
        };
        // Its catalog additions follow where it is enabled: a domain it leaves must not keep
        // records of a kind or state only it adds.
        let catalogs = self
            .next_catalogs(&modules, id, Some((&module.catalog, &record.domains)))
            .map_err(|error| RegistryError::InUse(error.to_string()))?;
        let _writes_held = self.engine.hold_writes();
        self.check_in_use(&catalogs, dropping)?;
        self.engine
            .store()
            .write_settings(&[(format!("{MODULE_PREFIX}{id}"), encode(&record)?)], &[])?;
        tracing::info!(module = %id, domains = ?record.domains, grants = ?record.grants, actor = %actor.name, "module enablement changed");
        modules.insert(id.to_owned(), Entry { record, module });
        self.swap(&modules, catalogs);
        let after = Self::info(&modules[id]);
        self.audit(actor, (verb, Some(scope)), id, Some(&before), Some(&after));
        Ok(after)
    }

    /// Records an admin action concerning `scope` (`None`: server-wide); the action has
    /// happened, so a failure to audit is logged loudly rather than reported as the action
    /// failing.
    fn audit(
        &self,
        actor: &Actor,
        (verb, scope): (&str, Option<&BTreeSet<Domain>>),
        id: &str,
        before: Option<&ModuleInfo>,
        after: Option<&ModuleInfo>,
    ) {
        let json = |info: Option<&ModuleInfo>| info.and_then(|i| serde_json::to_value(i).ok());
        if let Err(error) = crate::auth::audit(
            self.engine.store().as_ref(),
            actor,
            verb,
            &format!("module:{id}"),
            scope,
            json(before),
            json(after),
        ) {
            tracing::error!(%error, action = verb, module = id, "cannot write the audit entry");
        }
    }

    fn domains(&self, names: &[String]) -> Result<BTreeSet<Domain>, RegistryError> {
        names
            .iter()
            .map(|name| {
                Domain::new(name.as_str())
                    .ok()
                    .filter(|d| self.engine.domains().contains(d))
                    .ok_or_else(|| RegistryError::UnknownDomain(name.chars().take(64).collect()))
            })
            .collect()
    }

    /// Replays the most recent `limit` creates of `domains` through their pipelines as they are
    /// and as they would be with `change`, and reports the difference; writes nothing. A module
    /// previewed from its files is built (compiled) as an install would, so it needs a global
    /// admin, as an install does; the other changes need an admin of those domains. The
    /// changed side runs with the catalogs the change would compose (a module's fields, kinds
    /// and states where it would be enabled).
    pub fn preview(
        &self,
        actor: &Actor,
        change: PreviewChange,
        domains: &[String],
        limit: usize,
    ) -> Result<PreviewReport, RegistryError> {
        let domains = self.domains(domains)?;
        auth::admin_over(actor, Some(&domains))?;
        if domains.is_empty() {
            return Err(RegistryError::Invalid(ModuleError::new(
                "domains",
                "name the domains whose records to replay",
            )));
        }
        let limit = limit.clamp(1, crate::preview::MAX_PREVIEW_RECORDS);
        let built = match &change {
            PreviewChange::Module(files) => {
                auth::global_admin(actor, "previewing a module bundle")?;
                let manifest =
                    crate::module::peek_manifest(files).map_err(RegistryError::Invalid)?;
                let grants = self
                    .lock()
                    .get(&manifest.id)
                    .map(|e| e.record.grants.clone())
                    .unwrap_or_default();
                // Built without holding the registry: compiling a large component takes
                // seconds, and installs and enables wait for the lock.
                let module = Module::build(files.clone(), &self.runtimes, &grants)
                    .map_err(RegistryError::Invalid)?;
                Some(Arc::new(module))
            }
            PreviewChange::Enable(_) | PreviewChange::Disable(_) => None,
        };
        let modules = self.lock();
        let (id, module, on) = match (&change, built) {
            (PreviewChange::Enable(id) | PreviewChange::Disable(id), _) => {
                let entry = modules
                    .get(id)
                    .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
                let mut on = entry.record.domains.clone();
                if matches!(change, PreviewChange::Enable(_)) {
                    on.extend(domains.iter().cloned());
                } else {
                    on.retain(|d| !domains.contains(d));
                }
                (id.clone(), Arc::clone(&entry.module), on)
            }
            (PreviewChange::Module(_), built) => {
                let module = built.ok_or_else(|| {
                    RegistryError::Invalid(ModuleError::new("bundle", "the module was not built"))
                })?;
                let id = module.manifest.id.clone();
                let mut on = modules
                    .get(&id)
                    .map(|e| e.record.domains.clone())
                    .unwrap_or_default();
                on.extend(domains.iter().cloned());
                (id, module, on)
            }
        };
        let catalogs = self
            .next_catalogs(&modules, &id, Some((&module.catalog, &on)))
            .map_err(|error| RegistryError::Invalid(catalog_error(&error)))?;
        let mut enabled: Vec<(Domain, Arc<BoundStep>)> = Vec::new();
        for domain in &on {
            enabled.extend(
                module
                    .steps
                    .iter()
                    .map(|step| (domain.clone(), Arc::clone(step))),
            );
        }
        for entry in modules
            .iter()
            .filter_map(|(other, entry)| (*other != id).then_some(entry))
        {
            for domain in &entry.record.domains {
                enabled.extend(
                    entry
                        .module
                        .steps
                        .iter()
                        .map(|step| (domain.clone(), Arc::clone(step))),
                );
            }
        }
        drop(modules);
        let changed = Pipelines::compose(enabled.iter().map(|(d, s)| (d, s)));
        let domains: Vec<Domain> = domains.into_iter().collect();
        Ok(self.engine.preview_creates(
            &self.engine.pipelines(),
            (&changed, &catalogs),
            &domains,
            limit,
        )?)
    }

    /// Every workflow: the installed modules' templates and the imported ones (an import with a
    /// template's slug takes its place), by slug.
    pub fn workflows(&self) -> Result<Vec<WorkflowSummary>, RegistryError> {
        let mut all: BTreeMap<String, WorkflowSummary> = BTreeMap::new();
        for entry in self.lock().values() {
            for document in &entry.module.workflows {
                all.insert(
                    document.slug.clone(),
                    summary(document, format!("module:{}", entry.record.id)),
                );
            }
        }
        for (_, bytes) in self.engine.store().settings(WORKFLOW_PREFIX)? {
            let document = stored_workflow(&bytes)?;
            all.insert(document.slug.clone(), summary(&document, "imported".into()));
        }
        Ok(all.into_values().collect())
    }

    /// One workflow as a USM-WIF document.
    pub fn workflow(&self, slug: &str) -> Result<WifDocument, RegistryError> {
        if let Some(bytes) = self
            .engine
            .store()
            .setting(&format!("{WORKFLOW_PREFIX}{slug}"))?
        {
            return stored_workflow(&bytes);
        }
        self.lock()
            .values()
            .flat_map(|entry| entry.module.workflows.iter())
            .find(|document| document.slug == slug)
            .cloned()
            .ok_or_else(|| RegistryError::WorkflowNotFound(slug.chars().take(64).collect()))
    }

    /// Imports a USM-WIF document (1.0.0, or the deprecated draft shape, converted), keeping the
    /// members the format does not define. `declared` is the type the media type names.
    /// Workflows are server-wide, so `actor` must be a global admin; replacing a module's
    /// template of the same slug needs the document to give its `workflow-version`.
    pub fn import_workflow(
        &self,
        actor: &Actor,
        bytes: &[u8],
        declared: Option<DocumentType>,
    ) -> Result<WorkflowSummary, RegistryError> {
        auth::global_admin(actor, "importing a workflow")?;
        let document =
            crate::workflow::parse(bytes, declared).map_err(RegistryError::InvalidWorkflow)?;
        let slug = &document.slug;
        if document.workflow_version.is_none()
            && let Some(module) = self.lock().values().find(|entry| {
                entry
                    .module
                    .workflows
                    .iter()
                    .any(|template| &template.slug == slug)
            })
        {
            return Err(RegistryError::WorkflowConflict(format!(
                "workflow {slug} is a template of module {}; give /workflow-version to replace it",
                module.record.id
            )));
        }
        let after = serde_json::to_value(&document).map_err(|e| {
            RegistryError::Store(StoreError::Corrupt {
                what: "workflow",
                detail: e.to_string(),
            })
        })?;
        self.engine.store().write_settings(
            &[(
                format!("{WORKFLOW_PREFIX}{slug}"),
                after.to_string().into_bytes(),
            )],
            &[],
        )?;
        tracing::info!(workflow = %slug, actor = %actor.name, "workflow imported");
        if let Err(error) = crate::auth::audit(
            self.engine.store().as_ref(),
            actor,
            "workflow.import",
            &format!("workflow:{slug}"),
            None,
            None,
            Some(after),
        ) {
            tracing::error!(%error, "cannot write the audit entry");
        }
        Ok(summary(&document, "imported".into()))
    }

    /// Deletes a bundle no installed module uses any more.
    fn forget_bundle(&self, modules: &BTreeMap<String, Entry>, digest: &str) {
        if modules.values().all(|e| e.record.digest != digest)
            && let Err(error) = self.engine.store().delete_artifact(&bundle_key(digest))
        {
            tracing::warn!(%error, "cannot delete an unused module bundle");
        }
    }
}

/// A catalog conflict as a module error, located at the manifest key it comes from.
fn catalog_error(error: &CatalogError) -> ModuleError {
    let inner = match error {
        CatalogError::Module { source, .. } => source.as_ref(),
        other => other,
    };
    let location = match inner {
        CatalogError::DuplicateKind(_)
        | CatalogError::DuplicatePrefix(..)
        | CatalogError::BadPrefix(..) => "module.toml: kinds",
        CatalogError::FieldConflict { .. } => "module.toml: fields",
        CatalogError::StateExists { .. } | CatalogError::BadStateAddition { .. } => {
            "module.toml: states"
        }
        _ => "module.toml",
    };
    ModuleError {
        location: location.into(),
        message: error.to_string(),
    }
}

fn encode(record: &ModuleRecord) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(record).map_err(|e| {
        RegistryError::Store(StoreError::Corrupt {
            what: "module record",
            detail: e.to_string(),
        })
    })
}
