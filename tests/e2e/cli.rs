//! `usm token …` and `usm module …`: the admin command line against a running server.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{ADMIN_TOKEN, TestServer};

/// Runs the usm binary with `args` against `server` as `token`; returns its JSON output, or its
/// error output when it fails.
async fn usm(server: &TestServer, token: &str, args: &[&str]) -> Result<Value, String> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_usm-under-test"));
    command
        .args(args)
        .env("USM_URL", &server.base)
        .env("USM_TOKEN", token);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_created_listed_and_revoked_from_the_command_line() {
    let server = TestServer::start().unwrap();
    let created = usm(
        &server,
        ADMIN_TOKEN,
        &[
            "token",
            "create",
            "--name",
            "cli-agent",
            "--role",
            "agent",
            "--domain",
            "it",
        ],
    )
    .await
    .unwrap();
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["domains"], json!(["it"]));
    let made = server
        .call_as(
            Some(&secret),
            Method::POST,
            "/api/v1/records",
            Some(&json!({"kind": "task", "title": "by the cli's token"})),
        )
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.body["created_by"], "cli-agent");

    let listed = usm(&server, ADMIN_TOKEN, &["token", "list"]).await.unwrap();
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "cli-agent"),
        "{listed}"
    );
    assert!(!listed.to_string().contains(&secret), "no secrets listed");

    // A non-admin token is refused, and says why.
    let refused = usm(&server, &secret, &["token", "list"]).await.unwrap_err();
    assert!(refused.contains("403"), "{refused}");

    usm(&server, ADMIN_TOKEN, &["token", "revoke", &id])
        .await
        .unwrap();
    let after = server
        .call_as(Some(&secret), Method::GET, "/api/v1/records", None)
        .await
        .unwrap();
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_are_installed_enabled_disabled_and_removed_from_the_command_line() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("module.toml"),
        "id = \"cli-tagger\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
         [[steps]]\nname = \"tag\"\nhook = \"create\"\nprocess = \"operate\"\nphase = \"before\"\nscript = \"tag.rhai\"\n\
         [[fields]]\nkind = \"task\"\n[fields.properties]\ntagged = { type = \"boolean\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tag.rhai"),
        "fn run(input) { patch(#{ fields: #{ tagged: true } }) }",
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let installed = usm(&server, ADMIN_TOKEN, &["module", "install", path])
        .await
        .unwrap();
    assert_eq!(installed["result"]["action"], "installed", "{installed}");
    let enabled = usm(
        &server,
        ADMIN_TOKEN,
        &["module", "enable", "cli-tagger", "--domain", "it"],
    )
    .await
    .unwrap();
    assert_eq!(enabled["status"], "enabled");
    let task = server
        .create(json!({"kind": "task", "title": "tag me"}))
        .await
        .unwrap();
    assert_eq!(task["fields"]["tagged"], true, "the step runs");

    let listed = usm(&server, ADMIN_TOKEN, &["module", "list"])
        .await
        .unwrap();
    let module = listed["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "cli-tagger")
        .cloned()
        .unwrap();
    assert_eq!(module["domains"], json!(["it"]));

    let disabled = usm(
        &server,
        ADMIN_TOKEN,
        &["module", "disable", "cli-tagger", "--domain", "it"],
    )
    .await
    .unwrap();
    assert_eq!(disabled["status"], "installed");
    let untagged = server
        .create(json!({"kind": "task", "title": "leave me"}))
        .await
        .unwrap();
    assert!(untagged["fields"].get("tagged").is_none());

    usm(&server, ADMIN_TOKEN, &["module", "remove", "cli-tagger"])
        .await
        .unwrap();
    let gone = usm(&server, ADMIN_TOKEN, &["module", "list"])
        .await
        .unwrap();
    assert!(!gone.to_string().contains("cli-tagger"), "{gone}");
    // A broken module is refused with the server's reason.
    std::fs::write(dir.path().join("tag.rhai"), "fn run(input) { let = ; }").unwrap();
    let refused = usm(&server, ADMIN_TOKEN, &["module", "install", path])
        .await
        .unwrap_err();
    assert!(
        refused.contains("422") && refused.contains("tag.rhai"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_benchmark_runs_against_a_server_at_a_steady_rate_with_a_kind_of_its_choice() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("task.json");
    std::fs::write(
        &body,
        r#"{"kind": "incident", "title": "Rotate the keys", "fields": {"description": "Quarterly"}}"#,
    )
    .unwrap();
    let report = usm(
        &server,
        ADMIN_TOKEN,
        &[
            "bench",
            "--url",
            &server.base,
            "--body",
            body.to_str().unwrap(),
            "--mode",
            "http",
            "--records",
            "60",
            "--concurrency",
            "4",
            "--rate",
            "300",
            "--kind",
            "task",
            "--json",
        ],
    )
    .await
    .unwrap();
    assert_eq!(report[0]["path"], "http", "{report}");
    assert_eq!(report[0]["records"], 60);
    assert_eq!(report[0]["rate"], 300.0);
    let tasks = server.list_all("kind=task").await.unwrap();
    assert_eq!(tasks.len(), 60);
    // Pacing is for HTTP clients; a bad rate is refused before anything is sent.
    for args in [
        &["bench", "--rate", "300"][..],
        &["bench", "--mode", "http", "--rate=-1"],
    ] {
        let refused = usm(&server, ADMIN_TOKEN, args).await.unwrap_err();
        assert!(refused.contains("--rate"), "{refused}");
    }
}

/// The regression check CI runs: a floor the run cannot reach fails it, naming the path.
#[tokio::test(flavor = "multi_thread")]
async fn the_benchmark_fails_below_its_floor() {
    let server = TestServer::start().unwrap();
    let run = |floor: &'static str| {
        let server = &server;
        async move {
            usm(
                server,
                ADMIN_TOKEN,
                &[
                    "bench",
                    "--mode",
                    "engine",
                    "--bundled-modules",
                    "--records",
                    "20",
                    "--concurrency",
                    "2",
                    "--min-rate",
                    floor,
                    "--json",
                ],
            )
            .await
        }
    };
    let report = run("1").await.unwrap();
    assert_eq!(report[0]["records"], 20, "{report}");
    let refused = run("1000000000").await.unwrap_err();
    assert!(
        refused.contains("below the floor of 1000000000 creates/s: engine made"),
        "{refused}"
    );
    let refused = usm(
        &server,
        ADMIN_TOKEN,
        &["bench", "--url", &server.base, "--bundled-modules"],
    )
    .await
    .unwrap_err();
    assert!(refused.contains("--bundled-modules"), "{refused}");
}

/// `usm module pack` runs the directory's build script, leaves it out of the bundle, and writes
/// a bundle the server installs; a failing build packs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_module_directory_is_built_packed_and_installed() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("packed");
    std::fs::create_dir(&module).unwrap();
    std::fs::write(
        module.join("module.toml"),
        "id = \"packed\"\nversion = \"1.2.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
         [[steps]]\nname = \"s\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\n\
         script = \"s.rhai\"\n",
    )
    .unwrap();
    std::fs::write(
        module.join("build.sh"),
        "printf 'fn run(input) { patch(#{}) }' > s.rhai\n",
    )
    .unwrap();
    let bundle = dir.path().join("out.tar.gz");
    let packed = usm(
        &server,
        ADMIN_TOKEN,
        &[
            "module",
            "pack",
            module.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(packed["id"], "packed");
    assert_eq!(packed["version"], "1.2.0");
    assert_eq!(
        packed["files"],
        json!(["module.toml", "s.rhai"]),
        "{packed}"
    );
    assert_eq!(
        packed["bytes"].as_u64().unwrap(),
        std::fs::metadata(&bundle).unwrap().len()
    );
    usm(
        &server,
        ADMIN_TOKEN,
        &["module", "install", bundle.to_str().unwrap()],
    )
    .await
    .unwrap();
    let installed = server.get("/api/v1/modules/packed").await.unwrap();
    assert_eq!(installed.body["version"], "1.2.0", "{}", installed.body);

    std::fs::write(module.join("build.sh"), "echo broken >&2; exit 3\n").unwrap();
    let failed = usm(
        &server,
        ADMIN_TOKEN,
        &[
            "module",
            "pack",
            module.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
    )
    .await
    .unwrap_err();
    assert!(failed.contains("build.sh failed"), "{failed}");
}

/// `usm plugin test` runs a module's steps on a record locally: patches in order, a rejection
/// as an outcome, a failing step as a failure.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_test_runs_a_modules_steps_on_a_record_locally() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.json");
    std::fs::write(
        &record,
        r#"{"kind": "incident", "title": "VPN down", "fields": {"impact": "high", "urgency": "medium"}}"#,
    )
    .unwrap();
    let run = |module: String, extra: &'static [&'static str]| {
        let server = &server;
        let record = record.to_str().unwrap().to_owned();
        async move {
            let mut args = vec!["plugin", "test", &module, "--record", &record];
            args.extend_from_slice(extra);
            usm(server, ADMIN_TOKEN, &args).await
        }
    };
    let priority = usm_tests::repo_path("scripts/examples/priority");
    let report = run(priority.display().to_string(), &[]).await.unwrap();
    assert_eq!(report["outcome"], "accepted", "{report}");
    assert_eq!(report["steps"][0]["outcome"], "patched");
    assert_eq!(report["steps"][0]["patch"]["fields"]["priority"], "P2");
    assert_eq!(report["record"]["fields"]["priority"], "P2");
    assert!(report["steps"][0]["micros"].as_u64().is_some());
    let refused = run(priority.display().to_string(), &["--hook", "update"])
        .await
        .unwrap_err();
    assert!(
        refused.contains("no step of module priority-rhai"),
        "{refused}"
    );

    let module = dir.path().join("gate");
    std::fs::create_dir(&module).unwrap();
    let manifest = "id = \"gate\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
         [[steps]]\nname = \"gate\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\n\
         script = \"gate.rhai\"\n";
    std::fs::write(module.join("module.toml"), manifest).unwrap();
    std::fs::write(
        module.join("gate.rhai"),
        r#"fn run(input) { if input.record.fields.impact == "high" { reject("needs_approval", "high impact") } else { patch(#{}) } }"#,
    )
    .unwrap();
    let report = run(module.display().to_string(), &[]).await.unwrap();
    assert_eq!(report["outcome"], "rejected", "{report}");
    assert_eq!(report["steps"][0]["reason"], "needs_approval");

    std::fs::write(
        module.join("gate.rhai"),
        r#"fn run(input) { throw "boom" }"#,
    )
    .unwrap();
    let failed = run(module.display().to_string(), &[]).await.unwrap_err();
    assert!(
        failed.contains("step gate failed") && failed.contains("boom"),
        "{failed}"
    );
}

/// `usm plugin new` writes a module per language that builds with its `build.sh` (cargo,
/// componentize-js from npm, componentize-py from PyPI) and passes `usm plugin test` as
/// written; in each, an error the step raises (a Rust `Err`, a thrown JavaScript `Error`, a
/// Python exception) fails the step with its message. The new directory must be new or empty.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_new_writes_a_module_that_builds_and_passes_plugin_test_in_each_language() {
    let server = TestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for lang in ["js", "python", "rust"] {
        let name = format!("route-{lang}");
        let module = dir.path().join(&name);
        let module_arg = module.to_str().unwrap().to_owned();
        let created = usm(
            &server,
            ADMIN_TOKEN,
            &["plugin", "new", &name, "--lang", lang, "--dir", &module_arg],
        )
        .await
        .unwrap();
        assert!(
            created["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "build.sh"),
            "{created}"
        );
        let build = module.join("build.sh");
        let built = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg(build)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            built.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let record = module.join("fixtures/incident.json");
        let record_arg = record.to_str().unwrap();
        let test = ["plugin", "test", &module_arg, "--record", record_arg];
        let report = usm(&server, ADMIN_TOKEN, &test).await.unwrap();
        assert_eq!(report["outcome"], "accepted", "{lang}: {report}");
        assert_eq!(report["steps"][0]["outcome"], "patched", "{lang}: {report}");
        assert_eq!(
            report["record"]["fields"]["assignment_group"], "team-network",
            "{lang}: {report}"
        );

        let manifest = std::fs::read_to_string(module.join("module.toml")).unwrap();
        let misconfigured = manifest.replace(
            "teams = { network = \"team-network\", mail = \"team-messaging\" }",
            "teams = \"everyone\"",
        );
        assert_ne!(misconfigured, manifest);
        std::fs::write(module.join("module.toml"), misconfigured).unwrap();
        let failed = usm(&server, ADMIN_TOKEN, &test).await.unwrap_err();
        assert!(
            failed.contains(&format!("step {name} failed"))
                && failed.contains("config: teams must map categories to groups"),
            "{lang}: {failed}"
        );

        let again = usm(
            &server,
            ADMIN_TOKEN,
            &["plugin", "new", &name, "--lang", lang, "--dir", &module_arg],
        )
        .await
        .unwrap_err();
        assert!(again.contains("exists and is not empty"), "{again}");
    }
    let invalid = usm(
        &server,
        ADMIN_TOKEN,
        &["plugin", "new", "Bad Name", "--lang", "js"],
    )
    .await
    .unwrap_err();
    assert!(invalid.contains("is not a module id"), "{invalid}");
}

/// `usm module preview` sends a module directory (or `--enable`/`--disable ID`) to the preview
/// endpoint and prints its report.
#[tokio::test(flavor = "multi_thread")]
async fn module_preview_reports_what_a_module_would_change() {
    let server = TestServer::start().unwrap();
    for fields in [json!({"impact": "high", "urgency": "low"}), json!({})] {
        server
            .create(json!({"kind": "incident", "title": "t", "fields": fields}))
            .await
            .unwrap();
    }
    let priority = usm_tests::repo_path("scripts/examples/priority");
    let report = usm(
        &server,
        ADMIN_TOKEN,
        &[
            "module",
            "preview",
            priority.to_str().unwrap(),
            "--domain",
            "it",
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        (&report["records"], &report["changed"]),
        (&json!(2), &json!(1)),
        "{report}"
    );
    assert_eq!(
        report["samples"][0]["after"]["record"]["fields"]["priority"],
        "P3"
    );
    let missing = usm(
        &server,
        ADMIN_TOKEN,
        &["module", "preview", "--disable", "nope", "--domain", "it"],
    )
    .await
    .unwrap_err();
    assert!(
        missing.contains("module nope is not installed"),
        "{missing}"
    );
}
