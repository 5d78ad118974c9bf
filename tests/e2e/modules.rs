//! Module loading: broken modules are refused whole with a precise location; every bundled
//! script compiles.

use std::{collections::BTreeMap, sync::Arc};

use usm_engine::{Module, ModuleError, Runtimes};
use usm_plugin_host::{PluginHost, PluginLimits};
use usm_script_host::{ModuleScripts, ScriptHost, ScriptLimits};
use usm_tests::{guests, module_dir, repo_path};

fn runtimes() -> Runtimes {
    Runtimes {
        wasm: Some(Arc::new(
            PluginHost::new(PluginLimits::default(), None).unwrap(),
        )),
        rhai: Some(Arc::new(ScriptHost::new(ScriptLimits::default()))),
        manifest_checks: Vec::new(),
    }
}

const HEAD: &str = "id = \"broken\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n";

fn refused(manifest: &str, files: &[(&str, &str)]) -> ModuleError {
    let dir = tempfile::tempdir().unwrap();
    let path = module_dir(dir.path(), manifest, files).unwrap();
    Module::load_dir(&path, &runtimes(), &[]).unwrap_err()
}

fn step(extra: &str) -> String {
    format!(
        "{HEAD}\n[[steps]]\nname = \"s\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\n{extra}\n"
    )
}

#[test]
fn every_kind_of_broken_module_is_refused_with_its_location() {
    let unknown_key = refused(&format!("{HEAD}colour = \"red\"\n"), &[]);
    assert_eq!(unknown_key.location, "module.toml");
    assert!(
        unknown_key.message.contains("colour") && unknown_key.message.contains("line 5"),
        "{unknown_key}"
    );

    let missing = refused(&step("wasm = \"gone.wasm\""), &[]);
    assert_eq!(missing.location, "module.toml: steps[0].wasm");

    let api = refused(&HEAD.replace("^0.1", "^2.0"), &[]);
    assert_eq!(api.location, "module.toml: api");

    let both = refused(&step("wasm = \"a.wasm\"\nscript = \"a.rhai\""), &[]);
    assert_eq!(both.location, "module.toml: steps[0].wasm");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad.rhai");
    std::fs::write(&script, "fn run(input) {\n  let = 1;\n}\n").unwrap();
    let syntax = refused(
        &step("script = \"bad.rhai\""),
        &[("bad.rhai", script.to_str().unwrap())],
    );
    assert_eq!(syntax.location, "bad.rhai");
    assert!(syntax.message.starts_with("bad.rhai:2:"), "{syntax}");

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really").unwrap();
    let compile = refused(
        &step("wasm = \"x.wasm\""),
        &[("x.wasm", garbage.to_str().unwrap())],
    );
    assert_eq!(compile.location, "x.wasm");

    let wrong_api = refused(
        &step("wasm = \"w.wasm\""),
        &[("w.wasm", guests::GUEST_WRONG_API)],
    );
    assert!(wrong_api.message.contains("9.0.0"), "{wrong_api}");

    let wrong_hook = refused(
        &step("wasm = \"p.wasm\"").replace("hook = \"create\"", "hook = \"approval\""),
        &[("p.wasm", guests::PRIORITY)],
    );
    assert!(wrong_hook.message.contains("approval"), "{wrong_hook}");

    let capability = refused(&format!("{HEAD}capabilities = [\"network\"]\n"), &[]);
    assert_eq!(capability.location, "module.toml: capabilities");
}

#[test]
fn the_example_modules_load() {
    let dir = tempfile::tempdir().unwrap();
    let manifest =
        std::fs::read_to_string(repo_path("plugins/examples/priority/module.toml")).unwrap();
    let priority = module_dir(
        dir.path(),
        &manifest,
        &[("priority.wasm", guests::PRIORITY)],
    )
    .unwrap();
    let module = Module::load_dir(&priority, &runtimes(), &[]).unwrap();
    assert_eq!(module.manifest.id, "priority");
    let triage = Module::load_dir(&repo_path("scripts/examples/triage"), &runtimes(), &[]).unwrap();
    assert_eq!(triage.steps.len(), 2);
}

/// Every script under scripts/ compiles (per module directory, so imports resolve as they do
/// when the module loads).
#[test]
fn every_bundled_script_compiles() {
    fn collect(
        dir: &std::path::Path,
        out: &mut BTreeMap<std::path::PathBuf, BTreeMap<String, Vec<u8>>>,
    ) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                collect(&path, out);
            } else if path.extension().is_some_and(|e| e == "rhai") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.entry(dir.to_path_buf())
                    .or_default()
                    .insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut by_dir = BTreeMap::new();
    collect(&repo_path("scripts"), &mut by_dir);
    assert!(!by_dir.is_empty(), "scripts/ holds scripts");
    for (dir, files) in by_dir {
        if let Err(error) = ModuleScripts::compile(&files, &ScriptLimits::default()) {
            panic!("{}: {error}", dir.display());
        }
    }
}

/// Capabilities by intersection: a grant the manifest did not ask for gives nothing.
#[test]
fn a_grant_the_manifest_did_not_ask_for_is_not_given() {
    use serde_json::{Value, json};
    use usm_engine::{Hook, Phase, StepInput, StepOutput};
    use usm_model::{Actor, Role};

    let manifest = |capabilities: &str| {
        format!(
            "id = \"reader\"\nversion = \"0.1.0\"\nframework = \"custom\"\napi = \"^0.1\"\n{capabilities}\n\
             [[steps]]\nname = \"read\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\nwasm = \"reader.wasm\"\n"
        )
    };
    let store: std::sync::Arc<dyn usm_store::Store> =
        std::sync::Arc::new(usm_store::MemoryStore::new());
    let runtimes = Runtimes {
        wasm: Some(Arc::new(
            PluginHost::new(PluginLimits::default(), Some(store)).unwrap(),
        )),
        rhai: None,
        manifest_checks: Vec::new(),
    };
    let seen = |asked: &str, grants: &[&str]| -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = module_dir(
            dir.path(),
            &manifest(asked),
            &[("reader.wasm", guests::GUEST_READER)],
        )
        .unwrap();
        let grants: Vec<String> = grants.iter().map(|g| (*g).to_owned()).collect();
        let module = Module::load_dir(&path, &runtimes, &grants).unwrap();
        let record =
            json!({"id": null, "kind": "incident", "domain": "it", "fields": {"lookup": "INC-1"}});
        let actor = Actor::new("ann", [Role::Agent]);
        let output = module.steps[0]
            .step
            .run(&StepInput {
                hook: Hook::Create,
                phase: Phase::Before,
                record: &record,
                previous: None,
                actor: &actor,
                context: &Value::Null,
            })
            .unwrap();
        let StepOutput::Patch(patch) = output else {
            panic!("the reader patches")
        };
        patch["fields"]["seen"].as_str().unwrap().to_owned()
    };
    assert!(
        seen("", &["records:read"]).starts_with("refused"),
        "granted but not asked for"
    );
    assert!(
        seen("capabilities = [\"records:read\"]", &[]).starts_with("refused"),
        "asked for but not granted"
    );
    assert_eq!(
        seen("capabilities = [\"records:read\"]", &["records:read"]),
        "not found",
        "asked and granted: the host answers"
    );
}
