//! Automations: rhai scripts that run on a cron schedule, on matching outbox events, or on
//! demand, as an automation account with the same sandbox limits as steps (a longer deadline).
//! A script defines `fn run(ctx)`; `ctx` holds `trigger`, `event` (for event triggers), `config`
//! and `now`. Host functions let it query, create, update and transition records, notify, and
//! read KPIs; every run is logged with output, error and duration.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError, RwLock, atomic::Ordering},
    time::{Duration, Instant},
};

use jiff::{Timestamp, tz::TimeZone};
use rhai::{AST, Dynamic, EvalAltResult, Map, Scope, module_resolvers::StaticModuleResolver};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use usm_engine::{Background, Engine, ListRequest, NewRecord, RecordPatch, auth};
use usm_kpis::{KpiRequest, KpiService};
use usm_model::{Actor, Domain, EventType, Role};
use usm_store::StoreError;

use crate::{ScriptLimits, hardened_engine, to_dynamic, to_json};

const SPEC_PREFIX: &str = "automation/";
const RUN_PREFIX: &str = "automation-run/";
const CONSUMER: &str = AutomationWorker::CONSUMER;
/// Runs kept per automation.
const MAX_RUNS: usize = 100;
/// Printed lines kept per run.
const MAX_OUTPUT_LINES: usize = 200;

/// What starts an automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Trigger {
    /// A five-field cron expression (`minute hour day month weekday`), in UTC or in
    /// `time_zone`.
    Cron {
        /// E.g. `0 7 * * 1-5`.
        schedule: String,
        /// An IANA time zone (`Europe/Berlin`) whose wall clock the schedule reads; UTC when
        /// absent. A time the zone skips when its clocks go forward does not fire that day; one
        /// it repeats when they go back fires twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_zone: Option<String>,
    },
    /// Outbox events matching all given filters.
    Event {
        /// Event types; all when empty.
        #[serde(default)]
        events: Vec<EventType>,
        /// Record kinds; all when empty.
        #[serde(default)]
        kinds: Vec<String>,
        /// Domains; all when empty.
        #[serde(default)]
        domains: Vec<String>,
    },
    /// Only when an admin runs it.
    Manual,
}

/// An automation as defined (bundled in `scripts/automations/` or uploaded).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutomationSpec {
    /// Unique id.
    pub id: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// When it runs.
    pub trigger: Trigger,
    /// The rhai source, defining `fn run(ctx)`.
    pub script: String,
    /// Domains the automation account may work in; all when empty.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Handed to the script as `ctx.config`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: serde_json::Map<String, Value>,
}

/// One run of an automation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunLog {
    /// The automation.
    pub automation: String,
    /// `cron`, `event:<seq>` or `manual`.
    pub trigger: String,
    /// When it started.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub started_at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// What the script printed.
    pub output: Vec<String>,
    /// The script's result: any JSON value, `null` when it returned nothing or failed.
    pub result: Value,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why an automation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    /// The definition is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such automation (or none the caller may see).
    #[error("no automation {0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error(transparent)]
    Forbidden(#[from] usm_engine::auth::Forbidden),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Compiled {
    spec: AutomationSpec,
    ast: AST,
    cron: Option<Cron>,
    actor: Actor,
}

/// The automations of a server, and the rhai engine their host functions are bound to.
pub struct Automations {
    usm: Arc<Engine>,
    rhai: rhai::Engine,
    compiled: RwLock<BTreeMap<String, Arc<Compiled>>>,
    /// The last minute each cron automation ran in (it runs once per matching minute).
    last_minute: Mutex<BTreeMap<String, i64>>,
    timeout: Duration,
}

thread_local! {
    static ACTOR: std::cell::RefCell<Option<Actor>> = const { std::cell::RefCell::new(None) };
    static OUTPUT: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn current_actor() -> Result<Actor, Box<EvalAltResult>> {
    ACTOR
        .with(|a| a.borrow().clone())
        .ok_or_else(|| "no automation is running".into())
}

fn host_error(error: impl std::fmt::Display) -> Box<EvalAltResult> {
    error.to_string().into()
}

fn record_map(record: &usm_model::Record) -> Dynamic {
    serde_json::to_value(record).map_or(Dynamic::UNIT, |v| to_dynamic(&v))
}

fn json_of(value: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
    to_json(value).map_err(host_error)
}

/// Registers the host functions on an automation engine.
fn register_host(rhai: &mut rhai::Engine, usm: Arc<Engine>, kpi_service: Arc<KpiService>) {
    let engine = Arc::clone(&usm);
    rhai.register_fn(
        "query",
        move |filter: Map| -> Result<rhai::Array, Box<EvalAltResult>> {
            let actor = current_actor()?;
            let text = |key: &str| {
                filter
                    .get(key)
                    .filter(|v| !v.is_unit())
                    .map(|v| v.to_string())
            };
            let request = ListRequest {
                kind: text("kind"),
                state: text("state"),
                domain: text("domain"),
                limit: filter
                    .get("limit")
                    .and_then(|v| v.as_int().ok())
                    .and_then(|n| usize::try_from(n).ok()),
                cursor: None,
            };
            let page = engine.list(&actor, request).map_err(host_error)?;
            Ok(page.records.iter().map(record_map).collect())
        },
    );
    let engine = Arc::clone(&usm);
    rhai.register_fn(
        "get",
        move |id: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            let actor = current_actor()?;
            match engine.get(&actor, id) {
                Ok(record) => Ok(record_map(&record)),
                Err(usm_engine::EngineError::NotFound(_)) => Ok(Dynamic::UNIT),
                Err(error) => Err(host_error(error)),
            }
        },
    );
    let engine = Arc::clone(&usm);
    rhai.register_fn(
        "create",
        move |new: Map| -> Result<Dynamic, Box<EvalAltResult>> {
            let actor = current_actor()?;
            let new: NewRecord =
                serde_json::from_value(json_of(&Dynamic::from_map(new))?).map_err(host_error)?;
            let created = engine.create(&actor, new, None).map_err(host_error)?;
            Ok(record_map(&created.record))
        },
    );
    let engine = Arc::clone(&usm);
    rhai.register_fn(
        "update",
        move |id: &str, patch: Map| -> Result<Dynamic, Box<EvalAltResult>> {
            let actor = current_actor()?;
            let patch: RecordPatch =
                serde_json::from_value(json_of(&Dynamic::from_map(patch))?).map_err(host_error)?;
            Ok(record_map(
                &engine.update(&actor, id, patch, None).map_err(host_error)?,
            ))
        },
    );
    let engine = Arc::clone(&usm);
    rhai.register_fn(
        "transition",
        move |id: &str, to: &str, comment: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            let actor = current_actor()?;
            let comment = (!comment.is_empty()).then(|| comment.to_owned());
            Ok(record_map(
                &engine
                    .transition(&actor, id, to, comment, None)
                    .map_err(host_error)?,
            ))
        },
    );
    let engine = usm;
    rhai.register_fn("notify", move |id: &str, audience: &str, message: &str| -> Result<(), Box<EvalAltResult>> {
        let actor = current_actor()?;
        let record = engine.get(&actor, id).map_err(host_error)?;
        let payload = serde_json::json!({"audience": audience, "message": message, "automation": actor.name});
        engine.store().notify(&record, &actor.name, 0, payload).map_err(host_error)?;
        Ok(())
    });
    rhai.register_fn(
        "kpis",
        move |filter: Map| -> Result<Dynamic, Box<EvalAltResult>> {
            let actor = current_actor()?;
            let text = |key: &str| {
                filter
                    .get(key)
                    .filter(|v| !v.is_unit())
                    .map(|v| v.to_string())
            };
            let process = text("process")
                .map(|p| serde_json::from_value(Value::String(p)).map_err(host_error))
                .transpose()?;
            let request = KpiRequest {
                domain: text("domain"),
                process,
                from: None,
                to: None,
            };
            let kpis = kpi_service.compute(&actor, &request).map_err(host_error)?;
            Ok(serde_json::to_value(kpis).map_or(Dynamic::UNIT, |v| to_dynamic(&v)))
        },
    );
    rhai.register_fn("now", || Timestamp::now().to_string());
    rhai.register_fn(
        "timestamp_ms",
        |text: &str| -> Result<i64, Box<EvalAltResult>> {
            text.parse::<Timestamp>()
                .map(|t| t.as_millisecond())
                .map_err(host_error)
        },
    );
    rhai.on_print(|text| {
        OUTPUT.with(|o| {
            let mut output = o.borrow_mut();
            if output.len() < MAX_OUTPUT_LINES {
                output.push(text.chars().take(2000).collect());
            }
        });
    });
}

impl Automations {
    /// Automation support over `usm`, loading the automations stored before.
    pub fn new(
        usm: Arc<Engine>,
        kpis: Arc<KpiService>,
        limits: &ScriptLimits,
        timeout: Duration,
    ) -> Result<Self, AutomationError> {
        let mut rhai = hardened_engine(limits, StaticModuleResolver::new());
        register_host(&mut rhai, Arc::clone(&usm), kpis);
        let automations = Self {
            usm,
            rhai,
            compiled: RwLock::new(BTreeMap::new()),
            last_minute: Mutex::new(BTreeMap::new()),
            timeout,
        };
        let stored = automations.load()?;
        *automations
            .compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner) = stored;
        Ok(automations)
    }

    /// The stored automations, compiled.
    fn load(&self) -> Result<BTreeMap<String, Arc<Compiled>>, AutomationError> {
        let mut compiled = BTreeMap::new();
        for (_, bytes) in self.usm.store().settings(SPEC_PREFIX)? {
            let spec: AutomationSpec = serde_json::from_slice(&bytes)
                .map_err(|e| AutomationError::Invalid(format!("stored automation: {e}")))?;
            let automation = self.compile(spec)?;
            compiled.insert(automation.spec.id.clone(), Arc::new(automation));
        }
        Ok(compiled)
    }

    /// Reads the automations again, for the ones other nodes sharing the store defined or
    /// removed; holds them while reading, so one this node defines meanwhile is not lost.
    pub fn reload(&self) -> Result<(), AutomationError> {
        let mut compiled = self
            .compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *compiled = self.load()?;
        Ok(())
    }

    fn compile(&self, spec: AutomationSpec) -> Result<Compiled, AutomationError> {
        let id_ok = (1..=64).contains(&spec.id.len())
            && spec
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !id_ok {
            return Err(AutomationError::Invalid(
                "id: 1-64 lowercase letters, digits or '-'".into(),
            ));
        }
        let ast = self.rhai.compile(&spec.script).map_err(|e| {
            AutomationError::Invalid(format!(
                "script:{}: {}",
                e.position().line().unwrap_or(0),
                e.err_type()
            ))
        })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "run" && f.params.len() == 1)
        {
            return Err(AutomationError::Invalid(
                "script: defines no `fn run(ctx)`".into(),
            ));
        }
        let cron = match &spec.trigger {
            Trigger::Cron {
                schedule,
                time_zone,
            } => Some(
                Cron::parse(schedule, time_zone.as_deref()).map_err(AutomationError::Invalid)?,
            ),
            _ => None,
        };
        let domains: Vec<Domain> = spec
            .domains
            .iter()
            .map(|d| {
                Domain::new(d.as_str())
                    .map_err(|e| AutomationError::Invalid(format!("domains: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut actor = Actor::new(format!("automation:{}", spec.id), [Role::Automation]);
        if !domains.is_empty() {
            actor = actor.in_domains(domains);
        }
        Ok(Compiled {
            spec,
            ast,
            cron,
            actor,
        })
    }

    fn insert(&self, compiled: Compiled) {
        self.compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(compiled.spec.id.clone(), Arc::new(compiled));
    }

    /// Defines (or replaces) an automation for `by`, an admin whose domains include all the
    /// automation's (and all the replaced one's); compiled first; persisted.
    pub fn define(
        &self,
        by: &Actor,
        spec: AutomationSpec,
    ) -> Result<AutomationSpec, AutomationError> {
        let compiled = self.compile(spec)?;
        auth::admin_over(by, compiled.actor.domains.as_ref())?;
        if let Ok(replaced) = self.get(&compiled.spec.id) {
            auth::admin_over(by, replaced.actor.domains.as_ref())?;
        }
        let encoded = serde_json::to_vec(&compiled.spec)
            .map_err(|e| AutomationError::Invalid(e.to_string()))?;
        self.usm.store().write_settings(
            &[(format!("{SPEC_PREFIX}{}", compiled.spec.id), encoded)],
            &[],
        )?;
        let spec = compiled.spec.clone();
        self.insert(compiled);
        Ok(spec)
    }

    /// The automations `by` may see (those whose domains lie within its own), by id.
    pub fn list(&self, by: &Actor) -> Vec<AutomationSpec> {
        self.compiled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|c| auth::admin_sees(by, c.actor.domains.as_ref()))
            .map(|c| c.spec.clone())
            .collect()
    }

    /// An automation `by` may see; one outside its domains is not found.
    fn visible(&self, by: &Actor, id: &str) -> Result<Arc<Compiled>, AutomationError> {
        self.get(id)
            .ok()
            .filter(|c| auth::admin_sees(by, c.actor.domains.as_ref()))
            .ok_or_else(|| AutomationError::NotFound(id.chars().take(64).collect()))
    }

    /// Runs an automation `by` may see now, on its demand.
    pub fn run_manually(&self, by: &Actor, id: &str) -> Result<RunLog, AutomationError> {
        self.visible(by, id)?;
        self.run(id, "manual", None)
    }

    fn get(&self, id: &str) -> Result<Arc<Compiled>, AutomationError> {
        self.compiled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| AutomationError::NotFound(id.chars().take(64).collect()))
    }

    /// Runs an automation now, logs and returns the run.
    pub fn run(
        &self,
        id: &str,
        trigger: &str,
        event: Option<&usm_model::Event>,
    ) -> Result<RunLog, AutomationError> {
        let compiled = self.get(id)?;
        let started_at = Timestamp::now();
        let clock = Instant::now();
        let mut ctx = Map::new();
        ctx.insert("trigger".into(), trigger.into());
        ctx.insert("now".into(), started_at.to_string().into());
        ctx.insert(
            "config".into(),
            to_dynamic(&Value::Object(compiled.spec.config.clone())),
        );
        ctx.insert(
            "event".into(),
            event
                .and_then(|e| serde_json::to_value(e).ok())
                .map_or(Dynamic::UNIT, |v| to_dynamic(&v)),
        );
        ACTOR.with(|a| *a.borrow_mut() = Some(compiled.actor.clone()));
        OUTPUT.with(|o| o.borrow_mut().clear());
        let result = crate::with_budget(self.timeout, || {
            self.rhai.call_fn_with_options::<Dynamic>(
                rhai::CallFnOptions::new().eval_ast(false),
                &mut Scope::new(),
                &compiled.ast,
                "run",
                (Dynamic::from_map(ctx),),
            )
        });
        ACTOR.with(|a| *a.borrow_mut() = None);
        let output = OUTPUT.with(|o| std::mem::take(&mut *o.borrow_mut()));
        let (result, error) = match result {
            Ok(value) => (to_json(&value).unwrap_or(Value::Null), None),
            Err(error) => (Value::Null, Some(error.to_string())),
        };
        let log = RunLog {
            automation: id.to_owned(),
            trigger: trigger.to_owned(),
            started_at,
            duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            output,
            result,
            error,
        };
        self.log(&log)?;
        match &log.error {
            Some(error) => tracing::warn!(automation = id, trigger, %error, "automation failed"),
            None => tracing::info!(
                automation = id,
                trigger,
                ms = log.duration_ms,
                "automation ran"
            ),
        }
        Ok(log)
    }

    fn log(&self, log: &RunLog) -> Result<(), AutomationError> {
        let store = self.usm.store();
        let prefix = format!("{RUN_PREFIX}{}/", log.automation);
        let existing = store.settings(&prefix)?;
        let drop: Vec<String> = existing
            .iter()
            .take(existing.len().saturating_sub(MAX_RUNS - 1))
            .map(|(k, _)| k.clone())
            .collect();
        let key = format!("{prefix}{:020}", log.started_at.as_microsecond());
        let encoded =
            serde_json::to_vec(log).map_err(|e| AutomationError::Invalid(e.to_string()))?;
        store.write_settings(&[(key, encoded)], &drop)?;
        Ok(())
    }

    /// The runs of an automation `by` may see, newest first.
    pub fn runs(&self, by: &Actor, id: &str) -> Result<Vec<RunLog>, AutomationError> {
        self.visible(by, id)?;
        let mut runs: Vec<RunLog> = self
            .usm
            .store()
            .settings(&format!("{RUN_PREFIX}{id}/"))?
            .iter()
            .filter_map(|(_, bytes)| serde_json::from_slice(bytes).ok())
            .collect();
        runs.reverse();
        Ok(runs)
    }

    /// Runs the cron automations whose schedule matches the current minute (once per minute).
    pub fn run_due(&self, now: Timestamp) {
        let minute = now.as_second().div_euclid(60);
        let due: Vec<String> = self
            .compiled
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|c| c.cron.as_ref().is_some_and(|cron| cron.matches(now)))
            .map(|c| c.spec.id.clone())
            .collect();
        for id in due {
            let first = {
                let mut last = self
                    .last_minute
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                last.insert(id.clone(), minute) != Some(minute)
            };
            if first && let Err(error) = self.run(&id, "cron", None) {
                tracing::error!(automation = %id, %error, "cannot run the automation");
            }
        }
    }

    /// Runs event automations for new outbox events; returns how many events it read.
    pub fn consume_events(&self) -> Result<usize, AutomationError> {
        let store = self.usm.store();
        let cursor = store.cursor(CONSUMER)?;
        let events = store.events_after(cursor, 100)?;
        for event in &events {
            let matching: Vec<String> = self
                .compiled
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .filter(|c| match &c.spec.trigger {
                    Trigger::Event { events, kinds, domains } => {
                        (events.is_empty() || events.contains(&event.event_type))
                            && (kinds.is_empty() || kinds.iter().any(|k| k == event.kind.as_str()))
                            && (domains.is_empty() || domains.iter().any(|d| d == event.domain.as_str()))
                            // An automation never triggers on its own writes.
                            && event.actor != c.actor.name
                    }
                    _ => false,
                })
                .map(|c| c.spec.id.clone())
                .collect();
            for id in matching {
                self.run(&id, &format!("event:{}", event.seq), Some(event))?;
            }
            store.set_cursor(CONSUMER, event.seq)?;
        }
        Ok(events.len())
    }
}

/// The automation thread: cron once a second, events as they commit. Stops when dropped.
pub struct AutomationWorker(Background);

impl AutomationWorker {
    /// The name of its outbox cursor.
    pub const CONSUMER: &str = "automations";

    /// Starts running automations.
    pub fn start(automations: Arc<Automations>) -> std::io::Result<Self> {
        let commits = Arc::clone(automations.usm.commits());
        Background::spawn("usm-automations", commits, move |stop| {
            while !stop.load(Ordering::SeqCst) {
                let seen = automations.usm.commits().count();
                // Cron and event automations run on one node at a time.
                if !usm_store::holds_lease(automations.usm.store().as_ref(), CONSUMER) {
                    automations
                        .usm
                        .commits()
                        .wait_past(seen, Duration::from_millis(500));
                    continue;
                }
                automations.run_due(Timestamp::now());
                let read = automations.consume_events().unwrap_or_else(|error| {
                    tracing::error!(%error, "automation events failed");
                    0
                });
                if read == 0 {
                    automations
                        .usm
                        .commits()
                        .wait_past(seen, Duration::from_millis(500));
                }
            }
        })
        .map(Self)
    }

    /// Stops and waits.
    pub fn stop(self) {
        self.0.stop();
    }
}

/// A five-field cron expression, parsed and matched by `croner` (vixie-cron rules: a
/// restricted day of month and day of week match when either does), read on the wall clock of
/// a time zone (UTC unless one is named).
#[derive(Debug, Clone)]
struct Cron {
    schedule: croner::Cron,
    zone: TimeZone,
}

impl Cron {
    fn parse(text: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let schedule = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|error| format!("schedule {text:?}: {error}"))?;
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => jiff::tz::db().get(name).map_err(|_| {
                format!(
                    "time_zone {:?} is not an IANA time zone such as Europe/Berlin",
                    name.chars().take(64).collect::<String>()
                )
            })?,
        };
        Ok(Self { schedule, zone })
    }

    /// Whether the minute `now` falls in is one of the schedule's, on the zone's wall clock.
    fn matches(&self, now: Timestamp) -> bool {
        let at = now.to_zoned_datetime(self.zone.clone()).datetime();
        // croner speaks jiff 0.2; the civil minute crosses over field by field.
        let minute = jiff_croner::civil::date(at.year(), at.month(), at.day()).at(
            at.hour(),
            at.minute(),
            0,
            0,
        );
        self.schedule.is_time_matching(&minute).unwrap_or(false)
    }
}

#[cfg(test)]
mod cron_tests {
    use jiff::{Timestamp, civil::date, tz::TimeZone};

    use super::Cron;

    fn utc(at: jiff::civil::DateTime) -> Timestamp {
        at.to_zoned_datetime(TimeZone::UTC).unwrap().timestamp()
    }

    #[test]
    fn a_schedule_reads_its_time_zones_wall_clock_across_summer_time() {
        let berlin_seven = Cron::parse("0 7 * * *", Some("Europe/Berlin")).unwrap();
        assert!(
            berlin_seven.matches(utc(date(2026, 1, 15).at(6, 0, 0, 0))),
            "CET: UTC+1"
        );
        assert!(!berlin_seven.matches(utc(date(2026, 1, 15).at(7, 0, 0, 0))));
        assert!(
            berlin_seven.matches(utc(date(2026, 7, 15).at(5, 0, 0, 0))),
            "CEST: UTC+2"
        );
        // 02:30 does not exist in Berlin on 29 March 2026 (clocks go from 02:00 to 03:00).
        let skipped = Cron::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let that_night: usize = (0..180)
            .filter(|m| {
                skipped.matches(
                    utc(date(2026, 3, 28).at(23, 0, 0, 0)) + jiff::SignedDuration::from_mins(*m),
                )
            })
            .count();
        assert_eq!(that_night, 0);
        assert!(Cron::parse("0 7 * * *", Some("Mars/Olympus")).is_err());
        assert!(
            Cron::parse("0 7 * * *", None)
                .unwrap()
                .matches(utc(date(2026, 1, 15).at(7, 0, 0, 0)))
        );
    }

    #[test]
    fn cron_fields_match() {
        let weekday_mornings = Cron::parse("0 7 * * 1-5", None).unwrap();
        assert!(
            weekday_mornings.matches(utc(date(2026, 11, 30).at(7, 0, 0, 0))),
            "a Monday"
        );
        assert!(
            !weekday_mornings.matches(utc(date(2026, 11, 29).at(7, 0, 0, 0))),
            "a Sunday"
        );
        assert!(!weekday_mornings.matches(utc(date(2026, 11, 30).at(7, 1, 0, 0))));
        let every_quarter = Cron::parse("*/15 * * * *", None).unwrap();
        assert!(every_quarter.matches(utc(date(2026, 1, 1).at(3, 45, 0, 0))));
        assert!(!every_quarter.matches(utc(date(2026, 1, 1).at(3, 46, 0, 0))));
        assert!(Cron::parse("* * *", None).is_err());
        assert!(Cron::parse("61 * * * *", None).is_err());
        assert!(
            Cron::parse("0 * * * * *", None).is_err(),
            "seconds are not a cron field here"
        );
        // Day of month and day of week restricted together: either matches (vixie cron).
        let first_or_monday = Cron::parse("0 9 1 * 1", None).unwrap();
        assert!(
            first_or_monday.matches(utc(date(2026, 12, 1).at(9, 0, 0, 0))),
            "the 1st, a Tuesday"
        );
        assert!(
            first_or_monday.matches(utc(date(2026, 12, 7).at(9, 0, 0, 0))),
            "a Monday"
        );
        assert!(!first_or_monday.matches(utc(date(2026, 12, 8).at(9, 0, 0, 0))));
        let named = Cron::parse("30 6 * JAN-MAR MON-FRI", None).unwrap();
        assert!(named.matches(utc(date(2026, 2, 2).at(6, 30, 0, 0))));
        assert!(!named.matches(utc(date(2026, 4, 1).at(6, 30, 0, 0))));
    }
}
