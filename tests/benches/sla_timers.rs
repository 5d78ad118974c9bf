//! SLA timer benchmark (not a test): N open incidents under one agreement; how fast the SLA
//! worker schedules their timers, re-arms them after an agreement change and fires them when
//! they come due, with durable acks as in production (only loading the incidents skips the
//! wait for the disk), and the memory it takes. `USM_BENCH_RECORDS` sets N (default 100,000);
//! `USM_BENCH_DUE_MINUTES` when the timers come due (default: 1 minute per 10,000 records, at
//! least 0.1, so nothing comes due before firing is measured); `USM_BENCH_CACHE_MIB` the
//! store's page cache (default 256); `USM_BENCH_SHORT=1` runs 500 records, with every check.
//! Run with `cargo bench -p usm-tests --bench sla_timers`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use usm_engine::{Engine, EngineConfig, NewRecord, RecordPatch, SlaWorker};
use usm_model::{Actor, Catalog, Role};
use usm_store::{SledStore, Store, StoreConfig};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The store in `dir` and an engine over it; `durable_acks` as the store is opened.
fn open(dir: &std::path::Path, durable_acks: bool) -> (Arc<dyn Store>, Arc<Engine>) {
    let mut config = StoreConfig {
        durable_acks,
        ..StoreConfig::default()
    };
    if let Some(mib) = env::<u64>("USM_BENCH_CACHE_MIB") {
        config.cache_capacity = mib * 1024 * 1024;
    }
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir, config).unwrap());
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        Arc::new(Catalog::core()),
        EngineConfig::default(),
    ));
    (store, engine)
}

fn main() {
    let short = std::env::var_os("USM_BENCH_SHORT").is_some_and(|v| v != "0");
    let records: usize = env("USM_BENCH_RECORDS").unwrap_or(if short { 500 } else { 100_000 });
    // Late enough that nothing comes due before firing is measured (the benchmark checks it).
    let due_in_minutes: f64 =
        env("USM_BENCH_DUE_MINUTES").unwrap_or((records as f64 / 10_000.0).max(0.1));
    let dir = tempfile::tempdir().unwrap();
    // Loading is not what is measured: acknowledge without waiting for the disk.
    let (store, engine) = open(dir.path(), false);
    let admin = Actor::new("bench", [Role::Admin]);
    let agreement: NewRecord = serde_json::from_value(json!({"kind": "agreement", "title": "Bench SLA", "fields": {
        "targets": {"P1": {"resolution_minutes": due_in_minutes}}, "calendar": {"always": true}, "warning_percent": 95}}))
    .unwrap();
    let agreement = engine.create(&admin, agreement, None).unwrap().record;
    engine
        .transition(&admin, agreement.id.as_str(), "active", None, None)
        .unwrap();

    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let engine = &engine;
            let admin = &admin;
            scope.spawn(move || {
                for i in (worker..records).step_by(2) {
                    let new: NewRecord = serde_json::from_value(json!({"kind": "incident", "title": format!("i{i}"), "fields": {"priority": "P1"}})).unwrap();
                    engine.create(admin, new, None).unwrap();
                }
            });
        }
    });
    let loaded = started.elapsed();
    // Everything measured from here on acknowledges writes only once they are on disk.
    drop((store, engine));
    let (store, engine) = open(dir.path(), true);
    let rss_before = rss_mib();
    println!(
        "{records} open incidents created in {:.1} s (without durable acks), due in {due_in_minutes} min; RSS {rss_before:.0} MiB",
        loaded.as_secs_f64()
    );
    println!("scheduling, re-arming and firing with durable acks:");

    // Scheduling: the worker reads the outbox and arms a warning and a breach timer per record.
    let scheduling = Instant::now();
    let worker = SlaWorker::start(Arc::clone(&engine)).unwrap();
    let expected = records * 2;
    while store.timer_count().unwrap() < expected {
        assert!(
            scheduling.elapsed() < Duration::from_secs(1800),
            "scheduling stalled at {}",
            store.timer_count().unwrap()
        );
        engine
            .commits()
            .wait_past(engine.commits().count(), Duration::from_millis(100));
    }
    let scheduled = scheduling.elapsed();
    let rss_scheduled = rss_mib();
    println!(
        "scheduled {expected} timers in {:.1} s: {:.0} timers/s ({:.0} records/s); RSS {rss_scheduled:.0} MiB (+{:.0})",
        scheduled.as_secs_f64(),
        expected as f64 / scheduled.as_secs_f64(),
        records as f64 / scheduled.as_secs_f64(),
        rss_scheduled - rss_before
    );

    // Re-arming: the agreement's warning threshold moves from 95 % to 90 %, so every record's
    // warning timer moves earlier; the worker re-arms the whole domain.
    let rearming = Instant::now();
    let patch: RecordPatch =
        serde_json::from_value(json!({"fields": {"warning_percent": 90}})).unwrap();
    engine
        .update(&admin, agreement.id.as_str(), patch, None)
        .unwrap();
    while !store
        .events_after(store.cursor("sla").unwrap(), 1)
        .unwrap()
        .is_empty()
    {
        assert!(
            rearming.elapsed() < Duration::from_secs(1800),
            "re-arming stalled"
        );
        engine
            .commits()
            .wait_past(engine.commits().count(), Duration::from_millis(100));
    }
    let rearmed = rearming.elapsed();
    println!(
        "re-armed {records} records after an agreement change in {:.1} s: {:.0} records/s; RSS {:.0} MiB",
        rearmed.as_secs_f64(),
        records as f64 / rearmed.as_secs_f64(),
        rss_mib()
    );

    worker.stop();
    assert_eq!(
        store.timer_count().unwrap(),
        expected,
        "nothing came due while scheduling"
    );

    // Firing: let every timer come due, then time a worker draining them (each fires once).
    let last_due =
        started + loaded + Duration::from_secs_f64(due_in_minutes * 60.0) + Duration::from_secs(1);
    while Instant::now() < last_due {
        engine
            .commits()
            .wait_past(engine.commits().count(), Duration::from_millis(500));
    }
    let firing = Instant::now();
    let worker = SlaWorker::start(Arc::clone(&engine)).unwrap();
    while store.timer_count().unwrap() > 0 {
        assert!(
            firing.elapsed() < Duration::from_secs(3600),
            "firing stalled"
        );
        engine
            .commits()
            .wait_past(engine.commits().count(), Duration::from_millis(50));
    }
    let fired_in = firing.elapsed();
    worker.stop();
    // Memory is read before the check below, which reads every event back.
    let rss_fired = rss_mib();
    let (mut sla_events, mut after) = (0, 0);
    loop {
        let page = store.events_after(after, 10_000).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        sla_events += page
            .iter()
            .filter(|e| {
                matches!(
                    e.event_type,
                    usm_model::EventType::SlaWarning | usm_model::EventType::SlaBreach
                )
            })
            .count();
    }
    assert_eq!(sla_events, expected, "every timer fired exactly once");
    println!(
        "fired {expected} due timers ({sla_events} events) in {:.1} s: {:.0} timers/s; RSS {rss_fired:.0} MiB (+{:.0})",
        fired_in.as_secs_f64(),
        expected as f64 / fired_in.as_secs_f64(),
        rss_fired - rss_scheduled
    );
}
