use std::collections::BTreeMap;

use serde_json::{Value, json};
use usm_engine::{Effect, Hook, Phase, Step, StepError, StepInput, StepOutput};
use usm_model::{Actor, Role};

use crate::{ModuleScripts, ScriptError, ScriptLimits};

fn module(files: &[(&str, &str)]) -> Result<ModuleScripts, ScriptError> {
    let files: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(n, s)| ((*n).to_owned(), s.as_bytes().to_vec()))
        .collect();
    ModuleScripts::compile(&files, &ScriptLimits::default())
}

fn run(
    module: &ModuleScripts,
    file: &str,
    config: Value,
    record: Value,
) -> Result<StepOutput, StepError> {
    let step = module.step(file, &config, 200).unwrap();
    let actor = Actor::new("ann", [Role::Agent]);
    step.run(&StepInput {
        hook: Hook::Create,
        phase: Phase::Before,
        record: &record,
        previous: None,
        actor: &actor,
        context: &Value::Null,
    })
}

#[test]
fn continue_patch_reject_and_effects() {
    let scripts = module(&[(
        "priority.rhai",
        r#"
        fn run(input) {
            let f = input.record.fields;
            if f.impact == () { return reject("no_impact", "set impact for " + input.actor.name); }
            if f.impact == "none" { return; }
            if f.impact == "spawn" { return effects([#{type: "notify", audience: "team", message: "hi"}]); }
            patch(#{fields: #{priority: input.config.matrix[f.impact]}})
        }
        "#,
    )])
    .unwrap();
    let config = json!({"matrix": {"high": "P1", "low": "P4"}});
    let out = run(
        &scripts,
        "priority.rhai",
        config.clone(),
        json!({"fields": {"impact": "high"}}),
    )
    .unwrap();
    assert_eq!(
        out,
        StepOutput::Patch(
            json!({"fields": {"priority": "P1"}})
                .as_object()
                .unwrap()
                .clone()
        )
    );
    let out = run(
        &scripts,
        "priority.rhai",
        config.clone(),
        json!({"fields": {}}),
    )
    .unwrap();
    assert_eq!(
        out,
        StepOutput::Reject {
            code: "no_impact".into(),
            message: "set impact for ann".into()
        }
    );
    let out = run(
        &scripts,
        "priority.rhai",
        config.clone(),
        json!({"fields": {"impact": "none"}}),
    )
    .unwrap();
    assert_eq!(out, StepOutput::Continue);
    let out = run(
        &scripts,
        "priority.rhai",
        config,
        json!({"fields": {"impact": "spawn"}}),
    )
    .unwrap();
    assert_eq!(
        out,
        StepOutput::Effects(vec![Effect::Notify {
            audience: "team".into(),
            message: "hi".into()
        }])
    );
}

#[test]
fn garbage_output_is_an_error() {
    let scripts = module(&[
        ("number.rhai", "fn run(input) { 42 }"),
        (
            "both.rhai",
            r#"fn run(input) { #{patch: #{}, reject: #{code: "x"}} }"#,
        ),
        (
            "effect.rhai",
            r#"fn run(input) { effects([#{type: "explode"}]) }"#,
        ),
    ])
    .unwrap();
    for file in ["number.rhai", "both.rhai", "effect.rhai"] {
        let error = run(&scripts, file, Value::Null, json!({})).unwrap_err();
        assert!(
            matches!(error, StepError::InvalidOutput(_)),
            "{file}: {error:?}"
        );
    }
}

#[test]
fn limits_are_enforced_and_obeyed() {
    let scripts = module(&[
        ("spin.rhai", "fn run(input) { loop { } }"),
        ("count.rhai", "fn run(input) { let n = 0; for i in 0..input.config.n { n += i; } patch(#{fields: #{n: n}}) }"),
        ("deep.rhai", "fn f(n) { f(n + 1) } fn run(input) { f(0) }"),
        ("big.rhai", r#"fn run(input) { let s = "x"; for i in 0..30 { s += s; } }"#),
        ("wide.rhai", "fn run(input) { let a = []; for i in 0..20000 { a.push(i); } }"),
    ])
    .unwrap();
    // Obeyed: a loop well within the budget finishes with its result.
    let out = run(&scripts, "count.rhai", json!({"n": 1000}), json!({})).unwrap();
    assert_eq!(
        out,
        StepOutput::Patch(
            json!({"fields": {"n": 499_500}})
                .as_object()
                .unwrap()
                .clone()
        )
    );
    // Violated: each limit ends the call with its error.
    let spin = run(&scripts, "spin.rhai", Value::Null, json!({})).unwrap_err();
    assert!(
        matches!(spin, StepError::Limit(_) | StepError::Timeout(_)),
        "{spin:?}"
    );
    let deep = run(&scripts, "deep.rhai", Value::Null, json!({})).unwrap_err();
    assert!(
        matches!(deep, StepError::Limit(ref m) if m.contains("stack")),
        "{deep:?}"
    );
    let big = run(&scripts, "big.rhai", Value::Null, json!({})).unwrap_err();
    assert!(
        matches!(big, StepError::Limit(ref m) if m.contains("too large")),
        "{big:?}"
    );
    let wide = run(&scripts, "wide.rhai", Value::Null, json!({})).unwrap_err();
    assert!(
        matches!(wide, StepError::Limit(ref m) if m.contains("too large")),
        "{wide:?}"
    );
}

#[test]
fn the_wall_clock_deadline_stops_a_slow_script() {
    let files: BTreeMap<String, Vec<u8>> = [(
        "slow.rhai".to_owned(),
        b"fn run(input) { loop { let x = 1; } }".to_vec(),
    )]
    .into();
    let limits = ScriptLimits {
        max_operations: u64::MAX / 2,
        ..ScriptLimits::default()
    };
    let scripts = ModuleScripts::compile(&files, &limits).unwrap();
    let step = scripts.step("slow.rhai", &Value::Null, 20).unwrap();
    let actor = Actor::new("ann", [Role::Agent]);
    let started = std::time::Instant::now();
    let error = step
        .run(&StepInput {
            hook: Hook::Create,
            phase: Phase::Before,
            record: &json!({}),
            previous: None,
            actor: &actor,
            context: &Value::Null,
        })
        .unwrap_err();
    assert_eq!(error, StepError::Timeout(20));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn eval_is_disabled_and_imports_stay_inside_the_module() {
    assert!(matches!(
        module(&[("e.rhai", r#"fn run(input) { eval("1") }"#)]),
        Err(ScriptError::Compile { .. })
    ));
    let scripts = module(&[
        ("helpers.rhai", "fn tag(x) { x + \"!\" }"),
        (
            "main.rhai",
            r#"fn run(input) { import "helpers" as h; patch(#{title: h::tag("hi")}) }"#,
        ),
        (
            "escape.rhai",
            r#"fn run(input) { import "/etc/passwd" as p; }"#,
        ),
    ])
    .unwrap();
    let out = run(&scripts, "main.rhai", Value::Null, json!({})).unwrap();
    assert_eq!(
        out,
        StepOutput::Patch(json!({"title": "hi!"}).as_object().unwrap().clone())
    );
    assert!(matches!(
        run(&scripts, "escape.rhai", Value::Null, json!({})),
        Err(StepError::Trap(_))
    ));
}

#[test]
fn compile_errors_name_file_and_line() {
    match module(&[
        ("ok.rhai", "fn run(input) { }"),
        ("broken.rhai", "fn run(input) {\n  let x = ;\n}"),
    ]) {
        Err(ScriptError::Compile { file, line, .. }) => {
            assert_eq!((file.as_str(), line), ("broken.rhai", 2))
        }
        other => panic!("{:?}", other.err()),
    }
    let scripts = module(&[("norun.rhai", "fn other(x) { x }")]).unwrap();
    assert!(matches!(
        scripts.step("norun.rhai", &Value::Null, 50),
        Err(ScriptError::NoRun(_))
    ));
}

/// A log sink for one test: what a human-format subscriber wrote.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn print_output_is_one_capped_log_field() {
    let scripts = module(&[(
        "noisy.rhai",
        r#"
        fn run(input) {
            print("fine\n2026-01-01T00:00:00.000000Z ERROR usm_engine: forged");
            let long = "";
            for i in 0..100 { long += "0123456789012345678901234567890123456789"; }
            print(long);
        }
        "#,
    )])
    .unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // A parallel test may have cached "never" for the print callsite before this
        // subscriber existed; re-evaluate it.
        tracing::callsite::rebuild_interest_cache();
        run(&scripts, "noisy.rhai", Value::Null, json!({"fields": {}})).unwrap();
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "one line per print: {log}");
    assert!(
        lines
            .iter()
            .all(|line| line.split_whitespace().nth(1) == Some("INFO")),
        "no line of another level: {log}"
    );
    assert!(
        lines[0].contains(r"fine\n2026"),
        "the newline is escaped: {log}"
    );
    assert!(lines[1].contains("truncated=true"), "{log}");
    assert!(lines[1].len() < 2_300, "capped: {} bytes", lines[1].len());
}
