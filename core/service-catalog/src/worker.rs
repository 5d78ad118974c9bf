//! The fulfilment thread: moves ordered requests along their plans as the outbox tells of
//! approvals and finished tasks.
//!
//! Each step reads the request's state, its approvals and its tasks and does only what is still
//! missing, so reading an event twice (after a crash) changes nothing: tasks are created with
//! idempotency keys and transitions are made only from the state they leave.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Map, Value, json};
use usm_engine::{Background, Engine, EngineError, NewRecord};
use usm_model::{Actor, Decision, Domain, Event, EventType, Link, LinkRel, Record, Role};

/// Outbox events read per batch.
const BATCH: usize = 128;
/// The name the catalog's writes carry in history.
const ACTOR: &str = "catalog";

/// The fulfilment thread. Stops when dropped.
pub struct FulfilmentWorker(Background);

impl FulfilmentWorker {
    /// The name of its outbox cursor.
    pub const CONSUMER: &str = "catalog";

    /// Starts following the outbox.
    pub fn start(engine: Arc<Engine>) -> std::io::Result<Self> {
        let commits = Arc::clone(engine.commits());
        Background::spawn("usm-catalog", commits, move |stop| {
            let actor = Actor::new(ACTOR, [Role::Agent]);
            while !stop.load(Ordering::SeqCst) {
                let seen = engine.commits().count();
                match consume(&engine, &actor, &stop) {
                    Ok(0) => engine.commits().wait_past(seen, Duration::from_millis(500)),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the fulfilment worker retries in a second");
                        engine.commits().wait_past(u64::MAX, Duration::from_secs(1));
                    }
                }
            }
        })
        .map(Self)
    }

    /// Stops the worker and waits for it.
    pub fn stop(self) {
        self.0.stop();
    }
}

/// Whether trying again later may succeed.
fn transient(error: &EngineError) -> bool {
    matches!(
        error,
        EngineError::Store(_)
            | EngineError::Overloaded { .. }
            | EngineError::WriteConflict { .. }
            | EngineError::StepFailed { .. }
    )
}

/// Handles the events past the cursor; returns how many it read. A transient failure stops
/// the batch before its event, which is read again on the next turn.
fn consume(engine: &Engine, actor: &Actor, stop: &AtomicBool) -> Result<usize, EngineError> {
    let store = engine.store().as_ref();
    if !usm_store::holds_lease(store, FulfilmentWorker::CONSUMER) {
        return Ok(0);
    }
    let cursor = store.cursor(FulfilmentWorker::CONSUMER)?;
    let events = store.events_after(cursor, BATCH)?;
    for event in &events {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match handle(engine, actor, event) {
            Ok(()) => {}
            Err(error) if transient(&error) => return Err(error),
            Err(error) => {
                tracing::error!(%error, record = %event.record_id, "the catalog cannot move an order along");
            }
        }
        store.set_cursor(FulfilmentWorker::CONSUMER, event.seq)?;
    }
    Ok(events.len())
}

fn handle(engine: &Engine, actor: &Actor, event: &Event) -> Result<(), EngineError> {
    let interesting = matches!(
        event.event_type,
        EventType::RecordCreated | EventType::ApprovalRecorded | EventType::RecordTransitioned
    );
    if !interesting || !matches!(event.kind.as_str(), "request" | "task") {
        return Ok(());
    }
    let Some(record) = engine.store().get(&event.record_id)? else {
        return Ok(());
    };
    let request = if record.fields.contains_key("catalog_item") {
        record
    } else if record.fields.contains_key("catalog_step")
        && event.event_type == EventType::RecordTransitioned
    {
        let parent = record.links.iter().find(|l| l.rel == LinkRel::Parent);
        match parent.and_then(|l| engine.store().get(&l.to).transpose()) {
            Some(parent) => parent?,
            None => return Ok(()),
        }
    } else {
        return Ok(());
    };
    advance(engine, actor, &request)
}

/// One entry of a request's plan.
struct PlannedTask {
    title: String,
    domain: String,
    group: Option<String>,
    after: Vec<usize>,
}

fn plan_of(request: &Record) -> Vec<PlannedTask> {
    request
        .fields
        .get("fulfilment")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|step| PlannedTask {
            title: step["title"].as_str().unwrap_or_default().to_owned(),
            domain: step["domain"].as_str().unwrap_or_default().to_owned(),
            group: step["group"].as_str().map(str::to_owned),
            after: step["after"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .filter_map(|at| usize::try_from(at).ok())
                .collect(),
        })
        .collect()
}

/// Does what is still missing for `request`: decide on its approval, create the tasks whose
/// turn has come, and mark it fulfilled when every task is finished.
fn advance(engine: &Engine, actor: &Actor, request: &Record) -> Result<(), EngineError> {
    if engine.is_finished(request) {
        return Ok(());
    }
    let id = request.id.to_string();
    let state = request.state.as_str();
    if state == "new" {
        let needs_approval = usm_engine::controls::approvers_of(request).next().is_some();
        let comment = if needs_approval {
            // The first decision of an approver decides; the engine admits only approvers.
            let approvals = engine.store().approvals(&request.id)?;
            match approvals.first() {
                None => return Ok(()),
                Some(approval) if approval.decision == Decision::Reject => {
                    let reason = approval.comment.as_deref().unwrap_or("no reason given");
                    engine.transition(
                        actor,
                        &id,
                        "cancelled",
                        Some(format!("Rejected by {}: {reason}", approval.actor)),
                        None,
                    )?;
                    tracing::info!(record = %id, "catalog order rejected");
                    return Ok(());
                }
                Some(approval) => format!("Approved by {}; fulfilment started", approval.actor),
            }
        } else {
            "No approval needed; fulfilment started".to_owned()
        };
        engine.transition(actor, &id, "in_progress", Some(comment), None)?;
    } else if state != "in_progress" && state != "on_hold" {
        return Ok(());
    }
    let plan = plan_of(request);
    // The request's tasks by their place in the plan, with whether each is finished.
    let mut tasks: Vec<Option<bool>> = vec![None; plan.len()];
    let mut outcomes = Vec::new();
    for (rel, source) in engine.store().backlinks(&request.id)? {
        if rel != LinkRel::Parent {
            continue;
        }
        let Some(task) = engine.store().get(&source)? else {
            continue;
        };
        let at = task.fields.get("catalog_step").and_then(Value::as_u64);
        if let Some(slot) = at
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| tasks.get_mut(at))
        {
            *slot = Some(engine.is_finished(&task));
            outcomes.push(format!("{} {}", task.id, task.state));
        }
    }
    for (at, planned) in plan.iter().enumerate() {
        let ready = planned
            .after
            .iter()
            .all(|before| tasks.get(*before) == Some(&Some(true)));
        if tasks[at].is_none() && ready {
            create_task(engine, actor, request, at, planned)?;
            tasks[at] = Some(false);
        }
    }
    if !plan.is_empty() && tasks.iter().all(|t| *t == Some(true)) && state != "fulfilled" {
        if state == "on_hold" {
            engine.transition(actor, &id, "in_progress", None, None)?;
        }
        // The resolution data in the same write: rules such as ISO/IEC 20000's ask for it.
        outcomes.sort();
        let resolution = Map::from_iter([
            ("resolution_code".to_owned(), json!("fulfilled")),
            (
                "resolution".to_owned(),
                json!(format!("Fulfilled by {}", outcomes.join(", "))),
            ),
        ]);
        engine.transition_with_fields(
            actor,
            &id,
            "fulfilled",
            Some("Every fulfilment task is finished".into()),
            None,
            Some(resolution),
        )?;
        tracing::info!(record = %id, "catalog order fulfilled");
    }
    Ok(())
}

fn create_task(
    engine: &Engine,
    actor: &Actor,
    request: &Record,
    at: usize,
    planned: &PlannedTask,
) -> Result<(), EngineError> {
    let mut fields = Map::new();
    if let Some(group) = &planned.group {
        let exists = Domain::new(planned.domain.clone())
            .ok()
            .and_then(|domain| engine.directory().group_in(&domain, group))
            .is_some();
        if exists {
            fields.insert("assignment_group".into(), json!(group));
        } else {
            tracing::warn!(record = %request.id, %group, "a fulfilment group is gone: the task is created unassigned");
        }
    }
    let new = NewRecord {
        kind: "task".into(),
        domain: Some(planned.domain.clone()),
        title: planned.title.clone(),
        fields,
        links: vec![Link {
            rel: LinkRel::Parent,
            to: request.id.clone(),
        }],
    };
    let key = format!("catalog:{}:{at}", request.id);
    let system = Map::from_iter([("catalog_step".to_owned(), json!(at))]);
    let created = engine.create_with_system_fields(actor, new, Some(&key), system)?;
    if !created.replayed {
        tracing::info!(record = %request.id, task = %created.record.id, "fulfilment task created");
    }
    Ok(())
}
