//! Pipelines of real modules: a WASM plugin built from plugins/ and rhai scripts from scripts/.

use reqwest::StatusCode;
use serde_json::json;
use usm_server::ModuleConfig;
use usm_tests::{TestServer, guests, module_dir, repo_path};

fn priority_module(dir: &std::path::Path) -> std::path::PathBuf {
    let manifest =
        std::fs::read_to_string(repo_path("plugins/examples/priority/module.toml")).unwrap();
    module_dir(
        &dir.join("priority"),
        &manifest,
        &[("priority.wasm", guests::PRIORITY)],
    )
    .unwrap()
}

/// The example modules in `it`, with the groups the triage example routes to.
async fn server_with_example_modules() -> (TestServer, tempfile::TempDir) {
    let modules = tempfile::tempdir().unwrap();
    let priority = priority_module(modules.path());
    let server = TestServer::start_with(move |config| {
        config.modules = vec![
            ModuleConfig {
                path: priority,
                domains: vec!["it".into()],
                grant: vec![],
            },
            ModuleConfig {
                path: repo_path("scripts/examples/triage"),
                domains: vec!["it".into()],
                grant: vec![],
            },
        ];
    })
    .unwrap();
    for group in ["team-network", "team-messaging", "service-desk"] {
        let made = server
            .post(
                "/api/v1/groups",
                &json!({"id": group, "name": group, "domain": "it"}),
            )
            .await
            .unwrap();
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    }
    (server, modules)
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_and_rhai_steps_shape_a_create_in_order() {
    let (server, _modules) = server_with_example_modules().await;
    let incident = server
        .create(json!({"kind": "incident", "title": "Core switch down",
                       "fields": {"impact": "high", "urgency": "high", "category": "network"}}))
        .await
        .unwrap();
    assert_eq!(incident["fields"]["priority"], "P1");
    assert_eq!(incident["fields"]["major_incident"], true);
    assert_eq!(incident["fields"]["assignment_group"], "team-network");

    let history = server.get("/api/v1/records/INC-1/history").await.unwrap();
    let steps = history.body["entries"][0]["steps"]
        .as_array()
        .unwrap()
        .clone();
    let ran: Vec<_> = steps
        .iter()
        .map(|s| {
            (
                s["module"].as_str().unwrap(),
                s["step"].as_str().unwrap(),
                s["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ran,
        [
            ("priority", "priority", "patched"),
            ("triage", "route", "patched")
        ]
    );
    assert_eq!(steps[0]["changes"][0]["path"], "/fields/major_incident");
    assert!(steps.iter().all(|s| s["micros"].is_u64()));

    // Another domain has no pipeline: the record is stored as sent.
    let hr = server
        .create(json!({"kind": "incident", "domain": "hr", "title": "Payroll file missing", "fields": {"impact": "high", "urgency": "high"}}))
        .await
        .unwrap();
    assert!(hr["fields"].get("priority").is_none());
    // A step limited to incidents leaves other kinds of the process alone... and a config matrix
    // decides the value: medium × low is P4.
    let medium = server
        .create(json!({"kind": "incident", "title": "Slow VPN", "fields": {"impact": "medium", "urgency": "low"}}))
        .await
        .unwrap();
    assert_eq!(medium["fields"]["priority"], "P4");
    assert_eq!(medium["fields"]["assignment_group"], "service-desk");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rhai_rejection_names_module_and_step_and_leaves_no_trace() {
    let (server, _modules) = server_with_example_modules().await;
    server
        .create(
            json!({"kind": "incident", "title": "Mail bounces", "fields": {"category": "mail"}}),
        )
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    let refused = server
        .post(
            "/api/v1/records/INC-1/transitions",
            &json!({"to": "resolved"}),
        )
        .await
        .unwrap();
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["code"], "step_rejected");
    assert_eq!(refused.body["module"], "triage");
    assert_eq!(refused.body["step"], "resolution-required");
    assert_eq!(refused.body["reason"], "resolution_required");
    let record = server.get("/api/v1/records/INC-1").await.unwrap();
    assert_eq!(record.body["state"], "in_progress");
    assert_eq!(
        record.etag_version(),
        Some(2),
        "the refused write left no version"
    );

    server
        .patch(
            "/api/v1/records/INC-1",
            &json!({"fields": {"resolution": "Unblocked the relay"}}),
        )
        .await
        .unwrap();
    let resolved = server.transition("INC-1", "resolved").await.unwrap();
    assert_eq!(resolved["state"], "resolved");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_endpoint_shows_the_composition() {
    let (server, _modules) = server_with_example_modules().await;
    let reply = server.get("/api/v1/pipelines").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let pipelines = reply.body["pipelines"].as_array().unwrap();
    let create = pipelines
        .iter()
        .find(|p| {
            p["domain"] == "it"
                && p["process"] == "recover"
                && p["hook"] == "create"
                && p["phase"] == "before"
        })
        .unwrap();
    assert_eq!(
        create["steps"],
        json!([
            {"module": "priority", "step": "priority", "kind": "wasm", "order": 10, "on_error": "fail", "kinds": ["incident"],
             "breaker": {"suspensions": 0, "failures": {}}},
            {"module": "triage", "step": "route", "kind": "rhai", "order": 20, "on_error": "fail", "kinds": ["incident"],
             "breaker": {"suspensions": 0, "failures": {}}},
        ])
    );
    assert!(
        pipelines.iter().all(|p| p["domain"] == "it"),
        "no other domain has steps"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_effect_links_records_once_with_its_cause() {
    let modules = tempfile::tempdir().unwrap();
    let dir = modules.path().join("linker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("module.toml"),
        "id = \"linker\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
         [[steps]]\nname = \"link-duplicates\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"after\"\nscript = \"link.rhai\"\n\
         [[fields]]\nkind = \"incident\"\n[fields.properties]\nduplicates = { type = \"string\" }\n",
    )
    .unwrap();
    // A new incident naming the one it duplicates gets a duplicate_of link, and the original a
    // relates_to link back.
    std::fs::write(
        dir.join("link.rhai"),
        "fn run(input) {\n\
             let original = input.record.fields.duplicates;\n\
             if original == () { return; }\n\
             effects([#{ type: \"link\", rel: \"duplicate_of\", to: original },\n\
                      #{ type: \"link\", from: original, rel: \"relates_to\", to: input.record.id }])\n\
         }\n",
    )
    .unwrap();
    let server = TestServer::start_with(move |config| {
        config.modules = vec![ModuleConfig {
            path: dir,
            domains: vec!["it".into()],
            grant: vec![],
        }];
    })
    .unwrap();
    server
        .create(json!({"kind": "incident", "title": "Mail down"}))
        .await
        .unwrap();
    server
        .create(json!({"kind": "incident", "title": "No mail", "fields": {"duplicates": "INC-1"}}))
        .await
        .unwrap();
    server.settle().await.unwrap();
    let duplicate = server.get("/api/v1/records/INC-2").await.unwrap().body;
    assert_eq!(
        duplicate["links"],
        json!([{"rel": "duplicate_of", "to": "INC-1"}])
    );
    let original = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(
        original["links"],
        json!([{"rel": "relates_to", "to": "INC-2"}])
    );
    // Each link is one write by the module, naming the step and the event that caused it.
    for (id, version) in [("INC-2", 2), ("INC-1", 2)] {
        let history = server
            .get(&format!("/api/v1/records/{id}/history"))
            .await
            .unwrap()
            .body;
        let entries = history["entries"].as_array().unwrap();
        assert_eq!(entries.len(), version, "{id}: {history}");
        let last = entries.last().unwrap();
        assert_eq!(last["actor"], "module:linker", "{last}");
        assert_eq!(last["cause"]["step"], "link-duplicates", "{last}");
        assert_eq!(last["cause"]["record_id"], "INC-2", "{last}");
        assert_eq!(last["changes"][0]["path"], "/links", "{last}");
    }
    assert_eq!(
        server.get("/api/v1/records/INC-2").await.unwrap().body["version"],
        2,
        "linked once"
    );
}
