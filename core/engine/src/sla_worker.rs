//! Keeps SLA timers in step with records and fires them: a consumer of the outbox reschedules a
//! record's timers after each write; a timer loop fires those that are due, exactly once, as
//! `sla.warning` / `sla.breach` events that run the `sla` hook's after-steps.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use jiff::Timestamp;
use serde_json::{Value, json};
use usm_model::{Domain, Event, EventType, Kind, Record, RecordId, State};
use usm_store::{ListQuery, Store, StoreError, Timer};

use crate::{
    Background, Engine,
    sla::{self, Policy, SlaStatus},
};

const CONSUMER: &str = SlaWorker::CONSUMER;
const FIRED_PREFIX: &str = "sla-fired/";
/// Most history entries read to build a timeline.
const MAX_TIMELINE: usize = 10_000;

/// The policies of each domain's active agreements.
type PoliciesByDomain = BTreeMap<Domain, Vec<Policy>>;

/// Policies from active agreements, by domain, cached until an agreement changes.
#[derive(Default)]
pub struct SlaPolicies {
    cache: RwLock<Option<Arc<PoliciesByDomain>>>,
}

impl SlaPolicies {
    /// Forgets the cached policies (an agreement changed).
    pub fn invalidate(&self) {
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn load(&self, store: &dyn Store) -> Result<Arc<PoliciesByDomain>, StoreError> {
        if let Some(cached) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(Arc::clone(cached));
        }
        let mut by_domain = PoliciesByDomain::new();
        let mut query = ListQuery {
            kind: Kind::new("agreement").ok(),
            state: State::new("active").ok(),
            limit: 500,
            ..ListQuery::default()
        };
        loop {
            let page = store.list(&query)?;
            for agreement in page
                .records
                .iter()
                .filter(|a| Policy::is_customer_agreement(a))
            {
                match Policy::from_agreement(agreement) {
                    Ok(policy) => by_domain
                        .entry(agreement.domain.clone())
                        .or_default()
                        .push(policy),
                    Err(error) => {
                        tracing::warn!(agreement = %agreement.id, %error, "agreement has no usable SLA policy")
                    }
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        let loaded = Arc::new(by_domain);
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&loaded));
        Ok(loaded)
    }

    /// The policy covering `record`: an active customer agreement of its domain valid on the
    /// day it was created, for its service if one is, else a general one. The engine chooses;
    /// nothing a client writes in the record does.
    pub fn policy_for(
        &self,
        store: &dyn Store,
        record: &Record,
    ) -> Result<Option<Policy>, StoreError> {
        let policies = self.load(store)?;
        let Some(candidates) = policies.get(&record.domain) else {
            return Ok(None);
        };
        let chosen = candidates
            .iter()
            .find(|p| p.service.is_some() && p.covers(record))
            .or_else(|| {
                candidates
                    .iter()
                    .find(|p| p.service.is_none() && p.covers(record))
            });
        Ok(chosen.cloned())
    }
}

/// A record's states over time, from its history.
pub fn timeline(store: &dyn Store, id: &RecordId) -> Result<Vec<(Timestamp, State)>, StoreError> {
    let mut line = Vec::new();
    let mut after = 0;
    loop {
        let entries = store.history(id, after, 1000)?;
        for entry in &entries {
            after = entry.version;
            if let Some(change) = entry.changes.iter().find(|c| c.path == "/state")
                && let Some(state) = change
                    .to
                    .as_ref()
                    .and_then(Value::as_str)
                    .and_then(|s| State::new(s).ok())
            {
                line.push((entry.at, state));
            }
        }
        if entries.len() < 1000 || line.len() >= MAX_TIMELINE {
            return Ok(line);
        }
    }
}

impl Engine {
    /// The SLA of a record now, when a policy covers it.
    pub fn sla(&self, record: &Record) -> Result<Option<SlaStatus>, StoreError> {
        let Some(policy) = self
            .sla_policies()
            .policy_for(self.store().as_ref(), record)?
        else {
            return Ok(None);
        };
        let line = timeline(self.store().as_ref(), &record.id)?;
        Ok(Some(sla::status(&policy, record, &line, Timestamp::now())))
    }
}

/// Written by the store in the transaction that fires the timer: a level fires once.
fn fired_key(record: &RecordId, clock: &str, level: &str) -> String {
    format!("{FIRED_PREFIX}{record}/{clock}/{level}")
}

/// The timers a status calls for, minus levels that already fired.
fn timers_for(
    store: &dyn Store,
    record: &RecordId,
    status: &SlaStatus,
) -> Result<Vec<Timer>, StoreError> {
    let mut timers = Vec::new();
    for (name, clock) in [
        ("response", &status.response),
        ("resolution", &status.resolution),
    ] {
        let Some(clock) = clock else { continue };
        for (level, at) in [("warning", clock.warning_at), ("breach", clock.due_at)] {
            let Some(at) = at else { continue };
            if store.setting(&fired_key(record, name, level))?.is_none() {
                timers.push(Timer {
                    record_id: record.clone(),
                    clock: name.into(),
                    level: level.into(),
                    due_at: at,
                });
            }
        }
    }
    Ok(timers)
}

fn reschedule(engine: &Engine, record: &Record) -> Result<(), StoreError> {
    let store = engine.store().as_ref();
    let timers = match engine.sla(record)? {
        Some(status) => timers_for(store, &record.id, &status)?,
        None => Vec::new(),
    };
    store.schedule_timers(&record.id, &timers)
}

/// Fires due timers whose level the clock really reached (else reschedules the record).
fn fire_due(engine: &Engine) -> Result<usize, StoreError> {
    let store = engine.store().as_ref();
    let mut fired = 0;
    for timer in store.due_timers(Timestamp::now(), 256)? {
        let Some(record) = store.get(&timer.record_id)? else {
            store.schedule_timers(&timer.record_id, &[])?;
            continue;
        };
        let status = engine.sla(&record)?;
        let clock = status.as_ref().and_then(|s| {
            if timer.clock == "response" {
                s.response.as_ref()
            } else {
                s.resolution.as_ref()
            }
        });
        let reached = clock.is_some_and(|c| {
            let threshold = if timer.level == "breach" {
                c.target_minutes
            } else {
                c.target_minutes * warning_fraction(engine, &record)
            };
            !c.stopped && !c.paused && c.elapsed_minutes + 1e-9 >= threshold
        });
        if !reached {
            reschedule(engine, &record)?;
            continue;
        }
        let payload = json!({"clock": timer.clock, "level": timer.level, "due_at": timer.due_at, "sla": status});
        if let Some(event) = store.fire_timer(&timer, &record, payload)? {
            tracing::info!(record = %record.id, clock = %timer.clock, level = %timer.level, event = event.seq, "SLA timer fired");
            fired += 1;
        }
    }
    if fired > 0 {
        engine.commits().notify();
    }
    Ok(fired)
}

fn warning_fraction(engine: &Engine, record: &Record) -> f64 {
    engine
        .sla_policies()
        .policy_for(engine.store().as_ref(), record)
        .ok()
        .flatten()
        .map_or(0.75, |p| p.warning_percent / 100.0)
}

/// Re-arms the timers of every unfinished record in `domain`, after one of its agreements
/// changed: a tightened target must fire at its new, earlier moment, not when the old timer comes
/// due. Due timers fire between pages, so a long sweep delays none of them. Returns whether the
/// sweep finished (it stops early when the worker stops).
fn rearm_domain(engine: &Engine, domain: &Domain, stop: &AtomicBool) -> Result<bool, StoreError> {
    let store = engine.store().as_ref();
    let mut query = ListQuery {
        domain: Some(domain.clone()),
        limit: 256,
        ..ListQuery::default()
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let page = store.list(&query)?;
        let catalog = engine.catalog_in(domain);
        for record in &page.records {
            let finished = catalog
                .get(&record.kind)
                .and_then(|def| def.lifecycle.state(&record.state))
                .is_some_and(|state| state.category == usm_model::StateCategory::Inactive);
            // A finished record's timers were cleared when it finished; agreements have none.
            if !finished && record.kind.as_str() != "agreement" {
                reschedule(engine, record)?;
            }
        }
        fire_due(engine)?;
        match page.next {
            Some(after) => query.after = Some(after),
            None => return Ok(true),
        }
    }
}

/// Reschedules timers for the records the outbox says changed; an agreement change drops the
/// cached policies and re-arms its domain.
fn consume(engine: &Engine, stop: &AtomicBool) -> Result<usize, StoreError> {
    let store = engine.store().as_ref();
    let cursor = store.cursor(CONSUMER)?;
    let events: Vec<Event> = store.events_after(cursor, 128)?;
    for event in &events {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let writes = matches!(
            event.event_type,
            EventType::RecordCreated | EventType::RecordUpdated | EventType::RecordTransitioned
        );
        if writes {
            if event.kind.as_str() == "agreement" {
                engine.sla_policies().invalidate();
                if !rearm_domain(engine, &event.domain, stop)? {
                    // Stopped part way: the sweep starts over from this event next time.
                    break;
                }
            } else if let Some(record) = store.get(&event.record_id)? {
                reschedule(engine, &record)?;
            }
        }
        store.set_cursor(CONSUMER, event.seq)?;
    }
    Ok(events.len())
}

/// The SLA background thread. Stops when dropped.
pub struct SlaWorker(Background);

impl SlaWorker {
    /// The name of its outbox cursor.
    pub const CONSUMER: &str = "sla";

    /// Starts keeping and firing timers.
    pub fn start(engine: Arc<Engine>) -> std::io::Result<Self> {
        let commits = Arc::clone(engine.commits());
        Background::spawn("usm-sla", commits, move |stop| {
            while !stop.load(Ordering::SeqCst) {
                let seen = engine.commits().count();
                let consumed = consume(&engine, &stop).unwrap_or_else(|error| {
                    tracing::error!(%error, "the SLA worker cannot read the outbox");
                    0
                });
                if let Err(error) = fire_due(&engine) {
                    tracing::error!(%error, "the SLA worker cannot fire timers");
                }
                if consumed == 0 {
                    engine.commits().wait_past(seen, Duration::from_millis(200));
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
