//! `usm-store` owns persistence. The [`Store`] trait is what the engine sees; [`SledStore`] is
//! the embedded, durable backend and [`MemoryStore`] an in-memory one for unit tests. Every
//! backend — these two and the PostgreSQL one in `usm-store-postgres` — is a transactional
//! key-value engine under one implementation of the key layout and of the write transaction
//! ([`kv`]), so they cannot drift apart.
//!
//! Every write is one atomic transaction that stores the new record version, its history entry,
//! the index entries, the approval (if any) and an outbox event. [`Store::commit`] returns only
//! once that transaction is durable: writers share fsyncs through a group commit.

pub mod copy;
mod layout;
mod memory;

/// The key layout and the transactions every backend runs, over a small key-value interface: a
/// new backend implements [`kv::KvRead`] and [`kv::KvTx`] and calls these functions.
pub mod kv {
    pub use crate::layout::{
        Entry, KvRead, KvTx, PrunePlan, TreeId, TxFail, apply_audit, apply_fire,
        apply_notification, apply_prune, apply_schedule, apply_settings, apply_write, approvals,
        audit_after, backlinks, cursor, cursor_key, due_timers, events_after, generation, get,
        history, list, prune_plan, settings,
    };
}
mod sled_store;

use std::time::Duration;

use usm_model::{Approval, Domain, Event, HistoryEntry, Kind, LinkRel, Record, RecordId, State};

pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist.
    #[error("record {0} does not exist")]
    NotFound(RecordId),
    /// The write expected another version than the stored one.
    #[error("record {id} is at version {current}, not {expected}")]
    VersionMismatch {
        /// The record.
        id: RecordId,
        /// The version the writer read.
        expected: u64,
        /// The version in the store.
        current: u64,
    },
    /// A create carried an idempotency key that is already bound to a record.
    #[error("idempotency key already used for {record_id}")]
    IdempotencyKeyUsed {
        /// The record the key created.
        record_id: RecordId,
        /// Fingerprint of the request that first used the key.
        request_hash: String,
        /// The record as that request created it (absent for keys bound by older versions).
        record: Option<Box<Record>>,
    },
    /// The data directory could not be opened.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// The data directory.
        path: String,
        /// Why.
        source: sled::Error,
    },
    /// The data directory was written by an incompatible version of usm.
    #[error("the store has format version {found}; this usm reads version {expected}")]
    Format {
        /// The version on disk.
        found: u64,
        /// The version this build reads.
        expected: u64,
    },
    /// An I/O or internal error in the storage engine.
    #[error("storage error: {0}")]
    Backend(#[from] sled::Error),
    /// Flushing to disk failed; the write may not be durable.
    #[error("flush to disk failed: {0}")]
    Durability(String),
    /// The database of a networked backend failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Stored bytes could not be decoded.
    #[error("corrupt {what} in the store: {detail}")]
    Corrupt {
        /// Which item.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
}

/// What a write expects to find in the store.
#[derive(Debug, Clone)]
pub enum Expected {
    /// A new record: the store assigns the next number for `prefix`.
    Create {
        /// The kind's id prefix, e.g. `INC`.
        prefix: String,
        /// Binds an idempotency key to the new record, if the client sent one.
        idempotency: Option<IdempotencyClaim>,
    },
    /// An existing record at exactly this version (compare-and-swap).
    Version(u64),
}

/// An idempotency key and the fingerprint of the request that carries it.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The client's key, already scoped by the caller (e.g. per principal).
    pub key: String,
    /// Fingerprint of the request body.
    pub request_hash: String,
}

/// One write: the proposed record and its history entry.
///
/// For creates the store fills in `record.id` and `version`; for updates it sets the version to
/// the expected one plus one. It also numbers the history entry and the approval, if any.
#[derive(Debug, Clone)]
pub struct Write {
    /// The record as it should be after the write.
    pub record: Record,
    /// The history entry describing the write.
    pub history: HistoryEntry,
    /// What the writer read.
    pub expected: Expected,
}

/// A durable write.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The record as stored.
    pub record: Record,
    /// The history entry as stored (numbered, with its approval numbered).
    pub history: HistoryEntry,
    /// The outbox event written with it.
    pub event: Event,
}

/// Filters and position for listing records; every filter is served by an index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only records of this kind.
    pub kind: Option<Kind>,
    /// Only records in this state.
    pub state: Option<State>,
    /// Only records in this domain.
    pub domain: Option<Domain>,
    /// Only records in one of these domains (the caller's scope); not served by an index.
    pub within: Option<std::collections::BTreeSet<Domain>>,
    /// Only records this principal created or requested; not served by an index.
    pub owner: Option<String>,
    /// Resume after this position (from [`Page::next`]).
    pub after: Option<u64>,
    /// At most this many records.
    pub limit: usize,
}

/// One page of a listing, in creation order.
#[derive(Debug, Clone)]
pub struct Page {
    /// The records.
    pub records: Vec<Record>,
    /// The position to resume from, when more records may follow.
    pub next: Option<u64>,
}

/// A durable SLA timer: a clock of a record reaches a level at an instant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timer {
    /// The record.
    pub record_id: RecordId,
    /// `response` or `resolution`.
    pub clock: String,
    /// `warning` or `breach`.
    pub level: String,
    /// When it fires.
    pub due_at: usm_model::Timestamp,
    /// The record's SLA cycle the level belongs to: 1 from creation, one more after each reopen.
    #[serde(default = "first_cycle")]
    pub cycle: u32,
}

fn first_cycle() -> u32 {
    1
}

/// The settings key prefix of a record's SLA ledger (warnings, breaches and stops of its clocks).
pub fn ledger_prefix(record: &RecordId) -> String {
    format!("sla-ledger/{record}/")
}

/// The settings key of one ledger entry: a level of a clock is reached once per cycle.
pub fn ledger_key(record: &RecordId, cycle: u32, clock: &str, level: &str) -> String {
    format!("{}{cycle:06}/{clock}/{level}", ledger_prefix(record))
}

/// What one [`Store::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Outbox events every consumer had passed.
    pub events: usize,
    /// Idempotency keys past their retention.
    pub idempotency_keys: usize,
}

/// Tunables of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Acknowledge writes only after they are flushed to disk (default: true).
    pub durable_acks: bool,
    /// How long an idempotency key stays bound to its record; [`Store::prune`] removes it after.
    pub idempotency_ttl: Duration,
    /// Bytes of page cache for the sled backend.
    pub cache_capacity: u64,
    /// How long an outbox event is kept after it was written, even once every consumer has
    /// passed it (a webhook delivery can be redone while its event is kept).
    pub outbox_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durable_acks: true,
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            cache_capacity: 256 * 1024 * 1024,
            outbox_retention: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Committed writes per kind, counted in this process, so that readers can cache what they
/// read of a kind (e.g. a plugin's query for active agreements) and see when it went stale.
#[derive(Debug, Default)]
pub struct KindWrites {
    counts: std::sync::RwLock<std::collections::HashMap<Kind, std::sync::atomic::AtomicU64>>,
}

impl KindWrites {
    /// Counts one committed write of `kind`.
    pub fn bump(&self, kind: &Kind) {
        use std::sync::{PoisonError, atomic::Ordering};
        if let Some(count) = self
            .counts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kind)
        {
            count.fetch_add(1, Ordering::Release);
            return;
        }
        self.counts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind.clone())
            .or_default()
            .fetch_add(1, Ordering::Release);
    }

    /// Writes of `kind` committed so far.
    pub fn get(&self, kind: &Kind) -> u64 {
        use std::sync::{PoisonError, atomic::Ordering};
        self.counts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kind)
            .map_or(0, |count| count.load(Ordering::Acquire))
    }
}

/// Persistence for records, history, approvals, indexes and the outbox.
///
/// Methods block on I/O: async callers run them on a blocking thread.
pub trait Store: Send + Sync + 'static {
    /// The current version of a record.
    fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError>;

    /// Applies one write atomically and returns once it is durable. A create whose idempotency
    /// key is bound fails with [`StoreError::IdempotencyKeyUsed`], also only once the write that
    /// bound it is durable: a replay is never acknowledged before the original.
    fn commit(&self, write: Write) -> Result<Committed, StoreError>;

    /// How many writes of records of `kind` this process has committed: when it has not moved,
    /// nothing read of that kind has changed (a cache key, not a durable figure).
    fn kind_writes(&self, kind: &Kind) -> u64;

    /// Commit and flush timings, for stores that measure them.
    fn metrics(&self) -> Option<&StoreMetrics> {
        None
    }

    /// History entries of a record with a version above `after`, oldest first, at most `limit`.
    fn history(
        &self,
        id: &RecordId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError>;

    /// All approvals of a record, oldest first.
    fn approvals(&self, id: &RecordId) -> Result<Vec<Approval>, StoreError>;

    /// Records linking to `id`: (relation, source record), in source-id order.
    fn backlinks(&self, id: &RecordId) -> Result<Vec<(LinkRel, RecordId)>, StoreError>;

    /// A page of records matching the query, in creation order.
    fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Outbox events with a sequence number above `after`, oldest first, at most `limit`.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Appends a notification event about a record to the outbox.
    fn notify(
        &self,
        record: &Record,
        actor: &str,
        depth: u32,
        payload: serde_json::Value,
    ) -> Result<Event, StoreError>;

    /// The position of a named outbox consumer (0 before its first event).
    fn cursor(&self, consumer: &str) -> Result<u64, StoreError>;

    /// Moves a named outbox consumer's position. Not flushed on its own: after a crash a consumer
    /// may see events again (at least once), never miss one.
    fn set_cursor(&self, consumer: &str, position: u64) -> Result<(), StoreError>;

    /// Removes what no one needs any more: outbox events at or below the cursor of every named
    /// consumer (a consumer without a cursor holds back everything; no consumers, no events
    /// removed) written `outbox_retention` or longer before `now`, and idempotency keys bound
    /// `idempotency_ttl` or longer before `now`. Works in
    /// bounded batches; safe to run alongside writes and consumers.
    fn prune(&self, consumers: &[String], now: usm_model::Timestamp) -> Result<Pruned, StoreError>;

    /// Number of events in the outbox.
    fn outbox_len(&self) -> Result<usize, StoreError>;

    /// Number of bound idempotency keys.
    fn idempotency_len(&self) -> Result<usize, StoreError>;

    /// A cached artifact (e.g. a compiled WASM component) by its content key.
    fn artifact(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Caches an artifact under its content key.
    fn put_artifact(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// Removes a cached artifact.
    fn delete_artifact(&self, key: &str) -> Result<(), StoreError>;

    /// A setting (installed modules, enablement, workflow templates, …).
    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every setting whose key starts with `prefix`, by key.
    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Writes settings and removes others atomically, and returns once that is durable.
    fn write_settings(
        &self,
        put: &[(String, Vec<u8>)],
        delete: &[String],
    ) -> Result<(), StoreError>;

    /// Appends an audit entry durably and returns its sequence number.
    fn append_audit(&self, entry: &[u8]) -> Result<u64, StoreError>;

    /// Audit entries after `after`, oldest first, at most `limit`.
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Replaces a record's SLA timers atomically.
    fn schedule_timers(&self, record: &RecordId, timers: &[Timer]) -> Result<(), StoreError>;

    /// Timers due at or before `now`, earliest first, at most `limit`.
    fn due_timers(&self, now: usm_model::Timestamp, limit: usize)
    -> Result<Vec<Timer>, StoreError>;

    /// Fires a timer once: removes it, appends its `sla.warning`/`sla.breach` event and writes
    /// `ledger` as the record's ledger entry for the timer's cycle, clock and level, in one
    /// transaction. `None` when it was already fired or rescheduled.
    fn fire_timer(
        &self,
        timer: &Timer,
        record: &Record,
        payload: serde_json::Value,
        ledger: &serde_json::Value,
    ) -> Result<Option<Event>, StoreError>;

    /// The entries of a record's SLA ledger, by cycle, clock and level.
    fn sla_ledger(&self, record: &RecordId) -> Result<Vec<serde_json::Value>, StoreError> {
        self.settings(&ledger_prefix(record))?
            .into_iter()
            .map(|(_, bytes)| {
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    what: "SLA ledger entry",
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// Writes a ledger entry unless the level is already recorded for that cycle (the first
    /// record stands). Returns whether it wrote.
    fn append_sla_ledger(
        &self,
        record: &RecordId,
        cycle: u32,
        clock: &str,
        level: &str,
        entry: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let key = ledger_key(record, cycle, clock, level);
        if self.setting(&key)?.is_some() {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt {
            what: "SLA ledger entry",
            detail: e.to_string(),
        })?;
        self.write_settings(&[(key, bytes)], &[])?;
        Ok(true)
    }

    /// A number that moves whenever something in `area` changes, on whichever node sharing the
    /// store changed it: the settings whose key starts with `{area}/`, or the records of a kind
    /// for `kind/{kind}`. A node compares it with the last it saw to know when to reload what it
    /// keeps in memory of the store (tokens, modules, the directory, agreements).
    fn generation(&self, area: &str) -> Result<u64, StoreError>;

    /// Whether this node may run the named singleton work now — an outbox consumer whose
    /// effects must happen once however many nodes share the store. A store one process owns
    /// always says yes. A shared store grants a lease to one node at a time, renewed while that
    /// node keeps asking; once it stops asking (stopped, killed, cut off), another node that
    /// asks gets the lease after it expires. Ask before each batch of work.
    fn lease(&self, _name: &str) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives up every lease this node holds, so that another node takes over at once (on a
    /// graceful stop).
    fn release_leases(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Number of pending timers.
    fn timer_count(&self) -> Result<usize, StoreError>;

    /// Flushes everything written so far to disk.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Whether this node holds the lease `name` now ([`Store::lease`]); a store that cannot answer
/// says no, and the error is logged: the work waits rather than risk running twice.
pub fn holds_lease(store: &dyn Store, name: &str) -> bool {
    store.lease(name).unwrap_or_else(|error| {
        tracing::error!(lease = name, %error, "cannot renew a lease; the work it guards waits");
        false
    })
}

/// How a durable store's writes fare, for `/metrics`.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// A commit from its call to its acknowledgement (durable, with durable acks).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// One flush (fsync) of the group commit.
    pub flush_seconds: prometheus_client::metrics::histogram::Histogram,
    /// How many waiting writes one flush made durable.
    pub writes_per_flush: prometheus_client::metrics::histogram::Histogram,
    /// How many record writes the write combiner applied in one transaction.
    pub writes_per_transaction: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        Self {
            // 10 µs to about 1.3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            flush_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            // 1 to 1,024.
            writes_per_flush: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            writes_per_transaction: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
        }
    }
}
