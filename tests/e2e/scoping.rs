//! Isolation between domains and owners beyond the role matrix: token identity, links that tell
//! nothing, catalog additions that exist only where a module is enabled, module removal and
//! workflow templates.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_engine::{Module, ModuleFiles, bundle};
use usm_tests::{ADMIN_TOKEN, Reply, TestServer, repo_path};

async fn upload(server: &TestServer, files: &ModuleFiles) -> Reply {
    let reply = server
        .upload_module(bundle::pack(files).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_create_answer_has_each_member_once() {
    let server = TestServer::start().unwrap();
    // A repeated "id" key is invalid for strict JSON parsers.
    let response = server
        .client()
        .post(format!("{}/api/v1/tokens", server.base))
        .json(&json!({"name": "ann", "roles": ["agent"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = response.text().await.unwrap();
    assert_eq!(text.matches("\"id\":").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_names_are_unique_and_the_servers_own_cannot_be_minted() {
    let server = TestServer::start().unwrap();
    let created = server
        .post(
            "/api/v1/tokens",
            &json!({"name": "hana", "roles": ["admin"], "domains": ["hr"]}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let hana_id = created.body["id"].as_str().unwrap().to_owned();
    let hana = created.body["token"].as_str().unwrap().to_owned();

    // Each name is checked before failing, so a failure lists every name wrongly minted.
    let mut wrong = Vec::new();
    let again = server
        .post(
            "/api/v1/tokens",
            &json!({"name": "hana", "roles": ["agent"], "domains": ["hr"]}),
        )
        .await
        .unwrap();
    if (again.status, &again.body["code"], &again.body["field"])
        != (
            StatusCode::CONFLICT,
            &json!("token_name_taken"),
            &json!("/name"),
        )
    {
        wrong.push(format!("a second hana: {} {}", again.status, again.body));
    }
    for name in ["system", "admin", "module:itil4", "automation:escalate"] {
        let reserved = server
            .post("/api/v1/tokens", &json!({"name": name, "roles": ["agent"]}))
            .await
            .unwrap();
        if (reserved.status, &reserved.body["field"]) != (StatusCode::BAD_REQUEST, &json!("/name"))
        {
            wrong.push(format!("{name}: {} {}", reserved.status, reserved.body));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // An actor is its token: the audit names the token's id beside its name.
    let minted = server
        .call_as(
            Some(&hana),
            Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": "hal", "roles": ["agent"], "domains": ["hr"]})),
        )
        .await
        .unwrap();
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.body);
    let audit = server.get("/api/v1/audit").await.unwrap().body;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "token.create" && e["actor"] == "hana")
        .cloned()
        .unwrap();
    assert_eq!(entry["actor_id"], hana_id.as_str());
    assert_eq!(entry["domains"], json!(["hr"]));
    let listed = server.get("/api/v1/tokens").await.unwrap().body;
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "hana", "hal"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_bootstrap_secret_replaces_the_admin_token() {
    let server = TestServer::start().unwrap();
    let rotated = "usm_rotated_admin_secret_0123456789abcdef";
    let server = server
        .restart_with(move |config| config.admin_token = Some(rotated.into()))
        .await
        .unwrap();
    let old = server
        .call_as(Some(ADMIN_TOKEN), Method::GET, "/api/v1/tokens", None)
        .await
        .unwrap();
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let new = server
        .call_as(Some(rotated), Method::GET, "/api/v1/tokens", None)
        .await
        .unwrap();
    assert_eq!(new.status, StatusCode::OK, "{}", new.body);
    let tokens = new.body["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{}", new.body);
    assert_eq!(tokens[0]["name"], "admin");
    assert!(tokens[0].get("domains").is_none());
}

/// Replaces `id` by `X` in a problem's detail, to compare two answers' shapes.
fn shape(reply: &Reply, id: &str) -> (StatusCode, Value) {
    let mut body = reply.body.clone();
    let detail = body["detail"].as_str().unwrap_or_default().replace(id, "X");
    body["detail"] = Value::String(detail);
    (reply.status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_to_an_unseen_record_answers_like_one_to_no_record() {
    let server = TestServer::start().unwrap();
    let incident = server
        .create(json!({"kind": "incident", "title": "Mail is down"}))
        .await
        .unwrap();
    assert_eq!(incident["id"], "INC-1");
    let hr_agent = server
        .token("hal", &["agent"], Some(&["hr"]))
        .await
        .unwrap();
    let rita = server
        .token("rita", &["requester"], Some(&["it"]))
        .await
        .unwrap();
    let create_linked = |token: String, domain: &'static str, to: &'static str| {
        let server = &server;
        async move {
            let body = json!({"kind": "task", "domain": domain, "title": "child",
                              "links": [{"rel": "parent", "to": to}]});
            server
                .call_as(Some(&token), Method::POST, "/api/v1/records", Some(&body))
                .await
                .unwrap()
        }
    };
    // Another domain's record, and someone else's record for a requester, are no record.
    for (token, domain) in [(hr_agent.clone(), "hr"), (rita.clone(), "it")] {
        let unseen = create_linked(token.clone(), domain, "INC-1").await;
        let missing = create_linked(token, domain, "INC-99").await;
        assert_eq!(
            unseen.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            unseen.body
        );
        assert_eq!(unseen.body["code"], "unknown_link_target");
        assert_eq!(shape(&unseen, "INC-1"), shape(&missing, "INC-99"));
    }
    // The same through a patch of an own record's links.
    let own = server
        .call_as(
            Some(&hr_agent),
            Method::POST,
            "/api/v1/records",
            Some(&json!({"kind": "task", "domain": "hr", "title": "own"})),
        )
        .await
        .unwrap();
    let own_id = own.body["id"].as_str().unwrap().to_owned();
    let patch = |to: &'static str| {
        let (server, token, path) = (
            &server,
            hr_agent.clone(),
            format!("/api/v1/records/{own_id}"),
        );
        async move {
            server
                .call_as(
                    Some(&token),
                    Method::PATCH,
                    &path,
                    Some(&json!({"links": [{"rel": "relates_to", "to": to}]})),
                )
                .await
                .unwrap()
        }
    };
    let (unseen, missing) = (patch("INC-1").await, patch("INC-99").await);
    assert_eq!(
        unseen.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unseen.body
    );
    assert_eq!(shape(&unseen, "INC-1"), shape(&missing, "INC-99"));
    // Nothing hangs on the incident, so nothing of hr's can hold up its closure.
    let backlinked = server.get("/api/v1/records?kind=task").await.unwrap().body;
    assert!(
        backlinked["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["links"].as_array().is_none_or(Vec::is_empty)),
        "{backlinked}"
    );
}

/// A module adding an `abandoned` incident state a requester may take from `new`.
fn abandon_module() -> ModuleFiles {
    let manifest = r#"
id = "abandon"
version = "1.0.0"
framework = "custom"
api = "^0.1"

[[states]]
kind = "incident"
name = "abandoned"
category = "inactive"
transitions = [{ from = "new", to = "abandoned", roles = ["requester"] }]
"#;
    [("module.toml".to_owned(), manifest.as_bytes().to_vec())].into()
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_additions_exist_only_where_the_module_is_enabled() {
    let server = TestServer::start().unwrap();
    upload(&server, &abandon_module()).await;
    let requester = |name: &str, domain: &str| {
        let body = json!({"name": name, "roles": ["requester"], "domains": [domain]});
        let server = &server;
        async move {
            let reply = server.post("/api/v1/tokens", &body).await.unwrap();
            reply.body["token"].as_str().unwrap().to_owned()
        }
    };
    let (rhea, rita) = (requester("rhea", "hr").await, requester("rita", "it").await);
    let abandon = |token: String, domain: &'static str| {
        let server = &server;
        async move {
            let created = server
                .call_as(
                    Some(&token),
                    Method::POST,
                    "/api/v1/records",
                    Some(&json!({"kind": "incident", "domain": domain, "title": "x"})),
                )
                .await
                .unwrap();
            assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
            let id = created.body["id"].as_str().unwrap();
            server
                .call_as(
                    Some(&token),
                    Method::POST,
                    &format!("/api/v1/records/{id}/transitions"),
                    Some(&json!({"to": "abandoned"})),
                )
                .await
                .unwrap()
        }
    };
    // Installed but enabled nowhere: the state exists nowhere.
    let refused = abandon(rhea.clone(), "hr").await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["code"], "unknown_state");

    let enabled = server
        .post(
            "/api/v1/modules/abandon/enable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    assert_eq!(abandon(rita, "it").await.status, StatusCode::OK);
    let still = abandon(rhea, "hr").await;
    assert_eq!(still.body["code"], "unknown_state", "{}", still.body);

    // Enabled somewhere, it cannot be removed; the answer names where.
    let removal = server
        .call(Method::DELETE, "/api/v1/modules/abandon", None, &[])
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
    // An it incident is abandoned, so it cannot leave it either.
    let disable = server
        .post(
            "/api/v1/modules/abandon/disable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(disable.status, StatusCode::CONFLICT, "{}", disable.body);
    assert!(
        disable.body["detail"]
            .as_str()
            .unwrap()
            .contains("abandoned"),
        "{}",
        disable.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_enabled_somewhere_is_disabled_before_it_is_removed() {
    let server = TestServer::start().unwrap();
    upload(&server, &abandon_module()).await;
    let domains = json!({"domains": ["hr", "facilities"]});
    let enabled = server
        .post("/api/v1/modules/abandon/enable", &domains)
        .await
        .unwrap();
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    let remove = || server.call(Method::DELETE, "/api/v1/modules/abandon", None, &[]);
    let refused = remove().await.unwrap();
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.body["code"], "module_in_use");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("enabled in facilities, hr"),
        "{}",
        refused.body
    );
    let disabled = server
        .post("/api/v1/modules/abandon/disable", &domains)
        .await
        .unwrap();
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    assert_eq!(remove().await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_replaces_a_template_only_with_a_version() {
    let server = TestServer::start().unwrap();
    upload(
        &server,
        &Module::read_dir(&repo_path("scripts/usm-core")).unwrap(),
    )
    .await;
    let mut document = server.get("/api/v1/workflows/incident").await.unwrap().body;
    document["name"] = json!("Our incident flow");
    let refused = server.post("/api/v1/workflows", &document).await.unwrap();
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.body["code"], "workflow_conflict");
    let template = server.get("/api/v1/workflows/incident").await.unwrap().body;
    assert_eq!(refused.body["field"], "/workflow-version");
    assert_ne!(template["name"], "Our incident flow");

    document["workflow-version"] = json!("2");
    let replaced = server.post("/api/v1/workflows", &document).await.unwrap();
    assert_eq!(replaced.status, StatusCode::CREATED, "{}", replaced.body);
    assert_eq!(replaced.body["source"], "imported");
    let now = server.get("/api/v1/workflows/incident").await.unwrap().body;
    assert_eq!(now["name"], "Our incident flow");
    assert_eq!(now["workflow-version"], "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_admin_sees_modules_only_in_its_own_domains() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();
    let global = server.get("/api/v1/modules/usm-core").await.unwrap();
    assert_eq!(global.status, StatusCode::OK, "{}", global.body);
    let everywhere = global.body["domains"].as_array().unwrap().clone();
    assert!(
        everywhere.len() > 1,
        "usm-core is enabled in several domains: {everywhere:?}"
    );
    let hana = server
        .token("hana", &["admin"], Some(&["hr"]))
        .await
        .unwrap();
    let listed = server
        .call_as(Some(&hana), Method::GET, "/api/v1/modules", None)
        .await
        .unwrap();
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let mut wrong = Vec::new();
    for module in listed.body["modules"].as_array().unwrap() {
        let domains = module["domains"].as_array().unwrap();
        if domains.iter().any(|d| d != "hr") {
            wrong.push(format!("{} shows {domains:?}", module["id"]));
        }
        if domains.is_empty() && module["status"] != "installed" {
            wrong.push(format!(
                "{} is {} with no hr domain",
                module["id"], module["status"]
            ));
        }
        let one = server
            .call_as(
                Some(&hana),
                Method::GET,
                &format!("/api/v1/modules/{}", module["id"].as_str().unwrap()),
                None,
            )
            .await
            .unwrap();
        if one.body["domains"] != module["domains"] {
            wrong.push(format!(
                "{} alone shows {}",
                module["id"], one.body["domains"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
