use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::json;
use usm_tests::TestServer;

const CLIENTS: usize = 32;
const UPDATES_PER_CLIENT: usize = 4;

/// 32 clients update one record with If-Match and retry on 412: every acknowledged update is in
/// history exactly once, versions strictly increase, nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_conditional_updates_lose_nothing() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "task", "title": "Hot record"}))
        .await
        .unwrap();

    let clients = (0..CLIENTS).map(|client| {
        let server = &server;
        async move {
            let mut acknowledged = Vec::new();
            for n in 0..UPDATES_PER_CLIENT {
                let key = format!("c{client}_{n}");
                let mut conflicts = 0;
                loop {
                    let current = server.get("/api/v1/records/TSK-1").await.unwrap();
                    let etag = current.header("etag").unwrap().to_owned();
                    let reply = server
                        .call(
                            Method::PATCH,
                            "/api/v1/records/TSK-1",
                            Some(&json!({"fields": {"category": key}})),
                            &[("if-match", &etag)],
                        )
                        .await
                        .unwrap();
                    match reply.status {
                        StatusCode::OK => {
                            acknowledged.push((key.clone(), reply.etag_version().unwrap()));
                            break;
                        }
                        StatusCode::PRECONDITION_FAILED => {
                            conflicts += 1;
                            assert!(conflicts < 10_000, "client {client} starved");
                        }
                        other => panic!("unexpected {other}: {}", reply.body),
                    }
                }
            }
            acknowledged
        }
    });
    let acknowledged: Vec<(String, u64)> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(acknowledged.len(), CLIENTS * UPDATES_PER_CLIENT);

    let history = server
        .get("/api/v1/records/TSK-1/history?limit=1000")
        .await
        .unwrap()
        .body["entries"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        history.len(),
        1 + acknowledged.len(),
        "one entry per acknowledged write, plus the create"
    );
    let versions: Vec<u64> = history
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] + 1 == w[1]),
        "versions strictly increase by one"
    );

    // Each acknowledged version's entry set exactly that client's value, and no value appears twice.
    let by_version: HashMap<u64, &serde_json::Value> = history
        .iter()
        .map(|e| (e["version"].as_u64().unwrap(), e))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (key, version) in &acknowledged {
        let entry = by_version[version];
        let change = entry["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["path"] == "/fields/category")
            .unwrap();
        assert_eq!(&change["to"], key, "version {version}");
        assert!(seen.insert(key.clone()), "{key} acknowledged twice");
    }
    let record = server.get("/api/v1/records/TSK-1").await.unwrap();
    assert_eq!(record.etag_version(), Some(1 + acknowledged.len() as u64));
}
