//! People and groups over HTTP (issue 11, first part): who may manage and read them, the tokens
//! that act as a person, and assignments that must name a group of the record's domain and one
//! of its active members.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

fn assert_problem(reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (status, &json!(code)),
        "{}",
        reply.body
    );
    if let Some(field) = field {
        assert_eq!(reply.body["field"], field, "{}", reply.body);
    }
}

async fn person(server: &TestServer, id: &str, domains: Option<&[&str]>) -> Value {
    let mut body =
        json!({"id": id, "name": format!("{id} Lee"), "email": format!("{id}@example.org")});
    if let Some(domains) = domains {
        body["domains"] = json!(domains);
    }
    let reply = server.post("/api/v1/people", &body).await.unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_of_a_domain_manage_its_people_and_agents_read_them() {
    let server = TestServer::start().unwrap();
    let hana = server
        .token("hana", &["admin"], Some(&["hr"]))
        .await
        .unwrap();
    let ivy = server
        .token("ivy", &["agent"], Some(&["it"]))
        .await
        .unwrap();
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    let ann = person(&server, "ann", Some(&["it"])).await;
    assert_eq!(ann["active"], true);

    // A domain admin adds people of its domain only.
    let foreign = server
        .act(
            &hana,
            Method::POST,
            "/api/v1/people",
            Some(json!({"id": "ivo", "name": "Ivo", "domains": ["it"]})),
        )
        .await;
    assert_problem(&foreign, StatusCode::FORBIDDEN, "forbidden", None);
    let hal = server
        .act(
            &hana,
            Method::POST,
            "/api/v1/people",
            Some(json!({"id": "hal", "name": "Hal", "domains": ["hr"], "manager": "ann"})),
        )
        .await;
    assert_eq!(hal.status, StatusCode::CREATED, "{}", hal.body);

    // Bad input: nothing is written.
    for (body, status, code, field) in [
        (
            json!({"id": "Ann Lee", "name": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "/id",
        ),
        (
            json!({"id": "x1", "name": "x", "email": "not an address"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "/email",
        ),
        (
            json!({"id": "x1", "name": "x", "manager": "nobody"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            "/manager",
        ),
        (
            json!({"id": "x1", "name": "x", "domains": ["mars"]}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "/domains/0",
        ),
        (
            json!({"id": "ann", "name": "again"}),
            StatusCode::CONFLICT,
            "directory_id_taken",
            "/id",
        ),
        // A token already acts as `ivy`: a person may not take the name.
        (
            json!({"id": "ivy", "name": "Ivy"}),
            StatusCode::CONFLICT,
            "directory_id_taken",
            "/id",
        ),
    ] {
        let reply = server.post("/api/v1/people", &body).await.unwrap();
        assert_problem(&reply, status, code, Some(field));
    }
    assert_eq!(
        server.get("/api/v1/people/x1").await.unwrap().status,
        StatusCode::NOT_FOUND
    );

    // Agents read the people of their domains; requesters do not read the directory.
    let listed = server.act(&ivy, Method::GET, "/api/v1/people", None).await;
    let ids: Vec<&str> = listed.body["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ann"], "{}", listed.body);
    let hidden = server
        .act(&ivy, Method::GET, "/api/v1/people/hal", None)
        .await;
    assert_problem(&hidden, StatusCode::NOT_FOUND, "person_not_found", None);
    let by_requester = server.act(&rob, Method::GET, "/api/v1/people", None).await;
    assert_problem(&by_requester, StatusCode::FORBIDDEN, "forbidden", None);
    let changed_by_agent = server
        .act(
            &ivy,
            Method::PATCH,
            "/api/v1/people/ann",
            Some(json!({"vip": true})),
        )
        .await;
    assert_problem(&changed_by_agent, StatusCode::FORBIDDEN, "forbidden", None);

    // Changes and deactivation are audited.
    let vip = server
        .patch("/api/v1/people/ann", &json!({"vip": true}))
        .await
        .unwrap();
    assert_eq!(vip.body["vip"], true, "{}", vip.body);
    let gone = server
        .call(Method::DELETE, "/api/v1/people/ann", None, &[])
        .await
        .unwrap();
    assert_eq!(
        (gone.status, &gone.body["active"]),
        (StatusCode::OK, &json!(false)),
        "{}",
        gone.body
    );
    let audit = server.get("/api/v1/audit").await.unwrap().body;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["person.create", "person.update", "person.deactivate"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_hold_active_people_of_their_domain() {
    let server = TestServer::start().unwrap();
    let hana = server
        .token("hana", &["admin"], Some(&["hr"]))
        .await
        .unwrap();
    person(&server, "ann", Some(&["it"])).await;
    person(&server, "hal", Some(&["hr"])).await;
    person(&server, "old", None).await;
    server
        .call(Method::DELETE, "/api/v1/people/old", None, &[])
        .await
        .unwrap();
    let group = |members: Value| json!({"id": "network", "name": "Network", "domain": "it", "members": members});
    for (members, field) in [
        (json!(["ann", "hal"]), "/members/1"),
        (json!(["zed"]), "/members/0"),
        (json!(["old"]), "/members/0"),
    ] {
        let reply = server
            .post("/api/v1/groups", &group(members))
            .await
            .unwrap();
        assert_problem(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            Some(field),
        );
    }
    let by_hr_admin = server
        .act(
            &hana,
            Method::POST,
            "/api/v1/groups",
            Some(group(json!(["ann"]))),
        )
        .await;
    assert_problem(&by_hr_admin, StatusCode::FORBIDDEN, "forbidden", None);
    let made = server
        .post("/api/v1/groups", &group(json!(["ann"])))
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let in_it = server.get("/api/v1/groups?domain=it").await.unwrap().body;
    assert_eq!(in_it["groups"][0]["members"], json!(["ann"]), "{in_it}");
    let in_hr = server.act(&hana, Method::GET, "/api/v1/groups", None).await;
    assert_eq!(
        in_hr.body["groups"],
        json!([]),
        "an hr admin sees no it group: {}",
        in_hr.body
    );
    let removed = server
        .call(Method::DELETE, "/api/v1/groups/network", None, &[])
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    assert_problem(
        &server.get("/api/v1/groups/network").await.unwrap(),
        StatusCode::NOT_FOUND,
        "group_not_found",
        None,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persons_tokens_act_as_the_person_until_they_are_deactivated() {
    let server = TestServer::start().unwrap();
    person(&server, "ann", Some(&["it"])).await;
    let mint = |name: &str, extra: Value| {
        let mut body = json!({"name": name, "roles": ["agent"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let laptop = server
        .post(
            "/api/v1/tokens",
            &mint("ann-laptop", json!({"person": "ann"})),
        )
        .await
        .unwrap();
    assert_eq!(laptop.status, StatusCode::CREATED, "{}", laptop.body);
    assert_eq!(
        laptop.body["domains"],
        json!(["it"]),
        "a person's token works in the person's domains"
    );
    let phone = server
        .post(
            "/api/v1/tokens",
            &mint("ann-phone", json!({"person": "ann"})),
        )
        .await
        .unwrap();
    for token in [&laptop, &phone] {
        let secret = token.body["token"].as_str().unwrap();
        let created = server
            .act(
                secret,
                Method::POST,
                "/api/v1/records",
                Some(json!({"kind": "task", "title": "t"})),
            )
            .await;
        assert_eq!(created.body["created_by"], "ann", "{}", created.body);
    }
    for (body, status, code, field) in [
        (
            mint("x", json!({"person": "nobody"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            "/person",
        ),
        (
            mint("x", json!({"person": "ann", "domains": ["hr"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            "/domains",
        ),
        // Without a person, a token may not act under a person's id.
        (
            mint("ann", json!({})),
            StatusCode::CONFLICT,
            "token_name_taken",
            "/name",
        ),
    ] {
        let reply = server.post("/api/v1/tokens", &body).await.unwrap();
        assert_problem(&reply, status, code, Some(field));
    }
    server
        .call(Method::DELETE, "/api/v1/people/ann", None, &[])
        .await
        .unwrap();
    let secret = laptop.body["token"].as_str().unwrap();
    let refused = server
        .act(secret, Method::GET, "/api/v1/records", None)
        .await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "unauthorized", None);
    // History keeps naming her.
    let task = server.get("/api/v1/records/TSK-1").await.unwrap().body;
    assert_eq!(task["created_by"], "ann");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_names_a_group_of_the_domain_and_one_of_its_active_members() {
    let server = TestServer::start().unwrap();
    for (id, domains) in [
        ("ann", Some(&["it"][..])),
        ("bo", Some(&["it"][..])),
        ("hal", Some(&["hr"][..])),
    ] {
        person(&server, id, domains).await;
    }
    let made = server
        .post(
            "/api/v1/groups",
            &json!({"id": "network", "name": "Network", "domain": "it", "members": ["ann"]}),
        )
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED);
    let hr_group = server
        .post(
            "/api/v1/groups",
            &json!({"id": "people-ops", "name": "People ops", "domain": "hr"}),
        )
        .await
        .unwrap();
    assert_eq!(hr_group.status, StatusCode::CREATED);
    for (fields, field) in [
        (
            json!({"assignment_group": "nowhere"}),
            "/fields/assignment_group",
        ),
        (
            json!({"assignment_group": "people-ops"}),
            "/fields/assignment_group",
        ),
        (
            json!({"assignment_group": "network", "assignee": "bo"}),
            "/fields/assignee",
        ),
        (json!({"assignee": "hal"}), "/fields/assignee"),
        (json!({"assignee": "zed"}), "/fields/assignee"),
    ] {
        let reply = server
            .post(
                "/api/v1/records",
                &json!({"kind": "incident", "domain": "it", "title": "x", "fields": fields}),
            )
            .await
            .unwrap();
        assert_problem(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            Some(field),
        );
    }
    let assigned = server
        .create(json!({"kind": "incident", "domain": "it", "title": "x", "fields": {"assignment_group": "network", "assignee": "ann"}}))
        .await
        .unwrap();
    let id = assigned["id"].as_str().unwrap();
    let reassigned = server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"assignee": "bo"}}),
        )
        .await
        .unwrap();
    assert_problem(
        &reassigned,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_reference",
        Some("/fields/assignee"),
    );
    server
        .patch("/api/v1/groups/network", &json!({"members": ["ann", "bo"]}))
        .await
        .unwrap();
    let reassigned = server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"assignee": "bo"}}),
        )
        .await
        .unwrap();
    assert_eq!(reassigned.status, StatusCode::OK, "{}", reassigned.body);
    // Deactivating bo leaves the record as it is; it can no longer be handed to him.
    server
        .call(Method::DELETE, "/api/v1/people/bo", None, &[])
        .await
        .unwrap();
    let untouched = server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"title": "renamed"}),
        )
        .await
        .unwrap();
    assert_eq!(untouched.status, StatusCode::OK, "{}", untouched.body);
    let other = server
        .post(
            "/api/v1/records",
            &json!({"kind": "task", "domain": "it", "title": "x", "fields": {"assignee": "bo"}}),
        )
        .await
        .unwrap();
    assert_problem(
        &other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_reference",
        Some("/fields/assignee"),
    );
}
