//! The outbox consumer that keeps the index in step with commits.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use usm_engine::{Background, Engine};

use crate::{SearchError, SearchIndex};

/// Outbox events read per batch.
const BATCH: usize = 256;
/// Longest the worker applies events before it commits them: the bound on how stale a busy
/// server's queues get.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// The search indexing thread. Stops when dropped.
pub struct SearchWorker(Background);

impl SearchWorker {
    /// The name of its outbox cursor.
    pub const CONSUMER: &str = "search";

    /// Rebuilds the index if it is not in step with the store, then follows the outbox.
    pub fn start(engine: Arc<Engine>, index: Arc<SearchIndex>) -> std::io::Result<Self> {
        let commits = Arc::clone(engine.commits());
        // An index in step (any clean restart) serves before the first request arrives; only a
        // rebuild leaves searches answering `search_rebuilding` for a while.
        let ready = adopt_if_in_step(&engine, &index);
        Background::spawn("usm-search", commits, move |stop| {
            if !ready && !prepare(&engine, &index, &stop) {
                return;
            }
            while !stop.load(Ordering::SeqCst) {
                let seen = engine.commits().count();
                let applied = follow(&engine, &index, &stop).unwrap_or_else(|error| {
                    tracing::error!(%error, "the search worker cannot apply the outbox");
                    0
                });
                if applied == 0 {
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

/// Marks the index current when it is in step with the store; false when it needs a rebuild
/// or the check failed (the worker's `prepare` decides then, retrying).
fn adopt_if_in_step(engine: &Engine, index: &SearchIndex) -> bool {
    let store = engine.store();
    let adopted = index
        .in_step_with(store.as_ref(), SearchWorker::CONSUMER)
        .and_then(|in_step| {
            if in_step {
                store.set_cursor(SearchWorker::CONSUMER, index.position())?;
            }
            Ok(in_step)
        })
        .unwrap_or(false);
    if adopted {
        index.mark_current();
    }
    adopted
}

/// Makes the index current, rebuilding it when needed; false when stopped first.
fn prepare(engine: &Engine, index: &SearchIndex, stop: &AtomicBool) -> bool {
    loop {
        let outcome = index
            .in_step_with(engine.store().as_ref(), SearchWorker::CONSUMER)
            .and_then(|in_step| {
                if in_step {
                    return Ok(Some(index.position()));
                }
                tracing::info!("rebuilding the search index from the store");
                index.rebuild(engine, stop)
            })
            .and_then(|position| {
                if let Some(position) = position {
                    engine
                        .store()
                        .set_cursor(SearchWorker::CONSUMER, position)?;
                }
                Ok(position)
            });
        match outcome {
            Ok(Some(_)) => {
                index.mark_current();
                return true;
            }
            Ok(None) => return false,
            Err(error) => {
                tracing::error!(%error, "cannot prepare the search index; retrying");
                let seen = engine.commits().count();
                engine.commits().wait_past(seen, Duration::from_secs(1));
                if stop.load(Ordering::SeqCst) {
                    return false;
                }
            }
        }
    }
}

/// Applies outbox events past the index's position, commits them and moves the cursor. Returns
/// how many events it applied.
fn follow(engine: &Engine, index: &SearchIndex, stop: &AtomicBool) -> Result<usize, SearchError> {
    let store = engine.store().as_ref();
    let started = Instant::now();
    let mut position = index.position();
    let mut applied = 0;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < COMMIT_EVERY {
        let events = store.events_after(position, BATCH)?;
        let Some(last) = events.last() else { break };
        let last = last.seq;
        let mut records = BTreeSet::new();
        let mut agreement_domains = BTreeSet::new();
        for event in &events {
            if event.kind.as_str() == "agreement" {
                agreement_domains.insert(event.domain.clone());
            }
            records.insert(event.record_id.clone());
        }
        for id in &records {
            index.apply(engine, id)?;
        }
        let mut finished = true;
        for domain in &agreement_domains {
            finished = finished && index.apply_domain(engine, domain, stop)?;
        }
        if !finished {
            // Stopped part way: the batch is applied again from its start next time.
            break;
        }
        applied += events.len();
        position = last;
    }
    if applied > 0 {
        index.commit(position)?;
        store.set_cursor(SearchWorker::CONSUMER, position)?;
    }
    Ok(applied)
}
