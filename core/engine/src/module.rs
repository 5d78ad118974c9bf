//! Modules: a `module.toml` manifest plus the files it names (WASM components, rhai scripts).
//! Loading parses the manifest strictly and builds every step through the runtime that runs it;
//! any problem refuses the module whole, naming the file, key or line.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use usm_model::{
    CatalogAdditions, FieldPolicies, Kind, KindDef, Lifecycle, Process, Role, State, StateAddition,
    StateCategory, StateDef, TransitionDef, WORKERS, Writer, kind_schema,
};

use crate::{
    pipeline::{BoundStep, Runtime},
    step::{Hook, OnError, Phase, Step},
};

/// The version of the WIT contract (`usm:plugin`) this server implements.
pub const HOST_API_VERSION: Version = Version::new(0, 1, 0);

/// The capability that lets a step read records of its pipeline's domain.
pub const RECORDS_READ: &str = "records:read";

/// Every capability a manifest may ask for.
pub const KNOWN_CAPABILITIES: &[&str] = &[RECORDS_READ];

/// Most files in a module.
const MAX_FILES: usize = 256;
/// Most bytes in a module, all files together.
const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// A module's manifest (`module.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique id, e.g. `itil4`.
    pub id: String,
    /// The module's version.
    pub version: Version,
    /// `usm`, `itil4`, `cobit2019`, `iso20000` or a custom name.
    pub framework: String,
    /// What the module does.
    #[serde(default)]
    pub description: String,
    /// The range of `usm:plugin` versions the module works with.
    pub api: VersionReq,
    /// Capabilities the module's steps need, e.g. `records:read`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// USM-WIF workflow templates shipped by the module (files of the module).
    #[serde(default)]
    pub workflows: Vec<String>,
    /// The pipeline steps.
    #[serde(default)]
    pub steps: Vec<StepDecl>,
    /// Kinds the module adds to the catalog.
    #[serde(default)]
    pub kinds: Vec<KindDecl>,
    /// Typed fields the module adds to kinds.
    #[serde(default)]
    pub fields: Vec<FieldsDecl>,
    /// Lifecycle states the module adds to kinds.
    #[serde(default)]
    pub states: Vec<StateDecl>,
    /// Service catalog items, offered in each domain the module is enabled in.
    #[serde(default)]
    pub catalog_items: Vec<usm_model::service_catalog::CatalogItemDecl>,
    /// Notification rules of the domains the module is enabled in (read and checked by the
    /// notification service): a rule with a default's id replaces that default there.
    #[serde(default)]
    pub notification_rules: Vec<Value>,
    /// Notification template sets (read and checked by the notification service): a set with
    /// a built-in name replaces the built-in there.
    #[serde(default)]
    pub notification_templates: Vec<Value>,
}

/// A kind the module adds (`[[kinds]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindDecl {
    /// The kind's name, e.g. `risk`.
    pub name: Kind,
    /// Id prefix, 2–6 uppercase letters, e.g. `RSK`.
    pub prefix: String,
    /// The USM process the kind belongs to.
    pub process: Process,
    /// Field properties (name → JSON Schema) besides the members every kind has.
    #[serde(default)]
    pub fields: toml::Table,
    /// The lifecycle's states; exactly one `initial`.
    pub states: Vec<StateDef>,
    /// The lifecycle's transitions.
    #[serde(default)]
    pub transitions: Vec<TransitionDecl>,
}

/// A transition as a manifest declares it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionDecl {
    /// The state the record is in.
    pub from: State,
    /// The state it moves to.
    pub to: State,
    /// Roles that may take it; `agent` and `automation` when absent (`admin` always may).
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
}

impl TransitionDecl {
    fn to_def(&self) -> TransitionDef {
        TransitionDef {
            from: self.from.clone(),
            to: self.to.clone(),
            roles: self.roles.clone().unwrap_or_else(|| WORKERS.to_vec()),
        }
    }
}

/// Typed fields added to a kind, and who writes them (`[[fields]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsDecl {
    /// The kind (of the core or added by a module).
    pub kind: Kind,
    /// Field properties, name → JSON Schema; a field the kind already types must match.
    #[serde(default)]
    pub properties: toml::Table,
    /// Fields only this module's steps write; a client writing one gets `field_not_writable`.
    #[serde(default)]
    pub owns: Vec<String>,
    /// Fields a requester may set when creating a record (others are agents' to write).
    #[serde(default)]
    pub requester: Vec<String>,
    /// Fields (or `title`) an approval is bound to: editing one makes earlier approvals stale.
    #[serde(default)]
    pub material: Vec<String>,
}

/// A lifecycle state added to a kind (`[[states]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDecl {
    /// The kind whose lifecycle grows.
    pub kind: Kind,
    /// The new state's name.
    pub name: State,
    /// `active` or `inactive`.
    pub category: StateCategory,
    /// Transitions into and out of the new state.
    #[serde(default)]
    pub transitions: Vec<TransitionDecl>,
}

/// A step as the manifest declares it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDecl {
    /// Unique within the module.
    pub name: String,
    /// The hook it serves.
    pub hook: Hook,
    /// The process whose records it sees.
    pub process: Process,
    /// Before or after the write.
    pub phase: Phase,
    /// Lower runs first; ties by module id, then step name.
    #[serde(default)]
    pub order: i32,
    /// Limit to these kinds of the process.
    #[serde(default)]
    pub kinds: Vec<Kind>,
    /// A WASM component file of the module.
    #[serde(default)]
    pub wasm: Option<String>,
    /// A rhai script file of the module.
    #[serde(default)]
    pub script: Option<String>,
    /// `fail` (default) or `skip`.
    #[serde(default)]
    pub on_error: Option<OnError>,
    /// Time budget per call (default 50 ms).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Memory cap of a WASM instance in MiB (default 32).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The step's configuration, handed to it on every call.
    #[serde(default)]
    pub config: toml::Table,
}

/// A module's files by relative path (`module.toml` included).
pub type ModuleFiles = BTreeMap<String, Vec<u8>>;

/// What a runtime needs to build one step.
pub struct BuildRequest<'a> {
    /// The module id.
    pub module: &'a str,
    /// The step's declaration.
    pub step: &'a StepDecl,
    /// The file (component or script) the step runs.
    pub file: &'a str,
    /// Every file of the module (scripts may import each other).
    pub files: &'a ModuleFiles,
    /// The step's config as JSON.
    pub config: &'a Value,
    /// Capabilities granted: asked for by the manifest and granted by the operator.
    pub capabilities: &'a [String],
}

/// Builds steps of one runtime; implemented by `usm-plugin-host` and `usm-script-host`.
pub trait StepBuilder: Send + Sync {
    /// Compiles and checks a step; the error says what is wrong, in the file or the manifest.
    fn build(&self, request: &BuildRequest<'_>) -> Result<Arc<dyn Step>, BuildError>;
}

/// Why a step could not be built: a problem with its file, or with a key of its declaration in
/// `module.toml` (its config, its limits, its hook), which the error then names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The member of the step's declaration at fault (`config/matrix`, `timeout_ms`); `None`
    /// when the file is.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl BuildError {
    /// A problem with a key of the step's declaration.
    pub fn in_manifest(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

impl From<String> for BuildError {
    fn from(message: String) -> Self {
        Self { key: None, message }
    }
}

/// Checks a section of a manifest that another service reads (notification rules and
/// templates): a module it refuses is not installed.
pub trait ManifestCheck: Send + Sync {
    /// The first thing wrong with the manifest's section, if any.
    fn check(&self, manifest: &Manifest) -> Result<(), ModuleError>;
}

/// The runtimes available to modules, and the checks their manifests pass.
#[derive(Clone, Default)]
pub struct Runtimes {
    /// Runs `wasm = "…"` steps.
    pub wasm: Option<Arc<dyn StepBuilder>>,
    /// Runs `script = "…"` steps.
    pub rhai: Option<Arc<dyn StepBuilder>>,
    /// What the services reading a manifest's other sections require of them.
    pub manifest_checks: Vec<Arc<dyn ManifestCheck>>,
}

/// Why a module was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ModuleError {
    /// Where: a file, `file:line`, or a manifest key such as `steps[1].wasm`.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl ModuleError {
    pub(crate) fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            message: message.into(),
        }
    }
}

/// A loaded module: its manifest, its built steps and its workflow templates.
pub struct Module {
    /// The manifest.
    pub manifest: Manifest,
    /// The steps, built and bound to their config.
    pub steps: Vec<Arc<BoundStep>>,
    /// What the module adds to the catalog (checked against the others when installed).
    pub catalog: CatalogAdditions,
    /// The workflow templates, parsed and checked.
    pub workflows: Vec<crate::workflow::WifDocument>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "module {}@{} ({} steps)",
            self.manifest.id,
            self.manifest.version,
            self.steps.len()
        )
    }
}

/// Whether `id` is a valid module id: 1-64 lowercase letters, digits, '-' or '_', starting with
/// a letter.
pub fn valid_module_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Module {
    /// Reads a module directory (every regular file under it) and builds the module.
    pub fn load_dir(
        dir: &Path,
        runtimes: &Runtimes,
        grants: &[String],
    ) -> Result<Self, ModuleError> {
        Self::build(Self::read_dir(dir)?, runtimes, grants)
    }

    /// Reads every regular file of a module directory, bounded in count and size. Hidden
    /// entries and the toolchains' build directories ([`SKIPPED_DIRS`]) are not part of a
    /// module: a plugin's source directory can be its module directory.
    pub fn read_dir(dir: &Path) -> Result<ModuleFiles, ModuleError> {
        let mut files = ModuleFiles::new();
        let mut total = 0u64;
        read_tree(dir, dir, &mut files, &mut total)?;
        Ok(files)
    }

    /// Builds a module from its files: parses `module.toml` strictly, checks it, and builds every
    /// step. Fails whole on the first problem.
    pub fn build(
        files: ModuleFiles,
        runtimes: &Runtimes,
        grants: &[String],
    ) -> Result<Self, ModuleError> {
        let text = files
            .get("module.toml")
            .ok_or_else(|| ModuleError::new("module.toml", "missing"))?;
        let text =
            std::str::from_utf8(text).map_err(|_| ModuleError::new("module.toml", "not UTF-8"))?;
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| ModuleError::new("module.toml", e.to_string().trim_end().to_owned()))?;
        if !valid_module_id(&manifest.id) {
            return Err(ModuleError::new(
                "module.toml: id",
                "1-64 lowercase letters, digits, '-' or '_', starting with a letter",
            ));
        }
        if manifest.framework.trim().is_empty() {
            return Err(ModuleError::new(
                "module.toml: framework",
                "must not be empty",
            ));
        }
        if !manifest.api.matches(&HOST_API_VERSION) {
            return Err(ModuleError::new(
                "module.toml: api",
                format!(
                    "the module needs usm:plugin {}; this server implements {HOST_API_VERSION}",
                    manifest.api
                ),
            ));
        }
        if let Some(unknown) = manifest
            .capabilities
            .iter()
            .find(|c| !KNOWN_CAPABILITIES.contains(&c.as_str()))
        {
            return Err(ModuleError::new(
                "module.toml: capabilities",
                format!(
                    "unknown capability {unknown:?}; known: {}",
                    KNOWN_CAPABILITIES.join(", ")
                ),
            ));
        }
        // Capabilities by intersection: asked for by the manifest and granted by the operator.
        let granted: Vec<String> = manifest
            .capabilities
            .iter()
            .filter(|c| grants.contains(c))
            .cloned()
            .collect();
        let mut steps = Vec::with_capacity(manifest.steps.len());
        for (index, decl) in manifest.steps.iter().enumerate() {
            let key = |member: &str| format!("module.toml: steps[{index}].{member}");
            if !valid_module_id(&decl.name) {
                return Err(ModuleError::new(
                    key("name"),
                    "1-64 lowercase letters, digits, '-' or '_'",
                ));
            }
            if manifest.steps[..index]
                .iter()
                .any(|other| other.name == decl.name)
            {
                return Err(ModuleError::new(
                    key("name"),
                    format!("step {:?} is declared twice", decl.name),
                ));
            }
            let (runtime, file, builder) = match (&decl.wasm, &decl.script) {
                (Some(file), None) => (Runtime::Wasm, file, runtimes.wasm.as_ref()),
                (None, Some(file)) => (Runtime::Rhai, file, runtimes.rhai.as_ref()),
                _ => {
                    return Err(ModuleError::new(
                        key("wasm"),
                        "give exactly one of `wasm` or `script`",
                    ));
                }
            };
            let member = if runtime == Runtime::Wasm {
                "wasm"
            } else {
                "script"
            };
            if !files.contains_key(file) {
                return Err(ModuleError::new(
                    key(member),
                    format!("file {file:?} is not in the module"),
                ));
            }
            let builder = builder.ok_or_else(|| {
                ModuleError::new(
                    key(member),
                    format!("this server has no {runtime:?} runtime"),
                )
            })?;
            let config = serde_json::to_value(&decl.config)
                .map_err(|e| ModuleError::new(key("config"), e.to_string()))?;
            let step = builder
                .build(&BuildRequest {
                    module: &manifest.id,
                    step: decl,
                    file,
                    files: &files,
                    config: &config,
                    capabilities: &granted,
                })
                .map_err(|error| match error.key {
                    Some(member) => ModuleError::new(key(&member), error.message),
                    None => ModuleError::new(file.clone(), error.message),
                })?;
            steps.push(Arc::new(BoundStep {
                module: manifest.id.clone(),
                name: decl.name.clone(),
                runtime,
                hook: decl.hook,
                process: decl.process,
                phase: decl.phase,
                order: decl.order,
                on_error: decl.on_error.unwrap_or(OnError::Fail),
                kinds: decl.kinds.clone(),
                step,
                breaker: Default::default(),
                latency: Default::default(),
            }));
        }
        let mut workflows = Vec::with_capacity(manifest.workflows.len());
        for (index, file) in manifest.workflows.iter().enumerate() {
            let bytes = files.get(file).ok_or_else(|| {
                ModuleError::new(
                    format!("module.toml: workflows[{index}]"),
                    format!("file {file:?} is not in the module"),
                )
            })?;
            workflows.push(
                crate::workflow::parse(bytes, None)
                    .map_err(|e| ModuleError::new(format!("{file}#{}", e.pointer), e.message))?,
            );
        }
        /// Most catalog items of one module.
        const MAX_CATALOG_ITEMS: usize = 50;
        if manifest.catalog_items.len() > MAX_CATALOG_ITEMS {
            return Err(ModuleError::new(
                "module.toml: catalog_items",
                format!("at most {MAX_CATALOG_ITEMS} items"),
            ));
        }
        let mut item_ids = std::collections::BTreeSet::new();
        for (index, item) in manifest.catalog_items.iter().enumerate() {
            let key = format!("module.toml: catalog_items[{index}]");
            item.check()
                .map_err(|e| ModuleError::new(format!("{key}{}", e.field), e.message))?;
            if !item_ids.insert(item.id.as_str()) {
                return Err(ModuleError::new(key, "two catalog items have this id"));
            }
        }
        for check in &runtimes.manifest_checks {
            check.check(&manifest)?;
        }
        let catalog = catalog_additions(&manifest)?;
        Ok(Self {
            manifest,
            steps,
            workflows,
            catalog,
        })
    }
}

fn json_properties(table: &toml::Table, key: String) -> Result<Map<String, Value>, ModuleError> {
    match serde_json::to_value(table) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ModuleError::new(key, "must be a table")),
        Err(e) => Err(ModuleError::new(key, e.to_string())),
    }
}

/// The kinds, fields and states a manifest adds, each checked on its own; how they fit with the
/// catalog and other modules is checked when the module is installed.
fn catalog_additions(manifest: &Manifest) -> Result<CatalogAdditions, ModuleError> {
    let mut additions = CatalogAdditions::default();
    for (index, decl) in manifest.kinds.iter().enumerate() {
        let key = |member: &str| format!("module.toml: kinds[{index}].{member}");
        let transitions = decl
            .transitions
            .iter()
            .map(TransitionDecl::to_def)
            .collect();
        let lifecycle = Lifecycle::new(decl.states.clone(), transitions)
            .map_err(|e| ModuleError::new(key("states"), e.to_string()))?;
        additions.kinds.push(KindDef {
            name: decl.name.clone(),
            prefix: decl.prefix.clone(),
            process: decl.process,
            schema: kind_schema(json_properties(&decl.fields, key("fields"))?),
            lifecycle,
            writers: BTreeMap::from([
                ("requester".to_owned(), Writer::System),
                ("attachments".to_owned(), Writer::System),
            ]),
            material: Vec::new(),
            actor_fields: BTreeMap::new(),
            confirmation: None,
        });
    }
    for (index, decl) in manifest.fields.iter().enumerate() {
        let key = format!("module.toml: fields[{index}].properties");
        if !decl.properties.is_empty() {
            additions
                .fields
                .push((decl.kind.clone(), json_properties(&decl.properties, key)?));
        }
        if !(decl.owns.is_empty() && decl.requester.is_empty() && decl.material.is_empty()) {
            additions.policies.push(FieldPolicies {
                kind: decl.kind.clone(),
                owns: decl.owns.clone(),
                requester: decl.requester.clone(),
                material: decl.material.clone(),
            });
        }
    }
    for decl in &manifest.states {
        additions.states.push(StateAddition {
            kind: decl.kind.clone(),
            state: StateDef {
                name: decl.name.clone(),
                category: decl.category,
            },
            transitions: decl
                .transitions
                .iter()
                .map(TransitionDecl::to_def)
                .collect(),
        });
    }
    Ok(additions)
}

/// Parses `module.toml` strictly, without building anything.
pub fn peek_manifest(files: &ModuleFiles) -> Result<Manifest, ModuleError> {
    let text = files
        .get("module.toml")
        .ok_or_else(|| ModuleError::new("module.toml", "missing"))?;
    let text =
        std::str::from_utf8(text).map_err(|_| ModuleError::new("module.toml", "not UTF-8"))?;
    toml::from_str(text)
        .map_err(|e| ModuleError::new("module.toml", e.to_string().trim_end().to_owned()))
}

/// Build directories of the toolchains plugins are written with (npm, cargo, CPython), left
/// out when a module is read from a directory.
pub const SKIPPED_DIRS: &[&str] = &["node_modules", "target", "__pycache__"];

fn read_tree(
    root: &Path,
    dir: &Path,
    files: &mut ModuleFiles,
    total: &mut u64,
) -> Result<(), ModuleError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ModuleError::new(dir.display().to_string(), e.to_string()))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| ModuleError::new(dir.display().to_string(), e.to_string()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || SKIPPED_DIRS.contains(&name.as_ref()) {
            continue;
        }
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| ModuleError::new(path.display().to_string(), e.to_string()))?;
        if file_type.is_dir() {
            read_tree(root, &path, files, total)?;
        } else if file_type.is_file() {
            let relative = path
                .strip_prefix(root)
                .map_err(|e| ModuleError::new(path.display().to_string(), e.to_string()))?
                .to_string_lossy()
                .replace('\\', "/");
            let bytes = std::fs::read(&path)
                .map_err(|e| ModuleError::new(relative.clone(), e.to_string()))?;
            *total += bytes.len() as u64;
            if files.len() >= MAX_FILES || *total > MAX_MODULE_BYTES {
                return Err(ModuleError::new(
                    root.display().to_string(),
                    format!(
                        "a module holds at most {MAX_FILES} files and {MAX_MODULE_BYTES} bytes"
                    ),
                ));
            }
            files.insert(relative, bytes);
        }
    }
    Ok(())
}

/// Refuses steps limited to kinds the composed catalog does not have, or has under another
/// process: such a step would install and silently never run.
pub(crate) fn check_step_kinds(
    module: &Module,
    manifest_text: &str,
    catalog: &usm_model::Catalog,
) -> Result<(), ModuleError> {
    for (index, step) in module.manifest.steps.iter().enumerate() {
        for kind in &step.kinds {
            let problem = match catalog.get(kind) {
                None => {
                    let known: Vec<&str> = catalog
                        .kinds()
                        .filter(|def| def.process == step.process)
                        .map(|def| def.name.as_str())
                        .collect();
                    format!(
                        "no kind \"{kind}\"; the {} kinds are {}",
                        step.process,
                        known.join(", ")
                    )
                }
                Some(def) if def.process != step.process => format!(
                    "kind \"{kind}\" belongs to process {}, not the step's {}",
                    def.process, step.process
                ),
                Some(_) => continue,
            };
            let quoted = format!("\"{kind}\"");
            let line = manifest_text
                .lines()
                .position(|line| line.contains(&quoted))
                .map(|at| at + 1);
            let location = match line {
                Some(line) => format!("module.toml:{line}: steps[{index}].kinds"),
                None => format!("module.toml: steps[{index}].kinds"),
            };
            return Err(ModuleError::new(location, problem));
        }
    }
    Ok(())
}
