//! Every kind of bad input gets its problem document, and leaves the store unchanged.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

fn assert_problem(reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{code}"
    );
    assert_eq!(reply.body["code"], code, "{}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    assert_eq!(reply.body["type"], format!("urn:usm:problem:{code}"));
    assert!(reply.body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    if let Some(field) = field {
        assert_eq!(reply.body["field"], field, "{}", reply.body);
    }
}

async fn snapshot(server: &TestServer) -> (Vec<Value>, Value) {
    let records = server.list_all("").await.unwrap();
    let history = server
        .get("/api/v1/records/INC-1/history")
        .await
        .unwrap()
        .body;
    (records, history)
}

async fn raw_post(server: &TestServer, path: &str, body: &'static str) -> Reply {
    let response = server
        .client()
        .post(format!("{}{path}", server.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    Reply::read(response).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_input_has_its_problem_and_changes_nothing() {
    let server = TestServer::start_with(|config| config.max_body_bytes = 64 * 1024).unwrap();
    server
        .create(json!({"kind": "incident", "title": "Baseline", "fields": {"impact": "low"}}))
        .await
        .unwrap();
    let before = snapshot(&server).await;

    let malformed = raw_post(
        &server,
        "/api/v1/records",
        "{\"kind\": \"incident\", \"title\": ",
    )
    .await;
    assert_problem(&malformed, StatusCode::BAD_REQUEST, "malformed_json", None);

    let wrong_shape = raw_post(
        &server,
        "/api/v1/records",
        "{\"kind\": \"incident\", \"title\": 7}",
    )
    .await;
    assert_problem(&wrong_shape, StatusCode::BAD_REQUEST, "invalid_input", None);

    let unknown_member = server
        .post(
            "/api/v1/records",
            &json!({"kind": "incident", "title": "x", "colour": "red"}),
        )
        .await
        .unwrap();
    assert_problem(
        &unknown_member,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        None,
    );

    let unknown_kind = server
        .post("/api/v1/records", &json!({"kind": "ticket", "title": "x"}))
        .await
        .unwrap();
    assert_problem(
        &unknown_kind,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_kind",
        Some("/kind"),
    );

    let schema = server
        .post(
            "/api/v1/records",
            &json!({"kind": "incident", "title": "x", "fields": {"urgency": "yesterday"}}),
        )
        .await
        .unwrap();
    assert_problem(
        &schema,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_fields",
        Some("/fields/urgency"),
    );
    assert_eq!(schema.body["errors"][0]["field"], "/fields/urgency");

    let empty_title = server
        .post(
            "/api/v1/records",
            &json!({"kind": "incident", "title": "  "}),
        )
        .await
        .unwrap();
    assert_problem(
        &empty_title,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("/title"),
    );

    let unknown_domain = server
        .post(
            "/api/v1/records",
            &json!({"kind": "incident", "title": "x", "domain": "mars"}),
        )
        .await
        .unwrap();
    assert_problem(
        &unknown_domain,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("/domain"),
    );

    let dangling_link = server
        .post("/api/v1/records", &json!({"kind": "incident", "title": "x", "links": [{"rel": "affects", "to": "CI-404"}]}))
        .await
        .unwrap();
    assert_problem(
        &dangling_link,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_link_target",
        Some("/links/0/to"),
    );

    let oversize = server
        .post("/api/v1/records", &json!({"kind": "incident", "title": "x", "fields": {"description": "a".repeat(100_000)}}))
        .await
        .unwrap();
    assert_problem(
        &oversize,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );

    let wrong_type = server
        .client()
        .post(format!("{}/api/v1/records", server.base))
        .header("content-type", "text/plain")
        .body("kind=incident")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let unknown_state = server
        .post(
            "/api/v1/records/INC-1/transitions",
            &json!({"to": "teleported"}),
        )
        .await
        .unwrap();
    assert_problem(
        &unknown_state,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_state",
        Some("/to"),
    );

    let illegal = server
        .post(
            "/api/v1/records/INC-1/transitions",
            &json!({"to": "closed"}),
        )
        .await
        .unwrap();
    assert_problem(&illegal, StatusCode::CONFLICT, "illegal_transition", None);
    assert_eq!(illegal.body["allowed"], json!(["in_progress", "cancelled"]));

    let schema_patch = server
        .patch("/api/v1/records/INC-1", &json!({"fields": {"impact": 5}}))
        .await
        .unwrap();
    assert_problem(
        &schema_patch,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_fields",
        Some("/fields/impact"),
    );

    let state_patch = server
        .patch("/api/v1/records/INC-1", &json!({"state": "closed"}))
        .await
        .unwrap();
    assert_problem(&state_patch, StatusCode::BAD_REQUEST, "invalid_input", None);

    let bad_if_match = server
        .call(
            Method::PATCH,
            "/api/v1/records/INC-1",
            Some(&json!({"title": "y"})),
            &[("if-match", "yesterday")],
        )
        .await
        .unwrap();
    assert_problem(
        &bad_if_match,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("If-Match"),
    );

    for path in [
        "/api/v1/records/INC-999",
        "/api/v1/records/INC-999/history",
        "/api/v1/records/not-an-id",
    ] {
        let missing = server.get(path).await.unwrap();
        assert_problem(&missing, StatusCode::NOT_FOUND, "record_not_found", None);
    }
    let missing_transition = server
        .post(
            "/api/v1/records/INC-999/transitions",
            &json!({"to": "in_progress"}),
        )
        .await
        .unwrap();
    assert_problem(
        &missing_transition,
        StatusCode::NOT_FOUND,
        "record_not_found",
        None,
    );

    let bad_cursor = server
        .get("/api/v1/records?cursor=not-a-cursor")
        .await
        .unwrap();
    assert_problem(
        &bad_cursor,
        StatusCode::BAD_REQUEST,
        "bad_cursor",
        Some("cursor"),
    );
    let page = server
        .get("/api/v1/records?kind=incident&limit=1")
        .await
        .unwrap();
    assert!(page.body["next_cursor"].is_null(), "one record, one page");
    server
        .create(json!({"kind": "task", "title": "t1"}))
        .await
        .unwrap();
    server
        .create(json!({"kind": "task", "title": "t2"}))
        .await
        .unwrap();
    let tasks = server
        .get("/api/v1/records?kind=task&limit=1")
        .await
        .unwrap();
    let cursor = tasks.body["next_cursor"].as_str().unwrap();
    let foreign = server
        .get(&format!("/api/v1/records?kind=incident&cursor={cursor}"))
        .await
        .unwrap();
    assert_problem(
        &foreign,
        StatusCode::BAD_REQUEST,
        "bad_cursor",
        Some("cursor"),
    );

    let unknown_filter_state = server
        .get("/api/v1/records?kind=incident&state=flying")
        .await
        .unwrap();
    assert_problem(
        &unknown_filter_state,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_state",
        None,
    );
    let bad_limit = server.get("/api/v1/records?limit=100000").await.unwrap();
    assert_problem(
        &bad_limit,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("limit"),
    );
    let bad_query = server.get("/api/v1/records?limit=ten").await.unwrap();
    assert_problem(&bad_query, StatusCode::BAD_REQUEST, "invalid_input", None);

    let no_route = server.get("/api/v1/nothing-here").await.unwrap();
    assert_problem(&no_route, StatusCode::NOT_FOUND, "route_not_found", None);
    let wrong_method = server
        .call(Method::DELETE, "/api/v1/records/INC-1", None, &[])
        .await
        .unwrap();
    assert_problem(
        &wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );

    let (records, history) = snapshot(&server).await;
    assert_eq!(
        records.len(),
        before.0.len() + 2,
        "only the two tasks were created"
    );
    assert_eq!(records[0], before.0[0], "INC-1 is untouched");
    assert_eq!(history, before.1, "INC-1's history is untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_describes_every_route_and_health_answers() {
    let server = TestServer::start().unwrap();
    let health = server.get("/healthz").await.unwrap();
    assert_eq!(health.body, json!({"status": "ok"}));
    let spec = server.get("/openapi.json").await.unwrap();
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec.body["paths"].as_object().unwrap();
    for path in [
        "/api/v1/records",
        "/api/v1/records/{id}",
        "/api/v1/records/{id}/transitions",
        "/api/v1/records/{id}/history",
        "/api/v1/records/{id}/approvals",
        "/healthz",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the spec");
    }
    assert!(spec.body["components"]["schemas"]["Problem"].is_object());
}
