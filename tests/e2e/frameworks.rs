//! The bundled framework modules over HTTP: the default domain mix, and each rule's allowed and
//! refused path.

use reqwest::StatusCode;
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

fn bundled() -> TestServer {
    TestServer::start_with(|config| config.bundled_modules = true).unwrap()
}

fn assert_rejected(reply: &Reply, module: &str, reason: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["code"], "step_rejected", "{}", reply.body);
    assert_eq!(reply.body["module"], module, "{}", reply.body);
    assert_eq!(reply.body["reason"], reason, "{}", reply.body);
}

async fn move_to(server: &TestServer, id: &str, to: &str) -> Reply {
    server
        .post(
            &format!("/api/v1/records/{id}/transitions"),
            &json!({"to": to}),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_server_runs_the_default_mix_per_domain() {
    let server = bundled();
    let modules = server.get("/api/v1/modules").await.unwrap().body;
    let domains = |id: &str| -> Vec<String> {
        let module = modules["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap();
        module["domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(domains("usm-core"), ["facilities", "hr", "it"]);
    assert_eq!(domains("itil4"), ["it"]);
    assert_eq!(domains("cobit2019"), ["hr", "it"]);
    assert_eq!(domains("iso20000"), ["it"]);
    assert_eq!(domains("hr"), ["hr"]);
    assert_eq!(domains("facilities"), ["facilities"]);

    // Each domain runs only its own pipelines.
    let pipelines = server.get("/api/v1/pipelines").await.unwrap().body;
    let modules_in = |domain: &str| -> std::collections::BTreeSet<String> {
        pipelines["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["domain"] == domain)
            .flat_map(|p| {
                p["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["module"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    // usm-core ships kinds' workflows, not steps, so it runs in no pipeline.
    assert_eq!(
        modules_in("it"),
        ["cobit2019", "iso20000", "itil4"].map(String::from).into()
    );
    assert_eq!(
        modules_in("hr"),
        ["cobit2019", "hr"].map(String::from).into()
    );
    assert_eq!(
        modules_in("facilities"),
        ["facilities"].map(String::from).into()
    );

    let fields = json!({"impact": "high", "urgency": "high"});
    // A field exists where a module enabled in the domain declares it: `building` is the
    // facilities module's.
    let at_the_lab = json!({"impact": "high", "urgency": "high", "building": "Lab"});
    let misplaced = server
        .post(
            "/api/v1/records",
            &json!({"kind": "incident", "domain": "it", "title": "x", "fields": at_the_lab}),
        )
        .await
        .unwrap();
    assert_eq!(misplaced.status, 422, "{}", misplaced.body);
    assert_eq!(misplaced.body["code"], "unknown_field");
    assert_eq!(misplaced.body["field"], "/fields/building");
    let it = server
        .create(json!({"kind": "incident", "domain": "it", "title": "x", "fields": fields}))
        .await
        .unwrap();
    let hr = server
        .create(json!({"kind": "incident", "domain": "hr", "title": "x", "fields": fields}))
        .await
        .unwrap();
    let fac = server
        .create(
            json!({"kind": "incident", "domain": "facilities", "title": "x", "fields": at_the_lab}),
        )
        .await
        .unwrap();
    assert_eq!(it["fields"]["priority"], "P1");
    assert_eq!(it["fields"]["cobit_objective"], "DSS02");
    assert!(it["fields"].get("assignment_group").is_none());
    assert!(hr["fields"].get("priority").is_none());
    assert_eq!(hr["fields"]["cobit_objective"], "DSS02");
    assert!(
        fac["fields"].get("priority").is_none() && fac["fields"].get("cobit_objective").is_none()
    );
    assert_eq!(fac["fields"]["assignment_group"], "site-lab");
    // Who a record is for is the creating principal, kept by the engine, not a field default.
    for record in [&it, &hr, &fac] {
        assert_eq!(record["created_by"], "admin");
        assert!(record["fields"].get("requester").is_none(), "{record}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn itil4_priority_matrix() {
    let server = bundled();
    for (impact, urgency, priority) in [
        ("high", "high", "P1"),
        ("medium", "high", "P2"),
        ("low", "low", "P5"),
    ] {
        let record = server
            .create(json!({"kind": "incident", "title": "x", "fields": {"impact": impact, "urgency": urgency}}))
            .await
            .unwrap();
        assert_eq!(record["fields"]["priority"], priority, "{impact}/{urgency}");
        assert_eq!(
            record["fields"]["major_incident_suggested"],
            priority == "P1"
        );
    }
    // An update re-derives the priority.
    let updated = server
        .patch(
            "/api/v1/records/INC-3",
            &json!({"fields": {"impact": "high", "urgency": "high"}}),
        )
        .await
        .unwrap();
    assert_eq!(updated.body["fields"]["priority"], "P1");
}

#[tokio::test(flavor = "multi_thread")]
async fn iso20000_resolution_data_before_resolving() {
    let server = bundled();
    server
        .create(json!({"kind": "incident", "title": "Mail down", "fields": {"impact": "high", "urgency": "high"}}))
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    assert_rejected(
        &move_to(&server, "INC-1", "resolved").await,
        "iso20000",
        "classification_required",
    );
    server
        .patch(
            "/api/v1/records/INC-1",
            &json!({"fields": {"category": "email"}}),
        )
        .await
        .unwrap();
    assert_rejected(
        &move_to(&server, "INC-1", "resolved").await,
        "iso20000",
        "resolution_required",
    );
    server
        .patch(
            "/api/v1/records/INC-1",
            &json!({"fields": {"resolution_code": "fixed", "resolution": "Restarted the MTA"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        move_to(&server, "INC-1", "resolved").await.status,
        StatusCode::OK
    );
    // Closing needs no customer confirmation: ISO/IEC 20000-1 8.6.1 does not ask for one.
    assert_eq!(
        move_to(&server, "INC-1", "closed").await.status,
        StatusCode::OK
    );

    // Requests too: no fulfilment without resolution data.
    server
        .create(json!({"kind": "request", "title": "New phone"}))
        .await
        .unwrap();
    server.transition("REQ-1", "in_progress").await.unwrap();
    assert_rejected(
        &move_to(&server, "REQ-1", "fulfilled").await,
        "iso20000",
        "classification_required",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn itil4_an_incident_closes_only_after_its_children() {
    let server = bundled();
    let ready = json!({"category": "email", "resolution_code": "fixed", "resolution": "done"});
    server
        .create(json!({"kind": "incident", "title": "Printer", "fields": ready}))
        .await
        .unwrap();
    server
        .create(json!({"kind": "task", "title": "Replace toner", "links": [{"rel": "parent", "to": "INC-1"}]}))
        .await
        .unwrap();
    // A problem record links to the incident too (it does not block closing).
    server
        .create(json!({"kind": "problem", "title": "Toner runs out", "links": [{"rel": "relates_to", "to": "INC-1"}]}))
        .await
        .unwrap();
    for to in ["in_progress", "resolved"] {
        server.transition("INC-1", to).await.unwrap();
    }
    let refused = move_to(&server, "INC-1", "closed").await;
    assert_rejected(&refused, "itil4", "open_children");
    assert!(refused.body["detail"].as_str().unwrap().contains("TSK-1"));
    server.transition("TSK-1", "done").await.unwrap();
    assert_eq!(
        move_to(&server, "INC-1", "closed").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn facilities_routes_faults_by_building() {
    let server = bundled();
    for (building, team) in [
        ("HQ", "site-hq"),
        ("Warehouse", "site-logistics"),
        ("Moon base", "facilities-helpdesk"),
    ] {
        let record = server
            .create(json!({"kind": "incident", "domain": "facilities", "title": "Broken door", "fields": {"building": building}}))
            .await
            .unwrap();
        assert_eq!(record["fields"]["assignment_group"], team, "{building}");
    }
    // An agent's choice of group stands; the site team is still noted.
    let chosen = server
        .create(
            json!({"kind": "incident", "domain": "facilities", "title": "Broken door",
            "fields": {"building": "HQ", "assignment_group": "site-lab"}}),
        )
        .await
        .unwrap();
    assert_eq!(chosen["fields"]["assignment_group"], "site-lab", "{chosen}");
    assert_eq!(chosen["fields"]["site_team"], "site-hq", "{chosen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_and_enablement_survive_a_restart() {
    let server = bundled();
    server
        .post(
            "/api/v1/modules/facilities/disable",
            &json!({"domains": ["facilities"]}),
        )
        .await
        .unwrap();
    let before: Value = server.get("/api/v1/modules").await.unwrap().body;
    let pipelines_before = server.get("/api/v1/pipelines").await.unwrap().body;
    let server = server
        .restart_with(|config| config.bundled_modules = true)
        .await
        .unwrap();
    assert_eq!(
        server.get("/api/v1/modules").await.unwrap().body,
        before,
        "same modules, versions, domains, install times"
    );
    assert_eq!(
        server.get("/api/v1/pipelines").await.unwrap().body,
        pipelines_before
    );
    // The disabled module stays disabled: neither its field nor its routing is there.
    let fault = json!({"kind": "incident", "domain": "facilities", "title": "x", "fields": {"building": "HQ"}});
    let refused = server.post("/api/v1/records", &fault).await.unwrap();
    assert_eq!(refused.body["code"], "unknown_field", "{}", refused.body);
    let fault = server
        .create(json!({"kind": "incident", "domain": "facilities", "title": "x"}))
        .await
        .unwrap();
    assert!(fault["fields"].get("assignment_group").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transition_carries_its_fields_in_one_write_past_the_rules_that_read_them() {
    let server = bundled();
    server
        .create(json!({"kind": "incident", "title": "Mail down", "fields": {"impact": "low", "urgency": "low"}}))
        .await
        .unwrap();
    server.transition("INC-1", "in_progress").await.unwrap();
    let resolve = |fields: Value| {
        let body = json!({"to": "resolved", "comment": "MTA restarted", "fields": fields});
        let server = &server;
        async move {
            server
                .post("/api/v1/records/INC-1/transitions", &body)
                .await
        }
    };
    // A move refused by a rule writes none of its fields either.
    let refused = resolve(json!({"category": "email"})).await.unwrap();
    assert_rejected(&refused, "iso20000", "resolution_required");
    let unchanged = server.get("/api/v1/records/INC-1").await.unwrap();
    assert_eq!(unchanged.body["version"], 2);
    assert!(unchanged.body["fields"].get("category").is_none());
    // A misspelt field is refused by name, with the move.
    let misspelt = resolve(json!({"resolution_code": "fixed", "resoluton": "x"}))
        .await
        .unwrap();
    assert_eq!(misspelt.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (&misspelt.body["code"], &misspelt.body["field"]),
        (&json!("unknown_field"), &json!("/fields/resoluton"))
    );
    assert_eq!(
        server.get("/api/v1/records/INC-1").await.unwrap().body["state"],
        "in_progress"
    );

    let resolved = resolve(json!({"category": "email", "resolution_code": "fixed",
                                  "resolution": "Restarted the MTA"}))
    .await
    .unwrap();
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.body);
    assert_eq!(resolved.body["state"], "resolved");
    assert_eq!(resolved.body["version"], 3);
    assert_eq!(resolved.body["fields"]["resolution_code"], "fixed");
    let history = server.get("/api/v1/records/INC-1/history").await.unwrap();
    let entries = history.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let last = &entries[2];
    assert_eq!(last["action"], "transition", "{last}");
    assert_eq!(last["comment"], "MTA restarted");
    let changed: Vec<&str> = last["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["path"].as_str())
        .collect();
    for path in [
        "/state",
        "/fields/category",
        "/fields/resolution_code",
        "/fields/resolution",
    ] {
        assert!(changed.contains(&path), "{path} not in {changed:?}");
    }
    // A stale If-Match refuses the move and its fields alike.
    let stale = server
        .call(
            reqwest::Method::POST,
            "/api/v1/records/INC-1/transitions",
            Some(&json!({"to": "closed", "fields": {"resolution": "Other"}})),
            &[("If-Match", "\"2\"")],
        )
        .await
        .unwrap();
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let kept = server.get("/api/v1/records/INC-1").await.unwrap();
    assert_eq!(kept.body["state"], "resolved");
    assert_eq!(kept.body["fields"]["resolution"], "Restarted the MTA");
}
