//! Strict input, clean errors: bodies are JSON objects, numbers are kept exactly or refused,
//! NUL is refused, errors below the handlers are problem documents too, guessing tokens is
//! rate-limited per client address, and a body that stops arriving times out.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::json;
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
    Reply::read(response).await.unwrap()
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
        r#"{"kind": "task", "title": "exact", "fields": {"extra": {"max": 18446744073709551615, "min": -9223372036854775808}}}"#,
    )
    .await;
    assert_eq!(exact.status, StatusCode::CREATED, "{}", exact.body);
    assert_eq!(exact.body["fields"]["extra"]["max"], json!(u64::MAX));
    assert_eq!(exact.body["fields"]["extra"]["min"], json!(i64::MIN));
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

#[tokio::test(flavor = "multi_thread")]
async fn oversized_targets_and_headers_are_problem_documents() {
    let server = TestServer::start().unwrap();
    let long = format!("/api/v1/records?x={}", "a".repeat(16 * 1024));
    for token in [Some(ADMIN_TOKEN), None] {
        // Before authentication: without a token the answer is the same.
        let reply = server
            .call_as(token, Method::GET, &long, None)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::URI_TOO_LONG, "{}", reply.body);
        assert!(is_problem(&reply), "{:?}", reply.headers);
        assert_eq!(reply.body["code"], "uri_too_long");
    }
    let filler = "b".repeat(40 * 1024);
    let reply = server
        .call(
            Method::GET,
            "/api/v1/records",
            None,
            &[("x-filler", &filler)],
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{}",
        reply.body
    );
    assert!(is_problem(&reply), "{:?}", reply.headers);
    assert_eq!(reply.body["code"], "headers_too_large");
    let names: Vec<String> = (0..65).map(|n| format!("x-h{n}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let reply = server
        .call(Method::GET, "/api/v1/records", None, &many)
        .await
        .unwrap();
    assert_eq!(reply.body["code"], "headers_too_large", "{}", reply.body);
    // Within the bounds a request goes through.
    let reply = server
        .call(
            Method::GET,
            &format!("/api/v1/records?kind={}", "t".repeat(10)),
            None,
            &many[..40],
        )
        .await
        .unwrap();
    assert_eq!(reply.body["code"], "unknown_kind", "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_bounds_are_settings() {
    let server = TestServer::start_with(|config| {
        config.max_url_bytes = 100;
        config.max_header_bytes = 1024;
    })
    .unwrap();
    let reply = server
        .get(&format!("/api/v1/records?x={}", "a".repeat(100)))
        .await
        .unwrap();
    assert_eq!(reply.body["code"], "uri_too_long", "{}", reply.body);
    let reply = server
        .call(
            Method::GET,
            "/api/v1/records",
            None,
            &[("x-filler", &"b".repeat(1024))],
        )
        .await
        .unwrap();
    assert_eq!(reply.body["code"], "headers_too_large", "{}", reply.body);
    assert_eq!(
        server.get("/api/v1/records").await.unwrap().status,
        StatusCode::OK
    );
}

/// Sends `head` as is and reads the answer until the server closes the connection.
fn raw_head(server: &TestServer, head: &[u8]) -> String {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_parsers_own_bounds_the_answer_is_empty() {
    let server = TestServer::start().unwrap();
    // More than 96 header lines: actix-http's parser answers before usm sees the request.
    let mut head = String::from("GET /api/v1/records HTTP/1.1\r\nHost: usm\r\n");
    for n in 0..100 {
        head.push_str(&format!("x-h{n}: 1\r\n"));
    }
    head.push_str("\r\n");
    let answer = raw_head(&server, head.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(!answer.contains("problem+json"), "{answer:?}");
    // A malformed request line: an empty 400.
    let answer = raw_head(&server, b"GET /a b c HTTP/1.1\r\nHost: usm\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(!answer.contains("problem+json"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_the_parsers_buffer_gets_its_empty_431() {
    let server = TestServer::start().unwrap();
    let head = format!(
        "GET /api/v1/records HTTP/1.1\r\nHost: usm\r\nx-filler: {}\r\n\r\n",
        "c".repeat(140 * 1024)
    );
    let answer = raw_head(&server, head.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(!answer.contains("problem+json"), "{answer:?}");
}
