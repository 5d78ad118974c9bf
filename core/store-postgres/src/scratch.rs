//! Databases of their own for tests, on the server `TEST_POSTGRES_URL` names (`.ci/postgres
//! start` runs one and prints the variable).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::NoTls;

/// The variable naming the test server (a URL of a database the tests may create databases
/// from, such as `postgres`).
pub const TEST_URL_VARIABLE: &str = "TEST_POSTGRES_URL";

/// A new, empty database, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    /// The database's URL.
    pub url: String,
}

/// Runs `work` against the server at `url` on a thread of its own, so that it works from async
/// tests and from `Drop` alike.
fn on_server(url: &str, work: String) -> Result<(), String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, NoTls)
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            tokio::spawn(connection);
            client
                .batch_execute(&work)
                .await
                .map_err(|e| format!("{work}: {e}"))
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the database thread panicked".into()))
}

impl ScratchDatabase {
    /// Creates a database on the test server; fails when `TEST_POSTGRES_URL` is not set.
    pub fn create() -> Result<Self, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin_url = std::env::var(TEST_URL_VARIABLE).map_err(|_| {
            format!(
                "{TEST_URL_VARIABLE} is not set: the PostgreSQL tests need a server \
                 (`eval \"$(.ci/postgres start)\"` starts one, as .ci/run does)"
            )
        })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "usm_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        on_server(&admin_url, format!("CREATE DATABASE {name}"))?;
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = match query {
            Some(query) => format!("{server}/{name}?{query}"),
            None => format!("{server}/{name}"),
        };
        Ok(Self {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = on_server(&self.admin_url, drop) {
            tracing::warn!(%error, "cannot drop a test database");
        }
    }
}
