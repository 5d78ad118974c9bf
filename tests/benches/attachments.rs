//! Attachment uploads (issue 11: "attachment upload of 20 MiB at disk speed with flat memory"):
//! a real `usm serve` process takes N uploads of a 20 MiB file over HTTP (the raw body, as
//! `curl --data-binary` sends it) onto one record. Reported: upload MiB/s (median and range),
//! against the raw disk writing the same bytes in the same temp dir (write and fsync, as the
//! server does), and the server's peak resident memory during the uploads over its resident
//! memory before them (`VmHWM` after resetting it through `/proc/<pid>/clear_refs`, against
//! `VmRSS`). Beside them, what HTTP itself carries on this machine: the same client posting the
//! same bytes to a handler that only counts them (an actix-web server in the benchmark's own
//! process), so an upload can be read against the loopback link as well as the disk.
//!
//! Memory is judged on one more upload, of a file large enough (96 MiB; the server's limits are
//! raised for it) that a server holding it whole would grow by far more than the 10–20 MiB its
//! background workers (the search index writer above all) take and give back whatever the
//! upload's size: the peak during it must grow by less than half of it.
//!
//! It fails — exits non-zero — unless every upload is accepted with the size and SHA-256 of the
//! bytes sent, every download of them hashes the same, and the memory check holds.
//!
//! `cargo bench -p usm-tests --bench attachments` runs 5 uploads of 20 MiB;
//! `USM_BENCH_UPLOADS`, `USM_BENCH_UPLOAD_MIB` and `USM_BENCH_LARGE_MIB` change the shape;
//! `USM_BENCH_SHORT=1` runs one upload of 16 MiB and the large one with every check (what CI
//! runs).

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark reports on stdout

mod common;

use common::{ServerProcess, start_server_with};
use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "usm_bench_admin_0123456789abcdef0123456789";
const MIB: usize = 1024 * 1024;

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A `/proc/<pid>/status` figure (`VmRSS`, `VmHWM`) in MiB.
fn status_mib(pid: u32, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The server's peak resident memory over a stretch of work, against its resident memory at
/// the start (`VmHWM` reset through `/proc/<pid>/clear_refs`, Linux 4.0+).
struct PeakGrowth {
    pid: u32,
    rss_before: f64,
    reset: bool,
    peak: f64,
}

impl PeakGrowth {
    fn start(pid: u32) -> Self {
        let rss_before = status_mib(pid, "VmRSS");
        // Writing 5 resets the peak (VmHWM) to the current resident size.
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        Self {
            pid,
            rss_before,
            reset,
            peak: f64::NAN,
        }
    }

    fn end(mut self) -> Self {
        self.peak = status_mib(self.pid, "VmHWM");
        self
    }

    /// MiB the peak grew by; `None` when the peak could not be reset.
    fn growth(&self) -> Option<f64> {
        self.reset.then_some(self.peak - self.rss_before)
    }
}

impl std::fmt::Display for PeakGrowth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.growth() {
            Some(growth) => write!(
                f,
                "RSS {:.1} MiB before, peak {:.1} MiB (+{growth:.1} MiB)",
                self.rss_before, self.peak
            ),
            None => write!(f, "the peak could not be reset"),
        }
    }
}

/// `size` bytes that neither compress nor repeat, different for each `seed`: every upload is a
/// new blob, not one the server already has.
fn content(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Seconds to write `bytes` to a new file in `dir` and fsync it.
fn disk_write(dir: &Path, bytes: &[u8]) -> f64 {
    let path = dir.join("disk-speed");
    let started = Instant::now();
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
    let took = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    took
}

/// Median and range.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

/// Starts an HTTP server on loopback whose one handler reads a body and answers its size, and
/// returns its base URL: how fast this client's bytes cross HTTP when nothing stores them.
fn http_sink() -> String {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use futures::StreamExt as _;

    async fn count(mut body: web::Payload) -> HttpResponse {
        let mut size = 0usize;
        while let Some(chunk) = body.next().await {
            size += chunk.map_or(0, |chunk| chunk.len());
        }
        HttpResponse::Ok().json(json!({ "size": size }))
    }

    let (bound, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(|| {
                App::new()
                    .app_data(web::PayloadConfig::new(usize::MAX))
                    .default_service(web::to(count))
            })
            .workers(1)
            .bind(("127.0.0.1", 0))
            .unwrap();
            bound.send(server.addrs()[0]).unwrap();
            server.run().await.unwrap();
        });
    });
    format!("http://{}", address.recv().unwrap())
}

/// Seconds to post `body` to the sink, and the size it counted.
async fn sink_post(client: &reqwest::Client, sink: &str, body: Vec<u8>) -> (f64, u64) {
    let started = Instant::now();
    let reply = client.post(sink).body(body).send().await.unwrap();
    let counted: Value = reply.json().await.unwrap_or_default();
    (
        started.elapsed().as_secs_f64(),
        counted["size"].as_u64().unwrap_or_default(),
    )
}

async fn upload(
    client: &reqwest::Client,
    server: &ServerProcess,
    record: &str,
    name: &str,
    body: Vec<u8>,
) -> (Duration, reqwest::StatusCode, Value) {
    let started = Instant::now();
    let reply = client
        .post(format!(
            "{}/api/v1/records/{record}/attachments",
            server.base
        ))
        .bearer_auth(TOKEN)
        .header("content-type", "application/octet-stream")
        .header(
            "content-disposition",
            format!("attachment; filename=\"{name}\""),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or_default();
    (started.elapsed(), status, body)
}

/// Downloads an attachment, hashing it as it arrives; its SHA-256, size and seconds.
async fn download(
    client: &reqwest::Client,
    server: &ServerProcess,
    record: &str,
    attachment: &str,
) -> (String, usize, f64) {
    let started = Instant::now();
    let mut reply = client
        .get(format!(
            "{}/api/v1/records/{record}/attachments/{attachment}",
            server.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), reqwest::StatusCode::OK, "download");
    let (mut hasher, mut size) = (Sha256::new(), 0);
    while let Some(chunk) = reply.chunk().await.unwrap() {
        size += chunk.len();
        hasher.update(&chunk);
    }
    (
        format!("{:x}", hasher.finalize()),
        size,
        started.elapsed().as_secs_f64(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let short = std::env::var_os("USM_BENCH_SHORT").is_some_and(|v| v != "0");
    let uploads = env_number("USM_BENCH_UPLOADS").unwrap_or(if short { 1 } else { 5 });
    let mib = env_number("USM_BENCH_UPLOAD_MIB").unwrap_or(if short { 16 } else { 20 });
    let large_mib = env_number("USM_BENCH_LARGE_MIB").unwrap_or(96);
    let size = mib * MIB;
    let temp = tempfile::tempdir().unwrap();
    let mut failures: Vec<String> = Vec::new();

    // The disk first, in the directory the server's data will be in: the same bytes, written
    // and fsynced, as many times as there are uploads.
    let files: Vec<Vec<u8>> = (0..uploads).map(|i| content(size, i as u64 + 1)).collect();
    let disk: Vec<f64> = files
        .iter()
        .map(|bytes| mib as f64 / disk_write(temp.path(), bytes))
        .collect();
    // What hashing costs, as the server hashes each upload (the same crate and profile).
    let mut hashing = Vec::new();
    let digests: Vec<String> = files
        .iter()
        .map(|bytes| {
            let started = Instant::now();
            let digest = sha256(bytes);
            hashing.push(mib as f64 / started.elapsed().as_secs_f64());
            digest
        })
        .collect();

    let client = reqwest::Client::new();
    let sink = http_sink();
    let mut carried = Vec::new();
    for bytes in &files {
        let (seconds, counted) = sink_post(&client, &sink, bytes.clone()).await;
        if counted != size as u64 {
            failures.push(format!("the HTTP sink counted {counted} of {size} bytes"));
        }
        carried.push(mib as f64 / seconds);
    }

    let data = temp.path().join("data");
    let largest = (mib.max(large_mib) * MIB) as u64;
    let server = start_server_with(
        &data,
        TOKEN,
        &[
            ("USM_ATTACHMENT_MAX_BYTES", largest.to_string()),
            (
                "USM_ATTACHMENT_MAX_BYTES_PER_RECORD",
                (largest * (uploads as u64 + 2)).to_string(),
            ),
        ],
    );
    let pid = server.child.id();
    let created = client
        .post(format!("{}/api/v1/records", server.base))
        .bearer_auth(TOKEN)
        .json(&json!({"kind": "incident", "domain": "it", "title": "Logs attached"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let record = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // One small upload first, so that what the first one ever allocates (a blocking thread,
    // the blob directories) is not counted against the big ones.
    let (_, status, _) = upload(
        &client,
        &server,
        &record,
        "warm-up.bin",
        content(64 * 1024, 0),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "warm-up upload");

    let mut speeds = Vec::new();
    let mut uploaded = Vec::new();
    let speed_memory = PeakGrowth::start(pid);
    for (i, (bytes, expected)) in files.iter().zip(digests).enumerate() {
        let (took, status, body) = upload(
            &client,
            &server,
            &record,
            &format!("upload-{i}.bin"),
            bytes.clone(),
        )
        .await;
        if status != reqwest::StatusCode::CREATED {
            failures.push(format!("upload {i}: {status} {body}"));
            continue;
        }
        if body["sha256"] != expected.as_str() || body["size"] != size {
            failures.push(format!(
                "upload {i} was stored as {body}, not {expected} ({size} B)"
            ));
        }
        speeds.push(mib as f64 / took.as_secs_f64());
        uploaded.push((body["id"].as_str().unwrap_or_default().to_owned(), expected));
    }
    let speed_memory = speed_memory.end();

    let large = content(large_mib * MIB, 1_000);
    let large_memory = PeakGrowth::start(pid);
    let (_, status, body) = upload(&client, &server, &record, "large.bin", large).await;
    let large_memory = large_memory.end();
    if status != reqwest::StatusCode::CREATED || body["size"] != large_mib * MIB {
        failures.push(format!("the {large_mib} MiB upload: {status} {body}"));
    }

    let mut download_speeds = Vec::new();
    for (attachment, expected) in &uploaded {
        let (digest, got, seconds) = download(&client, &server, &record, attachment).await;
        if digest != *expected || got != size {
            failures.push(format!(
                "attachment {attachment} downloads as {digest} ({got} B), not {expected}"
            ));
        }
        download_speeds.push(mib as f64 / seconds);
    }

    println!(
        "\nattachments: {uploads} upload(s) of {mib} MiB over HTTP (raw body) to one record of a \
         usm serve process, durable (fsynced) before the record references them"
    );
    let (disk_median, disk_low, disk_high) = spread(&disk);
    println!(
        "raw disk, write + fsync {mib} MiB in the same temp dir: {disk_median:.0} MiB/s \
         [{disk_low:.0}–{disk_high:.0}]"
    );
    let (hash_median, hash_low, hash_high) = spread(&hashing);
    println!(
        "SHA-256 of {mib} MiB in one thread, as the server hashes an upload: {hash_median:.0} MiB/s \
         [{hash_low:.0}–{hash_high:.0}]"
    );
    let (sink_median, sink_low, sink_high) = spread(&carried);
    println!(
        "HTTP alone, the same client posting {mib} MiB to a handler that only counts the bytes: \
         {sink_median:.0} MiB/s [{sink_low:.0}–{sink_high:.0}]"
    );
    if !speeds.is_empty() {
        let (median, low, high) = spread(&speeds);
        println!(
            "upload: {median:.0} MiB/s [{low:.0}–{high:.0}] = {:.2} of the raw disk's median, \
             {:.2} of HTTP alone",
            median / disk_median,
            median / sink_median
        );
    }
    if !download_speeds.is_empty() {
        let (median, low, high) = spread(&download_speeds);
        println!(
            "download (hashed by the client as it arrives): {median:.0} MiB/s [{low:.0}–{high:.0}]"
        );
    }
    println!(
        "server memory during the {uploads} upload(s) of {mib} MiB: {speed_memory}\n\
         server memory during one upload of {large_mib} MiB: {large_memory}"
    );
    match large_memory.growth() {
        None => failures.push("the server's peak resident memory could not be reset".into()),
        Some(growth) if growth.is_nan() || growth >= large_mib as f64 / 2.0 => {
            failures.push(format!(
                "the server's peak grew by {growth:.1} MiB during a {large_mib} MiB upload: \
                 not streamed"
            ));
        }
        Some(_) => {}
    }
    if uploaded.len() != uploads {
        failures.push(format!("{} of {uploads} uploads stored", uploaded.len()));
    }
    // `exit` runs no destructors: stop the server and remove its data first.
    drop(server);
    drop(temp);
    if failures.is_empty() {
        println!("\nattachments passed");
    } else {
        for failure in &failures {
            println!("FAILED: {failure}");
        }
        println!("\nattachments FAILED");
        std::process::exit(1);
    }
}
