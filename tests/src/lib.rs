//! Test support for the end-to-end suite: start a real usm server on a loopback port over a sled
//! store in a temporary directory, talk to it over HTTP, stop and restart it on the same data.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
};

use actix_web::dev::ServerHandle;
use anyhow::Context as _;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use usm_server::{Config, Server};

/// The admin secret every test server starts with.
pub const ADMIN_TOKEN: &str = "usm_test_admin_0123456789abcdef0123456789";

fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {ADMIN_TOKEN}")
        .parse()
        .expect("a valid header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a client")
}

/// The guest components built from `plugins/` by this crate's build script.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(relative), |root| root.join(relative))
}

/// Writes a module directory: `module.toml` with `manifest`, plus each `(name, source)` file
/// copied in.
pub fn module_dir(dir: &Path, manifest: &str, files: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("module.toml"), manifest)?;
    for (name, source) in files {
        std::fs::copy(source, dir.join(name)).with_context(|| format!("copying {source}"))?;
    }
    Ok(dir.to_path_buf())
}

/// The `/metrics` text of the server at `base`, read with the admin token.
pub async fn metrics(base: &str) -> anyhow::Result<String> {
    Ok(reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The values of the metric lines starting with `series` (a name, or a name with labels).
pub fn metric(text: &str, series: &str) -> Vec<f64> {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Waits until every outbox worker of the server at `base` (after-steps, SLA, automations) has
/// finished every event, including the events their own effects wrote: then nothing that was
/// caused by the writes so far is still to happen (timers that come due later aside).
pub async fn settle(base: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = metrics(base).await?;
        let head = metric(&text, "usm_outbox_head ");
        let consumed = metric(&text, "usm_outbox_consumed{");
        anyhow::ensure!(
            head.len() == 1 && consumed.len() == 7,
            "no outbox positions in /metrics: {text}"
        );
        if consumed.iter().all(|&c| c == head[0]) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the outbox workers did not catch up: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A usm server running in a thread of this process, listening on 127.0.0.1.
pub struct TestServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    handle: ServerHandle,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// The server's PostgreSQL database, when the tests run on PostgreSQL (see [`STORE_VARIABLE`]).
    database: Option<Arc<usm_store_postgres::ScratchDatabase>>,
    client: reqwest::Client,
}

/// `USM_E2E_STORE=postgres` runs every test server on a PostgreSQL database of its own (on the
/// server `TEST_POSTGRES_URL` names) instead of the embedded store.
pub const STORE_VARIABLE: &str = "USM_E2E_STORE";

/// A database for a new test server when the tests run on PostgreSQL.
fn test_database() -> anyhow::Result<Option<Arc<usm_store_postgres::ScratchDatabase>>> {
    match std::env::var(STORE_VARIABLE).as_deref() {
        Err(_) | Ok("sled") => Ok(None),
        Ok("postgres") => Ok(Some(Arc::new(
            usm_store_postgres::ScratchDatabase::create().map_err(anyhow::Error::msg)?,
        ))),
        Ok(other) => anyhow::bail!("{STORE_VARIABLE}={other}: expected sled or postgres"),
    }
}

/// A response: status, headers and body parsed as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as JSON.
    pub body: Value,
}

impl Reply {
    /// Reads a response: its status, headers and body (`Null` when empty or not JSON).
    pub async fn read(response: reqwest::Response) -> reqwest::Result<Self> {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        Ok(Self {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// A header as a string, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The record version from the `ETag` header.
    pub fn etag_version(&self) -> Option<u64> {
        self.header("etag")?.trim_matches('"').parse().ok()
    }
}

impl TestServer {
    /// Starts a server on a fresh temporary data directory.
    pub fn start() -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_path_buf();
        let mut server = Self::start_on(dir, test_database()?, |_| {})?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts a server on a fresh temporary directory with a tweaked configuration.
    pub fn start_with(tweak: impl FnOnce(&mut Config) + Send + 'static) -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_path_buf();
        let mut server = Self::start_on(dir, test_database()?, tweak)?;
        server._temp = Some(temp);
        Ok(server)
    }

    fn start_on(
        data_dir: PathBuf,
        database: Option<Arc<usm_store_postgres::ScratchDatabase>>,
        tweak: impl FnOnce(&mut Config) + Send + 'static,
    ) -> anyhow::Result<Self> {
        // One compilation of each component for every server of the test process.
        static ARTIFACTS: std::sync::OnceLock<usm_plugin_host::SharedArtifacts> =
            std::sync::OnceLock::new();
        let mut config = Config {
            shared_artifacts: Some(ARTIFACTS.get_or_init(Default::default).clone()),
            addr: "127.0.0.1:0".into(),
            data_dir: data_dir.clone(),
            workers: Some(2),
            shutdown_timeout_secs: 5,
            // Tests of the core start bare; tests of the frameworks turn the bundle on.
            bundled_modules: false,
            default_agreements: false,
            admin_token: Some(ADMIN_TOKEN.into()),
            rate_limit_per_second: 0,
            store_url: database.as_ref().map(|d| d.url.clone()),
            ..Config::default()
        };
        tweak(&mut config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("usm-test-server".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = match Server::bind(&config) {
                        Ok(server) => server,
                        Err(error) => {
                            let message = format!("{error:#}");
                            let _ = ready_tx.send(Err(error));
                            anyhow::bail!(message);
                        }
                    };
                    let _ = ready_tx.send(Ok((server.addr(), server.handle())));
                    server.run().await
                })
            })?;
        let (addr, handle) = ready_rx.recv().context("the server thread died")??;
        Ok(Self {
            base: format!("http://{addr}"),
            handle,
            thread: Some(thread),
            data_dir,
            _temp: None,
            database,
            client: admin_client(),
        })
    }

    /// Stops the server gracefully and starts a new one on the same data directory.
    pub async fn restart(self) -> anyhow::Result<Self> {
        self.restart_with(|_| {}).await
    }

    /// Stops the server gracefully and starts a new one on the same data directory with a
    /// tweaked configuration.
    pub async fn restart_with(
        mut self,
        tweak: impl FnOnce(&mut Config) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let temp = self._temp.take();
        let dir = self.data_dir.clone();
        let database = self.database.clone();
        self.stop().await?;
        let mut server =
            tokio::task::spawn_blocking(move || Self::start_on(dir, database, tweak)).await??;
        server._temp = temp;
        Ok(server)
    }

    /// Stops the server gracefully: in-flight requests finish, the store is flushed and closed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
        }
        Ok(())
    }

    /// Waits until the outbox workers have caught up (see [`settle`]).
    pub async fn settle(&self) -> anyhow::Result<()> {
        settle(&self.base).await
    }

    /// A shared HTTP client that sends the admin token.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Opens the store of a stopped server: its sled data directory, or its PostgreSQL database
    /// when the tests run on PostgreSQL.
    pub fn open_store(&self) -> anyhow::Result<Box<dyn usm_store::Store>> {
        let config = usm_store::StoreConfig::default();
        Ok(match &self.database {
            Some(database) => Box::new(usm_store_postgres::PostgresStore::connect(
                &usm_store_postgres::PostgresSettings::new(database.url.as_str()),
                config,
            )?),
            None => Box::new(usm_store::SledStore::open(&self.data_dir, config)?),
        })
    }

    /// Sends a request as the holder of `token` (no token when `None`).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        Ok(Reply::read(response).await?)
    }

    /// Creates a token and returns its secret.
    pub async fn token(
        &self,
        name: &str,
        roles: &[&str],
        domains: Option<&[&str]>,
    ) -> anyhow::Result<String> {
        let mut body = serde_json::json!({"name": name, "roles": roles});
        if let Some(domains) = domains {
            body["domains"] = serde_json::json!(domains);
        }
        let reply = self.post("/api/v1/tokens", &body).await?;
        anyhow::ensure!(
            reply.status == StatusCode::CREATED,
            "token creation failed: {}",
            reply.body
        );
        reply.body["token"]
            .as_str()
            .map(str::to_owned)
            .context("no secret in the answer")
    }

    /// Adds a person (`person` is the body of `POST /api/v1/people`) and returns the secret of
    /// a new token of `role` acting as them; fails the test when either is refused.
    pub async fn person_with_token(&self, person: Value, role: &str) -> String {
        let id = person["id"].as_str().unwrap_or_default().to_owned();
        let made = self
            .post("/api/v1/people", &person)
            .await
            .expect("the server answers");
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        let token = self
            .post(
                "/api/v1/tokens",
                &serde_json::json!({"name": format!("{id}-token"), "roles": [role], "person": id}),
            )
            .await
            .expect("the server answers");
        assert_eq!(token.status, StatusCode::CREATED, "{}", token.body);
        token.body["token"].as_str().unwrap_or_default().to_owned()
    }

    /// Sends a request as the holder of `token`, failing the test on a transport error.
    pub async fn act(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_as(Some(token), method, path, body.as_ref())
            .await
            .expect("the request reaches the server")
    }

    /// Sends a request with an optional JSON body and extra headers.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        Ok(Reply::read(response).await?)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.call(Method::GET, path, None, &[]).await
    }

    /// POST `body` to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    /// Uploads a module bundle (`.tar.gz`) to `POST /api/v1/modules`.
    pub async fn upload_module(&self, bundle: Vec<u8>) -> anyhow::Result<Reply> {
        let response = self
            .client
            .post(format!("{}/api/v1/modules", self.base))
            .header("content-type", "application/gzip")
            .body(bundle)
            .send()
            .await?;
        Ok(Reply::read(response).await?)
    }

    /// PATCH `path` with `body`.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.call(Method::PATCH, path, Some(body), &[]).await
    }

    /// Creates a record and returns it, failing unless the server answers 201.
    pub async fn create(&self, body: Value) -> anyhow::Result<Value> {
        let reply = self.post("/api/v1/records", &body).await?;
        anyhow::ensure!(
            reply.status == StatusCode::CREATED,
            "create failed: {} {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    }

    /// Moves a record to `to`, failing unless the server answers 200.
    pub async fn transition(&self, id: &str, to: &str) -> anyhow::Result<Value> {
        let reply = self
            .post(
                &format!("/api/v1/records/{id}/transitions"),
                &serde_json::json!({"to": to}),
            )
            .await?;
        anyhow::ensure!(
            reply.status == StatusCode::OK,
            "transition failed: {} {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    }

    /// Every record, following cursors.
    pub async fn list_all(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/records?limit=7&{query}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let reply = self.get(&path).await?;
            anyhow::ensure!(
                reply.status == StatusCode::OK,
                "list failed: {}",
                reply.body
            );
            records.extend(
                reply.body["records"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            match reply.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(records),
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Not stopped explicitly: stop without waiting so the test thread is not blocked.
            drop(self.handle.stop(false));
        }
    }
}

/// A usm server running as its own process (the real binary), for crash tests.
pub struct ServerProcess {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl ServerProcess {
    /// Starts `<binary> serve --config <config>` on 127.0.0.1 with an OS-chosen port and waits
    /// until it listens. Tests pass `env!("CARGO_BIN_EXE_usm-under-test")`.
    pub fn spawn(binary: &str, config: &Path) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(binary)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--config",
            ])
            .arg(config)
            // The test process's own USM_* variables (USM_CRASH_CYCLES, …) are not settings of
            // the server: `deny_unknown_fields` would refuse them.
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| !k.starts_with("USM_")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if !sent && entry["fields"]["message"] == "usm serving" {
                    sent = tx
                        .send(entry["fields"]["addr"].as_str().map(str::to_owned))
                        .is_ok();
                }
                kept.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(entry);
            }
            let _ = tx.send(None);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Some(addr)) => Ok(Self {
                base: format!("http://{addr}"),
                child,
                log,
            }),
            _ => {
                let _ = child.kill();
                let status = child.wait()?;
                anyhow::bail!("usm did not start listening ({status})")
            }
        }
    }

    /// The JSON log lines the process wrote so far.
    pub fn log(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The process id, e.g. to send it a signal.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own (after a signal), at most `within`.
    pub fn wait_exit(
        mut self,
        within: std::time::Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(self.child.wait());
        });
        Ok(rx
            .recv_timeout(within)
            .context("the server did not exit")??)
    }

    /// Kills the process with SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
