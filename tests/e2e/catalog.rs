//! Modules that grow the catalog: new kinds, typed fields and lifecycle states, checked against
//! each other when installed and kept while records use them.

use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_engine::{Module, ModuleFiles, bundle};
use usm_tests::{Reply, TestServer, repo_path};

fn risk_register() -> ModuleFiles {
    Module::read_dir(&repo_path("scripts/examples/risk-register")).unwrap()
}

/// The risk register at `version`, without its `[[states]]` addition.
fn risk_register_without_scheduled(version: &str) -> ModuleFiles {
    let mut files = risk_register();
    let manifest = String::from_utf8(files["module.toml"].clone()).unwrap();
    let start = manifest.find("[[states]]").unwrap();
    let end = manifest.find("[[steps]]").unwrap();
    let manifest = format!("{}{}", &manifest[..start], &manifest[end..])
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
    files.insert("module.toml".into(), manifest.into_bytes());
    files
}

fn manifest_only(body: &str) -> ModuleFiles {
    let manifest = format!(
        "id = \"extra\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n{body}"
    );
    [("module.toml".to_owned(), manifest.into_bytes())].into()
}

async fn upload(server: &TestServer, files: &ModuleFiles) -> Reply {
    server
        .upload_module(bundle::pack(files).unwrap())
        .await
        .unwrap()
}

async fn kind(server: &TestServer, name: &str) -> Option<Value> {
    let kinds = server.get("/api/v1/kinds").await.unwrap().body;
    kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .cloned()
}

fn states(kind: &Value) -> Vec<&str> {
    kind["lifecycle"]["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_adds_a_kind_typed_fields_and_a_state() {
    let server = TestServer::start().unwrap();
    assert!(kind(&server, "risk").await.is_none());
    let refused = server
        .post("/api/v1/records", &json!({"kind": "risk", "title": "x"}))
        .await
        .unwrap();
    assert_eq!(refused.body["code"], "unknown_kind");

    // Installed, the module changes nothing anywhere: its additions come with enablement.
    let installed = upload(&server, &risk_register()).await;
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.body);
    assert!(kind(&server, "risk").await.is_none());
    assert!(!states(&kind(&server, "change").await.unwrap()).contains(&"scheduled"));
    let refused = server
        .post("/api/v1/records", &json!({"kind": "risk", "title": "x"}))
        .await
        .unwrap();
    assert_eq!(refused.body["code"], "unknown_kind", "{}", refused.body);

    let enabled = server
        .post(
            "/api/v1/modules/risk-register/enable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    let risk = kind(&server, "risk").await.unwrap();
    assert_eq!(risk["prefix"], "RSK");
    assert_eq!(risk["process"], "improve");
    assert_eq!(risk["modules"], json!(["risk-register"]));
    let change = kind(&server, "change").await.unwrap();
    assert!(states(&change).contains(&"scheduled"));
    assert_eq!(change["modules"], json!(["risk-register"]));
    assert_eq!(
        kind(&server, "incident").await.unwrap()["modules"],
        json!([])
    );

    // Where it is enabled, the kind exists and its step scores.
    let first = server
        .create(json!({"kind": "risk", "title": "Single data centre", "fields": {"likelihood": 2, "consequence": 5}}))
        .await
        .unwrap();
    assert_eq!(first["id"], "RSK-1");
    assert_eq!(first["state"], "identified");
    assert_eq!(first["fields"]["score"], 10);
    let scored = server
        .create(json!({"kind": "risk", "title": "Vendor lock-in", "fields": {"likelihood": 4, "consequence": 5}}))
        .await
        .unwrap();
    assert_eq!(scored["id"], "RSK-2");
    assert_eq!(scored["fields"]["score"], 20);

    // Elsewhere it does not: hr has neither the kind, nor the field, nor the state.
    let elsewhere = server
        .post(
            "/api/v1/records",
            &json!({"kind": "risk", "domain": "hr", "title": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.body["code"], "unknown_kind", "{}", elsewhere.body);
    let hr = server.get("/api/v1/kinds?domain=hr").await.unwrap().body;
    let hr_change = hr["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "change")
        .unwrap();
    assert!(!states(hr_change).contains(&"scheduled"));
    assert_eq!(hr_change["modules"], json!([]));
    assert!(
        hr["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["name"] != "risk")
    );

    // The added fields are typed.
    let bad = server
        .post(
            "/api/v1/records",
            &json!({"kind": "risk", "title": "x", "fields": {"likelihood": 9}}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["code"], "invalid_fields");
    assert_eq!(bad.body["field"], "/fields/likelihood", "{}", bad.body);
    let bad_link = server
        .post(
            "/api/v1/records",
            &json!({"kind": "change", "title": "x", "fields": {"risk_id": "nope"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        bad_link.body["field"], "/fields/risk_id",
        "{}",
        bad_link.body
    );

    // The added state sits between assessment and implementation; the core's moves remain.
    let change = server
        .create(json!({"kind": "change", "title": "Second site", "fields": {"risk_id": "RSK-2"}}))
        .await
        .unwrap();
    let id = change["id"].as_str().unwrap().to_owned();
    for to in ["assess", "scheduled", "implement"] {
        let moved = server.transition(&id, to).await.unwrap();
        assert_eq!(moved["state"], to);
    }
    // The added kind's lifecycle is enforced like a core one.
    let illegal = server
        .post(
            "/api/v1/records/RSK-2/transitions",
            &json!({"to": "closed"}),
        )
        .await
        .unwrap();
    assert_eq!(illegal.status, StatusCode::CONFLICT);
    assert_eq!(illegal.body["allowed"], json!(["assessed"]));

    // A restart restores the catalog with the module; numbering continues.
    let server = server.restart().await.unwrap();
    assert!(kind(&server, "risk").await.is_some());
    let third = server
        .create(json!({"kind": "risk", "title": "Key person", "fields": {"likelihood": 3, "consequence": 3}}))
        .await
        .unwrap();
    assert_eq!(third["id"], "RSK-3");
    assert_eq!(third["fields"]["score"], 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_records_use_cannot_be_removed() {
    let server = TestServer::start().unwrap();
    assert_eq!(
        upload(&server, &risk_register()).await.status,
        StatusCode::CREATED
    );
    let enabled = server
        .post(
            "/api/v1/modules/risk-register/enable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    server
        .create(json!({"kind": "risk", "title": "r"}))
        .await
        .unwrap();
    let change = server
        .create(json!({"kind": "change", "title": "c"}))
        .await
        .unwrap();
    let id = change["id"].as_str().unwrap().to_owned();
    server.transition(&id, "assess").await.unwrap();
    server.transition(&id, "scheduled").await.unwrap();

    // An upgrade that drops the state a change is in is refused, and changes nothing.
    let upgrade = upload(&server, &risk_register_without_scheduled("1.1.0")).await;
    assert_eq!(upgrade.status, StatusCode::CONFLICT, "{}", upgrade.body);
    assert_eq!(upgrade.body["code"], "module_in_use");
    assert!(
        upgrade.body["detail"]
            .as_str()
            .unwrap()
            .contains("state scheduled"),
        "{}",
        upgrade.body
    );
    let modules = server.get("/api/v1/modules").await.unwrap().body;
    assert_eq!(modules["modules"][0]["version"], "1.0.0");
    assert!(states(&kind(&server, "change").await.unwrap()).contains(&"scheduled"));

    // Once no change is scheduled, the upgrade goes through and the state is gone.
    server.transition(&id, "implement").await.unwrap();
    let upgrade = upload(&server, &risk_register_without_scheduled("1.1.0")).await;
    assert_eq!(upgrade.status, StatusCode::CREATED, "{}", upgrade.body);
    assert!(!states(&kind(&server, "change").await.unwrap()).contains(&"scheduled"));
    let gone = server
        .post(
            &format!("/api/v1/records/{id}/transitions"),
            &json!({"to": "scheduled"}),
        )
        .await
        .unwrap();
    assert_eq!(gone.body["code"], "unknown_state", "{}", gone.body);

    // A module enabled somewhere cannot be removed: the answer names the domains.
    let removal = server
        .call(
            reqwest::Method::DELETE,
            "/api/v1/modules/risk-register",
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(removal.status, StatusCode::CONFLICT, "{}", removal.body);
    assert_eq!(removal.body["code"], "module_in_use");
    assert!(
        removal.body["detail"]
            .as_str()
            .unwrap()
            .contains("enabled in it"),
        "{}",
        removal.body
    );
    // Disabling it in it would orphan RSK-1 there.
    let disable = server
        .post(
            "/api/v1/modules/risk-register/disable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(disable.status, StatusCode::CONFLICT, "{}", disable.body);
    assert!(
        disable.body["detail"].as_str().unwrap().contains("RSK-1"),
        "{}",
        disable.body
    );
    assert!(kind(&server, "risk").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_additions_refuse_the_module_whole() {
    let server = TestServer::start().unwrap();
    assert_eq!(
        upload(&server, &risk_register()).await.status,
        StatusCode::CREATED
    );
    let cases = [
        (
            "[[fields]]\nkind = \"incident\"\n[fields.properties]\nimpact = { type = \"integer\" }\n",
            "module.toml: fields",
            "field impact of kind incident",
        ),
        (
            // Typed differently by the installed risk register.
            "[[fields]]\nkind = \"risk\"\n[fields.properties]\nscore = { type = \"string\" }\n",
            "module.toml: fields",
            "field score of kind risk",
        ),
        (
            "[[kinds]]\nname = \"asset\"\nprefix = \"INC\"\nprocess = \"operate\"\nstates = [{ name = \"new\", category = \"initial\" }]\n",
            "module.toml: kinds",
            "prefix INC",
        ),
        (
            "[[kinds]]\nname = \"risk\"\nprefix = \"RISK\"\nprocess = \"improve\"\nstates = [{ name = \"new\", category = \"initial\" }]\n",
            "module.toml: kinds",
            "kind risk is defined twice",
        ),
        (
            "[[kinds]]\nname = \"asset\"\nprefix = \"AST\"\nprocess = \"operate\"\nstates = [{ name = \"a\", category = \"initial\" }, { name = \"b\", category = \"initial\" }]\n",
            "module.toml: kinds[0].states",
            "exactly one initial state",
        ),
        (
            "[[states]]\nkind = \"change\"\nname = \"implement\"\ncategory = \"active\"\n",
            "module.toml: states",
            "already has a state implement",
        ),
        (
            "[[states]]\nkind = \"incident\"\nname = \"parked\"\ncategory = \"active\"\ntransitions = [{ from = \"new\", to = \"closed\" }]\n",
            "module.toml: states",
            "must lead into or out of",
        ),
        (
            "[[fields]]\nkind = \"asset\"\n[fields.properties]\ntag = { type = \"string\" }\n",
            "module.toml",
            "kind asset is not in the catalog",
        ),
    ];
    for (body, location, message) in cases {
        let reply = upload(&server, &manifest_only(body)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "module_invalid");
        assert_eq!(reply.body["field"], location, "{body}: {}", reply.body);
        assert!(
            reply.body["detail"].as_str().unwrap().contains(message),
            "{body}: {}",
            reply.body
        );
    }
    let modules = server.get("/api/v1/modules").await.unwrap().body;
    assert_eq!(modules["modules"].as_array().unwrap().len(), 1);
    assert_eq!(
        kind(&server, "incident").await.unwrap()["schema"]["properties"]["impact"]["type"],
        "string"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_disable_leaves_records_readable_and_read_only() {
    let server = TestServer::start().unwrap();
    assert_eq!(
        upload(&server, &risk_register()).await.status,
        StatusCode::CREATED
    );
    let in_it = json!({"domains": ["it"]});
    let enabled = server
        .post("/api/v1/modules/risk-register/enable", &in_it)
        .await
        .unwrap();
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    let risk = server
        .create(json!({"kind": "risk", "title": "Supplier fails", "fields": {"likelihood": 2, "consequence": 3}}))
        .await
        .unwrap();
    let risk = risk["id"].as_str().unwrap().to_owned();
    let scheduled = server
        .create(json!({"kind": "change", "title": "Patch the firewall"}))
        .await
        .unwrap();
    let scheduled = scheduled["id"].as_str().unwrap().to_owned();
    server.transition(&scheduled, "assess").await.unwrap();
    server.transition(&scheduled, "scheduled").await.unwrap();
    let plain = server
        .create(json!({"kind": "change", "title": "Rotate keys"}))
        .await
        .unwrap();
    let plain = plain["id"].as_str().unwrap().to_owned();

    // Without force the disable is refused, and says how many records it would leave.
    let refused = server
        .post("/api/v1/modules/risk-register/disable", &in_it)
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.body["code"], "module_in_use");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 record(s) of kind risk") && detail.contains("force=true"),
        "{detail}"
    );
    assert!(kind(&server, "risk").await.is_some());

    let forced = server
        .post("/api/v1/modules/risk-register/disable?force=true", &in_it)
        .await
        .unwrap();
    assert_eq!(forced.status, StatusCode::OK, "{}", forced.body);
    assert!(kind(&server, "risk").await.is_none());

    // Readable: the record, its history, and listings by its kind and state.
    let read = server
        .get(&format!("/api/v1/records/{risk}"))
        .await
        .unwrap();
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["fields"]["score"], 6);
    let history = server
        .get(&format!("/api/v1/records/{risk}/history"))
        .await
        .unwrap();
    assert_eq!(history.status, StatusCode::OK);
    assert_eq!(history.body["entries"].as_array().unwrap().len(), 1);
    let risks = server.list_all("kind=risk").await.unwrap();
    assert_eq!(risks.len(), 1);
    let in_scheduled = server
        .list_all("kind=change&state=scheduled")
        .await
        .unwrap();
    assert_eq!(in_scheduled[0]["id"], scheduled.as_str());

    // Read-only: every write names the module to enable again.
    let writes = [
        (
            reqwest::Method::PATCH,
            format!("/api/v1/records/{risk}"),
            json!({"title": "Supplier fails twice"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/records/{risk}/transitions"),
            json!({"to": "assessed"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/records/{risk}/comments"),
            json!({"body": "still there?", "visibility": "internal"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/records/{scheduled}/transitions"),
            json!({"to": "implement"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/records/{scheduled}/approvals"),
            json!({"decision": "approve"}),
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/records/{scheduled}"),
            json!({"title": "Patch the firewall now"}),
        ),
    ];
    for (method, path, body) in &writes {
        let reply = server
            .call(method.clone(), path, Some(body), &[])
            .await
            .unwrap();
        assert_eq!(
            (reply.status, &reply.body["code"], &reply.body["module"]),
            (
                StatusCode::CONFLICT,
                &json!("module_not_enabled"),
                &json!("risk-register")
            ),
            "{method} {path}: {}",
            reply.body
        );
    }
    let attach = server
        .client()
        .post(format!("{}/api/v1/records/{risk}/attachments", server.base))
        .header("content-type", "text/plain")
        .header("content-disposition", "attachment; filename=\"a.txt\"")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(attach.status(), StatusCode::CONFLICT);
    let unchanged = server
        .get(&format!("/api/v1/records/{risk}"))
        .await
        .unwrap();
    assert_eq!(unchanged.body["version"], read.body["version"]);
    // Records of what stays in force are untouched; new records of the kind are refused.
    let patched = server
        .patch(
            &format!("/api/v1/records/{plain}"),
            &json!({"title": "Rotate all keys"}),
        )
        .await
        .unwrap();
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let created = server
        .post(
            "/api/v1/records",
            &json!({"kind": "risk", "title": "another"}),
        )
        .await
        .unwrap();
    assert_eq!(created.body["code"], "unknown_kind", "{}", created.body);

    // The module cannot be removed while they exist: nothing could make them writable again.
    let removal = server
        .call(
            reqwest::Method::DELETE,
            "/api/v1/modules/risk-register",
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(removal.status, StatusCode::CONFLICT, "{}", removal.body);
    assert_eq!(removal.body["code"], "module_in_use");

    // Enabled again, they are writable again.
    let again = server
        .post("/api/v1/modules/risk-register/enable", &in_it)
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    for (method, path, body) in &writes[..2] {
        let reply = server
            .call(method.clone(), path, Some(body), &[])
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{method} {path}: {}",
            reply.body
        );
    }
    server.transition(&scheduled, "implement").await.unwrap();
}
