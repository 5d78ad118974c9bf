//! USM-WIF 1.0.0 over HTTP: import in each media type, export in the document's media type (or
//! JSON when `Accept` prefers it), the must-ignore policy, the deprecated draft shape, each refusal
//! and the eight bundled templates.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

const TEMPLATE: &str = "application/x-usm-workflow-template";
const WORKFLOW: &str = "application/x-usm-workflow";
const JSON: &str = "application/json";

/// Sends `body` as it is, with the given `Content-Type` and `Accept` (none when `None`).
async fn send(
    server: &TestServer,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    accept: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut request = server
        .client()
        .request(method, format!("{}{path}", server.base));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    Reply::read(response).await.unwrap()
}

async fn import(server: &TestServer, content_type: &str, body: &Value) -> Reply {
    send(
        server,
        Method::POST,
        "/api/v1/workflows",
        Some(content_type),
        None,
        Some(body),
    )
    .await
}

async fn export(server: &TestServer, slug: &str, accept: Option<&str>) -> Reply {
    let path = format!("/api/v1/workflows/{slug}");
    send(server, Method::GET, &path, None, accept, None).await
}

/// A workflow with every member the format defines, and unknown ones at every level.
fn laptop() -> Value {
    json!({
        "format-version": "1.0.0",
        "type": "workflow",
        "source-system-type": "example.com:bpm",
        "source-system-version": "7.2",
        "source-system-instance": "5831e06b-d579-4a32-91f8-877a18ae7118",
        "workflow-version": "656e6bcd",
        "created-at": "2021-03-22T07:38:22.800+00:00",
        "created-by": {"id": "s393939", "name": "Ann", "x-badge": 7},
        "modified-at": "2021-03-22T07:38:22.800+00:00",
        "modified-by": {"id": "s393940", "email": "bo@example.com"},
        "process": "agree",
        "dynamicity": "static",
        "context": "it-infra",
        "slug": "new-laptop",
        "name": "Order a new laptop",
        "description": "For consultants and employees without accounts.",
        "x-vendor": {"colour": "purple", "tags": [1, "two", null, {"deep": [true]}]},
        "steps": [{
            "id": "accept", "sort-index": 0, "name": "Accept the request", "description": "Log it",
            "process": "agree", "owner": "desk",
            "activities": [{
                "id": "log", "sort-index": 1, "description": "Log the wish",
                "responsibilities": {"operator": ["R"], "manager": ["A", "I"]},
                "effort": {"hours": 2}
            }]
        }],
        "profiles": [
            {"id": "operator", "name": "Service desk operator", "x-ldap": "cn=ops"},
            {"id": "manager", "name": "Service manager"}
        ]
    })
}

fn refused(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{}",
        reply.body
    );
    assert_eq!(reply.body["code"], code, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_media_type_imports_and_export_answers_in_the_documents_own() {
    let server = TestServer::start().unwrap();
    let mut template = laptop();
    template["type"] = json!("workflow-template");
    template["slug"] = json!("laptop-template");
    let mut typeless = laptop();
    typeless.as_object_mut().unwrap().remove("type");
    typeless["slug"] = json!("laptop-typeless");
    let mut as_json = laptop();
    as_json["slug"] = json!("laptop-json");
    for (content_type, body, own) in [
        (WORKFLOW, laptop(), WORKFLOW),
        (TEMPLATE, template, TEMPLATE),
        (WORKFLOW, typeless, WORKFLOW),
        ("application/json; charset=utf-8", as_json, WORKFLOW),
    ] {
        let created = import(&server, content_type, &body).await;
        assert_eq!(
            created.status,
            StatusCode::CREATED,
            "{content_type}: {}",
            created.body
        );
        let slug = body["slug"].as_str().unwrap();
        assert_eq!(created.body["slug"], slug);
        let exported = export(&server, slug, None).await;
        assert_eq!(exported.status, StatusCode::OK, "{}", exported.body);
        assert_eq!(exported.header("content-type"), Some(own), "{slug}");
        assert_eq!(exported.header("vary"), Some("Accept"), "{slug}");
        assert_eq!(
            exported.body["type"],
            own.trim_start_matches("application/x-usm-")
        );
    }
    // A type the media type contradicts; a JSON document that does not say its type.
    let mut untyped = laptop();
    untyped.as_object_mut().unwrap().remove("type");
    for (content_type, body) in [(TEMPLATE, laptop()), (JSON, untyped)] {
        let reply = import(&server, content_type, &body).await;
        refused(&reply, StatusCode::UNPROCESSABLE_ENTITY, "workflow_invalid");
        assert_eq!(reply.body["field"], "/type", "{content_type}");
    }
    // Any other media type, or none, is refused before the body is looked at.
    for content_type in [Some("text/plain"), Some("application/xml"), None] {
        let reply = send(
            &server,
            Method::POST,
            "/api/v1/workflows",
            content_type,
            None,
            Some(&laptop()),
        )
        .await;
        refused(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn export_follows_accept_when_it_prefers_json() {
    let server = TestServer::start().unwrap();
    assert_eq!(
        import(&server, WORKFLOW, &laptop()).await.status,
        StatusCode::CREATED
    );
    for (accept, expected) in [
        ("application/json", JSON),
        ("application/x-usm-workflow", WORKFLOW),
        ("application/*", WORKFLOW),
        ("*/*", WORKFLOW),
        ("application/x-usm-workflow;q=0.5, application/json", JSON),
        (
            "application/json;q=0.5, application/x-usm-workflow",
            WORKFLOW,
        ),
        ("application/x-usm-workflow;q=0, */*", JSON),
        // Nothing acceptable: the header is disregarded rather than answered with 406.
        ("text/html", WORKFLOW),
    ] {
        let reply = export(&server, "new-laptop", Some(accept)).await;
        assert_eq!(reply.status, StatusCode::OK, "{accept}");
        assert_eq!(reply.header("content-type"), Some(expected), "{accept}");
        assert_eq!(reply.body["slug"], "new-laptop", "{accept}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_members_are_kept_and_exported_again() {
    let server = TestServer::start().unwrap();
    let created = import(&server, WORKFLOW, &laptop()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let exported = export(&server, "new-laptop", None).await;
    assert_eq!(exported.body, laptop());
    // A restart reads the stored document back the same.
    let server = server.restart().await.unwrap();
    assert_eq!(export(&server, "new-laptop", None).await.body, laptop());
    // What the audit entry records is the document as stored, unknown members included.
    let audit = server.get("/api/v1/audit").await.unwrap().body;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "workflow.import")
        .unwrap();
    assert_eq!(entry["after"]["x-vendor"]["colour"], "purple", "{entry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deprecated_draft_shape_still_imports_converted_to_1_0_0() {
    let server = TestServer::start().unwrap();
    let draft = json!({"usm_wif": "1.0-draft", "workflow": {
        "slug": "hr-offboarding", "name": "Offboarding", "number": 9, "trigger": "proactive",
        "steps": [{"name": "Revoke access", "process": "operate",
                   "activities": [{"name": "Disable accounts", "raci": {"it": "R", "hr-manager": "AC"}}]}]}});
    let created = import(&server, JSON, &draft).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let exported = export(&server, "hr-offboarding", None).await;
    assert_eq!(exported.header("content-type"), Some(TEMPLATE));
    assert_eq!(
        exported.body,
        json!({"format-version": "1.0.0", "type": "workflow-template", "slug": "hr-offboarding",
            "name": "Offboarding", "x-usm-number": 9, "x-usm-trigger": "proactive",
            "steps": [{"id": "1", "sort-index": 1, "name": "Revoke access", "process": "operate",
                "activities": [{"id": "1", "sort-index": 1, "description": "Disable accounts",
                    "responsibilities": {"it": ["R"], "hr-manager": ["A", "C"]}}]}],
            "profiles": [{"id": "hr-manager"}, {"id": "it"}]})
    );
    // The draft shape is not USM-WIF: a media type that claims USM-WIF does not take it.
    let reply = import(&server, TEMPLATE, &draft).await;
    refused(&reply, StatusCode::UNPROCESSABLE_ENTITY, "workflow_invalid");
    assert_eq!(reply.body["field"], "/format-version");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_broken_rule_is_refused_with_its_pointer_and_reason() {
    let server = TestServer::start().unwrap();
    type Edit = fn(&mut Value);
    let cases: &[(Edit, &str, &str)] = &[
        (
            |v| v["format-version"] = json!("2.0.0"),
            "/format-version",
            "unsupported_version",
        ),
        (
            |v| {
                v.as_object_mut().unwrap().remove("format-version");
            },
            "/format-version",
            "required",
        ),
        (|v| v["type"] = json!("process"), "/type", "unknown_value"),
        (
            |v| v["process"] = json!("deploy"),
            "/process",
            "unknown_value",
        ),
        (
            |v| v["dynamicity"] = json!("sometimes"),
            "/dynamicity",
            "unknown_value",
        ),
        (
            |v| v["steps"][0]["process"] = json!("deploy"),
            "/steps/0/process",
            "unknown_value",
        ),
        (|v| v["name"] = json!(7), "/name", "wrong_type"),
        (
            |v| {
                v.as_object_mut().unwrap().remove("name");
            },
            "/name",
            "required",
        ),
        (
            |v| v["slug"] = json!("new--laptop"),
            "/slug",
            "invalid_slug",
        ),
        (
            |v| v["workflow-version"] = json!(""),
            "/workflow-version",
            "invalid_length",
        ),
        (
            |v| v["created-at"] = json!("last tuesday"),
            "/created-at",
            "invalid_timestamp",
        ),
        (
            |v| v["steps"][0]["sort-index"] = json!(-1),
            "/steps/0/sort-index",
            "wrong_type",
        ),
        (
            |v| {
                v["steps"][0].as_object_mut().unwrap().remove("id");
            },
            "/steps/0/id",
            "required",
        ),
        (
            |v| {
                let s = v["steps"][0].clone();
                v["steps"].as_array_mut().unwrap().push(s);
            },
            "/steps/1/id",
            "duplicate_id",
        ),
        (
            |v| {
                let a = v["steps"][0]["activities"][0].clone();
                v["steps"][0]["activities"].as_array_mut().unwrap().push(a);
            },
            "/steps/0/activities/1/id",
            "duplicate_id",
        ),
        (
            |v| v["profiles"][1]["id"] = json!("operator"),
            "/profiles/1/id",
            "duplicate_id",
        ),
        (
            |v| v["steps"][0]["activities"][0]["responsibilities"]["manager"] = json!(["A", "X"]),
            "/steps/0/activities/0/responsibilities/manager/1",
            "invalid_letter",
        ),
        (
            |v| v["steps"][0]["activities"][0]["responsibilities"]["auditor"] = json!(["I"]),
            "/steps/0/activities/0/responsibilities/auditor",
            "unknown_profile",
        ),
        (
            |v| {
                v["profiles"] =
                    Value::Array((0..101).map(|i| json!({"id": format!("p{i}")})).collect())
            },
            "/profiles",
            "too_many",
        ),
    ];
    for (edit, field, reason) in cases {
        let mut body = laptop();
        edit(&mut body);
        let reply = import(&server, WORKFLOW, &body).await;
        refused(&reply, StatusCode::UNPROCESSABLE_ENTITY, "workflow_invalid");
        assert_eq!(
            (reply.body["field"].as_str(), reply.body["reason"].as_str()),
            (Some(*field), Some(*reason)),
            "{}",
            reply.body
        );
    }
    let not_json = server
        .client()
        .post(format!("{}/api/v1/workflows", server.base))
        .header("content-type", WORKFLOW)
        .body("{\"format-version\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    // Nothing refused was stored.
    assert_eq!(
        export(&server, "new-laptop", None).await.body["code"],
        "workflow_not_found"
    );
    let list = server.get("/api/v1/workflows").await.unwrap().body;
    assert_eq!(list["workflows"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_eight_bundled_templates_export_as_valid_1_0_0() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();
    let list = server.get("/api/v1/workflows").await.unwrap().body;
    let workflows = list["workflows"].as_array().unwrap();
    let mut numbers: Vec<u64> = workflows
        .iter()
        .map(|w| w["number"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
    for summary in workflows {
        assert_eq!(summary["source"], "module:usm-core");
        assert_eq!(summary["type"], "workflow-template");
        let slug = summary["slug"].as_str().unwrap();
        let exported = export(&server, slug, None).await;
        assert_eq!(exported.header("content-type"), Some(TEMPLATE), "{slug}");
        let document = &exported.body;
        assert_eq!(document["format-version"], "1.0.0", "{slug}");
        assert!(document.get("usm_wif").is_none() && document.get("workflow").is_none());
        let profiles: Vec<&str> = document["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        let steps = document["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{slug}");
        for step in steps {
            assert!(
                step["id"].is_string() && step["sort-index"].is_u64(),
                "{slug}: {step}"
            );
            for activity in step["activities"].as_array().unwrap() {
                for (profile, roles) in activity["responsibilities"].as_object().unwrap() {
                    assert!(profiles.contains(&profile.as_str()), "{slug}: {profile}");
                    assert!(
                        roles
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|r| ["R", "A", "C", "I"].contains(&r.as_str().unwrap()))
                    );
                }
            }
        }
        // Valid by the importer's rules too: it takes the export back, as a new version.
        let mut again = document.clone();
        again["workflow-version"] = json!("2");
        let reimported = import(&server, TEMPLATE, &again).await;
        assert_eq!(
            reimported.status,
            StatusCode::CREATED,
            "{slug}: {}",
            reimported.body
        );
        assert_eq!(export(&server, slug, None).await.body, again, "{slug}");
    }
    let change_flow = export(&server, "incident-change", None).await.body;
    let processes: Vec<&str> = change_flow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["process"].as_str().unwrap())
        .collect();
    assert_eq!(processes, ["recover", "recover", "change", "recover"]);
}
