//! Pipeline benchmarks (not tests): the per-call cost of the same step as native Rust, rhai and
//! WASM built from Rust, JavaScript and Python on a ~1 KB, 20-field record (and the least
//! memory each component runs under), and creates through a six-step pipeline (3 WASM + 3 rhai)
//! in-process and over HTTP. Run with `cargo bench -p usm-tests --bench pipeline`;
//! `USM_BENCH_SHORT=1` runs a few seconds' worth of each part with every check (CI does).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Map, Value, json};
use usm_engine::{
    Engine, EngineConfig, Hook, Module, NewRecord, Phase, Pipelines, Runtimes, Step, StepError,
    StepInput, StepOutput,
};
use usm_model::{Actor, Catalog, Domain, Role};
use usm_plugin_host::{PluginHost, PluginLimits};
use usm_script_host::{ScriptHost, ScriptLimits};
use usm_store::{SledStore, Store, StoreConfig};
use usm_tests::{guests, module_dir, repo_path};

/// A few seconds' run that still makes every check (`USM_BENCH_SHORT=1`), or the full one.
fn short() -> bool {
    std::env::var_os("USM_BENCH_SHORT").is_some_and(|v| v != "0")
}

/// `full` in a full run, `short` in a short one.
fn size(full: usize, short_run: usize) -> usize {
    if short() { short_run } else { full }
}

fn fields() -> Map<String, Value> {
    let mut fields = json!({
        "impact": "high", "urgency": "medium", "category": "network", "service": "email",
        "assignee": "ann.lee", "assignment_group": "team-network", "requester": "bob.ray",
        "description": "Users on the third floor cannot reach the mail server since 09:12; the switch in rack B4 shows link flaps on port 17. Several users report timeouts.",
        "tags": ["network", "mail", "floor-3"],
    })
    .as_object()
    .unwrap()
    .clone();
    // An integrator's own data, which no schema names, lives under `extra`.
    let extra: Map<String, Value> = (0..11)
        .map(|i| {
            (
                format!("extra_{i:02}"),
                Value::from(format!("value number {i} of the benchmark record")),
            )
        })
        .collect();
    fields.insert("extra".into(), Value::Object(extra));
    fields
}

/// The person and group the benchmark incident is assigned to, over HTTP.
async fn assignees(server: &usm_tests::TestServer) {
    for (path, body) in [
        (
            "/api/v1/people",
            json!({"id": "ann.lee", "name": "Ann Lee"}),
        ),
        (
            "/api/v1/groups",
            json!({"id": "team-network", "name": "Network", "domain": "it", "members": ["ann.lee"]}),
        ),
    ] {
        let reply = server.post(path, &body).await.unwrap();
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    }
}

fn record() -> Value {
    json!({"id": "INC-1", "kind": "incident", "process": "recover", "domain": "it", "state": "new",
           "title": "Mail unreachable from floor 3", "fields": fields(), "links": [], "version": 1})
}

fn matrix() -> Value {
    json!({"matrix": {"high": {"high": "P1", "medium": "P2", "low": "P3"},
                      "medium": {"high": "P2", "medium": "P3", "low": "P4"},
                      "low": {"high": "P3", "medium": "P4", "low": "P5"}}})
}

/// The priority step written in Rust, as a baseline.
fn native(config: Value) -> impl Step {
    move |input: &StepInput<'_>| -> Result<StepOutput, StepError> {
        let fields = &input.record["fields"];
        let (Some(impact), Some(urgency)) = (fields["impact"].as_str(), fields["urgency"].as_str())
        else {
            return Ok(StepOutput::Continue);
        };
        let Some(priority) = config["matrix"][impact][urgency].as_str() else {
            return Ok(StepOutput::Reject {
                code: "unknown_priority".into(),
                message: String::new(),
            });
        };
        let mut patch = Map::new();
        patch.insert(
            "fields".into(),
            json!({"priority": priority, "major_incident": priority == "P1"}),
        );
        Ok(StepOutput::Patch(patch))
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn per_call(name: &str, step: &dyn Step) {
    per_call_n(name, step, size(20_000, 500));
}

/// Calls `with` on a create's before-step input of the benchmark's record.
fn on_record<T>(with: impl FnOnce(&StepInput<'_>) -> T) -> T {
    let record = record();
    let actor = Actor::new("bench", [Role::Agent]);
    let input = StepInput {
        hook: Hook::Create,
        phase: Phase::Before,
        record: &record,
        previous: None,
        actor: &actor,
        context: &Value::Null,
    };
    with(&input)
}

fn per_call_n(name: &str, step: &dyn Step, calls: usize) {
    on_record(|input| per_call_on(name, step, calls, input));
}

fn per_call_on(name: &str, step: &dyn Step, calls: usize, input: &StepInput<'_>) {
    for _ in 0..calls / 20 {
        step.run(input).unwrap();
    }
    let mut samples = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let output = step.run(input).unwrap();
        samples.push(t.elapsed());
        assert!(matches!(output, StepOutput::Patch(_)));
    }
    let mean = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
    samples.sort_unstable();
    println!(
        "{name:<22} mean {mean:>7.1} µs   p50 {:>7.1} µs   p99 {:>7.1} µs",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    );
}

/// The priority matrix shifted by `shift` priorities (P1 → P(1+shift), wrapping after P5):
/// consecutive steps of the six-step pipeline disagree, so each one finds a priority other
/// than its own and patches it — every step does its whole work, none returns early.
fn shifted_matrix_toml(shift: usize) -> String {
    let priority = |base: usize| format!("P{}", (base - 1 + shift) % 5 + 1);
    let row = |name: &str, bases: [usize; 3]| {
        format!(
            "{name} = {{ high = \"{}\", medium = \"{}\", low = \"{}\" }}\n",
            priority(bases[0]),
            priority(bases[1]),
            priority(bases[2])
        )
    };
    format!(
        "[steps.config.matrix]\n{}{}{}",
        row("high", [1, 2, 3]),
        row("medium", [2, 3, 4]),
        row("low", [3, 4, 5])
    )
}

/// Two modules whose six steps alternate WASM (orders 0, 2, 4) and rhai (1, 3, 5). Their time
/// budget is generous: 32 clients on 2 cores queue for the CPU, and a budget is not what is
/// measured here.
fn six_step_modules(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut wasm = String::from(
        "id = \"bench-wasm\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n",
    );
    let mut rhai = wasm.replace("bench-wasm", "bench-rhai");
    for order in 0..6 {
        let (module, name, file) = if order % 2 == 0 {
            (&mut wasm, "wasm", "wasm = \"priority.wasm\"")
        } else {
            (&mut rhai, "rhai", "script = \"priority.rhai\"")
        };
        module.push_str(&format!(
            "\n[[steps]]\nname = \"{name}-{order}\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\norder = {order}\n{file}\ntimeout_ms = 2000\n{}",
            shifted_matrix_toml(order)
        ));
    }
    let script = repo_path("scripts/examples/priority/priority.rhai");
    vec![
        module_dir(
            &dir.join("wasm"),
            &wasm,
            &[("priority.wasm", guests::PRIORITY)],
        )
        .unwrap(),
        module_dir(
            &dir.join("rhai"),
            &rhai,
            &[("priority.rhai", script.to_str().unwrap())],
        )
        .unwrap(),
    ]
}

/// Panics unless the create's history entry shows all six steps, in order, each having patched
/// the priority: a rate is only reported for creates that went through the whole pipeline.
fn assert_six_steps_worked(entry: &Value) {
    let steps = entry["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["wasm-0", "rhai-1", "wasm-2", "rhai-3", "wasm-4", "rhai-5"],
        "{entry}"
    );
    for step in steps {
        assert_eq!(step["outcome"], "patched", "{step}");
        assert!(
            step["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["path"] == "/fields/priority"),
            "{step}"
        );
    }
}

fn report(name: &str, elapsed: Duration, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    println!(
        "{name:<34} {:>7.0} records/s   p50 {:>8.0} µs   p99 {:>8.0} µs",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
}

fn creates_in_process(modules: &[std::path::PathBuf], records: usize, clients: usize) {
    let data = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(data.path(), StoreConfig::default()).unwrap());
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(Catalog::core()),
        EngineConfig::default(),
    );
    let runtimes = Runtimes {
        wasm: Some(Arc::new(
            PluginHost::new(PluginLimits::default(), Some(store)).unwrap(),
        )),
        rhai: Some(Arc::new(ScriptHost::new(ScriptLimits::default()))),
        manifest_checks: Vec::new(),
    };
    let it = Domain::new("it").unwrap();
    let loaded: Vec<Module> = modules
        .iter()
        .map(|m| Module::load_dir(m, &runtimes, &[]).unwrap())
        .collect();
    engine.set_pipelines(Pipelines::compose(
        loaded.iter().flat_map(|m| m.steps.iter().map(|s| (&it, s))),
    ));
    let admin = Actor::new("admin", [Role::Admin]);
    let person: usm_directory::NewPerson =
        serde_json::from_value(json!({"id": "ann.lee", "name": "Ann Lee"})).unwrap();
    engine
        .directory()
        .create_person(&admin, person, |_| false)
        .unwrap();
    let group: usm_directory::NewGroup = serde_json::from_value(
        json!({"id": "team-network", "name": "Network", "domain": "it", "members": ["ann.lee"]}),
    )
    .unwrap();
    engine.directory().create_group(&admin, group).unwrap();
    let actor = Actor::new("bench", [Role::Agent]);
    let new = || -> NewRecord {
        serde_json::from_value(json!({"kind": "incident", "title": "Mail unreachable from floor 3", "fields": fields()})).unwrap()
    };
    let entry =
        |id: &str| serde_json::to_value(&engine.history(&actor, id, 0, None).unwrap()[0]).unwrap();
    let first = engine.create(&actor, new(), None).unwrap();
    assert_six_steps_worked(&entry(first.record.id.as_str()));
    let started = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    (0..records / clients)
                        .map(|_| {
                            let t = Instant::now();
                            engine.create(&actor, new(), None).unwrap();
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed();
    let page = engine
        .list(
            &actor,
            usm_engine::ListRequest {
                limit: Some(200),
                ..Default::default()
            },
        )
        .unwrap();
    let step_micros: Vec<u64> = page
        .records
        .iter()
        .map(|r| {
            let entry = entry(r.id.as_str());
            assert_six_steps_worked(&entry);
            entry["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["micros"].as_u64().unwrap())
                .sum()
        })
        .collect();
    report(
        &format!("6-step creates, engine, {clients} clients"),
        elapsed,
        latencies,
    );
    let mean = step_micros.iter().sum::<u64>() as f64 / step_micros.len() as f64;
    println!(
        "{:<34} {mean:>7.0} µs in the six steps per create (mean of {})",
        "",
        step_micros.len()
    );
}

fn creates_over_http(modules: &[std::path::PathBuf], records: usize, clients: usize) {
    let modules = modules.to_vec();
    let server = usm_tests::TestServer::start_with(move |config| {
        config.modules = modules
            .into_iter()
            .map(|path| usm_server::ModuleConfig {
                path,
                domains: vec!["it".into()],
                grant: vec![],
            })
            .collect();
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assignees(&server).await;
        let body = json!({"kind": "incident", "title": "Mail unreachable from floor 3", "fields": fields()});
        let started = Instant::now();
        let tasks = (0..clients).map(|_| {
            let server = &server;
            let body = &body;
            async move {
                let mut latencies = Vec::new();
                let mut last = String::new();
                for _ in 0..records / clients {
                    let t = Instant::now();
                    let reply = server.post("/api/v1/records", body).await.unwrap();
                    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
                    latencies.push(t.elapsed());
                    last = reply.body["id"].as_str().unwrap().to_owned();
                }
                (latencies, last)
            }
        });
        let results = futures::future::join_all(tasks).await;
        let elapsed = started.elapsed();
        // Each client's last create went through all six steps.
        for (_, id) in &results {
            let history = server.get(&format!("/api/v1/records/{id}/history")).await.unwrap();
            assert_six_steps_worked(&history.body["entries"][0]);
        }
        let latencies: Vec<Duration> = results.into_iter().flat_map(|(l, _)| l).collect();
        report(&format!("6-step creates, HTTP, {clients} clients"), elapsed, latencies);
    });
}

fn main() {
    // `cargo bench -p usm-tests --bench pipeline -- steps|creates` runs one half.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if wanted("steps") {
        steps();
    }
    // The hostile-neighbour comparison has no short form yet; a short run skips it unless named.
    if wanted("hostile") && !(short() && only.is_empty()) {
        hostile_neighbour();
    }
    if wanted("creates") {
        let dir = tempfile::tempdir().unwrap();
        let modules = six_step_modules(dir.path());
        creates_in_process(&modules, size(4000, 100), 1);
        creates_in_process(&modules, size(8000, 320), size(32, 8));
        creates_over_http(&modules, size(4000, 100), 1);
        creates_over_http(&modules, size(8000, 320), size(32, 8));
    }
}

fn steps() {
    let config = matrix();
    println!(
        "per call, same step on a {}-byte, 20-field record ({} calls):",
        record().to_string().len(),
        size(20_000, 500)
    );
    per_call("native Rust", &native(config.clone()));

    let files: BTreeMap<String, Vec<u8>> = [(
        "priority.rhai".to_owned(),
        std::fs::read(repo_path("scripts/examples/priority/priority.rhai")).unwrap(),
    )]
    .into();
    let scripts =
        usm_script_host::ModuleScripts::compile(&files, &ScriptLimits::default()).unwrap();
    per_call("rhai", &scripts.step("priority.rhai", &config, 50).unwrap());

    // A store keeps compiled components, so building a step again (below, at each memory cap)
    // does not compile it again.
    let host = PluginHost::new(
        PluginLimits::default(),
        Some(Arc::new(usm_store::MemoryStore::new())),
    )
    .unwrap();
    // The same step in three languages; the JavaScript and Python runtimes cost milliseconds a
    // call, so they get fewer calls.
    for (name, wasm, calls) in [
        ("wasm Rust", guests::PRIORITY, size(20_000, 500)),
        ("wasm JavaScript", guests::PRIORITY_JS, size(2_000, 50)),
        ("wasm Python", guests::PRIORITY_PY, size(2_000, 50)),
    ] {
        let bytes = std::fs::read(wasm).unwrap();
        let step = wasm_step(&host, &bytes, &config, 32).unwrap();
        per_call_n(&format!("{name} (fresh instance)"), &step, calls);
        // `describe` does nothing but return a constant: its cost is the fresh instance's, and
        // what `run` costs beyond it is the step's own work, all a reused instance would pay.
        let started = Instant::now();
        for _ in 0..calls {
            step.describe().unwrap();
        }
        println!(
            "{:<22} instantiate + describe mean {:>7.1} µs",
            "",
            started.elapsed().as_secs_f64() * 1e6 / calls as f64
        );
        println!(
            "{:<22} {:.1} MB component; runs under a memory cap of {} MiB, not less",
            "",
            bytes.len() as f64 / 1e6,
            least_memory_mib(&host, &bytes, &config)
        );
    }
}

fn wasm_step(
    host: &PluginHost,
    bytes: &[u8],
    config: &Value,
    memory_mib: u64,
) -> Result<usm_plugin_host::WasmStep, usm_plugin_host::PluginError> {
    host.step(&usm_plugin_host::StepSpec {
        module: "bench",
        step: "priority",
        bytes,
        hook: Hook::Create,
        config,
        capabilities: &[],
        limits: usm_plugin_host::CallLimits {
            timeout: Duration::from_millis(500),
            memory_bytes: memory_mib << 20,
            max_output_bytes: 1 << 20,
        },
    })
}

/// The smallest `memory_mib` (a whole MiB) under which the step installs (the host calls
/// `describe`) and runs on the record.
fn least_memory_mib(host: &PluginHost, bytes: &[u8], config: &Value) -> u64 {
    on_record(|input| {
        (1..=256)
            .find(|&mib| {
                wasm_step(host, bytes, config, mib).is_ok_and(|step| step.run(input).is_ok())
            })
            .expect("the step runs under 256 MiB")
    })
}

/// `it` creates while `hr` clients hit a step that loops until its 50 ms deadline, compared with
/// the same `it` load while `hr` has no such step.
fn hostile_neighbour() {
    const LOOPER: &str = "id = \"runaway\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
        [[steps]]\nname = \"spin\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nwasm = \"looper.wasm\"\ntimeout_ms = 50\n";
    let dir = tempfile::tempdir().unwrap();
    let looper = module_dir(
        &dir.path().join("runaway"),
        LOOPER,
        &[("looper.wasm", guests::GUEST_LOOPER)],
    )
    .unwrap();
    // Baseline; the looping step with the circuit breaker off; with it on (the default).
    for (hostile, breaker) in [(false, true), (true, false), (true, true)] {
        let looper = looper.clone();
        let server = usm_tests::TestServer::start_with(move |config| {
            if !breaker {
                config.breaker_trip_after = 0;
            }
            config.modules = vec![usm_server::ModuleConfig {
                path: looper,
                domains: vec!["hr".into()],
                grant: vec![],
            }];
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assignees(&server).await;
            let stop = std::sync::atomic::AtomicBool::new(false);
            let hr_load = async {
                let mut failures = 0usize;
                let hr = futures::future::join_all((0..4).map(|_| async {
                    let mut n = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Without the hostile step the hr load is ordinary creates, for a fair comparison.
                        let domain = "hr";
                        let reply = server.post("/api/v1/records", &json!({"kind": if hostile { "incident" } else { "task" }, "domain": domain, "title": "hr"})).await.unwrap();
                        n += usize::from(reply.status.as_u16() >= 500);
                    }
                    n
                }))
                .await;
                failures += hr.iter().sum::<usize>();
                failures
            };
            let it_load = async {
                let started = Instant::now();
                let latencies: Vec<Duration> = futures::future::join_all((0..8).map(|_| async {
                    let mut latencies = Vec::new();
                    for _ in 0..150 {
                        let t = Instant::now();
                        let reply = server.post("/api/v1/records", &json!({"kind": "incident", "title": "it", "fields": fields()})).await.unwrap();
                        assert_eq!(reply.status.as_u16(), 201);
                        latencies.push(t.elapsed());
                    }
                    latencies
                }))
                .await
                .into_iter()
                .flatten()
                .collect();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                (started.elapsed(), latencies)
            };
            let (hr_failures, (elapsed, latencies)) = tokio::join!(hr_load, it_load);
            let label = match (hostile, breaker) {
                (false, _) => "it creates, hr creates plain",
                (true, false) => "it creates, hr loops, no breaker",
                (true, true) => "it creates, hr loops, breaker on",
            };
            report(label, elapsed, latencies);
            println!("{:<34} hr writes failed by the deadline: {hr_failures}", "");
        });
    }
}
