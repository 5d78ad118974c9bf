//! The breaker's one log line per suspension, in a test binary of its own: it installs the
//! process-wide subscriber, which no other test thread can race (as a unit test it flaked when
//! another thread cached the callsite's interest before its scoped subscriber existed).

#![allow(clippy::unwrap_used)]

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;
use usm_engine::{
    BoundStep, BreakerPolicy, Engine, EngineConfig, Hook, NewRecord, OnError, Phase, Pipelines,
    Runtime, StepError, StepInput, StepOutput,
};
use usm_model::{Actor, Catalog, Domain, Process, Role};
use usm_store::MemoryStore;

struct BreakerLines(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BreakerLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "usm::breaker" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_suspension_logs_one_line() {
    let lines = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(BreakerLines(Arc::clone(&lines))),
    )
    .unwrap();
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(Catalog::core()),
        EngineConfig {
            breaker: BreakerPolicy {
                trip_after: 2,
                suspension: std::time::Duration::from_secs(60),
            },
            ..EngineConfig::default()
        },
    );
    let spin = Arc::new(BoundStep {
        module: "runaway".into(),
        name: "spin".into(),
        runtime: Runtime::Native,
        hook: Hook::Create,
        process: Process::Recover,
        phase: Phase::Before,
        order: 0,
        on_error: OnError::Fail,
        kinds: Vec::new(),
        step: Arc::new(|_: &StepInput<'_>| -> Result<StepOutput, StepError> {
            Err(StepError::Timeout(50))
        }),
        breaker: Default::default(),
        latency: Default::default(),
    });
    let it = Domain::new("it").unwrap();
    engine.set_pipelines(Pipelines::compose([(&it, &spin)]));
    let actor = Actor::new("ann", [Role::Agent]);
    for _ in 0..12 {
        let new: NewRecord =
            serde_json::from_value(json!({"kind": "incident", "title": "x"})).unwrap();
        let _ = engine.create(&actor, new, None);
    }
    assert_eq!(lines.load(Ordering::SeqCst), 1);
}
