//! `usm-script-host` runs rhai scripts as pipeline steps. One factory ([`hardened_engine`])
//! configures every engine with the same limits — operations, call depth, expression depth,
//! string/array/map sizes, a wall-clock deadline — with `eval` disabled and imports resolved only
//! from the module's own scripts, compiled up front. Scripts are compiled to an AST once, when the
//! step is built; a call converts the record to a rhai map and calls `fn run(input)`.
//!
//! A script's `run` returns `()` to continue, `patch(#{...})` to patch the proposed record,
//! `reject(code, message)` to refuse the write, or `effects([...])` from an after-step.

pub mod automation;

use std::{cell::RefCell, collections::BTreeMap, sync::Arc};

use rhai::{
    AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Module, Scope,
    module_resolvers::StaticModuleResolver,
};
use serde_json::Value;
use usm_engine::{
    BuildError, BuildRequest, Effect, Step, StepBuilder, StepError, StepInput, StepOutput,
    budget::{BudgetCheck, CallBudget},
};

/// Limits of one script call.
#[derive(Debug, Clone)]
pub struct ScriptLimits {
    /// Most rhai operations per call.
    pub max_operations: u64,
    /// Deepest function call nesting.
    pub max_call_levels: usize,
    /// Deepest expression nesting (global, in functions).
    pub max_expr_depths: (usize, usize),
    /// Longest string, in bytes.
    pub max_string_size: usize,
    /// Longest array.
    pub max_array_size: usize,
    /// Largest map.
    pub max_map_size: usize,
    /// Wall-clock budget per call, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depths: (64, 32),
            max_string_size: 1024 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            timeout_ms: 50,
        }
    }
}

/// Why scripts could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// A script does not compile.
    #[error("{file}:{line}: {message}")]
    Compile {
        /// The script file.
        file: String,
        /// Line of the error (0 when unknown).
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A script is not UTF-8.
    #[error("{0}: not UTF-8 text")]
    Encoding(String),
    /// The script has no `fn run(input)`.
    #[error("{0}: defines no `fn run(input)`")]
    NoRun(String),
    /// A script imported by another one fails when loaded as a module.
    #[error("{file}: cannot load as a module: {message}")]
    Module {
        /// The script file.
        file: String,
        /// Why.
        message: String,
    },
}

thread_local! {
    /// The budget of the call running on this thread; rhai's progress callback checks it.
    static BUDGET: RefCell<Option<CallBudget>> = const { RefCell::new(None) };
}

/// Why the progress callback ended a call: its own CPU budget ran out.
const SPENT: &str = "deadline";
/// Why the progress callback ended a call: it could not finish in wall-clock time.
const STALLED: &str = "stalled";

/// Runs `call` under a budget of `cpu_limit` of its own CPU time (see [`usm_engine::budget`]).
pub(crate) fn with_budget<T>(cpu_limit: std::time::Duration, call: impl FnOnce() -> T) -> T {
    BUDGET.with(|b| *b.borrow_mut() = Some(CallBudget::start(cpu_limit)));
    let result = call();
    BUDGET.with(|b| *b.borrow_mut() = None);
    result
}

/// Whether the progress callback ended a call because the host stalled rather than because
/// the script ran too long.
pub(crate) fn stalled(error: &EvalAltResult) -> bool {
    matches!(error, EvalAltResult::ErrorTerminated(token, _) if token.clone().into_string().is_ok_and(|t| t == STALLED))
}

/// How often (in operations) the progress callback looks at the clock.
const CLOCK_CHECK_EVERY: u64 = 256;

/// Characters of one `print` or `debug` call that reach the log.
const MAX_PRINT_CHARS: usize = 2_000;

/// A script's output as it is logged: at most [`MAX_PRINT_CHARS`], and whether it was cut. It
/// goes out as one field, escaped, so a newline in it cannot forge a log line of its own.
fn capped(text: &str) -> (&str, bool) {
    match text.char_indices().nth(MAX_PRINT_CHARS) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

/// The single place rhai engines are configured: every limit, no `eval`, and imports only from
/// `modules` (the module's own scripts, already compiled).
pub fn hardened_engine(limits: &ScriptLimits, modules: StaticModuleResolver) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depths.0, limits.max_expr_depths.1)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(32)
        .set_max_functions(512)
        .set_max_variables(1024)
        .set_strict_variables(true)
        .set_module_resolver(modules);
    engine.disable_symbol("eval");
    engine.on_progress(|operations| {
        if operations % CLOCK_CHECK_EVERY != 0 {
            return None;
        }
        match BUDGET.with(|b| b.borrow().as_ref().map(CallBudget::check)) {
            Some(BudgetCheck::Spent) => Some(Dynamic::from(SPENT)),
            Some(BudgetCheck::Stalled) => Some(Dynamic::from(STALLED)),
            Some(BudgetCheck::Within(_)) | None => None,
        }
    });
    engine.on_print(|text| {
        let (output, truncated) = capped(text);
        tracing::info!(target: "usm::script", output = ?output, truncated, "script printed");
    });
    engine.on_debug(|text, source, position| {
        let (output, truncated) = capped(text);
        tracing::debug!(
            target: "usm::script",
            source = source.unwrap_or(""),
            %position,
            output = ?output,
            truncated,
            "script debug output"
        );
    });
    engine.register_fn("reject", |code: &str, message: &str| {
        let mut inner = Map::new();
        inner.insert("code".into(), code.into());
        inner.insert("message".into(), message.into());
        let mut outer = Map::new();
        outer.insert("reject".into(), inner.into());
        outer
    });
    engine.register_fn("patch", |patch: Map| {
        let mut outer = Map::new();
        outer.insert("patch".into(), patch.into());
        outer
    });
    engine.register_fn("effects", |effects: rhai::Array| {
        let mut outer = Map::new();
        outer.insert("effects".into(), effects.into());
        outer
    });
    engine
}

/// Builds rhai steps for modules; every engine it makes comes from [`hardened_engine`].
#[derive(Debug, Clone, Default)]
pub struct ScriptHost {
    limits: ScriptLimits,
}

impl ScriptHost {
    /// A script host whose steps run under `limits` (a manifest's `timeout_ms` overrides the
    /// deadline, never the other limits).
    pub fn new(limits: ScriptLimits) -> Self {
        Self { limits }
    }
}

/// Longest deadline a manifest may give a script.
const MAX_TIMEOUT_MS: u64 = 10_000;

impl StepBuilder for ScriptHost {
    fn build(&self, request: &BuildRequest<'_>) -> Result<Arc<dyn Step>, BuildError> {
        let timeout_ms = request.step.timeout_ms.unwrap_or(self.limits.timeout_ms);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(BuildError::in_manifest(
                "timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        let scripts =
            ModuleScripts::compile(request.files, &self.limits).map_err(|e| e.to_string())?;
        let step = scripts
            .step(request.file, request.config, timeout_ms)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(step))
    }
}

/// The scripts of one module, compiled with one engine whose imports resolve among them.
pub struct ModuleScripts {
    engine: Arc<Engine>,
    asts: BTreeMap<String, Arc<AST>>,
}

fn compile_error(file: &str, error: &rhai::ParseError) -> ScriptError {
    ScriptError::Compile {
        file: file.to_owned(),
        line: error.position().line().unwrap_or(0),
        message: error.err_type().to_string(),
    }
}

impl ModuleScripts {
    /// Compiles every `.rhai` file of a module. A script can `import "name"` another file of
    /// the same module as `name.rhai`; nothing else is importable.
    pub fn compile(
        files: &BTreeMap<String, Vec<u8>>,
        limits: &ScriptLimits,
    ) -> Result<Self, ScriptError> {
        let sources: Vec<(&String, &str)> = files
            .iter()
            .filter(|(name, _)| name.ends_with(".rhai"))
            .map(|(name, bytes)| {
                std::str::from_utf8(bytes)
                    .map(|text| (name, text))
                    .map_err(|_| ScriptError::Encoding(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        // Importable modules are compiled by an engine that can import nothing, so a module
        // cannot reach beyond the module's files.
        let loader = hardened_engine(limits, StaticModuleResolver::new());
        let mut resolver = StaticModuleResolver::new();
        for (name, source) in &sources {
            let ast = loader
                .compile(source)
                .map_err(|e| compile_error(name, &e))?;
            let module = Module::eval_ast_as_new(Scope::new(), &ast, &loader).map_err(|e| {
                ScriptError::Module {
                    file: (*name).clone(),
                    message: e.to_string(),
                }
            })?;
            resolver.insert(name.trim_end_matches(".rhai"), module);
        }
        let engine = Arc::new(hardened_engine(limits, resolver));
        let mut asts = BTreeMap::new();
        for (name, source) in sources {
            let ast = engine
                .compile(source)
                .map_err(|e| compile_error(name, &e))?;
            asts.insert(name.clone(), Arc::new(ast));
        }
        Ok(Self { engine, asts })
    }

    /// Builds the step that calls `fn run` of `file` with `config` bound.
    pub fn step(
        &self,
        file: &str,
        config: &Value,
        timeout_ms: u64,
    ) -> Result<ScriptStep, ScriptError> {
        let ast = self.asts.get(file).ok_or_else(|| ScriptError::Module {
            file: file.to_owned(),
            message: "no such script in the module".into(),
        })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "run" && f.params.len() == 1)
        {
            return Err(ScriptError::NoRun(file.to_owned()));
        }
        let config = to_dynamic(config);
        Ok(ScriptStep {
            engine: Arc::clone(&self.engine),
            ast: Arc::clone(ast),
            config,
            timeout_ms,
        })
    }
}

/// A compiled script bound to its config.
pub struct ScriptStep {
    engine: Arc<Engine>,
    ast: Arc<AST>,
    config: Dynamic,
    timeout_ms: u64,
}

/// JSON to rhai, directly (the serde bridge allocates twice as much).
pub(crate) fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(rhai::ImmutableString::from(s.as_str())),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect()),
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), to_dynamic(v)))
                .collect(),
        ),
    }
}

/// rhai to JSON; anything without a JSON form (functions, custom types) is refused.
pub(crate) fn to_json(value: &Dynamic) -> Result<Value, StepError> {
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| StepError::InvalidOutput(format!("{f} has no JSON form")));
    }
    if value.is_string() {
        return Ok(Value::String(
            value.clone().into_string().unwrap_or_default(),
        ));
    }
    if value.is_array() {
        let array = value
            .read_lock::<rhai::Array>()
            .ok_or_else(|| StepError::InvalidOutput("unreadable array".into()))?;
        return array
            .iter()
            .map(to_json)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if value.is_map() {
        let map = value
            .read_lock::<Map>()
            .ok_or_else(|| StepError::InvalidOutput("unreadable map".into()))?;
        return map
            .iter()
            .map(|(k, v)| to_json(v).map(|v| (k.to_string(), v)))
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(Value::Object);
    }
    Err(StepError::InvalidOutput(format!(
        "a {} has no JSON form",
        value.type_name()
    )))
}

impl Step for ScriptStep {
    fn run(&self, input: &StepInput<'_>) -> Result<StepOutput, StepError> {
        let mut map = Map::new();
        map.insert("hook".into(), input.hook.as_str().into());
        map.insert(
            "phase".into(),
            if input.phase == usm_engine::Phase::Before {
                "before"
            } else {
                "after"
            }
            .into(),
        );
        map.insert("record".into(), to_dynamic(input.record));
        map.insert(
            "previous".into(),
            input.previous.map_or(Dynamic::UNIT, to_dynamic),
        );
        let mut actor = Map::new();
        actor.insert("name".into(), input.actor.name.as_str().into());
        let roles: rhai::Array = input
            .actor
            .roles
            .iter()
            .map(|role| Dynamic::from(role_name(*role)))
            .collect();
        actor.insert("roles".into(), roles.into());
        map.insert("actor".into(), actor.into());
        map.insert("context".into(), to_dynamic(input.context));
        map.insert("config".into(), self.config.clone());

        let result = with_budget(std::time::Duration::from_millis(self.timeout_ms), || {
            self.engine.call_fn_with_options::<Dynamic>(
                CallFnOptions::new().eval_ast(false).rewind_scope(true),
                &mut Scope::new(),
                &self.ast,
                "run",
                (Dynamic::from_map(map),),
            )
        });
        let output = result.map_err(|error| self.classify(*error))?;
        interpret(&output)
    }
}

fn role_name(role: usm_model::Role) -> &'static str {
    match role {
        usm_model::Role::Admin => "admin",
        usm_model::Role::Agent => "agent",
        usm_model::Role::Requester => "requester",
        usm_model::Role::Automation => "automation",
    }
}

impl ScriptStep {
    fn classify(&self, error: EvalAltResult) -> StepError {
        match error {
            ref terminated @ EvalAltResult::ErrorTerminated(..) if stalled(terminated) => {
                let wall = usm_engine::budget::wall_limit(std::time::Duration::from_millis(
                    self.timeout_ms,
                ));
                StepError::Stalled(u64::try_from(wall.as_millis()).unwrap_or(u64::MAX))
            }
            EvalAltResult::ErrorTerminated(..) => StepError::Timeout(self.timeout_ms),
            EvalAltResult::ErrorTooManyOperations(_) => {
                StepError::Limit("too many operations".into())
            }
            EvalAltResult::ErrorStackOverflow(_) => StepError::Limit("call stack too deep".into()),
            EvalAltResult::ErrorDataTooLarge(what, _) => {
                StepError::Limit(format!("{what} too large"))
            }
            EvalAltResult::ErrorTooManyModules(_) => StepError::Limit("too many modules".into()),
            other => StepError::Trap(other.to_string()),
        }
    }
}

/// Turns a script's return value into a step output.
fn interpret(output: &Dynamic) -> Result<StepOutput, StepError> {
    if output.is_unit() {
        return Ok(StepOutput::Continue);
    }
    let value = to_json(output)?;
    let Value::Object(mut map) = value else {
        return Err(StepError::InvalidOutput(
            "return (), patch(…), reject(…) or effects(…)".into(),
        ));
    };
    let bad = |what: &str| StepError::InvalidOutput(what.to_owned());
    match (
        map.remove("patch"),
        map.remove("reject"),
        map.remove("effects"),
    ) {
        (Some(Value::Object(patch)), None, None) if map.is_empty() => Ok(StepOutput::Patch(patch)),
        (None, Some(Value::Object(reject)), None) if map.is_empty() => {
            let code = reject
                .get("code")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("reject needs a code"))?;
            let message = reject
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Ok(StepOutput::Reject {
                code: code.to_owned(),
                message: message.to_owned(),
            })
        }
        (None, None, Some(effects @ Value::Array(_))) if map.is_empty() => {
            let effects: Vec<Effect> =
                serde_json::from_value(effects).map_err(|e| bad(&format!("bad effect: {e}")))?;
            Ok(StepOutput::Effects(effects))
        }
        _ => Err(bad(
            "return (), patch(#{…}), reject(code, message) or effects([…])",
        )),
    }
}

#[cfg(test)]
mod tests;
