//! Queue and search benchmark (not a test): N incidents (default 100,000) spread over eight
//! groups and four priorities under one agreement, each with a description and three comments
//! (one an internal note). Measures rebuilding the index from the store, a queue page by group
//! sorted by SLA due, a two-word search, and the lag from an acknowledged durable write to its
//! place in the index. Checks every answer: each page holds only its group, in due order; each
//! hit holds the words searched for; the index counts every record.
//! `USM_BENCH_RECORDS` sets N; `USM_BENCH_SHORT=1` runs 600 records with every check.
//! Run with `cargo bench -p usm-tests --bench search`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use usm_engine::{Engine, EngineConfig, NewRecord, conversation::NewComment};
use usm_model::{Actor, Catalog, Role, Visibility};
use usm_search::{Filter, SearchIndex, SearchWorker, Sort, SortKey};
use usm_store::{SledStore, Store, StoreConfig};

const GROUPS: usize = 8;
const WORDS: &[&str] = &[
    "printer",
    "vpn",
    "laptop",
    "badge",
    "network",
    "switch",
    "router",
    "password",
    "email",
    "calendar",
    "license",
    "monitor",
    "keyboard",
    "docking",
    "station",
    "wifi",
    "firewall",
    "database",
    "backup",
    "restore",
    "payroll",
    "invoice",
    "contract",
    "vendor",
    "toner",
    "paper",
    "jam",
    "slow",
    "crash",
    "error",
    "timeout",
    "certificate",
    "expired",
    "disk",
    "full",
    "memory",
    "leak",
    "upgrade",
    "patch",
    "reboot",
    "login",
    "locked",
    "account",
    "access",
    "request",
    "install",
    "software",
    "update",
    "broken",
    "screen",
    "battery",
    "charger",
    "phone",
    "headset",
    "meeting",
    "room",
    "projector",
    "camera",
    "sound",
    "driver",
];

/// A deterministic stream of word indexes (a linear congruential generator).
struct Words(u64);

impl Words {
    fn next(&mut self) -> &'static str {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        WORDS[((self.0 >> 33) as usize) % WORDS.len()]
    }

    fn sentence(&mut self, n: usize) -> String {
        (0..n).map(|_| self.next()).collect::<Vec<_>>().join(" ")
    }
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn open(dir: &std::path::Path, durable_acks: bool) -> (Arc<dyn Store>, Arc<Engine>) {
    let config = StoreConfig {
        durable_acks,
        ..StoreConfig::default()
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir, config).unwrap());
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        Arc::new(Catalog::core()),
        EngineConfig::default(),
    ));
    (store, engine)
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let at = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[at].as_secs_f64() * 1000.0
}

fn dir_mib(dir: &std::path::Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let short = std::env::var_os("USM_BENCH_SHORT").is_some_and(|v| v != "0");
    let records: usize = env("USM_BENCH_RECORDS").unwrap_or(if short { 600 } else { 100_000 });
    let queries = if short { 50 } else { 1_000 };
    let dir = tempfile::tempdir().unwrap();
    let admin = Actor::new("bench", [Role::Admin]);

    // Loading is not what is measured: acknowledge without waiting for the disk.
    let (store, engine) = open(dir.path(), false);
    for g in 0..GROUPS {
        engine
            .directory()
            .create_group(
                &admin,
                serde_json::from_value(
                    json!({"id": format!("g{g}"), "name": format!("Group {g}"), "domain": "it"}),
                )
                .unwrap(),
            )
            .unwrap();
    }
    let agreement: NewRecord =
        serde_json::from_value(json!({"kind": "agreement", "title": "Desk", "fields": {
        "targets": {"P1": {"resolution_minutes": 240}, "P2": {"resolution_minutes": 480},
                    "P3": {"resolution_minutes": 2400}, "P4": {"resolution_minutes": 9600}},
        "calendar": {"always": true}}}))
        .unwrap();
    let agreement = engine.create(&admin, agreement, None).unwrap().record;
    engine
        .transition(&admin, agreement.id.as_str(), "active", None, None)
        .unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..2u64 {
            let (engine, admin) = (&engine, &admin);
            scope.spawn(move || {
                let mut words = Words(worker + 1);
                for i in (worker as usize..records).step_by(2) {
                    let new: NewRecord = serde_json::from_value(json!({
                        "kind": "incident", "title": words.sentence(4),
                        "fields": {"priority": format!("P{}", i % 4 + 1),
                                   "assignment_group": format!("g{}", i % GROUPS),
                                   "description": words.sentence(12)}}))
                    .unwrap();
                    let id = engine.create(admin, new, None).unwrap().record.id;
                    for c in 0..3 {
                        let comment = NewComment {
                            body: words.sentence(8),
                            visibility: if c == 2 {
                                Visibility::Internal
                            } else {
                                Visibility::Public
                            },
                        };
                        engine
                            .add_comment(admin, id.as_str(), comment, None)
                            .unwrap();
                    }
                }
            });
        }
    });
    println!(
        "{records} incidents with {} comments loaded in {:.1} s (without durable acks)",
        records * 3,
        started.elapsed().as_secs_f64()
    );
    drop((store, engine));

    // Everything measured from here on acknowledges writes only once they are on disk.
    let (store, engine) = open(dir.path(), true);
    let index_dir = dir.path().join("search");
    let index = Arc::new(SearchIndex::open(&index_dir).unwrap());
    let rebuilding = Instant::now();
    let worker = SearchWorker::start(Arc::clone(&engine), Arc::clone(&index)).unwrap();
    while index.rebuilding() {
        assert!(
            rebuilding.elapsed() < Duration::from_secs(3600),
            "rebuild stalled"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let rebuilt = rebuilding.elapsed();
    let total = index.count(&admin, &Filter::default()).unwrap();
    assert_eq!(
        total,
        records + 1,
        "every incident and the agreement are indexed"
    );
    println!(
        "index rebuilt from the store in {:.1} s ({:.0} records/s); {:.0} MiB on disk",
        rebuilt.as_secs_f64(),
        total as f64 / rebuilt.as_secs_f64(),
        dir_mib(&index_dir)
    );

    // A queue page: one group's incidents, most urgent SLA first.
    let sort = Sort {
        key: SortKey::SlaDue,
        descending: false,
    };
    let mut samples = Vec::with_capacity(queries);
    for q in 0..queries {
        let filter = Filter {
            assignment_group: Some(format!("g{}", q % GROUPS)),
            ..Filter::default()
        };
        let started = Instant::now();
        let page = index
            .queue(&engine, &admin, &filter, sort, 50, None)
            .unwrap();
        samples.push(started.elapsed());
        assert_eq!(page.records.len(), 50.min(records / GROUPS));
        let dues: Vec<String> = page
            .records
            .iter()
            .map(|r| {
                assert_eq!(r.fields["assignment_group"], format!("g{}", q % GROUPS));
                let status = engine.sla(r).unwrap().unwrap();
                status.resolution.unwrap().due_at.unwrap().to_string()
            })
            .collect();
        let mut sorted = dues.clone();
        sorted.sort();
        assert_eq!(dues, sorted, "a queue page is in due order");
    }
    println!(
        "queue page (50 by group, sorted by SLA due): p50 {:.2} ms, p99 {:.2} ms over {queries}",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99)
    );

    // A two-word search, best match first.
    let mut words = Words(99);
    let mut samples = Vec::with_capacity(queries);
    for _ in 0..queries {
        let (a, b) = (words.next(), words.next());
        let started = Instant::now();
        let hits = index
            .search(&engine, &admin, &format!("{a} {b}"), 20, None)
            .unwrap();
        samples.push(started.elapsed());
        for record in hits.records.iter().take(3) {
            let text = format!("{} {}", record.title, record.fields["description"]);
            let history = engine
                .comments(&admin, record.id.as_str(), 0, Some(10))
                .unwrap();
            let all = history
                .iter()
                .fold(text, |all, c| format!("{all} {}", c.body));
            assert!(all.contains(a) && all.contains(b), "{a} {b}: {all}");
        }
    }
    println!(
        "search (two words, 20 best): p50 {:.2} ms, p99 {:.2} ms over {queries}",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99)
    );

    // Lag: from a durable create's acknowledgement to the index holding it. The create's event
    // is the one after the outbox head (nothing else writes here); the head is walked to once.
    let lags = if short { 20 } else { 200 };
    let mut samples = Vec::with_capacity(lags);
    let mut head = usm_engine::outbox_head(store.as_ref()).unwrap();
    for i in 0..lags {
        let new: NewRecord =
            serde_json::from_value(json!({"kind": "incident", "title": format!("lag probe {i}")}))
                .unwrap();
        let created = engine.create(&admin, new, None).unwrap().record;
        let acknowledged = Instant::now();
        let event = store.events_after(head, 1).unwrap().pop().unwrap();
        assert_eq!(event.record_id, created.id, "the create's own event");
        head = event.seq;
        while index.position() < head {
            assert!(
                acknowledged.elapsed() < Duration::from_secs(30),
                "lag over 30 s"
            );
            std::thread::park_timeout(Duration::from_micros(200));
        }
        samples.push(acknowledged.elapsed());
    }
    println!(
        "index lag after a durable create: p50 {:.1} ms, p99 {:.1} ms over {lags}",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99)
    );
    worker.stop();
}
