use std::sync::Arc;

use serde_json::json;
use usm_model::{Actor, Catalog, Decision, Role};
use usm_store::MemoryStore;

use crate::{Engine, EngineConfig, EngineError, ListRequest, NewRecord, RecordPatch};

fn engine() -> Engine {
    Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(Catalog::core()),
        EngineConfig::default(),
    )
}

fn agent() -> Actor {
    Actor::new("ann", [Role::Agent])
}

fn new(kind: &str, title: &str, fields: serde_json::Value) -> NewRecord {
    serde_json::from_value(json!({"kind": kind, "title": title, "fields": fields})).unwrap()
}

#[test]
fn creates_with_kind_prefix_initial_state_and_history() {
    let engine = engine();
    let created = engine
        .create(
            &agent(),
            new("incident", " Mail down ", json!({"impact": "high"})),
            None,
        )
        .unwrap();
    let record = created.record;
    assert_eq!(record.id.as_str(), "INC-1");
    assert_eq!(record.state.as_str(), "new");
    assert_eq!(record.title, "Mail down");
    assert_eq!(record.domain.as_str(), "it");
    let change = engine
        .create(&agent(), new("change", "Patch", json!({})), None)
        .unwrap()
        .record;
    assert_eq!(change.id.as_str(), "CHG-1");
    let history = engine.history("INC-1", 0, None).unwrap();
    assert_eq!(history.len(), 1);
    assert!(
        history[0]
            .changes
            .iter()
            .any(|c| c.path == "/fields/impact")
    );
}

#[test]
fn refuses_bad_input_naming_the_field() {
    let engine = engine();
    let error = engine
        .create(&agent(), new("incidnet", "x", json!({})), None)
        .unwrap_err();
    assert!(matches!(error, EngineError::UnknownKind { .. }));
    assert_eq!(error.field().as_deref(), Some("/kind"));
    let error = engine
        .create(&agent(), new("incident", "x", json!({"urgency": 3})), None)
        .unwrap_err();
    assert_eq!(error.field().as_deref(), Some("/fields/urgency"));
    let error = engine
        .create(&agent(), new("incident", "   ", json!({})), None)
        .unwrap_err();
    assert_eq!(error.field().as_deref(), Some("/title"));
    let mut bad_domain = new("incident", "x", json!({}));
    bad_domain.domain = Some("mars".into());
    assert_eq!(
        engine
            .create(&agent(), bad_domain, None)
            .unwrap_err()
            .field()
            .as_deref(),
        Some("/domain")
    );
    let linked: NewRecord = serde_json::from_value(json!({
        "kind": "task", "title": "t", "links": [{"rel": "parent", "to": "REQ-9"}]
    }))
    .unwrap();
    assert!(matches!(
        engine.create(&agent(), linked, None).unwrap_err(),
        EngineError::UnknownLinkTarget { .. }
    ));
    assert!(
        engine
            .list(ListRequest {
                limit: Some(10),
                ..Default::default()
            })
            .unwrap()
            .records
            .is_empty()
    );
}

#[test]
fn walks_the_lifecycle_and_refuses_illegal_moves() {
    let engine = engine();
    engine
        .create(&agent(), new("incident", "x", json!({})), None)
        .unwrap();
    let error = engine
        .transition(&agent(), "INC-1", "closed", None, None)
        .unwrap_err();
    match error {
        EngineError::IllegalTransition { allowed, .. } => {
            let allowed: Vec<_> = allowed.iter().map(|s| s.as_str()).collect();
            assert_eq!(allowed, ["in_progress", "cancelled"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        engine
            .transition(&agent(), "INC-1", "flying", None, None)
            .unwrap_err(),
        EngineError::UnknownState { .. }
    ));
    for to in [
        "in_progress",
        "on_hold",
        "in_progress",
        "resolved",
        "in_progress",
        "resolved",
        "closed",
    ] {
        engine
            .transition(&agent(), "INC-1", to, Some(format!("to {to}")), None)
            .unwrap();
    }
    let record = engine.get("INC-1").unwrap();
    assert_eq!(record.state.as_str(), "closed");
    assert_eq!(record.version, 8);
    let requester = Actor::new("rob", [Role::Requester]);
    engine
        .create(&requester, new("incident", "mine", json!({})), None)
        .unwrap();
    assert!(matches!(
        engine
            .transition(&requester, "INC-2", "in_progress", None, None)
            .unwrap_err(),
        EngineError::TransitionForbidden { .. }
    ));
    engine
        .transition(&requester, "INC-2", "cancelled", None, None)
        .unwrap();
}

#[test]
fn if_match_guards_updates() {
    let engine = engine();
    engine
        .create(
            &agent(),
            new("incident", "x", json!({"impact": "low"})),
            None,
        )
        .unwrap();
    let patch: RecordPatch =
        serde_json::from_value(json!({"fields": {"impact": "high", "x": {"y": 1}}})).unwrap();
    let updated = engine
        .update(&agent(), "INC-1", patch.clone(), Some(1))
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.fields["impact"], "high");
    let stale = engine
        .update(&agent(), "INC-1", patch.clone(), Some(1))
        .unwrap_err();
    assert!(matches!(
        stale,
        EngineError::VersionMismatch { current: 2, .. }
    ));
    let removal: RecordPatch = serde_json::from_value(json!({"fields": {"x": null}})).unwrap();
    let updated = engine.update(&agent(), "INC-1", removal, None).unwrap();
    assert!(!updated.fields.contains_key("x"));
    let invalid: RecordPatch =
        serde_json::from_value(json!({"fields": {"impact": "huge"}})).unwrap();
    assert!(matches!(
        engine.update(&agent(), "INC-1", invalid, None).unwrap_err(),
        EngineError::InvalidFields { .. }
    ));
    assert_eq!(
        engine.get("INC-1").unwrap().version,
        3,
        "refused writes change nothing"
    );
}

#[test]
fn idempotent_creates_replay_and_detect_reuse() {
    let engine = engine();
    let first = engine
        .create(&agent(), new("request", "laptop", json!({})), Some("key-1"))
        .unwrap();
    let again = engine
        .create(&agent(), new("request", "laptop", json!({})), Some("key-1"))
        .unwrap();
    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(first.record.id, again.record.id);
    let other = engine
        .create(&agent(), new("request", "phone", json!({})), Some("key-1"))
        .unwrap_err();
    assert!(matches!(other, EngineError::IdempotencyKeyReused { .. }));
    let someone_else = Actor::new("bob", [Role::Agent]);
    let theirs = engine
        .create(
            &someone_else,
            new("request", "laptop", json!({})),
            Some("key-1"),
        )
        .unwrap();
    assert_ne!(
        theirs.record.id, first.record.id,
        "keys are scoped per principal"
    );
}

#[test]
fn approvals_are_recorded_in_history() {
    let engine = engine();
    engine
        .create(
            &agent(),
            new("change", "upgrade", json!({"change_type": "normal"})),
            None,
        )
        .unwrap();
    let cab = Actor::new("cab", [Role::Agent]);
    let (approval, record) = engine
        .approve(&cab, "CHG-1", Decision::Approve, Some("ok".into()))
        .unwrap();
    assert_eq!(approval.seq, 1);
    assert_eq!(approval.actor, "cab");
    assert_eq!(record.version, 2);
    let history = engine.history("CHG-1", 0, None).unwrap();
    assert_eq!(
        history[1].approval.as_ref().unwrap().decision,
        Decision::Approve
    );
    let requester = Actor::new("rob", [Role::Requester]);
    assert!(matches!(
        engine
            .approve(&requester, "CHG-1", Decision::Approve, None)
            .unwrap_err(),
        EngineError::Forbidden(_)
    ));
    engine
        .transition(&agent(), "CHG-1", "cancelled", None, None)
        .unwrap();
    assert!(matches!(
        engine
            .approve(&cab, "CHG-1", Decision::Reject, None)
            .unwrap_err(),
        EngineError::RecordInactive { .. }
    ));
    assert_eq!(engine.approvals("CHG-1").unwrap().len(), 1);
}

#[test]
fn lists_with_cursors_bound_to_their_filters() {
    let engine = engine();
    for i in 0..5 {
        engine
            .create(&agent(), new("task", &format!("t{i}"), json!({})), None)
            .unwrap();
    }
    engine
        .create(&agent(), new("incident", "i", json!({})), None)
        .unwrap();
    let first = engine
        .list(ListRequest {
            kind: Some("task".into()),
            limit: Some(2),
            ..Default::default()
        })
        .unwrap();
    let cursor = first.next_cursor.unwrap();
    let second = engine
        .list(ListRequest {
            kind: Some("task".into()),
            limit: Some(10),
            cursor: Some(cursor.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(second.records.len(), 3);
    assert!(second.next_cursor.is_none());
    let foreign = engine.list(ListRequest {
        kind: Some("incident".into()),
        cursor: Some(cursor),
        ..Default::default()
    });
    assert!(matches!(foreign.unwrap_err(), EngineError::BadCursor(_)));
    assert!(matches!(
        engine
            .list(ListRequest {
                state: Some("nope".into()),
                ..Default::default()
            })
            .unwrap_err(),
        EngineError::UnknownState { .. }
    ));
    assert!(
        engine
            .list(ListRequest {
                limit: Some(0),
                ..Default::default()
            })
            .is_err()
    );
}
