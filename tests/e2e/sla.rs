//! SLA clocks on records, and durable timers that fire the `sla` hook once, across a restart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use usm_server::ModuleConfig;
use usm_tests::{TestServer, repo_path};

/// Around the clock, so the test does not depend on the hour it runs at; seconds-long targets.
fn agreement(resolution_minutes: f64) -> Value {
    json!({"kind": "agreement", "title": "Test SLA", "fields": {
        "agreement_type": "sla",
        "targets": {"P1": {"response_minutes": resolution_minutes / 2.0, "resolution_minutes": resolution_minutes}},
        "calendar": {"always": true},
        "pause_states": ["on_hold"],
        "warning_percent": 50,
    }})
}

fn with_escalation() -> TestServer {
    TestServer::start_with(|config| {
        config.modules = vec![ModuleConfig {
            path: repo_path("scripts/examples/sla-escalation"),
            domains: vec!["it".into()],
            grant: vec![],
        }];
        // The warning test's webhook receiver listens on loopback.
        config.webhook_allowed_networks = vec!["127.0.0.0/8".into()];
    })
    .unwrap()
}

async fn escalations(server: &TestServer) -> Vec<String> {
    server
        .list_all("kind=task")
        .await
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until no timer is armed and the workers have handled every event the fired timers
/// wrote: whatever the timers caused has happened by then.
async fn all_timers_fired(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = usm_tests::metrics(&server.base).await.unwrap();
        if usm_tests::metric(&text, "usm_sla_timers_pending") == [0.0] {
            break;
        }
        assert!(Instant::now() < deadline, "timers still armed: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.settle().await.unwrap();
}

async fn wait_for(server: &TestServer, count: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let found = escalations(server).await;
        if found.len() >= count || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_show_their_clocks_and_breaches_fire_the_sla_hook_once() {
    let server = with_escalation();
    server.create(agreement(0.03)).await.unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(json!({"kind": "incident", "title": "Core down", "fields": {"priority": "P1"}}))
        .await
        .unwrap();

    let record = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(record["sla"]["policy"], "AGR-1");
    assert_eq!(record["sla"]["priority"], "P1");
    let resolution = &record["sla"]["resolution"];
    assert_eq!(resolution["target_minutes"], 0.03);
    assert_eq!(resolution["breached"], false);
    assert!(resolution["due_at"].is_string());

    // Response (0.9 s) and resolution (1.8 s) both breach; each opens one escalation task.
    let found = wait_for(&server, 2, Duration::from_secs(20)).await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found
            .iter()
            .any(|t| t == "Escalation: response target of INC-1 breached")
    );
    assert!(
        found
            .iter()
            .any(|t| t == "Escalation: resolution target of INC-1 breached")
    );
    let record = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(record["sla"]["resolution"]["breached"], true);
    assert!(
        record["sla"]["resolution"]["remaining_minutes"]
            .as_f64()
            .unwrap()
            < 0.0
    );
    all_timers_fired(&server).await;
    assert_eq!(escalations(&server).await.len(), 2, "each level fires once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tightened_agreement_fires_at_the_new_moment() {
    let server = with_escalation();
    // Ten hours to resolve: nothing would fire during the test.
    server.create(agreement(600.0)).await.unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(json!({"kind": "incident", "title": "Slow burn", "fields": {"priority": "P1"}}))
        .await
        .unwrap();
    let before = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(before["sla"]["resolution"]["target_minutes"], 600.0);

    // Tightened to seconds: the armed timers move, and both levels breach now.
    let tightened = server
        .patch(
            "/api/v1/records/AGR-1",
            &json!({"fields": {"targets": {"P1": {"response_minutes": 0.025, "resolution_minutes": 0.05}}}}),
        )
        .await
        .unwrap();
    assert_eq!(tightened.status, 200, "{}", tightened.body);
    let found = wait_for(&server, 2, Duration::from_secs(20)).await;
    assert_eq!(found.len(), 2, "{found:?}");
    let after = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(after["sla"]["resolution"]["breached"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_clock_does_not_breach_and_resumes_where_it_stopped() {
    let server = with_escalation();
    // Resolution in 1.2 s: paused at once, it would have breached during the wait below.
    server.create(agreement(0.02)).await.unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(
            json!({"kind": "incident", "title": "Waiting on vendor", "fields": {"priority": "P1"}}),
        )
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    server.transition("INC-1", "on_hold").await.unwrap();
    let paused = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(paused["sla"]["resolution"]["paused"], true);
    assert!(paused["sla"]["resolution"].get("due_at").is_none());
    let elapsed = paused["sla"]["resolution"]["elapsed_minutes"]
        .as_f64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(still["sla"]["resolution"]["breached"], false, "{still}");
    assert_eq!(
        still["sla"]["resolution"]["elapsed_minutes"]
            .as_f64()
            .unwrap(),
        elapsed,
        "a paused clock stands still"
    );
    assert!(
        !escalations(&server)
            .await
            .iter()
            .any(|t| t.contains("resolution")),
        "no breach while paused"
    );
    server.transition("INC-1", "in_progress").await.unwrap();
    let found = wait_for(&server, 1, Duration::from_secs(20)).await;
    assert!(
        found
            .iter()
            .any(|t| t.contains("resolution target of INC-1")),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timers_survive_a_restart_and_fire_once() {
    let server = with_escalation();
    server.create(agreement(0.05)).await.unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server.create(json!({"kind": "incident", "title": "Before the restart", "fields": {"priority": "P1"}})).await.unwrap();
    server.transition("INC-1", "in_progress").await.unwrap(); // the response clock stops
    let server = server
        .restart_with(|config| {
            config.modules = vec![ModuleConfig {
                path: repo_path("scripts/examples/sla-escalation"),
                domains: vec!["it".into()],
                grant: vec![],
            }];
        })
        .await
        .unwrap();
    let found = wait_for(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(found, ["Escalation: resolution target of INC-1 breached"]);
    all_timers_fired(&server).await;
    assert_eq!(escalations(&server).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_data_directory_gets_a_default_agreement_per_domain() {
    let server = TestServer::start_with(|config| config.default_agreements = true).unwrap();
    let agreements = server
        .list_all("kind=agreement&state=active")
        .await
        .unwrap();
    let mut domains: Vec<&str> = agreements
        .iter()
        .map(|a| a["domain"].as_str().unwrap())
        .collect();
    domains.sort_unstable();
    assert_eq!(domains, ["facilities", "hr", "it"]);
    let incident = server
        .create(
            json!({"kind": "incident", "domain": "hr", "title": "x", "fields": {"priority": "P2"}}),
        )
        .await
        .unwrap();
    let record = server
        .get(&format!(
            "/api/v1/records/{}",
            incident["id"].as_str().unwrap()
        ))
        .await
        .unwrap()
        .body;
    assert_eq!(record["sla"]["resolution"]["target_minutes"], 480.0);
    assert_eq!(record["sla"]["response"]["target_minutes"], 30.0);
    let server = server
        .restart_with(|config| config.default_agreements = true)
        .await
        .unwrap();
    assert_eq!(
        server.list_all("kind=agreement").await.unwrap().len(),
        3,
        "created once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kpis_come_from_history_as_json_and_csv() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "agreement", "title": "SLA", "fields": {"targets": {"P1": {"resolution_minutes": 600}}, "calendar": {"always": true}}}))
        .await
        .unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    for i in 0..4 {
        server
            .create(
                json!({"kind": "incident", "title": format!("i{i}"), "fields": {"priority": "P1"}}),
            )
            .await
            .unwrap();
    }
    // Two resolved, one of them reopened; one on hold; one new.
    for (id, path) in [
        ("INC-1", &["in_progress", "resolved", "closed"][..]),
        (
            "INC-2",
            &["in_progress", "resolved", "in_progress", "resolved"][..],
        ),
        ("INC-3", &["in_progress", "on_hold"][..]),
    ] {
        for to in path {
            server.transition(id, to).await.unwrap();
        }
    }
    server
        .create(json!({"kind": "change", "title": "ok", "fields": {"outcome": "successful"}}))
        .await
        .unwrap();
    server
        .create(json!({"kind": "change", "title": "bad", "fields": {"outcome": "failed"}}))
        .await
        .unwrap();
    for id in ["CHG-1", "CHG-2"] {
        for to in ["implement", "review", "closed"] {
            server.transition(id, to).await.unwrap();
        }
    }
    let recover = server
        .get("/api/v1/kpis?process=recover")
        .await
        .unwrap()
        .body;
    assert_eq!(recover["records"], 4);
    assert_eq!(recover["resolved"], 2);
    assert_eq!(recover["reopened"], 1);
    assert_eq!(recover["reopen_rate_percent"], 50.0);
    assert_eq!(recover["sla_measured"], 2);
    assert_eq!(recover["sla_compliance_percent"], 100.0);
    assert_eq!(
        recover["backlog_by_state"],
        json!({"new": 1, "on_hold": 1, "resolved": 1})
    );
    assert!(recover["mean_time_to_resolve_minutes"].as_f64().unwrap() >= 0.0);
    let change = server
        .get("/api/v1/kpis?process=change")
        .await
        .unwrap()
        .body;
    assert_eq!(change["changes_closed"], 2);
    assert_eq!(change["change_success_rate_percent"], 50.0);
    let csv = server
        .client()
        .get(format!(
            "{}/api/v1/kpis?process=change&format=csv",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv");
    let text = csv.text().await.unwrap();
    assert!(
        text.starts_with("metric,value\n") && text.contains("change_success_rate_percent,50.00"),
        "{text}"
    );
    let future = server
        .get("/api/v1/kpis?from=2999-01-01T00:00:00Z")
        .await
        .unwrap()
        .body;
    assert_eq!(future["records"], 0);
    assert_eq!(
        server
            .get("/api/v1/kpis?from=yesterday")
            .await
            .unwrap()
            .status
            .as_u16(),
        400
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warning_fires_the_sla_hook_before_the_breach() {
    let server = with_escalation();
    let state = actix_web::web::Data::new(crate::webhooks::Receiver::default());
    let (url, receiver) = crate::webhooks::start_receiver(state.clone());
    let subscribed = server
        .post(
            "/api/v1/webhooks",
            &json!({"url": format!("{url}/sla"), "events": ["sla.warning", "sla.breach", "notification"]}),
        )
        .await
        .unwrap();
    assert_eq!(subscribed.status, 201, "{}", subscribed.body);
    // Resolution in 6 s, warned at 10 % (0.6 s); no response target.
    server
        .create(json!({"kind": "agreement", "title": "Warned", "fields": {
            "targets": {"P1": {"resolution_minutes": 0.1}},
            "calendar": {"always": true}, "warning_percent": 10}}))
        .await
        .unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(json!({"kind": "incident", "title": "Slowly worse", "fields": {"priority": "P1"}}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let types = loop {
        let types: Vec<String> = state
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.body["type"].as_str().unwrap().to_owned())
            .collect();
        if types.len() >= 2 {
            break types;
        }
        assert!(Instant::now() < deadline, "no warning: {types:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The warning, then the notification the sla-escalation step made of it; no breach yet.
    assert_eq!(types, ["usm.sla.warning", "usm.notification"]);
    let received = state.received.lock().unwrap().clone();
    let warning = &received[0].body["data"]["event"];
    assert_eq!(warning["record_id"], "INC-1");
    assert_eq!(warning["payload"]["level"], "warning", "{warning}");
    assert_eq!(warning["payload"]["clock"], "resolution", "{warning}");
    let notification = &received[1].body["data"]["event"]["payload"];
    assert_eq!(notification["audience"], "team:service-desk");
    assert!(
        notification["message"]
            .as_str()
            .unwrap()
            .starts_with("INC-1: resolution target at"),
        "{notification}"
    );
    assert!(
        escalations(&server).await.is_empty(),
        "a warning escalates nothing"
    );
    receiver.stop(true).await;
}
