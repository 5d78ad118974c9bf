//! The priority example written three times — Rust (`plugins/examples/priority`), JavaScript
//! (`priority-js`, componentize-js from npm) and Python (`priority-py`, componentize-py from
//! PyPI) — built from source by this crate's build script and run in the server's sandbox.

use std::sync::Arc;

use serde_json::{Value, json};
use usm_engine::{Hook, Phase, Step, StepInput, StepOutput};
use usm_model::{Actor, Role};
use usm_plugin_host::{CallLimits, PluginError, PluginHost, PluginLimits, StepSpec, WasmStep};
use usm_store::MemoryStore;
use usm_tests::{TestServer, guests};

const LANGUAGES: [(&str, &str); 3] = [
    ("rust", guests::PRIORITY),
    ("javascript", guests::PRIORITY_JS),
    ("python", guests::PRIORITY_PY),
];

fn matrix() -> Value {
    json!({"matrix": {
        "high": {"high": "P1", "medium": "P2", "low": "P3"},
        "medium": {"high": "P2", "medium": "P3", "low": "P4"},
        "low": {"high": "P3", "medium": "P4", "low": "P5"},
    }})
}

fn step(host: &PluginHost, wasm: &str, config: &Value) -> Result<WasmStep, PluginError> {
    let bytes = std::fs::read(wasm).unwrap();
    host.step(&StepSpec {
        module: "priority",
        step: "priority",
        bytes: &bytes,
        hook: Hook::Create,
        config,
        capabilities: &[],
        limits: CallLimits {
            timeout: std::time::Duration::from_millis(500),
            memory_bytes: 64 << 20,
            max_output_bytes: 1 << 20,
        },
    })
}

/// 108 incidents: every pair of impact and urgency among the matrix's values, one it lacks, a
/// missing one and a number, each without a priority, with the matrix's own and with another.
fn incidents() -> Vec<Value> {
    let values = [
        json!("high"),
        json!("medium"),
        json!("low"),
        json!("critical"),
        Value::Null,
        json!(7),
    ];
    let mut records = Vec::new();
    for impact in &values {
        for urgency in &values {
            for priority in [Value::Null, json!("P3"), json!("P5")] {
                let mut fields = serde_json::Map::new();
                for (name, value) in [
                    ("impact", impact),
                    ("urgency", urgency),
                    ("priority", &priority),
                ] {
                    if !value.is_null() {
                        fields.insert(name.to_owned(), value.clone());
                    }
                }
                records.push(json!({
                    "id": format!("INC-{}", records.len() + 1), "kind": "incident", "domain": "it",
                    "state": "new", "title": format!("incident {}", records.len() + 1),
                    "fields": fields, "links": [],
                }));
            }
        }
    }
    records
}

#[test]
fn the_priority_step_decides_and_describes_itself_alike_in_rust_javascript_and_python() {
    // A store keeps each compiled component, so the later configs reuse it.
    let host =
        PluginHost::new(PluginLimits::default(), Some(Arc::new(MemoryStore::new()))).unwrap();
    let steps: Vec<(&str, WasmStep)> = LANGUAGES
        .iter()
        .map(|(language, wasm)| (*language, step(&host, wasm, &matrix()).unwrap()))
        .collect();
    let actor = Actor::new("ann", [Role::Agent]);
    let records = incidents();
    assert!(records.len() >= 100);
    let (mut patched, mut continued, mut rejected) = (0, 0, 0);
    for (index, record) in records.iter().enumerate() {
        let hook = if index % 2 == 0 {
            Hook::Create
        } else {
            Hook::Update
        };
        let input = StepInput {
            hook,
            phase: Phase::Before,
            record,
            previous: (hook == Hook::Update).then_some(record),
            actor: &actor,
            context: &Value::Null,
        };
        let outputs: Vec<(&str, StepOutput)> = steps
            .iter()
            .map(|(language, step)| (*language, step.run(&input).unwrap()))
            .collect();
        for (language, output) in &outputs[1..] {
            assert_eq!(
                output, &outputs[0].1,
                "{language} and rust differ on {record}"
            );
        }
        match &outputs[0].1 {
            StepOutput::Patch(_) => patched += 1,
            StepOutput::Continue => continued += 1,
            StepOutput::Reject { code, .. } => {
                assert_eq!(code, "unknown_priority");
                rejected += 1;
            }
            StepOutput::Effects(_) => panic!("a before-step returned effects"),
        }
    }
    // Every branch of the step was taken, so agreement means something.
    assert_eq!((patched, continued, rejected), (23, 64, 21));

    // Each describes the same config schema, and the host holds every config to it.
    for (language, wasm) in LANGUAGES {
        let refused = step(&host, wasm, &json!({"matrix": {"high": {"high": "P9"}}}));
        assert!(
            matches!(&refused, Err(PluginError::Config { pointer, .. }) if pointer == "/matrix/high/high"),
            "{language}: {:?}",
            refused.err()
        );
        let missing = step(&host, wasm, &json!({}));
        assert!(
            matches!(missing, Err(PluginError::Config { .. })),
            "{language}: {:?}",
            missing.err()
        );
    }
}

/// The JavaScript and Python modules install from their directories (read as `usm module pack`
/// reads them: their toolchains' directories and hidden files left out) and set priorities on a
/// real server.
#[tokio::test(flavor = "multi_thread")]
async fn javascript_and_python_modules_install_and_run_on_a_server() {
    let server = TestServer::start().unwrap();
    for (id, wasm, domain) in [
        ("priority-js", guests::PRIORITY_JS, "it"),
        ("priority-py", guests::PRIORITY_PY, "hr"),
    ] {
        let dir = std::path::Path::new(wasm).parent().unwrap().to_path_buf();
        let files = tokio::task::spawn_blocking(move || usm_engine::Module::read_dir(&dir))
            .await
            .unwrap()
            .unwrap();
        assert!(
            files
                .keys()
                .all(|name| !name.starts_with("node_modules/") && !name.starts_with(".")),
            "{id}: {:?}",
            files.keys().collect::<Vec<_>>()
        );
        assert!(files.contains_key("priority.wasm"), "{id}");
        let bundle = usm_engine::bundle::pack(&files).unwrap();
        let installed = server.upload_module(bundle).await.unwrap();
        assert_eq!(installed.status, 201, "{id}: {}", installed.body);
        let enabled = server
            .post(
                &format!("/api/v1/modules/{id}/enable"),
                &json!({"domains": [domain]}),
            )
            .await
            .unwrap();
        assert!(enabled.status.is_success(), "{id}: {}", enabled.body);
        let created = server
            .post(
                "/api/v1/records",
                &json!({"kind": "incident", "domain": domain, "title": "payroll down",
                    "fields": {"impact": "high", "urgency": "high"}}),
            )
            .await
            .unwrap();
        assert_eq!(created.status, 201, "{id}: {}", created.body);
        assert_eq!(created.body["fields"]["priority"], "P1", "{id}");
        assert_eq!(created.body["fields"]["major_incident"], true, "{id}");
    }
}
