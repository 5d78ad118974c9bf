//! Automations: on demand, on events and from KPIs, as an automation account, with run logs.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use usm_tests::TestServer;

async fn wait_for_tasks(server: &TestServer, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = server.list_all("kind=task").await.unwrap();
        if tasks.len() >= count || Instant::now() > deadline {
            return tasks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_automation_runs_on_demand_with_a_log() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "incident", "title": "a"}))
        .await
        .unwrap();
    server
        .create(json!({"kind": "incident", "title": "b"}))
        .await
        .unwrap();
    let defined = server
        .post("/api/v1/automations", &json!({"id": "count-open", "trigger": {"type": "manual"},
            "script": "fn run(ctx) { let open = query(#{ kind: \"incident\", state: \"new\" }); print(`${open.len()} open`); open.len() }"}))
        .await
        .unwrap();
    assert_eq!(defined.status, StatusCode::CREATED, "{}", defined.body);
    let run = server
        .post("/api/v1/automations/count-open/run", &json!({}))
        .await
        .unwrap();
    assert_eq!(run.status, StatusCode::OK, "{}", run.body);
    assert_eq!(run.body["result"], 2);
    assert_eq!(run.body["output"], json!(["2 open"]));
    assert_eq!(run.body["trigger"], "manual");
    let runs = server
        .get("/api/v1/automations/count-open/runs")
        .await
        .unwrap()
        .body;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);

    let broken = server
        .post("/api/v1/automations", &json!({"id": "broken", "trigger": {"type": "manual"}, "script": "fn run(ctx) { let = ; }"}))
        .await
        .unwrap();
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    let failing = server
        .post("/api/v1/automations", &json!({"id": "failing", "trigger": {"type": "manual"}, "script": "fn run(ctx) { transition(\"INC-99\", \"closed\", \"\") }"}))
        .await
        .unwrap();
    assert_eq!(failing.status, StatusCode::CREATED);
    let run = server
        .post("/api/v1/automations/failing/run", &json!({}))
        .await
        .unwrap();
    assert!(
        run.body["error"].as_str().unwrap().contains("INC-99"),
        "{}",
        run.body
    );
    let endless = server
        .post("/api/v1/automations", &json!({"id": "endless", "trigger": {"type": "manual"}, "script": "fn run(ctx) { loop { } }"}))
        .await
        .unwrap();
    assert_eq!(endless.status, StatusCode::CREATED);
    let run = server
        .post("/api/v1/automations/endless/run", &json!({}))
        .await
        .unwrap();
    assert!(
        run.body["error"].is_string(),
        "the sandbox limits stop it: {}",
        run.body
    );
    assert_eq!(
        server
            .post("/api/v1/automations/nope/run", &json!({}))
            .await
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bundled_automations_fan_out_offboarding_and_open_improvements() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();
    let listed = server.get("/api/v1/automations").await.unwrap().body;
    let ids: Vec<&str> = listed["automations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "escalate-breached-p1",
            "hr-offboarding",
            "reopen-rate-improvement",
            "stale-request-reminder"
        ]
    );
    // Event automations run on demand say what they wait for instead of failing.
    for id in ["escalate-breached-p1", "hr-offboarding"] {
        let run = server
            .post(&format!("/api/v1/automations/{id}/run"), &json!({}))
            .await
            .unwrap();
        assert_eq!(run.status, 200);
        assert!(run.body.get("error").is_none(), "{id}: {}", run.body);
        assert!(listed["automations"][0]["config"].is_object());
    }

    server
        .create(json!({"kind": "request", "domain": "hr", "title": "Offboard Sam", "fields": {"request_type": "offboarding", "employee": "Sam Lee"}}))
        .await
        .unwrap();
    let tasks = wait_for_tasks(&server, 3).await;
    let mut titles: Vec<&str> = tasks.iter().map(|t| t["title"].as_str().unwrap()).collect();
    titles.sort_unstable();
    assert_eq!(
        titles,
        [
            "Collect the badge of Sam Lee",
            "Collect the laptop of Sam Lee",
            "Revoke accounts of Sam Lee"
        ]
    );
    assert!(
        tasks
            .iter()
            .all(|t| t["created_by"] == "automation:hr-offboarding")
    );
    let mut teams: Vec<&str> = tasks
        .iter()
        .map(|t| t["fields"]["assignment_group"].as_str().unwrap())
        .collect();
    teams.sort_unstable();
    assert_eq!(
        teams,
        ["facilities-security", "it-identity", "it-workplace"]
    );

    // The Improve loop: reopen rate over the threshold opens one improvement.
    let ready = json!({"category": "x", "resolution_code": "fixed", "resolution": "done"});
    server
        .create(json!({"kind": "incident", "title": "flaky", "fields": ready.clone()}))
        .await
        .unwrap();
    for to in ["in_progress", "resolved", "in_progress", "resolved"] {
        if to == "resolved" {
            // A reopening cleared the resolution: it is recorded again each time.
            server
                .patch("/api/v1/records/INC-1", &json!({"fields": ready}))
                .await
                .unwrap();
        }
        server.transition("INC-1", to).await.unwrap();
    }
    let run = server
        .post(
            "/api/v1/automations/reopen-rate-improvement/run",
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(run.body["result"], "IMP-1", "{}", run.body);
    let improvement = server.get("/api/v1/records/IMP-1").await.unwrap().body;
    assert_eq!(improvement["fields"]["kpi"], "reopen_rate");
    assert_eq!(
        improvement["created_by"],
        "automation:reopen-rate-improvement"
    );
    let again = server
        .post(
            "/api/v1/automations/reopen-rate-improvement/run",
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(again.body["result"], "already tracked in IMP-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breached_p1_incident_is_escalated_by_automation() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();
    server
        .create(json!({"kind": "agreement", "title": "Fast SLA", "fields": {
            "targets": {"P1": {"response_minutes": 0.02, "resolution_minutes": 0.03}}, "calendar": {"always": true}}}))
        .await
        .unwrap();
    server.transition("AGR-1", "active").await.unwrap();
    server
        .create(json!({"kind": "incident", "title": "Everything is down", "fields": {"impact": "high", "urgency": "high"}}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let incident = server.get("/api/v1/records/INC-1").await.unwrap().body;
        if incident["fields"]["assignment_group"] == "major-incident-team" {
            assert_eq!(
                incident["fields"]["assignment_group"],
                "major-incident-team"
            );
            assert_eq!(incident["updated_by"], "automation:escalate-breached-p1");
            break;
        }
        assert!(Instant::now() < deadline, "never escalated: {incident}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_automation_fires_on_its_schedule_and_only_then() {
    let server = TestServer::start().unwrap();
    // Every minute: it runs in the minute it is defined in, once. A schedule that cannot match
    // (February 30th) never runs.
    for (id, schedule) in [("every-minute", "* * * * *"), ("never", "0 0 30 2 *")] {
        let defined = server
            .post("/api/v1/automations", &json!({"id": id, "trigger": {"type": "cron", "schedule": schedule},
                "script": format!("fn run(ctx) {{ create(#{{ kind: \"task\", title: \"made by {id}\" }}) }}")}))
            .await
            .unwrap();
        assert_eq!(defined.status, StatusCode::CREATED, "{}", defined.body);
    }
    // A schedule may read a time zone's wall clock; the zone must exist.
    for (zone, status) in [
        ("Asia/Kathmandu", StatusCode::CREATED),
        ("Mars/Olympus", StatusCode::BAD_REQUEST),
    ] {
        let defined = server
            .post(
                "/api/v1/automations",
                &json!({"id": format!("zoned-{}", status.as_u16()),
                "trigger": {"type": "cron", "schedule": "0 0 30 2 *", "time_zone": zone},
                "script": "fn run(ctx) { 1 }"}),
            )
            .await
            .unwrap();
        assert_eq!(defined.status, status, "{zone}: {}", defined.body);
    }
    // The run log is written after the run's task commits, and a definition made just before
    // a minute boundary may run twice: each logged run made exactly one task.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (tasks, runs) = loop {
        let tasks = wait_for_tasks(&server, 1).await;
        let runs = server
            .get("/api/v1/automations/every-minute/runs")
            .await
            .unwrap()
            .body;
        let logged = runs["runs"].as_array().map_or(0, Vec::len);
        if (logged > 0 && logged == tasks.len()) || Instant::now() > deadline {
            break (tasks, runs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(matches!(tasks.len(), 1 | 2), "{tasks:?}");
    assert_eq!(
        runs["runs"].as_array().map(Vec::len),
        Some(tasks.len()),
        "{runs}"
    );
    for task in &tasks {
        assert_eq!(task["title"], "made by every-minute");
        assert_eq!(task["created_by"], "automation:every-minute");
    }
    for run in runs["runs"].as_array().into_iter().flatten() {
        assert_eq!(run["trigger"], "cron", "{runs}");
        assert!(run["error"].is_null(), "{runs}");
    }
    let never = server
        .get("/api/v1/automations/never/runs")
        .await
        .unwrap()
        .body;
    assert_eq!(never["runs"], json!([]), "{never}");
}
