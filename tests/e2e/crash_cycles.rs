//! Kill -9 at random moments under concurrent creates and updates, restart, and check every
//! acknowledged write is there with its history, and nothing half-written is visible. Two cycles
//! in three also send concurrent creates with one `Idempotency-Key` and kill right after a
//! replay is answered: the replayed record must survive, and the key must still replay it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_tests::{ADMIN_TOKEN, ServerProcess};

/// Kill/restart cycles in CI (set USM_CRASH_CYCLES for a longer run).
fn cycles() -> usize {
    std::env::var("USM_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// A tiny deterministic generator for kill timings (no dependency, reproducible by seed).
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % max
    }
}

/// What the clients were told: record id → the highest acknowledged version and its title.
type Acked = Arc<Mutex<BTreeMap<String, (u64, String)>>>;

async fn client_loop(
    base: String,
    client: reqwest::Client,
    acked: Acked,
    worker: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let title = format!("w{worker} n{n}");
        let created = client
            .post(format!("{base}/api/v1/records"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"kind": "task", "title": title}))
            .send()
            .await;
        let Ok(response) = created else { break };
        if response.status() != StatusCode::CREATED {
            break;
        }
        let Ok(record) = response.json::<Value>().await else {
            break;
        };
        let id = record["id"].as_str().unwrap_or_default().to_owned();
        acked.lock().unwrap().insert(id.clone(), (1, title.clone()));
        let updated_title = format!("{title} updated");
        let patched = client
            .patch(format!("{base}/api/v1/records/{id}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("if-match", "\"1\"")
            .json(&json!({"title": updated_title}))
            .send()
            .await;
        let Ok(response) = patched else { break };
        if response.status() == StatusCode::OK {
            acked.lock().unwrap().insert(id, (2, updated_title));
        }
    }
}

/// Idempotency key → (title sent, record id acknowledged).
type Keys = Arc<Mutex<BTreeMap<String, (String, String)>>>;

/// Sends three creates with the same key at once, again and again; wakes `replayed` as soon as
/// a replay is answered.
async fn same_key_loop(
    base: String,
    client: reqwest::Client,
    acked: Acked,
    keys: Keys,
    cycle: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    replayed: Arc<tokio::sync::Notify>,
) {
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let key = format!("c{cycle}-k{n}");
        let title = format!("keyed {key}");
        let mut sends: futures::stream::FuturesUnordered<_> = (0..3)
            .map(|_| {
                client
                    .post(format!("{base}/api/v1/records"))
                    .bearer_auth(ADMIN_TOKEN)
                    .header("idempotency-key", &key)
                    .json(&json!({"kind": "task", "title": title}))
                    .send()
            })
            .collect();
        while let Some(sent) = sends.next().await {
            let Ok(response) = sent else { return };
            if response.status() != StatusCode::CREATED {
                return;
            }
            let replay = response.headers().contains_key("idempotent-replayed");
            let Ok(record) = response.json::<Value>().await else {
                return;
            };
            let id = record["id"].as_str().unwrap_or_default().to_owned();
            acked
                .lock()
                .unwrap()
                .entry(id.clone())
                .or_insert((1, title.clone()));
            keys.lock()
                .unwrap()
                .insert(key.clone(), (title.clone(), id));
            if replay {
                replayed.notify_one();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_repeated_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("usm.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nworkers = 2\nbundled_modules = false\ndefault_agreements = false\nadmin_token = {ADMIN_TOKEN:?}\nrate_limit_per_second = 0\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_usm-under-test");
    let acked: Acked = Arc::default();
    let keys: Keys = Arc::default();
    let mut replay_kills = 0;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = Lcg(0x5eed_cafe);
    let started = Instant::now();
    for cycle in 0..cycles() {
        let server = ServerProcess::spawn(binary, &config).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers: Vec<_> = (0..4)
            .map(|w| {
                tokio::spawn(client_loop(
                    server.base.clone(),
                    client.clone(),
                    acked.clone(),
                    w,
                    stop.clone(),
                ))
            })
            .collect();
        let replayed = Arc::new(tokio::sync::Notify::new());
        let wait = Duration::from_millis(50 + rng.next_ms(400));
        if cycle % 3 != 0 {
            workers.push(tokio::spawn(same_key_loop(
                server.base.clone(),
                client.clone(),
                acked.clone(),
                keys.clone(),
                cycle,
                stop.clone(),
                replayed.clone(),
            )));
            // Kill the moment a replay is answered, while its original may still wait for
            // its flush.
            tokio::select! {
                () = replayed.notified() => replay_kills += 1,
                () = tokio::time::sleep(wait) => {}
            }
        } else {
            tokio::time::sleep(wait).await;
        }
        server.kill().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
    }
    let server = ServerProcess::spawn(binary, &config).unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > cycles(),
        "the clients got writes through: {}",
        acked.len()
    );
    for (id, (version, title)) in &acked {
        let record: Value = client
            .get(format!("{}/api/v1/records/{id}", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored_version = record["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("{id} was acknowledged but is gone: {record}"));
        assert!(
            stored_version >= *version,
            "{id}: acknowledged version {version}, stored {stored_version}"
        );
        if stored_version == *version {
            assert_eq!(record["title"], title.as_str(), "{id}");
        }
        let history: Value = client
            .get(format!("{}/api/v1/records/{id}/history", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entries = history["entries"].as_array().unwrap();
        assert_eq!(
            entries.len() as u64,
            stored_version,
            "{id}: one history entry per version, none half-written"
        );
    }
    // A key whose create was acknowledged still names that record: a retry replays it.
    let keys = keys.lock().unwrap().clone();
    assert!(replay_kills > 0, "no cycle was killed right after a replay");
    for (key, (title, id)) in &keys {
        let retried = client
            .post(format!("{}/api/v1/records", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", key)
            .json(&json!({"kind": "task", "title": title}))
            .send()
            .await
            .unwrap();
        assert_eq!(retried.status(), StatusCode::CREATED);
        assert!(
            retried.headers().contains_key("idempotent-replayed"),
            "{key} was acknowledged as {id} but created a new record"
        );
        let record: Value = retried.json().await.unwrap();
        assert_eq!(record["id"], id.as_str(), "{key}");
    }
    // Every record in the store is whole, acknowledged or not: one history entry per version,
    // and the record is what replaying its history gives.
    let mut cursor: Option<String> = None;
    let mut checked = 0;
    loop {
        let mut url = format!("{}/api/v1/records?limit=200", server.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for record in page["records"].as_array().unwrap() {
            let id = record["id"].as_str().unwrap();
            let history: Value = client
                .get(format!(
                    "{}/api/v1/records/{id}/history?limit=1000",
                    server.base
                ))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_whole(record, history["entries"].as_array().unwrap());
            checked += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(
        checked >= acked.len(),
        "every acknowledged record is listed"
    );
    eprintln!(
        "{} cycles ({replay_kills} killed right after a replay), {} acknowledged records, {} \
         idempotency keys, {:?}",
        cycles(),
        acked.len(),
        keys.len(),
        started.elapsed()
    );
}

/// Asserts `entries` hold versions 1, 2, … up to the record's version, once each, and that
/// applying their changes in order, starting from nothing, gives the record's title, state,
/// domain, fields and links — each change starting from the value the previous ones left.
fn assert_whole(record: &Value, entries: &[Value]) {
    let id = &record["id"];
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=record["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, expected, "{id}: one history entry per version");
    let mut replayed = json!({"fields": {}, "links": []});
    for entry in entries {
        for change in entry["changes"].as_array().unwrap() {
            let path = change["path"].as_str().unwrap();
            let (parent, key) = path.rsplit_once('/').unwrap();
            let key = key.replace("~1", "/").replace("~0", "~");
            // A record's first links are diffed against none rather than an empty list.
            if path != "/links" {
                assert_eq!(
                    replayed.pointer(path),
                    change.get("from"),
                    "{id} v{}: {path} changed from what the history before it left",
                    entry["version"]
                );
            }
            let container = replayed
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .unwrap_or_else(|| panic!("{id}: {path} has no parent in the replay"));
            match change.get("to") {
                Some(to) => container.insert(key, to.clone()),
                None => container.remove(&key),
            };
        }
    }
    for member in ["title", "state", "domain", "fields", "links"] {
        assert_eq!(
            replayed[member], record[member],
            "{id}: {member} is not what its history says"
        );
    }
}
