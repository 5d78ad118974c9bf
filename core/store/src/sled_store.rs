use std::{
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc},
    thread::JoinHandle,
    time::Duration,
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
    combiner: Option<(mpsc::Sender<Pending>, JoinHandle<()>)>,
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
                if !layout::READABLE_FORMATS.contains(&found) {
                    return Err(StoreError::Format {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
                if found != FORMAT_VERSION {
                    counters.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
                    tracing::info!(from = found, to = FORMAT_VERSION, "store format upgraded");
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
        let combiner = {
            let (sender, receiver) = mpsc::channel();
            let combiner = Combiner {
                trees: trees.clone(),
                idempotency_ttl: config.idempotency_ttl,
                group_commit: Arc::clone(&group_commit),
                durable_acks: config.durable_acks,
            };
            let thread = std::thread::Builder::new()
                .name("usm-store-write".into())
                .spawn(move || combiner.run(&receiver))
                .map_err(|e| {
                    StoreError::Durability(format!("cannot start the write thread: {e}"))
                })?;
            (sender, thread)
        };
        let store = Self {
            db,
            trees,
            config,
            group_commit,
            flusher: Some(flusher),
            combiner: Some(combiner),
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
    /// A commit through the write combiner, acknowledged once durable when acks are.
    fn commit_now(&self, write: Write) -> Result<Committed, StoreError> {
        let closed = || StoreError::Durability("the store is closing".into());
        let (sender, _) = self.combiner.as_ref().ok_or_else(closed)?;
        let (reply, answer) = mpsc::sync_channel(1);
        sender
            .send(Pending { write, reply })
            .map_err(|_| closed())?;
        let Combined { result, ticket } = answer.recv().map_err(|_| {
            StoreError::Durability(
                "the store's write thread failed while applying the write".into(),
            )
        })?;
        // A replay's binding write may still wait for its flush: answering before that flush
        // would acknowledge a record a crash can still take away.
        let wait = matches!(result, Ok(_) | Err(StoreError::IdempotencyKeyUsed { .. }));
        if let Some(ticket) = ticket
            && wait
        {
            self.group_commit.wait_for(ticket)?;
        }
        let committed = result?;
        self.kind_writes.bump(&committed.record.kind);
        Ok(committed)
    }
}

/// A write waiting for the combiner, and where its outcome goes.
struct Pending {
    write: Write,
    reply: mpsc::SyncSender<Combined>,
}

struct Combined {
    result: Result<Committed, StoreError>,
    /// The group-commit ticket whose flush makes the write durable (absent without durable acks).
    ticket: Option<u64>,
}

/// The most writes one transaction carries: a bound on the transaction's memory and on the
/// replays a failing write causes.
const MAX_COMBINED: usize = 128;

/// The write combiner: one thread applies every queued record write in one sled transaction
/// and asks for one flush. sled runs multi-tree transactions one at a time and holds them off
/// while an fsync runs, so writes applied one per transaction alternate with flushes; combined,
/// the writes that queued during a flush share the next transaction and the next flush.
struct Combiner {
    trees: Vec<sled::Tree>,
    idempotency_ttl: Duration,
    group_commit: Arc<GroupCommit>,
    durable_acks: bool,
}

impl Combiner {
    fn run(&self, queue: &mpsc::Receiver<Pending>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_COMBINED
                && let Ok(next) = queue.try_recv()
            {
                batch.push(next);
            }
            // A panic applying a batch fails that batch's writers (their replies drop) and
            // leaves the thread serving the next writes.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.commit(batch);
            }));
            if applied.is_err() {
                tracing::error!("a batch of writes panicked; its writers were failed");
            }
        }
    }

    /// Commits what it can of `batch` in one transaction: a write that fails (a stale version,
    /// a used idempotency key) gets its error and the others are applied without it, as if it
    /// had come first and failed alone.
    fn commit(&self, batch: Vec<Pending>) {
        let mut results: Vec<Option<Result<Committed, StoreError>>> =
            batch.iter().map(|_| None).collect();
        loop {
            let live: Vec<usize> = (0..batch.len()).filter(|&i| results[i].is_none()).collect();
            if live.is_empty() {
                break;
            }
            match self.transact(live.iter().map(|&i| &batch[i].write)) {
                Ok(committed) => {
                    for (i, committed) in live.into_iter().zip(committed) {
                        results[i] = Some(Ok(committed));
                    }
                    break;
                }
                Err(TransactionError::Abort((failed, error))) => {
                    results[live[failed]] = Some(Err(error));
                }
                Err(TransactionError::Storage(error)) => {
                    for i in live {
                        results[i] = Some(Err(StoreError::Backend(error.clone())));
                    }
                    break;
                }
            }
        }
        let applied = results.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
        let group = &self.group_commit;
        group.metrics.writes_per_transaction.observe(applied as f64);
        let ticket = self.durable_acks.then(|| group.request(applied as u64));
        for (pending, result) in batch.into_iter().zip(results) {
            let result = result
                .unwrap_or_else(|| Err(StoreError::Durability("the write was not applied".into())));
            // A writer that gave up waiting is gone; its write stands either way.
            let _ = pending.reply.send(Combined { result, ticket });
        }
    }

    fn transact<'w>(
        &self,
        writes: impl Iterator<Item = &'w Write> + Clone,
    ) -> Result<Vec<Committed>, TransactionError<(usize, StoreError)>> {
        self.trees.as_slice().transaction(|trees| {
            let tx = SledTx(trees);
            let mut committed = Vec::new();
            for (position, write) in writes.clone().enumerate() {
                match layout::apply_write(&tx, write, self.idempotency_ttl) {
                    Ok(done) => committed.push(done),
                    Err(TxFail::Abort(error)) => {
                        return Err(ConflictableTransactionError::Abort((position, error)));
                    }
                    Err(TxFail::Kv(error)) => return Err(error.into()),
                }
            }
            Ok(committed)
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Some((sender, thread)) = self.combiner.take() {
            drop(sender);
            if thread.join().is_err() {
                tracing::error!("the store write thread panicked");
            }
        }
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

impl crate::copy::KvCopy for SledStore {
    fn tree_len(&self, tree: TreeId) -> Result<u64, StoreError> {
        Ok(self.tree(tree).len() as u64)
    }

    fn load(&self, tree: TreeId, entries: Vec<Entry>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in entries {
            batch.insert(key, value);
        }
        self.tree(tree).apply_batch(batch)?;
        self.flush()
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

    fn generation(&self, area: &str) -> Result<u64, StoreError> {
        layout::generation(self, area)
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
    /// Writes behind the tickets requested, and behind those flushed (for the metrics).
    writes_requested: u64,
    writes_flushed: u64,
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
        self.wait_for(self.request(1))
    }

    /// A ticket for everything applied so far, `writes` of it since the last request: the next
    /// flush to start covers it.
    fn request(&self, writes: u64) -> u64 {
        let mut state = self.lock();
        state.writes_requested += writes;
        state.requested += 1;
        self.work.notify_one();
        state.requested
    }

    fn wait_for(&self, ticket: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
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
            let covered = state.writes_requested - state.writes_flushed;
            state.writes_flushed = state.writes_requested;
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
