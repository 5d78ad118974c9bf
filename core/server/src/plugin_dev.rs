//! `usm plugin test`: runs a module's steps on a record locally, in the sandbox and under the
//! limits the server uses, and reports what each step did — the inner loop of writing a step.

use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use usm_engine::{Hook, Module, OnError, Phase, Runtimes, StepInput, StepOutput};
use usm_model::{Actor, Catalog, Kind, Role};
use usm_plugin_host::{PluginHost, PluginLimits};
use usm_script_host::{ScriptHost, ScriptLimits};
use usm_store::{MemoryStore, Store};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct PluginTestArgs {
    /// The module directory (with module.toml).
    pub dir: PathBuf,
    /// A JSON file with the record the steps see (`kind`, `title`, `fields`, …).
    #[arg(long)]
    pub record: PathBuf,
    /// The hook to run.
    #[arg(long, value_enum, default_value_t = TestHook::Create)]
    pub hook: TestHook,
    /// The state a transition goes to (with `--hook transition`).
    #[arg(long)]
    pub to: Option<String>,
}

/// The hooks `usm plugin test` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestHook {
    /// A create.
    Create,
    /// An update.
    Update,
    /// A transition (`--to`).
    Transition,
    /// An approval decision.
    Approval,
}

impl From<TestHook> for Hook {
    fn from(hook: TestHook) -> Self {
        match hook {
            TestHook::Create => Hook::Create,
            TestHook::Update => Hook::Update,
            TestHook::Transition => Hook::Transition,
            TestHook::Approval => Hook::Approval,
        }
    }
}

/// Builds the module as the server would (every capability it asks for granted) and runs its
/// steps for the record's kind and the hook: before-steps in order, each seeing the patches of
/// the ones before, then after-steps. A failing step is an error (non-zero exit); a rejection
/// is an outcome.
pub fn run(args: &PluginTestArgs) -> anyhow::Result<Value> {
    let hook = Hook::from(args.hook);
    anyhow::ensure!(
        (hook == Hook::Transition) == args.to.is_some(),
        "--to goes with --hook transition, and a transition needs --to"
    );
    let text = std::fs::read(&args.record)
        .with_context(|| format!("cannot read {}", args.record.display()))?;
    let Value::Object(mut record) = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not JSON", args.record.display()))?
    else {
        anyhow::bail!("{} must hold a JSON object", args.record.display());
    };
    let files = Module::read_dir(&args.dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let manifest = usm_engine::peek_manifest(&files).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runtimes = Runtimes {
        wasm: Some(Arc::new(PluginHost::new(
            PluginLimits::default(),
            Some(Arc::clone(&store)),
        )?)),
        rhai: Some(Arc::new(ScriptHost::new(ScriptLimits::default()))),
        manifest_checks: Vec::new(),
    };
    let module = Module::build(files, &runtimes, &manifest.capabilities)
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let kind_name = record
        .get("kind")
        .and_then(Value::as_str)
        .context("the record needs a \"kind\"")?;
    let kind = Kind::new(kind_name).map_err(|e| anyhow::anyhow!("kind {kind_name:?}: {e}"))?;
    let core = Catalog::core();
    let def = core
        .get(&kind)
        .or_else(|| module.catalog.kinds.iter().find(|def| def.name == kind))
        .with_context(|| format!("no kind {kind_name:?} in the core catalog or the module"))?;
    let process = def.process;
    let initial = def.lifecycle.initial().to_string();
    for (key, value) in [
        ("id", json!(format!("{}-1", def.prefix))),
        ("process", json!(process)),
        ("domain", json!("it")),
        ("state", json!(initial)),
        ("title", json!("")),
        ("fields", json!({})),
        ("links", json!([])),
        ("version", json!(1)),
    ] {
        record.entry(key).or_insert(value);
    }
    let previous = Value::Object(record.clone());
    let context = match (&args.to, hook) {
        (Some(to), _) => {
            json!({"transition": {"from": record["state"], "to": to, "comment": null}})
        }
        (None, Hook::Approval) => {
            json!({"approval": {"decision": "approve", "by": "ann", "comment": null}})
        }
        _ => json!({}),
    };
    if let Some(to) = &args.to {
        record.insert("state".into(), json!(to));
    }
    let actor = Actor::new("ann", [Role::Agent]);
    let mut steps: Vec<_> = module
        .steps
        .iter()
        .filter(|s| s.hook == hook && s.process == process)
        .filter(|s| s.kinds.is_empty() || s.kinds.contains(&kind))
        .collect();
    steps.sort_by_key(|s| (s.phase == Phase::After, s.order, s.name.clone()));

    let mut report = Vec::new();
    let mut outcome = "accepted";
    for step in steps {
        let current = Value::Object(record.clone());
        let input = StepInput {
            hook,
            phase: step.phase,
            record: &current,
            previous: (hook != Hook::Create).then_some(&previous),
            actor: &actor,
            context: &context,
        };
        let started = Instant::now();
        let result = step.step.run(&input);
        let micros = started.elapsed().as_micros();
        let mut entry = json!({"step": step.name, "phase": step.phase, "micros": micros});
        match result {
            Ok(StepOutput::Continue) => entry["outcome"] = json!("continued"),
            Ok(StepOutput::Patch(patch)) => {
                usm_model::merge_patch(&mut record, &patch, 32)
                    .map_err(|e| anyhow::anyhow!("step {}: its patch: {e}", step.name))?;
                entry["outcome"] = json!("patched");
                entry["patch"] = Value::Object(patch);
            }
            Ok(StepOutput::Reject { code, message }) => {
                entry["outcome"] = json!("rejected");
                entry["reason"] = json!(code);
                entry["detail"] = json!(message);
                outcome = "rejected";
            }
            Ok(StepOutput::Effects(effects)) => {
                entry["outcome"] = json!("effects");
                entry["effects"] = serde_json::to_value(effects)?;
            }
            Err(error) if step.on_error == OnError::Skip => {
                entry["outcome"] = json!("skipped");
                entry["error"] = json!(error.to_string());
            }
            Err(error) => anyhow::bail!("step {} failed: {error}", step.name),
        }
        report.push(entry);
        if outcome == "rejected" {
            break;
        }
    }
    anyhow::ensure!(
        !report.is_empty(),
        "no step of module {} runs on hook {hook} for kind {kind} (process {process})",
        manifest.id
    );
    Ok(json!({
        "module": manifest.id,
        "hook": hook,
        "outcome": outcome,
        "steps": report,
        "record": Value::Object(record),
    }))
}
