//! Overload and host stalls, with real WASM plugins over a real sled store: a host stall longer
//! than every in-flight step's budget fails no write and suspends no step, while a step that
//! really loops is still stopped by its CPU budget and suspended.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use usm_engine::{Engine, EngineConfig, Module, NewRecord, Pipelines, Runtimes, StepError};
use usm_model::{
    Actor, Approval, Catalog, CatalogAdditions, Domain, Event, HistoryEntry, Kind, LinkRel, Record,
    RecordId, Role, core_kinds,
};
use usm_plugin_host::{PluginHost, PluginLimits};
use usm_store::{
    Committed, ListQuery, Page, SledStore, Store, StoreConfig, StoreError, Timer, Write,
};
use usm_tests::{guests, module_dir};

/// A store whose record reads can be made to hang for a while, as a host stall would: a long
/// flush, memory pressure, a descheduled VM.
struct StallingStore {
    inner: Arc<dyn Store>,
    stalled_until: Mutex<Option<Instant>>,
    /// Reads that waited out a stall.
    stalled_reads: AtomicUsize,
    /// Listings served by the store.
    lists: AtomicUsize,
}

impl StallingStore {
    fn stall(&self, for_how_long: Duration) {
        *self.stalled_until.lock().unwrap() = Some(Instant::now() + for_how_long);
    }

    #[allow(clippy::disallowed_methods)] // the stall is the point: a thread held off its work
    fn wait_out_a_stall(&self) {
        let until = *self.stalled_until.lock().unwrap();
        if let Some(until) = until {
            let now = Instant::now();
            if now < until {
                self.stalled_reads.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(until - now);
            }
        }
    }
}

impl Store for StallingStore {
    fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.wait_out_a_stall();
        self.inner.get(id)
    }
    fn commit(&self, write: Write) -> Result<Committed, StoreError> {
        self.inner.commit(write)
    }
    fn kind_writes(&self, kind: &Kind) -> u64 {
        self.inner.kind_writes(kind)
    }
    fn history(
        &self,
        id: &RecordId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.inner.history(id, after, limit)
    }
    fn approvals(&self, id: &RecordId) -> Result<Vec<Approval>, StoreError> {
        self.inner.approvals(id)
    }
    fn backlinks(&self, id: &RecordId) -> Result<Vec<(LinkRel, RecordId)>, StoreError> {
        self.inner.backlinks(id)
    }
    fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.wait_out_a_stall();
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(query)
    }
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.inner.events_after(after, limit)
    }
    fn notify(
        &self,
        record: &Record,
        actor: &str,
        depth: u32,
        payload: serde_json::Value,
    ) -> Result<Event, StoreError> {
        self.inner.notify(record, actor, depth, payload)
    }
    fn cursor(&self, consumer: &str) -> Result<u64, StoreError> {
        self.inner.cursor(consumer)
    }
    fn set_cursor(&self, consumer: &str, position: u64) -> Result<(), StoreError> {
        self.inner.set_cursor(consumer, position)
    }
    fn prune(
        &self,
        consumers: &[String],
        now: usm_model::Timestamp,
    ) -> Result<usm_store::Pruned, StoreError> {
        self.inner.prune(consumers, now)
    }
    fn outbox_len(&self) -> Result<usize, StoreError> {
        self.inner.outbox_len()
    }
    fn idempotency_len(&self) -> Result<usize, StoreError> {
        self.inner.idempotency_len()
    }
    fn artifact(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.artifact(key)
    }
    fn put_artifact(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.put_artifact(key, bytes)
    }
    fn delete_artifact(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete_artifact(key)
    }
    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.setting(key)
    }
    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.settings(prefix)
    }
    fn write_settings(
        &self,
        put: &[(String, Vec<u8>)],
        delete: &[String],
    ) -> Result<(), StoreError> {
        self.inner.write_settings(put, delete)
    }
    fn append_audit(&self, entry: &[u8]) -> Result<u64, StoreError> {
        self.inner.append_audit(entry)
    }
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.audit_after(after, limit)
    }
    fn schedule_timers(&self, record: &RecordId, timers: &[Timer]) -> Result<(), StoreError> {
        self.inner.schedule_timers(record, timers)
    }
    fn due_timers(
        &self,
        now: usm_model::Timestamp,
        limit: usize,
    ) -> Result<Vec<Timer>, StoreError> {
        self.inner.due_timers(now, limit)
    }
    fn fire_timer(
        &self,
        timer: &Timer,
        record: &Record,
        payload: serde_json::Value,
        ledger: &serde_json::Value,
    ) -> Result<Option<Event>, StoreError> {
        self.inner.fire_timer(timer, record, payload, ledger)
    }
    fn generation(&self, area: &str) -> Result<u64, StoreError> {
        self.inner.generation(area)
    }
    fn timer_count(&self) -> Result<usize, StoreError> {
        self.inner.timer_count()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

const READER: &str = "id = \"reader\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
    capabilities = [\"records:read\"]\n\
    [[steps]]\nname = \"read\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nwasm = \"reader.wasm\"\n";

const LOOPER: &str = "id = \"looper\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
    [[steps]]\nname = \"spin\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nwasm = \"looper.wasm\"\n";

/// An engine over a stalling sled store whose `it` pipeline runs `manifest`'s WASM step.
fn engine_with_step(
    dir: &std::path::Path,
    manifest: &str,
    file: (&str, &str),
) -> (Arc<Engine>, Arc<StallingStore>) {
    let sled: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.join("data"), StoreConfig::default()).unwrap());
    let store = Arc::new(StallingStore {
        inner: sled,
        stalled_until: Mutex::new(None),
        stalled_reads: AtomicUsize::new(0),
        lists: AtomicUsize::new(0),
    });
    let shared: Arc<dyn Store> = store.clone();
    // The reader step's fields, which the test declares as a module would.
    let lookup = CatalogAdditions {
        kinds: Vec::new(),
        fields: vec![(
            Kind::new("incident").unwrap(),
            json!({"lookup": {"type": "string"}, "seen": {}, "incidents": {}, "now": {}})
                .as_object()
                .unwrap()
                .clone(),
        )],
        states: Vec::new(),
        policies: Vec::new(),
    };
    let catalog = Catalog::compose(core_kinds(), [("lookup", &lookup)]).unwrap();
    let engine = Arc::new(Engine::new(
        Arc::clone(&shared),
        Arc::new(catalog),
        EngineConfig::default(),
    ));
    let runtimes = Runtimes {
        wasm: Some(Arc::new(
            PluginHost::new(PluginLimits::default(), Some(shared)).unwrap(),
        )),
        rhai: None,
        manifest_checks: Vec::new(),
    };
    let path = module_dir(&dir.join("module"), manifest, &[file]).unwrap();
    let module = Module::load_dir(&path, &runtimes, &["records:read".to_owned()]).unwrap();
    let it = Domain::new("it").unwrap();
    engine.set_pipelines(Pipelines::compose(
        module.steps.iter().map(|step| (&it, step)),
    ));
    (engine, store)
}

fn incident(lookup: &str) -> NewRecord {
    serde_json::from_value(
        json!({"kind": "incident", "title": "Printer jam", "fields": {"lookup": lookup}}),
    )
    .unwrap()
}

#[test]
#[allow(clippy::disallowed_methods)] // stalls are spaced in time while writers run
fn a_host_stall_longer_than_the_budget_fails_no_write_and_suspends_no_step() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) =
        engine_with_step(dir.path(), READER, ("reader.wasm", guests::GUEST_READER));
    let agent = Actor::new("ann", [Role::Agent]);
    engine.create(&agent, incident("INC-1"), None).unwrap();

    let done = AtomicBool::new(false);
    let created = AtomicUsize::new(0);
    let failures: Mutex<Vec<usm_engine::EngineError>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                // Each writer keeps creating until the stalls are over, and at most 500 times.
                for _ in 0..500 {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    match engine.create(&agent, incident("INC-1"), None) {
                        Ok(_) => created.fetch_add(1, Ordering::SeqCst),
                        Err(error) => {
                            failures.lock().unwrap().push(error);
                            0
                        }
                    };
                }
            });
        }
        while created.load(Ordering::SeqCst) < 16 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Three stalls of three times the steps' 50 ms budget, with writes in flight.
        for _ in 0..3 {
            store.stall(Duration::from_millis(150));
            std::thread::sleep(Duration::from_millis(250));
        }
        done.store(true, Ordering::SeqCst);
    });

    assert!(
        store.stalled_reads.load(Ordering::SeqCst) >= 3,
        "the stalls hit steps in flight"
    );
    // On a machine starved far past its cores a call may run into the wall-clock backstop;
    // that is answered as overload (503), never as the step's failure.
    let failures = failures.into_inner().unwrap();
    assert!(
        failures
            .iter()
            .all(|e| e.code() == usm_model::ErrorCode::Overloaded),
        "{failures:?}"
    );
    assert!(created.load(Ordering::SeqCst) > failures.len() * 10);
    let pipelines = engine.pipelines().describe();
    let breaker = &pipelines[0].steps[0].breaker;
    assert_eq!(breaker.suspensions, 0, "{breaker:?}");
    assert_eq!(breaker.failures.get("timeout"), None, "{breaker:?}");
}

#[test]
fn a_looping_step_is_still_stopped_by_its_cpu_budget_and_suspended() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = engine_with_step(dir.path(), LOOPER, ("looper.wasm", guests::GUEST_LOOPER));
    let agent = Actor::new("ann", [Role::Agent]);
    for _ in 0..5 {
        let error = engine.create(&agent, incident("-"), None).unwrap_err();
        assert!(
            matches!(
                error,
                usm_engine::EngineError::StepFailed {
                    error: StepError::Timeout(50),
                    ..
                }
            ),
            "{error}"
        );
    }
    let error = engine.create(&agent, incident("-"), None).unwrap_err();
    assert!(
        matches!(
            error,
            usm_engine::EngineError::StepFailed {
                error: StepError::Suspended(_),
                ..
            }
        ),
        "{error}"
    );
    let pipelines = engine.pipelines().describe();
    let breaker = &pipelines[0].steps[0].breaker;
    assert_eq!(breaker.suspensions, 1);
    assert!(breaker.suspended_for_secs.is_some());
    assert_eq!(breaker.failures.get("timeout"), Some(&5));
}

#[test]
fn a_query_of_one_kind_is_answered_from_cache_until_that_kind_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) =
        engine_with_step(dir.path(), READER, ("reader.wasm", guests::GUEST_READER));
    let agent = Actor::new("ann", [Role::Agent]);
    engine.create(&agent, incident("-"), None).unwrap();
    let pipelines = engine.pipelines();
    let step = &pipelines.steps(
        &Domain::new("it").unwrap(),
        usm_model::Process::Recover,
        usm_engine::Hook::Create,
        usm_engine::Phase::Before,
    )[0];
    let record =
        json!({"id": null, "kind": "incident", "domain": "it", "fields": {"lookup": "INC-1"}});
    let run = || {
        let output = step
            .step
            .run(&usm_engine::StepInput {
                hook: usm_engine::Hook::Create,
                phase: usm_engine::Phase::Before,
                record: &record,
                previous: None,
                actor: &agent,
                context: &serde_json::Value::Null,
            })
            .unwrap();
        let usm_engine::StepOutput::Patch(patch) = output else {
            panic!("the reader patches")
        };
        patch["fields"]["incidents"].as_u64().unwrap()
    };
    let before = store.lists.load(Ordering::SeqCst);
    assert_eq!(run(), 1);
    assert_eq!(run(), 1);
    assert_eq!(
        store.lists.load(Ordering::SeqCst),
        before + 1,
        "the second query was answered from the cache"
    );
    engine.create(&agent, incident("-"), None).unwrap();
    let before = store.lists.load(Ordering::SeqCst);
    assert_eq!(run(), 2, "a write of the kind refreshes the answer");
    assert_eq!(store.lists.load(Ordering::SeqCst), before + 1);
}

/// A server whose `hr` incidents run a step that spins for `timeout_ms` of CPU time.
fn server_with_looper(
    timeout_ms: u64,
    tweak: impl FnOnce(&mut usm_server::Config) + Send + 'static,
) -> (usm_tests::TestServer, tempfile::TempDir) {
    let modules = tempfile::tempdir().unwrap();
    let manifest = format!("{LOOPER}timeout_ms = {timeout_ms}\n")
        .replace("id = \"looper\"", "id = \"runaway\"");
    let looper = module_dir(
        &modules.path().join("runaway"),
        &manifest,
        &[("looper.wasm", guests::GUEST_LOOPER)],
    )
    .unwrap();
    let server = usm_tests::TestServer::start_with(move |config| {
        config.modules = vec![usm_server::ModuleConfig {
            path: looper,
            domains: vec!["hr".into()],
            grant: vec![],
        }];
        tweak(config);
    })
    .unwrap();
    (server, modules)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_step_shows_in_the_pipelines_and_the_metrics() {
    let (server, _modules) = server_with_looper(50, |config| config.breaker_trip_after = 2);
    let body = json!({"kind": "incident", "domain": "hr", "title": "spin"});
    for _ in 0..3 {
        let reply = server.post("/api/v1/records", &body).await.unwrap();
        assert_eq!(reply.status, reqwest::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.body["code"], "step_failed");
    }
    let pipelines = server.get("/api/v1/pipelines").await.unwrap().body;
    let step = pipelines["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["domain"] == "hr" && p["hook"] == "create" && p["phase"] == "before")
        .and_then(|p| {
            p["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["module"] == "runaway")
        })
        .unwrap()
        .clone();
    assert_eq!(step["breaker"]["suspensions"], 1, "{step}");
    assert!(step["breaker"]["suspended_for_secs"].as_u64().unwrap() > 0);
    assert_eq!(step["breaker"]["failures"]["timeout"], 2);
    assert_eq!(step["breaker"]["failures"]["suspended"], 1);

    let metrics = server
        .client()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "usm_step_suspended{module=\"runaway\",step=\"spin\"} 1",
        "usm_step_suspensions_total{module=\"runaway\",step=\"spin\"} 1",
        "usm_step_failures_total{module=\"runaway\",step=\"spin\",kind=\"timeout\"} 2",
        "usm_pipeline_writes{state=\"waiting\"} 0",
        // Two calls ran (and timed out); the suspended third never started.
        "usm_step_duration_seconds_count{module=\"runaway\",step=\"spin\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_beyond_the_admission_queue_get_503_with_retry_after() {
    // One turn, no queue, and a step that holds its turn for a second of CPU time: of eight
    // writes sent together one runs and the others are turned away before their pipeline.
    let (server, _modules) = server_with_looper(1000, |config| {
        config.pipeline_concurrency = Some(1);
        config.pipeline_queue = 0;
        config.breaker_trip_after = 0;
    });
    let body = json!({"kind": "incident", "domain": "hr", "title": "spin"});
    let replies =
        futures::future::join_all((0..8).map(|_| server.post("/api/v1/records", &body))).await;
    let mut overloaded = 0;
    for reply in replies {
        let reply = reply.unwrap();
        match reply.status.as_u16() {
            503 => {
                overloaded += 1;
                assert_eq!(reply.body["code"], "overloaded", "{}", reply.body);
                assert_eq!(reply.header("retry-after"), Some("1"));
                assert_eq!(
                    reply.header("content-type"),
                    Some("application/problem+json")
                );
            }
            500 => assert_eq!(reply.body["code"], "step_failed", "{}", reply.body),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(overloaded >= 1, "no write was turned away");
    assert!(
        server.list_all("domain=hr").await.unwrap().is_empty(),
        "nothing was written"
    );
    // Records whose pipeline has no steps do not wait for a turn.
    let task = json!({"kind": "task", "domain": "hr", "title": "no steps"});
    assert_eq!(
        server.post("/api/v1/records", &task).await.unwrap().status,
        reqwest::StatusCode::CREATED
    );
}
