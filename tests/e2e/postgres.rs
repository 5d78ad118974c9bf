//! The server on PostgreSQL: the default `it` pipeline writes through it, and a node starting on
//! a fresh disk serves what another node wrote to the same database. (The whole suite also runs
//! on PostgreSQL with `USM_E2E_STORE=postgres`, as `.ci/run` does.)

use std::sync::Arc;

use reqwest::Method;
use serde_json::json;
use usm_store_postgres::ScratchDatabase;
use usm_tests::TestServer;

fn on(database: &Arc<ScratchDatabase>) -> impl FnOnce(&mut usm_server::Config) + Send + 'static {
    let url = database.url.clone();
    move |config| {
        config.store_url = Some(url);
        config.bundled_modules = true;
        config.default_agreements = true;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_a_fresh_disk_serves_what_another_node_wrote() {
    let database = Arc::new(ScratchDatabase::create().unwrap());
    let mut first = TestServer::start_with(on(&database)).unwrap();
    let created = first
        .create(
            json!({"kind": "incident", "domain": "it", "title": "VPN down",
                       "fields": {"impact": "high", "urgency": "high"}}),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["fields"]["priority"], "P1",
        "the bundled it pipeline ran: {created}"
    );
    first.transition(&id, "in_progress").await.unwrap();
    first.settle().await.unwrap();
    // The SLA clocks are computed at read time; the record is everything else.
    let stored = |mut record: serde_json::Value| {
        record.as_object_mut().unwrap().remove("sla");
        record
    };
    let record = stored(
        first
            .get(&format!("/api/v1/records/{id}"))
            .await
            .unwrap()
            .body,
    );
    let history = first
        .get(&format!("/api/v1/records/{id}/history"))
        .await
        .unwrap()
        .body;
    first.stop().await.unwrap();

    // Another data directory: nothing of the first node's disk, only the database.
    let second = TestServer::start_with(on(&database)).unwrap();
    assert_ne!(second.data_dir(), first.data_dir());
    assert_eq!(
        stored(
            second
                .get(&format!("/api/v1/records/{id}"))
                .await
                .unwrap()
                .body
        ),
        record
    );
    assert_eq!(
        second
            .get(&format!("/api/v1/records/{id}/history"))
            .await
            .unwrap()
            .body,
        history
    );
    let next = second
        .create(json!({"kind": "incident", "domain": "it", "title": "Printer jam"}))
        .await
        .unwrap();
    assert_ne!(
        next["id"], created["id"],
        "numbers continue in the database"
    );
    let found = second.list_all("kind=incident").await.unwrap();
    assert_eq!(found.len(), 2);
    // The second node's search index is its own, built from the database.
    second.settle().await.unwrap();
    let searched = second.get("/api/v1/search?q=VPN").await.unwrap();
    assert_eq!(searched.status, 200, "{}", searched.body);
    assert_eq!(
        searched.body["records"][0]["id"], created["id"],
        "{}",
        searched.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_stops_the_start_with_its_address_and_no_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://usm:hunter2@127.0.0.1:{port}/usm");
    let error = TestServer::start_with(move |config| config.store_url = Some(url))
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!(
            "cannot open the store at postgres://usm:***@127.0.0.1:{port}/usm"
        )),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

/// Asks `check` until it holds, for at most ten seconds.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Two nodes running side by side: a token made or revoked on one, a module disabled on one,
/// take effect on the other.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_modules_changed_on_one_node_take_effect_on_the_other() {
    let database = Arc::new(ScratchDatabase::create().unwrap());
    let a = TestServer::start_with(on(&database)).unwrap();
    let b = TestServer::start_with(on(&database)).unwrap();

    let made = a
        .post(
            "/api/v1/tokens",
            &json!({"name": "bot", "roles": ["agent"], "domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(made.status, 201, "{}", made.body);
    let secret = made.body["token"].as_str().unwrap().to_owned();
    let status_on_b = || async {
        b.call_as(
            Some(&secret),
            Method::GET,
            "/api/v1/records?domain=it",
            None,
        )
        .await
        .unwrap()
        .status
    };
    eventually("the token made on a works on b", || async {
        status_on_b().await == 200
    })
    .await;
    let revoked = a
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", made.body["id"].as_str().unwrap()),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    eventually("the token revoked on a is refused on b", || async {
        status_on_b().await == 401
    })
    .await;

    let incident = json!({"kind": "incident", "domain": "it", "title": "x",
                          "fields": {"impact": "high", "urgency": "high"}});
    assert_eq!(
        b.create(incident.clone()).await.unwrap()["fields"]["priority"],
        "P1"
    );
    let disabled = a
        .post("/api/v1/modules/itil4/disable", &json!({"domains": ["it"]}))
        .await
        .unwrap();
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    eventually("itil4 disabled on a stops prioritising on b", || async {
        b.create(incident.clone()).await.unwrap()["fields"]
            .get("priority")
            .is_none()
    })
    .await;

    // One node keeps the KPI sums; both answer with them.
    let incidents = b.list_all("kind=incident").await.unwrap().len();
    eventually("both nodes' KPIs count every incident", || async {
        recovered(&a).await == Some(incidents as u64)
            && recovered(&b).await == Some(incidents as u64)
    })
    .await;
}

/// The records of the `it` domain's Recover process (here: its incidents) the KPIs count.
async fn recovered(server: &TestServer) -> Option<u64> {
    let reply = server
        .get("/api/v1/kpis?domain=it&process=recover")
        .await
        .unwrap();
    reply.body["records"].as_u64()
}

/// A file uploaded through one node downloads through another, whose disk never had it.
#[tokio::test(flavor = "multi_thread")]
async fn an_attachment_uploaded_through_one_node_downloads_through_another() {
    let database = Arc::new(ScratchDatabase::create().unwrap());
    let a = TestServer::start_with(on(&database)).unwrap();
    let b = TestServer::start_with(on(&database)).unwrap();
    let record = a
        .create(json!({"kind": "incident", "domain": "it", "title": "Scanner log"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap();
    // Two and a half chunks.
    let file: Vec<u8> = (0..(5u32 << 19)).map(|i| (i % 253) as u8).collect();
    let uploaded = reqwest::Client::new()
        .post(format!("{}/api/v1/records/{id}/attachments", a.base))
        .bearer_auth(usm_tests::ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .header("content-disposition", "attachment; filename=\"scan.log\"")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    let downloaded = reqwest::Client::new()
        .get(format!("{}/api/v1/records/{id}/attachments/1", b.base))
        .bearer_auth(usm_tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status(), 200);
    assert!(
        downloaded.bytes().await.unwrap() == file,
        "the bytes differ"
    );
    // Now on b's disk too.
    let cached = std::fs::read_dir(b.data_dir().join("attachments"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|fan| fan.file_name() != "tmp");
    assert!(cached, "b keeps the fetched blob");
}

async fn history(server: &TestServer, id: &str) -> serde_json::Value {
    let path = format!("/api/v1/records/{id}/history");
    server.get(&path).await.unwrap().body
}

async fn download(server: &TestServer, id: &str) -> Vec<u8> {
    reqwest::Client::new()
        .get(format!("{}/api/v1/records/{id}/attachments/1", server.base))
        .bearer_auth(usm_tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// Runs `usm store copy` and returns its JSON report.
fn store_copy(from: &str, to: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usm-under-test"))
        .args(["store", "copy", "--from", from, "--to", to, "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "usm store copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A store moves from a data directory into PostgreSQL and back with `usm store copy`: records,
/// history and attachments read the same on each, and a copy never lands on a store.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_moves_between_a_directory_and_postgres_and_back() {
    let mut embedded = TestServer::start_with(|config| {
        config.store_url = None;
        config.bundled_modules = true;
        config.default_agreements = true;
    })
    .unwrap();
    let record = embedded
        .create(json!({"kind": "incident", "domain": "it", "title": "Badge reader offline"}))
        .await
        .unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    embedded.transition(&id, "in_progress").await.unwrap();
    let file = b"door 3 log".repeat(1000);
    let uploaded = reqwest::Client::new()
        .post(format!("{}/api/v1/records/{id}/attachments", embedded.base))
        .bearer_auth(usm_tests::ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .header("content-disposition", "attachment; filename=\"door.log\"")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    embedded.settle().await.unwrap();
    let before = history(&embedded, &id).await;
    embedded.stop().await.unwrap();

    let database = Arc::new(ScratchDatabase::create().unwrap());
    let dir = embedded.data_dir().display().to_string();
    let report = store_copy(&dir, &database.url);
    assert_eq!(report["attachments"], 1, "{report}");
    assert!(
        report["copied"]["entries"].as_u64().unwrap() > 0,
        "{report}"
    );
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_usm-under-test"))
        .args([
            "store",
            "copy",
            "--from",
            &dir,
            "--to",
            &database.url,
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a second copy onto the same database is refused"
    );

    let mut on_postgres = TestServer::start_with(on(&database)).unwrap();
    assert_eq!(history(&on_postgres, &id).await, before);
    assert!(download(&on_postgres, &id).await == file);
    on_postgres.stop().await.unwrap();

    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().join("data");
    let report = store_copy(&database.url, &back_dir.display().to_string());
    assert_eq!(report["attachments"], 1, "{report}");
    let url_free = back_dir.clone();
    let returned = TestServer::start_with(move |config| {
        config.store_url = None;
        config.data_dir = url_free;
        config.bundled_modules = true;
        config.default_agreements = true;
    })
    .unwrap();
    assert_eq!(history(&returned, &id).await, before);
    assert!(download(&returned, &id).await == file);
}
