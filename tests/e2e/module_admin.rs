//! Installing, refusing, upgrading, toggling and removing modules over HTTP.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::json;
use usm_engine::{ModuleFiles, bundle};
use usm_tests::{Reply, TestServer, guests};

fn files(entries: &[(&str, &[u8])]) -> ModuleFiles {
    entries
        .iter()
        .map(|(n, b)| ((*n).to_owned(), b.to_vec()))
        .collect::<BTreeMap<_, _>>()
}

fn tagger(version: &str, tag: &str) -> ModuleFiles {
    let manifest = format!(
        "id = \"tagger\"\nversion = \"{version}\"\nframework = \"custom\"\napi = \"^0.1\"\n\
         [[steps]]\nname = \"tag-a\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\norder = 1\nscript = \"tag.rhai\"\n\
         [steps.config]\nfield = \"tag_a\"\nvalue = \"{tag}\"\n\
         [[steps]]\nname = \"tag-b\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\norder = 2\nscript = \"tag.rhai\"\n\
         [steps.config]\nfield = \"tag_b\"\nvalue = \"{tag}\"\n\
         [[fields]]\nkind = \"incident\"\n[fields.properties]\ntag_a = {{ type = \"string\" }}\ntag_b = {{ type = \"string\" }}\n"
    );
    let script = "fn run(input) { let f = #{}; f[input.config.field] = input.config.value; patch(#{ fields: f }) }";
    files(&[
        ("module.toml", manifest.as_bytes()),
        ("tag.rhai", script.as_bytes()),
    ])
}

async fn upload(server: &TestServer, bundle: Vec<u8>) -> Reply {
    server.upload_module(bundle).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn install_enable_upgrade_and_remove() {
    let server = TestServer::start().unwrap();
    let installed = upload(&server, bundle::pack(&tagger("1.0.0", "v1")).unwrap()).await;
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.body);
    assert_eq!(installed.body["result"]["action"], "installed");
    assert_eq!(installed.body["module"]["status"], "installed");
    let again = upload(&server, bundle::pack(&tagger("1.0.0", "v1")).unwrap()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["result"]["action"], "unchanged");

    let enabled = server
        .post("/api/v1/modules/tagger/enable", &json!({"domains": ["it"]}))
        .await
        .unwrap();
    assert_eq!(enabled.body["status"], "enabled");
    let record = server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    assert_eq!(record["fields"]["tag_a"], "v1");
    let hr = server
        .create(json!({"kind": "incident", "domain": "hr", "title": "x"}))
        .await
        .unwrap();
    assert!(hr["fields"].get("tag_a").is_none());

    // Same version with other content: not an upgrade.
    let same = upload(&server, bundle::pack(&tagger("1.0.0", "other")).unwrap()).await;
    assert_eq!(same.status, StatusCode::CONFLICT);
    assert_eq!(same.body["code"], "module_version_conflict");
    let upgraded = upload(&server, bundle::pack(&tagger("1.1.0", "v2")).unwrap()).await;
    assert_eq!(upgraded.status, StatusCode::CREATED);
    assert_eq!(
        upgraded.body["result"],
        json!({"action": "upgraded", "from": "1.0.0"})
    );
    assert_eq!(
        upgraded.body["module"]["domains"],
        json!(["it"]),
        "enablement survives the upgrade"
    );
    let record = server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    assert_eq!(record["fields"]["tag_b"], "v2");

    let disabled = server
        .post(
            "/api/v1/modules/tagger/disable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(disabled.body["status"], "installed");
    let record = server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    assert!(record["fields"].get("tag_a").is_none());
    let unknown = server
        .post(
            "/api/v1/modules/tagger/enable",
            &json!({"domains": ["mars"]}),
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);

    let removed = server
        .call(Method::DELETE, "/api/v1/modules/tagger", None, &[])
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(
        server.get("/api/v1/modules/tagger").await.unwrap().body["code"],
        "module_not_found"
    );
    assert!(
        server.get("/api/v1/modules").await.unwrap().body["modules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_bundles_are_refused_whole_with_a_location() {
    let server = TestServer::start().unwrap();
    let head = "id = \"broken\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n";
    let step = |extra: &str| {
        format!(
            "{head}[[steps]]\nname = \"s\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\n{extra}\n"
        )
    };
    let wrong_api = std::fs::read(guests::GUEST_WRONG_API).unwrap();
    let priority = std::fs::read(guests::PRIORITY).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a tarball".to_vec(), "bundle"),
        (
            bundle::pack(&files(&[("readme.txt", b"hi")])).unwrap(),
            "module.toml",
        ),
        (
            bundle::pack(&files(&[(
                "module.toml",
                format!("{head}typo = 1\n").as_bytes(),
            )]))
            .unwrap(),
            "module.toml",
        ),
        (
            bundle::pack(&files(&[(
                "module.toml",
                step("wasm = \"gone.wasm\"").as_bytes(),
            )]))
            .unwrap(),
            "module.toml: steps[0].wasm",
        ),
        (
            bundle::pack(&files(&[
                ("module.toml", step("script = \"s.rhai\"").as_bytes()),
                ("s.rhai", b"fn run(input) { let = ; }"),
            ]))
            .unwrap(),
            "s.rhai",
        ),
        (
            bundle::pack(&files(&[
                ("module.toml", step("wasm = \"w.wasm\"").as_bytes()),
                ("w.wasm", &wrong_api),
            ]))
            .unwrap(),
            "w.wasm",
        ),
        (
            bundle::pack(&files(&[(
                "module.toml",
                head.replace("^0.1", "^3").as_bytes(),
            )]))
            .unwrap(),
            "module.toml: api",
        ),
        // A config or limit the step refuses is the manifest's fault, not the component's.
        (
            bundle::pack(&files(&[
                (
                    "module.toml",
                    step("wasm = \"w.wasm\"\n[steps.config]\nmatrix.high.high = \"urgent\"")
                        .as_bytes(),
                ),
                ("w.wasm", &priority),
            ]))
            .unwrap(),
            "module.toml: steps[0].config/matrix/high/high",
        ),
        (
            bundle::pack(&files(&[
                (
                    "module.toml",
                    step("wasm = \"w.wasm\"\ntimeout_ms = 999999999").as_bytes(),
                ),
                ("w.wasm", &priority),
            ]))
            .unwrap(),
            "module.toml: steps[0].timeout_ms",
        ),
        // A misspelled kind would install and never run; a kind of another process too.
        (
            bundle::pack(&files(&[
                (
                    "module.toml",
                    step("script = \"s.rhai\"\nkinds = [\"incidnet\"]").as_bytes(),
                ),
                ("s.rhai", b"fn run(input) { patch(#{}) }"),
            ]))
            .unwrap(),
            "module.toml:11: steps[0].kinds",
        ),
        (
            bundle::pack(&files(&[
                (
                    "module.toml",
                    step("script = \"s.rhai\"\nkinds = [\"incident\", \"change\"]").as_bytes(),
                ),
                ("s.rhai", b"fn run(input) { patch(#{}) }"),
            ]))
            .unwrap(),
            "module.toml:11: steps[0].kinds",
        ),
    ];
    for (bytes, location) in cases {
        let reply = upload(&server, bytes).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{location}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "module_invalid");
        assert_eq!(reply.body["field"], location, "{}", reply.body);
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        if location.ends_with("kinds") {
            assert!(
                detail.contains("no kind \"incidnet\"; the recover kinds are")
                    || detail.contains("kind \"change\" belongs to process change"),
                "{detail}"
            );
        }
    }
    assert!(
        server.get("/api/v1/modules").await.unwrap().body["modules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        server.get("/api/v1/pipelines").await.unwrap().body["pipelines"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Concurrent creates for as long as a two-step module is toggled 20 times: no request fails,
/// every record went through exactly the old or exactly the new pipeline, and both pipelines
/// served writes (otherwise the test saw no swap at all).
#[tokio::test(flavor = "multi_thread")]
async fn hot_swap_under_load_never_mixes_pipelines() {
    let server = TestServer::start().unwrap();
    assert_eq!(
        upload(&server, bundle::pack(&tagger("1.0.0", "on")).unwrap())
            .await
            .status,
        StatusCode::CREATED
    );
    let toggled = std::sync::atomic::AtomicBool::new(false);
    let toggles = async {
        for i in 0..20 {
            let action = if i % 2 == 0 { "enable" } else { "disable" };
            let reply = server
                .post(
                    &format!("/api/v1/modules/tagger/{action}"),
                    &json!({"domains": ["it"]}),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
        toggled.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let creates = futures::future::join_all((0..8).map(|client| {
        let (server, toggled) = (&server, &toggled);
        async move {
            let mut ids = Vec::new();
            let mut n = 0;
            while !toggled.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let reply = server
                    .post(
                        "/api/v1/records",
                        &json!({"kind": "incident", "title": format!("c{client} n{n}")}),
                    )
                    .await
                    .unwrap();
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
                ids.push(reply.body["id"].as_str().unwrap().to_owned());
            }
            ids
        }
    }));
    let ((), ids) = tokio::join!(toggles, creates);
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    let (mut with, mut without) = (0, 0);
    for id in &ids {
        let history = server
            .get(&format!("/api/v1/records/{id}/history"))
            .await
            .unwrap()
            .body;
        let steps: Vec<&str> = history["entries"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        let record = server
            .get(&format!("/api/v1/records/{id}"))
            .await
            .unwrap()
            .body;
        match steps.as_slice() {
            ["tag-a", "tag-b"] => {
                assert_eq!(
                    (&record["fields"]["tag_a"], &record["fields"]["tag_b"]),
                    (&json!("on"), &json!("on"))
                );
                with += 1;
            }
            [] => {
                assert!(
                    record["fields"].get("tag_a").is_none()
                        && record["fields"].get("tag_b").is_none()
                );
                without += 1;
            }
            mixed => panic!("{id} went through a mix: {mixed:?}"),
        }
    }
    assert_eq!(with + without, ids.len());
    assert!(
        with > 0 && without > 0,
        "both pipelines served writes: {with} with the module, {without} without"
    );
}

/// A WASM module asking for `records:read`: its step records what it could read.
fn reader(version: &str) -> Vec<u8> {
    let manifest = format!(
        "id = \"reader\"\nversion = \"{version}\"\nframework = \"custom\"\napi = \"^0.1\"\ncapabilities = [\"records:read\"]\n\
         [[steps]]\nname = \"reader\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nwasm = \"reader.wasm\"\ntimeout_ms = 500\n\
         [[fields]]\nkind = \"incident\"\n[fields.properties]\nlookup = {{ type = \"string\" }}\nseen = {{}}\nincidents = {{}}\nnow = {{}}\n"
    );
    let wasm = std::fs::read(guests::GUEST_READER).unwrap();
    bundle::pack(&files(&[
        ("module.toml", manifest.as_bytes()),
        ("reader.wasm", &wasm),
    ]))
    .unwrap()
}

/// What the reader step saw when INC-1 was looked up by a new incident.
async fn seen_by_reader(server: &TestServer) -> serde_json::Value {
    let record = server
        .create(json!({"kind": "incident", "title": "look", "fields": {"lookup": "INC-1"}}))
        .await
        .unwrap();
    record["fields"]["seen"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_survive_an_upgrade_and_every_module_action_is_audited() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "incident", "title": "the first"}))
        .await
        .unwrap();
    assert_eq!(
        upload(&server, reader("1.0.0")).await.status,
        StatusCode::CREATED
    );
    let enabled = server
        .post(
            "/api/v1/modules/reader/enable",
            &json!({"domains": ["it"], "grant": ["records:read"]}),
        )
        .await
        .unwrap();
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    assert_eq!(seen_by_reader(&server).await, "the first");

    let upgraded = upload(&server, reader("1.1.0")).await;
    assert_eq!(upgraded.status, StatusCode::CREATED, "{}", upgraded.body);
    assert_eq!(upgraded.body["module"]["grants"], json!(["records:read"]));
    assert_eq!(
        seen_by_reader(&server).await,
        "the first",
        "the upgraded step still holds its grant"
    );

    // Enabling again without `grant` keeps the grants; with an empty one, takes them away.
    server
        .post(
            "/api/v1/modules/reader/disable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    server
        .post(
            "/api/v1/modules/reader/enable",
            &json!({"domains": ["it"], "grant": []}),
        )
        .await
        .unwrap();
    let refused = seen_by_reader(&server).await;
    assert!(
        refused.as_str().unwrap().starts_with("refused:"),
        "{refused}"
    );
    let workflow = server
        .post(
            "/api/v1/workflows",
            &json!({"usm_wif": "1", "workflow": {"slug": "audited", "name": "Audited", "steps": [
                {"name": "s", "process": "operate", "activities": [{"name": "a", "raci": {"desk": "R"}}]}]}}),
        )
        .await
        .unwrap();
    assert!(workflow.status.is_success(), "{}", workflow.body);
    server
        .post(
            "/api/v1/modules/reader/disable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    let removed = server
        .call(Method::DELETE, "/api/v1/modules/reader", None, &[])
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);

    let audit = server.get("/api/v1/audit").await.unwrap().body;
    let entries: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        entries,
        [
            ("module.install", "module:reader"),
            ("module.enable", "module:reader"),
            ("module.upgrade", "module:reader"),
            ("module.disable", "module:reader"),
            ("module.enable", "module:reader"),
            ("workflow.import", "workflow:audited"),
            ("module.disable", "module:reader"),
            ("module.remove", "module:reader"),
        ]
    );
    for entry in audit["entries"].as_array().unwrap() {
        assert_eq!(entry["actor"], "admin", "{entry}");
        assert!(entry["at"].is_string(), "{entry}");
    }
    let upgrade = &audit["entries"][2];
    assert_eq!(upgrade["before"]["version"], "1.0.0");
    assert_eq!(upgrade["after"]["version"], "1.1.0");
    assert_eq!(upgrade["after"]["grants"], json!(["records:read"]));
    assert_eq!(audit["entries"][7]["after"], serde_json::Value::Null);
}

async fn preview(server: &TestServer, query: &str, bundle: Option<Vec<u8>>) -> Reply {
    let response = server
        .client()
        .post(format!("{}/api/v1/modules/preview?{query}", server.base))
        .header("content-type", "application/gzip")
        .body(bundle.unwrap_or_default())
        .send()
        .await
        .unwrap();
    Reply::read(response).await.unwrap()
}

/// A preview replays the domain's recent creates from their recorded input through the
/// pipelines as they are and as they would be: counts on a known history, the most recent
/// first, nothing written — for a bundle, an installed module enabled, and one disabled.
#[tokio::test(flavor = "multi_thread")]
async fn a_preview_replays_recent_creates_with_a_change_and_writes_nothing() {
    let server = TestServer::start().unwrap();
    let payroll = server
        .create(json!({"kind": "incident", "domain": "hr", "title": "payroll late"}))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (title, fields) in [
        ("mail down", json!({"impact": "high", "urgency": "high"})),
        ("printer jam", json!({"impact": "low", "urgency": "low"})),
        ("slow laptop", json!({})),
        ("forbidden site", json!({"impact": "medium"})),
    ] {
        let record = server
            .create(json!({"kind": "incident", "title": title, "fields": fields}))
            .await
            .unwrap();
        ids.push(record["id"].as_str().unwrap().to_owned());
    }
    // Installed and enabled after four creates: its steps ran only on the fifth.
    assert_eq!(
        upload(&server, bundle::pack(&tagger("1.0.0", "v1")).unwrap())
            .await
            .status,
        StatusCode::CREATED
    );
    server
        .post("/api/v1/modules/tagger/enable", &json!({"domains": ["it"]}))
        .await
        .unwrap();
    let tagged = server
        .create(json!({"kind": "incident", "title": "vpn flaps", "fields": {"impact": "medium", "urgency": "low"}}))
        .await
        .unwrap();
    assert_eq!(tagged["fields"]["tag_a"], "v1");
    ids.push(tagged["id"].as_str().unwrap().to_owned());
    let modules_before = server.get("/api/v1/modules").await.unwrap().body;
    let histories_before = histories(&server, &ids).await;

    // The rhai priority module, uploaded: the three incidents with impact and urgency change.
    let priority =
        usm_engine::Module::read_dir(&usm_tests::repo_path("scripts/examples/priority")).unwrap();
    let report = preview(
        &server,
        "domains=it",
        Some(bundle::pack(&priority).unwrap()),
    )
    .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    let report = report.body;
    assert_eq!(
        (
            &report["records"],
            &report["changed"],
            &report["rejected_now"],
            &report["accepted_now"]
        ),
        (&json!(5), &json!(3), &json!(0), &json!(0)),
        "{report}"
    );
    let samples = report["samples"].as_array().unwrap();
    let sampled: Vec<&str> = samples.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(sampled, [&ids[4], &ids[1], &ids[0]], "most recent first");
    let mail = &samples[2];
    assert_eq!(mail["before"]["outcome"], "accepted");
    assert_eq!(mail["before"]["record"]["fields"].get("priority"), None);
    assert_eq!(mail["after"]["record"]["fields"]["priority"], "P1");
    assert!(
        mail["diff"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "/fields/priority" && c["to"] == "P1"),
        "{mail}"
    );
    // The tagger's own patch is part of both sides, from the recorded input without it.
    assert_eq!(samples[0]["after"]["record"]["fields"]["tag_a"], "v1");

    // A gate that refuses one title: that record would be refused now.
    let gate = files(&[
        (
            "module.toml",
            b"id = \"gate\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
              [[steps]]\nname = \"gate\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nscript = \"gate.rhai\"\n",
        ),
        (
            "gate.rhai",
            br#"fn run(input) { if input.record.title.contains("forbidden") { reject("forbidden_title", "not that") } else { patch(#{}) } }"#,
        ),
    ]);
    let report = preview(
        &server,
        "domains=it&limit=1000",
        Some(bundle::pack(&gate).unwrap()),
    )
    .await
    .body;
    assert_eq!(
        (&report["changed"], &report["rejected_now"]),
        (&json!(0), &json!(1)),
        "{report}"
    );
    assert_eq!(report["samples"][0]["id"], ids[3].as_str());
    assert_eq!(report["samples"][0]["after"]["outcome"], "refused");
    assert_eq!(report["samples"][0]["after"]["code"], "step_rejected");
    assert_eq!(report["samples"][0]["after"]["module"], "gate");

    // A newer tagger replaces the installed one rather than running beside it.
    let upgrade = bundle::pack(&tagger("2.0.0", "v2")).unwrap();
    let report = preview(&server, "domains=it", Some(upgrade)).await.body;
    assert_eq!(report["changed"], 5, "{report}");
    let after = &report["samples"][0]["after"]["record"]["fields"];
    assert_eq!(
        (&after["tag_a"], &after["tag_b"]),
        (&json!("v2"), &json!("v2"))
    );

    // Without the tagger every record loses its tags; `limit` keeps the most recent.
    let report = preview(&server, "domains=it&without=tagger", None)
        .await
        .body;
    assert_eq!(
        (&report["records"], &report["changed"]),
        (&json!(5), &json!(5)),
        "{report}"
    );
    let report = preview(&server, "domains=it&without=tagger&limit=2", None)
        .await
        .body;
    assert_eq!(report["records"], 2, "{report}");
    let sampled: Vec<&str> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(sampled, [&ids[4], &ids[3]]);
    // Enabled where it already is: nothing changes.
    let report = preview(&server, "domains=it&module=tagger", None)
        .await
        .body;
    assert_eq!(
        (&report["records"], &report["changed"]),
        (&json!(5), &json!(0)),
        "{report}"
    );
    // Enabled in hr too, hr's record gains its tags.
    let report = preview(&server, "domains=it,hr&module=tagger", None)
        .await
        .body;
    assert_eq!(
        (&report["records"], &report["changed"]),
        (&json!(6), &json!(1)),
        "{report}"
    );
    assert_eq!(report["samples"][0]["id"], payroll["id"]);
    assert_eq!(
        report["samples"][0]["after"]["record"]["fields"]["tag_b"],
        "v1"
    );

    for (query, body, status) in [
        (
            "domains=it&module=tagger",
            Some(bundle::pack(&gate).unwrap()),
            StatusCode::BAD_REQUEST,
        ),
        ("domains=it", None, StatusCode::BAD_REQUEST),
        ("domains=it&module=nope", None, StatusCode::NOT_FOUND),
        ("domains=mars&module=tagger", None, StatusCode::BAD_REQUEST),
        (
            "domains=it&module=tagger&limit=0",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "domains=it&module=tagger&limit=1001",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "domains=it",
            Some(b"not a bundle".to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let refused = preview(&server, query, body).await;
        assert_eq!(refused.status, status, "{query}: {}", refused.body);
        assert_eq!(
            refused.headers["content-type"], "application/problem+json",
            "{query}"
        );
    }

    // Nothing was written: the same modules, the same histories.
    assert_eq!(
        server.get("/api/v1/modules").await.unwrap().body,
        modules_before
    );
    assert_eq!(histories(&server, &ids).await, histories_before);
}

async fn histories(server: &TestServer, ids: &[String]) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for id in ids {
        all.push(
            server
                .get(&format!("/api/v1/records/{id}/history"))
                .await
                .unwrap()
                .body,
        );
    }
    all
}
