//! The server as an operator runs it: the real binary, its signals and its start-up checks.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_tests::{ADMIN_TOKEN, ServerProcess, TestServer};

fn config_file(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("usm.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nworkers = 2\nbundled_modules = false\ndefault_agreements = false\nadmin_token = {ADMIN_TOKEN:?}\nrate_limit_per_second = 0\n{extra}",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    config
}

fn logged(server: &ServerProcess, message: &str) -> Option<Value> {
    server
        .log()
        .into_iter()
        .find(|entry| entry["fields"]["message"].as_str() == Some(message))
}

/// A create whose body is sent in two parts, so the request is in flight between them.
struct SlowCreate {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowCreate {
    fn start(base: &str, title: &str) -> Self {
        let body = json!({"kind": "task", "title": title})
            .to_string()
            .into_bytes();
        let addr = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST /api/v1/records HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (first, rest) = body.split_at(body.len() / 2);
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(first).unwrap();
        stream.flush().unwrap();
        Self {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Sends the rest of the body and returns the response's status line and body.
    fn finish(mut self) -> (String, Value) {
        self.stream.write_all(&self.rest).unwrap();
        let mut response = String::new();
        self.stream.read_to_string(&mut response).unwrap();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .unwrap_or(Value::Null);
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_requests_in_flight_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "shutdown_timeout_secs = 20\n");
    let binary = env!("CARGO_BIN_EXE_usm-under-test");
    let server = ServerProcess::spawn(binary, &config).unwrap();
    let base = server.base.clone();
    // Three creates whose bodies are half sent: the server has accepted and is reading them.
    let in_flight: Vec<SlowCreate> = (0..3)
        .map(|i| SlowCreate::start(&base, &format!("in flight {i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while logged(&server, "finishing in-flight requests").is_none() {
        assert!(Instant::now() < deadline, "SIGTERM was not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new connection is no longer served once shutdown began.
    let refused = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "served after SIGTERM: {refused:?}");
    // The requests in flight finish, and are written.
    let mut created = Vec::new();
    for request in in_flight {
        let (status, body) = tokio::task::spawn_blocking(move || request.finish())
            .await
            .unwrap();
        assert!(status.contains(" 201 "), "{status} {body}");
        created.push(body["id"].as_str().unwrap().to_owned());
    }
    let exit = tokio::task::spawn_blocking(move || {
        let log = server.log();
        (server.wait_exit(Duration::from_secs(30)), log)
    });
    let (exit, _) = exit.await.unwrap();
    assert!(exit.unwrap().success(), "a clean exit after SIGTERM");

    let server = ServerProcess::spawn(binary, &config).unwrap();
    for id in &created {
        let reply = reqwest::Client::new()
            .get(format!("{}/api/v1/records/{id}", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{id} survived the shutdown");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_authentication_every_local_caller_is_an_admin_and_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "auth_required = false\n");
    let server = ServerProcess::spawn(env!("CARGO_BIN_EXE_usm-under-test"), &config).unwrap();
    let warning = server
        .log()
        .into_iter()
        .find(|e| {
            e["level"] == "WARN"
                && e["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("AUTHENTICATION IS OFF"))
        })
        .unwrap_or_else(|| panic!("no warning at start: {:?}", server.log()));
    assert!(warning["fields"]["addr"].is_string(), "{warning}");
    let created = reqwest::Client::new()
        .post(format!("{}/api/v1/records", server.base))
        .json(&json!({"kind": "task", "title": "no token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let record: Value = created.json().await.unwrap();
    assert_eq!(record["created_by"], "anonymous");
    let tokens = reqwest::Client::new()
        .get(format!("{}/api/v1/tokens", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(tokens.status(), StatusCode::OK, "an admin route, too");
}

#[test]
fn without_authentication_a_non_loopback_address_is_refused() {
    // TEST-NET-1 (RFC 5737) is on no interface of this machine: were the check missing, binding
    // would fail with another error, and nothing would listen beyond loopback. The wildcard
    // addresses are covered by the unit test of the check, which binds nothing.
    let addr = "192.0.2.1:0";
    let error = TestServer::start_with(move |config| {
        config.auth_required = false;
        config.addr = addr.into();
    })
    .err()
    .expect("started without authentication on a non-loopback address");
    let message = format!("{error:#}");
    assert!(
        message.contains("auth_required = false") && message.contains(addr),
        "{message}"
    );
}
