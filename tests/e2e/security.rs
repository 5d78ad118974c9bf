//! Authentication, authorization by role and domain, tokens, audit and request limits.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{ADMIN_TOKEN, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn every_api_route_needs_a_valid_token() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    let routes = [
        (Method::GET, "/api/v1/records"),
        (Method::POST, "/api/v1/records"),
        (Method::GET, "/api/v1/records/INC-1"),
        (Method::PATCH, "/api/v1/records/INC-1"),
        (Method::POST, "/api/v1/records/INC-1/transitions"),
        (Method::GET, "/api/v1/records/INC-1/history"),
        (Method::GET, "/api/v1/records/INC-1/approvals"),
        (Method::POST, "/api/v1/records/INC-1/approvals"),
        (Method::GET, "/api/v1/pipelines"),
        (Method::GET, "/api/v1/modules"),
        (Method::GET, "/api/v1/workflows"),
        (Method::GET, "/api/v1/tokens"),
        (Method::GET, "/api/v1/audit"),
    ];
    for (method, path) in &routes {
        for token in [None, Some("usm_not_a_real_token_000000000000000000")] {
            let reply = server
                .call_as(token, method.clone(), path, Some(&json!({})))
                .await
                .unwrap();
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(reply.body["code"], "unauthorized");
            assert!(
                reply
                    .header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer"))
            );
        }
    }
    // Health and the API description stay open.
    assert_eq!(
        server
            .call_as(None, Method::GET, "/healthz", None)
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .call_as(None, Method::GET, "/openapi.json", None)
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_created_listed_used_and_revoked() {
    let server = TestServer::start().unwrap();
    let created = server
        .post(
            "/api/v1/tokens",
            &json!({"name": "ann", "roles": ["agent"], "domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["token"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    let listed = server.get("/api/v1/tokens").await.unwrap().body;
    let text = listed.to_string();
    assert!(
        text.contains("\"ann\"") && !text.contains(&secret),
        "secrets are never listed"
    );
    let mine = server
        .call_as(
            Some(&secret),
            Method::POST,
            "/api/v1/records",
            Some(&json!({"kind": "task", "title": "t"})),
        )
        .await
        .unwrap();
    assert_eq!(mine.status, StatusCode::CREATED);
    assert_eq!(mine.body["created_by"], "ann");

    let revoked = server
        .call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None, &[])
        .await
        .unwrap();
    assert_eq!(revoked.status, StatusCode::OK);
    let after = server
        .call_as(Some(&secret), Method::GET, "/api/v1/records", None)
        .await
        .unwrap();
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);

    let expired = server
        .post(
            "/api/v1/tokens",
            &json!({"name": "old", "roles": ["agent"], "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(expired.status, StatusCode::BAD_REQUEST);
    assert_eq!(expired.body["field"], "/expires_at");
    let bad_domain = server
        .post(
            "/api/v1/tokens",
            &json!({"name": "x", "roles": ["agent"], "domains": ["mars"]}),
        )
        .await
        .unwrap();
    assert_eq!(bad_domain.status, StatusCode::BAD_REQUEST);

    // Only admins manage tokens.
    let agent = server.token("ann2", &["agent"], None).await.unwrap();
    let denied = server
        .call_as(
            Some(&agent),
            Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": "x", "roles": ["admin"]})),
        )
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    // Every admin action is audited with actor, time and before/after.
    let audit = server.get("/api/v1/audit").await.unwrap().body;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("token.create", "admin")));
    assert!(actions.contains(&("token.revoke", "admin")));
    let revoke = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "token.revoke")
        .unwrap();
    assert_eq!(revoke["before"]["name"], "ann");
    assert!(revoke["at"].is_string());
}

/// Creates a token as the bootstrap admin; returns its (id, secret).
async fn token_with_id(server: &TestServer, body: Value) -> (String, String) {
    let created = server.post("/api/v1/tokens", &body).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let field = |name: &str| created.body[name].as_str().unwrap().to_owned();
    (field("id"), field("token"))
}

/// Who may do what, where: each role against each endpoint, in and out of its domain. The
/// admin column is an admin of `hr` only: admin acts within its domains like every role, and
/// what is server-wide (module bundles, workflows) needs a global admin.
#[tokio::test(flavor = "multi_thread")]
async fn the_role_endpoint_domain_matrix() {
    let server = TestServer::start().unwrap();
    let triage =
        usm_engine::Module::read_dir(&usm_tests::repo_path("scripts/examples/triage")).unwrap();
    let installed = server
        .upload_module(usm_engine::bundle::pack(&triage).unwrap())
        .await
        .unwrap();
    assert_eq!(installed.status, StatusCode::CREATED, "{}", installed.body);
    let enabled = server
        .post("/api/v1/modules/triage/enable", &json!({"domains": ["it"]}))
        .await
        .unwrap();
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    let (agent_it_id, agent_it) = token_with_id(
        &server,
        json!({"name": "ivan", "roles": ["agent"], "domains": ["it"]}),
    )
    .await;
    let automation_it = server
        .token("robot", &["automation"], Some(&["it"]))
        .await
        .unwrap();
    let requester = server
        .token("rita", &["requester"], Some(&["it"]))
        .await
        .unwrap();
    let admin_hr = server
        .token("hana", &["admin"], Some(&["hr"]))
        .await
        .unwrap();

    // Records: one in it by the agent, one in it by the requester, one in hr.
    let create = |token: &str, domain: &str, title: &str| {
        let token = token.to_owned();
        let body = json!({"kind": "request", "domain": domain, "title": title});
        let server = &server;
        async move {
            server
                .call_as(Some(&token), Method::POST, "/api/v1/records", Some(&body))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        create(&agent_it, "it", "agent's").await.status,
        StatusCode::CREATED
    ); // REQ-1
    assert_eq!(
        create(&requester, "it", "rita's").await.status,
        StatusCode::CREATED
    ); // REQ-2
    server
        .create(json!({"kind": "request", "domain": "hr", "title": "hr's"}))
        .await
        .unwrap(); // REQ-3
    // Creating outside one's domains is forbidden.
    for token in [&agent_it, &automation_it, &requester] {
        assert_eq!(create(token, "hr", "x").await.status, StatusCode::FORBIDDEN);
    }

    // What a global admin set up in it: a webhook and an automation.
    let it_hook = server
        .post(
            "/api/v1/webhooks",
            &json!({"url": "https://93.184.215.14/usm", "events": ["sla.breach"], "domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(it_hook.status, StatusCode::CREATED, "{}", it_hook.body);
    let it_hook = it_hook.body["id"].as_str().unwrap().to_owned();
    let it_job = server
        .post(
            "/api/v1/automations",
            &json!({"id": "it-nightly", "trigger": {"type": "manual"}, "script": "fn run(ctx) { 1 }", "domains": ["it"]}),
        )
        .await
        .unwrap();
    assert_eq!(it_job.status, StatusCode::CREATED, "{}", it_job.body);

    struct Case {
        method: Method,
        path: String,
        body: Value,
        expect: [StatusCode; 4], // agent(it), automation(it), requester(it), admin(hr)
    }
    use StatusCode as S;
    // Admin routes: 403 for the other roles; for the hr admin, 403 where the route exists for
    // admins but not for its domains, 404 for an object outside them.
    let admin_only = |method: Method, path: &str, body: Value, admin_hr: StatusCode| Case {
        method,
        path: path.to_owned(),
        body,
        expect: [S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, admin_hr],
    };
    let webhook = |domains: Value| json!({"url": "https://93.184.215.14/usm", "events": ["sla.breach"], "domains": domains});
    let automation = |id: &str, domains: Value| json!({"id": id, "trigger": {"type": "manual"}, "script": "fn run(ctx) { 1 }", "domains": domains});
    let scoped_admin_cases = [
        admin_only(
            Method::POST,
            "/api/v1/tokens",
            json!({"name": "root2", "roles": ["admin"]}),
            S::FORBIDDEN,
        ),
        admin_only(
            Method::POST,
            "/api/v1/tokens",
            json!({"name": "it-desk", "roles": ["agent"], "domains": ["it", "hr"]}),
            S::FORBIDDEN,
        ),
        admin_only(
            Method::POST,
            "/api/v1/tokens",
            json!({"name": "hr-desk", "roles": ["agent"], "domains": ["hr"]}),
            S::CREATED,
        ),
        admin_only(
            Method::DELETE,
            &format!("/api/v1/tokens/{agent_it_id}"),
            Value::Null,
            S::NOT_FOUND,
        ),
        admin_only(
            Method::POST,
            "/api/v1/modules/triage/disable",
            json!({"domains": ["it"]}),
            S::FORBIDDEN,
        ),
        admin_only(
            Method::POST,
            "/api/v1/modules/triage/enable",
            json!({"domains": ["hr"]}),
            S::OK,
        ),
        // Grants bind the module in it too.
        admin_only(
            Method::POST,
            "/api/v1/modules/triage/enable",
            json!({"domains": ["hr"], "grant": ["records:read"]}),
            S::FORBIDDEN,
        ),
        admin_only(Method::POST, "/api/v1/modules", json!({}), S::FORBIDDEN),
        admin_only(
            Method::DELETE,
            "/api/v1/modules/triage",
            Value::Null,
            S::FORBIDDEN,
        ),
        admin_only(Method::POST, "/api/v1/workflows", json!({}), S::FORBIDDEN),
        admin_only(
            Method::POST,
            "/api/v1/webhooks",
            webhook(json!(["it"])),
            S::FORBIDDEN,
        ),
        admin_only(
            Method::POST,
            "/api/v1/webhooks",
            webhook(json!([])),
            S::FORBIDDEN,
        ),
        admin_only(
            Method::POST,
            "/api/v1/webhooks",
            webhook(json!(["hr"])),
            S::CREATED,
        ),
        admin_only(
            Method::GET,
            &format!("/api/v1/webhooks/{it_hook}/deliveries"),
            Value::Null,
            S::NOT_FOUND,
        ),
        admin_only(
            Method::DELETE,
            &format!("/api/v1/webhooks/{it_hook}"),
            Value::Null,
            S::NOT_FOUND,
        ),
        admin_only(
            Method::POST,
            "/api/v1/automations",
            automation("it-too", json!(["it"])),
            S::FORBIDDEN,
        ),
        admin_only(
            Method::POST,
            "/api/v1/automations",
            automation("everywhere", json!([])),
            S::FORBIDDEN,
        ),
        // Replacing the it automation under its id.
        admin_only(
            Method::POST,
            "/api/v1/automations",
            automation("it-nightly", json!(["hr"])),
            S::FORBIDDEN,
        ),
        admin_only(
            Method::POST,
            "/api/v1/automations",
            automation("hr-nightly", json!(["hr"])),
            S::CREATED,
        ),
        admin_only(
            Method::POST,
            "/api/v1/automations/it-nightly/run",
            Value::Null,
            S::NOT_FOUND,
        ),
        admin_only(
            Method::GET,
            "/api/v1/automations/it-nightly/runs",
            Value::Null,
            S::NOT_FOUND,
        ),
        Case {
            method: Method::POST,
            path: "/api/v1/records".into(),
            body: json!({"kind": "agreement", "domain": "it", "title": "it SLA"}),
            expect: [S::CREATED, S::CREATED, S::CREATED, S::FORBIDDEN],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/records".into(),
            body: json!({"kind": "agreement", "domain": "hr", "title": "hr SLA"}),
            expect: [S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, S::CREATED],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/kinds?domain=it".into(),
            body: Value::Null,
            expect: [S::OK, S::OK, S::OK, S::FORBIDDEN],
        },
    ];
    let cases = [
        Case {
            method: Method::GET,
            path: "/api/v1/records/REQ-1".into(),
            body: Value::Null,
            expect: [S::OK, S::OK, S::NOT_FOUND, S::NOT_FOUND],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/records/REQ-2".into(),
            body: Value::Null,
            expect: [S::OK, S::OK, S::OK, S::NOT_FOUND],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/records/REQ-3".into(),
            body: Value::Null,
            expect: [S::NOT_FOUND, S::NOT_FOUND, S::NOT_FOUND, S::OK],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/records/REQ-3/history".into(),
            body: Value::Null,
            expect: [S::NOT_FOUND, S::NOT_FOUND, S::NOT_FOUND, S::OK],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/records/REQ-1/approvals".into(),
            body: Value::Null,
            expect: [S::OK, S::OK, S::NOT_FOUND, S::NOT_FOUND],
        },
        Case {
            method: Method::PATCH,
            path: "/api/v1/records/REQ-2".into(),
            body: json!({"fields": {"category": "x"}}),
            expect: [S::OK, S::OK, S::FORBIDDEN, S::NOT_FOUND],
        },
        Case {
            method: Method::PATCH,
            path: "/api/v1/records/REQ-3".into(),
            body: json!({"fields": {"category": "x"}}),
            expect: [S::NOT_FOUND, S::NOT_FOUND, S::NOT_FOUND, S::OK],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/records/REQ-1/approvals".into(),
            body: json!({"decision": "approve"}),
            // Automations do not approve.
            expect: [S::CREATED, S::FORBIDDEN, S::NOT_FOUND, S::NOT_FOUND],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/records/REQ-2/approvals".into(),
            body: json!({"decision": "approve"}),
            expect: [S::CREATED, S::FORBIDDEN, S::FORBIDDEN, S::NOT_FOUND],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/modules".into(),
            body: Value::Null,
            expect: [S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, S::OK],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tokens".into(),
            body: Value::Null,
            expect: [S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, S::OK],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/audit".into(),
            body: Value::Null,
            expect: [S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, S::OK],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/workflows".into(),
            body: json!({}),
            expect: [S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/workflows".into(),
            body: Value::Null,
            expect: [S::OK, S::OK, S::OK, S::OK],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/records?domain=hr".into(),
            body: Value::Null,
            expect: [S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, S::OK],
        },
    ];
    let tokens = [&agent_it, &automation_it, &requester, &admin_hr];
    // Every cell is checked before failing, so a failure lists all the wrong cells.
    let mut wrong = Vec::new();
    for case in cases.iter().chain(&scoped_admin_cases) {
        for (column, (token, expect)) in tokens.iter().zip(case.expect).enumerate() {
            let body = (!case.body.is_null()).then_some(&case.body);
            let reply = server
                .call_as(Some(token), case.method.clone(), &case.path, body)
                .await
                .unwrap();
            if reply.status != expect {
                wrong.push(format!(
                    "{} {} as column {column}: {} instead of {expect}: {}",
                    case.method, case.path, reply.status, reply.body
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Requesters may cancel their own record through its lifecycle, not someone else's.
    let cancel = |id: &'static str| {
        let requester = requester.clone();
        let server = &server;
        async move {
            server
                .call_as(
                    Some(&requester),
                    Method::POST,
                    &format!("/api/v1/records/{id}/transitions"),
                    Some(&json!({"to": "cancelled"})),
                )
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(cancel("REQ-1").await, StatusCode::NOT_FOUND);
    assert_eq!(cancel("REQ-2").await, StatusCode::OK);

    // What the hr admin lists is hr's alone.
    let as_hana = |path: &'static str| {
        let admin_hr = admin_hr.clone();
        let server = &server;
        async move {
            let reply = server
                .call_as(Some(&admin_hr), Method::GET, path, None)
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
            reply.body
        }
    };
    let names = |list: &Value, key: &str, member: &str| -> Vec<String> {
        list[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[member].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&as_hana("/api/v1/tokens").await, "tokens", "name"),
        ["hana", "hr-desk"]
    );
    let hooks = as_hana("/api/v1/webhooks").await;
    assert_eq!(hooks["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(hooks["webhooks"][0]["domains"], json!(["hr"]));
    assert_eq!(
        names(&as_hana("/api/v1/automations").await, "automations", "id"),
        ["hr-nightly"]
    );
    let audit = as_hana("/api/v1/audit?limit=1000").await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().all(|e| e["domains"] == json!(["hr"])),
        "{audit}"
    );
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "token.create",
        "module.enable",
        "webhook.create",
        "automation.define",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    // The global admin sees everything, the server-wide install included.
    let all = server.get("/api/v1/audit?limit=1000").await.unwrap().body;
    let everything = all["entries"].as_array().unwrap();
    assert!(everything.len() > entries.len());
    assert!(everything.iter().any(|e| e["action"] == "module.install"));
    assert_eq!(
        server.get("/api/v1/tokens").await.unwrap().body["tokens"]
            .as_array()
            .unwrap()
            .len(),
        6,
        "admin, ivan, robot, rita, hana, hr-desk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_and_pagination_never_leak_other_scopes() {
    let server = TestServer::start().unwrap();
    for i in 0..30 {
        let domain = ["it", "hr", "facilities"][i % 3];
        server
            .create(json!({"kind": "task", "domain": domain, "title": format!("t{i}")}))
            .await
            .unwrap();
    }
    let hr_agent = server
        .token("hal", &["agent"], Some(&["hr"]))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/records?limit=4&cursor={c}"),
            None => "/api/v1/records?limit=4".to_owned(),
        };
        let page = server
            .call_as(Some(&hr_agent), Method::GET, &path, None)
            .await
            .unwrap()
            .body;
        for record in page["records"].as_array().unwrap() {
            assert_eq!(record["domain"], "hr");
            seen.push(record["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10, "all of hr, and only hr");
    let by_kind = server
        .call_as(
            Some(&hr_agent),
            Method::GET,
            "/api/v1/records?kind=task&state=new&limit=100",
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_kind.body["records"].as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let server = TestServer::start_with(|config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 5;
    })
    .unwrap();
    // Made first, so the admin's bucket has 4 requests left.
    let other = server.token("ann", &["agent"], None).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(server.get("/api/v1/records").await.unwrap());
    }
    assert!(
        statuses[..4].iter().all(|r| r.status == StatusCode::OK),
        "the rest of the burst passes"
    );
    let limited = statuses
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("some request was limited");
    assert_eq!(limited.body["code"], "rate_limited");
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Another principal has its own bucket: its whole burst passes while the admin is limited.
    for _ in 0..5 {
        let reply = server
            .call_as(Some(&other), Method::GET, "/api/v1/records", None)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_routes_are_charged_to_the_callers_address() {
    let server = TestServer::start_with(|config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 5;
        config.public_health = true;
    })
    .unwrap();
    let mut statuses = Vec::new();
    for path in ["/healthz", "/openapi.json"].iter().cycle().take(20) {
        let reply = server.call_as(None, Method::GET, path, None).await.unwrap();
        statuses.push((path, reply.status, reply.body["code"].clone()));
    }
    assert!(
        statuses[..4]
            .iter()
            .all(|(_, status, _)| *status == StatusCode::OK),
        "{statuses:?}"
    );
    // Twenty requests at one a second with a burst of five: unless they took fifteen seconds,
    // some were refused.
    assert!(
        statuses
            .iter()
            .any(|(_, status, code)| *status == StatusCode::TOO_MANY_REQUESTS
                && code == "rate_limited"),
        "{statuses:?}"
    );
    // A principal's own budget is untouched by the anonymous traffic from the same address.
    assert_eq!(
        server.get("/api/v1/records").await.unwrap().status,
        StatusCode::OK
    );
}

/// `/metrics` as text, sent with `token`.
async fn metrics_text(server: &TestServer, token: Option<&str>) -> (StatusCode, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The value of the metric line starting with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_a_token_by_default_and_count_what_happened() {
    let server = TestServer::start_with(|config| config.default_agreements = true).unwrap();
    let (status, _) = metrics_text(&server, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    server
        .create(json!({"kind": "incident", "title": "x", "fields": {"priority": "P2"}}))
        .await
        .unwrap();
    let missing = server.get("/api/v1/records/INC-99").await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // The incident's response and resolution clocks each arm timers, once its event is consumed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (status, text) = metrics_text(&server, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, StatusCode::OK);
        let armed = metric(&text, "usm_sla_timers_pending").unwrap_or(0.0) >= 2.0;
        if armed || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        metric(&text, "usm_sla_timers_pending").unwrap() >= 2.0,
        "{text}"
    );
    let ok = metric(&text, "usm_http_requests_total{class=\"2xx\"}").unwrap();
    let client_errors = metric(&text, "usm_http_requests_total{class=\"4xx\"}").unwrap();
    assert!(ok >= 1.0, "{text}");
    // The unauthenticated scrape and the unknown record.
    assert!(client_errors >= 2.0, "{text}");
    assert_eq!(
        metric(&text, "usm_http_requests_total{class=\"5xx\"}"),
        Some(0.0)
    );
    // Latency by the route's pattern (not the id), method and status.
    let missed = r#"{route="/api/v1/records/{id}",method="GET",status="404"}"#;
    assert_eq!(
        metric(
            &text,
            &format!("usm_http_request_duration_seconds_count{missed}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            &format!("usm_http_request_duration_seconds_sum{missed}")
        )
        .unwrap()
            > 0.0
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("usm_outbox_lag{consumer=\"search\"}")),
        "{text}"
    );
    // The one create was committed (and flushed: acks are durable).
    assert!(metric(&text, "usm_store_commit_duration_seconds_count").unwrap() >= 1.0);
    assert!(metric(&text, "usm_store_flush_duration_seconds_count").unwrap() >= 1.0);
    assert!(metric(&text, "usm_store_writes_per_flush_sum").unwrap() >= 1.0);
    assert!(metric(&text, "usm_store_writes_per_transaction_sum").unwrap() >= 1.0);
    assert!(metric(&text, "usm_pipeline_steps").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_openness_is_configurable() {
    let server = TestServer::start_with(|config| {
        config.public_health = false;
        config.public_metrics = true;
    })
    .unwrap();
    let health = server
        .call_as(None, Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(health.status, StatusCode::UNAUTHORIZED);
    let health = server
        .call_as(Some(ADMIN_TOKEN), Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(health.status, StatusCode::OK);
    let (status, text) = metrics_text(&server, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("# TYPE usm_http_requests counter"), "{text}");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends so: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_tells_the_caller_its_rate_limit_budget() {
    let server = TestServer::start_with(|config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 3;
    })
    .unwrap();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = server.get("/api/v1/kinds").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("ratelimit-limit"), Some("3"));
        assert!(
            reply
                .header("ratelimit-reset")
                .is_some_and(|r| r.parse::<u64>().unwrap() >= 1)
        );
        remaining.push(
            reply
                .header("ratelimit-remaining")
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    // Strictly falling: nothing refills a whole request in the few milliseconds between calls.
    assert!(remaining.windows(2).all(|w| w[1] < w[0]), "{remaining:?}");
    let refused = server.get("/api/v1/kinds").await.unwrap();
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert!(refused.header("retry-after").is_some());
}
