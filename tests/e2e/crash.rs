//! After-step effects survive a kill -9 between the commit and the effect.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_tests::{ServerProcess, guests, module_dir};

const FOLLOW_UP: &str = r#"
id = "follow-up"
version = "0.1.0"
framework = "custom"
api = "^0.1"

[[steps]]
name = "follow-up"
hook = "create"
process = "recover"
phase = "after"
kinds = ["incident"]
wasm = "follow-up.wasm"
timeout_ms = 8000

[steps.config]
delay_ms = DELAY
"#;

fn config(dir: &std::path::Path, delay_ms: u64) -> std::path::PathBuf {
    let module = module_dir(
        &dir.join("module"),
        &FOLLOW_UP.replace("DELAY", &delay_ms.to_string()),
        &[("follow-up.wasm", guests::GUEST_FOLLOW_UP)],
    )
    .unwrap();
    let config = dir.join("usm.toml");
    let text = format!(
        "data_dir = {:?}\nworkers = 2\nbundled_modules = false\ndefault_agreements = false\nadmin_token = {:?}\n\n[[modules]]\npath = {:?}\ndomains = [\"it\"]\n",
        dir.join("data").display().to_string(),
        usm_tests::ADMIN_TOKEN,
        module.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn get(client: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let response = client
        .get(url)
        .bearer_auth(usm_tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_after_step_runs_after_a_kill_between_commit_and_effect() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    // The after-step waits 4 s before returning its effect: the kill lands in that window.
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_usm-under-test"),
        &config(dir.path(), 4000),
    )
    .unwrap();
    let created = client
        .post(format!("{}/api/v1/records", server.base))
        .bearer_auth(usm_tests::ADMIN_TOKEN)
        .json(&json!({"kind": "incident", "title": "Disk failing on db01"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let (status, _) = get(&client, format!("{}/api/v1/records/TSK-1", server.base)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the effect has not happened before the kill"
    );
    server.kill().unwrap();

    // Restart without the delay: the outbox replays the event from its cursor.
    let server =
        ServerProcess::spawn(env!("CARGO_BIN_EXE_usm-under-test"), &config(dir.path(), 0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let (status, body) = get(&client, format!("{}/api/v1/records/TSK-1", server.base)).await;
        if status == StatusCode::OK {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the after-step never ran after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(task["links"], json!([{"rel": "parent", "to": "INC-1"}]));
    assert_eq!(task["created_by"], "module:follow-up");
    let (_, incident) = get(&client, format!("{}/api/v1/records/INC-1", server.base)).await;
    assert_eq!(
        incident["version"], 1,
        "the incident itself was acknowledged once, unchanged"
    );
    // Exactly one follow-up, even if the event is seen again: once the after-step worker has
    // finished every event, nothing more will be created.
    usm_tests::settle(&server.base).await.unwrap();
    let (_, tasks) = get(&client, format!("{}/api/v1/records?kind=task", server.base)).await;
    assert_eq!(tasks["records"].as_array().unwrap().len(), 1);
}
