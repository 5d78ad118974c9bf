//! Strict input, clean errors: bodies are JSON objects, numbers are kept exactly or refused,
//! NUL is refused, errors below the handlers are problem documents too, guessing tokens is
//! rate-limited per client address, and a body that stops arriving times out.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{ADMIN_TOKEN, Reply, TestServer};

/// Sends `body` as is (not re-encoded by serde_json) as an admin.
async fn raw(server: &TestServer, method: Method, path: &str, body: &str) -> Reply {
    let response = server
        .client()
        .request(method, format!("{}{path}", server.base))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn is_problem(reply: &Reply) -> bool {
    reply.header("content-type") == Some("application/problem+json")
}

#[tokio::test(flavor = "multi_thread")]
async fn arrays_inexact_integers_and_nul_are_refused() {
    let server = TestServer::start().unwrap();
    let array = raw(
        &server,
        Method::POST,
        "/api/v1/records",
        r#"["task", null, "from an array"]"#,
    )
    .await;
    assert_eq!(array.status, StatusCode::BAD_REQUEST, "{}", array.body);
    assert!(is_problem(&array));

    for (body, field) in [
        (
            r#"{"kind": "task", "title": "big", "fields": {"n": 123456789012345678901234567890}}"#,
            "/fields/n",
        ),
        (
            r#"{"kind": "task", "title": "big", "fields": {"deep": [-99999999999999999999]}}"#,
            "/fields/deep/0",
        ),
        (
            r#"{"kind": "task", "title": "nul", "fields": {"note": "a\u0000b"}}"#,
            "/fields/note",
        ),
        (
            r#"{"kind": "task", "title": "nul", "fields": {"a\u0000b": 1}}"#,
            "/fields",
        ),
    ] {
        let reply = raw(&server, Method::POST, "/api/v1/records", body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.body
        );
        assert_eq!(reply.body["field"], field, "{body}");
    }
    assert!(
        server.list_all("").await.unwrap().is_empty(),
        "nothing was created"
    );

    // The extremes JSON integers can carry are kept exactly.
    let exact = raw(
        &server,
        Method::POST,
        "/api/v1/records",
        r#"{"kind": "task", "title": "exact", "fields": {"max": 18446744073709551615, "min": -9223372036854775808}}"#,
    )
    .await;
    assert_eq!(exact.status, StatusCode::CREATED, "{}", exact.body);
    assert_eq!(exact.body["fields"]["max"], json!(u64::MAX));
    assert_eq!(exact.body["fields"]["min"], json!(i64::MIN));
    let id = exact.body["id"].as_str().unwrap().to_owned();
    let patched = raw(
        &server,
        Method::PATCH,
        &format!("/api/v1/records/{id}"),
        r#"["renamed"]"#,
    )
    .await;
    assert_eq!(patched.status, StatusCode::BAD_REQUEST, "{}", patched.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_workflow_is_a_problem_document() {
    let server = TestServer::start().unwrap();
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let reply = raw(&server, Method::POST, "/api/v1/workflows", &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(is_problem(&reply), "{:?}", reply.headers);
    assert_eq!(reply.body["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_requests_are_rate_limited_per_address() {
    let server = TestServer::start_with(|config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 3;
    })
    .unwrap();
    for _ in 0..3 {
        let guess = server
            .call_as(Some("usm_guess"), Method::GET, "/api/v1/records", None)
            .await
            .unwrap();
        assert_eq!(guess.status, StatusCode::UNAUTHORIZED);
    }
    let limited = server
        .call_as(None, Method::GET, "/api/v1/records", None)
        .await
        .unwrap();
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    assert!(limited.header("retry-after").is_some());
    let admin = server
        .call_as(Some(ADMIN_TOKEN), Method::GET, "/api/v1/records", None)
        .await
        .unwrap();
    assert_eq!(
        admin.status,
        StatusCode::OK,
        "a valid token has its own budget"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_authenticated_body_times_out() {
    let server = TestServer::start_with(|config| config.body_timeout_secs = 1).unwrap();
    let addr = server.base.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST /api/v1/records HTTP/1.1\r\nHost: usm\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\":"
        )
        .unwrap();
        let mut answer = vec![0; 4096];
        let read = stream.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..read]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}
