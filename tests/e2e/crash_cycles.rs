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

/// Sends the head and the first `first` bytes of a `size`-byte upload named `name` to record
/// `id` (as `multipart/form-data` or as the raw body), waits until `go` is dropped, then sends
/// the rest until the connection fails. Returns how many bytes of the file were sent.
fn stream_upload(
    addr: &str,
    id: &str,
    name: &str,
    multipart: bool,
    (first, size): (usize, usize),
    go: std::sync::mpsc::Receiver<()>,
) -> usize {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let (content_type, preamble, epilogue) = if multipart {
        (
            "multipart/form-data; boundary=b".to_owned(),
            format!(
                "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            ),
            "\r\n--b--\r\n",
        )
    } else {
        ("application/octet-stream".to_owned(), String::new(), "")
    };
    let length = preamble.len() + size + epilogue.len();
    let disposition = format!("Content-Disposition: attachment; filename=\"{name}\"\r\n");
    let head = format!(
        "POST /api/v1/records/{id}/attachments HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: {content_type}\r\n{}\
         Content-Length: {length}\r\n\r\n{preamble}",
        if multipart { "" } else { disposition.as_str() },
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let chunk = vec![b'z'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        if sent == first {
            // Hold the rest back until the server is gone: the upload never completes.
            let _ = go.recv();
        }
        let n = chunk.len().min(size - sent);
        if stream.write_all(&chunk[..n]).is_err() {
            return sent;
        }
        sent += n;
    }
    sent
}

/// The largest upload scratch file of the server with data directory `data`, in bytes.
fn largest_scratch(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("attachments").join("tmp"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|entry| entry.metadata().ok())
                .map(|meta| meta.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// SIGKILL while a large attachment streams in (as the raw body and as multipart): after each
/// restart every attachment the record lists has its blob, of the listed size and SHA-256; the
/// acknowledged uploads are all listed, the interrupted ones are not, and no scratch file stays.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_killed_mid_stream_leave_every_listed_attachment_whole() {
    use sha2::{Digest as _, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("usm.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nworkers = 2\nbundled_modules = false\ndefault_agreements = false\nadmin_token = {ADMIN_TOKEN:?}\nrate_limit_per_second = 0\nattachment_max_bytes = 67108864\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_usm-under-test");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let big = 48 * 1024 * 1024;
    // (file name, SHA-256, size) of every upload the server acknowledged.
    let mut acked: Vec<(String, String, u64)> = Vec::new();
    let mut record: Option<String> = None;
    for cycle in 0..4 {
        let server = ServerProcess::spawn(binary, &config).unwrap();
        let id = match &record {
            Some(id) => id.clone(),
            None => {
                let created: Value = client
                    .post(format!("{}/api/v1/records", server.base))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"kind": "task", "title": "uploads"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = created["id"].as_str().unwrap().to_owned();
                record = Some(id.clone());
                id
            }
        };
        let small = format!("small file of cycle {cycle}").into_bytes();
        let name = format!("small-{cycle}.txt");
        let response = client
            .post(format!("{}/api/v1/records/{id}/attachments", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "text/plain")
            .header(
                "content-disposition",
                format!("attachment; filename=\"{name}\""),
            )
            .body(small.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        acked.push((
            name,
            format!("{:x}", Sha256::digest(&small)),
            small.len() as u64,
        ));

        let (go, wait) = std::sync::mpsc::channel();
        let addr = server.base.trim_start_matches("http://").to_owned();
        let upload = tokio::task::spawn_blocking(move || {
            stream_upload(
                &addr,
                &id,
                &format!("big-{cycle}.bin"),
                cycle % 2 == 1,
                (8 * 1024 * 1024, big),
                wait,
            )
        });
        // Kill once the server has put a megabyte of it on disk.
        let deadline = Instant::now() + Duration::from_secs(60);
        while largest_scratch(&data) < 1024 * 1024 {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: the upload never reached the scratch space"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill().unwrap();
        drop(go);
        let sent = upload.await.unwrap();
        assert!(sent < big, "cycle {cycle}: the upload was cut off ({sent})");
    }

    let server = ServerProcess::spawn(binary, &config).unwrap();
    assert_eq!(
        largest_scratch(&data),
        0,
        "a restart clears half-written uploads"
    );
    let id = record.unwrap();
    let listed: Value = client
        .get(format!("{}/api/v1/records/{id}/attachments", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["attachments"].as_array().unwrap();
    let names: Vec<&str> = listed
        .iter()
        .map(|a| a["filename"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = acked.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, expected, "the acknowledged uploads, and only those");
    for (attachment, (name, sha256, size)) in listed.iter().zip(&acked) {
        assert_eq!(attachment["sha256"], sha256.as_str(), "{name}");
        assert_eq!(attachment["size"], *size, "{name}");
        let blob = data
            .join("attachments")
            .join(&sha256[..2])
            .join(sha256.as_str());
        assert_eq!(
            std::fs::metadata(&blob).map(|m| m.len()).ok(),
            Some(*size),
            "{name}: its blob is on disk, whole"
        );
        let downloaded = client
            .get(format!(
                "{}/api/v1/records/{id}/attachments/{}",
                server.base,
                attachment["id"].as_str().unwrap()
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            format!("{:x}", Sha256::digest(&downloaded)),
            *sha256,
            "{name}"
        );
    }
}
