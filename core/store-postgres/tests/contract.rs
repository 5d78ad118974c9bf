//! The store contract against PostgreSQL (a database of its own per store, on the server
//! `TEST_POSTGRES_URL` names), plus what only a database shows: schema versions and nodes
//! sharing one database.

#![allow(clippy::unwrap_used)] // helpers of tests panic on failure, like the tests

#[path = "../../store/tests/contract/mod.rs"]
#[macro_use]
mod contract;

use std::sync::Mutex;

use contract::{Backend, create, entry, transition};
use usm_model::Action;
use usm_store::{Expected, Store, StoreConfig, StoreError, Write};
use usm_store_postgres::{PostgresSettings, PostgresStore, ScratchDatabase};

/// Opens each store on a new database; the databases are dropped with the backend.
#[derive(Default)]
struct Postgres(Mutex<Vec<ScratchDatabase>>);

impl Postgres {
    fn database(&self) -> String {
        let database = ScratchDatabase::create().unwrap();
        let url = database.url.clone();
        self.0.lock().unwrap().push(database);
        url
    }
}

impl Backend for Postgres {
    fn open(&self, config: StoreConfig) -> Box<dyn Store> {
        let settings = PostgresSettings::new(self.database());
        Box::new(PostgresStore::connect(&settings, config).unwrap())
    }
}

mod postgres {
    store_contract!(super::Postgres::default());
}

fn open(url: &str) -> Result<PostgresStore, StoreError> {
    PostgresStore::connect(&PostgresSettings::new(url), StoreConfig::default())
}

/// Two stores on one database are two nodes: each sees the other's writes, numbers never
/// collide, and a stale version is refused whichever node wrote last.
#[test]
fn nodes_on_one_database_share_records_numbers_and_versions() {
    let database = ScratchDatabase::create().unwrap();
    let (a, b) = (open(&database.url).unwrap(), open(&database.url).unwrap());
    let ids: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = [&a, &b]
            .into_iter()
            .map(|node| {
                scope.spawn(move || {
                    (0..20)
                        .map(|_| create(node, "it", "x").id)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 40, "ids are unique across nodes: {ids:?}");

    let record = create(&a, "it", "shared");
    let moved = transition(&b, b.get(&record.id).unwrap().unwrap(), "in_progress");
    assert_eq!(a.get(&record.id).unwrap().unwrap(), moved);
    let stale = a.commit(Write {
        record,
        history: entry(Action::Transition),
        expected: Expected::Version(1),
    });
    assert!(
        matches!(stale, Err(StoreError::VersionMismatch { current: 2, .. })),
        "node a's write of version 1 is refused: {stale:?}"
    );
    assert_eq!(b.events_after(0, 100).unwrap().len(), 42);
}

/// Data written by a newer usm (a schema version this build does not know) is refused before
/// anything is changed; the same database opens again once that version is gone.
#[test]
fn a_newer_schema_is_refused() {
    let database = ScratchDatabase::create().unwrap();
    let record = create(&open(&database.url).unwrap(), "it", "kept");
    psql(
        &database.url,
        "INSERT INTO usm_schema_history (version, name, applied_on, checksum) \
                         VALUES (999, 'from_the_future', '2030-01-01', '0')",
    );
    match open(&database.url) {
        Err(StoreError::Format {
            found: 999,
            expected,
        }) => assert!(expected >= 1),
        other => panic!("a newer schema must be refused: {:?}", other.err()),
    }
    psql(
        &database.url,
        "DELETE FROM usm_schema_history WHERE version = 999",
    );
    assert_eq!(
        open(&database.url)
            .unwrap()
            .get(&record.id)
            .unwrap()
            .unwrap(),
        record
    );
}

/// Runs SQL on the database with psql, the way an operator would; returns what it printed.
fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            url,
            "--quiet",
            "--no-align",
            "--tuples-only",
            "--set",
            "ON_ERROR_STOP=1",
            "--command",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A database that cannot be reached fails the open with the database's reason, in time.
#[test]
fn an_unreachable_database_is_an_error_not_a_hang() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let settings = PostgresSettings {
        connect_timeout: std::time::Duration::from_secs(2),
        ..PostgresSettings::new(format!("postgres://usm@127.0.0.1:{port}/usm"))
    };
    let error = PostgresStore::connect(&settings, StoreConfig::default())
        .err()
        .unwrap();
    assert!(matches!(error, StoreError::Database(_)), "{error}");
}

/// One node at a time holds a lease; it passes on when its holder gives it up, and when its
/// holder stops renewing it, once it expires.
#[test]
fn a_lease_has_one_holder_and_passes_on_when_released_or_expired() {
    let database = ScratchDatabase::create().unwrap();
    let node = |ttl_ms| {
        let settings = PostgresSettings {
            lease_ttl: std::time::Duration::from_millis(ttl_ms),
            ..PostgresSettings::new(database.url.as_str())
        };
        PostgresStore::connect(&settings, StoreConfig::default()).unwrap()
    };
    let (a, b, c) = (node(60_000), node(60_000), node(60_000));
    assert!(a.lease("after-steps").unwrap());
    assert!(!b.lease("after-steps").unwrap());
    assert!(b.lease("sla").unwrap(), "leases are per name");
    assert!(a.lease("after-steps").unwrap(), "the holder keeps it");
    a.release_leases().unwrap();
    assert!(
        b.lease("after-steps").unwrap(),
        "released: the next node takes it"
    );
    assert!(!c.lease("after-steps").unwrap());

    // A holder that stops renewing (here: a short lease, never asked for again) loses it to
    // the next node that asks once it has expired; until then nobody else gets it.
    let short = node(300);
    assert!(short.lease("webhooks").unwrap());
    assert!(!c.lease("webhooks").unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.lease("webhooks").unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired lease was never taken over"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
    assert!(
        !short.lease("webhooks").unwrap(),
        "the old holder knows it lost it"
    );
}

/// With `sslmode=require` the connection is TLS and the server's certificate is checked: against
/// the CA file when one is given (here the test cluster's own CA), else against the public roots,
/// which do not know the test CA, so the connection is refused.
#[test]
fn tls_is_used_when_required_and_the_certificate_is_checked() {
    let ca = std::env::var("TEST_POSTGRES_CA")
        .expect("TEST_POSTGRES_CA names the test cluster's CA (.ci/postgres start)");
    let database = ScratchDatabase::create().unwrap();
    let url = format!("{}?sslmode=require", database.url);
    let settings = PostgresSettings {
        ca_file: Some(ca.into()),
        ..PostgresSettings::new(url.as_str())
    };
    let store = PostgresStore::connect(&settings, StoreConfig::default()).unwrap();
    create(&store, "it", "over TLS");
    let name = database.url.rsplit('/').next().unwrap();
    let encrypted = psql(
        &database.url,
        &format!(
            "SELECT bool_and(ssl) AND count(*) > 0 FROM pg_stat_ssl JOIN pg_stat_activity \
             USING (pid) WHERE datname = '{name}' AND application_name = 'usm'"
        ),
    );
    assert_eq!(encrypted, "t", "usm's connections are encrypted");
    drop(store);

    let unchecked = PostgresStore::connect(
        &PostgresSettings {
            connect_timeout: std::time::Duration::from_secs(5),
            ..PostgresSettings::new(url.as_str())
        },
        StoreConfig::default(),
    );
    assert!(
        matches!(unchecked, Err(StoreError::Database(_))),
        "a certificate from an unknown CA is refused"
    );
}
