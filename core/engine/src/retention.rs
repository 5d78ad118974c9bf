//! Keeps the store from growing forever: outbox events every consumer has passed and
//! idempotency keys past their retention are pruned in the background.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use usm_model::Timestamp;
use usm_store::{Pruned, StoreError};

use crate::{Background, Engine, webhooks};

/// Prunes once. `consumers` are the outbox consumers of the process (after-steps, SLA,
/// automations, …); every webhook subscription's consumer is added, so no event is pruned before
/// each of them has passed it.
pub fn prune(engine: &Engine, consumers: &[String]) -> Result<Pruned, StoreError> {
    let store = engine.store();
    let subscriptions = webhooks::list(store.as_ref()).map_err(|error| match error {
        webhooks::WebhookError::Store(error) => error,
        other => StoreError::Corrupt {
            what: "webhook",
            detail: other.to_string(),
        },
    })?;
    let mut all = consumers.to_vec();
    all.extend(subscriptions.iter().map(webhooks::Subscription::consumer));
    store.prune(&all, Timestamp::now())
}

/// The background pruner. Stops when dropped.
pub struct Pruner(Background);

/// Other housekeeping the pruner runs at each turn (say, collecting unreferenced blobs).
pub type Chore = Box<dyn Fn(&Engine) + Send>;

impl Pruner {
    /// Prunes every `every` for the outbox `consumers` (see [`prune`]).
    pub fn start(
        engine: Arc<Engine>,
        consumers: Vec<String>,
        every: Duration,
        chores: Vec<Chore>,
    ) -> std::io::Result<Self> {
        let commits = Arc::clone(engine.commits());
        Background::spawn("usm-pruner", commits, move |stop| {
            let mut last = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let due = every.saturating_sub(last.elapsed());
                if due.is_zero() {
                    match prune(&engine, &consumers) {
                        Ok(pruned) if pruned != Pruned::default() => tracing::debug!(
                            events = pruned.events,
                            idempotency_keys = pruned.idempotency_keys,
                            "pruned the store"
                        ),
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "cannot prune the store"),
                    }
                    for chore in &chores {
                        chore(&engine);
                    }
                    last = Instant::now();
                    continue;
                }
                // Woken by commits (and by the stop), at the latest when the next run is due.
                let seen = engine.commits().count();
                engine.commits().wait_past(seen, due);
            }
        })
        .map(Self)
    }

    /// Stops the pruner and waits for it.
    pub fn stop(self) {
        self.0.stop();
    }
}
