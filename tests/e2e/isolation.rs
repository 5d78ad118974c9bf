//! A runaway step in one domain's pipeline fails only that domain's writes.

use reqwest::StatusCode;
use serde_json::json;
use usm_server::ModuleConfig;
use usm_tests::{TestServer, guests, module_dir};

const LOOPER: &str = r#"
id = "runaway"
version = "0.1.0"
framework = "custom"
api = "^0.1"

[[steps]]
name = "spin"
hook = "create"
process = "recover"
phase = "before"
wasm = "looper.wasm"
timeout_ms = 50
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_step_in_hr_does_not_touch_it() {
    let modules = tempfile::tempdir().unwrap();
    let looper = module_dir(
        &modules.path().join("runaway"),
        LOOPER,
        &[("looper.wasm", guests::GUEST_LOOPER)],
    )
    .unwrap();
    let server = TestServer::start_with(move |config| {
        config.modules = vec![ModuleConfig {
            path: looper,
            domains: vec!["hr".into()],
            grant: vec![],
        }];
    })
    .unwrap();

    let create = |domain: &'static str, i: usize| {
        let server = &server;
        async move {
            let body =
                json!({"kind": "incident", "domain": domain, "title": format!("{domain} {i}")});
            server.post("/api/v1/records", &body).await
        }
    };
    let hostile = (0..4).map(|i| create("hr", i));
    let friendly = (0..20).map(|i| create("it", i));
    let (hostile, friendly) = tokio::join!(
        futures::future::join_all(hostile),
        futures::future::join_all(friendly)
    );
    for reply in hostile {
        let reply = reply.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            reply.body
        );
        assert_eq!(reply.body["code"], "step_failed");
        assert_eq!(reply.body["module"], "runaway");
        assert_eq!(reply.body["step"], "spin");
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .contains("time budget"),
            "{}",
            reply.body
        );
    }
    for reply in friendly {
        assert_eq!(reply.unwrap().status, StatusCode::CREATED);
    }
    assert_eq!(
        server.list_all("domain=hr").await.unwrap().len(),
        0,
        "no hr record was written"
    );
    assert_eq!(server.list_all("domain=it").await.unwrap().len(), 20);
}
