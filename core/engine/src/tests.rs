use std::sync::Arc;

use serde_json::json;
use usm_model::{Actor, Catalog, Decision, Role};
use usm_store::{MemoryStore, Store as _};

use crate::{Engine, EngineConfig, EngineError, ListRequest, NewRecord, RecordPatch};

fn engine() -> Engine {
    Engine::new(
        Arc::new(MemoryStore::new()),
        test_catalog(),
        EngineConfig::default(),
    )
}

/// The core kinds, each declaring the free-form fields these tests and their steps write (a
/// module would declare its own the same way).
fn test_catalog() -> Arc<Catalog> {
    let mut kinds = usm_model::core_kinds();
    for kind in &mut kinds {
        for field in ["x", "trail", "notes", "a"] {
            kind.schema["properties"][field] = json!({});
        }
    }
    Arc::new(Catalog::new(kinds).unwrap())
}

#[test]
fn fields_no_schema_declares_are_refused() {
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(Catalog::core()),
        EngineConfig::default(),
    );
    let error = engine
        .create(
            &agent(),
            new("incident", "x", json!({"urgancy": "high"})),
            None,
        )
        .unwrap_err();
    assert_eq!(error.code(), usm_model::ErrorCode::UnknownField, "{error}");
    assert_eq!(error.field().as_deref(), Some("/fields/urgancy"));
    engine
        .create(
            &agent(),
            new("incident", "x", json!({"impact": "high"})),
            None,
        )
        .unwrap();
    let patch: RecordPatch =
        serde_json::from_value(json!({"fields": {"impact": "low", "x/y": 1}})).unwrap();
    let error = engine.update(&agent(), "INC-1", patch, None).unwrap_err();
    assert_eq!(error.field().as_deref(), Some("/fields/x~1y"), "{error}");
    assert_eq!(
        engine.get(&agent(), "INC-1").unwrap().fields["impact"],
        "high",
        "a refused write changes nothing"
    );
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
    let history = engine.history(&agent(), "INC-1", 0, None).unwrap();
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
            .list(
                &agent(),
                ListRequest {
                    limit: Some(10),
                    ..Default::default()
                }
            )
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
    let record = engine.get(&agent(), "INC-1").unwrap();
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
        engine.get(&agent(), "INC-1").unwrap().version,
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
    let patch = RecordPatch {
        title: Some("laptop, 16 GB".into()),
        ..RecordPatch::default()
    };
    engine
        .update(&agent(), first.record.id.as_str(), patch, Some(1))
        .unwrap();
    let later = engine
        .create(&agent(), new("request", "laptop", json!({})), Some("key-1"))
        .unwrap();
    assert!(later.replayed);
    assert_eq!(
        later.record, first.record,
        "a replay answers what the first request got, not the record's current version"
    );
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
        .approve(&cab, "CHG-1", Decision::Approve, Some("ok".into()), None)
        .unwrap();
    assert_eq!(approval.seq, 1);
    assert_eq!(approval.actor, "cab");
    assert_eq!(record.version, 2);
    let history = engine.history(&agent(), "CHG-1", 0, None).unwrap();
    assert_eq!(
        history[1].approval.as_ref().unwrap().decision,
        Decision::Approve
    );
    // A requester cannot approve: someone else's change is not even visible, their own is refused.
    let requester = Actor::new("rob", [Role::Requester]);
    assert!(matches!(
        engine
            .approve(&requester, "CHG-1", Decision::Approve, None, None)
            .unwrap_err(),
        EngineError::NotFound(_)
    ));
    engine
        .create(&requester, new("change", "mine", json!({})), None)
        .unwrap();
    assert!(matches!(
        engine
            .approve(&requester, "CHG-2", Decision::Approve, None, None)
            .unwrap_err(),
        EngineError::Forbidden(_)
    ));
    engine
        .transition(&agent(), "CHG-1", "cancelled", None, None)
        .unwrap();
    assert!(matches!(
        engine
            .approve(&cab, "CHG-1", Decision::Reject, None, None)
            .unwrap_err(),
        EngineError::RecordInactive { .. }
    ));
    assert_eq!(engine.approvals(&agent(), "CHG-1").unwrap().len(), 1);
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
        .list(
            &agent(),
            ListRequest {
                kind: Some("task".into()),
                limit: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    let cursor = first.next_cursor.unwrap();
    let second = engine
        .list(
            &agent(),
            ListRequest {
                kind: Some("task".into()),
                limit: Some(10),
                cursor: Some(cursor.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(second.records.len(), 3);
    assert!(second.next_cursor.is_none());
    let foreign = engine.list(
        &agent(),
        ListRequest {
            kind: Some("incident".into()),
            cursor: Some(cursor),
            ..Default::default()
        },
    );
    assert!(matches!(foreign.unwrap_err(), EngineError::BadCursor(_)));
    assert!(matches!(
        engine
            .list(
                &agent(),
                ListRequest {
                    state: Some("nope".into()),
                    ..Default::default()
                }
            )
            .unwrap_err(),
        EngineError::UnknownState { .. }
    ));
    assert!(
        engine
            .list(
                &agent(),
                ListRequest {
                    limit: Some(0),
                    ..Default::default()
                }
            )
            .is_err()
    );
}

mod pipelines {
    use std::{
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use serde_json::{Value, json};
    use usm_model::{Domain, Process};
    use usm_store::MemoryStore;

    use super::{agent, engine, new};
    use crate::{
        AfterStepWorker, BoundStep, BreakerPolicy, Effect, Engine, EngineConfig, EngineError, Hook,
        OnError, Phase, Pipelines, Runtime, Step, StepError, StepInput, StepOutput,
    };

    fn bound(
        module: &str,
        name: &str,
        hook: Hook,
        phase: Phase,
        order: i32,
        step: impl Step + 'static,
    ) -> Arc<BoundStep> {
        Arc::new(BoundStep {
            module: module.into(),
            name: name.into(),
            runtime: Runtime::Native,
            hook,
            process: Process::Recover,
            phase,
            order,
            on_error: OnError::Fail,
            kinds: Vec::new(),
            step: Arc::new(step),
            breaker: Default::default(),
            latency: Default::default(),
        })
    }

    fn compose(steps: &[Arc<BoundStep>]) -> Pipelines {
        let it = Domain::new("it").unwrap();
        Pipelines::compose(steps.iter().map(|s| (&it, s)))
    }

    /// A step that appends its name to `fields.trail`.
    fn trail(name: &'static str) -> impl Step {
        move |input: &StepInput<'_>| {
            let mut trail = input.record["fields"]["trail"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            trail.push(Value::from(name));
            Ok(StepOutput::Patch(
                json!({"fields": {"trail": trail}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ))
        }
    }

    #[test]
    fn before_steps_run_by_order_then_module_then_name_and_patch_in_turn() {
        let engine = engine();
        engine.set_pipelines(compose(&[
            bound(
                "zeta",
                "a",
                Hook::Create,
                Phase::Before,
                10,
                trail("zeta/a@10"),
            ),
            bound(
                "alpha",
                "b",
                Hook::Create,
                Phase::Before,
                10,
                trail("alpha/b@10"),
            ),
            bound(
                "alpha",
                "a",
                Hook::Create,
                Phase::Before,
                10,
                trail("alpha/a@10"),
            ),
            bound(
                "mid",
                "x",
                Hook::Create,
                Phase::Before,
                -5,
                trail("mid/x@-5"),
            ),
            bound(
                "late",
                "x",
                Hook::Update,
                Phase::Before,
                0,
                trail("update-only"),
            ),
        ]));
        let record = engine
            .create(&agent(), new("incident", "x", json!({})), None)
            .unwrap()
            .record;
        assert_eq!(
            record.fields["trail"],
            json!(["mid/x@-5", "alpha/a@10", "alpha/b@10", "zeta/a@10"])
        );
        let history = engine.history(&agent(), "INC-1", 0, None).unwrap();
        let steps: Vec<_> = history[0]
            .steps
            .iter()
            .map(|s| (s.module.as_str(), s.outcome.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                ("mid", "patched"),
                ("alpha", "patched"),
                ("alpha", "patched"),
                ("zeta", "patched")
            ]
        );
        assert_eq!(history[0].steps[1].changes[0].path, "/fields/trail");
        // Other kinds of the process are untouched by steps limited to a kind, other domains too.
        let mut hr = new("incident", "hr one", json!({}));
        hr.domain = Some("hr".into());
        assert!(
            engine
                .create(&agent(), hr, None)
                .unwrap()
                .record
                .fields
                .get("trail")
                .is_none()
        );
    }

    #[test]
    fn a_rejection_leaves_no_trace_and_names_the_step() {
        let engine = engine();
        let reject = |input: &StepInput<'_>| {
            if input.record["fields"].get("category").is_none() {
                Ok(StepOutput::Reject {
                    code: "missing_category".into(),
                    message: "classify first".into(),
                })
            } else {
                Ok(StepOutput::Continue)
            }
        };
        engine.set_pipelines(compose(&[bound(
            "iso",
            "classified",
            Hook::Create,
            Phase::Before,
            0,
            reject,
        )]));
        match engine
            .create(&agent(), new("incident", "x", json!({})), None)
            .unwrap_err()
        {
            EngineError::StepRejected {
                module,
                step,
                code,
                message,
            } => {
                assert_eq!(
                    (module.as_str(), step.as_str(), code.as_str()),
                    ("iso", "classified", "missing_category")
                );
                assert_eq!(message, "classify first");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            engine.store().events_after(0, 10).unwrap().is_empty(),
            "no event"
        );
        assert!(engine.get(&agent(), "INC-1").is_err(), "no record");
        let record = engine
            .create(
                &agent(),
                new("incident", "x", json!({"category": "mail"})),
                None,
            )
            .unwrap()
            .record;
        assert_eq!(
            record.id.as_str(),
            "INC-1",
            "the rejected write did not use up a number"
        );
    }

    #[test]
    fn failures_follow_on_error_and_bad_patches_are_failures() {
        let engine = engine();
        let crash = |_: &StepInput<'_>| Err(StepError::Trap("unreachable executed".into()));
        let bad_patch = |_: &StepInput<'_>| {
            Ok(StepOutput::Patch(
                json!({"state": "closed"}).as_object().unwrap().clone(),
            ))
        };
        let invalid = |_: &StepInput<'_>| {
            Ok(StepOutput::Patch(
                json!({"fields": {"impact": "cosmic"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ))
        };
        let mut skipping = bound("m", "crash", Hook::Create, Phase::Before, 0, crash);
        Arc::get_mut(&mut skipping).unwrap().on_error = OnError::Skip;
        engine.set_pipelines(compose(&[skipping]));
        let record = engine
            .create(&agent(), new("incident", "x", json!({})), None)
            .unwrap()
            .record;
        let history = engine
            .history(&agent(), record.id.as_str(), 0, None)
            .unwrap();
        assert_eq!(history[0].steps[0].outcome, "skipped: trap");

        for (name, step) in [
            ("crash", Arc::new(crash) as Arc<dyn Step>),
            ("state", Arc::new(bad_patch)),
            ("schema", Arc::new(invalid)),
        ] {
            let mut failing = bound(
                "m",
                name,
                Hook::Create,
                Phase::Before,
                0,
                |_: &StepInput<'_>| Ok(StepOutput::Continue),
            );
            Arc::get_mut(&mut failing).unwrap().step = step;
            engine.set_pipelines(compose(&[failing]));
            match engine
                .create(&agent(), new("incident", "x", json!({})), None)
                .unwrap_err()
            {
                EngineError::StepFailed { module, step, .. } => {
                    assert_eq!((module.as_str(), step.as_str()), ("m", name))
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            engine
                .list(&agent(), Default::default())
                .unwrap()
                .records
                .len(),
            1
        );
    }

    #[test]
    fn transition_and_approval_steps_see_their_context() {
        let engine = engine();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let watcher = move |input: &StepInput<'_>| {
            log.lock()
                .unwrap()
                .push((input.hook, input.context.clone(), input.previous.is_some()));
            Ok(StepOutput::Continue)
        };
        let watcher = Arc::new(watcher);
        let (a, b) = (Arc::clone(&watcher), Arc::clone(&watcher));
        engine.set_pipelines(compose(&[
            bound(
                "w",
                "t",
                Hook::Transition,
                Phase::Before,
                0,
                move |i: &StepInput<'_>| a(i),
            ),
            bound(
                "w",
                "a",
                Hook::Approval,
                Phase::Before,
                0,
                move |i: &StepInput<'_>| b(i),
            ),
        ]));
        engine
            .create(&agent(), new("incident", "x", json!({})), None)
            .unwrap();
        engine
            .transition(&agent(), "INC-1", "in_progress", Some("on it".into()), None)
            .unwrap();
        engine
            .approve(&agent(), "INC-1", usm_model::Decision::Approve, None, None)
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, Hook::Transition);
        assert_eq!(
            seen[0].1["transition"],
            json!({"from": "new", "to": "in_progress", "comment": "on it"})
        );
        assert!(seen[0].2, "transition steps see the previous version");
        assert_eq!(seen[1].0, Hook::Approval);
        assert_eq!(seen[1].1["approval"]["decision"], "approve");
    }

    #[test]
    fn after_steps_create_linked_records_once_as_the_module() {
        let engine = Arc::new(engine());
        let spawn = |input: &StepInput<'_>| {
            assert_eq!(input.phase, Phase::After);
            Ok(StepOutput::Effects(vec![
                Effect::CreateRecord {
                    kind: "task".into(),
                    title: format!("Follow up {}", input.record["id"].as_str().unwrap()),
                    domain: None,
                    fields: Default::default(),
                    link: Some(usm_model::LinkRel::Parent),
                },
                Effect::Transition {
                    record: None,
                    to: "in_progress".into(),
                    comment: None,
                },
                Effect::Notify {
                    audience: "team:mail".into(),
                    message: "new incident".into(),
                },
            ]))
        };
        engine.set_pipelines(compose(&[bound(
            "followup",
            "spawn",
            Hook::Create,
            Phase::After,
            0,
            spawn,
        )]));
        let worker = AfterStepWorker::start(Arc::clone(&engine)).unwrap();
        engine
            .create(&agent(), new("incident", "x", json!({})), None)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while engine.get(&agent(), "TSK-1").is_err()
            || engine.get(&agent(), "INC-1").unwrap().state.as_str() != "in_progress"
        {
            assert!(
                Instant::now() < deadline,
                "the after-step effects did not happen"
            );
            engine
                .commits()
                .wait_past(engine.commits().count(), Duration::from_millis(50));
        }
        worker.stop();
        let task = engine.get(&agent(), "TSK-1").unwrap();
        assert_eq!(task.created_by, "module:followup");
        assert_eq!(task.links[0].to.as_str(), "INC-1");
        let history = engine.history(&agent(), "TSK-1", 0, None).unwrap();
        let cause = history[0].cause.as_ref().unwrap();
        assert_eq!((cause.module.as_str(), cause.depth), ("followup", 1));

        // Replaying from the start (as after a crash before the cursor moved) creates nothing new.
        engine.store().set_cursor("after-steps", 0).unwrap();
        let worker = AfterStepWorker::start(Arc::clone(&engine)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let last = engine
            .store()
            .events_after(0, 1000)
            .unwrap()
            .last()
            .unwrap()
            .seq;
        while engine.store().cursor("after-steps").unwrap() < last {
            assert!(Instant::now() < deadline, "the replay did not finish");
            engine
                .commits()
                .wait_past(engine.commits().count(), Duration::from_millis(50));
        }
        worker.stop();
        assert!(
            engine.get(&agent(), "TSK-2").is_err(),
            "the replayed effect found its first record"
        );
        let events = engine.store().events_after(0, 100).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.event_type == usm_model::EventType::Notification)
        );
    }

    #[test]
    fn a_step_that_keeps_timing_out_is_suspended() {
        let engine = engine();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let slow = move |_: &StepInput<'_>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(StepError::Timeout(50))
        };
        engine.set_pipelines(compose(&[bound(
            "runaway",
            "spin",
            Hook::Create,
            Phase::Before,
            0,
            slow,
        )]));
        for _ in 0..5 {
            let error = engine
                .create(&agent(), new("incident", "x", json!({})), None)
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    EngineError::StepFailed {
                        error: StepError::Timeout(50),
                        ..
                    }
                ),
                "{error}"
            );
        }
        let error = engine
            .create(&agent(), new("incident", "x", json!({})), None)
            .unwrap_err();
        assert!(
            matches!(
                error,
                EngineError::StepFailed {
                    error: StepError::Suspended(_),
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            5,
            "a suspended step is not run"
        );
    }

    fn engine_with(config: EngineConfig) -> Engine {
        Engine::new(Arc::new(MemoryStore::new()), super::test_catalog(), config)
    }

    /// A step that fails with `error` every time, counting its calls.
    fn failing(
        error: StepError,
    ) -> (
        Arc<std::sync::atomic::AtomicUsize>,
        impl Fn(&StepInput<'_>) -> Result<StepOutput, StepError> + Send + Sync + 'static,
    ) {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        (calls, move |_: &StepInput<'_>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(error.clone())
        })
    }

    #[test]
    fn a_stalled_host_never_suspends_a_step_and_answers_overloaded() {
        let engine = engine();
        let (calls, stalled) = failing(StepError::Stalled(1000));
        engine.set_pipelines(compose(&[bound(
            "iso",
            "targets",
            Hook::Create,
            Phase::Before,
            0,
            stalled,
        )]));
        for _ in 0..20 {
            let error = engine
                .create(&agent(), new("incident", "x", json!({})), None)
                .unwrap_err();
            assert_eq!(error.code(), usm_model::ErrorCode::Overloaded, "{error}");
            assert_eq!(error.retry_after_secs(), Some(1));
        }
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            20,
            "the step ran every time: stalls are not its fault"
        );
        let view = &engine.pipelines().describe()[0].steps[0].breaker;
        assert_eq!(view.suspensions, 0);
        assert_eq!(view.failures.get("stalled"), Some(&20));
    }

    #[test]
    fn a_breaker_turned_off_never_suspends() {
        let engine = engine_with(EngineConfig {
            breaker: BreakerPolicy {
                trip_after: 0,
                ..BreakerPolicy::default()
            },
            ..EngineConfig::default()
        });
        let (calls, slow) = failing(StepError::Timeout(50));
        engine.set_pipelines(compose(&[bound(
            "runaway",
            "spin",
            Hook::Create,
            Phase::Before,
            0,
            slow,
        )]));
        for _ in 0..12 {
            let error = engine
                .create(&agent(), new("incident", "x", json!({})), None)
                .unwrap_err();
            assert_eq!(error.code(), usm_model::ErrorCode::StepFailed, "{error}");
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 12);
    }

    #[test]
    fn a_suspension_shows_in_the_pipelines_and_the_trip_count_is_configurable() {
        let engine = engine_with(EngineConfig {
            breaker: BreakerPolicy {
                trip_after: 2,
                suspension: std::time::Duration::from_secs(60),
            },
            ..EngineConfig::default()
        });
        let (calls, slow) = failing(StepError::Memory("grow refused".into()));
        engine.set_pipelines(compose(&[bound(
            "runaway",
            "hog",
            Hook::Create,
            Phase::Before,
            0,
            slow,
        )]));
        for _ in 0..3 {
            let _ = engine.create(&agent(), new("incident", "x", json!({})), None);
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        let view = &engine.pipelines().describe()[0].steps[0].breaker;
        assert_eq!(view.suspensions, 1);
        assert!(view.suspended_for_secs.is_some_and(|s| s > 50), "{view:?}");
        assert_eq!(view.failures.get("memory"), Some(&2));
        assert_eq!(view.failures.get("suspended"), Some(&1));
    }

    #[test]
    fn writes_past_the_admission_queue_are_refused_as_overloaded() {
        let engine = Arc::new(engine_with(EngineConfig {
            admission: crate::AdmissionConfig {
                max_running: 1,
                max_waiting: 0,
                max_wait: std::time::Duration::from_secs(30),
            },
            ..EngineConfig::default()
        }));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let entered_tx = std::sync::Mutex::new(entered_tx);
        let release_rx = std::sync::Mutex::new(release_rx);
        let blocking = move |_: &StepInput<'_>| {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv();
            Ok(StepOutput::Continue)
        };
        engine.set_pipelines(compose(&[bound(
            "slow",
            "wait",
            Hook::Create,
            Phase::Before,
            0,
            blocking,
        )]));
        let first = {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                engine
                    .create(&agent(), new("incident", "first", json!({})), None)
                    .map(|c| c.record.id)
            })
        };
        entered_rx.recv().unwrap();
        let refused = engine
            .create(&agent(), new("incident", "second", json!({})), None)
            .unwrap_err();
        assert_eq!(
            refused.code(),
            usm_model::ErrorCode::Overloaded,
            "{refused}"
        );
        assert_eq!(refused.retry_after_secs(), Some(1));
        // A record without steps in its pipeline does not queue behind pipelines.
        engine
            .create(&agent(), new("task", "no steps for tasks", json!({})), None)
            .unwrap();
        release_tx.send(()).unwrap();
        assert!(first.join().unwrap().is_ok());
        release_tx.send(()).unwrap();
        engine
            .create(&agent(), new("incident", "third", json!({})), None)
            .unwrap();
        assert_eq!(engine.pipeline_load(), (0, 0));
    }

    #[test]
    fn a_swap_mid_write_is_invisible_to_that_write() {
        let engine = Arc::new(engine());
        let swapper = Arc::clone(&engine);
        let swap_during = move |_: &StepInput<'_>| {
            swapper.set_pipelines(Pipelines::default());
            Ok(StepOutput::Continue)
        };
        engine.set_pipelines(compose(&[
            bound("a", "swap", Hook::Create, Phase::Before, 0, swap_during),
            bound("b", "trail", Hook::Create, Phase::Before, 1, trail("b")),
        ]));
        let record = engine
            .create(&agent(), new("incident", "x", json!({})), None)
            .unwrap()
            .record;
        assert_eq!(
            record.fields["trail"],
            json!(["b"]),
            "the write kept the pipelines it started with"
        );
        let record = engine
            .create(&agent(), new("incident", "y", json!({})), None)
            .unwrap()
            .record;
        assert!(
            record.fields.get("trail").is_none(),
            "the next write sees the new set"
        );
    }
}

mod authorization {
    use serde_json::json;
    use usm_model::{Actor, Domain, Role};

    use super::{agent, engine, new};
    use crate::{EngineError, ListRequest, RecordPatch};

    fn in_domain(name: &str, role: Role, domain: &str) -> Actor {
        Actor::new(name, [role]).in_domains([Domain::new(domain).unwrap()])
    }

    #[test]
    fn domain_scope_hides_other_domains_and_refuses_writes_there() {
        let engine = engine();
        let mut hr = new("incident", "salary leak", json!({}));
        hr.domain = Some("hr".into());
        engine.create(&agent(), hr, None).unwrap();
        engine
            .create(&agent(), new("incident", "printer", json!({})), None)
            .unwrap();
        let it_agent = in_domain("ivan", Role::Agent, "it");
        assert!(matches!(
            engine.get(&it_agent, "INC-1"),
            Err(EngineError::NotFound(_))
        ));
        assert!(matches!(
            engine.history(&it_agent, "INC-1", 0, None),
            Err(EngineError::NotFound(_))
        ));
        assert!(matches!(
            engine.transition(&it_agent, "INC-1", "in_progress", None, None),
            Err(EngineError::NotFound(_))
        ));
        let page = engine.list(&it_agent, ListRequest::default()).unwrap();
        assert_eq!(
            page.records
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["INC-2"]
        );
        let hr_filter = ListRequest {
            domain: Some("hr".into()),
            ..Default::default()
        };
        assert!(matches!(
            engine.list(&it_agent, hr_filter),
            Err(EngineError::Forbidden(_))
        ));
        let mut foreign = new("incident", "x", json!({}));
        foreign.domain = Some("hr".into());
        assert!(matches!(
            engine.create(&it_agent, foreign, None),
            Err(EngineError::Forbidden(_))
        ));
    }

    #[test]
    fn requesters_see_and_move_only_their_own_records() {
        let engine = engine();
        let rob = Actor::new("rob", [Role::Requester]);
        engine
            .create(&rob, new("request", "mine", json!({})), None)
            .unwrap();
        engine
            .create(&agent(), new("request", "someone else's", json!({})), None)
            .unwrap();
        engine
            .create(
                &agent(),
                new("request", "on rob's behalf", json!({"requester": "rob"})),
                None,
            )
            .unwrap();
        let visible: Vec<String> = engine
            .list(&rob, ListRequest::default())
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.title)
            .collect();
        assert_eq!(visible, ["mine", "on rob's behalf"]);
        assert!(matches!(
            engine.get(&rob, "REQ-2"),
            Err(EngineError::NotFound(_))
        ));
        assert!(matches!(
            engine.update(
                &rob,
                "REQ-1",
                RecordPatch {
                    title: Some("x".into()),
                    ..Default::default()
                },
                None
            ),
            Err(EngineError::Forbidden(_))
        ));
        assert!(matches!(
            engine.approve(&rob, "REQ-1", usm_model::Decision::Approve, None, None),
            Err(EngineError::Forbidden(_))
        ));
        engine
            .transition(&rob, "REQ-1", "cancelled", Some("not needed".into()), None)
            .unwrap();
        assert!(matches!(
            engine.transition(&rob, "REQ-2", "cancelled", None, None),
            Err(EngineError::NotFound(_))
        ));
    }

    #[test]
    fn oversized_fields_are_refused() {
        let engine = engine();
        let deep = json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}});
        let error = engine
            .create(&agent(), new("task", "x", deep), None)
            .unwrap_err();
        assert!(error.field().unwrap().starts_with("/fields/a/b"), "{error}");
        // A member no schema constrains, so only the engine's own string limit can refuse it.
        let max = crate::Limits::default().max_string_bytes;
        let at_limit = json!({"notes": "x".repeat(max)});
        engine
            .create(&agent(), new("task", "at the limit", at_limit), None)
            .unwrap();
        let past = json!({"notes": "x".repeat(max + 1)});
        let error = engine
            .create(&agent(), new("task", "past the limit", past), None)
            .unwrap_err();
        assert_eq!(error.code(), usm_model::ErrorCode::InvalidInput, "{error}");
        assert_eq!(error.field().as_deref(), Some("/fields/notes"));
        let wide: serde_json::Map<String, serde_json::Value> =
            (0..1001).map(|i| (format!("k{i}"), json!(i))).collect();
        let error = engine
            .create(
                &agent(),
                new("task", "x", serde_json::Value::Object(wide)),
                None,
            )
            .unwrap_err();
        assert_eq!(error.field().as_deref(), Some("/fields"), "{error}");
    }
}

/// Builds every step as one that signals `entered` and waits for `go`.
struct PausingSteps {
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    go: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl crate::StepBuilder for PausingSteps {
    fn build(
        &self,
        _request: &crate::BuildRequest<'_>,
    ) -> Result<Arc<dyn crate::Step>, crate::BuildError> {
        let entered = self.entered.lock().unwrap().clone();
        let go = Arc::clone(&self.go);
        Ok(Arc::new(
            move |_: &crate::StepInput<'_>| -> Result<crate::StepOutput, crate::StepError> {
                entered.send(()).unwrap();
                go.lock().unwrap().recv().unwrap();
                Ok(crate::StepOutput::Continue)
            },
        ))
    }
}

#[test]
fn a_module_cannot_be_disabled_under_a_write_that_uses_its_kind() {
    let engine = Arc::new(engine());
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let runtimes = crate::Runtimes {
        wasm: None,
        rhai: Some(Arc::new(PausingSteps {
            entered: std::sync::Mutex::new(entered_tx),
            go: Arc::new(std::sync::Mutex::new(go_rx)),
        })),
        manifest_checks: Vec::new(),
    };
    let registry = Arc::new(crate::Registry::open(Arc::clone(&engine), runtimes).unwrap());
    let manifest = r#"
        id = "risk"
        version = "1.0.0"
        framework = "custom"
        api = "^0.1"
        [[kinds]]
        name = "risk"
        prefix = "RSK"
        process = "improve"
        states = [{ name = "open", category = "initial" }]
        [[steps]]
        name = "pause"
        hook = "create"
        process = "improve"
        phase = "before"
        script = "pause.rhai"
    "#;
    let files: crate::ModuleFiles = [
        ("module.toml".to_owned(), manifest.as_bytes().to_vec()),
        ("pause.rhai".to_owned(), Vec::new()),
    ]
    .into();
    let admin = Actor::new("root", [Role::Admin]);
    registry.install(&admin, files).unwrap();
    registry
        .enable(&admin, "risk", &["it".into()], None)
        .unwrap();

    std::thread::scope(|scope| {
        // A create of the module's kind, paused inside its pipeline: it has its catalog.
        let creating = scope.spawn(|| engine.create(&agent(), new("risk", "r", json!({})), None));
        entered.recv().unwrap();
        // Disabling it in that domain waits for that write instead of checking before it lands.
        let removing = scope.spawn(|| registry.disable(&admin, "risk", &["it".into()], false));
        let waited = std::time::Instant::now();
        while !removing.is_finished() && waited.elapsed() < std::time::Duration::from_millis(300) {
            std::thread::yield_now();
        }
        go.send(()).unwrap();
        let created = creating.join().unwrap().unwrap();
        assert_eq!(created.record.id.as_str(), "RSK-1");
        match removing.join().unwrap() {
            Err(crate::RegistryError::InUse(detail)) => {
                assert!(detail.contains("RSK-1"), "{detail}")
            }
            other => panic!("disabling should find RSK-1, got {other:?}"),
        }
    });
    assert!(
        engine
            .catalog()
            .get(&crate::Kind::new("risk").unwrap())
            .is_some()
    );
}

#[test]
fn pruning_keeps_events_a_webhook_has_not_passed() {
    let store = Arc::new(MemoryStore::with_config(usm_store::StoreConfig {
        outbox_retention: std::time::Duration::ZERO,
        ..usm_store::StoreConfig::default()
    }));
    let engine = Engine::new(
        store.clone(),
        Arc::new(Catalog::core()),
        EngineConfig::default(),
    );
    for title in ["one", "two", "three"] {
        engine
            .create(&agent(), new("task", title, json!({})), None)
            .unwrap();
    }
    store.set_cursor("after-steps", 3).unwrap();
    let policy = crate::webhooks::WebhookPolicy::new(&["192.0.2.0/24".into()]).unwrap();
    let new_hook = serde_json::from_value(json!({"url": "http://192.0.2.7/hook"})).unwrap();
    let admin = Actor::new("root", [Role::Admin]);
    let hook = crate::webhooks::create(store.as_ref(), &policy, &admin, new_hook).unwrap();
    for title in ["four", "five"] {
        engine
            .create(&agent(), new("task", title, json!({})), None)
            .unwrap();
    }
    store.set_cursor("after-steps", 5).unwrap();
    let pruned = crate::retention::prune(&engine, &["after-steps".into()]).unwrap();
    assert_eq!(pruned.events, 3, "the webhook starts after event 3");
    store.set_cursor(&hook.consumer(), 5).unwrap();
    let pruned = crate::retention::prune(&engine, &["after-steps".into()]).unwrap();
    assert_eq!(pruned.events, 2);
    assert_eq!(store.outbox_len().unwrap(), 0);
}

#[test]
fn webhook_destinations_must_be_public_or_allowed() {
    let open = crate::webhooks::WebhookPolicy::default();
    for refused in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://127.0.0.1:8080/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:192.168.1.1]/",
        "http://0x7f.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://user:pass@93.184.216.34/",
        "ftp://93.184.216.34/",
        "file:///etc/passwd",
    ] {
        assert!(
            open.check_url(refused).is_err(),
            "{refused} must be refused"
        );
    }
    assert!(open.check_url("https://93.184.216.34/hook").is_ok());
    let loopback =
        crate::webhooks::WebhookPolicy::new(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
    assert!(loopback.check_url("http://127.0.0.1:8080/").is_ok());
    assert!(loopback.check_url("http://[::1]/").is_ok());
    assert!(loopback.check_url("http://10.1.2.3/").is_err());
    assert!(crate::webhooks::WebhookPolicy::new(&["10.0.0.0/33".into()]).is_err());
}
