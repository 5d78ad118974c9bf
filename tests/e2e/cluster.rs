//! Three usm processes on one PostgreSQL database: writes through all three, one killed with
//! SIGKILL mid-load; every acknowledged write is there, every fan-out happened once and every
//! webhook event was delivered at least once, under one event id.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_store_postgres::ScratchDatabase;
use usm_tests::{ADMIN_TOKEN, ServerProcess};

/// Orders placed per node before the kill, and per surviving node after it.
const ORDERS_PER_NODE: usize = 4;

fn node_config(dir: &Path, name: &str, database: &ScratchDatabase) -> PathBuf {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.join(format!("{name}.toml"));
    let text = format!(
        "data_dir = {:?}\nstore_url = {:?}\nstore_lease_secs = 3\nworkers = 2\n\
         bundled_modules = true\ndefault_agreements = true\nadmin_token = {:?}\n\
         webhook_allowed_networks = [\"127.0.0.0/8\"]\nwebhook_retry_base_ms = 50\n",
        data.display().to_string(),
        database.url,
        ADMIN_TOKEN,
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn order(client: &reqwest::Client, base: &str, employee: &str) -> String {
    let (status, body) = call(
        client,
        reqwest::Method::POST,
        format!("{base}/api/v1/catalog/items/hr.onboarding/order"),
        Some(json!({"variables": {"employee": employee, "start_date": "2027-01-04"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The tasks of each request, by request id.
async fn tasks(
    client: &reqwest::Client,
    base: &str,
) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut by_request = std::collections::BTreeMap::<String, Vec<Value>>::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = call(
            client,
            reqwest::Method::GET,
            format!("{base}/api/v1/records?kind=task&limit=200{after}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for task in page["records"].as_array().unwrap() {
            let parent = task["links"][0]["to"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            by_request.entry(parent).or_default().push(task.clone());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return by_request,
        }
    }
}

/// Waits until every request has `count` tasks (the workers catch up, a dead node's leases
/// expire), at most a minute.
async fn until_tasks(
    client: &reqwest::Client,
    base: &str,
    requests: &[String],
    count: usize,
) -> std::collections::BTreeMap<String, Vec<Value>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        usm_tests::settle(base).await.unwrap();
        let found = tasks(client, base).await;
        let done = requests
            .iter()
            .all(|r| found.get(r).is_some_and(|t| t.len() >= count));
        if done || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// One value from the database, as an operator would read it.
fn psql(url: &str, query: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([url, "--no-align", "--tuples-only", "--command", query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_one_killed_lose_no_acknowledged_write_and_fan_out_once() {
    let database = ScratchDatabase::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_usm-under-test");
    // One after the other: the first sets the database up (schema, bundled modules).
    let nodes: Vec<ServerProcess> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            ServerProcess::spawn(binary, &node_config(dir.path(), name, &database)).unwrap()
        })
        .collect();
    let client = reqwest::Client::new();
    let receiver = actix_web::web::Data::new(crate::webhooks::Receiver::default());
    let (hook_url, hook_server) = crate::webhooks::start_receiver(receiver.clone());
    let (status, body) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/api/v1/webhooks", nodes[0].base),
        Some(
            json!({"url": format!("{hook_url}/orders"), "events": ["record.created"],
                    "kinds": ["request"], "secret": "cluster-cluster-cluster"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let mut requests = Vec::new();
    for round in 0..ORDERS_PER_NODE {
        for (n, node) in nodes.iter().enumerate() {
            requests.push(order(&client, &node.base, &format!("Person {n}-{round}")).await);
        }
    }
    // Kill the node doing the fan-out, mid-load: the others must take its work over.
    let holder = psql(
        &database.url,
        "SELECT holder FROM usm_leases WHERE name = 'catalog'",
    );
    let pid: u32 = holder
        .split('/')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a lease holder is node/pid/start, not {holder:?}"));
    let mut nodes = nodes;
    let at = nodes
        .iter()
        .position(|node| node.id() == pid)
        .unwrap_or_else(|| panic!("the lease holder {holder} is none of the nodes"));
    nodes.remove(at).kill().unwrap();
    for round in 0..ORDERS_PER_NODE {
        for (n, node) in nodes.iter().enumerate() {
            requests.push(order(&client, &node.base, &format!("After {n}-{round}")).await);
        }
    }

    // Every acknowledged order is there, on every surviving node.
    for node in &nodes {
        for id in &requests {
            let (status, _) = call(
                &client,
                reqwest::Method::GET,
                format!("{}/api/v1/records/{id}", node.base),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{id} on {}", node.base);
        }
    }

    // The fan-out: three tasks per order, once each, whichever node consumed the order.
    let first = until_tasks(&client, &nodes[0].base, &requests, 3).await;
    for id in &requests {
        let found = first.get(id).map_or(0, Vec::len);
        assert_eq!(found, 3, "{id} has {found} tasks after the fan-out");
    }
    // Finish them through both surviving nodes: the laptop task follows, once per order.
    for (i, task) in first.values().flatten().enumerate() {
        let base = &nodes[i % nodes.len()].base;
        let id = task["id"].as_str().unwrap();
        let (status, body) = call(
            &client,
            reqwest::Method::POST,
            format!("{base}/api/v1/records/{id}/transitions"),
            Some(json!({"to": "done"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
    }
    let all = until_tasks(&client, &nodes[1].base, &requests, 4).await;
    for id in &requests {
        let titles: Vec<&str> = all
            .get(id)
            .map(|t| t.iter().map(|t| t["title"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(titles.len(), 4, "{id}: {titles:?}");
        assert_eq!(
            titles
                .iter()
                .filter(|t| t.starts_with("Prepare a laptop"))
                .count(),
            1,
            "{id}: {titles:?}"
        );
    }

    // Each order's creation reached the webhook at least once, always as the same event.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let events_by_order = loop {
        let mut by_order =
            std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
        for delivery in receiver.received.lock().unwrap().iter() {
            let order = delivery.body["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let event = delivery.body["id"].as_str().unwrap_or_default().to_owned();
            by_order.entry(order).or_default().insert(event);
        }
        if requests.iter().all(|r| by_order.contains_key(r)) {
            break by_order;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orders never delivered: {:?}",
            requests
                .iter()
                .filter(|r| !by_order.contains_key(*r))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for id in &requests {
        assert_eq!(
            events_by_order[id].len(),
            1,
            "{id}: {:?}",
            events_by_order[id]
        );
    }
    hook_server.stop(false).await;
    for node in nodes {
        node.kill().unwrap();
    }
}
