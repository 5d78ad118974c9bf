//! `usm-plugin-host` runs WASM components as pipeline steps. One wasmtime engine, built once, with
//! limits always on: an epoch deadline per call, a memory cap per instance, an output size cap,
//! the pooling allocator (falling back to on-demand allocation when its address-space reservation
//! fails), and no WASI filesystem, network, environment, arguments or clocks — a plugin's only
//! clock is `host.now`, and reading records needs the `records:read` capability.
//!
//! Components are compiled once, when their module is loaded, and the compiled artifact is cached
//! in the store under the component's content hash and the engine's compatibility hash. Every
//! call instantiates a fresh instance from a pre-linked `StepPre`, so calls share no state.

mod bindings;
mod limits;
mod queries;
mod state;

use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;
use sha2::{Digest, Sha256};
use usm_engine::{
    BuildError, BuildRequest, Effect, HOST_API_VERSION, Hook, Phase, RECORDS_READ, Step,
    StepBuilder, StepError, StepInput, StepOutput,
    budget::{BudgetCheck, CallBudget},
};
use usm_store::Store;
use wasmtime::component::{Component, HasSelf, Linker};

pub use limits::PluginLimits;

use crate::{
    bindings::{StepPre, usm::plugin::types as wit},
    queries::QueryCache,
    state::{CallSetup, HostState},
};

/// The custom section in which `usm-sdk` records the `usm:plugin` version a plugin was built for.
pub const API_SECTION: &str = "usm-plugin-api";

/// Why a component could not become a step.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a component this engine can compile.
    #[error("does not compile: {0}")]
    Compile(String),
    /// The plugin was built for a `usm:plugin` version this server does not implement.
    #[error("{0}")]
    ApiVersion(String),
    /// Linking or describing the plugin failed.
    #[error("cannot be instantiated: {0}")]
    Instantiate(String),
    /// The plugin's description or config does not fit the manifest.
    #[error("{0}")]
    Mismatch(String),
    /// The manifest gives the plugin a hook it does not serve.
    #[error("{0}")]
    Hook(String),
    /// The step's config in the manifest does not fit the plugin's config schema.
    #[error("config{pointer}: {message}")]
    Config {
        /// Where in the config (a JSON pointer; empty for the whole).
        pointer: String,
        /// What is wrong.
        message: String,
    },
}

/// Runs WASM component steps.
pub struct PluginHost {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    limits: PluginLimits,
    store: Option<Arc<dyn Store>>,
    queries: Arc<QueryCache>,
    shared: Option<SharedArtifacts>,
    ticker: Arc<EpochTicker>,
}

/// Compiled components kept in memory for every plugin host of a process that holds a clone:
/// several servers in one process (the end-to-end tests start dozens) compile each component
/// once instead of once per server. Keyed like the store's cache, so an artifact is only ever
/// loaded by an engine compatible with the one that made it.
#[derive(Clone, Default)]
pub struct SharedArtifacts(Arc<Mutex<HashMap<String, Arc<[u8]>>>>);

impl SharedArtifacts {
    fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn put(&self, key: &str, artifact: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_insert_with(|| Arc::from(artifact));
    }
}

impl std::fmt::Debug for SharedArtifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        write!(f, "SharedArtifacts({count} components)")
    }
}

/// Advances the engine's epoch every tick, for as long as a host or a step built by it lives.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("usm-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(tick);
                        engine.increment_epoch();
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl PluginHost {
    /// Builds the engine and its epoch ticker. `store` caches compiled artifacts and serves
    /// `host.get-record`; without one, components are compiled on every load and record reads
    /// fail.
    pub fn new(limits: PluginLimits, store: Option<Arc<dyn Store>>) -> Result<Self, PluginError> {
        let engine = limits::engine(&limits).map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        bindings::Step::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        let ticker = EpochTicker::start(engine.clone(), limits.epoch_tick)
            .map_err(|e| PluginError::Instantiate(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            linker,
            limits,
            store,
            queries: Arc::default(),
            shared: None,
            ticker: Arc::new(ticker),
        })
    }

    /// Also keeps compiled components in `shared`, and loads them from there.
    #[must_use]
    pub fn with_shared_artifacts(mut self, shared: SharedArtifacts) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Compiles a component, or loads its compiled artifact from the store's cache (or the
    /// shared one).
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        check_api_version(bytes)?;
        let key = self.artifact_key(bytes);
        let stored = self
            .store
            .as_ref()
            .and_then(|store| store.artifact(&key).ok().flatten());
        let in_store = stored.is_some();
        let cached = stored
            .map(Arc::<[u8]>::from)
            .or_else(|| self.shared.as_ref().and_then(|shared| shared.get(&key)));
        if let Some(artifact) = cached {
            // SAFETY: the artifact was produced by `Component::serialize` of an engine with the
            // same compatibility hash (it is part of the key), and lives in our own store or in
            // this process's memory; wasmtime additionally checks its version header.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize(&self.engine, &artifact) } {
                Ok(component) => {
                    self.remember(&key, &artifact, in_store);
                    return Ok(component);
                }
                Err(error) => tracing::warn!(%error, "cached artifact unusable; recompiling"),
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        match component.serialize() {
            Ok(artifact) => self.remember(&key, &artifact, false),
            Err(error) => tracing::warn!(%error, "cannot serialise a compiled component"),
        }
        Ok(component)
    }

    /// Keeps a compiled artifact in the store (unless it came from there) and the shared cache.
    fn remember(&self, key: &str, artifact: &[u8], in_store: bool) {
        if let Some(store) = &self.store
            && !in_store
            && let Err(error) = store.put_artifact(key, artifact)
        {
            tracing::warn!(%error, "cannot cache a compiled component");
        }
        if let Some(shared) = &self.shared {
            shared.put(key, artifact);
        }
    }

    /// `sha256(component) / sha256(engine compatibility)`: a new wasmtime or engine setting
    /// never picks up an old artifact.
    pub fn artifact_key(&self, bytes: &[u8]) -> String {
        struct ShaHasher(Sha256);
        impl Hasher for ShaHasher {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut compat = ShaHasher(Sha256::new());
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        format!(
            "wasm/{}/{}",
            hex(&Sha256::digest(bytes)),
            hex(&compat.0.finalize())
        )
    }

    /// Builds a step from a component: compile (or load from cache), link, describe, check.
    pub fn step(&self, spec: &StepSpec<'_>) -> Result<WasmStep, PluginError> {
        let StepSpec {
            module,
            step,
            bytes,
            hook,
            config,
            capabilities,
            limits,
        } = *spec;
        let component = self.compile(bytes)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        let pre = StepPre::new(pre).map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        let step = WasmStep {
            engine: self.engine.clone(),
            pre,
            module: module.to_owned(),
            name: step.to_owned(),
            config: config.to_string(),
            can_read_records: capabilities.iter().any(|c| c == RECORDS_READ),
            store: self.store.clone(),
            queries: Arc::clone(&self.queries),
            limits,
            epoch_tick: self.limits.epoch_tick,
            _ticker: Arc::clone(&self.ticker),
        };
        let info = step
            .describe()
            .map_err(|e| PluginError::Instantiate(e.to_string()))?;
        let wit_hook = bindings::wit_hook(hook);
        if !info.hooks.contains(&wit_hook) {
            return Err(PluginError::Hook(format!(
                "the plugin {} serves {:?}, not the {hook} hook the manifest gives it",
                info.name, info.hooks
            )));
        }
        if let Some(schema) = info.config_schema.as_deref() {
            let schema: Value = serde_json::from_str(schema).map_err(|e| {
                PluginError::Mismatch(format!("the plugin's config schema is not JSON: {e}"))
            })?;
            let validator = jsonschema::validator_for(&schema).map_err(|e| {
                PluginError::Mismatch(format!("the plugin's config schema is invalid: {e}"))
            })?;
            if let Some(error) = validator.iter_errors(config).next() {
                return Err(PluginError::Config {
                    pointer: error.instance_path().to_string(),
                    message: error.to_string(),
                });
            }
        }
        Ok(step)
    }
}

impl StepBuilder for PluginHost {
    fn build(&self, request: &BuildRequest<'_>) -> Result<Arc<dyn Step>, BuildError> {
        let bytes = request
            .files
            .get(request.file)
            .ok_or_else(|| format!("{} is not in the module", request.file))?;
        let limits = CallLimits {
            timeout: Duration::from_millis(
                request
                    .step
                    .timeout_ms
                    .unwrap_or(self.limits.default_timeout_ms),
            ),
            memory_bytes: request
                .step
                .memory_mib
                .map_or(self.limits.default_memory_bytes, |mib| {
                    mib.saturating_mul(1024 * 1024)
                }),
            max_output_bytes: self.limits.max_output_bytes,
        };
        if limits.memory_bytes > self.limits.max_memory_bytes {
            return Err(BuildError::in_manifest(
                "memory_mib",
                format!(
                    "asks for {} bytes; this server allows at most {}",
                    limits.memory_bytes, self.limits.max_memory_bytes
                ),
            ));
        }
        if limits.timeout > self.limits.max_timeout {
            return Err(BuildError::in_manifest(
                "timeout_ms",
                format!(
                    "is over the server's maximum of {:?}",
                    self.limits.max_timeout
                ),
            ));
        }
        let step = self
            .step(&StepSpec {
                module: request.module,
                step: &request.step.name,
                bytes,
                hook: request.step.hook,
                config: request.config,
                capabilities: request.capabilities,
                limits,
            })
            .map_err(|error| match error {
                PluginError::Config { pointer, message } => {
                    BuildError::in_manifest(format!("config{pointer}"), message)
                }
                PluginError::Hook(message) => BuildError::in_manifest("hook", message),
                other => BuildError::from(other.to_string()),
            })?;
        Ok(Arc::new(step))
    }
}

/// Everything a WASM step is built from.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec<'a> {
    /// The module id.
    pub module: &'a str,
    /// The step name.
    pub step: &'a str,
    /// The component.
    pub bytes: &'a [u8],
    /// The hook the manifest gives the step.
    pub hook: Hook,
    /// The step's config.
    pub config: &'a Value,
    /// Granted capabilities.
    pub capabilities: &'a [String],
    /// Call limits.
    pub limits: CallLimits,
}

/// Limits of one step's calls.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Budget of the step's own CPU time (checked at every epoch tick); host calls are not
    /// charged to it, and a wall-clock backstop of [`usm_engine::budget::wall_limit`] ends a
    /// call the host cannot finish.
    pub timeout: Duration,
    /// Largest linear memory.
    pub memory_bytes: u64,
    /// Largest output (patch or effects, in bytes of JSON).
    pub max_output_bytes: usize,
}

/// A component bound to its config: one fresh instance per call.
pub struct WasmStep {
    engine: wasmtime::Engine,
    pre: StepPre<HostState>,
    module: String,
    name: String,
    config: String,
    can_read_records: bool,
    store: Option<Arc<dyn Store>>,
    queries: Arc<QueryCache>,
    limits: CallLimits,
    epoch_tick: Duration,
    /// Deadlines need the ticker: it lives as long as any step.
    _ticker: Arc<EpochTicker>,
}

impl WasmStep {
    fn new_store(&self, domain: Option<String>) -> wasmtime::Store<HostState> {
        let state = HostState::new(CallSetup {
            module: &self.module,
            step: &self.name,
            memory_bytes: self.limits.memory_bytes,
            domain,
            records: if self.can_read_records {
                self.store.clone()
            } else {
                None
            },
            queries: Arc::clone(&self.queries),
            can_read_records: self.can_read_records,
            budget: CallBudget::start(self.limits.timeout),
        });
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        let tick = self.epoch_tick;
        let ticks = move |left: Duration| {
            u64::try_from(left.as_micros().div_ceil(tick.as_micros().max(1)))
                .unwrap_or(u64::MAX)
                .max(1)
        };
        // The first check comes when the budget has passed in wall-clock time; each later one
        // when the CPU time left could have been used up.
        store.set_epoch_deadline(ticks(self.limits.timeout));
        store.epoch_deadline_callback(move |mut context| match context.data().budget.check() {
            BudgetCheck::Within(left) => Ok(wasmtime::UpdateDeadline::Continue(ticks(left))),
            BudgetCheck::Spent => Ok(wasmtime::UpdateDeadline::Interrupt),
            BudgetCheck::Stalled => {
                context.data_mut().stalled = true;
                Ok(wasmtime::UpdateDeadline::Interrupt)
            }
        });
        store
    }

    fn classify(&self, error: &wasmtime::Error, store: &wasmtime::Store<HostState>) -> StepError {
        if store.data().limiter.memory_denied() {
            return StepError::Memory(format!(
                "a memory grow past {} bytes was refused",
                self.limits.memory_bytes
            ));
        }
        if store.data().stalled {
            return StepError::Stalled(
                u64::try_from(store.data().budget.wall_limit().as_millis()).unwrap_or(u64::MAX),
            );
        }
        if let Some(wasmtime::Trap::Interrupt) = error.downcast_ref::<wasmtime::Trap>() {
            return StepError::Timeout(
                u64::try_from(self.limits.timeout.as_millis()).unwrap_or(u64::MAX),
            );
        }
        let stderr = store.data().stderr_tail();
        let mut message = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        if !stderr.is_empty() {
            message.push_str(": ");
            message.push_str(&stderr);
        }
        StepError::Trap(message)
    }

    /// Calls the plugin's `describe`.
    pub fn describe(&self) -> Result<wit::Info, StepError> {
        let mut store = self.new_store(None);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&e, &store))?;
        instance
            .call_describe(&mut store)
            .map_err(|e| self.classify(&e, &store))
    }

    fn output(&self, output: wit::Output) -> Result<StepOutput, StepError> {
        let size = match &output {
            wit::Output::Proceed => 0,
            wit::Output::Patch(patch) => patch.len(),
            wit::Output::Reject(rejection) => rejection.code.len() + rejection.message.len(),
            wit::Output::Effects(effects) => effects.iter().map(String::len).sum(),
        };
        if size > self.limits.max_output_bytes {
            return Err(StepError::OutputTooLarge {
                size,
                limit: self.limits.max_output_bytes,
            });
        }
        match output {
            wit::Output::Proceed => Ok(StepOutput::Continue),
            wit::Output::Patch(patch) => match serde_json::from_str(&patch) {
                Ok(Value::Object(patch)) => Ok(StepOutput::Patch(patch)),
                Ok(_) => Err(StepError::InvalidOutput(
                    "the patch is not a JSON object".into(),
                )),
                Err(e) => Err(StepError::InvalidOutput(format!(
                    "the patch is not JSON: {e}"
                ))),
            },
            wit::Output::Reject(rejection) => {
                if rejection.code.is_empty() || rejection.code.len() > 100 {
                    return Err(StepError::InvalidOutput(
                        "a rejection code must be 1-100 bytes".into(),
                    ));
                }
                Ok(StepOutput::Reject {
                    code: rejection.code,
                    message: rejection.message,
                })
            }
            wit::Output::Effects(effects) => effects
                .iter()
                .map(|effect| {
                    serde_json::from_str::<Effect>(effect).map_err(|e| {
                        StepError::InvalidOutput(format!("bad effect {effect:.100}: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(StepOutput::Effects),
        }
    }
}

impl Step for WasmStep {
    fn run(&self, input: &StepInput<'_>) -> Result<StepOutput, StepError> {
        let domain = input
            .record
            .get("domain")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut store = self.new_store(domain);
        let wit_input = wit::Input {
            hook: bindings::wit_hook(input.hook),
            phase: match input.phase {
                Phase::Before => wit::Phase::Before,
                Phase::After => wit::Phase::After,
            },
            record: input.record.to_string(),
            previous: input.previous.map(Value::to_string),
            actor: serde_json::to_string(input.actor).unwrap_or_default(),
            context: input.context.to_string(),
            config: self.config.clone(),
        };
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&e, &store))?;
        match instance.call_run(&mut store, &wit_input) {
            Ok(Ok(output)) => self.output(output),
            Ok(Err(message)) => Err(StepError::Trap(format!(
                "returned an error: {message:.1000}"
            ))),
            Err(error) => Err(self.classify(&error, &store)),
        }
    }
}

/// Reads the `usm:plugin` version a component was built for and checks this server implements it.
/// usm-sdk records it in the [`API_SECTION`] custom section; a component built by other tools
/// (componentize-js, componentize-py) names it in its `usm:plugin/…@x.y.z` imports and exports.
pub fn check_api_version(bytes: &[u8]) -> Result<(), PluginError> {
    let mut section = None;
    let mut named = std::collections::BTreeSet::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload =
            payload.map_err(|e| PluginError::Compile(format!("not a valid component: {e}")))?;
        match payload {
            wasmparser::Payload::CustomSection(custom) if custom.name() == API_SECTION => {
                section = Some(String::from_utf8_lossy(custom.data()).into_owned());
            }
            wasmparser::Payload::ComponentImportSection(imports) => {
                for import in imports {
                    let import = import.map_err(|e| PluginError::Compile(e.to_string()))?;
                    named.extend(plugin_api_version(import.name.0));
                }
            }
            wasmparser::Payload::ComponentExportSection(exports) => {
                for export in exports {
                    let export = export.map_err(|e| PluginError::Compile(e.to_string()))?;
                    named.extend(plugin_api_version(export.name.0));
                }
            }
            _ => {}
        }
    }
    let text = match (section, named.len()) {
        (Some(text), _) => text,
        (None, 1) => named.pop_first().unwrap_or_default(),
        (None, 0) => {
            return Err(PluginError::ApiVersion(format!(
                "neither a {API_SECTION} section nor a usm:plugin import or export: not a usm \
                 plugin (build it against sdk/wit/usm-plugin.wit)"
            )));
        }
        (None, _) => {
            let versions: Vec<_> = named.into_iter().collect();
            return Err(PluginError::ApiVersion(format!(
                "the component names several usm:plugin versions ({}); build it against one",
                versions.join(", ")
            )));
        }
    };
    let version = semver::Version::parse(text.trim()).map_err(|e| {
        PluginError::ApiVersion(format!("{API_SECTION} holds {text:?}, not a version: {e}"))
    })?;
    // Within 0.x a minor version is a breaking change, as in Cargo.
    let compatible = semver::VersionReq::parse(&format!(
        "^{}.{}",
        HOST_API_VERSION.major, HOST_API_VERSION.minor
    ))
    .map_err(|e| PluginError::ApiVersion(e.to_string()))?;
    if compatible.matches(&version) && version <= HOST_API_VERSION {
        Ok(())
    } else {
        Err(PluginError::ApiVersion(format!(
            "the plugin was built for usm:plugin {version}; this server implements {HOST_API_VERSION}"
        )))
    }
}

/// The version in an interface name such as `usm:plugin/host@0.1.0`.
fn plugin_api_version(name: &str) -> Option<String> {
    let (interface, version) = name.strip_prefix("usm:plugin/")?.split_once('@')?;
    (!interface.is_empty()).then(|| version.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
