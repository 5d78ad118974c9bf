//! Every route the server describes in its own `/openapi.json`: a route added to the API is
//! covered here without anyone remembering to add it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::TestServer;

/// Routes any authenticated role may call; every other `/api/v1` route is for admins only. A new
/// route is therefore admin-only in this test until someone decides otherwise here.
const NOT_ADMIN_ONLY: &[(&str, &str)] = &[
    ("GET", "/api/v1/records"),
    ("POST", "/api/v1/records"),
    ("POST", "/api/v1/records:batch"),
    ("GET", "/api/v1/records/{id}"),
    ("PATCH", "/api/v1/records/{id}"),
    ("POST", "/api/v1/records/{id}/transitions"),
    ("GET", "/api/v1/records/{id}/history"),
    ("GET", "/api/v1/records/{id}/sla"),
    ("GET", "/api/v1/records/{id}/approvals"),
    ("POST", "/api/v1/records/{id}/approvals"),
    ("POST", "/api/v1/records/{id}/confirmation"),
    ("POST", "/api/v1/records/{id}/comments"),
    ("GET", "/api/v1/records/{id}/comments"),
    ("POST", "/api/v1/records/{id}/attachments"),
    ("GET", "/api/v1/records/{id}/attachments"),
    ("GET", "/api/v1/records/{id}/attachments/{attachment}"),
    ("DELETE", "/api/v1/records/{id}/attachments/{attachment}"),
    ("GET", "/api/v1/pipelines"),
    ("GET", "/api/v1/kinds"),
    ("GET", "/api/v1/kpis"),
    ("GET", "/api/v1/workflows"),
    ("GET", "/api/v1/workflows/{slug}"),
    // Agents read the directory.
    ("GET", "/api/v1/people"),
    ("GET", "/api/v1/people/{id}"),
    ("GET", "/api/v1/groups"),
    ("GET", "/api/v1/groups/{id}"),
    // Everyone searches what they may see; agents keep queues (requesters get 403 there).
    ("GET", "/api/v1/search"),
    ("POST", "/api/v1/queues"),
    ("GET", "/api/v1/queues"),
    ("GET", "/api/v1/queues/{id}"),
    ("DELETE", "/api/v1/queues/{id}"),
    ("GET", "/api/v1/queues/{id}/records"),
    // An MTA's automation token hands over mail (others get 403 there).
    ("POST", "/api/v1/inbound/email"),
    // Everyone sees and orders the catalog of their domains; admins keep it.
    ("GET", "/api/v1/catalog/items"),
    ("GET", "/api/v1/catalog/items/{id}"),
    ("POST", "/api/v1/catalog/items/{id}/order"),
];

/// Every (method, path template) of the served API description, with the path's parameters
/// filled with a value that exists where it matters (INC-1).
async fn described_routes(server: &TestServer) -> Vec<(Method, String, String)> {
    let reply = server
        .call_as(None, Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the description is public");
    let mut routes = Vec::new();
    for (template, item) in reply.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let path = template
                .replace("{id}", "INC-1")
                .replace("{slug}", "none")
                .replace("{event}", "1")
                .replace("{attachment}", "1")
                .replace("{domain}", "it")
                .replace("{name}", "created");
            assert!(
                !path.contains('{'),
                "a parameter this test cannot fill: {template}"
            );
            routes.push((
                method.to_uppercase().parse().unwrap(),
                template.clone(),
                path,
            ));
        }
    }
    assert!(routes.len() >= 30, "{} routes described", routes.len());
    routes
}

#[tokio::test(flavor = "multi_thread")]
async fn every_described_route_needs_a_valid_token() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    let mut checked = 0;
    for (method, template, path) in described_routes(&server).await {
        if !template.starts_with("/api/") {
            continue; // /healthz: open by default, see `health_and_metrics_openness_is_configurable`
        }
        for token in [None, Some("usm_not_a_real_token_000000000000000000")] {
            let reply = server
                .call_as(token, method.clone(), &path, Some(&json!({})))
                .await
                .unwrap();
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}: {}",
                reply.body
            );
            assert_eq!(reply.body["code"], "unauthorized");
            assert!(
                reply
                    .header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{method} {path}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 30, "{checked} routes checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_stops_working_at_its_expiry() {
    let server = TestServer::start().unwrap();
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500);
    let created = server
        .post(
            "/api/v1/tokens",
            &json!({"name": "brief", "roles": ["agent"], "expires_at": expires_at}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["token"].as_str().unwrap().to_owned();
    let call = || server.call_as(Some(&secret), Method::GET, "/api/v1/records", None);
    assert_eq!(call().await.unwrap().status, StatusCode::OK, "valid before");
    // Wait for the moment itself, not for a guessed duration.
    while jiff::Timestamp::now() <= expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = call().await.unwrap();
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
    assert_eq!(after.body["code"], "unauthorized");
    assert!(
        after.body["detail"].as_str().unwrap().contains("expired"),
        "{}",
        after.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_refuses_other_roles() {
    let server = TestServer::start().unwrap();
    server
        .create(json!({"kind": "incident", "title": "x"}))
        .await
        .unwrap();
    let mut non_admins = Vec::new();
    for role in ["agent", "requester", "automation"] {
        non_admins.push((role, server.token(role, &[role], None).await.unwrap()));
    }
    let audit_before = server.get("/api/v1/audit").await.unwrap().body["entries"]
        .as_array()
        .unwrap()
        .len();
    let mut admin_only = 0;
    for (method, template, path) in described_routes(&server).await {
        let open = NOT_ADMIN_ONLY
            .iter()
            .any(|(m, p)| *m == method.as_str() && *p == template);
        if !template.starts_with("/api/") || open {
            continue;
        }
        admin_only += 1;
        for (role, token) in &non_admins {
            let reply = server
                .call_as(Some(token), method.clone(), &path, Some(&json!({})))
                .await
                .unwrap();
            assert_eq!(
                reply.status,
                StatusCode::FORBIDDEN,
                "{method} {path} as {role}: {}",
                reply.body
            );
            assert_eq!(reply.body["code"], "forbidden", "{method} {path}");
        }
    }
    // Tokens, audit, modules, workflow import, webhooks and automations, at the time of writing.
    assert!(admin_only >= 20, "{admin_only} admin routes checked");
    let audit_after = server.get("/api/v1/audit").await.unwrap().body["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        audit_after, audit_before,
        "no refused call changed anything"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_description_is_public_under_both_paths() {
    let server = TestServer::start().unwrap();
    for path in ["/openapi.json", "/api/v1/openapi.json"] {
        let reply = server.call_as(None, Method::GET, path, None).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(reply.body["paths"]["/api/v1/records"].is_object(), "{path}");
    }
    // It describes routes, never data: nothing of a record shows in it.
    server
        .create(json!({"kind": "incident", "title": "Secret outage at the vault"}))
        .await
        .unwrap();
    let text: Value = server
        .call_as(None, Method::GET, "/openapi.json", None)
        .await
        .unwrap()
        .body;
    assert!(!text.to_string().contains("Secret outage"));
}
