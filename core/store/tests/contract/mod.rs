//! The store contract: behaviour every backend (memory, sled, PostgreSQL) must show, written
//! once. A backend's test file includes this module and instantiates every check with
//! [`store_contract!`], giving it a [`Backend`] that opens fresh, empty stores.

#![allow(clippy::unwrap_used, dead_code)] // helpers of tests panic on failure, like the tests

use std::time::Duration;

use serde_json::json;
use usm_model::{
    Action, Approval, Decision, Domain, HistoryEntry, Kind, Link, LinkRel, Process, Record,
    RecordId, Role, State, Timestamp,
};
use usm_store::{
    Expected, IdempotencyClaim, ListQuery, Store, StoreConfig, StoreError, Timer, Write,
};

pub fn incident(domain: &str, title: &str) -> Record {
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

pub fn entry(action: Action) -> HistoryEntry {
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
        visibility: None,
        stale_approvals: vec![],
        by_agent: false,
    }
}

pub fn create(store: &dyn Store, domain: &str, title: &str) -> Record {
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

pub fn transition(store: &dyn Store, mut record: Record, to: &str) -> Record {
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

pub fn numbers_ids_and_versions(store: &dyn Store) {
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

pub fn refuses_stale_versions_and_changes_nothing(store: &dyn Store) {
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

pub fn lists_through_indexes_with_pagination(store: &dyn Store) {
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

pub fn binds_idempotency_keys(store: &dyn Store) {
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
            ..
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

pub fn keeps_approvals_backlinks_and_events(store: &dyn Store) {
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
        content: None,
        groups: vec![],
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

pub fn keyed(title: &str, key: &str, at: Timestamp) -> Write {
    let mut history = entry(Action::Create);
    history.at = at;
    Write {
        record: incident("it", title),
        history,
        expected: Expected::Create {
            prefix: "INC".into(),
            idempotency: Some(IdempotencyClaim {
                key: key.into(),
                request_hash: title.into(),
            }),
        },
    }
}

pub fn outbox(store: &dyn Store) -> Vec<u64> {
    let events = store.events_after(0, 1000).unwrap();
    events.iter().map(|e| e.seq).collect()
}

/// Retentions of the pruning checks: a day for keys, none for consumed events.
pub fn pruning_config() -> StoreConfig {
    StoreConfig {
        outbox_retention: Duration::ZERO,
        ..StoreConfig::default()
    }
}

pub fn prunes_consumed_events_and_expired_keys(store: &dyn Store) {
    let day = Duration::from_secs(24 * 60 * 60);
    let now = Timestamp::now();
    let yesterday = now.checked_sub(day).unwrap();
    store.commit(keyed("old", "k-old", yesterday)).unwrap();
    store.commit(keyed("new", "k-new", now)).unwrap();
    let first = create(store, "it", "plain");
    store.notify(&first, "ann", 0, json!({"n": 1})).unwrap();
    assert_eq!(outbox(store), [1, 2, 3, 4]);
    let consumers = ["a".to_owned(), "b".to_owned()];

    // No consumer named: nothing is known to be consumed. A consumer without a cursor holds
    // everything back.
    let pruned = store.prune(&[], now).unwrap();
    assert_eq!(pruned.events, 0);
    assert_eq!(pruned.idempotency_keys, 1, "the key bound a day ago");
    store.set_cursor("a", 3).unwrap();
    assert_eq!(store.prune(&consumers, now).unwrap().events, 0);
    store.set_cursor("b", 2).unwrap();
    assert_eq!(store.prune(&consumers, now).unwrap().events, 2);
    assert_eq!(outbox(store), [3, 4], "what b has not passed stays");
    assert_eq!(store.outbox_len().unwrap(), 2);

    // The key pruned can bind anew; the one within its retention still replays.
    assert!(store.commit(keyed("old", "k-old", now)).is_ok());
    assert!(matches!(
        store.commit(keyed("new", "k-new", now)),
        Err(StoreError::IdempotencyKeyUsed { .. })
    ));
    assert_eq!(store.idempotency_len().unwrap(), 2);
    let tomorrow = now.checked_add(day).unwrap();
    assert_eq!(
        store.prune(&consumers, tomorrow).unwrap().idempotency_keys,
        2
    );
    assert_eq!(store.idempotency_len().unwrap(), 0);
}

pub fn a_key_bound_anew_survives_its_old_expiry(store: &dyn Store) {
    let day = Duration::from_secs(24 * 60 * 60);
    let now = Timestamp::now();
    store
        .commit(keyed("first", "k", now.checked_sub(day).unwrap()))
        .unwrap();
    // Expired but not pruned yet: a create binds it anew, leaving the old expiry behind.
    let second = store.commit(keyed("second", "k", now)).unwrap().record;
    assert_eq!(store.prune(&[], now).unwrap().idempotency_keys, 0);
    match store.commit(keyed("second", "k", now)) {
        Err(StoreError::IdempotencyKeyUsed { record_id, .. }) => assert_eq!(record_id, second.id),
        other => panic!("the new binding must hold, got {other:?}"),
    }
}

pub fn replays_return_the_record_as_created(store: &dyn Store) {
    let now = Timestamp::now();
    let created = store.commit(keyed("as created", "k", now)).unwrap().record;
    transition(store, created.clone(), "in_progress");
    match store.commit(keyed("as created", "k", now)) {
        Err(StoreError::IdempotencyKeyUsed { record, .. }) => {
            assert_eq!(record.as_deref(), Some(&created));
        }
        other => panic!("expected a replay, got {other:?}"),
    }
}

/// A fired timer writes its ledger entry in the same transaction, once; a later entry for the
/// same cycle, clock and level never replaces the first, and a new cycle has its own.
pub fn keeps_an_sla_ledger(store: &dyn Store) {
    let record = create(store, "it", "Core down");
    let timer = Timer {
        record_id: record.id.clone(),
        clock: "resolution".into(),
        level: "breach".into(),
        due_at: Timestamp::UNIX_EPOCH,
        cycle: 1,
    };
    store
        .schedule_timers(&record.id, std::slice::from_ref(&timer))
        .unwrap();
    let entry = json!({"level": "breach", "agreement": "AGR-1", "target_minutes": 240.0});
    let fired = store
        .fire_timer(&timer, &record, json!({}), &entry)
        .unwrap();
    assert!(fired.is_some());
    assert!(
        store
            .fire_timer(&timer, &record, json!({}), &json!({"level": "again"}))
            .unwrap()
            .is_none(),
        "a timer fires once"
    );
    assert_eq!(
        store.sla_ledger(&record.id).unwrap(),
        std::slice::from_ref(&entry)
    );
    let lowered = json!({"level": "breach", "agreement": "AGR-1", "target_minutes": 480.0});
    assert!(
        !store
            .append_sla_ledger(&record.id, 1, "resolution", "breach", &lowered)
            .unwrap()
    );
    let reopened = json!({"level": "breach", "cycle": 2});
    assert!(
        store
            .append_sla_ledger(&record.id, 2, "resolution", "breach", &reopened)
            .unwrap()
    );
    assert_eq!(store.sla_ledger(&record.id).unwrap(), [entry, reopened]);
    let other = create(store, "it", "Other");
    assert!(store.sla_ledger(&other.id).unwrap().is_empty());
}

pub fn concurrent_creates_get_distinct_ids_and_ordered_events(backend: &dyn Backend) {
    let store = &*backend.open(StoreConfig::default());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..25 {
                    create(store, "it", "x");
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

/// Writes that arrive together (sharing a transaction in the sled store, contending for rows in
/// PostgreSQL): one that fails (a used key, a stale version) must fail alone, as if it had come
/// by itself.
pub fn concurrent_failing_writes_fail_alone(backend: &dyn Backend) {
    let store = &*backend.open(StoreConfig::default());
    let target = create(store, "it", "contended");
    let start = std::sync::Barrier::new(16);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..16)
            .map(|n| {
                let (store, start, target) = (store, &start, target.clone());
                scope.spawn(move || {
                    start.wait();
                    if n % 2 == 0 {
                        let mut record = target;
                        record.title = format!("writer {n}");
                        store.commit(Write {
                            record,
                            history: entry(Action::Update),
                            expected: Expected::Version(1),
                        })
                    } else {
                        store.commit(Write {
                            record: incident("it", &format!("keyed {n}")),
                            history: entry(Action::Create),
                            expected: Expected::Create {
                                prefix: "INC".into(),
                                idempotency: Some(IdempotencyClaim {
                                    key: format!("key-{}", n % 4),
                                    request_hash: "h".into(),
                                }),
                            },
                        })
                    }
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let updates = outcomes.iter().step_by(2);
    let won: Vec<_> = updates.clone().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "exactly one update of version 1 wins");
    assert!(
        updates
            .filter(|o| o.is_err())
            .all(|o| matches!(o, Err(StoreError::VersionMismatch { current: 2, .. }))),
        "the others see the winner's version: {outcomes:?}"
    );
    let stored = store.get(&target.id).unwrap().unwrap();
    assert_eq!((stored.version, &stored.title), (2, &won[0].record.title));

    let creates: Vec<_> = outcomes.iter().skip(1).step_by(2).collect();
    let created: Vec<_> = creates.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(created.len(), 2, "one create per key (keys 1 and 3)");
    for outcome in creates.iter().filter(|o| o.is_err()) {
        let Err(StoreError::IdempotencyKeyUsed { record_id, .. }) = outcome else {
            panic!("a replay is refused with its key's record: {outcome:?}");
        };
        assert!(created.iter().any(|c| &c.record.id == record_id));
    }
    assert_eq!(
        store.events_after(0, 100).unwrap().len(),
        1 + 1 + 2,
        "only applied writes leave events"
    );
}

pub fn expired_idempotency_keys_can_be_reused(backend: &dyn Backend) {
    let config = StoreConfig {
        idempotency_ttl: Duration::from_millis(0),
        ..StoreConfig::default()
    };
    let store = backend.open(config);
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

/// A generation moves with every change in its area, and only then.
pub fn moves_generations_with_their_areas(store: &dyn Store) {
    let (tokens, modules) = (
        store.generation("token").unwrap(),
        store.generation("module").unwrap(),
    );
    store
        .write_settings(&[("token/abc".into(), b"{}".to_vec())], &[])
        .unwrap();
    assert!(store.generation("token").unwrap() > tokens);
    assert_eq!(store.generation("module").unwrap(), modules);
    let token_now = store.generation("token").unwrap();
    store.write_settings(&[], &["token/abc".into()]).unwrap();
    assert!(
        store.generation("token").unwrap() > token_now,
        "removals count"
    );

    let incidents = store.generation("kind/incident").unwrap();
    let record = create(store, "it", "x");
    let created = store.generation("kind/incident").unwrap();
    assert!(created > incidents);
    transition(store, record, "in_progress");
    assert!(store.generation("kind/incident").unwrap() > created);
    assert_eq!(store.generation("kind/change").unwrap(), 0);
}

/// Many firers of the same due timers at once (the SLA workers of several nodes, or one node's
/// after a takeover): each timer fires exactly once, one event per timer.
pub fn fires_each_timer_once_among_concurrent_firers(store: &dyn Store) {
    let record = create(store, "it", "Core down");
    let timers: Vec<Timer> = (0..8)
        .map(|n| Timer {
            record_id: record.id.clone(),
            clock: format!("clock-{n}"),
            level: "breach".into(),
            due_at: Timestamp::UNIX_EPOCH,
            cycle: 1,
        })
        .collect();
    store.schedule_timers(&record.id, &timers).unwrap();
    let before = store.events_after(0, 1000).unwrap().len();
    let fired: usize = std::thread::scope(|scope| {
        let firers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    timers
                        .iter()
                        .filter(|timer| {
                            store
                                .fire_timer(timer, &record, json!({}), &json!({"level": "breach"}))
                                .unwrap()
                                .is_some()
                        })
                        .count()
                })
            })
            .collect();
        firers.into_iter().map(|f| f.join().unwrap()).sum()
    });
    assert_eq!(
        fired,
        timers.len(),
        "each timer fired once among the firers"
    );
    assert_eq!(
        store.events_after(0, 1000).unwrap().len(),
        before + timers.len()
    );
    assert_eq!(store.timer_count().unwrap(), 0);
}

/// Opens fresh, empty stores of one backend.
pub trait Backend {
    /// A new, empty store with these tunables.
    fn open(&self, config: StoreConfig) -> Box<dyn Store>;
}

/// Every contract check as a `#[test]`, for the backend `$backend` builds.
macro_rules! store_contract {
    ($backend:expr) => {
        store_contract!(@store $backend;
            numbers_ids_and_versions,
            refuses_stale_versions_and_changes_nothing,
            lists_through_indexes_with_pagination,
            binds_idempotency_keys,
            keeps_approvals_backlinks_and_events,
            prunes_consumed_events_and_expired_keys,
            a_key_bound_anew_survives_its_old_expiry,
            replays_return_the_record_as_created,
            keeps_an_sla_ledger,
            moves_generations_with_their_areas,
            fires_each_timer_once_among_concurrent_firers,
        );
        store_contract!(@backend $backend;
            concurrent_creates_get_distinct_ids_and_ordered_events,
            concurrent_failing_writes_fail_alone,
            expired_idempotency_keys_can_be_reused,
        );
    };
    (@store $backend:expr; $($check:ident),* $(,)?) => {
        $(#[test] fn $check() {
            let backend = $backend;
            let store = $crate::contract::Backend::open(&backend, $crate::contract::pruning_config());
            $crate::contract::$check(&*store);
        })*
    };
    (@backend $backend:expr; $($check:ident),* $(,)?) => {
        $(#[test] fn $check() {
            $crate::contract::$check(&$backend);
        })*
    };
}
