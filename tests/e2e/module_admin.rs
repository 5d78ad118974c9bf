//! Installing, refusing, upgrading, toggling and removing modules over HTTP.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::json;
use usm_engine::{ModuleFiles, bundle};
use usm_tests::{Reply, TestServer, guests};

fn files(entries: &[(&str, &[u8])]) -> ModuleFiles {
    entries
        .iter()
        .map(|(n, b)| ((*n).to_owned(), b.to_vec()))
        .collect::<BTreeMap<_, _>>()
}

fn tagger(version: &str, tag: &str) -> ModuleFiles {
    let manifest = format!(
        "id = \"tagger\"\nversion = \"{version}\"\nframework = \"custom\"\napi = \"^0.1\"\n\
         [[steps]]\nname = \"tag-a\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\norder = 1\nscript = \"tag.rhai\"\n\
         [steps.config]\nfield = \"tag_a\"\nvalue = \"{tag}\"\n\
         [[steps]]\nname = \"tag-b\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\norder = 2\nscript = \"tag.rhai\"\n\
         [steps.config]\nfield = \"tag_b\"\nvalue = \"{tag}\"\n"
    );
    let script = "fn run(input) { let f = #{}; f[input.config.field] = input.config.value; patch(#{ fields: f }) }";
    files(&[
        ("module.toml", manifest.as_bytes()),
        ("tag.rhai", script.as_bytes()),
    ])
}

async fn upload(server: &TestServer, bundle: Vec<u8>) -> Reply {
    server.upload_module(bundle).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn install_enable_upgrade_and_remove() {
    let server = TestServer::start().unwrap();
    let installed = upload(&server, bundle::pack(&tagger("1.0.0", "v1")).unwrap()).await;
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.body);
    assert_eq!(installed.body["result"]["action"], "installed");
    assert_eq!(installed.body["module"]["status"], "installed");
    let again = upload(&server, bundle::pack(&tagger("1.0.0", "v1")).unwrap()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["result"]["action"], "unchanged");

    let enabled = server
        .post("/api/v1/modules/tagger/enable", &json!({"domains": ["it"]}))
        .await
        .unwrap();
    assert_eq!(enabled.body["status"], "enabled");
    let record = server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    assert_eq!(record["fields"]["tag_a"], "v1");
    let hr = server
        .create(json!({"kind": "incident", "domain": "hr", "title": "x"}))
        .await
        .unwrap();
    assert!(hr["fields"].get("tag_a").is_none());

    // Same version with other content: not an upgrade.
    let same = upload(&server, bundle::pack(&tagger("1.0.0", "other")).unwrap()).await;
    assert_eq!(same.status, StatusCode::CONFLICT);
    assert_eq!(same.body["code"], "module_version_conflict");
    let upgraded = upload(&server, bundle::pack(&tagger("1.1.0", "v2")).unwrap()).await;
    assert_eq!(upgraded.status, StatusCode::CREATED);
    assert_eq!(
        upgraded.body["result"],
        json!({"action": "upgraded", "from": "1.0.0"})
    );
    assert_eq!(
        upgraded.body["module"]["domains"],
        json!(["it"]),
        "enablement survives the upgrade"
    );
    let record = server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    assert_eq!(record["fields"]["tag_b"], "v2");

    let disabled = server
        .post(
            "/api/v1/modules/tagger/disable",
            &json!({"domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(disabled.body["status"], "installed");
    let record = server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    assert!(record["fields"].get("tag_a").is_none());
    let unknown = server
        .post(
            "/api/v1/modules/tagger/enable",
            &json!({"domains": ["mars"]}),
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);

    let removed = server
        .call(Method::DELETE, "/api/v1/modules/tagger", None, &[])
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(
        server.get("/api/v1/modules/tagger").await.unwrap().body["code"],
        "module_not_found"
    );
    assert!(
        server.get("/api/v1/modules").await.unwrap().body["modules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_bundles_are_refused_whole_with_a_location() {
    let server = TestServer::start().unwrap();
    let head = "id = \"broken\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n";
    let step = |extra: &str| {
        format!(
            "{head}[[steps]]\nname = \"s\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\n{extra}\n"
        )
    };
    let wrong_api = std::fs::read(guests::GUEST_WRONG_API).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a tarball".to_vec(), "bundle"),
        (
            bundle::pack(&files(&[("readme.txt", b"hi")])).unwrap(),
            "module.toml",
        ),
        (
            bundle::pack(&files(&[(
                "module.toml",
                format!("{head}typo = 1\n").as_bytes(),
            )]))
            .unwrap(),
            "module.toml",
        ),
        (
            bundle::pack(&files(&[(
                "module.toml",
                step("wasm = \"gone.wasm\"").as_bytes(),
            )]))
            .unwrap(),
            "module.toml: steps[0].wasm",
        ),
        (
            bundle::pack(&files(&[
                ("module.toml", step("script = \"s.rhai\"").as_bytes()),
                ("s.rhai", b"fn run(input) { let = ; }"),
            ]))
            .unwrap(),
            "s.rhai",
        ),
        (
            bundle::pack(&files(&[
                ("module.toml", step("wasm = \"w.wasm\"").as_bytes()),
                ("w.wasm", &wrong_api),
            ]))
            .unwrap(),
            "w.wasm",
        ),
        (
            bundle::pack(&files(&[(
                "module.toml",
                head.replace("^0.1", "^3").as_bytes(),
            )]))
            .unwrap(),
            "module.toml: api",
        ),
    ];
    for (bytes, location) in cases {
        let reply = upload(&server, bytes).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{location}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "module_invalid");
        assert_eq!(reply.body["field"], location, "{}", reply.body);
    }
    assert!(
        server.get("/api/v1/modules").await.unwrap().body["modules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        server.get("/api/v1/pipelines").await.unwrap().body["pipelines"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Concurrent creates while a two-step module is toggled 20 times: no request fails, and every
/// record went through exactly the old or exactly the new pipeline.
#[tokio::test(flavor = "multi_thread")]
async fn hot_swap_under_load_never_mixes_pipelines() {
    let server = TestServer::start().unwrap();
    assert_eq!(
        upload(&server, bundle::pack(&tagger("1.0.0", "on")).unwrap())
            .await
            .status,
        StatusCode::CREATED
    );
    let toggles = async {
        for i in 0..20 {
            let action = if i % 2 == 0 { "enable" } else { "disable" };
            let reply = server
                .post(
                    &format!("/api/v1/modules/tagger/{action}"),
                    &json!({"domains": ["it"]}),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    };
    let creates = futures::future::join_all((0..8).map(|client| {
        let server = &server;
        async move {
            let mut ids = Vec::new();
            for n in 0..15 {
                let reply = server
                    .post(
                        "/api/v1/records",
                        &json!({"kind": "incident", "title": format!("c{client} n{n}")}),
                    )
                    .await
                    .unwrap();
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
                ids.push(reply.body["id"].as_str().unwrap().to_owned());
            }
            ids
        }
    }));
    let ((), ids) = tokio::join!(toggles, creates);
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    assert_eq!(ids.len(), 120);
    let (mut with, mut without) = (0, 0);
    for id in &ids {
        let history = server
            .get(&format!("/api/v1/records/{id}/history"))
            .await
            .unwrap()
            .body;
        let steps: Vec<&str> = history["entries"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        let record = server
            .get(&format!("/api/v1/records/{id}"))
            .await
            .unwrap()
            .body;
        match steps.as_slice() {
            ["tag-a", "tag-b"] => {
                assert_eq!(
                    (&record["fields"]["tag_a"], &record["fields"]["tag_b"]),
                    (&json!("on"), &json!("on"))
                );
                with += 1;
            }
            [] => {
                assert!(
                    record["fields"].get("tag_a").is_none()
                        && record["fields"].get("tag_b").is_none()
                );
                without += 1;
            }
            mixed => panic!("{id} went through a mix: {mixed:?}"),
        }
    }
    assert_eq!(with + without, 120);
}
