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
use usm_model::{Domain, Event, Kind, Record, RecordId, State};
use usm_store::{ListQuery, Store, StoreError, Timer};

use crate::{
    Background, Engine,
    sla::{self, LedgerEntry, Policy, SlaStatus},
};

const CONSUMER: &str = SlaWorker::CONSUMER;
/// Where fired levels were remembered before the ledger.
const LEGACY_FIRED_PREFIX: &str = "sla-fired/";
/// Most changes of state and hold reason read to build a timeline.
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

/// What a record's clocks are computed from, read from its history: its states and hold reasons
/// over time and its first response.
pub fn timeline(store: &dyn Store, id: &RecordId) -> Result<sla::Timeline, StoreError> {
    let mut line = sla::Timeline::default();
    let mut after = 0;
    loop {
        let entries = store.history(id, after, 1000)?;
        for entry in &entries {
            after = entry.version;
            if line.responded_at.is_none() && sla::meets_response(entry) {
                line.responded_at = Some(entry.at);
            }
            if let Some(change) = entry.changes.iter().find(|c| c.path == "/state")
                && let Some(state) = change
                    .to
                    .as_ref()
                    .and_then(Value::as_str)
                    .and_then(|s| State::new(s).ok())
            {
                line.states.push((entry.at, state));
            }
            let hold_reason = |c: &&usm_model::Change| {
                c.path.strip_prefix("/fields/") == Some(crate::conversation::HOLD_REASON)
            };
            if let Some(change) = entry.changes.iter().find(hold_reason) {
                let reason = change.to.as_ref().and_then(Value::as_str);
                line.holds.push((entry.at, reason.map(str::to_owned)));
            }
        }
        if entries.len() < 1000 || line.states.len() + line.holds.len() >= MAX_TIMELINE {
            return Ok(line);
        }
    }
}

/// A record's SLA now and its ledger, as `GET /api/v1/records/{id}/sla` shows them.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlaView {
    /// The clocks now, when a policy covers the record (computed, never stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<SlaStatus>,
    /// Every warning, breach and stop recorded, oldest first.
    pub ledger: Vec<LedgerEntry>,
}

/// The record's ledger, oldest first (entries that do not decode are skipped with a log line).
pub fn ledger(store: &dyn Store, id: &RecordId) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut entries: Vec<LedgerEntry> = store
        .sla_ledger(id)?
        .into_iter()
        .filter_map(|value| {
            serde_json::from_value(value)
                .inspect_err(
                    |error| tracing::warn!(record = %id, %error, "unreadable SLA ledger entry"),
                )
                .ok()
        })
        .collect();
    entries.sort_by_key(|e| (e.at, e.cycle));
    Ok(entries)
}

impl Engine {
    /// The SLA of a record now, when a policy covers it. A clock whose breach is in the ledger
    /// for this cycle reads breached, whatever the target now in force says.
    pub fn sla(&self, record: &Record) -> Result<Option<SlaStatus>, StoreError> {
        Ok(self.sla_view(record)?.status)
    }

    /// The SLA of a record now and its ledger.
    pub fn sla_view(&self, record: &Record) -> Result<SlaView, StoreError> {
        let store = self.store().as_ref();
        let ledger = ledger(store, &record.id)?;
        let Some(policy) = self.sla_policies().policy_for(store, record)? else {
            return Ok(SlaView {
                status: None,
                ledger,
            });
        };
        let line = timeline(store, &record.id)?;
        let mut status = sla::status(&policy, record, &line, Timestamp::now());
        let cycle = status.cycle;
        for (name, clock) in [
            ("response", status.response.as_mut()),
            ("resolution", status.resolution.as_mut()),
        ] {
            let Some(clock) = clock else { continue };
            let in_cycle = if name == "response" { 1 } else { cycle };
            clock.breached |= ledger
                .iter()
                .any(|e| e.clock == name && e.level == "breach" && e.cycle == in_cycle);
        }
        Ok(SlaView {
            status: Some(status),
            ledger,
        })
    }
}

const CLOCKS: [&str; 2] = ["response", "resolution"];

/// The timer that closes a resolved record its requester has not answered.
const AUTO_CLOSE: &str = "confirmation";
/// Set when a rule refused an automatic close of a record version, so it is not retried.
const AUTO_CLOSE_REFUSED: &str = "auto-close-refused/";

/// When a record waiting for its requester's confirmation closes on its own: the configured
/// business time after it entered the resolved state.
fn auto_close_timer(
    engine: &Engine,
    record: &Record,
    policy: Option<&sla::Policy>,
    line: &sla::Timeline,
) -> Result<Option<Timer>, StoreError> {
    let Some(minutes) = engine.config.auto_close_after_business_minutes else {
        return Ok(None);
    };
    let catalog = engine.catalog_in(&record.domain);
    let Some(confirmation) = catalog
        .get(&record.kind)
        .and_then(|def| def.confirmation.as_ref())
    else {
        return Ok(None);
    };
    if record.state != confirmation.state {
        return Ok(None);
    }
    let refused = format!("{AUTO_CLOSE_REFUSED}{}/{}", record.id, record.version);
    if engine.store().setting(&refused)?.is_some() {
        return Ok(None);
    }
    let Some(resolved_at) = line
        .states
        .iter()
        .rev()
        .find(|(_, state)| *state == confirmation.state)
        .map(|(at, _)| *at)
    else {
        return Ok(None);
    };
    let delay = jiff::SignedDuration::from_secs_f64(minutes * 60.0);
    let due_at = match policy {
        Some(policy) => policy.calendar.add_business_time(resolved_at, delay),
        None => resolved_at.checked_add(delay).ok(),
    };
    Ok(due_at.map(|due_at| Timer {
        record_id: record.id.clone(),
        clock: AUTO_CLOSE.into(),
        level: "close".into(),
        due_at,
        cycle: 0,
    }))
}

/// Closes a record still waiting for its requester's confirmation, as the server. A rule that
/// refuses (say, a major incident without its review) is logged once for that record version.
fn auto_close(engine: &Engine, record: &Record) -> Result<(), StoreError> {
    let catalog = engine.catalog_in(&record.domain);
    let Some(confirmation) = catalog
        .get(&record.kind)
        .and_then(|def| def.confirmation.clone())
    else {
        return reschedule(engine, record);
    };
    if record.state != confirmation.state {
        return reschedule(engine, record);
    }
    let system = usm_model::Actor::new("system", [usm_model::Role::Admin]);
    let comment = "closed without the requester's answer within the confirmation period".to_owned();
    match engine.transition(
        &system,
        record.id.as_str(),
        confirmation.accept.as_str(),
        Some(comment),
        Some(record.version),
    ) {
        Ok(closed) => {
            tracing::info!(record = %closed.id, "closed without the requester's confirmation");
            Ok(())
        }
        Err(crate::EngineError::VersionMismatch { .. }) => Ok(()),
        Err(error) => {
            tracing::warn!(record = %record.id, %error, "cannot close the unconfirmed record");
            let refused = format!("{AUTO_CLOSE_REFUSED}{}/{}", record.id, record.version);
            engine
                .store()
                .write_settings(&[(refused, b"1".to_vec())], &[])?;
            reschedule(engine, record)
        }
    }
}

fn recorded(
    store: &dyn Store,
    record: &RecordId,
    cycle: u32,
    clock: &str,
    level: &str,
) -> Result<bool, StoreError> {
    // Levels fired before the ledger existed were remembered under `sla-fired/` (first cycle).
    Ok(store
        .setting(&usm_store::ledger_key(record, cycle, clock, level))?
        .is_some()
        || (cycle == 1 && store.setting(&fired_key(record, clock, level))?.is_some()))
}

fn fired_key(record: &RecordId, clock: &str, level: &str) -> String {
    format!("{LEGACY_FIRED_PREFIX}{record}/{clock}/{level}")
}

/// Brings the ledger and the timers of a record in step with its history: records each cycle's
/// stops, and arms a timer for every warning and breach not yet recorded — at the moment the
/// level will be reached, or, when it already was (the worker was behind, the server down),
/// at once, so it is recorded with the instant it was really reached.
fn reschedule(engine: &Engine, record: &Record) -> Result<(), StoreError> {
    let store = engine.store().as_ref();
    let policy = engine.sla_policies().policy_for(store, record)?;
    let line = timeline(store, &record.id)?;
    let mut timers: Vec<Timer> = auto_close_timer(engine, record, policy.as_ref(), &line)?
        .into_iter()
        .collect();
    let Some(policy) = policy else {
        return store.schedule_timers(&record.id, &timers);
    };
    let now = Timestamp::now();
    for cycle in 1..=sla::cycle_count(&policy, &line) {
        let status = sla::status_in_cycle(&policy, record, &line, now, cycle);
        for name in CLOCKS {
            if name == "response" && cycle > 1 {
                continue;
            }
            let Some(clock) = status.clock(name) else {
                continue;
            };
            let in_cycle = if name == "response" { 1 } else { status.cycle };
            if let Some(entry) = LedgerEntry::reached(&status, name, "stop", now) {
                let value = serde_json::to_value(&entry).unwrap_or_default();
                store.append_sla_ledger(&record.id, in_cycle, name, "stop", &value)?;
            }
            for (level, reached, due) in [
                ("warning", clock.warned_at, clock.warning_at),
                ("breach", clock.breached_at, clock.due_at),
            ] {
                let Some(at) = reached.or(due) else { continue };
                if !recorded(store, &record.id, in_cycle, name, level)? {
                    timers.push(Timer {
                        record_id: record.id.clone(),
                        clock: name.into(),
                        level: level.into(),
                        due_at: at,
                        cycle: in_cycle,
                    });
                }
            }
        }
    }
    store.schedule_timers(&record.id, &timers)
}

/// Fires due timers whose level the clock really reached in the timer's cycle, recording it in
/// the ledger in the same transaction (else reschedules the record).
fn fire_due(engine: &Engine) -> Result<usize, StoreError> {
    let store = engine.store().as_ref();
    let mut fired = 0;
    for timer in store.due_timers(Timestamp::now(), 256)? {
        let Some(record) = store.get(&timer.record_id)? else {
            store.schedule_timers(&timer.record_id, &[])?;
            continue;
        };
        if timer.clock == AUTO_CLOSE {
            auto_close(engine, &record)?;
            continue;
        }
        let Some(policy) = engine.sla_policies().policy_for(store, &record)? else {
            reschedule(engine, &record)?;
            continue;
        };
        let line = timeline(store, &record.id)?;
        let now = Timestamp::now();
        let cycle = usize::try_from(timer.cycle).unwrap_or(1);
        let status = sla::status_in_cycle(&policy, &record, &line, now, cycle);
        let entry = LedgerEntry::reached(&status, &timer.clock, &timer.level, now)
            .filter(|e| e.cycle == timer.cycle);
        let Some(entry) = entry else {
            reschedule(engine, &record)?;
            continue;
        };
        let payload = json!({"clock": timer.clock, "level": timer.level, "due_at": timer.due_at,
            "reached_at": entry.at, "cycle": entry.cycle, "sla": status});
        let ledger = serde_json::to_value(&entry).unwrap_or_default();
        if let Some(event) = store.fire_timer(&timer, &record, payload, &ledger)? {
            tracing::info!(record = %record.id, clock = %timer.clock, level = %timer.level, cycle = timer.cycle, event = event.seq, "SLA timer fired");
            fired += 1;
        }
    }
    if fired > 0 {
        engine.commits().notify();
    }
    Ok(fired)
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
        // A requester's reply can end a hold, so a comment may move the clocks too.
        let writes = event.event_type.is_record_write();
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
                // Firing is once-only in the store anyway; the lease keeps the nodes from
                // rescheduling the same records side by side.
                if !usm_store::holds_lease(engine.store().as_ref(), CONSUMER) {
                    engine.commits().wait_past(seen, Duration::from_millis(200));
                    continue;
                }
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
