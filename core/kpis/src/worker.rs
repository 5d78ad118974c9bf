//! The outbox consumer that keeps the KPI book in step with the records.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use usm_engine::{Background, SlaWorker};
use usm_model::RecordId;
use usm_store::{ListQuery, StoreError};

use crate::{
    KpiService,
    book::{Batch, Book, counted},
    sums::Contribution,
};

/// Outbox events, or records while rebuilding, counted per durable batch.
const BATCH: usize = 256;

/// The KPI thread. Stops when dropped.
pub struct KpiWorker(Background);

impl KpiWorker {
    /// The name of its outbox cursor.
    pub const CONSUMER: &str = "kpis";

    /// Builds the sums from the records when the store has none yet, then follows the outbox.
    pub fn start(service: Arc<KpiService>) -> std::io::Result<Self> {
        let commits = Arc::clone(service.engine.commits());
        Background::spawn("usm-kpis", commits, move |stop| {
            let mut held = false;
            while !stop.load(Ordering::SeqCst) {
                let seen = service.engine.commits().count();
                let holds = usm_store::holds_lease(service.engine.store().as_ref(), Self::CONSUMER);
                if !holds || !held {
                    // Another node keeps the sums (or did until now): read what it wrote, so
                    // that this node answers from them and, holding the lease, adds to them.
                    let reloaded = if holds {
                        service.resume()
                    } else {
                        service.reload()
                    };
                    if let Err(error) = reloaded {
                        tracing::error!(%error, "cannot reload the KPI sums");
                        service
                            .engine
                            .commits()
                            .wait_past(seen, Duration::from_secs(1));
                        continue;
                    }
                }
                held = holds;
                if !holds {
                    // Not woken by this node's commits: a reload reads every hour's sums, so
                    // a node without the lease answers from sums at most a second old.
                    service
                        .engine
                        .commits()
                        .wait_past(u64::MAX, Duration::from_secs(1));
                    continue;
                }
                let outcome = if service.read_position().is_none() {
                    rebuild(&service, &stop).map(|_| Step::Applied)
                } else {
                    follow(&service)
                };
                let wait = match outcome {
                    Ok(Step::Applied) => continue,
                    // The SLA worker writes the ledger entries a record's KPIs read while it
                    // consumes the record's event; it moves on without a commit to wake us.
                    Ok(Step::BehindSla) => Duration::from_millis(10),
                    Ok(Step::Idle) => Duration::from_millis(200),
                    Err(error) => {
                        tracing::error!(%error, "the KPI worker cannot apply the outbox");
                        Duration::from_secs(1)
                    }
                };
                service.engine.commits().wait_past(seen, wait);
            }
        })
        .map(Self)
    }

    /// Stops the worker and waits for it.
    pub fn stop(self) {
        self.0.stop();
    }
}

enum Step {
    Applied,
    BehindSla,
    Idle,
}

impl KpiService {
    /// Reloads the book when the store's position is not the one in memory (another node moved
    /// the sums on).
    fn reload(&self) -> Result<(), StoreError> {
        let store = self.engine.store().as_ref();
        if Book::stored_position(store)? != self.read_position() {
            let book = Book::load(store)?;
            *self.book.write().unwrap_or_else(PoisonError::into_inner) = book;
        }
        Ok(())
    }

    /// Reloads the book and moves the cursor up to it: the cursor is not flushed with the sums,
    /// so after a crash it may lag behind them with no event left to move it.
    fn resume(&self) -> Result<(), StoreError> {
        self.reload()?;
        let store = self.engine.store().as_ref();
        if let Some(position) = self.read_position()
            && store.cursor(KpiWorker::CONSUMER)? < position
        {
            store.set_cursor(KpiWorker::CONSUMER, position)?;
        }
        Ok(())
    }

    fn read_position(&self) -> Option<u64> {
        self.book
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .position
    }

    /// Recounts `records` and commits the batch (with the outbox position it reaches, if any), holding the book so that no
    /// request reads it half-applied.
    fn recount(
        &self,
        records: impl IntoIterator<Item = usm_model::Record>,
        position: Option<u64>,
    ) -> Result<usize, StoreError> {
        let store = self.engine.store().as_ref();
        let mut batch = Batch::default();
        for record in records {
            let old = counted(store, &record)?;
            let new = Contribution::of(store, &record)?;
            batch.replace(&record, old.as_ref(), &new)?;
        }
        let changed = batch.len();
        let mut book = self.book.write().unwrap_or_else(PoisonError::into_inner);
        batch.commit(store, &mut book, position)?;
        Ok(changed)
    }
}

/// Counts every record, then marks the book current as of the outbox head seen before the
/// first: events after it recount what changed meanwhile. Safe to start over after a crash:
/// each record's contribution replaces the one it was counted with.
fn rebuild(service: &KpiService, stop: &AtomicBool) -> Result<(), StoreError> {
    let store = service.engine.store().as_ref();
    // The cursor stays where it was (or absent, holding back every event) until the build is
    // done, so the events after `start` are not pruned before they are counted.
    let start = usm_engine::outbox_head(store)?;
    tracing::info!("building the KPI sums from the records");
    let mut query = ListQuery {
        limit: BATCH,
        ..ListQuery::default()
    };
    let mut records = 0;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let page = store.list(&query)?;
        records += page.records.len();
        let last_page = page.next.is_none();
        query.after = page.next;
        service.recount(page.records, last_page.then_some(start))?;
        if last_page {
            store.set_cursor(KpiWorker::CONSUMER, start)?;
            tracing::info!(records, "KPI sums built");
            return Ok(());
        }
    }
}

/// Recounts the records of the events the SLA worker has seen.
fn follow(service: &KpiService) -> Result<Step, StoreError> {
    let store = service.engine.store().as_ref();
    let Some(position) = service.read_position() else {
        return Ok(Step::Idle);
    };
    let sla_position = store.cursor(SlaWorker::CONSUMER)?;
    let events = store.events_after(position, BATCH)?;
    let seen: Vec<_> = events
        .iter()
        .take_while(|event| event.seq <= sla_position)
        .collect();
    let Some(last) = seen.last().map(|event| event.seq) else {
        return Ok(if events.is_empty() {
            Step::Idle
        } else {
            Step::BehindSla
        });
    };
    let ids: BTreeSet<&RecordId> = seen.iter().map(|event| &event.record_id).collect();
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        records.extend(store.get(id)?);
    }
    service.recount(records, Some(last))?;
    store.set_cursor(KpiWorker::CONSUMER, last)?;
    Ok(Step::Applied)
}
