//! Composed pipelines: for each (domain, process, hook, phase) the ordered steps of the enabled
//! modules, and the before-phase runner that applies them to a proposed write.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Map, Value};
use usm_model::{Actor, Domain, Kind, Process, Record, StepRun, diff_record_values, merge_patch};

use crate::{
    EngineError,
    step::{Hook, OnError, Phase, Step, StepError, StepInput, StepOutput},
};

/// What runs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Runtime {
    /// A WASM component.
    Wasm,
    /// A rhai script.
    Rhai,
    /// Rust code linked into the server (tests and built-ins).
    Native,
}

/// A step as a module declares it, with the built step bound to its config.
pub struct BoundStep {
    /// The module that contributes the step.
    pub module: String,
    /// The step's name, unique within its module.
    pub name: String,
    /// What runs it.
    pub runtime: Runtime,
    /// The hook it serves.
    pub hook: Hook,
    /// The process whose records it sees.
    pub process: Process,
    /// Before or after the write.
    pub phase: Phase,
    /// Position in the pipeline: lower runs first, ties by module id then step name.
    pub order: i32,
    /// What a failure does.
    pub on_error: OnError,
    /// Only records of these kinds; every kind of the process when empty.
    pub kinds: Vec<Kind>,
    /// The step itself.
    pub step: Arc<dyn Step>,
    /// Suspends the step after repeated budget failures of its own.
    pub breaker: Breaker,
    /// How long its calls take.
    pub latency: StepLatency,
}

/// The time a step's calls take (calls its breaker turned away are not timed), for `/metrics`.
#[derive(Debug, Clone)]
pub struct StepLatency(pub prometheus_client::metrics::histogram::Histogram);

impl Default for StepLatency {
    fn default() -> Self {
        // 10 µs to about 1.3 s: steps run within budgets of milliseconds.
        Self(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_01, 2.0, 18),
        ))
    }
}

/// When a step's circuit breaker trips and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive budget failures of the step's own making (CPU time, memory) that suspend it;
    /// 0 turns the breaker off.
    pub trip_after: u32,
    /// How long a suspended step fails fast before one call may try again.
    pub suspension: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            trip_after: 5,
            suspension: Duration::from_secs(30),
        }
    }
}

/// A circuit breaker per step: a step that keeps running out of its own CPU or memory budget
/// burns the cores other domains need, so after a few such failures in a row it fails fast for
/// a while instead of being run; then a single call tries again.
///
/// Only failures the step causes count. A budget is CPU time of the step's own code, so a host
/// stall, a slow store or a starved thread never makes a step time out; a call that the host
/// could not finish ([`StepError::Stalled`]) neither counts nor clears the count.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive: u32,
    half_open: bool,
    suspended_until: Option<Instant>,
    suspensions: u64,
    failures: BTreeMap<&'static str, u64>,
}

/// What a step's breaker has seen, for `/metrics` and `GET /api/v1/pipelines`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerView {
    /// Seconds the step stays suspended; absent when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_for_secs: Option<u64>,
    /// How often the step was suspended since the server started.
    pub suspensions: u64,
    /// Failed calls since the server started, by kind (`timeout`, `memory`, `trap`, …).
    pub failures: BTreeMap<String, u64>,
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err` while the step is suspended.
    fn admit(&self) -> Result<(), StepError> {
        let mut state = self.lock();
        match state.suspended_until {
            Some(until) if Instant::now() < until => Err(StepError::Suspended(
                until
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    .max(1),
            )),
            Some(_) => {
                // Half open: this call may try; a failure of its own suspends the step again.
                state.half_open = true;
                state.suspended_until = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn record(
        &self,
        policy: &BreakerPolicy,
        module: &str,
        step: &str,
        result: &Result<StepOutput, StepError>,
    ) {
        let mut state = self.lock();
        let error = match result {
            Ok(_) => {
                state.consecutive = 0;
                state.half_open = false;
                return;
            }
            Err(error) => error,
        };
        *state.failures.entry(error.kind()).or_default() += 1;
        match error {
            StepError::Timeout(_) | StepError::Memory(_) => {
                state.consecutive = state.consecutive.saturating_add(1);
                let trips = state.half_open || state.consecutive >= policy.trip_after;
                if policy.trip_after > 0 && trips {
                    state.consecutive = 0;
                    state.half_open = false;
                    state.suspensions += 1;
                    state.suspended_until = Some(Instant::now() + policy.suspension);
                    tracing::warn!(
                        target: "usm::breaker",
                        %module, %step, %error,
                        suspended_secs = policy.suspension.as_secs(),
                        "step suspended after {} consecutive budget failures of its own",
                        policy.trip_after
                    );
                }
            }
            StepError::Stalled(_) | StepError::Suspended(_) => {}
            _ => {
                state.consecutive = 0;
                state.half_open = false;
            }
        }
    }

    /// What the breaker has seen.
    pub fn view(&self) -> BreakerView {
        let state = self.lock();
        BreakerView {
            suspended_for_secs: state
                .suspended_until
                .map(|until| until.saturating_duration_since(Instant::now()))
                .filter(|left| !left.is_zero())
                .map(|left| left.as_secs().max(1)),
            suspensions: state.suspensions,
            failures: state
                .failures
                .iter()
                .map(|(kind, count)| ((*kind).to_owned(), *count))
                .collect(),
        }
    }
}

impl BoundStep {
    /// Runs the step unless its breaker holds it suspended, and lets the breaker learn from the
    /// result.
    pub fn call(
        &self,
        policy: &BreakerPolicy,
        input: &StepInput<'_>,
    ) -> Result<StepOutput, StepError> {
        let result = match self.breaker.admit() {
            Ok(()) => {
                let started = Instant::now();
                let result = self.step.run(input);
                self.latency.0.observe(started.elapsed().as_secs_f64());
                result
            }
            Err(suspended) => Err(suspended),
        };
        self.breaker
            .record(policy, &self.module, &self.name, &result);
        result
    }

    /// Whether the step applies to records of `kind`.
    pub fn applies_to(&self, kind: &Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(kind)
    }
}

impl std::fmt::Debug for BoundStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} ({:?} {} {:?} #{})",
            self.module, self.name, self.phase, self.hook, self.process, self.order
        )
    }
}

type Key = (Domain, Process, Hook, Phase);

/// The composed pipelines of one set of enabled modules. Immutable: a change of the enabled set
/// builds a new value and swaps it in whole, so a write sees either the old or the new set.
#[derive(Debug, Default)]
pub struct Pipelines {
    steps: HashMap<Key, Vec<Arc<BoundStep>>>,
}

/// One composed pipeline, as `GET /api/v1/pipelines` shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PipelineView {
    /// The domain.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub domain: Domain,
    /// The process.
    pub process: Process,
    /// The hook.
    pub hook: Hook,
    /// The phase.
    pub phase: Phase,
    /// The steps in the order they run.
    pub steps: Vec<StepView>,
}

/// One step of a composed pipeline.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepView {
    /// The module.
    pub module: String,
    /// The step.
    pub step: String,
    /// `wasm`, `rhai` or `native`.
    pub kind: Runtime,
    /// Its order value.
    pub order: i32,
    /// What a failure does.
    pub on_error: OnError,
    /// The record kinds it is limited to (all of the process when empty).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub kinds: Vec<Kind>,
    /// Whether the step is suspended, and its failures since the server started.
    pub breaker: BreakerView,
}

impl Pipelines {
    /// Composes pipelines from steps enabled in domains.
    pub fn compose<'a>(
        enabled: impl IntoIterator<Item = (&'a Domain, &'a Arc<BoundStep>)>,
    ) -> Self {
        let mut steps: HashMap<Key, Vec<Arc<BoundStep>>> = HashMap::new();
        for (domain, step) in enabled {
            steps
                .entry((domain.clone(), step.process, step.hook, step.phase))
                .or_default()
                .push(Arc::clone(step));
        }
        for list in steps.values_mut() {
            list.sort_by(|a, b| (a.order, &a.module, &a.name).cmp(&(b.order, &b.module, &b.name)));
        }
        Self { steps }
    }

    /// The steps of one pipeline, in order.
    pub fn steps(
        &self,
        domain: &Domain,
        process: Process,
        hook: Hook,
        phase: Phase,
    ) -> &[Arc<BoundStep>] {
        self.steps
            .get(&(domain.clone(), process, hook, phase))
            .map_or(&[], Vec::as_slice)
    }

    /// Each step's latency, once per step (a step enabled in several domains is one step).
    pub fn step_latencies(&self) -> Vec<(String, String, StepLatency)> {
        let mut seen = std::collections::BTreeMap::new();
        for step in self.steps.values().flatten() {
            seen.entry((step.module.clone(), step.name.clone()))
                .or_insert_with(|| step.latency.clone());
        }
        seen.into_iter()
            .map(|((module, step), latency)| (module, step, latency))
            .collect()
    }

    /// Every non-empty pipeline, sorted by domain, process, hook and phase.
    pub fn describe(&self) -> Vec<PipelineView> {
        let mut views: Vec<PipelineView> = self
            .steps
            .iter()
            .map(|((domain, process, hook, phase), steps)| PipelineView {
                domain: domain.clone(),
                process: *process,
                hook: *hook,
                phase: *phase,
                steps: steps
                    .iter()
                    .map(|s| StepView {
                        module: s.module.clone(),
                        step: s.name.clone(),
                        kind: s.runtime,
                        order: s.order,
                        on_error: s.on_error,
                        kinds: s.kinds.clone(),
                        breaker: s.breaker.view(),
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| {
            (&a.domain, a.process, a.hook, a.phase).cmp(&(&b.domain, b.process, b.hook, b.phase))
        });
        views
    }
}

/// Members a before-step may patch.
const PATCHABLE: [&str; 3] = ["title", "fields", "links"];

/// The before-phase of one write.
pub(crate) struct BeforeRun<'a> {
    pub(crate) steps: &'a [Arc<BoundStep>],
    pub(crate) hook: Hook,
    pub(crate) actor: &'a Actor,
    pub(crate) previous: Option<&'a Record>,
    pub(crate) context: Value,
    pub(crate) max_patch_depth: usize,
    pub(crate) breaker: &'a BreakerPolicy,
}

impl BeforeRun<'_> {
    /// Runs the steps on `proposed`; `check` validates a patched record (schema, title, links).
    /// Returns the final record and what each step did.
    pub(crate) fn run(
        self,
        proposed: Record,
        check: impl Fn(&str, &Record, Record) -> Result<Record, EngineError>,
    ) -> Result<(Record, Vec<StepRun>), EngineError> {
        let kind = proposed.kind.clone();
        let steps: Vec<&Arc<BoundStep>> =
            self.steps.iter().filter(|s| s.applies_to(&kind)).collect();
        if steps.is_empty() {
            return Ok((proposed, Vec::new()));
        }
        let to_value = |record: &Record| {
            serde_json::to_value(record)
                .map_err(|e| EngineError::invalid("/", format!("record does not serialise: {e}")))
        };
        let previous = self.previous.map(to_value).transpose()?;
        let mut record = proposed;
        let mut current = to_value(&record)?;
        if self.hook == Hook::Create {
            // The id is assigned at commit; steps of a create see none.
            current["id"] = Value::Null;
        }
        let mut runs = Vec::with_capacity(steps.len());
        for step in steps {
            let started = Instant::now();
            let input = StepInput {
                hook: self.hook,
                phase: Phase::Before,
                record: &current,
                previous: previous.as_ref(),
                actor: self.actor,
                context: &self.context,
            };
            let verdict = match step.call(self.breaker, &input) {
                Ok(StepOutput::Continue) => Verdict::Continue,
                Ok(StepOutput::Patch(patch)) => {
                    let check = |candidate| check(&step.module, &record, candidate);
                    match patched(&record, &current, &patch, self.max_patch_depth, &check) {
                        Ok((value, candidate)) => Verdict::Patched(value, Box::new(candidate)),
                        Err(error) => Verdict::Failed(error),
                    }
                }
                Ok(StepOutput::Reject { code, message }) => Verdict::Reject { code, message },
                Ok(StepOutput::Effects(_)) => Verdict::Failed(StepError::InvalidOutput(
                    "before-steps cannot return effects".into(),
                )),
                Err(error) => Verdict::Failed(error),
            };
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut run = StepRun {
                module: step.module.clone(),
                step: step.name.clone(),
                outcome: "continued".into(),
                micros,
                changes: Vec::new(),
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Patched(value, candidate) => {
                    run.outcome = "patched".into();
                    run.changes = diff_record_values(&current, &value);
                    current = value;
                    record = *candidate;
                }
                Verdict::Reject { code, message } => {
                    tracing::info!(module = %step.module, step = %step.name, %code, %message, "write rejected by step");
                    return Err(EngineError::StepRejected {
                        module: step.module.clone(),
                        step: step.name.clone(),
                        code,
                        message,
                    });
                }
                Verdict::Failed(error) => match step.on_error {
                    OnError::Fail => {
                        tracing::warn!(module = %step.module, step = %step.name, %error, "step failed; write refused");
                        return Err(EngineError::StepFailed {
                            module: step.module.clone(),
                            step: step.name.clone(),
                            error,
                        });
                    }
                    OnError::Skip => {
                        tracing::warn!(module = %step.module, step = %step.name, %error, "step failed; skipped");
                        run.outcome = format!("skipped: {}", error.kind());
                    }
                },
            }
            runs.push(run);
        }
        Ok((record, runs))
    }
}

/// What one step did to the proposed record.
enum Verdict {
    Continue,
    Patched(Value, Box<Record>),
    Reject { code: String, message: String },
    Failed(StepError),
}

/// Applies a step's patch and checks the result is still a valid record.
fn patched(
    record: &Record,
    current: &Value,
    patch: &Map<String, Value>,
    max_depth: usize,
    check: &impl Fn(Record) -> Result<Record, EngineError>,
) -> Result<(Value, Record), StepError> {
    let value = apply_patch(current, patch, max_depth)?;
    let broken = |e: serde_json::Error| {
        StepError::InvalidOutput(format!("the patch breaks the record: {e}"))
    };
    let member = |name: &str| value.get(name).cloned().unwrap_or(Value::Null);
    let mut candidate = record.clone();
    candidate.title = serde_json::from_value(member("title")).map_err(broken)?;
    candidate.fields = serde_json::from_value(member("fields")).map_err(broken)?;
    candidate.links = serde_json::from_value(member("links")).map_err(broken)?;
    let candidate = check(candidate)
        .map_err(|e| StepError::InvalidOutput(format!("the patched record is invalid: {e}")))?;
    Ok((value, candidate))
}

fn apply_patch(
    current: &Value,
    patch: &Map<String, Value>,
    max_depth: usize,
) -> Result<Value, StepError> {
    if let Some(member) = patch.keys().find(|k| !PATCHABLE.contains(&k.as_str())) {
        return Err(StepError::InvalidOutput(format!(
            "a patch may change title, fields and links, not {member:?}"
        )));
    }
    let mut next = current.clone();
    let Value::Object(record) = &mut next else {
        return Err(StepError::InvalidOutput(
            "the record is not an object".into(),
        ));
    };
    merge_patch(record, patch, max_depth).map_err(|e| StepError::InvalidOutput(e.to_string()))?;
    Ok(next)
}
