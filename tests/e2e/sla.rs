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

/// A server whose only timers are SLA clocks' (no automatic close of unconfirmed resolutions),
/// so "every timer fired" is about the clocks.
fn clocks_only() -> TestServer {
    TestServer::start_with(|config| config.auto_close_after_business_minutes = 0.0).unwrap()
}

fn with_escalation() -> TestServer {
    TestServer::start_with(|config| {
        config.auto_close_after_business_minutes = 0.0;
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
/// wrote: whatever the timers caused has happened by then. The SLA worker arms timers as it
/// reads the outbox, so it catches up first: before, "no timer armed" may mean "none yet".
async fn all_timers_fired(server: &TestServer) {
    server.settle().await.unwrap();
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
            json!({"kind": "incident", "title": "Waiting for the customer",
            "fields": {"priority": "P1", "hold_reason": "awaiting_customer"}}),
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

/// An incident held for `reason` from the moment it is in progress (the reason is written at
/// creation, so the hold pauses from its first instant if it pauses at all).
async fn held_for(server: &TestServer, reason: &str) -> String {
    let created = server
        .create(json!({"kind": "incident", "title": reason,
            "fields": {"priority": "P1", "hold_reason": reason}}))
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    server.transition(&id, "in_progress").await.unwrap();
    server.transition(&id, "on_hold").await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_hold_awaiting_the_customer_stops_the_clock() {
    let server = clocks_only();
    // Resolution in 3 s around the clock; what pauses is left to the defaults.
    server
        .create(json!({"kind": "agreement", "title": "Holds", "fields": {
            "targets": {"P1": {"resolution_minutes": 0.05}}, "calendar": {"always": true}}}))
        .await
        .unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    let customer = held_for(&server, "awaiting_customer").await;
    let vendor = held_for(&server, "awaiting_vendor").await;
    let sla = |id: &str| format!("/api/v1/records/{id}/sla");
    let now = server.get(&sla(&customer)).await.unwrap().body;
    assert_eq!(now["status"]["resolution"]["paused"], true, "{now}");
    let now = server.get(&sla(&vendor)).await.unwrap().body;
    assert_eq!(now["status"]["resolution"]["paused"], false, "{now}");

    // The vendor's hold breaches; once no timer is left, the customer's clock still stands.
    sla_until(&server, &vendor, |v| {
        entries(v, "resolution", "breach").len() == 1
    })
    .await;
    all_timers_fired(&server).await;
    let view = server.get(&sla(&customer)).await.unwrap().body;
    assert!(entries(&view, "resolution", "breach").is_empty(), "{view}");
    let resolution = &view["status"]["resolution"];
    assert_eq!(resolution["breached"], false, "{view}");
    assert_eq!(resolution["paused"], true, "{view}");
    assert!(resolution.get("due_at").is_none(), "{view}");

    // The reason changed mid-hold: the clock runs from then on and the re-armed timer fires.
    let changed = server
        .patch(
            &format!("/api/v1/records/{customer}"),
            &json!({"fields": {"hold_reason": "awaiting_vendor"}}),
        )
        .await
        .unwrap();
    assert_eq!(changed.status, 200, "{}", changed.body);
    let changed_at: jiff::Timestamp = changed.body["updated_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let view = sla_until(&server, &customer, |v| {
        entries(v, "resolution", "breach").len() == 1
    })
    .await;
    let breached_at: jiff::Timestamp = entries(&view, "resolution", "breach")[0]["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        breached_at > changed_at,
        "the time awaiting the customer did not count: {view}"
    );
    assert_eq!(view["status"]["resolution"]["paused"], false, "{view}");
    assert_eq!(view["status"]["resolution"]["breached"], true, "{view}");
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
    for agreement in &agreements {
        // Only a hold awaiting the customer stops its clocks.
        assert_eq!(agreement["fields"]["pause_states"], json!(["on_hold"]));
        assert_eq!(
            agreement["fields"]["pause_reasons"],
            json!(["awaiting_customer"])
        );
    }
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
    // P1 runs around the clock: due exactly four hours after creation, whatever the hour.
    let p1 = server
        .create(
            json!({"kind": "incident", "domain": "hr", "title": "y", "fields": {"priority": "P1"}}),
        )
        .await
        .unwrap();
    let view = server
        .get(&format!("/api/v1/records/{}", p1["id"].as_str().unwrap()))
        .await
        .unwrap()
        .body;
    let created: jiff::Timestamp = view["created_at"].as_str().unwrap().parse().unwrap();
    let due: jiff::Timestamp = view["sla"]["resolution"]["due_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(due, created + jiff::SignedDuration::from_hours(4), "{view}");
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
    // SLA compliance comes from the ledgers the SLA worker keeps.
    server.settle().await.unwrap();
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

/// Polls `GET /api/v1/records/{id}/sla` until `done` holds for it.
async fn sla_until(server: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = server
            .get(&format!("/api/v1/records/{id}/sla"))
            .await
            .unwrap()
            .body;
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "never reached: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn entries<'v>(view: &'v Value, clock: &str, level: &str) -> Vec<&'v Value> {
    view["ledger"]
        .as_array()
        .map(|ledger| {
            ledger
                .iter()
                .filter(|e| e["clock"] == clock && e["level"] == level)
                .collect()
        })
        .unwrap_or_default()
}

/// P1 resolves in 1.2 s, P3 in ten hours; no response target; around the clock.
fn two_priorities() -> Value {
    json!({"kind": "agreement", "title": "Two speeds", "fields": {
        "targets": {"P1": {"resolution_minutes": 0.02}, "P3": {"resolution_minutes": 600}},
        "calendar": {"always": true}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breach_stays_breached_when_the_priority_is_lowered() {
    let server = clocks_only();
    server.create(two_priorities()).await.unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(json!({"kind": "incident", "title": "Core down", "fields": {"priority": "P1"}}))
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    all_timers_fired(&server).await;

    let lowered = server
        .patch(
            "/api/v1/records/INC-1",
            &json!({"fields": {"priority": "P3"}}),
        )
        .await
        .unwrap();
    assert_eq!(lowered.status, 200, "{}", lowered.body);
    server.settle().await.unwrap();
    let record = server.get("/api/v1/records/INC-1").await.unwrap().body;
    let resolution = &record["sla"]["resolution"];
    assert_eq!(
        resolution["target_minutes"], 600.0,
        "the P3 target applies now"
    );
    assert_eq!(
        resolution["breached"], true,
        "but the P1 breach stands: {record}"
    );
    assert!(
        record["fields"].get("sla").is_none(),
        "records carry no copy: {record}"
    );
    let view = server.get("/api/v1/records/INC-1/sla").await.unwrap().body;
    let breaches = entries(&view, "resolution", "breach");
    assert_eq!(breaches.len(), 1, "{view}");
    assert_eq!(breaches[0]["agreement"], "AGR-1");
    assert_eq!(breaches[0]["priority"], "P1");
    assert_eq!(breaches[0]["target_minutes"], 0.02);
    assert_eq!(breaches[0]["cycle"], 1);
    assert_eq!(view["status"]["resolution"]["breached"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reopen_starts_a_new_cycle_that_breaches_again() {
    let server = with_escalation();
    server.create(two_priorities()).await.unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(json!({"kind": "incident", "title": "Flaky", "fields": {"priority": "P1"}}))
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    let found = wait_for(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(found, ["Escalation: resolution target of INC-1 breached"]);
    server.transition("INC-1", "resolved").await.unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    let found = wait_for(&server, 2, Duration::from_secs(20)).await;
    assert_eq!(found.len(), 2, "the second cycle breaches too: {found:?}");
    let view = sla_until(&server, "INC-1", |v| {
        entries(v, "resolution", "breach").len() == 2
    })
    .await;
    let cycles: Vec<&Value> = entries(&view, "resolution", "breach")
        .iter()
        .map(|e| &e["cycle"])
        .collect();
    assert_eq!(cycles, [&json!(1), &json!(2)], "{view}");
    let stops = entries(&view, "resolution", "stop");
    assert_eq!(stops.len(), 1, "{view}");
    assert_eq!(stops[0]["within_target"], false);
    assert_eq!(view["status"]["cycle"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_agreements_breach_still_counts_in_kpis() {
    let server = clocks_only();
    server.create(two_priorities()).await.unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(json!({"kind": "incident", "title": "Late", "fields": {"priority": "P1"}}))
        .await
        .unwrap();
    server
        .create(json!({"kind": "incident", "title": "On time", "fields": {"priority": "P3"}}))
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    // Resolved as soon as the clock reads breached, maybe before the timer fired: the breach
    // is recorded all the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = server.get("/api/v1/records/INC-1").await.unwrap().body;
        if record["sla"]["resolution"]["breached"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "{record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ["INC-1", "INC-2"] {
        server.transition(id, "in_progress").await.ok();
        server.transition(id, "resolved").await.unwrap();
    }
    server.settle().await.unwrap();
    all_timers_fired(&server).await;
    server.transition("AGR-1", "expired").await.unwrap();
    server.settle().await.unwrap();
    let kpis = server
        .get("/api/v1/kpis?process=recover")
        .await
        .unwrap()
        .body;
    assert_eq!(kpis["sla_measured"], 2, "{kpis}");
    assert_eq!(kpis["sla_compliance_percent"], 50.0, "{kpis}");
    assert!(
        kpis["mean_time_to_resolve_business_minutes"]
            .as_f64()
            .is_some_and(|m| m > 0.0),
        "{kpis}"
    );
    assert!(kpis["mean_time_to_resolve_minutes"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rrule_holiday_pauses_the_clock_on_a_later_years_date() {
    let server = TestServer::start().unwrap();
    // Today's month and day, recurring yearly since 2020: today is a holiday, this year too.
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let ics = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//usm//e2e//EN\r\nBEGIN:VEVENT\r\nUID:day@usm\r\n\
         DTSTART;VALUE=DATE:2020{:02}{:02}\r\nRRULE:FREQ=YEARLY\r\nSUMMARY:Founders' day\r\n\
         END:VEVENT\r\nEND:VCALENDAR\r\n",
        today.month(),
        today.day()
    );
    let created = server
        .post(
            "/api/v1/records",
            &json!({"kind": "agreement", "title": "Holidays", "fields": {
                "targets": {"P2": {"resolution_minutes": 60}},
                "calendar": {"timezone": "UTC", "always": true, "ical": ics}}}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(
            json!({"kind": "incident", "title": "On the holiday", "fields": {"priority": "P2"}}),
        )
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    if now != today {
        return; // Midnight passed during the test: the day under test is over.
    }
    let record = server.get("/api/v1/records/INC-1").await.unwrap().body;
    let resolution = &record["sla"]["resolution"];
    assert_eq!(resolution["elapsed_minutes"], 0.0, "{record}");
    let due: jiff::Timestamp = resolution["due_at"].as_str().unwrap().parse().unwrap();
    let tomorrow = today
        .tomorrow()
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp();
    assert_eq!(
        due,
        tomorrow + jiff::SignedDuration::from_mins(60),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agreements_are_validated_when_written_naming_the_field() {
    let server = TestServer::start().unwrap();
    let week = json!({"mon": ["08:00-18:00"]});
    for (fields, pointer) in [
        (
            json!({"calendar": {"timezone": "Mars/Olympus", "weekly": week}}),
            "/fields/calendar/timezone",
        ),
        (
            json!({"calendar": {"weekly": {"tue": ["08:00-12:00", "11:30-17:00"]}}}),
            "/fields/calendar/weekly/tue/1",
        ),
        (
            json!({"calendar": {"weekly": {"wed": ["17:00-09:00"]}}}),
            "/fields/calendar/weekly/wed/0",
        ),
        (
            json!({"calendar": {"timezone": "UTC", "weekly": {}}}),
            "/fields/calendar/weekly",
        ),
        (
            json!({"targets": {"P9": {"resolution_minutes": 60}}}),
            "/fields/targets/P9",
        ),
        (
            json!({"targets": {"P1": {"resolution_minutes": -5}}}),
            "/fields/targets/P1/resolution_minutes",
        ),
        (
            json!({"pause_reasons": ["awaiting_customer", ""]}),
            "/fields/pause_reasons/1",
        ),
        (
            json!({"pause_reasons": "awaiting_vendor"}),
            "/fields/pause_reasons",
        ),
        (
            json!({"calendar": {"always": true, "ical": "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20200101\r\nRRULE:FREQ=MINUTELY\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"}}),
            "/fields/calendar/ical",
        ),
    ] {
        let reply = server
            .post(
                "/api/v1/records",
                &json!({"kind": "agreement", "title": "Bad", "fields": fields}),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 422, "{fields}: {}", reply.body);
        assert_eq!(reply.body["code"], "invalid_fields", "{}", reply.body);
        assert_eq!(reply.body["field"], pointer, "{}", reply.body);
    }
    let good = server
        .create(json!({"kind": "agreement", "title": "Good", "fields": {
            "targets": {"P1": {"resolution_minutes": 60}, "default": {"response_minutes": 30}},
            "calendar": {"timezone": "Europe/Amsterdam", "weekly": {"mon": ["08:00-12:00", "12:00-17:00"]}}}}))
        .await
        .unwrap();
    let id = good["id"].as_str().unwrap();
    let broken = server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"calendar": {"timezone": "Europe/Atlantis"}}}),
        )
        .await
        .unwrap();
    assert_eq!(broken.status, 422, "{}", broken.body);
    assert_eq!(broken.body["field"], "/fields/calendar/timezone");
    let stored = server
        .get(&format!("/api/v1/records/{id}"))
        .await
        .unwrap()
        .body;
    assert_eq!(stored["fields"]["calendar"]["timezone"], "Europe/Amsterdam");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_response_is_met_by_an_agents_action_and_not_by_a_cancel() {
    let server = TestServer::start().unwrap();
    server
        .create(
            json!({"kind": "agreement", "title": "Answer fast", "fields": {
            "targets": {"default": {"response_minutes": 600, "resolution_minutes": 6000}},
            "calendar": {"always": true}}}),
        )
        .await
        .unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    let ann = server.token("ann", &["agent"], None).await.unwrap();
    let raise = |title: &'static str| json!({"kind": "incident", "title": title});
    for title in ["Printer", "Never mind"] {
        let reply = server
            .call_as(
                Some(&rob),
                reqwest::Method::POST,
                "/api/v1/records",
                Some(&raise(title)),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    // An internal note answers no one: the response clock runs on.
    let note = server
        .call_as(
            Some(&ann),
            reqwest::Method::POST,
            "/api/v1/records/INC-1/comments",
            Some(&json!({"body": "looks like the toner", "visibility": "internal"})),
        )
        .await
        .unwrap();
    assert_eq!(note.status, 201, "{}", note.body);
    server.settle().await.unwrap();
    let noted = server.get("/api/v1/records/INC-1/sla").await.unwrap().body;
    assert_eq!(noted["status"]["response"]["stopped"], false, "{noted}");
    // The agent's first action is an edit that moves no state: the response is met by it.
    let edited = server
        .call_as(
            Some(&ann),
            reqwest::Method::PATCH,
            "/api/v1/records/INC-1",
            Some(&json!({"title": "Printer on floor 3"})),
        )
        .await
        .unwrap();
    assert_eq!(edited.status, 200, "{}", edited.body);
    // The requester cancels the other one before anyone answered.
    let cancelled = server
        .call_as(
            Some(&rob),
            reqwest::Method::POST,
            "/api/v1/records/INC-2/transitions",
            Some(&json!({"to": "cancelled"})),
        )
        .await
        .unwrap();
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    server.settle().await.unwrap();
    let record = server.get("/api/v1/records/INC-1").await.unwrap().body;
    assert_eq!(record["state"], "new");
    assert_eq!(record["sla"]["response"]["stopped"], true, "{record}");
    let record = server.get("/api/v1/records/INC-2").await.unwrap().body;
    assert_eq!(record["sla"]["response"]["met"], false, "{record}");

    let met = server.get("/api/v1/records/INC-1/sla").await.unwrap().body;
    let response = &met["status"]["response"];
    assert_eq!(response["stopped"], true, "{met}");
    assert_eq!(response["met"], true, "{met}");
    assert_eq!(met["status"]["resolution"]["stopped"], false);
    let stop = entries(&met, "response", "stop");
    assert_eq!(stop.len(), 1, "{met}");
    assert_eq!(stop[0]["met"], true);

    let unmet = server.get("/api/v1/records/INC-2/sla").await.unwrap().body;
    let response = &unmet["status"]["response"];
    assert_eq!(response["stopped"], true, "{unmet}");
    assert_eq!(response["met"], false, "cancelling answers no one: {unmet}");
    let stop = entries(&unmet, "response", "stop");
    assert_eq!(stop.len(), 1, "{unmet}");
    assert_eq!(stop[0]["met"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_closed_without_an_outcome_count_as_unknown() {
    let server = TestServer::start().unwrap();
    for fields in [
        json!({"outcome": "successful"}),
        json!({"outcome": "failed"}),
        json!({}),
    ] {
        server
            .create(json!({"kind": "change", "title": "c", "fields": fields}))
            .await
            .unwrap();
    }
    for id in ["CHG-1", "CHG-2", "CHG-3"] {
        for to in ["implement", "review", "closed"] {
            server.transition(id, to).await.unwrap();
        }
    }
    // The KPIs count a write once the outbox workers have seen it.
    server.settle().await.unwrap();
    let kpis = server
        .get("/api/v1/kpis?process=change")
        .await
        .unwrap()
        .body;
    assert_eq!(kpis["changes_closed"], 3, "{kpis}");
    assert_eq!(kpis["changes_outcome_unknown"], 1, "{kpis}");
    let rate = kpis["change_success_rate_percent"].as_f64().unwrap();
    assert!((rate - 100.0 / 3.0).abs() < 1e-9, "{kpis}");
}
