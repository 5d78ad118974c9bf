//! The after-step consumer of the outbox: runs after-steps for every committed write, in outbox
//! order, at least once, and carries out the effects they return as the step's module.

use std::{
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use usm_model::{Actor, Cause, Event, EventType, Link, Record, Role};

use crate::{
    Background, Effect, Engine, EngineError, NewRecord, RecordPatch,
    pipeline::{BoundStep, BreakerPolicy},
    step::{Hook, OnError, Phase, StepError, StepInput, StepOutput},
};

/// The consumer name under which the after-step cursor is stored.
const CONSUMER: &str = AfterStepWorker::CONSUMER;
/// Effects may cause writes whose after-steps cause writes…; this bounds the chain.
pub const MAX_EFFECT_DEPTH: u32 = 8;
/// How often a failing after-step with policy `fail` is tried before it is given up on.
const ATTEMPTS: u32 = 3;
/// Events read per batch.
const BATCH: usize = 64;

/// Wakes outbox consumers when a write commits.
#[derive(Default)]
pub struct CommitSignal {
    commits: Mutex<u64>,
    changed: Condvar,
}

impl CommitSignal {
    /// Records a commit and wakes the waiters.
    pub fn notify(&self) {
        *self.commits.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// The number of commits so far.
    pub fn count(&self) -> u64 {
        *self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the count passes `seen` or `timeout` elapses.
    pub fn wait_past(&self, seen: u64, timeout: Duration) {
        let guard = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .changed
            .wait_timeout_while(guard, timeout, |count| *count <= seen)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// The background thread that runs after-steps. Stops (after the event in hand) when dropped.
pub struct AfterStepWorker(Background);

impl AfterStepWorker {
    /// The name of its outbox cursor.
    pub const CONSUMER: &str = "after-steps";

    /// Starts consuming the outbox from the stored cursor.
    pub fn start(engine: Arc<Engine>) -> std::io::Result<Self> {
        let commits = Arc::clone(engine.commits());
        Background::spawn("usm-after-steps", commits, move |stop| run(&engine, &stop)).map(Self)
    }

    /// Stops the worker and waits for it.
    pub fn stop(self) {
        self.0.stop();
    }
}

fn run(engine: &Engine, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let seen = engine.commits().count();
        let processed = match drain(engine, stop) {
            Ok(processed) => processed,
            Err(error) => {
                tracing::error!(%error, "the after-step worker cannot read the outbox; retrying");
                0
            }
        };
        if processed == 0 {
            engine.commits().wait_past(seen, Duration::from_millis(500));
        }
    }
}

/// Processes one batch; returns how many events it consumed.
fn drain(engine: &Engine, stop: &AtomicBool) -> Result<usize, EngineError> {
    let store = engine.store();
    if !usm_store::holds_lease(store.as_ref(), CONSUMER) {
        return Ok(0);
    }
    let cursor = store.cursor(CONSUMER)?;
    let events = store.events_after(cursor, BATCH)?;
    let mut processed = 0;
    for event in &events {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        process(engine, event);
        store.set_cursor(CONSUMER, event.seq)?;
        processed += 1;
    }
    Ok(processed)
}

/// The sequence number of the newest outbox event (0 when there is none).
pub fn head(store: &dyn usm_store::Store) -> Result<u64, usm_store::StoreError> {
    // Walk forward in pages from the after-step consumer's cursor (close to the end).
    let mut position = store.cursor(CONSUMER)?;
    loop {
        let events = store.events_after(position, 1000)?;
        match events.last() {
            Some(last) => position = last.seq,
            None => return Ok(position),
        }
    }
}

fn hook_of(event: EventType) -> Option<Hook> {
    match event {
        EventType::RecordCreated => Some(Hook::Create),
        EventType::RecordUpdated => Some(Hook::Update),
        EventType::RecordTransitioned => Some(Hook::Transition),
        EventType::ApprovalRecorded => Some(Hook::Approval),
        EventType::SlaWarning | EventType::SlaBreach => Some(Hook::Sla),
        EventType::Notification | EventType::RecordCommented | EventType::AttachmentChanged => None,
    }
}

/// Runs the after-steps of one event. Failures are logged: the outbox moves on.
fn process(engine: &Engine, event: &Event) {
    let Some(hook) = hook_of(event.event_type) else {
        return;
    };
    let catalog = engine.catalog_in(&event.domain);
    let Some(def) = catalog.get(&event.kind) else {
        return;
    };
    let pipelines = engine.pipelines();
    let steps: Vec<&Arc<BoundStep>> = pipelines
        .steps(&event.domain, def.process, hook, Phase::After)
        .iter()
        .filter(|s| s.applies_to(&event.kind))
        .collect();
    if steps.is_empty() {
        return;
    }
    let record = match engine.store().get(&event.record_id) {
        Ok(Some(record)) => record,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(%error, record = %event.record_id, "cannot load the record for its after-steps");
            return;
        }
    };
    let changes = engine
        .store()
        .history(&event.record_id, event.version.saturating_sub(1), 1)
        .ok()
        .and_then(|mut entries| entries.pop())
        .filter(|entry| entry.version == event.version)
        .map(|entry| entry.changes)
        .unwrap_or_default();
    let context = json!({"event": event, "changes": changes});
    let record_value = match serde_json::to_value(&record) {
        Ok(value) => value,
        Err(error) => {
            tracing::error!(%error, "a record does not serialise");
            return;
        }
    };
    let actor = Actor::new(event.actor.clone(), Vec::<Role>::new());
    for step in steps {
        let input = StepInput {
            hook,
            phase: Phase::After,
            record: &record_value,
            previous: None,
            actor: &actor,
            context: &context,
        };
        let span = tracing::info_span!("after_step", module = %step.module, step = %step.name, record = %event.record_id, event = event.seq);
        let _entered = span.enter();
        match run_with_retries(step, engine.breaker_policy(), &input) {
            Ok(StepOutput::Effects(effects)) => {
                apply_effects(engine, event, &record, step, effects)
            }
            Ok(StepOutput::Continue) => {}
            Ok(_) => {
                tracing::warn!("after-steps may only continue or return effects; output ignored")
            }
            Err(error) => match step.on_error {
                OnError::Fail => {
                    tracing::error!(%error, "after-step failed; giving up on this event")
                }
                OnError::Skip => tracing::warn!(%error, "after-step failed; skipped"),
            },
        }
    }
}

fn run_with_retries(
    step: &BoundStep,
    policy: &BreakerPolicy,
    input: &StepInput<'_>,
) -> Result<StepOutput, StepError> {
    let attempts = if step.on_error == OnError::Fail {
        ATTEMPTS
    } else {
        1
    };
    let mut backoff = Duration::from_millis(50);
    let mut last = None;
    for attempt in 1..=attempts {
        match step.call(policy, input) {
            Ok(output) => return Ok(output),
            Err(error) => {
                tracing::warn!(%error, attempt, "after-step attempt failed");
                last = Some(error);
                if attempt < attempts {
                    let until = Instant::now() + backoff;
                    // A condition variable would do, but nothing signals a failing step's recovery.
                    while Instant::now() < until {
                        std::thread::park_timeout(until - Instant::now());
                    }
                    backoff *= 4;
                }
            }
        }
    }
    Err(last.unwrap_or(StepError::Trap("no attempt made".into())))
}

fn apply_effects(
    engine: &Engine,
    event: &Event,
    record: &Record,
    step: &BoundStep,
    effects: Vec<Effect>,
) {
    let depth = event.depth + 1;
    if depth > MAX_EFFECT_DEPTH {
        tracing::error!(depth, "effect chain too deep; effects dropped");
        return;
    }
    let actor = Actor::new(format!("module:{}", step.module), [Role::Automation]);
    let cause = Cause {
        event: event.seq,
        record_id: event.record_id.clone(),
        module: step.module.clone(),
        step: step.name.clone(),
        depth,
    };
    for (index, effect) in effects.into_iter().enumerate() {
        let description = format!("{effect:?}");
        if let Err(error) = apply_effect(engine, event, record, &actor, &cause, index, effect) {
            tracing::warn!(%error, effect = %description, "effect not carried out");
        }
    }
}

fn apply_effect(
    engine: &Engine,
    event: &Event,
    record: &Record,
    actor: &Actor,
    cause: &Cause,
    index: usize,
    effect: Effect,
) -> Result<(), EngineError> {
    match effect {
        Effect::CreateRecord {
            kind,
            title,
            domain,
            fields,
            link,
        } => {
            let new = NewRecord {
                kind,
                domain: Some(domain.unwrap_or_else(|| record.domain.to_string())),
                title,
                fields,
                links: link
                    .map(|rel| Link {
                        rel,
                        to: record.id.clone(),
                    })
                    .into_iter()
                    .collect(),
            };
            // The key makes a replayed event (after a crash) find the record it created before.
            let key = format!(
                "effect/{}/{}/{}/{index}",
                event.seq, cause.module, cause.step
            );
            let created = engine.create_caused(
                actor,
                new,
                Some(&key),
                Some(cause.clone()),
                serde_json::Map::new(),
            )?;
            tracing::info!(created = %created.record.id, replayed = created.replayed, "effect created a record");
        }
        Effect::Transition {
            record: target,
            to,
            comment,
        } => {
            let target = target.unwrap_or_else(|| record.id.to_string());
            let current = engine.get(actor, &target)?;
            if current.state.as_str() != to {
                engine.transition_caused(
                    actor,
                    &target,
                    &to,
                    comment,
                    None,
                    Some(cause.clone()),
                    None,
                )?;
            }
        }
        Effect::Link { from, rel, to } => {
            let from = from.unwrap_or_else(|| record.id.to_string());
            let current = engine.get(actor, &from)?;
            let to = usm_model::RecordId::parse(&to)
                .map_err(|e| EngineError::invalid("/to", e.to_string()))?;
            let link = Link { rel, to };
            if !current.links.contains(&link) {
                let mut links = current.links.clone();
                links.push(link);
                let patch = RecordPatch {
                    links: Some(links),
                    ..RecordPatch::default()
                };
                engine.update_caused(actor, &from, patch, None, Some(cause.clone()))?;
            }
        }
        Effect::Notify { audience, message } => {
            let payload: Value = json!({"audience": audience, "message": message, "cause": cause});
            engine
                .store()
                .notify(record, &actor.name, cause.depth, payload)?;
        }
    }
    Ok(())
}
