use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::TestServer;

#[tokio::test(flavor = "multi_thread")]
async fn incident_walks_its_lifecycle_with_history() {
    let server = TestServer::start().unwrap();
    let created = server
        .post(
            "/api/v1/records",
            &json!({"kind": "incident", "title": "Mail is down", "fields": {"impact": "high", "urgency": "high"}}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.header("location"), Some("/api/v1/records/INC-1"));
    assert_eq!(created.body["id"], "INC-1");
    assert_eq!(created.body["process"], "recover");
    assert_eq!(created.body["domain"], "it");
    assert_eq!(created.body["state"], "new");

    for to in ["in_progress", "on_hold", "in_progress", "resolved"] {
        server.transition("INC-1", to).await.unwrap();
    }
    // Reopen from resolved, then resolve and close for good.
    for to in ["in_progress", "resolved", "closed"] {
        server.transition("INC-1", to).await.unwrap();
    }
    let record = server.get("/api/v1/records/INC-1").await.unwrap();
    assert_eq!(record.body["state"], "closed");
    assert_eq!(record.etag_version(), Some(8));

    let history = server.get("/api/v1/records/INC-1/history").await.unwrap();
    let entries = history.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    assert_eq!(entries[0]["action"], "create");
    assert_eq!(
        entries[5]["changes"][0],
        json!({"path": "/state", "from": "resolved", "to": "in_progress"})
    );
    let page = server
        .get("/api/v1/records/INC-1/history?after=6")
        .await
        .unwrap();
    assert_eq!(page.body["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_merges_fields_and_if_match_guards_it() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "request", "title": "New laptop", "fields": {"request_type": "hardware", "due": "2026-12-01"}}))
        .await
        .unwrap();
    let patched = server
        .call(
            Method::PATCH,
            "/api/v1/records/REQ-1",
            Some(&json!({"title": "New laptop (14\")", "fields": {"due": null, "category": "laptops"}})),
            &[("if-match", "\"1\"")],
        )
        .await
        .unwrap();
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.etag_version(), Some(2));
    assert_eq!(
        patched.body["fields"],
        json!({"request_type": "hardware", "category": "laptops"})
    );

    let stale = server
        .call(
            Method::PATCH,
            "/api/v1/records/REQ-1",
            Some(&json!({"fields": {"category": "phones"}})),
            &[("if-match", "\"1\"")],
        )
        .await
        .unwrap();
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.body["code"], "version_mismatch");
    assert_eq!(stale.body["current_version"], 2);

    let stale_transition = server
        .call(
            Method::POST,
            "/api/v1/records/REQ-1/transitions",
            Some(&json!({"to": "in_progress"})),
            &[("if-match", "\"1\"")],
        )
        .await
        .unwrap();
    assert_eq!(stale_transition.status, StatusCode::PRECONDITION_FAILED);
    let record = server.get("/api/v1/records/REQ-1").await.unwrap();
    assert_eq!(record.body["fields"]["category"], "laptops");
    assert_eq!(record.body["state"], "new");
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_are_recorded_listed_and_in_history() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "change", "title": "Upgrade mail server", "fields": {"change_type": "normal"}}))
        .await
        .unwrap();
    let approval = server
        .post(
            "/api/v1/records/CHG-1/approvals",
            &json!({"decision": "approve", "comment": "CAB agreed"}),
        )
        .await
        .unwrap();
    assert_eq!(approval.status, StatusCode::CREATED, "{}", approval.body);
    assert_eq!(approval.body["seq"], 1);
    assert_eq!(approval.body["decision"], "approve");
    assert_eq!(approval.body["state"], "new");
    assert_eq!(approval.etag_version(), Some(2));

    let bad = server
        .post(
            "/api/v1/records/CHG-1/approvals",
            &json!({"decision": "maybe"}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let list = server.get("/api/v1/records/CHG-1/approvals").await.unwrap();
    assert_eq!(list.body["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["approvals"][0]["comment"], "CAB agreed");
    let history = server.get("/api/v1/records/CHG-1/history").await.unwrap();
    assert_eq!(history.body["entries"][1]["action"], "approval");
    assert_eq!(history.body["entries"][1]["approval"]["actor"], "admin");

    server.transition("CHG-1", "cancelled").await.unwrap();
    let late = server
        .post(
            "/api/v1/records/CHG-1/approvals",
            &json!({"decision": "reject"}),
        )
        .await
        .unwrap();
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(late.body["code"], "record_inactive");
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_filter_by_kind_state_and_domain_with_cursors() {
    let server = TestServer::start().unwrap();
    for i in 0..10 {
        let domain = ["it", "hr", "facilities"][i % 3];
        let kind = if i % 2 == 0 { "incident" } else { "task" };
        server
            .create(json!({"kind": kind, "domain": domain, "title": format!("r{i}")}))
            .await
            .unwrap();
    }
    server.transition("INC-1", "in_progress").await.unwrap();
    assert_eq!(server.list_all("").await.unwrap().len(), 10);
    let hr: Vec<_> = server.list_all("domain=hr").await.unwrap();
    assert_eq!(
        hr.iter()
            .map(|r| r["title"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["r1", "r4", "r7"]
    );
    let new_incidents = server.list_all("kind=incident&state=new").await.unwrap();
    assert_eq!(new_incidents.len(), 4);
    let in_progress_it = server
        .list_all("kind=incident&state=in_progress&domain=it")
        .await
        .unwrap();
    assert_eq!(in_progress_it.len(), 1);
    assert_eq!(in_progress_it[0]["id"], "INC-1");

    let first = server
        .get("/api/v1/records?kind=task&limit=2")
        .await
        .unwrap();
    assert_eq!(first.body["records"].as_array().unwrap().len(), 2);
    assert!(first.body["next_cursor"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn links_between_records_are_typed_and_checked() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "ci", "title": "mail01"}))
        .await
        .unwrap();
    let incident = server
        .create(json!({"kind": "incident", "title": "Mail down", "links": [{"rel": "affects", "to": "CI-1"}]}))
        .await
        .unwrap();
    assert_eq!(incident["links"], json!([{"rel": "affects", "to": "CI-1"}]));
    let problem = server
        .create(json!({"kind": "problem", "title": "Mail keeps failing"}))
        .await
        .unwrap();
    assert_eq!(problem["id"], "PRB-1");
    let linked = server
        .patch(
            "/api/v1/records/INC-1",
            &json!({"links": [{"rel": "affects", "to": "CI-1"}, {"rel": "parent", "to": "PRB-1"}]}),
        )
        .await
        .unwrap();
    assert_eq!(linked.status, StatusCode::OK, "{}", linked.body);
    assert_eq!(linked.body["links"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_sent_concurrently_creates_one_record() {
    let server = TestServer::start().unwrap();
    let body = json!({"kind": "request", "title": "Access to the HR share"});
    let replies = futures::future::join_all((0..10).map(|_| {
        server.call(
            Method::POST,
            "/api/v1/records",
            Some(&body),
            &[("idempotency-key", "req-7f3a")],
        )
    }))
    .await;
    let mut ids = Vec::new();
    for reply in replies {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        ids.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids, ["REQ-1"]);
    assert_eq!(server.list_all("").await.unwrap().len(), 1);

    let replayed = server
        .call(
            Method::POST,
            "/api/v1/records",
            Some(&body),
            &[("idempotency-key", "req-7f3a")],
        )
        .await
        .unwrap();
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    let reused = server
        .call(
            Method::POST,
            "/api/v1/records",
            Some(&json!({"kind": "request", "title": "Something else"})),
            &[("idempotency-key", "req-7f3a")],
        )
        .await
        .unwrap();
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["code"], "idempotency_key_reused");
    assert_eq!(server.list_all("").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_reads_and_approvals_on_the_version_seen() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "change", "title": "Patch the core switch"}))
        .await
        .unwrap();
    let read = |tag: &'static str| {
        let server = &server;
        async move {
            server
                .call(
                    Method::GET,
                    "/api/v1/records/CHG-1",
                    None,
                    &[("If-None-Match", tag)],
                )
                .await
        }
    };
    let unchanged = read("\"1\"").await.unwrap();
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.header("etag"), Some("\"1\""));
    assert_eq!(
        read("\"0\", W/\"1\"").await.unwrap().status,
        StatusCode::NOT_MODIFIED
    );
    let changed = read("\"7\"").await.unwrap();
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body["id"], "CHG-1");

    // An approval names the version its approver decided on; a stale one is refused.
    let approve = |tag: &'static str| {
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    "/api/v1/records/CHG-1/approvals",
                    Some(&json!({"decision": "approve"})),
                    &[("If-Match", tag)],
                )
                .await
        }
    };
    let stale = approve("\"5\"").await.unwrap();
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    assert_eq!(stale.body["current_version"], 1, "{}", stale.body);
    let approved = approve("\"1\"").await.unwrap();
    assert_eq!(approved.status, StatusCode::CREATED, "{}", approved.body);
    assert_eq!(approved.header("etag"), Some("\"2\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_requires_if_match_refuses_blind_changes() {
    let server = TestServer::start_with(|config| config.require_if_match = true).unwrap();
    let created = server
        .create(json!({"kind": "incident", "title": "Mail is down"}))
        .await
        .unwrap();
    assert_eq!(created["id"], "INC-1");
    let blind = [
        (
            Method::PATCH,
            "/api/v1/records/INC-1",
            json!({"title": "Mail is slow"}),
        ),
        (
            Method::POST,
            "/api/v1/records/INC-1/transitions",
            json!({"to": "in_progress"}),
        ),
        (
            Method::POST,
            "/api/v1/records/INC-1/approvals",
            json!({"decision": "approve"}),
        ),
    ];
    for (method, path, body) in &blind {
        let refused = server
            .call(method.clone(), path, Some(body), &[])
            .await
            .unwrap();
        assert_eq!(
            refused.status,
            StatusCode::PRECONDITION_REQUIRED,
            "{path}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "precondition_required");
    }
    let record = server.get("/api/v1/records/INC-1").await.unwrap();
    assert_eq!(record.body["version"], 1, "nothing was written");
    let (method, path, body) = &blind[1];
    let moved = server
        .call(method.clone(), path, Some(body), &[("If-Match", "\"1\"")])
        .await
        .unwrap();
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    // Creating needs no version: there is none to have read.
    let second = server
        .post(
            "/api/v1/records",
            &json!({"kind": "incident", "title": "Printer"}),
        )
        .await
        .unwrap();
    assert_eq!(second.status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_does_each_write_on_its_own_and_answers_each_in_order() {
    let server = TestServer::start().unwrap();
    let requester = server
        .token("rita", &["requester"], Some(&["it"]))
        .await
        .unwrap();
    let batch = json!({"operations": [
        {"op": "create", "record": {"kind": "incident", "title": "Mail is down"}, "key": "load-1"},
        {"op": "create", "record": {"kind": "incident", "title": "Printer", "fields": {"impact": "extreme"}}},
        {"op": "transition", "id": "INC-1", "to": "in_progress", "if_match": 1},
        {"op": "update", "id": "INC-1", "patch": {"title": "Mail is slow"}, "if_match": 1},
        {"op": "transition", "id": "INC-1", "to": "resolved",
         "fields": {"resolution_code": "restart", "resolution": "Restarted"}},
        {"op": "update", "id": "INC-404", "patch": {"title": "x"}}
    ]});
    let reply = server.post("/api/v1/records:batch", &batch).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = reply.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 422, 200, 412, 200, 404], "{}", reply.body);
    assert_eq!(results[0]["record"]["id"], "INC-1");
    assert_eq!(results[1]["problem"]["code"], "invalid_fields");
    assert_eq!(results[3]["problem"]["current_version"], 2);
    assert_eq!(results[4]["record"]["state"], "resolved");
    assert_eq!(results[4]["record"]["fields"]["resolution_code"], "restart");
    assert_eq!(results[5]["problem"]["code"], "record_not_found");
    // The refused writes changed nothing, the others stayed: one record, at version 3.
    let listed = server.list_all("kind=incident").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["version"], 3);
    assert_eq!(listed[0]["title"], "Mail is down");

    // A create's key makes a repeated batch safe.
    let again = server
        .post(
            "/api/v1/records:batch",
            &json!({"operations": [batch["operations"][0]]}),
        )
        .await
        .unwrap();
    assert_eq!(again.body["results"][0]["record"]["id"], "INC-1");
    assert_eq!(again.body["results"][0]["replayed"], true);
    // Each write has its caller's rights: a requester edits nothing.
    let edit = server
        .act(
            &requester,
            Method::POST,
            "/api/v1/records:batch",
            Some(json!({"operations": [
            {"op": "update", "id": "INC-1", "patch": {"title": "Mine"}}]})),
        )
        .await;
    assert_eq!(edit.status, StatusCode::OK);
    assert_eq!(edit.body["results"][0]["status"], 404, "{}", edit.body);
    // Bounds: empty, too many, and an unknown operation are refused whole.
    let too_many: Vec<Value> = (0..501)
        .map(|n| json!({"op": "create", "record": {"kind": "task", "title": format!("t{n}")}}))
        .collect();
    for body in [
        json!({"operations": []}),
        json!({"operations": too_many}),
        json!({"operations": [{"op": "delete", "id": "INC-1"}]}),
        json!({"operations": [
            {"op": "create", "record": {"kind": "task", "title": "first"}},
            {"op": "update", "id": "INC-1"}]}),
    ] {
        let refused = server.post("/api/v1/records:batch", &body).await.unwrap();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    }
    assert!(server.list_all("kind=task").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_links_to_the_next_one() {
    let server = TestServer::start().unwrap();
    for n in 0..3 {
        server
            .create(json!({"kind": "task", "title": format!("t{n}")}))
            .await
            .unwrap();
    }
    let mut path = "/api/v1/records?kind=task&limit=2".to_owned();
    let mut seen = Vec::new();
    loop {
        let page = server.get(&path).await.unwrap();
        assert_eq!(page.status, StatusCode::OK);
        seen.extend(
            page.body["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].clone()),
        );
        let Some(link) = page.header("link") else {
            assert!(page.body["next_cursor"].is_null(), "{}", page.body);
            break;
        };
        let cursor = page.body["next_cursor"].as_str().unwrap();
        assert!(link.ends_with("; rel=\"next\""), "{link}");
        assert!(
            link.contains("kind=task") && link.contains("limit=2"),
            "{link}"
        );
        assert!(link.contains(&format!("cursor={cursor}")), "{link}");
        path = link
            .trim_start_matches('<')
            .split(">;")
            .next()
            .unwrap()
            .to_owned();
    }
    assert_eq!(seen, [json!("TSK-1"), json!("TSK-2"), json!("TSK-3")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_is_told_the_right_ones() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "incident", "title": "Mail is down"}))
        .await
        .unwrap();
    for (method, path, allow) in [
        (Method::PUT, "/api/v1/records/INC-1", "GET, PATCH"),
        (Method::DELETE, "/api/v1/kinds", "GET"),
        (Method::GET, "/api/v1/records:batch", "POST"),
    ] {
        let reply = server.call(method.clone(), path, None, &[]).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(reply.body["code"], "method_not_allowed");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
}
