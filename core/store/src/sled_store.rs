use std::{
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
};

use sled::{
    Transactional,
    transaction::{
        ConflictableTransactionError, TransactionError, TransactionalTree,
        UnabortableTransactionError,
    },
};
use usm_model::{Approval, Event, HistoryEntry, LinkRel, Record, RecordId};

use crate::{
    Committed, ListQuery, Page, Pruned, Store, StoreConfig, StoreError, Write,
    layout::{self, Entry, FORMAT_KEY, FORMAT_VERSION, KvRead, KvTx, TreeId, TxFail},
};

/// The embedded, durable backend: a sled database in a data directory.
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    config: StoreConfig,
    group_commit: Arc<GroupCommit>,
    flusher: Option<JoinHandle<()>>,
    kind_writes: crate::KindWrites,
}

/// How long an open waits for the directory's lock: a handle closed in this process a moment
/// ago releases it only when sled's own I/O threads finish. Another process holding it still
/// gets the lock error, a little later.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn open_db(dir: &Path, cache_capacity: u64) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::park_timeout(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: dir.display().to_string(),
            source,
        };
        let db = open_db(dir, config.cache_capacity).map_err(open_error)?;
        let trees = TreeId::ALL
            .iter()
            .map(|id| db.open_tree(id.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(open_error)?;
        let counters = &trees[TreeId::Counters as usize];
        match counters.get(FORMAT_KEY)? {
            Some(bytes) => {
                let found = layout::decode_u64("format version", &bytes)?;
                if found != FORMAT_VERSION {
                    return Err(StoreError::Format {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            None => {
                counters.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        let group_commit = Arc::new(GroupCommit::default());
        let flusher = {
            let db = db.clone();
            let group_commit = Arc::clone(&group_commit);
            std::thread::Builder::new()
                .name("usm-store-flush".into())
                .spawn(move || group_commit.run_flusher(&db))
                .map_err(|e| {
                    StoreError::Durability(format!("cannot start the flush thread: {e}"))
                })?
        };
        let store = Self {
            db,
            trees,
            config,
            group_commit,
            flusher: Some(flusher),
            kind_writes: crate::KindWrites::default(),
        };
        let expiry = store.tree(TreeId::IdempotencyExpiry);
        if expiry.is_empty() && !store.tree(TreeId::Idempotency).is_empty() {
            // Keys bound before the expiry index existed get their entries, once.
            for key in layout::expiry_entries(&store)? {
                expiry.insert(key, &[])?;
            }
        }
        tracing::info!(path = %dir.display(), "store opened");
        Ok(store)
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        &self.trees[id as usize]
    }

    /// Runs `body` as one sled transaction over every tree (sled may run it more than once) and
    /// returns once the result is durable.
    fn transact<T>(
        &self,
        body: impl Fn(&SledTx<'_>) -> Result<T, TxFail<UnabortableTransactionError>>,
    ) -> Result<T, StoreError> {
        let result = self.trees.as_slice().transaction(|trees| {
            body(&SledTx(trees)).map_err(|fail| match fail {
                TxFail::Abort(error) => ConflictableTransactionError::Abort(error),
                TxFail::Kv(error) => error.into(),
            })
        });
        let value = match result {
            Ok(value) => value,
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(error)) => return Err(StoreError::Backend(error)),
        };
        if self.config.durable_acks {
            self.group_commit.wait_durable()?;
        }
        Ok(value)
    }
}

impl SledStore {
    /// A commit, acknowledged once durable when acks are.
    fn commit_now(&self, write: Write) -> Result<Committed, StoreError> {
        let ttl = self.config.idempotency_ttl;
        let result = self.transact(|tx| layout::apply_write(tx, &write, ttl));
        // The write that bound the key may still wait for its flush; a replay answered before
        // that flush would acknowledge a record a crash can still take away.
        if let Err(StoreError::IdempotencyKeyUsed { .. }) = &result
            && self.config.durable_acks
        {
            self.group_commit.wait_durable()?;
        }
        let committed = result?;
        self.kind_writes.bump(&committed.record.kind);
        Ok(committed)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.group_commit.shut_down();
        if let Some(flusher) = self.flusher.take()
            && flusher.join().is_err()
        {
            tracing::error!("the store flush thread panicked");
        }
        #[allow(clippy::disallowed_methods)] // the final flush on close
        if let Err(error) = self.db.flush() {
            tracing::error!(%error, "final flush failed");
        }
    }
}

struct SledTx<'a>(&'a [TransactionalTree]);

impl KvTx for SledTx<'_> {
    type Error = UnabortableTransactionError;

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail<Self::Error>> {
        Ok(self.0[tree as usize]
            .get(key)
            .map_err(TxFail::Kv)?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, tree: TreeId, key: &[u8], value: Vec<u8>) -> Result<(), TxFail<Self::Error>> {
        self.0[tree as usize]
            .insert(key, value)
            .map_err(TxFail::Kv)?;
        Ok(())
    }

    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<(), TxFail<Self::Error>> {
        self.0[tree as usize].remove(key).map_err(TxFail::Kv)?;
        Ok(())
    }
}

impl KvRead for SledStore {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: TreeId,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree(tree).range(start..) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }
}

impl Store for SledStore {
    fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        layout::get(self, id)
    }

    fn commit(&self, write: Write) -> Result<Committed, StoreError> {
        let started = std::time::Instant::now();
        let result = self.commit_now(write);
        self.group_commit
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn metrics(&self) -> Option<&crate::StoreMetrics> {
        Some(&self.group_commit.metrics)
    }

    fn kind_writes(&self, kind: &usm_model::Kind) -> u64 {
        self.kind_writes.get(kind)
    }

    fn history(
        &self,
        id: &RecordId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        layout::history(self, id, after, limit)
    }

    fn approvals(&self, id: &RecordId) -> Result<Vec<Approval>, StoreError> {
        layout::approvals(self, id)
    }

    fn backlinks(&self, id: &RecordId) -> Result<Vec<(LinkRel, RecordId)>, StoreError> {
        layout::backlinks(self, id)
    }

    fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        layout::list(self, query)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        layout::events_after(self, after, limit)
    }

    fn notify(
        &self,
        record: &Record,
        actor: &str,
        depth: u32,
        payload: serde_json::Value,
    ) -> Result<Event, StoreError> {
        self.transact(|tx| layout::apply_notification(tx, record, actor, depth, &payload))
    }

    fn cursor(&self, consumer: &str) -> Result<u64, StoreError> {
        layout::cursor(self, consumer)
    }

    fn set_cursor(&self, consumer: &str, position: u64) -> Result<(), StoreError> {
        self.tree(TreeId::Counters)
            .insert(layout::cursor_key(consumer), &position.to_be_bytes())?;
        Ok(())
    }

    fn prune(&self, consumers: &[String], now: usm_model::Timestamp) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        loop {
            let plan = layout::prune_plan(self, consumers, now, &self.config)?;
            if plan.is_empty() {
                return Ok(pruned);
            }
            let (events, keys) = self.transact(|tx| layout::apply_prune(tx, &plan))?;
            pruned.events += events;
            pruned.idempotency_keys += keys;
        }
    }

    fn outbox_len(&self) -> Result<usize, StoreError> {
        Ok(self.tree(TreeId::Outbox).len())
    }

    fn idempotency_len(&self) -> Result<usize, StoreError> {
        Ok(self.tree(TreeId::Idempotency).len())
    }

    fn artifact(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(TreeId::Artifacts).get(key)?.map(|v| v.to_vec()))
    }

    fn put_artifact(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.tree(TreeId::Artifacts).insert(key, bytes)?;
        Ok(())
    }

    fn delete_artifact(&self, key: &str) -> Result<(), StoreError> {
        self.tree(TreeId::Artifacts).remove(key)?;
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(TreeId::Settings).get(key)?.map(|v| v.to_vec()))
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        layout::settings(self, prefix)
    }

    fn write_settings(
        &self,
        put: &[(String, Vec<u8>)],
        delete: &[String],
    ) -> Result<(), StoreError> {
        self.transact(|tx| layout::apply_settings(tx, put, delete))
    }

    fn append_audit(&self, entry: &[u8]) -> Result<u64, StoreError> {
        self.transact(|tx| layout::apply_audit(tx, entry))
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        layout::audit_after(self, after, limit)
    }

    fn schedule_timers(
        &self,
        record: &RecordId,
        timers: &[crate::Timer],
    ) -> Result<(), StoreError> {
        self.transact(|tx| layout::apply_schedule(tx, record, timers))
    }

    fn due_timers(
        &self,
        now: usm_model::Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::Timer>, StoreError> {
        layout::due_timers(self, now, limit)
    }

    fn fire_timer(
        &self,
        timer: &crate::Timer,
        record: &Record,
        payload: serde_json::Value,
        ledger: &serde_json::Value,
    ) -> Result<Option<Event>, StoreError> {
        self.transact(|tx| layout::apply_fire(tx, timer, record, &payload, ledger))
    }

    fn timer_count(&self) -> Result<usize, StoreError> {
        Ok(self.tree(TreeId::Timers).len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.group_commit.wait_durable()
    }
}

/// Group commit: writers that finished their transaction take a ticket and wait; one thread
/// flushes for all of them. A flush started after a ticket was taken covers that ticket's write,
/// so one fsync acknowledges every write that queued while the previous fsync ran.
#[derive(Default)]
struct GroupCommit {
    state: Mutex<FlushState>,
    work: Condvar,
    done: Condvar,
    metrics: crate::StoreMetrics,
}

#[derive(Default)]
struct FlushState {
    requested: u64,
    flushed: u64,
    /// Tickets up to this one were covered by a failed flush.
    failed_through: u64,
    failure: Option<String>,
    shutting_down: bool,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_durable(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.requested += 1;
        let ticket = state.requested;
        self.work.notify_one();
        while state.flushed < ticket {
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if ticket <= state.failed_through
            && let Some(failure) = &state.failure
        {
            return Err(StoreError::Durability(failure.clone()));
        }
        Ok(())
    }

    fn run_flusher(&self, db: &sled::Db) {
        let mut state = self.lock();
        loop {
            while state.requested == state.flushed && !state.shutting_down {
                state = self
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.requested == state.flushed {
                return; // shutting down with nothing pending
            }
            let target = state.requested;
            let covered = target - state.flushed;
            drop(state);
            let started = std::time::Instant::now();
            #[allow(clippy::disallowed_methods)] // this is the group commit
            let result = db.flush();
            self.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.writes_per_flush.observe(covered as f64);
            state = self.lock();
            if let Err(error) = result {
                tracing::error!(%error, "flush failed; failing the writes it covered");
                state.failed_through = target;
                state.failure = Some(error.to_string());
            }
            state.flushed = target;
            self.done.notify_all();
        }
    }

    fn shut_down(&self) {
        self.lock().shutting_down = true;
        self.work.notify_all();
    }
}
