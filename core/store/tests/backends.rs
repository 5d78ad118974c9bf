//! The same behaviour checks against both backends, plus sled-only durability checks.

#![allow(clippy::unwrap_used)] // helpers of tests panic on failure, like the tests

use std::time::Duration;

use serde_json::json;
use usm_model::{
    Action, Approval, Decision, Domain, HistoryEntry, Kind, Link, LinkRel, Process, Record,
    RecordId, Role, State, Timestamp,
};
use usm_store::{
    Expected, IdempotencyClaim, ListQuery, SledStore, Store, StoreConfig, StoreError, Write,
};

fn incident(domain: &str, title: &str) -> Record {
    let now = Timestamp::now();
    Record {
        id: RecordId::from_parts("INC", 0), // assigned by the store
        kind: Kind::new("incident").unwrap(),
        process: Process::Recover,
        domain: Domain::new(domain).unwrap(),
        state: State::new("new").unwrap(),
        title: title.into(),
        fields: json!({"impact": "low"}).as_object().unwrap().clone(),
        links: vec![],
        version: 0,
        created_at: now,
        created_by: "ann".into(),
        updated_at: now,
        updated_by: "ann".into(),
    }
}

fn entry(action: Action) -> HistoryEntry {
    HistoryEntry {
        version: 0,
        at: Timestamp::now(),
        actor: "ann".into(),
        action,
        comment: None,
        changes: vec![],
        approval: None,
        steps: vec![],
        cause: None,
    }
}

fn create(store: &dyn Store, domain: &str, title: &str) -> Record {
    store
        .commit(Write {
            record: incident(domain, title),
            history: entry(Action::Create),
            expected: Expected::Create {
                prefix: "INC".into(),
                idempotency: None,
            },
        })
        .unwrap()
        .record
}

fn transition(store: &dyn Store, mut record: Record, to: &str) -> Record {
    let expected = record.version;
    record.state = State::new(to).unwrap();
    store
        .commit(Write {
            record,
            history: entry(Action::Transition),
            expected: Expected::Version(expected),
        })
        .unwrap()
        .record
}

fn numbers_ids_and_versions(store: &dyn Store) {
    let first = create(store, "it", "one");
    let second = create(store, "it", "two");
    assert_eq!(first.id.as_str(), "INC-1");
    assert_eq!(second.id.as_str(), "INC-2");
    assert_eq!(first.version, 1);
    let moved = transition(store, first.clone(), "in_progress");
    assert_eq!(moved.version, 2);
    assert_eq!(store.get(&first.id).unwrap().unwrap(), moved);
    let history = store.history(&first.id, 0, 100).unwrap();
    assert_eq!(
        history.iter().map(|h| h.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(store.history(&first.id, 1, 100).unwrap().len(), 1);
}

fn refuses_stale_versions_and_changes_nothing(store: &dyn Store) {
    let record = create(store, "it", "one");
    let _ = transition(store, record.clone(), "in_progress");
    let mut stale = record.clone();
    stale.title = "stale".into();
    let error = store
        .commit(Write {
            record: stale,
            history: entry(Action::Update),
            expected: Expected::Version(1),
        })
        .unwrap_err();
    assert!(
        matches!(error, StoreError::VersionMismatch { current: 2, .. }),
        "{error:?}"
    );
    assert_eq!(store.get(&record.id).unwrap().unwrap().title, "one");
    assert_eq!(store.history(&record.id, 0, 100).unwrap().len(), 2);
    let events = store.events_after(0, 100).unwrap();
    assert_eq!(events.len(), 2, "the refused write left no event");
}

fn lists_through_indexes_with_pagination(store: &dyn Store) {
    let mut all = Vec::new();
    for i in 0..7 {
        let domain = if i % 2 == 0 { "it" } else { "hr" };
        all.push(create(store, domain, &format!("r{i}")));
    }
    let _ = transition(store, all[0].clone(), "in_progress");
    let _ = transition(store, all[2].clone(), "in_progress");

    let it_new = ListQuery {
        domain: Some(Domain::new("it").unwrap()),
        state: Some(State::new("new").unwrap()),
        limit: 10,
        ..ListQuery::default()
    };
    let page = store.list(&it_new).unwrap();
    let titles: Vec<_> = page.records.iter().map(|r| r.title.as_str()).collect();
    assert_eq!(titles, ["r4", "r6"]);
    assert_eq!(page.next, None);

    let mut query = ListQuery {
        limit: 3,
        ..ListQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = store.list(&query).unwrap();
        seen.extend(page.records.into_iter().map(|r| r.title));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]);

    let hr = ListQuery {
        domain: Some(Domain::new("hr").unwrap()),
        kind: Some(Kind::new("incident").unwrap()),
        limit: 10,
        ..ListQuery::default()
    };
    assert_eq!(store.list(&hr).unwrap().records.len(), 3);
}

fn binds_idempotency_keys(store: &dyn Store) {
    let claim = IdempotencyClaim {
        key: "k1".into(),
        request_hash: "h1".into(),
    };
    let write = Write {
        record: incident("it", "once"),
        history: entry(Action::Create),
        expected: Expected::Create {
            prefix: "INC".into(),
            idempotency: Some(claim),
        },
    };
    let first = store.commit(write.clone()).unwrap().record;
    match store.commit(write).unwrap_err() {
        StoreError::IdempotencyKeyUsed {
            record_id,
            request_hash,
        } => {
            assert_eq!(record_id, first.id);
            assert_eq!(request_hash, "h1");
        }
        other => panic!("expected the key to be bound, got {other:?}"),
    }
    assert_eq!(
        store
            .list(&ListQuery {
                limit: 10,
                ..ListQuery::default()
            })
            .unwrap()
            .records
            .len(),
        1
    );
}

fn keeps_approvals_backlinks_and_events(store: &dyn Store) {
    let parent = create(store, "it", "parent");
    let mut child = incident("it", "child");
    child.links = vec![Link {
        rel: LinkRel::Parent,
        to: parent.id.clone(),
    }];
    let child = store
        .commit(Write {
            record: child,
            history: entry(Action::Create),
            expected: Expected::Create {
                prefix: "INC".into(),
                idempotency: None,
            },
        })
        .unwrap()
        .record;
    assert_eq!(
        store.backlinks(&parent.id).unwrap(),
        vec![(LinkRel::Parent, child.id.clone())]
    );

    let mut history = entry(Action::Approval);
    history.approval = Some(Approval {
        seq: 0,
        decision: Decision::Approve,
        comment: Some("fine".into()),
        actor: "cab".into(),
        roles: vec![Role::Agent],
        at: Timestamp::now(),
        state: parent.state.clone(),
        record_version: 0,
    });
    let approved = store
        .commit(Write {
            record: parent.clone(),
            history,
            expected: Expected::Version(1),
        })
        .unwrap();
    let approvals = store.approvals(&parent.id).unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].seq, 1);
    assert_eq!(approvals[0].record_version, 2);
    assert_eq!(approved.event.seq, 3);
    let events = store.events_after(1, 10).unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
}

macro_rules! for_both_backends {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $check() { super::$check(&usm_store::MemoryStore::new()); })*
        }
        mod sled {
            $(#[test] fn $check() {
                let dir = tempfile::tempdir().unwrap();
                let store = usm_store::SledStore::open(dir.path(), Default::default()).unwrap();
                super::$check(&store);
            })*
        }
    };
}

for_both_backends!(
    numbers_ids_and_versions,
    refuses_stale_versions_and_changes_nothing,
    lists_through_indexes_with_pagination,
    binds_idempotency_keys,
    keeps_approvals_backlinks_and_events,
);

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

#[test]
fn concurrent_creates_get_distinct_ids_and_ordered_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..25 {
                    create(&store, "it", "x");
                }
            });
        }
    });
    let page = store
        .list(&ListQuery {
            limit: 1000,
            ..ListQuery::default()
        })
        .unwrap();
    let mut ids: Vec<_> = page.records.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    let events = store.events_after(0, 1000).unwrap();
    assert_eq!(events.len(), 200);
    assert!(
        events.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "outbox is gap-free and ordered"
    );
}

#[test]
fn expired_idempotency_keys_can_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        idempotency_ttl: Duration::from_millis(0),
        ..StoreConfig::default()
    };
    let store = SledStore::open(dir.path(), config).unwrap();
    let write = Write {
        record: incident("it", "again"),
        history: entry(Action::Create),
        expected: Expected::Create {
            prefix: "INC".into(),
            idempotency: Some(IdempotencyClaim {
                key: "k".into(),
                request_hash: "h".into(),
            }),
        },
    };
    store.commit(write.clone()).unwrap();
    assert!(store.commit(write).is_ok(), "a key past its TTL binds anew");
}
