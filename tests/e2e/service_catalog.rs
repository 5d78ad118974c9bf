//! The service catalog over HTTP (issue 12): items kept by domain admins and shipped by modules,
//! orders checked against the item's form, approved by the manager or a group the item names,
//! fulfilled by tasks created in their order and domains, and rejected with a reason.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

/// A person of the directory in `domains`, with a token of `role`; returns the token.
async fn person(
    server: &TestServer,
    id: &str,
    role: &str,
    manager: Option<&str>,
    domains: &[&str],
) -> String {
    let mut body = json!({"id": id, "name": format!("{id} Lee"),
                          "email": format!("{id}@example.org"), "domains": domains});
    if let Some(manager) = manager {
        body["manager"] = json!(manager);
    }
    server.person_with_token(body, role).await
}

async fn group(server: &TestServer, id: &str, domain: &str, members: &[&str]) {
    let made = server
        .post(
            "/api/v1/groups",
            &json!({"id": id, "name": id, "domain": domain, "members": members}),
        )
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
}

fn laptop(approval: &str) -> Value {
    json!({
        "id": "laptop", "domain": "it", "name": "A laptop",
        "description": "A laptop of one of two sizes",
        "form": {"type": "object", "required": ["model"], "additionalProperties": false,
                 "properties": {"model": {"type": "string", "enum": ["13-inch", "15-inch"], "title": "Size"}}},
        "approval": {"by": approval},
        "fulfilment": [
            {"title": "Order a {{ variables.model }} laptop", "domain": "it", "group": "it-workplace"},
            {"title": "Hand the laptop to {{ requester }}", "domain": "it", "group": "it-workplace",
             "after": ["Order a {{ variables.model }} laptop"]}
        ]
    })
}

async fn order(server: &TestServer, token: &str, item: &str, body: Value) -> Reply {
    server
        .act(
            token,
            Method::POST,
            &format!("/api/v1/catalog/items/{item}/order"),
            Some(body),
        )
        .await
}

/// The tasks fulfilling `request`, oldest first, once every outbox worker has caught up.
async fn tasks_of(server: &TestServer, request: &str) -> Vec<Value> {
    server.settle().await.unwrap();
    server
        .list_all("kind=task")
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t["links"] == json!([{"rel": "parent", "to": request}]))
        .collect()
}

async fn state_of(server: &TestServer, id: &str) -> String {
    server.settle().await.unwrap();
    let record = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    record.body["state"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_is_approved_by_the_manager_and_fulfilled_task_after_task() {
    let server = TestServer::start().unwrap();
    // The manager is a requester: approving needs no desk role, only being the approver named.
    let mia = person(&server, "mia", "requester", None, &["it"]).await;
    let rob = person(&server, "rob", "requester", Some("mia"), &["it"]).await;
    let ann = person(&server, "ann", "agent", None, &["it"]).await;
    group(&server, "it-workplace", "it", &["ann"]).await;
    let made = server
        .post("/api/v1/catalog/items", &laptop("manager"))
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);

    // Variables are checked against the form, each violation named under /variables.
    let wrong = order(
        &server,
        &rob,
        "laptop",
        json!({"variables": {"model": "17-inch"}}),
    )
    .await;
    assert_eq!(
        wrong.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        wrong.body
    );
    assert_eq!(wrong.body["code"], "invalid_fields", "{}", wrong.body);
    assert_eq!(wrong.body["field"], "/variables/model", "{}", wrong.body);
    let missing = order(&server, &rob, "laptop", json!({"variables": {}})).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.body["field"], "/variables", "{}", missing.body);
    assert!(server.list_all("kind=request").await.unwrap().is_empty());

    let ordered = order(
        &server,
        &rob,
        "laptop",
        json!({"variables": {"model": "13-inch"}}),
    )
    .await;
    assert_eq!(ordered.status, StatusCode::CREATED, "{}", ordered.body);
    let id = ordered.body["id"].as_str().unwrap().to_owned();
    assert_eq!(ordered.headers["location"], format!("/api/v1/records/{id}"));
    assert_eq!(ordered.body["kind"], "request");
    assert_eq!(ordered.body["title"], "A laptop");
    assert_eq!(ordered.body["created_by"], "rob");
    assert_eq!(ordered.body["fields"]["catalog_item"], "laptop");
    assert_eq!(ordered.body["fields"]["approvers"], json!(["mia"]));
    assert_eq!(
        ordered.body["fields"]["fulfilment"],
        json!([
            {"title": "Order a 13-inch laptop", "domain": "it", "group": "it-workplace", "after": []},
            {"title": "Hand the laptop to rob", "domain": "it", "group": "it-workplace", "after": [0]}
        ])
    );
    // Nothing happens before the approval.
    assert_eq!(state_of(&server, &id).await, "new");
    assert!(tasks_of(&server, &id).await.is_empty());

    // Only the approver decides: not the requester, not another agent.
    let approve = |token: String| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .act(
                    &token,
                    Method::POST,
                    &format!("/api/v1/records/{id}/approvals"),
                    Some(json!({"decision": "approve", "comment": "fine"})),
                )
                .await
        }
    };
    for (who, token) in [("requester", rob.clone()), ("agent", ann.clone())] {
        let refused = approve(token).await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{who}: {}",
            refused.body
        );
    }
    // The manager sees the order they decide on, though it is not theirs.
    let seen = server
        .act(&mia, Method::GET, &format!("/api/v1/records/{id}"), None)
        .await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    let approved = approve(mia.clone()).await;
    assert_eq!(approved.status, StatusCode::CREATED, "{}", approved.body);

    // The first task only: the second waits for it.
    assert_eq!(state_of(&server, &id).await, "in_progress");
    let tasks = tasks_of(&server, &id).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["title"], "Order a 13-inch laptop");
    assert_eq!(tasks[0]["domain"], "it");
    assert_eq!(tasks[0]["fields"]["assignment_group"], "it-workplace");
    assert_eq!(tasks[0]["fields"]["catalog_step"], 0);
    server
        .transition(tasks[0]["id"].as_str().unwrap(), "done")
        .await
        .unwrap();

    let tasks = tasks_of(&server, &id).await;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert_eq!(tasks[1]["title"], "Hand the laptop to rob");
    assert_eq!(state_of(&server, &id).await, "in_progress");
    server
        .transition(tasks[1]["id"].as_str().unwrap(), "done")
        .await
        .unwrap();
    assert_eq!(state_of(&server, &id).await, "fulfilled");
    assert_eq!(tasks_of(&server, &id).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_cancels_the_order_with_the_reason_and_creates_no_task() {
    let server = TestServer::start().unwrap();
    let rob = person(&server, "rob", "requester", None, &["it"]).await;
    let cy = person(&server, "cy", "agent", None, &["it"]).await;
    group(&server, "it-workplace", "it", &[]).await;
    group(&server, "budget-holders", "it", &["cy", "rob"]).await;
    let made = server
        .post("/api/v1/catalog/items", &laptop("group:budget-holders"))
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let ordered = order(
        &server,
        &rob,
        "laptop",
        json!({"variables": {"model": "15-inch"}}),
    )
    .await;
    assert_eq!(ordered.status, StatusCode::CREATED, "{}", ordered.body);
    let id = ordered.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ordered.body["fields"]["approvers"],
        json!(["group:budget-holders"])
    );
    let decide = |token: String| {
        let (server, path) = (&server, format!("/api/v1/records/{id}/approvals"));
        async move {
            server
                .act(
                    &token,
                    Method::POST,
                    &path,
                    Some(json!({"decision": "reject", "comment": "No budget left this quarter"})),
                )
                .await
        }
    };
    // A member of the group who asked for it does not decide on it.
    let own = decide(rob.clone()).await;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{}", own.body);
    let rejected = decide(cy.clone()).await;
    assert_eq!(rejected.status, StatusCode::CREATED, "{}", rejected.body);

    assert_eq!(state_of(&server, &id).await, "cancelled");
    assert!(tasks_of(&server, &id).await.is_empty());
    let history = server
        .get(&format!("/api/v1/records/{id}/history"))
        .await
        .unwrap();
    let last = history.body["entries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["actor"], "catalog", "{last}");
    assert_eq!(
        last["comment"], "Rejected by cy: No budget left this quarter",
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn items_are_kept_by_their_domains_admins_and_checked_whole() {
    let server = TestServer::start().unwrap();
    let rob = person(&server, "rob", "requester", None, &["it"]).await;
    let ann = person(&server, "ann", "agent", None, &["it"]).await;
    let hr_admin = server
        .token("hr-admin", &["admin"], Some(&["hr"]))
        .await
        .unwrap();

    // Each broken part is named.
    let broken = [
        (
            "/fulfilment/1/after",
            json!({"fulfilment": [
            {"title": "a", "domain": "it"}, {"title": "b", "domain": "it", "after": ["c"]}]}),
        ),
        (
            "/fulfilment/0/domain",
            json!({"fulfilment": [{"title": "a", "domain": "nowhere"}]}),
        ),
        (
            "/fulfilment/0/title",
            json!({"fulfilment": [{"title": "{{ unclosed", "domain": "it"}]}),
        ),
        ("/form", json!({"form": {"type": "array"}})),
        ("/domain", json!({"domain": "nowhere"})),
        ("/id", json!({"id": "Has Spaces"})),
    ];
    for (field, change) in broken {
        let mut item = laptop("none");
        for (key, value) in change.as_object().unwrap() {
            item[key] = value.clone();
        }
        let refused = server.post("/api/v1/catalog/items", &item).await.unwrap();
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {}",
            refused.body
        );
        assert_eq!(refused.body["code"], "catalog_item_invalid");
        assert_eq!(refused.body["field"], field, "{}", refused.body);
    }
    // An admin of another domain does not add to this one; a requester adds nothing.
    for token in [&hr_admin, &rob] {
        let refused = server
            .act(
                token,
                Method::POST,
                "/api/v1/catalog/items",
                Some(laptop("none")),
            )
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    }
    let made = server
        .post("/api/v1/catalog/items", &laptop("manager"))
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let again = server
        .post("/api/v1/catalog/items", &laptop("none"))
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["code"], "catalog_item_exists");

    // Requesters of the domain see it; no one else does.
    let listed = server
        .act(&rob, Method::GET, "/api/v1/catalog/items?domain=it", None)
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["items"][0]["id"], "laptop");
    let elsewhere = server
        .act(&hr_admin, Method::GET, "/api/v1/catalog/items/laptop", None)
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(elsewhere.body["code"], "catalog_item_not_found");

    // No manager to approve: the order is refused before anything is written.
    let unavailable = order(
        &server,
        &rob,
        "laptop",
        json!({"variables": {"model": "13-inch"}}),
    )
    .await;
    assert_eq!(
        unavailable.status,
        StatusCode::CONFLICT,
        "{}",
        unavailable.body
    );
    assert_eq!(unavailable.body["code"], "catalog_item_unavailable");
    // And a fulfilment group that does not exist is named the same way.
    let patched = server
        .patch(
            "/api/v1/catalog/items/laptop",
            &json!({"approval": {"by": "none"}, "name": "A laptop, any size"}),
        )
        .await
        .unwrap();
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["name"], "A laptop, any size");
    let no_group = order(
        &server,
        &rob,
        "laptop",
        json!({"variables": {"model": "13-inch"}}),
    )
    .await;
    assert_eq!(no_group.status, StatusCode::CONFLICT, "{}", no_group.body);
    assert!(
        no_group.body["detail"]
            .as_str()
            .unwrap()
            .contains("it-workplace")
    );
    group(&server, "it-workplace", "it", &[]).await;

    // A requester orders for themself only; an agent orders for someone, who then owns it.
    let for_other = order(
        &server,
        &rob,
        "laptop",
        json!({"variables": {"model": "13-inch"}, "on_behalf_of": "ann"}),
    )
    .await;
    assert_eq!(
        for_other.status,
        StatusCode::FORBIDDEN,
        "{}",
        for_other.body
    );
    let unknown = order(
        &server,
        &ann,
        "laptop",
        json!({"variables": {"model": "13-inch"}, "on_behalf_of": "nobody"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.body["field"], "/on_behalf_of");
    let for_rob = order(
        &server,
        &ann,
        "laptop",
        json!({"variables": {"model": "13-inch"}, "on_behalf_of": "rob"}),
    )
    .await;
    assert_eq!(for_rob.status, StatusCode::CREATED, "{}", for_rob.body);
    assert_eq!(for_rob.body["fields"]["requester"], "rob");
    let id = for_rob.body["id"].as_str().unwrap();
    let robs = server
        .act(&rob, Method::GET, &format!("/api/v1/records/{id}"), None)
        .await;
    assert_eq!(robs.status, StatusCode::OK);

    // The catalog's fields are not a client's to write: no order is forged past its approval.
    let forged = server
        .act(
            &ann,
            Method::POST,
            "/api/v1/records",
            Some(json!({
            "kind": "request", "domain": "it", "title": "A laptop",
            "fields": {"catalog_item": "laptop", "fulfilment": [{"title": "x", "domain": "it"}]}})),
        )
        .await;
    assert_eq!(
        forged.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        forged.body
    );
    assert_eq!(forged.body["code"], "field_not_writable", "{}", forged.body);

    // A retried order is the same request; the same key with other answers is refused.
    let keyed = |model: &str| {
        let body = json!({"variables": {"model": model}});
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    "/api/v1/catalog/items/laptop/order",
                    Some(&body),
                    &[("Idempotency-Key", "order-7")],
                )
                .await
                .unwrap()
        }
    };
    let first = keyed("13-inch").await;
    let replay = keyed("13-inch").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let other = keyed("15-inch").await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    assert_eq!(other.body["code"], "idempotency_key_reused");

    // Changed items keep their id and domain; removed ones are gone, their orders stay.
    let renamed = server
        .patch("/api/v1/catalog/items/laptop", &json!({"id": "other"}))
        .await
        .unwrap();
    assert_eq!(renamed.status, StatusCode::BAD_REQUEST, "{}", renamed.body);
    let removed = server
        .call(Method::DELETE, "/api/v1/catalog/items/laptop", None, &[])
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let gone = server.get("/api/v1/catalog/items/laptop").await.unwrap();
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(server.list_all("kind=request").await.unwrap().len(), 2);
    let audit = server.get("/api/v1/audit").await.unwrap();
    let actions: Vec<&str> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("catalog."))
        .collect();
    assert_eq!(
        actions,
        [
            "catalog.item.create",
            "catalog.item.update",
            "catalog.item.delete"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bundled_items_are_offered_where_their_modules_are_enabled_and_order_end_to_end() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();
    let items = server.get("/api/v1/catalog/items").await.unwrap();
    let ids: Vec<&str> = items.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["facilities.desk-move", "hr.onboarding", "it.access-request"]
    );
    let changed = server
        .patch(
            "/api/v1/catalog/items/hr.onboarding",
            &json!({"name": "Mine now"}),
        )
        .await
        .unwrap();
    assert_eq!(changed.status, StatusCode::CONFLICT);
    assert_eq!(changed.body["code"], "catalog_item_read_only");

    // HR onboarding: three tasks at once in two domains; the laptop once the accounts exist.
    let ordered = server
        .post(
            "/api/v1/catalog/items/hr.onboarding/order",
            &json!({"variables": {"employee": "Dana Kim", "start_date": "2027-01-04"}}),
        )
        .await
        .unwrap();
    assert_eq!(ordered.status, StatusCode::CREATED, "{}", ordered.body);
    let id = ordered.body["id"].as_str().unwrap().to_owned();
    assert_eq!(ordered.body["domain"], "hr");
    let tasks = tasks_of(&server, &id).await;
    let mut placed: Vec<(String, String, String)> = tasks
        .iter()
        .map(|t| {
            (
                t["domain"].as_str().unwrap().to_owned(),
                t["fields"]["assignment_group"].as_str().unwrap().to_owned(),
                t["title"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            (
                "facilities",
                "facilities-security",
                "Issue a badge to Dana Kim"
            ),
            (
                "facilities",
                "facilities-workplace",
                "Assign a desk to Dana Kim"
            ),
            ("it", "it-identity", "Create accounts for Dana Kim"),
        ]
        .map(|(d, g, t)| (d.to_owned(), g.to_owned(), t.to_owned()))
    );
    // A cancelled task is finished too: the laptop follows the accounts either way.
    for task in &tasks {
        let to = if task["title"] == "Create accounts for Dana Kim" {
            "cancelled"
        } else {
            "done"
        };
        server
            .transition(task["id"].as_str().unwrap(), to)
            .await
            .unwrap();
    }
    let tasks = tasks_of(&server, &id).await;
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks[3]["title"], "Prepare a laptop for Dana Kim");
    assert_eq!(tasks[3]["fields"]["assignment_group"], "it-workplace");
    assert_eq!(state_of(&server, &id).await, "in_progress");
    server
        .transition(tasks[3]["id"].as_str().unwrap(), "done")
        .await
        .unwrap();
    assert_eq!(state_of(&server, &id).await, "fulfilled");
    let closed = server
        .post(
            &format!("/api/v1/records/{id}/transitions"),
            &json!({"to": "closed"}),
        )
        .await
        .unwrap();
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);

    // IT access: the requester's manager approves, identity and access management grants it.
    let mia = person(&server, "mia", "agent", None, &["it"]).await;
    let rob = person(&server, "rob", "requester", Some("mia"), &["it"]).await;
    let asked = order(
        &server,
        &rob,
        "it.access-request",
        json!({"variables": {"system": "payroll", "access": "read", "reason": "audit"}}),
    )
    .await;
    assert_eq!(asked.status, StatusCode::CREATED, "{}", asked.body);
    assert_eq!(asked.body["fields"]["approvers"], json!(["mia"]));
    assert_eq!(
        asked.body["fields"]["fulfilment"][0]["title"],
        "Grant read access to payroll for rob"
    );
    let access = asked.body["id"].as_str().unwrap().to_owned();
    let approved = server
        .act(
            &mia,
            Method::POST,
            &format!("/api/v1/records/{access}/approvals"),
            Some(json!({"decision": "approve"})),
        )
        .await;
    assert_eq!(approved.status, StatusCode::CREATED, "{}", approved.body);
    let tasks = tasks_of(&server, &access).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["fields"]["assignment_group"], "it-identity");
    server
        .transition(tasks[0]["id"].as_str().unwrap(), "done")
        .await
        .unwrap();
    // In `it` ISO/IEC 20000 fulfils no request without its category and resolution: the catalog
    // classifies the order by its item and resolves it in the same write as the move.
    assert_eq!(state_of(&server, &access).await, "fulfilled");
    let fulfilled = server
        .get(&format!("/api/v1/records/{access}"))
        .await
        .unwrap();
    assert_eq!(fulfilled.body["fields"]["category"], "it.access-request");
    assert_eq!(fulfilled.body["fields"]["resolution_code"], "fulfilled");
    assert_eq!(
        fulfilled.body["fields"]["resolution"],
        format!("Fulfilled by {} done", tasks[0]["id"].as_str().unwrap())
    );

    // Desk moves are offered in facilities only.
    let not_here = order(
        &server,
        &rob,
        "facilities.desk-move",
        json!({"variables": {"building": "Lab", "desk": "L-12", "date": "2027-02-01"}}),
    )
    .await;
    assert_eq!(not_here.status, StatusCode::NOT_FOUND, "{}", not_here.body);
}
