use std::{
    cell::RefCell,
    collections::BTreeMap,
    convert::Infallible,
    sync::{Mutex, MutexGuard, PoisonError},
};

use usm_model::{Approval, Event, HistoryEntry, LinkRel, Record, RecordId};

use crate::{
    Committed, ListQuery, Page, Pruned, Store, StoreConfig, StoreError, Write,
    layout::{self, Entry, KvRead, KvTx, TreeId, TxFail},
};

type Trees = [BTreeMap<Vec<u8>, Vec<u8>>; TreeId::ALL.len()];

/// An in-memory backend with the same layout and semantics as [`SledStore`](crate::SledStore),
/// minus durability. For unit tests of the engine.
#[derive(Default)]
pub struct MemoryStore {
    trees: Mutex<Trees>,
    config: StoreConfig,
    kind_writes: crate::KindWrites,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with these tunables (of which it uses the idempotency retention).
    pub fn with_config(config: StoreConfig) -> Self {
        Self {
            trees: Mutex::default(),
            config,
            kind_writes: crate::KindWrites::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Trees> {
        self.trees.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `body` as one transaction: its writes apply only if it succeeds.
    fn transact<T>(
        &self,
        body: impl FnOnce(&MemTx<'_>) -> Result<T, TxFail<Infallible>>,
    ) -> Result<T, StoreError> {
        let mut trees = self.lock();
        let tx = MemTx {
            trees: &trees,
            writes: RefCell::default(),
        };
        let result = match body(&tx) {
            Ok(result) => result,
            Err(TxFail::Abort(error)) => return Err(error),
            Err(TxFail::Kv(never)) => match never {},
        };
        for (tree, key, value) in tx.writes.into_inner() {
            match value {
                Some(value) => trees[tree as usize].insert(key, value),
                None => trees[tree as usize].remove(&key),
            };
        }
        Ok(result)
    }
}

/// An insert (`Some`) or removal (`None`) waiting for the transaction to succeed.
type StagedWrite = (TreeId, Vec<u8>, Option<Vec<u8>>);

/// Buffers writes so that an aborted transaction leaves the trees untouched.
struct MemTx<'a> {
    trees: &'a Trees,
    writes: RefCell<Vec<StagedWrite>>,
}

impl KvTx for MemTx<'_> {
    type Error = Infallible;

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail<Infallible>> {
        let writes = self.writes.borrow();
        if let Some((_, _, value)) = writes.iter().rev().find(|(t, k, _)| *t == tree && k == key) {
            return Ok(value.clone());
        }
        Ok(self.trees[tree as usize].get(key).cloned())
    }

    fn insert(&self, tree: TreeId, key: &[u8], value: Vec<u8>) -> Result<(), TxFail<Infallible>> {
        self.writes
            .borrow_mut()
            .push((tree, key.to_vec(), Some(value)));
        Ok(())
    }

    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<(), TxFail<Infallible>> {
        self.writes.borrow_mut().push((tree, key.to_vec(), None));
        Ok(())
    }
}

impl KvRead for MemoryStore {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()[tree as usize].get(key).cloned())
    }

    fn scan(
        &self,
        tree: TreeId,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self.lock()[tree as usize]
            .range(start.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Store for MemoryStore {
    fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        layout::get(self, id)
    }

    fn commit(&self, write: Write) -> Result<Committed, StoreError> {
        let ttl = self.config.idempotency_ttl;
        let committed = self.transact(|tx| layout::apply_write(tx, &write, ttl))?;
        self.kind_writes.bump(&committed.record.kind);
        Ok(committed)
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
        self.lock()[TreeId::Counters as usize].insert(
            layout::cursor_key(consumer),
            position.to_be_bytes().to_vec(),
        );
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
        Ok(self.lock()[TreeId::Outbox as usize].len())
    }

    fn idempotency_len(&self) -> Result<usize, StoreError> {
        Ok(self.lock()[TreeId::Idempotency as usize].len())
    }

    fn artifact(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()[TreeId::Artifacts as usize]
            .get(key.as_bytes())
            .cloned())
    }

    fn put_artifact(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.lock()[TreeId::Artifacts as usize].insert(key.as_bytes().to_vec(), bytes.to_vec());
        Ok(())
    }

    fn delete_artifact(&self, key: &str) -> Result<(), StoreError> {
        self.lock()[TreeId::Artifacts as usize].remove(key.as_bytes());
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()[TreeId::Settings as usize]
            .get(key.as_bytes())
            .cloned())
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
        Ok(self.lock()[TreeId::Timers as usize].len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
