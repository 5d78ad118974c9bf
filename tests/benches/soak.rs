//! Soak: sustained durable creates through the default `it` pipeline (usm-core, itil4,
//! cobit2019, iso20000) of a real `usm serve` process over HTTP, reported per time window:
//! throughput, p99, the server's resident memory and its data directory's size.
//!
//! `cargo bench -p usm-tests --bench soak` runs 200,000 creates at 32 clients and again at 64
//! clients on fresh servers. `USM_SOAK_SECONDS=30` instead runs each for 30 s, and so does
//! `USM_BENCH_SHORT=1` (what CI runs). `USM_SOAK_RECORDS`, `USM_SOAK_CLIENTS` (comma separated)
//! and `USM_SOAK_WINDOW` (seconds) change the shape. It fails — exits non-zero — when any request fails, when a bundled step
//! overran its budget or was suspended, or (on full runs) when a complete window's throughput is
//! below half the median window's.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark reports on stdout

mod common;

use common::{ServerProcess, start_server};
use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const TOKEN: &str = "usm_soak_admin_0123456789abcdef0123456789";

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A realistic incident of about 1 KB, varied per request.
fn incident(n: usize) -> Value {
    let impacts = ["high", "medium", "low"];
    json!({
        "kind": "incident",
        "domain": "it",
        "title": format!("Mail unreachable from floor {} (report {n})", n % 9 + 1),
        "fields": {
            "impact": impacts[n % 3],
            "urgency": impacts[(n / 3) % 3],
            "category": "network",
            "service": "email",
            "description": format!(
                "Report {n}: users on the third floor cannot reach the mail server since 09:12; \
                 the switch in rack B4 shows link flaps on port 17. Several users report timeouts \
                 when sending, and the shared calendar does not load. Outlook shows 'trying to \
                 connect' and the web client answers slowly. Wired and wireless clients are \
                 affected alike; the second floor is fine. Last change on that switch: firmware \
                 upgrade yesterday at 18:00 (CHG-{}).", n % 50 + 1
            ),
            // The caller's story that no module reads lives under `extra`.
            "extra": {
                "symptoms": ["mail send timeout", "calendar does not load", "slow web client"],
                "affected_users": 40 + n % 60,
                "location": {"building": "HQ", "floor": 3, "rack": "B4", "port": 17},
                "contact": {"name": "Bob Ray", "phone": "+31 20 555 0134", "channel": "phone"},
                "reported_via": "service desk",
            },
        }
    })
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn dir_mib(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

/// What the load did: per request, when it finished (since the start) and how long it took.
struct Outcome {
    done: Vec<(Duration, Duration)>,
    failures: Vec<String>,
    samples: Vec<(Duration, f64, f64)>,
    elapsed: Duration,
}

async fn load(
    server: &ServerProcess,
    data: &Path,
    clients: usize,
    records: usize,
    seconds: Option<u64>,
    window: Duration,
) -> Outcome {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(Vec::with_capacity(records)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let stop_at = seconds.map(|s| started + Duration::from_secs(s));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampling = {
        let samples = Arc::clone(&samples);
        let pid = server.child.id();
        let data = data.to_path_buf();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(window).await;
                let sample = (started.elapsed(), rss_mib(pid), dir_mib(&data));
                samples.lock().unwrap().push(sample);
            }
        })
    };
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, next, done, failures) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&done),
                Arc::clone(&failures),
            );
            let url = format!("{}/api/v1/records", server.base);
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let over = match stop_at {
                        Some(stop) => Instant::now() >= stop,
                        None => n >= records,
                    };
                    if over {
                        break;
                    }
                    let sent = Instant::now();
                    let reply = client
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .json(&incident(n))
                        .send()
                        .await;
                    let took = sent.elapsed();
                    match reply {
                        Ok(reply) if reply.status() == reqwest::StatusCode::CREATED => {
                            let _ = reply.bytes().await;
                            done.lock().unwrap().push((started.elapsed(), took));
                        }
                        Ok(reply) => {
                            let status = reply.status();
                            let body = reply.text().await.unwrap_or_default();
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{status}: {body:.300}"));
                        }
                        Err(error) => failures.lock().unwrap().push(error.to_string()),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    sampling.abort();
    let done = std::mem::take(&mut *done.lock().unwrap());
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    Outcome {
        done,
        failures,
        samples,
        elapsed,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Sums `usm_step_failures_total` and `usm_step_suspensions_total` from `/metrics`, by kind.
async fn step_trouble(server: &ServerProcess) -> Vec<(String, u64)> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("usm_step_failures_total") || l.starts_with("usm_step_suspensions_total")
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let value: u64 = value.parse().ok()?;
            (value > 0).then(|| (name.to_owned(), value))
        })
        .collect()
}

/// One soak run; returns whether it passed.
async fn soak(clients: usize, records: usize, seconds: Option<u64>, window: Duration) -> bool {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let server = start_server(&data, TOKEN);
    let what = match seconds {
        Some(s) => format!("{s} s"),
        None => format!("{records} creates"),
    };
    println!(
        "\nsoak: {what} through the default it pipeline, {clients} clients, durable acks, {} s windows",
        window.as_secs()
    );
    let outcome = load(&server, &data, clients, records, seconds, window).await;
    let trouble = step_trouble(&server).await;

    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "window", "creates/s", "p50 ms", "p99 ms", "RSS MiB", "data MiB"
    );
    let windows = (outcome.elapsed.as_secs_f64() / window.as_secs_f64()).ceil() as usize;
    let mut rates = Vec::new();
    for w in 0..windows {
        let from = window * u32::try_from(w).unwrap();
        let to = from + window;
        let mut latencies: Vec<Duration> = outcome
            .done
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, took)| *took)
            .collect();
        latencies.sort_unstable();
        let complete = to <= outcome.elapsed;
        let span = if complete {
            window
        } else {
            outcome.elapsed.saturating_sub(from)
        };
        if span < Duration::from_secs(1) {
            continue; // the last moments of the run, too short to say anything
        }
        let rate = latencies.len() as f64 / span.as_secs_f64();
        if complete {
            rates.push(rate);
        }
        let sample = outcome
            .samples
            .iter()
            .find(|(at, _, _)| *at >= to.saturating_sub(Duration::from_millis(500)));
        let (rss, size) = sample.map_or((f64::NAN, f64::NAN), |(_, rss, size)| (*rss, *size));
        println!(
            "{:>7}{} {rate:>10.0} {:>9.2} {:>9.2} {rss:>9.0} {size:>10.0}",
            (w + 1) * usize::try_from(window.as_secs()).unwrap(),
            if complete { "s" } else { "*" },
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
    }
    let mut all: Vec<Duration> = outcome.done.iter().map(|(_, took)| *took).collect();
    all.sort_unstable();
    let created = outcome.done.len();
    println!(
        "total: {created} created in {:.1} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} failed; \
         final RSS {:.0} MiB, data {:.0} MiB ({:.1} KB per record)",
        outcome.elapsed.as_secs_f64(),
        created as f64 / outcome.elapsed.as_secs_f64(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        outcome.failures.len(),
        rss_mib(server.child.id()),
        dir_mib(&data),
        dir_mib(&data) * 1024.0 / created.max(1) as f64,
    );

    let mut passed = true;
    if !outcome.failures.is_empty() {
        passed = false;
        println!("FAILED requests: {}", outcome.failures.len());
        for failure in outcome.failures.iter().take(5) {
            println!("  {failure}");
        }
    }
    if !trouble.is_empty() {
        passed = false;
        println!("FAILED: step budget overruns or suspensions:");
        for (name, value) in &trouble {
            println!("  {name} {value}");
        }
    }
    if seconds.is_none() && rates.len() >= 3 {
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        if let Some(low) = rates.iter().find(|r| **r < median / 2.0) {
            passed = false;
            println!("FAILED: a window ran {low:.0}/s, below half the median {median:.0}/s");
        }
    }
    if created == 0 {
        passed = false;
        println!("FAILED: nothing was created");
    }
    passed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The short form every benchmark has (`USM_BENCH_SHORT=1`, run by CI) is a 30 s soak.
    let short = std::env::var_os("USM_BENCH_SHORT").is_some();
    let seconds = env_number("USM_SOAK_SECONDS").or(short.then_some(30));
    let records = usize::try_from(env_number("USM_SOAK_RECORDS").unwrap_or(200_000)).unwrap();
    let window = Duration::from_secs(env_number("USM_SOAK_WINDOW").unwrap_or(10));
    let clients: Vec<usize> = std::env::var("USM_SOAK_CLIENTS")
        .unwrap_or_else(|_| "32,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let mut passed = true;
    for clients in clients {
        passed &= soak(clients, records, seconds, window).await;
    }
    if !passed {
        println!("\nsoak FAILED");
        std::process::exit(1);
    }
    println!("\nsoak passed");
}
