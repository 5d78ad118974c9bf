//! `usm-store-postgres`: the [`Store`] contract on PostgreSQL, so that several usm nodes can
//! share one database.
//!
//! The database holds the layout the embedded store uses — one `usm_kv` table of (tree, key,
//! value) rows, keys compared as bytes — and every transaction is usm-store's own code over the
//! [`usm_store::kv`] interface, so the backends cannot drift apart. Each transaction runs at
//! READ COMMITTED and locks every row it reads (`SELECT … FOR UPDATE`): a compare-and-swap on
//! a record's version and the counters that number records and outbox events are then exact
//! across nodes, and the outbox is committed in the order it is numbered. A key the transaction
//! read as absent is inserted without `ON CONFLICT`, so two nodes binding the same new key (an
//! idempotency key, a first counter) cannot both win: the loser's unique violation retries the
//! whole transaction, which then sees the winner's row. Nothing here uses advisory locks or
//! PostgreSQL-only syntax beyond `unnest` and `FOR UPDATE`, which CockroachDB and YugabyteDB
//! also run.
//!
//! Work that must run on one node at a time (an outbox consumer) holds a lease: a row of
//! `usm_leases` taken or renewed by one conditional upsert, timed by the database's clock.
//! Caches a node keeps follow the other nodes through generations: counters the write
//! transactions move per settings area and per record kind.
//!
//! The driver is tokio-postgres with a deadpool pool on a small runtime of the store's own; the
//! [`Store`] methods block the calling thread (callers run them on blocking threads, as they do
//! for sled). `sslmode=require` connects over rustls, checking the server's certificate.

mod scratch;
mod settings;

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::PoisonError,
    time::{Duration, Instant},
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, error::SqlState};
use usm_model::{Approval, Event, HistoryEntry, Kind, LinkRel, Record, RecordId, Timestamp};
use usm_store::{
    Committed, KindWrites, ListQuery, Page, Pruned, Store, StoreConfig, StoreError, Timer, Write,
    kv::{self, Entry, KvRead, KvTx, TreeId, TxFail},
};

pub use scratch::ScratchDatabase;
pub use settings::{ConnectError, PostgresSettings, Transport, redact};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The table the migration tool records applied schema versions in.
const SCHEMA_HISTORY: &str = "usm_schema_history";

/// How often a transaction that lost a race (a unique violation on a key it read as absent, a
/// deadlock, a serialisation failure) is run again before the write fails.
const MAX_ATTEMPTS: u32 = 32;

const GET: &str = "SELECT value FROM usm_kv WHERE tree = $1 AND key = $2";
const GET_FOR_UPDATE: &str = "SELECT value FROM usm_kv WHERE tree = $1 AND key = $2 FOR UPDATE";
const SCAN_TO: &str = "SELECT key, value FROM usm_kv WHERE tree = $1 AND key >= $2 AND key < $3 \
                       ORDER BY key LIMIT $4";
const SCAN_FROM: &str =
    "SELECT key, value FROM usm_kv WHERE tree = $1 AND key >= $2 ORDER BY key LIMIT $3";
const UPSERT: &str = "INSERT INTO usm_kv (tree, key, value) \
                      SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[]) \
                      ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value";
const INSERT_NEW: &str = "INSERT INTO usm_kv (tree, key, value) \
                          SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[])";
const DELETE: &str = "DELETE FROM usm_kv WHERE (tree, key) IN \
                      (SELECT * FROM unnest($1::int2[], $2::bytea[]))";
const COUNT: &str = "SELECT count(*) FROM usm_kv WHERE tree = $1";
/// Takes a lease that is free, expired or already ours, renewing it; no row when another node
/// holds it. One statement: the row lock it takes orders nodes asking at once.
const TAKE_LEASE: &str = "INSERT INTO usm_leases (name, holder, expires_at) \
                          VALUES ($1, $2, now() + $3::int8 * interval '1 millisecond') \
                          ON CONFLICT (name) DO UPDATE \
                          SET holder = excluded.holder, expires_at = excluded.expires_at \
                          WHERE usm_leases.holder = excluded.holder \
                          OR usm_leases.expires_at < now() \
                          RETURNING holder";
const RELEASE_LEASES: &str = "DELETE FROM usm_leases WHERE holder = $1";

/// The store on a PostgreSQL database.
pub struct PostgresStore {
    /// Runs the connections' I/O; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    config: StoreConfig,
    kind_writes: KindWrites,
    metrics: usm_store::StoreMetrics,
    /// This process among the nodes: the holder name of its leases.
    node: String,
    lease_ttl: Duration,
    /// Until when (on this node's monotonic clock) each lease it took is surely still its own.
    leases: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// The last generation read of each kind, and when.
    kind_generations: std::sync::Mutex<std::collections::HashMap<Kind, (Instant, u64)>>,
}

/// How old a kind's generation may be before `kind_writes` reads it again.
const KIND_GENERATION_AGE: Duration = Duration::from_millis(250);

fn database(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(Box::new(error))
}

/// The database's id of a tree: its position in the layout's list, which the first migration
/// names in `usm_trees` (checked when the store opens).
fn tree_id(tree: TreeId) -> i16 {
    tree as i16
}

/// The smallest key above every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn row_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Whether a failed transaction lost a race and may succeed when run again.
fn is_retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl PostgresStore {
    /// Connects to the database `settings` name, brings its schema up to this build's version
    /// (refusing a schema newer than this build knows) and checks the layout's tree ids.
    pub fn connect(settings: &PostgresSettings, config: StoreConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("usm-postgres")
            .enable_all()
            .build()
            .map_err(database)?;
        let mut pg = settings.tokio_config().map_err(database)?;
        if !config.durable_acks {
            // The same trade as sled without durable acks: a crash may lose the last writes,
            // never corrupt the store.
            pg.options("-c synchronous_commit=off");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match settings.transport().map_err(database)? {
            Transport::Plain => Manager::from_config(pg, NoTls, manager_config),
            Transport::Tls(tls) => Manager::from_config(pg, tls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(database)?;
        let store = Self {
            runtime: Some(runtime),
            pool,
            config,
            kind_writes: KindWrites::default(),
            metrics: usm_store::StoreMetrics::default(),
            node: settings.node_id(),
            lease_ttl: settings.lease_ttl,
            leases: std::sync::Mutex::default(),
            kind_generations: std::sync::Mutex::default(),
        };
        store.migrate()?;
        store.check_trees()?;
        Ok(store)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime lives until the store is dropped"))
    }

    /// Runs `future` to completion on the calling thread, in the store's runtime context (where
    /// the pool opens connections and spawns their I/O tasks).
    fn block<T>(&self, future: impl Future<Output = T>) -> T {
        let _context = self.runtime().enter();
        futures_executor::block_on(future)
    }

    fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.block(self.pool.get()).map_err(database)
    }

    /// Applies the embedded migrations; a database whose schema is newer than the newest of
    /// them was written by a newer usm and is refused before anything touches it.
    fn migrate(&self) -> Result<(), StoreError> {
        let mut runner = embedded::migrations::runner()
            .set_abort_divergent(true)
            .set_abort_missing(true);
        runner.set_migration_table_name(SCHEMA_HISTORY);
        let known = runner
            .get_migrations()
            .iter()
            .map(|m| u64::try_from(m.version()).unwrap_or(0))
            .max()
            .unwrap_or(0);
        let mut client = self.client()?;
        let found = self.block(async {
            let exists = client
                .query_one(
                    "SELECT to_regclass($1)::text IS NOT NULL",
                    &[&SCHEMA_HISTORY],
                )
                .await?
                .get::<_, bool>(0);
            if !exists {
                return Ok::<_, tokio_postgres::Error>(0);
            }
            let row = client
                .query_one(
                    &format!("SELECT coalesce(max(version), 0)::int8 FROM {SCHEMA_HISTORY}"),
                    &[],
                )
                .await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        });
        let found = found.map_err(database)?;
        if found > known {
            return Err(StoreError::Format {
                found,
                expected: known,
            });
        }
        let client: &mut tokio_postgres::Client = &mut client;
        let report = self.block(runner.run_async(client)).map_err(database)?;
        for migration in report.applied_migrations() {
            tracing::info!(
                version = migration.version(),
                name = migration.name(),
                "schema migrated"
            );
        }
        Ok(())
    }

    /// The database's tree ids must be the layout's, or every key would land in another tree.
    fn check_trees(&self) -> Result<(), StoreError> {
        let client = self.client()?;
        let rows = self
            .block(client.query("SELECT id, name FROM usm_trees ORDER BY id", &[]))
            .map_err(database)?;
        let stored: Vec<(i16, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let expected: Vec<(i16, String)> = TreeId::ALL
            .iter()
            .map(|&tree| (tree_id(tree), tree.name().to_owned()))
            .collect();
        if stored != expected {
            return Err(StoreError::Corrupt {
                what: "tree table",
                detail: format!("usm_trees holds {stored:?}, this usm expects {expected:?}"),
            });
        }
        Ok(())
    }

    /// Runs `body` as one database transaction, again when it lost a race, and commits it.
    fn transact<T>(
        &self,
        body: impl Fn(&PgTx<'_>) -> Result<T, TxFail<tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let mut client = self.client()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tx = self.block(client.transaction()).map_err(database)?;
            let staged = PgTx {
                store: self,
                tx: &tx,
                writes: RefCell::default(),
                absent: RefCell::default(),
            };
            let outcome = body(&staged);
            let (writes, absent) = (staged.writes.into_inner(), staged.absent.into_inner());
            let failure = match outcome {
                Err(TxFail::Abort(error)) => return Err(error),
                Err(TxFail::Kv(error)) => error,
                Ok(value) => match self.block(async {
                    write_staged(&tx, writes, &absent).await?;
                    let committing = Instant::now();
                    tx.commit().await?;
                    Ok(committing.elapsed())
                }) {
                    Ok(commit_time) => {
                        // The commit is the flush: PostgreSQL makes the WAL durable in it.
                        self.metrics
                            .flush_seconds
                            .observe(commit_time.as_secs_f64());
                        self.metrics.writes_per_flush.observe(1.0);
                        return Ok(value);
                    }
                    Err(error) => error,
                },
            };
            if attempt >= MAX_ATTEMPTS || !is_retryable(&failure) {
                return Err(database(failure));
            }
            tracing::debug!(attempt, error = %failure, "transaction lost a race; running it again");
        }
    }

    fn count(&self, tree: TreeId) -> Result<usize, StoreError> {
        let client = self.client()?;
        let row = self
            .block(async {
                let statement = client.prepare_cached(COUNT).await?;
                client.query_one(&statement, &[&tree_id(tree)]).await
            })
            .map_err(database)?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Writes one key outside a transaction (positions, cached artifacts).
    fn put(&self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let client = self.client()?;
        self.block(async {
            let statement = client.prepare_cached(UPSERT).await?;
            client
                .execute(
                    &statement,
                    &[&vec![tree_id(tree)], &vec![key], &vec![value]],
                )
                .await
        })
        .map_err(database)?;
        Ok(())
    }

    fn delete(&self, tree: TreeId, key: &[u8]) -> Result<(), StoreError> {
        let client = self.client()?;
        self.block(async {
            let statement = client.prepare_cached(DELETE).await?;
            client
                .execute(&statement, &[&vec![tree_id(tree)], &vec![key]])
                .await
        })
        .map_err(database)?;
        Ok(())
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which is refused on an async thread; the
        // connections' tasks have nothing left to do once the pool is gone.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Writes staged by one transaction: the final value of each key (`None`: removed).
type Staged = BTreeMap<(TreeId, Vec<u8>), Option<Vec<u8>>>;

/// One transaction's view: its reads lock the rows they find and go to the database; its writes
/// are staged and sent in three statements at commit, while the rows stay locked.
struct PgTx<'a> {
    store: &'a PostgresStore,
    tx: &'a deadpool_postgres::Transaction<'a>,
    writes: RefCell<Staged>,
    /// Keys read as absent: they are inserted without `ON CONFLICT`, so a concurrent insert of
    /// the same key makes this transaction fail and run again rather than overwrite it.
    absent: RefCell<BTreeSet<(TreeId, Vec<u8>)>>,
}

impl KvTx for PgTx<'_> {
    type Error = tokio_postgres::Error;

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail<Self::Error>> {
        if let Some(value) = self.writes.borrow().get(&(tree, key.to_vec())) {
            return Ok(value.clone());
        }
        let tx = self.tx;
        let row = self
            .store
            .block(async {
                let statement = tx.prepare_cached(GET_FOR_UPDATE).await?;
                tx.query_opt(&statement, &[&tree_id(tree), &key]).await
            })
            .map_err(TxFail::Kv)?;
        let value = row.map(|row| row.get::<_, Vec<u8>>(0));
        if value.is_none() {
            self.absent.borrow_mut().insert((tree, key.to_vec()));
        }
        Ok(value)
    }

    fn insert(&self, tree: TreeId, key: &[u8], value: Vec<u8>) -> Result<(), TxFail<Self::Error>> {
        self.writes
            .borrow_mut()
            .insert((tree, key.to_vec()), Some(value));
        Ok(())
    }

    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<(), TxFail<Self::Error>> {
        self.writes.borrow_mut().insert((tree, key.to_vec()), None);
        Ok(())
    }
}

/// Sends a transaction's staged writes: new keys, overwrites and removals, one statement each.
async fn write_staged(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: Staged,
    absent: &BTreeSet<(TreeId, Vec<u8>)>,
) -> Result<(), tokio_postgres::Error> {
    #[derive(Default)]
    struct Rows {
        trees: Vec<i16>,
        keys: Vec<Vec<u8>>,
        values: Vec<Vec<u8>>,
    }
    let (mut new, mut overwrite, mut removed) = (Rows::default(), Rows::default(), Rows::default());
    for ((tree, key), value) in writes {
        let rows = match &value {
            None => &mut removed,
            Some(_) if absent.contains(&(tree, key.clone())) => &mut new,
            Some(_) => &mut overwrite,
        };
        rows.trees.push(tree_id(tree));
        rows.keys.push(key);
        rows.values.extend(value);
    }
    if !removed.keys.is_empty() {
        let statement = tx.prepare_cached(DELETE).await?;
        tx.execute(&statement, &[&removed.trees, &removed.keys])
            .await?;
    }
    for (sql, rows) in [(INSERT_NEW, &new), (UPSERT, &overwrite)] {
        if !rows.keys.is_empty() {
            let statement = tx.prepare_cached(sql).await?;
            tx.execute(&statement, &[&rows.trees, &rows.keys, &rows.values])
                .await?;
        }
    }
    Ok(())
}

impl usm_store::copy::KvCopy for PostgresStore {
    fn tree_len(&self, tree: TreeId) -> Result<u64, StoreError> {
        self.count(tree).map(|n| n as u64)
    }

    fn load(&self, tree: TreeId, entries: Vec<Entry>) -> Result<(), StoreError> {
        let trees = vec![tree_id(tree); entries.len()];
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = entries.into_iter().unzip();
        let client = self.client()?;
        self.block(async {
            let statement = client.prepare_cached(UPSERT).await?;
            client.execute(&statement, &[&trees, &keys, &values]).await
        })
        .map_err(database)?;
        Ok(())
    }
}

impl KvRead for PostgresStore {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client()?;
        let row = self
            .block(async {
                let statement = client.prepare_cached(GET).await?;
                client.query_opt(&statement, &[&tree_id(tree), &key]).await
            })
            .map_err(database)?;
        Ok(row.map(|row| row.get(0)))
    }

    fn scan(
        &self,
        tree: TreeId,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let client = self.client()?;
        let start = start.max(prefix);
        let rows = self
            .block(async {
                match prefix_end(prefix) {
                    Some(end) => {
                        let statement = client.prepare_cached(SCAN_TO).await?;
                        client
                            .query(
                                &statement,
                                &[&tree_id(tree), &start, &end, &row_limit(limit)],
                            )
                            .await
                    }
                    None => {
                        let statement = client.prepare_cached(SCAN_FROM).await?;
                        client
                            .query(&statement, &[&tree_id(tree), &start, &row_limit(limit)])
                            .await
                    }
                }
            })
            .map_err(database)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }
}

impl Store for PostgresStore {
    fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        kv::get(self, id)
    }

    fn commit(&self, write: Write) -> Result<Committed, StoreError> {
        let started = Instant::now();
        let ttl = self.config.idempotency_ttl;
        let committed = self.transact(|tx| kv::apply_write(tx, &write, ttl))?;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.writes_per_transaction.observe(1.0);
        self.kind_writes.bump(&committed.record.kind);
        Ok(committed)
    }

    fn kind_writes(&self, kind: &Kind) -> u64 {
        // This node's writes count at once, the other nodes' within `KIND_GENERATION_AGE`: a
        // cache keyed on the sum is rebuilt after a write anywhere.
        let local = self.kind_writes.get(kind);
        let now = Instant::now();
        let mut seen = self
            .kind_generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let fresh = seen
            .get(kind)
            .filter(|(at, _)| now.duration_since(*at) < KIND_GENERATION_AGE)
            .map(|(_, generation)| *generation);
        let generation = match fresh {
            Some(generation) => generation,
            None => {
                drop(seen);
                let generation = self
                    .generation(&format!("kind/{kind}"))
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, "cannot read a kind's generation");
                        0
                    });
                seen = self
                    .kind_generations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                seen.insert(kind.clone(), (now, generation));
                generation
            }
        };
        local.wrapping_add(generation)
    }

    fn metrics(&self) -> Option<&usm_store::StoreMetrics> {
        Some(&self.metrics)
    }

    fn history(
        &self,
        id: &RecordId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        kv::history(self, id, after, limit)
    }

    fn approvals(&self, id: &RecordId) -> Result<Vec<Approval>, StoreError> {
        kv::approvals(self, id)
    }

    fn backlinks(&self, id: &RecordId) -> Result<Vec<(LinkRel, RecordId)>, StoreError> {
        kv::backlinks(self, id)
    }

    fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        kv::list(self, query)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        kv::events_after(self, after, limit)
    }

    fn notify(
        &self,
        record: &Record,
        actor: &str,
        depth: u32,
        payload: serde_json::Value,
    ) -> Result<Event, StoreError> {
        self.transact(|tx| kv::apply_notification(tx, record, actor, depth, &payload))
    }

    fn cursor(&self, consumer: &str) -> Result<u64, StoreError> {
        kv::cursor(self, consumer)
    }

    fn set_cursor(&self, consumer: &str, position: u64) -> Result<(), StoreError> {
        self.put(
            TreeId::Counters,
            &kv::cursor_key(consumer),
            &position.to_be_bytes(),
        )
    }

    fn prune(&self, consumers: &[String], now: Timestamp) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        loop {
            let plan = kv::prune_plan(self, consumers, now, &self.config)?;
            if plan.is_empty() {
                return Ok(pruned);
            }
            let (events, keys) = self.transact(|tx| kv::apply_prune(tx, &plan))?;
            pruned.events += events;
            pruned.idempotency_keys += keys;
        }
    }

    fn outbox_len(&self) -> Result<usize, StoreError> {
        self.count(TreeId::Outbox)
    }

    fn idempotency_len(&self) -> Result<usize, StoreError> {
        self.count(TreeId::Idempotency)
    }

    fn artifact(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        KvRead::get(self, TreeId::Artifacts, key.as_bytes())
    }

    fn put_artifact(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put(TreeId::Artifacts, key.as_bytes(), bytes)
    }

    fn delete_artifact(&self, key: &str) -> Result<(), StoreError> {
        self.delete(TreeId::Artifacts, key.as_bytes())
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        KvRead::get(self, TreeId::Settings, key.as_bytes())
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        kv::settings(self, prefix)
    }

    fn write_settings(
        &self,
        put: &[(String, Vec<u8>)],
        delete: &[String],
    ) -> Result<(), StoreError> {
        self.transact(|tx| kv::apply_settings(tx, put, delete))
    }

    fn append_audit(&self, entry: &[u8]) -> Result<u64, StoreError> {
        self.transact(|tx| kv::apply_audit(tx, entry))
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        kv::audit_after(self, after, limit)
    }

    fn schedule_timers(&self, record: &RecordId, timers: &[Timer]) -> Result<(), StoreError> {
        self.transact(|tx| kv::apply_schedule(tx, record, timers))
    }

    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<Timer>, StoreError> {
        kv::due_timers(self, now, limit)
    }

    fn fire_timer(
        &self,
        timer: &Timer,
        record: &Record,
        payload: serde_json::Value,
        ledger: &serde_json::Value,
    ) -> Result<Option<Event>, StoreError> {
        self.transact(|tx| kv::apply_fire(tx, timer, record, &payload, ledger))
    }

    fn generation(&self, area: &str) -> Result<u64, StoreError> {
        kv::generation(self, area)
    }

    fn timer_count(&self) -> Result<usize, StoreError> {
        self.count(TreeId::Timers)
    }

    fn lease(&self, name: &str) -> Result<bool, StoreError> {
        let asked = Instant::now();
        let held = |leases: &std::collections::HashMap<String, Instant>| {
            leases
                .get(name)
                .is_some_and(|until| until.saturating_duration_since(asked) > self.lease_ttl / 2)
        };
        if held(&self.leases.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(true);
        }
        let ttl_ms = i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX);
        let client = self.client()?;
        let taken = self
            .block(async {
                let statement = client.prepare_cached(TAKE_LEASE).await?;
                client
                    .query_opt(&statement, &[&name, &self.node, &ttl_ms])
                    .await
            })
            .map_err(database)?
            .is_some();
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if taken {
            // Measured from before the request: the database's expiry is no earlier.
            if leases
                .insert(name.to_owned(), asked + self.lease_ttl)
                .is_none()
            {
                tracing::info!(lease = name, node = %self.node, "took the lease");
            }
        } else if leases.remove(name).is_some() {
            tracing::warn!(lease = name, node = %self.node, "lost the lease to another node");
        }
        Ok(taken)
    }

    fn release_leases(&self) -> Result<(), StoreError> {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let client = self.client()?;
        self.block(client.execute(RELEASE_LEASES, &[&self.node]))
            .map_err(database)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every transaction is durable when its commit returns (synchronous_commit).
        Ok(())
    }
}

/// How long the store waits for a connection from its pool or for a new one to open.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_before_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn tree_ids_are_the_layout_positions() {
        for (position, tree) in TreeId::ALL.iter().enumerate() {
            assert_eq!(usize::try_from(tree_id(*tree)).ok(), Some(position));
        }
    }
}
