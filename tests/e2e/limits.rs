//! The documented limits (SECURITY.md), each at the limit and one past it.

use reqwest::{Method, StatusCode};
use serde_json::json;
use usm_engine::{ModuleFiles, bundle};
use usm_tests::{Reply, TestServer, guests, repo_path};

#[track_caller]
fn assert_refused(reply: &Reply, field: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.body["code"], "invalid_input", "{}", reply.body);
    assert_eq!(reply.body["field"], field, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn titles_comments_links_and_idempotency_keys_at_and_past_their_limits() {
    let server = TestServer::start().unwrap();
    // Titles count characters, not bytes: 500 two-byte characters pass.
    let title = |n: usize| "é".repeat(n);
    let at = server
        .post(
            "/api/v1/records",
            &json!({"kind": "task", "title": title(500)}),
        )
        .await
        .unwrap();
    assert_eq!(at.status, StatusCode::CREATED, "{}", at.body);
    let past = server
        .post(
            "/api/v1/records",
            &json!({"kind": "task", "title": title(501)}),
        )
        .await
        .unwrap();
    assert_refused(&past, "/title");

    let comment = |n: usize| json!({"to": "in_progress", "comment": "ü".repeat(n)});
    let past = server
        .post("/api/v1/records/TSK-1/transitions", &comment(10_001))
        .await
        .unwrap();
    assert_refused(&past, "/comment");
    let at = server
        .post("/api/v1/records/TSK-1/transitions", &comment(10_000))
        .await
        .unwrap();
    assert_eq!(at.status, StatusCode::OK, "{}", at.body);

    // 101 distinct targets; a record may link to 100 of them.
    for i in 0..101 {
        server
            .create(json!({"kind": "task", "title": format!("target {i}")}))
            .await
            .unwrap();
    }
    let links = |n: usize| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| json!({"rel": "relates_to", "to": format!("TSK-{}", i + 2)}))
            .collect()
    };
    let past = server
        .post(
            "/api/v1/records",
            &json!({"kind": "task", "title": "linked", "links": links(101)}),
        )
        .await
        .unwrap();
    assert_refused(&past, "/links");
    let at = server
        .post(
            "/api/v1/records",
            &json!({"kind": "task", "title": "linked", "links": links(100)}),
        )
        .await
        .unwrap();
    assert_eq!(at.status, StatusCode::CREATED, "{}", at.body);
    assert_eq!(at.body["links"].as_array().unwrap().len(), 100);

    let with_key = |key: String| {
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    "/api/v1/records",
                    Some(&json!({"kind": "task", "title": "keyed"})),
                    &[("idempotency-key", &key)],
                )
                .await
                .unwrap()
        }
    };
    let past = with_key("k".repeat(256)).await;
    assert_refused(&past, "Idempotency-Key");
    let at = with_key("k".repeat(255)).await;
    assert_eq!(at.status, StatusCode::CREATED, "{}", at.body);
    let again = with_key("k".repeat(255)).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], at.body["id"]);
}

/// A module of one WASM step and one rhai step, with the given budgets.
fn budgeted(version: &str, wasm: &str, rhai: &str) -> Vec<u8> {
    let manifest = format!(
        "id = \"budgets\"\nversion = \"{version}\"\nframework = \"custom\"\napi = \"^0.1\"\n\
         [[steps]]\nname = \"wasm\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nwasm = \"priority.wasm\"\n{wasm}\n\
         [steps.config.matrix]\nhigh = {{ high = \"P1\" }}\n\
         [[steps]]\nname = \"rhai\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nscript = \"priority.rhai\"\n{rhai}\n\
         [steps.config.matrix]\nhigh = {{ high = \"P1\" }}\n"
    );
    let files: ModuleFiles = [
        ("module.toml".to_owned(), manifest.into_bytes()),
        (
            "priority.wasm".to_owned(),
            std::fs::read(guests::PRIORITY).unwrap(),
        ),
        (
            "priority.rhai".to_owned(),
            std::fs::read(repo_path("scripts/examples/priority/priority.rhai")).unwrap(),
        ),
    ]
    .into();
    bundle::pack(&files).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_may_ask_for_10_s_and_256_mib_and_no_more() {
    let server = TestServer::start().unwrap();
    for (wasm, rhai, field, says) in [
        // A limit the server refuses is the manifest's key, not the step's file.
        (
            "timeout_ms = 10001",
            "",
            "module.toml: steps[0].timeout_ms",
            "maximum",
        ),
        (
            "memory_mib = 257",
            "",
            "module.toml: steps[0].memory_mib",
            "at most",
        ),
        (
            "",
            "timeout_ms = 10001",
            "module.toml: steps[1].timeout_ms",
            "between 1 and",
        ),
    ] {
        let reply = server
            .upload_module(budgeted("1.0.0", wasm, rhai))
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{wasm} {rhai}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "module_invalid");
        assert_eq!(reply.body["field"], field, "{wasm} {rhai}: {}", reply.body);
        assert!(
            reply.body["detail"].as_str().unwrap().contains(says),
            "{wasm} {rhai}: {}",
            reply.body
        );
    }
    let at = server
        .upload_module(budgeted(
            "1.0.0",
            "timeout_ms = 10000\nmemory_mib = 256",
            "timeout_ms = 10000",
        ))
        .await
        .unwrap();
    assert_eq!(at.status, StatusCode::CREATED, "{}", at.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_upload_may_be_64_mib_and_no_more() {
    let server = TestServer::start().unwrap();
    let limit = 64 * 1024 * 1024;
    // Not a bundle, but read whole: refused for what it is, not for its size.
    let at = server.upload_module(vec![0; limit]).await.unwrap();
    assert_eq!(at.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", at.body);
    assert_eq!(at.body["code"], "module_invalid");
    let past = server.upload_module(vec![0; limit + 1]).await.unwrap();
    assert_eq!(past.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", past.body);
    assert_eq!(past.body["code"], "payload_too_large");
    // A small upload that unpacks to one byte more than 64 MiB is refused as it unpacks.
    let manifest = b"id = \"bomb\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n";
    let files: ModuleFiles = [
        ("module.toml".to_owned(), manifest.to_vec()),
        (
            "padding.bin".to_owned(),
            vec![0; limit + 1 - manifest.len()],
        ),
    ]
    .into();
    let packed = bundle::pack(&files).unwrap();
    assert!(packed.len() < 1024 * 1024, "{} bytes packed", packed.len());
    let unpacked_past = server.upload_module(packed).await.unwrap();
    assert_eq!(
        unpacked_past.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unpacked_past.body
    );
    assert_eq!(unpacked_past.body["code"], "module_invalid");
    assert!(
        unpacked_past.body["detail"]
            .as_str()
            .unwrap()
            .contains(&limit.to_string()),
        "{}",
        unpacked_past.body
    );
}
