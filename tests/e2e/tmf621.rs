//! TMF621 v4 over incidents (issue 17): a trouble ticket is created from the user guide's
//! example body, read, listed with TMF630 filters and paging, and moved through the status
//! table by merge-patch, through the same rights and pipelines as the incident API.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use usm_tests::{Reply, TestServer};

const TICKETS: &str = "/tmf-api/troubleTicket/v4/troubleTicket";

/// A merge-patch of a ticket, sent with TMF621's media type.
async fn merge_patch(server: &TestServer, id: &str, patch: Value, if_match: Option<&str>) -> Reply {
    let mut request = server
        .client()
        .request(Method::PATCH, format!("{}{TICKETS}/{id}", server.base))
        .header("content-type", "application/merge-patch+json")
        .body(patch.to_string());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    let response = request.send().await.unwrap();
    Reply::read(response).await.unwrap()
}

fn guide_example() -> Value {
    json!({
        "name": "Complaint over last invoice",
        "description": "Customer complaint over last invoice.",
        "severity": "Urgent",
        "ticketType": "Bill Dispute",
        "channel": {"id": "8774", "name": "Self Service", "@type": "ChannelRef"},
        "note": [{"date": "2019-04-30T08:13:59.509Z", "author": "Jean Pontus",
                  "text": "Already called the expert helpdesk."}],
        "relatedParty": [{"id": "9870", "name": "Jackie Moore", "role": "member",
                          "@referredType": "Individual"}],
        "externalId": "CRM-1",
        "@type": "TroubleTicket"
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trouble_ticket_lives_as_an_incident_through_the_status_table() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();

    let created = server.post(TICKETS, &guide_example()).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("{TICKETS}/{id}").as_str())
    );
    assert_eq!(created.body["status"], "acknowledged");
    assert_eq!(created.body["severity"], "Urgent");
    assert_eq!(created.body["note"], guide_example()["note"]);
    // The same record through the incident API, shaped by the `it` domain's pipeline.
    let incident = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(incident.body["kind"], "incident");
    assert_eq!(incident.body["fields"]["impact"], "high");
    assert_eq!(incident.body["fields"]["category"], "Bill Dispute");
    assert_eq!(incident.body["title"], "Complaint over last invoice");

    // A second ticket, and a record of another kind, which is no ticket.
    server
        .post(
            TICKETS,
            &json!({"description": "Line dead", "severity": "minor", "ticketType": "Line",
                    "externalId": "CRM-2"}),
        )
        .await
        .unwrap();
    let task = server
        .create(json!({"kind": "task", "title": "Not a ticket"}))
        .await
        .unwrap();
    let not_ticket = server
        .get(&format!("{TICKETS}/{}", task["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(not_ticket.status, StatusCode::NOT_FOUND);

    // Listing: TMF630 attribute filters, offset paging, counts in headers, sparse fields.
    let all = server.get(TICKETS).await.unwrap();
    assert_eq!(all.body.as_array().unwrap().len(), 2, "{}", all.body);
    assert_eq!(all.header("x-total-count"), Some("2"));
    let urgent = server
        .get(&format!("{TICKETS}?severity=urgent&fields=externalId"))
        .await
        .unwrap();
    assert_eq!(
        urgent.body,
        json!([{"id": id, "href": format!("{TICKETS}/{id}"), "@type": "TroubleTicket",
                "externalId": "CRM-1"}])
    );
    let second = server
        .get(&format!("{TICKETS}?offset=1&limit=1&fields=externalId"))
        .await
        .unwrap();
    assert_eq!(second.body[0]["externalId"], "CRM-2");
    assert_eq!(
        (
            second.header("x-result-count"),
            second.header("x-total-count")
        ),
        (Some("1"), Some("2"))
    );

    // Moves by merge-patch, through the lifecycle and its rules.
    let working = merge_patch(&server, &id, json!({"status": "inProgress"}), Some("\"1\"")).await;
    assert_eq!(working.status, StatusCode::OK, "{}", working.body);
    assert_eq!(working.body["status"], "inProgress");
    let stale = merge_patch(&server, &id, json!({"status": "held"}), Some("\"1\"")).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    // The domain's iso20000 rule wants a resolution code: the ticket carries none yet.
    let refused = merge_patch(
        &server,
        &id,
        json!({"status": "resolved", "statusChangeReason": "Credit note issued"}),
        None,
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["code"], "step_rejected");
    let resolved = merge_patch(
        &server,
        &id,
        json!({"status": "resolved", "statusChangeReason": "Credit note issued",
               "characteristic": [{"name": "resolutionCode", "value": "billing_corrected"}]}),
        None,
    )
    .await;
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.body);
    assert_eq!(resolved.body["status"], "resolved");
    let incident = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(incident.body["state"], "resolved");
    assert_eq!(incident.body["fields"]["resolution"], "Credit note issued");
    assert_eq!(
        incident.body["fields"]["resolution_code"],
        "billing_corrected"
    );
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
    assert_eq!(
        (&last["action"], &last["comment"]),
        (&json!("transition"), &json!("Credit note issued"))
    );

    // Filtering by status follows the table.
    let resolved_ones = server
        .get(&format!("{TICKETS}?status=resolved&fields=status"))
        .await
        .unwrap();
    assert_eq!(resolved_ones.body.as_array().unwrap().len(), 1);
    assert_eq!(resolved_ones.body[0]["id"], id.as_str());

    // What the resource does not have, and moves the lifecycle lacks, are refused by name.
    for (patch, status, field) in [
        (json!({"id": "INC-99"}), StatusCode::BAD_REQUEST, None),
        (
            json!({"severity": "apocalyptic"}),
            StatusCode::BAD_REQUEST,
            Some("/severity"),
        ),
        (
            json!({"status": "acknowledged"}),
            StatusCode::CONFLICT,
            None,
        ),
    ] {
        let reply = merge_patch(&server, &id, patch.clone(), None).await;
        assert_eq!(reply.status, status, "{patch}: {}", reply.body);
        if let Some(field) = field {
            assert_eq!(reply.body["field"], field, "{patch}");
        }
    }
    let bad_status = server.get(&format!("{TICKETS}?status=open")).await.unwrap();
    assert_eq!(bad_status.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn tickets_follow_the_callers_rights() {
    let server = TestServer::start().unwrap();
    let created = server
        .post(
            TICKETS,
            &json!({"description": "VPN down", "severity": "major", "ticketType": "Network"}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap();
    // An agent of hr sees no ticket of it; a requester sees only their own.
    let hal = server
        .token("hal", &["agent"], Some(&["hr"]))
        .await
        .unwrap();
    let hidden = server
        .act(&hal, Method::GET, &format!("{TICKETS}/{id}"), None)
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    let listed = server.act(&hal, Method::GET, TICKETS, None).await;
    assert_eq!(listed.body, json!([]));
    let rob = server.token("rob", &["requester"], None).await.unwrap();
    let own = server
        .act(
            &rob,
            Method::POST,
            TICKETS,
            Some(
                json!({"description": "My laptop", "severity": "minor", "ticketType": "Hardware"}),
            ),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    let robs = server.act(&rob, Method::GET, TICKETS, None).await;
    assert_eq!(robs.body.as_array().unwrap().len(), 1);
    assert_eq!(robs.body[0]["id"], own.body["id"]);
    // Unauthenticated callers get nothing.
    let anonymous = server
        .call_as(None, Method::GET, TICKETS, None)
        .await
        .unwrap();
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_listener_hears_of_ticket_events_it_asked_for() {
    use crate::webhooks::{Receiver, start_receiver, wait_until};
    use std::time::Duration;

    let server = TestServer::start_with(|config| {
        config.webhook_allowed_networks = vec!["127.0.0.0/8".into()];
    })
    .unwrap();
    let state = actix_web::web::Data::new(Receiver::default());
    let (url, receiver) = start_receiver(state.clone());
    let hub = "/tmf-api/troubleTicket/v4/hub";
    let all = server
        .post(hub, &json!({"callback": format!("{url}/all")}))
        .await
        .unwrap();
    assert_eq!(all.status, StatusCode::CREATED, "{}", all.body);
    let all_id = all.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        all.header("location"),
        Some(format!("{hub}/{all_id}").as_str())
    );
    let moves = server
        .post(
            hub,
            &json!({"callback": format!("{url}/moves"), "query": "eventType=TroubleTicketStateChangeEvent"}),
        )
        .await
        .unwrap();
    assert_eq!(
        moves.body["query"],
        "eventType=TroubleTicketStateChangeEvent"
    );
    for (body, field) in [
        (
            json!({"callback": format!("{url}/x"), "query": "eventType=TroubleTicketDeleteEvent"}),
            "/query",
        ),
        (
            json!({"callback": format!("{url}/x"), "query": "status=resolved"}),
            "/query",
        ),
    ] {
        let refused = server.post(hub, &body).await.unwrap();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
        assert_eq!(refused.body["field"], field);
    }
    let agent = server.token("ann", &["agent"], None).await.unwrap();
    let forbidden = server
        .act(
            &agent,
            Method::POST,
            hub,
            Some(json!({"callback": format!("{url}/mine")})),
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);

    let created = server
        .post(
            TICKETS,
            &json!({"description": "VPN down", "severity": "major", "ticketType": "Network"}),
        )
        .await
        .unwrap();
    let id = created.body["id"].as_str().unwrap().to_owned();
    server
        .create(json!({"kind": "task", "title": "no ticket"}))
        .await
        .unwrap();
    merge_patch(&server, &id, json!({"name": "VPN down for all"}), None).await;
    merge_patch(&server, &id, json!({"status": "inProgress"}), None).await;
    wait_until(
        || state.received.lock().unwrap().len() >= 4,
        Duration::from_secs(20),
    )
    .await;
    let received = state.received.lock().unwrap().clone();
    let heard = |path: &str| -> Vec<(String, String)> {
        received
            .iter()
            .filter(|r| r.path == path)
            .map(|r| {
                (
                    r.body["eventType"].as_str().unwrap().to_owned(),
                    r.body["event"]["troubleTicket"]["status"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        heard("/all"),
        [
            ("TroubleTicketCreateEvent".into(), "acknowledged".into()),
            (
                "TroubleTicketAttributeValueChangeEvent".into(),
                "acknowledged".into()
            ),
            ("TroubleTicketStateChangeEvent".into(), "inProgress".into()),
        ]
    );
    assert_eq!(
        heard("/moves"),
        [("TroubleTicketStateChangeEvent".into(), "inProgress".into())]
    );
    let first = received.iter().find(|r| r.path == "/all").unwrap();
    assert_eq!(first.body["event"]["troubleTicket"]["id"], id.as_str());
    assert!(first.body["eventId"].is_string() && first.body["eventTime"].is_string());

    // Unregistered, a listener hears nothing more; its id is gone.
    let removed = server
        .call(Method::DELETE, &format!("{hub}/{all_id}"), None, &[])
        .await
        .unwrap();
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let again = server
        .call(Method::DELETE, &format!("{hub}/{all_id}"), None, &[])
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    receiver.stop(true).await;
}
