//! The store contract against the memory and sled backends, plus sled-only durability checks.

#![allow(clippy::unwrap_used)] // helpers of tests panic on failure, like the tests

#[macro_use]
mod contract;

use contract::{Backend, create, pruning_config, transition};
use serde_json::json;
use usm_model::Timestamp;
use usm_store::{SledStore, Store, StoreConfig, StoreError};

struct Memory;

impl Backend for Memory {
    fn open(&self, config: StoreConfig) -> Box<dyn Store> {
        Box::new(usm_store::MemoryStore::with_config(config))
    }
}

/// Opens each store in a directory of its own under one temporary directory.
struct Sled(tempfile::TempDir, std::sync::atomic::AtomicUsize);

impl Sled {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap(), Default::default())
    }
}

impl Backend for Sled {
    fn open(&self, config: StoreConfig) -> Box<dyn Store> {
        let n = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(SledStore::open(&self.0.path().join(n.to_string()), config).unwrap())
    }
}

mod memory {
    store_contract!(super::Memory);
}

mod sled {
    store_contract!(super::Sled::new());
}

#[test]
fn sled_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (record, history) = {
        let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
        let record = create(&store, "it", "keep me");
        let record = transition(&store, record, "in_progress");
        let history = store.history(&record.id, 0, 10).unwrap();
        (record, history)
    };
    let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.get(&record.id).unwrap().unwrap(), record);
    assert_eq!(store.history(&record.id, 0, 10).unwrap(), history);
    assert_eq!(
        create(&store, "it", "next").id.as_str(),
        "INC-2",
        "counters survive"
    );
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// A steady stream of events that a consumer follows: with pruning, the data directory stops
/// growing once freed space is reused (bounded: 16 rounds of 1,000 events of ~1 KiB).
#[test]
fn sled_data_directory_levels_off_under_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), pruning_config()).unwrap();
    let record = create(&store, "it", "busy");
    let payload = json!({"note": "x".repeat(1000)});
    let consumers = ["follower".to_owned()];
    let mut sizes = Vec::new();
    for _ in 0..16 {
        let mut last = 0;
        for _ in 0..1000 {
            last = store
                .notify(&record, "ann", 0, payload.clone())
                .unwrap()
                .seq;
        }
        store.set_cursor("follower", last).unwrap();
        store.prune(&consumers, Timestamp::now()).unwrap();
        store.flush().unwrap();
        sizes.push(dir_size(dir.path()));
    }
    let written = 16 * 1000 * 1000;
    let (middle, last) = (sizes[7], sizes[15]);
    assert!(
        last < written / 2 && last < middle + middle / 2,
        "the directory keeps growing: {sizes:?}"
    );
    assert!(
        store.outbox_len().unwrap() <= 1,
        "consumed events are pruned"
    );
}

/// A store written before values were compressed (format 1) opens, reads and is marked as
/// format 2; a store from a newer usm is refused.
#[test]
fn sled_reads_and_upgrades_format_1_and_refuses_newer() {
    let dir = tempfile::tempdir().unwrap();
    let set_format = |version: u64| {
        let db = ::sled::open(dir.path()).unwrap();
        let counters = db.open_tree("counters").unwrap();
        let before = counters.get("~format").unwrap().unwrap();
        counters.insert("~format", &version.to_be_bytes()).unwrap();
        u64::from_be_bytes(before.as_ref().try_into().unwrap())
    };
    let record = {
        let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
        create(&store, "it", "written as format 1")
    };
    assert_eq!(set_format(1), 2);
    {
        let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(store.get(&record.id).unwrap().unwrap(), record);
    }
    assert_eq!(set_format(3), 2, "opening a format 1 store marks it 2");
    let refused = SledStore::open(dir.path(), StoreConfig::default()).err();
    assert!(
        matches!(
            refused,
            Some(StoreError::Format {
                found: 3,
                expected: 2
            })
        ),
        "{refused:?}"
    );
}
