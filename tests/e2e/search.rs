//! Queues and search over HTTP (issue 11, second part): queue filters and orders with keyset
//! cursors, saved queues with counts, full-text search with field filters, each within the
//! caller's rights, and an index that is rebuilt from the store when it is missing.

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

fn ids(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_problem(reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (status, &json!(code)),
        "{}",
        reply.body
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    if let Some(field) = field {
        assert_eq!(reply.body["field"], field, "{}", reply.body);
    }
}

async fn person(server: &TestServer, id: &str, domain: &str) {
    let reply = server
        .post(
            "/api/v1/people",
            &json!({"id": id, "name": format!("{id} Lee"), "domains": [domain]}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

async fn group(server: &TestServer, id: &str, domain: &str, members: &[&str]) {
    let reply = server
        .post(
            "/api/v1/groups",
            &json!({"id": id, "name": id, "domain": domain, "members": members}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

async fn person_token(server: &TestServer, person: &str, roles: &[&str]) -> String {
    let reply = server
        .post(
            "/api/v1/tokens",
            &json!({"name": format!("{person}-token"), "roles": roles, "person": person}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["token"].as_str().unwrap().to_owned()
}

async fn incident(server: &TestServer, title: &str, fields: Value) -> String {
    let created = server
        .create(json!({"kind": "incident", "title": title, "fields": fields}))
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_owned()
}

/// Two agents of `it` in group `network`, one in `desk`; an `hr` agent; a requester.
struct Desk {
    server: TestServer,
    ann: String,
    bo: String,
    hal: String,
    rob: String,
}

async fn desk() -> Desk {
    let server = TestServer::start().unwrap();
    for (id, domain) in [("ann", "it"), ("bo", "it"), ("hal", "hr")] {
        person(&server, id, domain).await;
    }
    group(&server, "network", "it", &["ann", "bo"]).await;
    group(&server, "desk", "it", &["bo"]).await;
    let ann = person_token(&server, "ann", &["agent"]).await;
    let bo = person_token(&server, "bo", &["agent"]).await;
    let hal = person_token(&server, "hal", &["agent"]).await;
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    Desk {
        server,
        ann,
        bo,
        hal,
        rob,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_filter_and_sort_from_the_index_within_the_callers_rights() {
    let Desk {
        server,
        ann,
        hal,
        rob,
        ..
    } = desk().await;
    let low = incident(
        &server,
        "Slow VPN",
        json!({"priority": "P3", "assignment_group": "network", "assignee": "ann"}),
    )
    .await;
    let high = incident(
        &server,
        "Core switch down",
        json!({"priority": "P1", "assignment_group": "network", "assignee": "bo"}),
    )
    .await;
    let middle = incident(
        &server,
        "Printer offline",
        json!({"priority": "P2", "assignment_group": "desk"}),
    )
    .await;
    let robs = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "title": "My laptop"})),
        )
        .await;
    assert_eq!(robs.status, StatusCode::CREATED, "{}", robs.body);
    let robs = robs.body["id"].as_str().unwrap().to_owned();
    let hr = server
        .create(json!({"kind": "incident", "domain": "hr", "title": "Payroll question"}))
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.settle().await.unwrap();

    let network = server
        .get("/api/v1/records?assignment_group=network&sort=priority")
        .await
        .unwrap();
    assert_eq!(ids(&network), [high.as_str(), low.as_str()]);
    let by_priority = server
        .get("/api/v1/records?domain=it&sort=-priority")
        .await
        .unwrap();
    assert_eq!(
        ids(&by_priority),
        [robs.as_str(), low.as_str(), middle.as_str(), high.as_str()],
        "no priority sorts after P3 ascending, so first descending"
    );
    let mine = server
        .act(&ann, Method::GET, "/api/v1/records?assignee=me", None)
        .await;
    assert_eq!(ids(&mine), [low.as_str()]);
    let p2 = server.get("/api/v1/records?priority=P2").await.unwrap();
    assert_eq!(ids(&p2), [middle.as_str()]);

    // Keyset pages walk the whole order once, newest first.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/records?sort=-created_at&limit=2".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = server.get(&path).await.unwrap();
        walked.extend(ids(&page));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        walked,
        [
            hr.as_str(),
            robs.as_str(),
            middle.as_str(),
            high.as_str(),
            low.as_str()
        ]
    );
    let first = server
        .get("/api/v1/records?sort=-created_at&limit=2")
        .await
        .unwrap();
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let elsewhere = server
        .get(&format!(
            "/api/v1/records?sort=priority&limit=2&cursor={cursor}"
        ))
        .await
        .unwrap();
    assert_problem(
        &elsewhere,
        StatusCode::BAD_REQUEST,
        "bad_cursor",
        Some("cursor"),
    );

    // Rights: a requester's queue holds their own records, an hr agent's only hr's.
    let robs_view = server
        .act(&rob, Method::GET, "/api/v1/records?sort=created_at", None)
        .await;
    assert_eq!(ids(&robs_view), [robs.as_str()]);
    let requested = server
        .act(&rob, Method::GET, "/api/v1/records?requester=me", None)
        .await;
    assert_eq!(ids(&requested), [robs.as_str()]);
    let hals_view = server
        .act(&hal, Method::GET, "/api/v1/records?sort=created_at", None)
        .await;
    assert_eq!(ids(&hals_view), [hr.as_str()]);
    let foreign = server
        .act(
            &hal,
            Method::GET,
            "/api/v1/records?domain=it&sort=created_at",
            None,
        )
        .await;
    assert_problem(&foreign, StatusCode::FORBIDDEN, "forbidden", None);

    // A record that left a queue is not shown there, even before the index has caught up:
    // every hit is checked against the store.
    let moved = server
        .patch(
            &format!("/api/v1/records/{low}"),
            &json!({"fields": {"assignee": "bo"}}),
        )
        .await
        .unwrap();
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    let mine = server
        .act(&ann, Method::GET, "/api/v1/records?assignee=me", None)
        .await;
    assert!(ids(&mine).is_empty(), "{}", mine.body);
    server.settle().await.unwrap();
    let since = moved.body["updated_at"].as_str().unwrap();
    let recent = server
        .get(&format!(
            "/api/v1/records?updated_since={}",
            since.replace('+', "%2B")
        ))
        .await
        .unwrap();
    assert_eq!(ids(&recent), [low.as_str()]);

    // Bad parameters: clear 4xx.
    for (query, status, code, field) in [
        (
            "sort=due",
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("sort"),
        ),
        (
            "sla=late",
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("sla"),
        ),
        (
            "updated_since=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("updated_since"),
        ),
        (
            "sort=created_at&kind=nope",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
            None,
        ),
        (
            "sort=created_at&limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("limit"),
        ),
        (
            "sort=created_at&cursor=xyz",
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            Some("cursor"),
        ),
    ] {
        let reply = server
            .get(&format!("/api/v1/records?{query}"))
            .await
            .unwrap();
        assert_problem(&reply, status, code, field);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sla_queues_show_breached_and_running_clocks() {
    let server = TestServer::start_with(|c| c.auto_close_after_business_minutes = 0.0).unwrap();
    let agreement = server
        .create(
            json!({"kind": "agreement", "title": "Two speeds", "fields": {
            "targets": {"P1": {"resolution_minutes": 0.01}, "P3": {"resolution_minutes": 600}},
            // P3 warns 3.6 s in and breaches ten hours in.
            "warning_percent": 0.01,
            "calendar": {"always": true}}}),
        )
        .await
        .unwrap();
    server
        .transition(agreement["id"].as_str().unwrap(), "active")
        .await
        .unwrap();
    let late = incident(&server, "Core down", json!({"priority": "P1"})).await;
    let fine = incident(&server, "Slow page", json!({"priority": "P3"})).await;
    server.settle().await.unwrap();
    // The P1 target is 0.6 s: wait until the record itself says it breached.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let record = server
            .get(&format!("/api/v1/records/{late}"))
            .await
            .unwrap();
        if record.body["sla"]["resolution"]["breached"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", record.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.settle().await.unwrap();
    let breached = server.get("/api/v1/records?sla=breached").await.unwrap();
    assert_eq!(ids(&breached), [late.as_str()]);
    let by_due = server
        .get("/api/v1/records?kind=incident&sort=sla_due")
        .await
        .unwrap();
    assert_eq!(ids(&by_due), [late.as_str(), fine.as_str()]);
    let running = server.get("/api/v1/records?sla=running").await.unwrap();
    assert_eq!(ids(&running), [late.as_str(), fine.as_str()]);
    // The warning needs no write: it is read against the clock at query time.
    loop {
        let warned = server.get("/api/v1/records?sla=warning").await.unwrap();
        if !ids(&warned).is_empty() {
            assert_eq!(
                ids(&warned),
                [fine.as_str()],
                "a breached clock is past warning"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", warned.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A resolved record's clock stops: it leaves the SLA queues.
    server.transition(&late, "in_progress").await.unwrap();
    server.transition(&late, "resolved").await.unwrap();
    server.settle().await.unwrap();
    let breached = server.get("/api/v1/records?sla=breached").await.unwrap();
    assert!(ids(&breached).is_empty(), "{}", breached.body);
    let running = server.get("/api/v1/records?sla=running").await.unwrap();
    assert_eq!(ids(&running), [fine.as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn saved_queues_are_their_groups_with_counts() {
    let Desk {
        server,
        ann,
        bo,
        rob,
        hal,
    } = desk().await;
    // carl is in no group of it.
    person(&server, "carl", "it").await;
    let carl = person_token(&server, "carl", &["agent"]).await;
    incident(
        &server,
        "Slow VPN",
        json!({"priority": "P3", "assignment_group": "network", "assignee": "ann"}),
    )
    .await;
    let high = incident(
        &server,
        "Core switch down",
        json!({"priority": "P1", "assignment_group": "network"}),
    )
    .await;
    incident(&server, "Printer", json!({"assignment_group": "desk"})).await;
    server.settle().await.unwrap();

    let made = server
        .act(
            &ann,
            Method::POST,
            "/api/v1/queues",
            Some(
                json!({"name": "Network open", "domain": "it", "owner": {"group": "network"},
            "filter": {"assignment_group": "network"}, "sort": "priority"}),
            ),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.body["count"], 2, "{}", made.body);
    assert_eq!(made.body["filter"]["domain"], "it");
    let id = made.body["id"].as_str().unwrap().to_owned();
    let mine = server
        .act(
            &ann,
            Method::POST,
            "/api/v1/queues",
            Some(json!({"name": "Mine", "domain": "it", "filter": {"assignee": "me"}})),
        )
        .await;
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.body);
    assert_eq!(mine.body["owner"], json!({"person": "ann"}));
    assert_eq!(mine.body["count"], 1);

    // A member of the group sees the group's queue, not ann's own; others see neither.
    let listed = server.act(&bo, Method::GET, "/api/v1/queues", None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let names: Vec<&str> = listed.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Network open"]);
    assert_eq!(listed.body["queues"][0]["count"], 2);
    let anns = server.act(&ann, Method::GET, "/api/v1/queues", None).await;
    assert_eq!(anns.body["queues"].as_array().unwrap().len(), 2);
    for token in [&carl, &hal] {
        let none = server.act(token, Method::GET, "/api/v1/queues", None).await;
        assert_eq!(none.body["queues"], json!([]), "{}", none.body);
        let hidden = server
            .act(token, Method::GET, &format!("/api/v1/queues/{id}"), None)
            .await;
        assert_problem(&hidden, StatusCode::NOT_FOUND, "queue_not_found", None);
    }
    let requester = server.act(&rob, Method::GET, "/api/v1/queues", None).await;
    assert_problem(&requester, StatusCode::FORBIDDEN, "forbidden", None);

    let page = server
        .act(
            &bo,
            Method::GET,
            &format!("/api/v1/queues/{id}/records?limit=1"),
            None,
        )
        .await;
    assert_eq!(ids(&page), [high.as_str()]);
    assert!(page.body["next_cursor"].is_string());

    // Bad input: nothing saved.
    for (token, body, status, code, field) in [
        (
            &carl,
            json!({"name": "Theirs", "domain": "it", "owner": {"group": "network"}}),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            &ann,
            json!({"name": "Nowhere", "domain": "it", "owner": {"group": "nowhere"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            Some("/owner/group"),
        ),
        (
            &ann,
            json!({"name": "For bo", "domain": "it", "owner": {"person": "bo"}}),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            &ann,
            json!({"name": "", "domain": "it"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("/name"),
        ),
        (
            &ann,
            json!({"name": "Mars", "domain": "mars"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("/domain"),
        ),
        (
            &ann,
            json!({"name": "Other", "domain": "it", "filter": {"domain": "hr"}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("/filter/domain"),
        ),
        (
            &ann,
            json!({"name": "Typo", "domain": "it", "filter": {"kind": "incidnet"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
            None,
        ),
        (
            &ann,
            json!({"name": "Sorted", "domain": "it", "sort": "due"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            None,
        ),
        (
            &rob,
            json!({"name": "Requester", "domain": "it"}),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
    ] {
        let reply = server
            .act(token, Method::POST, "/api/v1/queues", Some(body))
            .await;
        assert_problem(&reply, status, code, field);
    }
    let anns = server.act(&ann, Method::GET, "/api/v1/queues", None).await;
    assert_eq!(anns.body["queues"].as_array().unwrap().len(), 2);

    let gone = server
        .act(&bo, Method::DELETE, &format!("/api/v1/queues/{id}"), None)
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let again = server
        .act(&ann, Method::GET, &format!("/api/v1/queues/{id}"), None)
        .await;
    assert_problem(&again, StatusCode::NOT_FOUND, "queue_not_found", None);
}

async fn attach(server: &TestServer, id: &str, filename: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/records/{id}/attachments", server.base))
        .bearer_auth(usm_tests::ADMIN_TOKEN)
        .header(header::CONTENT_TYPE, "application/pdf")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        )
        .body(b"%PDF-1.7".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn comment(server: &TestServer, token: &str, id: &str, body: &str, visibility: &str) {
    let reply = server
        .act(
            token,
            Method::POST,
            &format!("/api/v1/records/{id}/comments"),
            Some(json!({"body": body, "visibility": visibility})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

fn search_path(q: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/api/v1/search").unwrap();
    url.query_pairs_mut().append_pair("q", q);
    format!("{}?{}", url.path(), url.query().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_words_of_titles_fields_comments_and_file_names_within_rights() {
    let Desk {
        server,
        ann,
        rob,
        hal,
        ..
    } = desk().await;
    let eve = server.token("eve", &["requester"], None).await.unwrap();
    let robs = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/records",
            Some(
                json!({"kind": "incident", "title": "Printer jams on floor 3",
            "fields": {"description": "The tray clicks loudly"}}),
            ),
        )
        .await;
    let robs = robs.body["id"].as_str().unwrap().to_owned();
    let eves = server
        .act(
            &eve,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "title": "Second printer is slow"})),
        )
        .await;
    let eves = eves.body["id"].as_str().unwrap().to_owned();
    comment(&server, &rob, &robs, "Toner smudges every page", "public").await;
    comment(&server, &ann, &robs, "Vendor contract expired", "internal").await;
    attach(&server, &robs, "invoice-2026.pdf").await;
    server.settle().await.unwrap();

    let find = |token: &str, q: &str| {
        let (server, token, path) = (&server, token.to_owned(), search_path(q));
        async move { server.act(&token, Method::GET, &path, None).await }
    };
    let both = find(&ann, "printers").await;
    let mut found = ids(&both);
    found.sort();
    assert_eq!(
        found,
        [robs.as_str(), eves.as_str()],
        "stemmed: printers finds printer"
    );
    assert_eq!(
        ids(&find(&ann, "clicks").await),
        [robs.as_str()],
        "text fields"
    );
    assert_eq!(
        ids(&find(&ann, "toner").await),
        [robs.as_str()],
        "public comments"
    );
    assert_eq!(
        ids(&find(&ann, "vendor").await),
        [robs.as_str()],
        "internal notes, for agents"
    );
    assert_eq!(
        ids(&find(&ann, "invoice").await),
        [robs.as_str()],
        "attachment names"
    );
    assert_eq!(
        ids(&find(&ann, "\"floor 3\" printer").await),
        [robs.as_str()]
    );
    assert!(
        ids(&find(&ann, "\"3 floor\"").await).is_empty(),
        "a phrase keeps its order"
    );
    assert_eq!(
        ids(&find(&ann, "printer kind:incident state:new").await).len(),
        2
    );
    assert!(ids(&find(&ann, "printer state:closed").await).is_empty());

    // Requesters find their own records, never through an internal note.
    assert_eq!(ids(&find(&rob, "printer").await), [robs.as_str()]);
    assert_eq!(ids(&find(&rob, "toner").await), [robs.as_str()]);
    assert!(ids(&find(&rob, "vendor").await).is_empty());
    assert!(ids(&find(&eve, "toner").await).is_empty());
    // Another domain's agent finds nothing of it.
    assert!(ids(&find(&hal, "printer").await).is_empty());

    // Ranked pages.
    let first = server
        .act(
            &ann,
            Method::GET,
            &format!("{}&limit=1", search_path("printer")),
            None,
        )
        .await;
    assert_eq!(ids(&first).len(), 1);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = server
        .act(
            &ann,
            Method::GET,
            &format!("{}&limit=1&cursor={cursor}", search_path("printer")),
            None,
        )
        .await;
    let mut both = [ids(&first), ids(&second)].concat();
    both.sort();
    assert_eq!(both, [robs.as_str(), eves.as_str()]);
    assert!(second.body.get("next_cursor").is_none(), "{}", second.body);
    let reused = server
        .act(
            &ann,
            Method::GET,
            &format!("{}&cursor={cursor}", search_path("toner")),
            None,
        )
        .await;
    assert_problem(
        &reused,
        StatusCode::BAD_REQUEST,
        "bad_cursor",
        Some("cursor"),
    );

    // Broken search text: a clear 400 naming the problem.
    for q in ["\"unclosed", "colour:blue", "kind:", "sla:late", "\"...\""] {
        let reply = find(&ann, q).await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "search_syntax", Some("q"));
    }
    let unknown = find(&ann, "printer kind:incidnet").await;
    assert_problem(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_kind",
        None,
    );
    let missing = server.act(&ann, Method::GET, "/api/v1/search", None).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_survives_a_restart_and_is_rebuilt_when_lost() {
    let server = TestServer::start().unwrap();
    let id = incident(&server, "Badge reader broken", json!({})).await;
    server.settle().await.unwrap();
    let found = server.get(&search_path("badge")).await.unwrap();
    assert_eq!(ids(&found), [id.as_str()]);

    let server = server.restart().await.unwrap();
    server.settle().await.unwrap();
    assert_eq!(
        ids(&server.get(&search_path("badge")).await.unwrap()),
        [id.as_str()]
    );

    // Without its directory, the index is rebuilt from the store: nothing in the outbox is new,
    // so only the rebuild can find the record.
    let server = server
        .restart_with(|config| {
            std::fs::remove_dir_all(config.data_dir.join("search")).unwrap();
        })
        .await
        .unwrap();
    server.settle().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = server.get(&search_path("badge")).await.unwrap();
        if reply.status == StatusCode::OK {
            assert_eq!(ids(&reply), [id.as_str()]);
            break;
        }
        assert_problem(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "search_rebuilding",
            None,
        );
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        ids(&server
            .get("/api/v1/records?sort=-created_at")
            .await
            .unwrap()),
        [id.as_str()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_shape_their_pages_with_sparse_fields_linked_records_and_a_total() {
    let Desk {
        server, ann, hal, ..
    } = desk().await;
    let problem = server
        .create(json!({"kind": "problem", "title": "Flapping uplink", "fields": {"description": "long text"}}))
        .await
        .unwrap();
    let change = server
        .create(json!({"kind": "change", "domain": "hr", "title": "New payroll export"}))
        .await
        .unwrap();
    for title in ["VPN drops", "VPN slow", "VPN gone"] {
        server
            .create(json!({"kind": "incident", "title": title,
                "fields": {"priority": "P2", "assignment_group": "network", "description": "many words"},
                "links": [{"rel": "caused_by", "to": problem["id"]},
                          {"rel": "relates_to", "to": change["id"]}]}))
            .await
            .unwrap();
    }
    server.settle().await.unwrap();

    // Sparse: only the named members of `fields`; the record's own members always come.
    let sparse = server
        .act(
            &ann,
            Method::GET,
            "/api/v1/records?kind=incident&fields=priority,assignment_group&count=true&limit=2&expand=links",
            None,
        )
        .await;
    assert_eq!(sparse.status, StatusCode::OK, "{}", sparse.body);
    let records = sparse.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    for record in records {
        assert_eq!(
            record["fields"],
            json!({"priority": "P2", "assignment_group": "network"})
        );
        assert!(record["id"].is_string() && record["version"] == 1 && record["state"] == "new");
    }
    // The total counts every match, not the page; the next page's link keeps the shaping.
    assert_eq!(sparse.body["total"], 3);
    let next = sparse.header("link").unwrap();
    assert!(
        next.contains("fields=priority%2Cassignment_group") && next.contains("expand=links"),
        "{next}"
    );
    // Linked records come once, trimmed alike; the hr change is beyond ann's domains, so it
    // stays a bare link and nothing tells whether it exists.
    let included = sparse.body["included"].as_array().unwrap();
    assert_eq!(included.len(), 1, "{included:?}");
    assert_eq!(included[0]["id"], problem["id"]);
    assert_eq!(included[0]["fields"], json!({}));
    assert_eq!(records[0]["links"][1]["to"], change["id"]);

    // Counts follow the caller's rights and the queue filters alike.
    let hals = server
        .act(&hal, Method::GET, "/api/v1/records?count=true", None)
        .await;
    assert_eq!(hals.body["total"], 1, "{}", hals.body);
    let none = server
        .get("/api/v1/records?priority=P1&count=true")
        .await
        .unwrap();
    assert_eq!(none.body["total"], 0);
    // Without the parameters, pages are as they were.
    let plain = server.get("/api/v1/records?kind=incident").await.unwrap();
    assert!(plain.body.get("total").is_none() && plain.body.get("included").is_none());
    assert_eq!(
        plain.body["records"][0]["fields"]["description"],
        "many words"
    );

    for (query, field) in [
        ("expand=history", "expand"),
        ("fields=", "fields"),
        (
            &*format!(
                "fields={}",
                (0..51)
                    .map(|i| format!("f{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "fields",
        ),
        ("count=maybe", "count"),
    ] {
        let refused = server
            .get(&format!("/api/v1/records?{query}"))
            .await
            .unwrap();
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            refused.body
        );
        if field != "count" {
            assert_eq!(refused.body["field"], field, "{query}");
        }
    }
}
