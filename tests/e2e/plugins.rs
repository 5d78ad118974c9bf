//! Each WASM limit obeyed and violated, with the guests built from plugins/test-guests.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use usm_engine::{Hook, Phase, Step, StepError, StepInput, StepOutput};
use usm_model::{Actor, Role};
use usm_plugin_host::{CallLimits, PluginError, PluginHost, PluginLimits, StepSpec, WasmStep};
use usm_store::{MemoryStore, Store};
use usm_tests::guests;

fn limits(timeout_ms: u64, memory_mib: u64) -> CallLimits {
    CallLimits {
        timeout: Duration::from_millis(timeout_ms),
        memory_bytes: memory_mib * 1024 * 1024,
        max_output_bytes: 1024 * 1024,
    }
}

fn build(
    host: &PluginHost,
    wasm: &str,
    hook: Hook,
    config: Value,
    caps: &[&str],
    limits: CallLimits,
) -> Result<WasmStep, PluginError> {
    let bytes = std::fs::read(wasm).unwrap();
    let caps: Vec<String> = caps.iter().map(|c| (*c).to_owned()).collect();
    host.step(&StepSpec {
        module: "test",
        step: "step",
        bytes: &bytes,
        hook,
        config: &config,
        capabilities: &caps,
        limits,
    })
}

fn run(step: &WasmStep, record: Value) -> Result<StepOutput, StepError> {
    let actor = Actor::new("ann", [Role::Agent]);
    step.run(&StepInput {
        hook: Hook::Create,
        phase: Phase::Before,
        record: &record,
        previous: None,
        actor: &actor,
        context: &Value::Null,
    })
}

fn incident(fields: Value) -> Value {
    json!({"id": null, "kind": "incident", "domain": "it", "state": "new", "title": "t", "fields": fields, "links": []})
}

#[test]
fn the_deadline_is_obeyed_and_enforced() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    let step = build(
        &host,
        guests::GUEST_LOOPER,
        Hook::Create,
        json!({}),
        &[],
        limits(50, 32),
    )
    .unwrap();
    assert_eq!(
        run(&step, incident(json!({"spin": 1000}))).unwrap(),
        StepOutput::Continue
    );
    // The loop ends on its CPU budget; on a machine so loaded that the thread gets under a
    // twentieth of a core, the wall-clock backstop ends it first. Either way it ends.
    let ended = run(&step, incident(json!({}))).unwrap_err();
    assert!(
        matches!(ended, StepError::Timeout(50) | StepError::Stalled(_)),
        "{ended:?}"
    );
    // The instance is fresh for every call: a timeout leaves nothing behind.
    assert_eq!(
        run(&step, incident(json!({"spin": 10}))).unwrap(),
        StepOutput::Continue
    );
}

#[test]
fn the_memory_cap_is_obeyed_and_enforced() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    let step = build(
        &host,
        guests::GUEST_MEMORY_BOMB,
        Hook::Create,
        json!({}),
        &[],
        limits(5000, 16),
    )
    .unwrap();
    let ok = run(&step, incident(json!({"mib": 4}))).unwrap();
    assert_eq!(
        ok,
        StepOutput::Patch(
            json!({"fields": {"allocated_mib": 4}})
                .as_object()
                .unwrap()
                .clone()
        )
    );
    match run(&step, incident(json!({}))).unwrap_err() {
        StepError::Memory(message) => assert!(message.contains("16777216"), "{message}"),
        other => panic!("expected a memory error, got {other:?}"),
    }
}

#[test]
fn a_trap_is_an_error_with_the_guest_panic_message() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    let step = build(
        &host,
        guests::GUEST_TRAP,
        Hook::Create,
        json!({}),
        &[],
        limits(50, 32),
    )
    .unwrap();
    assert_eq!(
        run(&step, incident(json!({"category": "calm"}))).unwrap(),
        StepOutput::Continue
    );
    match run(&step, incident(json!({}))).unwrap_err() {
        StepError::Trap(message) => assert!(message.contains("deliberate failure"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn malformed_and_oversize_outputs_are_refused() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    let malformed = build(
        &host,
        guests::GUEST_MALFORMED,
        Hook::Create,
        json!({}),
        &[],
        limits(50, 32),
    )
    .unwrap();
    assert!(matches!(
        run(&malformed, incident(json!({}))).unwrap_err(),
        StepError::InvalidOutput(_)
    ));
    let oversize = build(
        &host,
        guests::GUEST_OVERSIZE,
        Hook::Create,
        json!({}),
        &[],
        limits(500, 32),
    )
    .unwrap();
    assert!(matches!(
        run(&oversize, incident(json!({"kib": 10}))).unwrap(),
        StepOutput::Patch(_)
    ));
    match run(&oversize, incident(json!({}))).unwrap_err() {
        StepError::OutputTooLarge { limit, size } => {
            assert_eq!(limit, 1024 * 1024);
            assert!(size > limit);
        }
        other => panic!("expected an oversize error, got {other:?}"),
    }
}

#[test]
fn a_wrong_api_version_is_refused_before_instantiation() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    match build(
        &host,
        guests::GUEST_WRONG_API,
        Hook::Create,
        json!({}),
        &[],
        limits(50, 32),
    ) {
        Err(PluginError::ApiVersion(message)) => assert!(message.contains("9.0.0"), "{message}"),
        Err(other) => panic!("expected an API version error, got {other}"),
        Ok(_) => panic!("a plugin for usm:plugin 9.0.0 was accepted"),
    }
}

fn replace_all(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(
        from.len(),
        to.len(),
        "names keep their length, so sizes stay valid"
    );
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(found) = out[at..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        out[at + found..at + found + to.len()].copy_from_slice(to.as_bytes());
        at += found + to.len();
    }
    out
}

/// Components from componentize-js or componentize-py carry no usm-sdk section: their version is
/// the one their `usm:plugin/…@x.y.z` imports name.
#[test]
fn without_the_sdk_section_the_version_comes_from_the_wit_names() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    let sdk_built = std::fs::read(guests::PRIORITY).unwrap();
    // usm-sdk's section sits in the component's core module; renamed, it is as good as absent.
    let section = usm_plugin_host::API_SECTION;
    let plain = replace_all(&sdk_built, section, &"x".repeat(section.len()));
    assert_ne!(plain, sdk_built);
    let step = |bytes: &[u8]| {
        host.step(&StepSpec {
            module: "test",
            step: "step",
            bytes,
            hook: Hook::Create,
            config: &json!({"matrix": {"high": {"high": "P1"}}}),
            capabilities: &[],
            limits: limits(50, 32),
        })
    };
    let built = step(&plain).unwrap();
    assert!(matches!(
        run(
            &built,
            incident(json!({"impact": "high", "urgency": "high"}))
        )
        .unwrap(),
        StepOutput::Patch(_)
    ));
    let current = format!("@{}", usm_engine::HOST_API_VERSION);
    let future = replace_all(&plain, &current, "@9.1.0");
    match step(&future) {
        Err(PluginError::ApiVersion(message)) => assert_eq!(
            message,
            format!(
                "the plugin was built for usm:plugin 9.1.0; this server implements {}",
                usm_engine::HOST_API_VERSION
            )
        ),
        other => panic!("expected an API version error, got {:?}", other.err()),
    }
    let foreign = replace_all(&plain, "usm:plugin/", "abc:plugin/");
    match step(&foreign) {
        Err(PluginError::ApiVersion(message)) => {
            assert!(message.contains("not a usm plugin"), "{message}")
        }
        other => panic!("expected an API version error, got {:?}", other.err()),
    }
}

#[test]
fn describe_and_config_schema_are_checked_against_the_manifest() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    let matrix = json!({"matrix": {"high": {"high": "P1"}}});
    assert!(matches!(
        build(
            &host,
            guests::PRIORITY,
            Hook::Transition,
            matrix.clone(),
            &[],
            limits(50, 32)
        ),
        Err(PluginError::Hook(_))
    ));
    match build(
        &host,
        guests::PRIORITY,
        Hook::Create,
        json!({"matrix": {"high": {"high": "urgent"}}}),
        &[],
        limits(50, 32),
    ) {
        Err(PluginError::Config { pointer, message }) => {
            assert_eq!(pointer, "/matrix/high/high");
            assert!(message.contains("urgent"), "{message}")
        }
        other => panic!("expected a config error, got {:?}", other.err()),
    }
    let step = build(
        &host,
        guests::PRIORITY,
        Hook::Create,
        matrix,
        &[],
        limits(50, 32),
    )
    .unwrap();
    let out = run(
        &step,
        incident(json!({"impact": "high", "urgency": "high"})),
    )
    .unwrap();
    assert_eq!(
        out,
        StepOutput::Patch(
            json!({"fields": {"priority": "P1", "major_incident": true}})
                .as_object()
                .unwrap()
                .clone()
        )
    );
}

#[test]
fn record_reads_need_the_capability_and_stay_in_the_domain() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = usm_engine::Engine::new(
        Arc::clone(&store),
        Arc::new(usm_model::Catalog::core()),
        Default::default(),
    );
    let agent = Actor::new("ann", [Role::Agent]);
    let new = |domain: &str, title: &str| {
        serde_json::from_value(json!({"kind": "incident", "domain": domain, "title": title}))
            .unwrap()
    };
    engine
        .create(&agent, new("it", "printer on fire"), None)
        .unwrap();
    engine
        .create(&agent, new("hr", "salary data"), None)
        .unwrap();
    let host = PluginHost::new(PluginLimits::default(), Some(Arc::clone(&store))).unwrap();

    let denied = build(
        &host,
        guests::GUEST_READER,
        Hook::Create,
        json!({}),
        &[],
        limits(500, 32),
    )
    .unwrap();
    let StepOutput::Patch(out) = run(&denied, incident(json!({"lookup": "INC-1"}))).unwrap() else {
        panic!()
    };
    assert!(
        out["fields"]["seen"]
            .as_str()
            .unwrap()
            .starts_with("refused: capability records:read")
    );

    let granted = build(
        &host,
        guests::GUEST_READER,
        Hook::Create,
        json!({}),
        &["records:read"],
        limits(500, 32),
    )
    .unwrap();
    let StepOutput::Patch(out) = run(&granted, incident(json!({"lookup": "INC-1"}))).unwrap()
    else {
        panic!()
    };
    assert_eq!(out["fields"]["seen"], "printer on fire");
    assert_eq!(
        out["fields"]["incidents"], 1,
        "the query sees only the pipeline's domain"
    );
    assert!(
        out["fields"]["now"].as_u64().unwrap() > 1_700_000_000_000,
        "host.now is the real time"
    );
    let StepOutput::Patch(out) = run(&granted, incident(json!({"lookup": "INC-2"}))).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        out["fields"]["seen"], "not found",
        "another domain's record is invisible"
    );
}

#[test]
fn compiled_components_are_cached_in_the_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let bytes = std::fs::read(guests::PRIORITY).unwrap();
    let first = PluginHost::new(PluginLimits::default(), Some(Arc::clone(&store))).unwrap();
    let key = first.artifact_key(&bytes);
    assert!(store.artifact(&key).unwrap().is_none());
    first.compile(&bytes).unwrap();
    let cached = store
        .artifact(&key)
        .unwrap()
        .expect("the artifact is cached");
    // A second host (as after a restart) loads the artifact; a damaged one is recompiled.
    let second = PluginHost::new(PluginLimits::default(), Some(Arc::clone(&store))).unwrap();
    assert_eq!(second.artifact_key(&bytes), key);
    second.compile(&bytes).unwrap();
    store.put_artifact(&key, b"garbage").unwrap();
    second.compile(&bytes).unwrap();
    assert_eq!(
        store.artifact(&key).unwrap().unwrap().len(),
        cached.len(),
        "the damaged artifact was replaced"
    );
}

#[test]
fn wasi_grants_nothing_ambient() {
    let host = PluginHost::new(PluginLimits::default(), None).unwrap();
    let step = build(
        &host,
        guests::GUEST_WASI_PROBE,
        Hook::Create,
        json!({}),
        &[],
        limits(2000, 32),
    )
    .unwrap();
    let StepOutput::Patch(out) = run(&step, incident(json!({}))).unwrap() else {
        panic!("the probe patches")
    };
    let probe = &out["fields"]["probe"];
    assert_eq!(probe["env_vars"], 0, "{probe}");
    assert_eq!(probe["args"], 0, "{probe}");
    for attempt in [
        "read_file",
        "list_root",
        "list_cwd",
        "write_file",
        "connect",
        "resolve",
    ] {
        let result = probe[attempt].as_str().unwrap();
        assert!(result.starts_with("denied"), "{attempt}: {result}");
    }
    assert_eq!(
        probe["wall_clock_secs"], 0,
        "WASI clocks are stopped; host.now is the only clock"
    );
}
