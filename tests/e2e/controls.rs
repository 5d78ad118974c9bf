//! Controls that hold against a client writing whatever it likes (issue 10): who may write which
//! field, identities from principals, segregation of duties, approvals bound to content, change
//! models, major incidents, the requester's confirmation, and the engine choosing SLA policies.
//! Each rule is tried on its allowed and its refused path, with the bypasses reported against the
//! earlier server.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

fn bundled() -> TestServer {
    TestServer::start_with(|config| config.bundled_modules = true).unwrap()
}

/// A server with the bundled mix and one token per person: agents ann, bo and cy, the requester
/// rob, and an automation.
struct Desk {
    server: TestServer,
    ann: String,
    bo: String,
    cy: String,
    rob: String,
    bot: String,
}

impl Desk {
    async fn open() -> Self {
        let server = bundled();
        // People, each acting through a token of their own.
        let mut secrets = Vec::new();
        for (id, role) in [
            ("ann", "agent"),
            ("bo", "agent"),
            ("cy", "agent"),
            ("rob", "requester"),
        ] {
            secrets.push(
                server
                    .person_with_token(json!({"id": id, "name": id}), role)
                    .await,
            );
        }
        let [ann, bo, cy, rob] = <[String; 4]>::try_from(secrets).unwrap();
        let bot = server.token("bot", &["automation"], None).await.unwrap();
        Self {
            server,
            ann,
            bo,
            cy,
            rob,
            bot,
        }
    }

    async fn call(&self, who: &str, method: Method, path: &str, body: Option<&Value>) -> Reply {
        self.server
            .call_as(Some(who), method, path, body)
            .await
            .unwrap()
    }

    async fn create(&self, who: &str, body: Value) -> Reply {
        self.call(who, Method::POST, "/api/v1/records", Some(&body))
            .await
    }

    async fn created(&self, who: &str, body: Value) -> Value {
        let reply = self.create(who, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    async fn patch(&self, who: &str, id: &str, fields: Value) -> Reply {
        self.call(
            who,
            Method::PATCH,
            &format!("/api/v1/records/{id}"),
            Some(&json!({ "fields": fields })),
        )
        .await
    }

    async fn move_to(&self, who: &str, id: &str, to: &str) -> Reply {
        self.call(
            who,
            Method::POST,
            &format!("/api/v1/records/{id}/transitions"),
            Some(&json!({ "to": to })),
        )
        .await
    }

    async fn decide(&self, who: &str, id: &str, decision: &str) -> Reply {
        self.call(
            who,
            Method::POST,
            &format!("/api/v1/records/{id}/approvals"),
            Some(&json!({ "decision": decision })),
        )
        .await
    }

    async fn record(&self, id: &str) -> Value {
        self.server
            .get(&format!("/api/v1/records/{id}"))
            .await
            .unwrap()
            .body
    }
}

fn assert_ok(reply: &Reply) {
    assert!(reply.status.is_success(), "{} {}", reply.status, reply.body);
}

fn assert_not_writable(reply: &Reply, field: &str, owner: &str) {
    assert_eq!(
        (
            reply.status,
            &reply.body["code"],
            &reply.body["field"],
            &reply.body["owner"]
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("field_not_writable"),
            &json!(field),
            &json!(owner)
        ),
        "{}",
        reply.body
    );
}

fn assert_rejected(reply: &Reply, module: &str, reason: &str) {
    assert_eq!(
        (reply.status, &reply.body["module"], &reply.body["reason"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!(module),
            &json!(reason)
        ),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requester_sets_what_they_tell_and_nothing_the_desk_decides() {
    let desk = Desk::open().await;
    // The reported bypass: a requester made a P1 major incident by writing both fields.
    let forged = desk
        .create(
            &desk.rob,
            json!({"kind": "incident", "title": "all down", "fields": {"priority": "P1"}}),
        )
        .await;
    assert_not_writable(&forged, "/fields/priority", "module:itil4");
    let declared = desk
        .create(
            &desk.rob,
            json!({"kind": "incident", "title": "all down", "fields": {"major_incident": true}}),
        )
        .await;
    assert_not_writable(&declared, "/fields/major_incident", "agent");
    let assigned = desk
        .create(
            &desk.rob,
            json!({"kind": "incident", "title": "x", "fields": {"assignee": "rob"}}),
        )
        .await;
    assert_not_writable(&assigned, "/fields/assignee", "agent");
    let someone_else = desk
        .create(
            &desk.rob,
            json!({"kind": "incident", "title": "x", "fields": {"requester": "ann"}}),
        )
        .await;
    assert_not_writable(&someone_else, "/fields/requester", "system");
    // The kinds say who writes what, per domain.
    let kinds = desk
        .server
        .get("/api/v1/kinds?domain=it")
        .await
        .unwrap()
        .body;
    let incident = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "incident")
        .unwrap();
    assert_eq!(
        incident["writers"]["priority"], "module:itil4",
        "{incident}"
    );
    assert_eq!(incident["writers"]["impact"], "requester", "{incident}");
    assert_eq!(incident["writers"]["requester"], "system", "{incident}");
    let kinds = desk
        .server
        .get("/api/v1/kinds?domain=facilities")
        .await
        .unwrap()
        .body;
    let incident = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "incident")
        .unwrap();
    assert!(
        incident["writers"].get("priority").is_none(),
        "no itil4 in facilities: {incident}"
    );
    // What a requester tells: the priority follows from it, and P1 suggests a major incident.
    let told = desk
        .created(
            &desk.rob,
            json!({"kind": "incident", "title": "all down",
            "fields": {"impact": "high", "urgency": "high", "description": "nothing works"}}),
        )
        .await;
    assert_eq!(told["fields"]["priority"], "P1", "{told}");
    assert_eq!(told["fields"]["major_incident_suggested"], true, "{told}");
    assert!(told["fields"].get("major_incident").is_none(), "{told}");
    // Agents may not write an owned field either, nor what the engine derives.
    let id = told["id"].as_str().unwrap();
    assert_not_writable(
        &desk.patch(&desk.ann, id, json!({"priority": "P5"})).await,
        "/fields/priority",
        "module:itil4",
    );
    assert_not_writable(
        &desk
            .patch(&desk.ann, id, json!({"cobit_objective": "EDM01"}))
            .await,
        "/fields/cobit_objective",
        "module:cobit2019",
    );
    assert_not_writable(
        &desk
            .patch(&desk.ann, id, json!({"customer_confirmed": true}))
            .await,
        "/fields/customer_confirmed",
        "system",
    );
    // Without urgency there is no priority, whatever was computed before.
    let unrated = desk.patch(&desk.ann, id, json!({"urgency": null})).await;
    assert_ok(&unrated);
    assert!(
        unrated.body["fields"].get("priority").is_none(),
        "{}",
        unrated.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_requester_is_the_creating_principal_or_named_once_by_an_agent() {
    let desk = Desk::open().await;
    let own = desk
        .created(&desk.rob, json!({"kind": "request", "title": "a phone"}))
        .await;
    assert_eq!(own["created_by"], "rob");
    // An agent records a call on rob's behalf: rob follows it as his own.
    let for_rob = desk
        .created(
            &desk.ann,
            json!({"kind": "incident", "title": "rob's printer", "fields": {"requester": "rob"}}),
        )
        .await;
    let id = for_rob["id"].as_str().unwrap();
    let seen = desk
        .call(
            &desk.rob,
            Method::GET,
            &format!("/api/v1/records/{id}"),
            None,
        )
        .await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    // Changed only by an admin of the domain, and history says who.
    assert_not_writable(
        &desk.patch(&desk.ann, id, json!({"requester": "ann"})).await,
        "/fields/requester",
        "system",
    );
    let corrected = desk
        .server
        .patch(
            &format!("/api/v1/records/{id}"),
            &json!({"fields": {"requester": "ann"}}),
        )
        .await
        .unwrap();
    assert_ok(&corrected);
    let history = desk
        .server
        .get(&format!("/api/v1/records/{id}/history"))
        .await
        .unwrap()
        .body;
    let last = history["entries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["actor"], "admin", "{last}");
    assert!(
        last["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "/fields/requester" && c["from"] == "rob" && c["to"] == "ann"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duties_are_segregated_between_principals_not_fields() {
    let desk = Desk::open().await;
    // The reported bypass: ann raised a change naming someone else as requester and implementer,
    // approved it and implemented it.
    let change = desk
        .create(
            &desk.ann,
            json!({"kind": "change", "title": "Upgrade mail", "fields": {
            "change_type": "normal", "requester": "zed", "implementer": "zed",
            "risk": "low", "plan": "p", "backout_plan": "b"}}),
        )
        .await;
    assert_not_writable(&change, "/fields/implementer", "system");
    let change = desk
        .created(&desk.ann, json!({"kind": "change", "title": "Upgrade mail", "fields": {
            "change_type": "normal", "requester": "zed", "risk": "low", "plan": "p", "backout_plan": "b"}}))
        .await;
    let id = change["id"].as_str().unwrap();
    assert_eq!(change["fields"]["cobit_objective"], "BAI06");
    // Neither the named requester's stand-in nor the one who raised it approves it.
    assert_rejected(
        &desk.decide(&desk.ann, id, "approve").await,
        "cobit2019",
        "sod_approver_is_requester",
    );
    assert_ok(&desk.decide(&desk.bo, id, "approve").await);
    // The approver may not be the one who implements it.
    assert_rejected(
        &desk.move_to(&desk.bo, id, "implement").await,
        "cobit2019",
        "sod_implementer_is_approver",
    );
    let implemented = desk.move_to(&desk.cy, id, "implement").await;
    assert_ok(&implemented);
    assert_eq!(
        implemented.body["fields"]["implementer"], "cy",
        "{}",
        implemented.body
    );
    // Automations do not approve.
    let other = desk
        .created(&desk.ann, json!({"kind": "change", "title": "b", "fields": {"risk": "low", "plan": "p", "backout_plan": "b"}}))
        .await;
    let by_bot = desk
        .decide(&desk.bot, other["id"].as_str().unwrap(), "approve")
        .await;
    assert_eq!(
        (by_bot.status, &by_bot.body["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden")),
        "{}",
        by_bot.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_holds_for_the_content_it_approved() {
    let desk = Desk::open().await;
    let change = desk
        .created(
            &desk.ann,
            json!({"kind": "change", "title": "Resize disks", "fields": {
            "risk": "low", "plan": "grow by 10 %", "backout_plan": "restore snapshot"}}),
        )
        .await;
    let id = change["id"].as_str().unwrap();
    assert_ok(&desk.decide(&desk.bo, id, "approve").await);
    // A non-material edit leaves the approval standing.
    assert_ok(&desk.patch(&desk.ann, id, json!({"assignee": "cy"})).await);
    let approvals = desk
        .server
        .get(&format!("/api/v1/records/{id}/approvals"))
        .await
        .unwrap()
        .body;
    assert_eq!(approvals["approvals"][0]["current"], true, "{approvals}");
    // A material edit makes it stale, history says so, and implement needs a new approval.
    let edited = desk
        .patch(&desk.ann, id, json!({"plan": "grow by 400 %"}))
        .await;
    assert_ok(&edited);
    let history = desk
        .server
        .get(&format!("/api/v1/records/{id}/history"))
        .await
        .unwrap()
        .body;
    let last = history["entries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["stale_approvals"], json!([1]), "{last}");
    let approvals = desk
        .server
        .get(&format!("/api/v1/records/{id}/approvals"))
        .await
        .unwrap()
        .body;
    assert_eq!(approvals["approvals"][0]["current"], false, "{approvals}");
    assert_rejected(
        &desk.move_to(&desk.cy, id, "implement").await,
        "itil4",
        "approval_required",
    );
    // The same approver twice is one approver; a second person's approval of the new content
    // carries it.
    assert_ok(&desk.decide(&desk.bo, id, "approve").await);
    assert_ok(&desk.move_to(&desk.cy, id, "implement").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_change_is_answered_by_a_revision() {
    let desk = Desk::open().await;
    let change = desk
        .created(
            &desk.ann,
            json!({"kind": "change", "title": "Open the firewall", "fields": {
            "risk": "high", "plan": "allow any", "backout_plan": "deny any"}}),
        )
        .await;
    let id = change["id"].as_str().unwrap();
    assert_ok(&desk.decide(&desk.bo, id, "reject").await);
    assert_ok(&desk.decide(&desk.cy, id, "approve").await);
    // ann raised it and approved nothing: she may implement, once it is authorised.
    assert_rejected(
        &desk.move_to(&desk.ann, id, "implement").await,
        "itil4",
        "change_rejected",
    );
    assert_ok(
        &desk
            .patch(
                &desk.ann,
                id,
                json!({"plan": "allow port 443 from the office"}),
            )
            .await,
    );
    assert_ok(&desk.decide(&desk.bo, id, "approve").await);
    assert_ok(&desk.move_to(&desk.ann, id, "implement").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_is_ready_before_implement_and_accounted_for_before_close() {
    let desk = Desk::open().await;
    let change = desk
        .created(&desk.ann, json!({"kind": "change", "title": "Swap a switch", "fields": {"risk": "medium", "plan": "swap"}}))
        .await;
    let id = change["id"].as_str().unwrap();
    assert_ok(&desk.decide(&desk.bo, id, "approve").await);
    assert_rejected(
        &desk.move_to(&desk.cy, id, "implement").await,
        "itil4",
        "change_not_ready",
    );
    assert_ok(
        &desk
            .patch(&desk.ann, id, json!({"backout_plan": "swap back"}))
            .await,
    );
    assert_ok(&desk.decide(&desk.bo, id, "approve").await);
    assert_ok(&desk.move_to(&desk.cy, id, "implement").await);
    assert_ok(&desk.move_to(&desk.cy, id, "review").await);
    assert_rejected(
        &desk.move_to(&desk.cy, id, "closed").await,
        "itil4",
        "outcome_required",
    );
    assert_ok(&desk.patch(&desk.cy, id, json!({"outcome": "failed"})).await);
    assert_rejected(
        &desk.move_to(&desk.cy, id, "closed").await,
        "itil4",
        "review_required",
    );
    assert_ok(
        &desk
            .patch(&desk.cy, id, json!({"review": "the spare was faulty"}))
            .await,
    );
    assert_ok(&desk.move_to(&desk.cy, id, "closed").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standard_change_is_pre_authorised_only_by_a_published_model() {
    let desk = Desk::open().await;
    // The reported bypass: `change_type: standard` alone skipped authorisation.
    let bare = desk
        .created(
            &desk.ann,
            json!({"kind": "change", "title": "Add a user", "fields": {"change_type": "standard"}}),
        )
        .await;
    let bare = bare["id"].as_str().unwrap();
    assert_rejected(
        &desk.move_to(&desk.cy, bare, "implement").await,
        "itil4",
        "change_model_required",
    );
    let model = desk
        .created(
            &desk.ann,
            json!({"kind": "change_model", "title": "Add a mailbox user",
            "fields": {"risk": "low", "plan": "create the account", "backout_plan": "delete it"}}),
        )
        .await;
    let model_id = model["id"].as_str().unwrap();
    let named = desk
        .created(&desk.ann, json!({"kind": "change", "title": "Add dana", "fields": {"change_type": "standard", "change_model": model_id}}))
        .await;
    let named = named["id"].as_str().unwrap();
    // A draft model authorises nothing, and only an admin publishes one.
    assert_rejected(
        &desk.move_to(&desk.cy, named, "implement").await,
        "itil4",
        "change_model_required",
    );
    let by_agent = desk.move_to(&desk.ann, model_id, "published").await;
    assert_eq!(by_agent.status, StatusCode::FORBIDDEN, "{}", by_agent.body);
    desk.server.transition(model_id, "published").await.unwrap();
    assert_ok(&desk.move_to(&desk.cy, named, "implement").await);
    // A published model is not edited under the changes that rely on it.
    assert_rejected(
        &desk
            .patch(&desk.ann, model_id, json!({"plan": "anything"}))
            .await,
        "itil4",
        "change_model_published",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_declares_a_major_incident_with_a_manager_and_reviews_it() {
    let desk = Desk::open().await;
    let incident = desk
        .created(
            &desk.rob,
            json!({"kind": "incident", "title": "Payments down",
            "fields": {"impact": "high", "urgency": "high", "category": "payments"}}),
        )
        .await;
    let id = incident["id"].as_str().unwrap();
    assert_rejected(
        &desk
            .patch(&desk.ann, id, json!({"major_incident": true}))
            .await,
        "itil4",
        "major_incident_manager_required",
    );
    assert_ok(
        &desk
            .patch(
                &desk.ann,
                id,
                json!({"major_incident": true, "major_incident_manager": "bo"}),
            )
            .await,
    );
    assert_ok(&desk.move_to(&desk.ann, id, "in_progress").await);
    assert_ok(
        &desk
            .patch(
                &desk.ann,
                id,
                json!({"resolution_code": "fixed", "resolution": "failover"}),
            )
            .await,
    );
    assert_ok(&desk.move_to(&desk.ann, id, "resolved").await);
    assert_rejected(
        &desk.move_to(&desk.ann, id, "closed").await,
        "itil4",
        "post_incident_review_required",
    );
    assert_ok(
        &desk
            .patch(
                &desk.ann,
                id,
                json!({"post_incident_review": "PIR-7: the failover was manual"}),
            )
            .await,
    );
    assert_ok(&desk.move_to(&desk.ann, id, "closed").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_requester_confirms_or_rejects_a_resolution() {
    let desk = Desk::open().await;
    let incident = desk
        .created(
            &desk.rob,
            json!({"kind": "incident", "title": "VPN drops", "fields": {"category": "network"}}),
        )
        .await;
    let id = incident["id"].as_str().unwrap();
    let confirm = |who: &str, accept: bool| {
        let path = format!("/api/v1/records/{id}/confirmation");
        let who = who.to_owned();
        let desk = &desk;
        async move {
            desk.call(
                &who,
                Method::POST,
                &path,
                Some(&json!({"accept": accept, "comment": "seen"})),
            )
            .await
        }
    };
    let early = confirm(&desk.rob, true).await;
    assert_eq!(
        (early.status, &early.body["code"]),
        (StatusCode::CONFLICT, &json!("confirmation_not_expected")),
        "{}",
        early.body
    );
    assert_ok(&desk.move_to(&desk.ann, id, "in_progress").await);
    assert_ok(
        &desk
            .patch(
                &desk.ann,
                id,
                json!({"resolution_code": "fixed", "resolution": "new client"}),
            )
            .await,
    );
    assert_ok(&desk.move_to(&desk.ann, id, "resolved").await);
    // Only the requester answers; an agent cannot answer for them.
    let by_agent = confirm(&desk.ann, true).await;
    assert_eq!(by_agent.status, StatusCode::FORBIDDEN, "{}", by_agent.body);
    // Rejecting reopens and clears the resolution.
    let rejected = confirm(&desk.rob, false).await;
    assert_ok(&rejected);
    assert_eq!(rejected.body["state"], "in_progress");
    assert!(
        rejected.body["fields"].get("resolution").is_none(),
        "{}",
        rejected.body
    );
    assert_ok(
        &desk
            .patch(
                &desk.ann,
                id,
                json!({"resolution_code": "fixed", "resolution": "new router"}),
            )
            .await,
    );
    assert_ok(&desk.move_to(&desk.ann, id, "resolved").await);
    let accepted = confirm(&desk.rob, true).await;
    assert_ok(&accepted);
    assert_eq!(accepted.body["state"], "closed");
    assert_eq!(accepted.body["fields"]["customer_confirmed"], true);
    assert_eq!(accepted.body["fields"]["resolution"], "new router");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_carries_its_cobit_objective() {
    let desk = Desk::open().await;
    for (kind, fields, objective) in [
        ("problem", json!({}), "DSS03"),
        ("ci", json!({}), "BAI10"),
        ("task", json!({}), "DSS01"),
        ("improvement", json!({}), "APO11"),
        ("improvement", json!({"improvement_type": "risk"}), "APO12"),
        ("wish", json!({}), "APO08"),
        ("service", json!({}), "APO09"),
        ("agreement", json!({}), "APO09"),
        ("change", json!({}), "BAI06"),
        ("incident", json!({}), "DSS02"),
        ("request", json!({}), "DSS02"),
    ] {
        let record = desk
            .created(
                &desk.ann,
                json!({"kind": kind, "title": "x", "fields": fields}),
            )
            .await;
        assert_eq!(
            record["fields"]["cobit_objective"], objective,
            "{kind} {fields}"
        );
    }
    let forged = desk
        .create(
            &desk.ann,
            json!({"kind": "task", "title": "x", "fields": {"cobit_objective": "EDM01"}}),
        )
        .await;
    assert_not_writable(&forged, "/fields/cobit_objective", "module:cobit2019");
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycles_cancel_from_every_active_state() {
    let desk = Desk::open().await;
    for (kind, path) in [
        ("incident", &["in_progress", "on_hold", "cancelled"][..]),
        ("incident", &["in_progress", "cancelled"][..]),
        ("request", &["in_progress", "on_hold", "cancelled"][..]),
        ("problem", &["investigate", "known_error", "cancelled"][..]),
        ("improvement", &["planned", "in_progress", "cancelled"][..]),
    ] {
        let record = desk
            .created(&desk.ann, json!({"kind": kind, "title": "x"}))
            .await;
        let id = record["id"].as_str().unwrap();
        for to in path {
            let moved = desk.move_to(&desk.ann, id, to).await;
            assert_eq!(
                moved.status,
                StatusCode::OK,
                "{kind} to {to}: {}",
                moved.body
            );
        }
    }
    // A held incident resolves without being picked up again.
    let held = desk
        .created(&desk.ann, json!({"kind": "incident", "title": "x", "fields": {"category": "c", "resolution_code": "r", "resolution": "r"}}))
        .await;
    let id = held["id"].as_str().unwrap();
    for to in ["in_progress", "on_hold", "resolved"] {
        assert_ok(&desk.move_to(&desk.ann, id, to).await);
    }
    assert_eq!(desk.record(id).await["state"], "resolved");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emergency_change_is_authorised_by_the_change_authority_group() {
    let desk = Desk::open().await;
    let change = desk
        .created(&desk.ann, json!({"kind": "change", "title": "Patch the VPN now", "fields": {
            "change_type": "emergency", "risk": "high", "plan": "patch", "backout_plan": "roll back"}}))
        .await;
    let id = change["id"].as_str().unwrap();
    // An agent's approval, or the bootstrap admin's, is not the change authority's.
    assert_ok(&desk.decide(&desk.bo, id, "approve").await);
    let by_admin = desk
        .server
        .post(
            &format!("/api/v1/records/{id}/approvals"),
            &json!({"decision": "approve"}),
        )
        .await
        .unwrap();
    assert_ok(&by_admin);
    assert_rejected(
        &desk.move_to(&desk.ann, id, "implement").await,
        "itil4",
        "emergency_approval_required",
    );
    // cy joins the domain's change authority; her approval records the group and carries it.
    let joined = desk
        .server
        .patch(
            "/api/v1/groups/change-authority",
            &json!({"members": ["cy"]}),
        )
        .await
        .unwrap();
    assert_ok(&joined);
    let approval = desk.decide(&desk.cy, id, "approve").await;
    assert_ok(&approval);
    assert_eq!(
        approval.body["groups"],
        json!(["change-authority"]),
        "{}",
        approval.body
    );
    assert_ok(&desk.move_to(&desk.ann, id, "implement").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resolution_nobody_answers_closes_after_the_confirmation_period() {
    // No agreement covers these records, so the period is wall-clock time: 1.2 s.
    let server = TestServer::start_with(|config| {
        config.auto_close_after_business_minutes = 0.02;
    })
    .unwrap();
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    let mut ids = Vec::new();
    for title in ["answered", "silent"] {
        let created = server
            .call_as(
                Some(&rob),
                Method::POST,
                "/api/v1/records",
                Some(&json!({"kind": "request", "title": title})),
            )
            .await
            .unwrap();
        let id = created.body["id"].as_str().unwrap().to_owned();
        for to in ["in_progress", "fulfilled"] {
            server.transition(&id, to).await.unwrap();
        }
        ids.push(id);
    }
    // The requester answers one of them at once: reopened, it is not closed on its own.
    let rejected = server
        .call_as(
            Some(&rob),
            Method::POST,
            &format!("/api/v1/records/{}/confirmation", ids[0]),
            Some(&json!({"accept": false})),
        )
        .await
        .unwrap();
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let silent = loop {
        let record = server
            .get(&format!("/api/v1/records/{}", ids[1]))
            .await
            .unwrap()
            .body;
        if record["state"] == "closed" || std::time::Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(silent["state"], "closed", "{silent}");
    assert_eq!(silent["updated_by"], "system", "{silent}");
    assert!(
        silent["fields"].get("customer_confirmed").is_none(),
        "not confirmed: {silent}"
    );
    let answered = server
        .get(&format!("/api/v1/records/{}", ids[0]))
        .await
        .unwrap()
        .body;
    assert_eq!(answered["state"], "in_progress", "{answered}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_automatic_close_a_rule_refuses_is_not_retried() {
    let server = TestServer::start_with(|config| {
        config.bundled_modules = true;
        config.default_agreements = false;
        config.auto_close_after_business_minutes = 0.01;
    })
    .unwrap();
    // A major incident closes only after its review: the server may not close it either.
    let incident = server
        .create(
            json!({"kind": "incident", "title": "Payments down", "fields": {
            "category": "payments", "major_incident": true, "major_incident_manager": "bo",
            "resolution_code": "fixed", "resolution": "failover"}}),
        )
        .await
        .unwrap();
    let id = incident["id"].as_str().unwrap().to_owned();
    for to in ["in_progress", "resolved"] {
        server.transition(&id, to).await.unwrap();
    }
    let history_len = || async {
        server
            .get(&format!("/api/v1/records/{id}/history"))
            .await
            .unwrap()
            .body["entries"]
            .as_array()
            .unwrap()
            .len()
    };
    // Well past the 0.6 s period, several worker turns later: still resolved, and no write.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let before = history_len().await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let record = server
        .get(&format!("/api/v1/records/{id}"))
        .await
        .unwrap()
        .body;
    assert_eq!(record["state"], "resolved", "{record}");
    assert_eq!(history_len().await, before);
    assert_eq!(before, 3, "created, in progress, resolved");
    // The refusal is remembered for this version: no timer is left to try again and again.
    let metrics = usm_tests::metrics(&server.base).await.unwrap();
    assert_eq!(
        usm_tests::metric(&metrics, "usm_sla_timers_pending"),
        [0.0],
        "{metrics}"
    );
}

/// itil4 as the bundle ships it, with `config` lines added to its change-approval and priority
/// steps.
fn itil4_with(dir: &std::path::Path, approvals: &str, priorities: &str) -> std::path::PathBuf {
    let manifest = std::fs::read_to_string(usm_tests::repo_path("plugins/itil4/module.toml"))
        .unwrap()
        .replace("min_approvals = 1", approvals)
        .replace(
            "rule = \"priority\"",
            &format!("rule = \"priority\"\n{priorities}"),
        );
    usm_tests::module_dir(
        &dir.join("itil4"),
        &manifest,
        &[("itil4.wasm", usm_tests::guests::ITIL4)],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_count_distinct_approvers_and_major_criteria_are_configured() {
    let modules = tempfile::tempdir().unwrap();
    let itil4 = itil4_with(
        modules.path(),
        "min_approvals = 2",
        "major_priorities = [\"P1\", \"P2\"]",
    );
    let server = TestServer::start_with(move |config| {
        config.modules = vec![usm_server::ModuleConfig {
            path: itil4,
            domains: vec!["it".into()],
            grant: vec!["records:read".into()],
        }];
    })
    .unwrap();
    let ann = server.token("ann", &["agent"], None).await.unwrap();
    let bo = server.token("bo", &["agent"], None).await.unwrap();
    let cy = server.token("cy", &["agent"], None).await.unwrap();
    let call = |token: &str, path: String, body: Value| {
        let token = token.to_owned();
        let server = &server;
        async move {
            server
                .call_as(Some(&token), Method::POST, &path, Some(&body))
                .await
                .unwrap()
        }
    };
    let change = call(
        &ann,
        "/api/v1/records".into(),
        json!({"kind": "change", "title": "Two eyes",
        "fields": {"risk": "low", "plan": "p", "backout_plan": "b"}}),
    )
    .await;
    let id = change.body["id"].as_str().unwrap().to_owned();
    let approve = |token: &str| {
        call(
            token,
            format!("/api/v1/records/{id}/approvals"),
            json!({"decision": "approve"}),
        )
    };
    let implement = || {
        call(
            &ann,
            format!("/api/v1/records/{id}/transitions"),
            json!({"to": "implement"}),
        )
    };
    // The same approver twice is one approver.
    assert_ok(&approve(&bo).await);
    assert_ok(&approve(&bo).await);
    assert_rejected(&implement().await, "itil4", "approval_required");
    assert_ok(&approve(&cy).await);
    assert_ok(&implement().await);
    // P2 suggests a major incident here, as configured; P3 does not.
    for (impact, urgency, suggested) in [("medium", "high", true), ("medium", "medium", false)] {
        let incident = call(
            &ann,
            "/api/v1/records".into(),
            json!({"kind": "incident", "title": "x",
            "fields": {"impact": impact, "urgency": urgency}}),
        )
        .await;
        assert_eq!(
            incident.body["fields"]["major_incident_suggested"], suggested,
            "{}",
            incident.body
        );
    }
}
