//! A record's conversation over HTTP: public comments and internal notes, who reads and writes
//! which, comments as history, safe Markdown, and a requester's reply ending a hold.

use reqwest::{Method, StatusCode};
use serde_json::json;
use usm_tests::TestServer;

#[tokio::test(flavor = "multi_thread")]
async fn requesters_read_and_write_the_public_conversation_agents_all_of_it() {
    let server = TestServer::start().unwrap();
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    let eve = server.token("eve", &["requester"], None).await.unwrap();
    let ann = server.token("ann", &["agent"], None).await.unwrap();
    let hr_agent = server
        .token("hal", &["agent"], Some(&["hr"]))
        .await
        .unwrap();
    let created = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "title": "VPN drops"})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/records/{id}/comments");

    let asked = server
        .act(
            &rob,
            Method::POST,
            &path,
            Some(json!({"body": "It drops **every** hour."})),
        )
        .await;
    assert_eq!(asked.status, StatusCode::CREATED, "{}", asked.body);
    assert_eq!(
        asked.body["html"],
        "<p>It drops <strong>every</strong> hour.</p>\n"
    );
    assert_eq!(asked.body["author"], "rob");
    let note = server.act(&ann,
        Method::POST,
        &path,
        Some(
            json!({"body": "Probably the DHCP lease <script>x</script>", "visibility": "internal"}),
        ),
    )
    .await;
    assert_eq!(note.status, StatusCode::CREATED, "{}", note.body);
    assert!(
        !note.body["html"].as_str().unwrap().contains("<script"),
        "{}",
        note.body
    );
    let answer = server
        .act(
            &ann,
            Method::POST,
            &path,
            Some(json!({"body": "Please try the new client."})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);

    // The requester reads the public thread and its history without the note.
    let thread = server.act(&rob, Method::GET, &path, None).await;
    let bodies: Vec<&str> = thread.body["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["It drops **every** hour.", "Please try the new client."]
    );
    let history = server
        .act(
            &rob,
            Method::GET,
            &format!("/api/v1/records/{id}/history"),
            None,
        )
        .await;
    assert!(
        !history.body.to_string().contains("DHCP"),
        "{}",
        history.body
    );
    // Agents read all of it; the history entry names author, time and visibility.
    let thread = server.act(&ann, Method::GET, &path, None).await;
    assert_eq!(thread.body["comments"].as_array().unwrap().len(), 3);
    let history = server
        .act(
            &ann,
            Method::GET,
            &format!("/api/v1/records/{id}/history"),
            None,
        )
        .await;
    let entry = history.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["visibility"] == "internal")
        .unwrap()
        .clone();
    assert_eq!(
        (&entry["action"], &entry["actor"]),
        (&json!("comment"), &json!("ann")),
        "{entry}"
    );

    // Refused: a requester's internal note, another requester, another domain's agent, bad bodies.
    for (token, body, status) in [
        (
            &rob,
            json!({"body": "x", "visibility": "internal"}),
            StatusCode::FORBIDDEN,
        ),
        (&eve, json!({"body": "x"}), StatusCode::NOT_FOUND),
        (&hr_agent, json!({"body": "x"}), StatusCode::NOT_FOUND),
        (&ann, json!({"body": "   "}), StatusCode::BAD_REQUEST),
        (
            &ann,
            json!({"body": "x".repeat(10_001)}),
            StatusCode::BAD_REQUEST,
        ),
        (
            &ann,
            json!({"body": "x", "visibility": "secret"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let reply = server
            .act(token, Method::POST, &path, Some(body.clone()))
            .await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
    }
    let thread = server.act(&ann, Method::GET, &path, None).await;
    assert_eq!(
        thread.body["comments"].as_array().unwrap().len(),
        3,
        "nothing refused was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requesters_reply_ends_a_hold_awaiting_them() {
    let server = TestServer::start().unwrap();
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    let created = server
        .act(
            &rob,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "request", "title": "A new laptop"})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    server.transition(&id, "in_progress").await.unwrap();
    server.transition(&id, "on_hold").await.unwrap();
    server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"hold_reason": "awaiting_customer"}}),
        )
        .await
        .unwrap();
    // An agent's comment does not end it; the requester's reply does.
    server
        .post(
            &format!("/api/v1/records/{id}/comments"),
            &json!({"body": "Which model?"}),
        )
        .await
        .unwrap();
    assert_eq!(
        server
            .get(&format!("/api/v1/records/{id}"))
            .await
            .unwrap()
            .body["state"],
        "on_hold"
    );
    let reply = server
        .act(
            &rob,
            Method::POST,
            &format!("/api/v1/records/{id}/comments"),
            Some(json!({"body": "The 14-inch one"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let record = server
        .get(&format!("/api/v1/records/{id}"))
        .await
        .unwrap()
        .body;
    assert_eq!(record["state"], "in_progress", "{record}");
    assert!(record["fields"].get("hold_reason").is_none(), "{record}");
    // Another hold reason is not ended by a reply.
    server.transition(&id, "on_hold").await.unwrap();
    server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"hold_reason": "awaiting_supplier"}}),
        )
        .await
        .unwrap();
    server
        .act(
            &rob,
            Method::POST,
            &format!("/api/v1/records/{id}/comments"),
            Some(json!({"body": "Any news?"})),
        )
        .await;
    assert_eq!(
        server
            .get(&format!("/api/v1/records/{id}"))
            .await
            .unwrap()
            .body["state"],
        "on_hold"
    );
}
