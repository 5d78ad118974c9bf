//! The mapping, checked against bodies shaped as the TMF621 v4 user guide's examples.

use serde_json::{Value, json};
use usm_model::Record;

use super::*;

/// A create body with every member the guide's example request carries.
fn guide_create() -> Value {
    json!({
        "name": "Complaint over last invoice",
        "description": "Customer complaint over last invoice.",
        "severity": "Urgent",
        "ticketType": "Bill Dispute",
        "attachment": [{"description": "Scanned disputed invoice", "url": "https://files.example.org/invoice.pdf",
                        "name": "Invoice 12/2019", "@type": "Attachment"}],
        "channel": {"id": "8774", "name": "Self Service", "@type": "ChannelRef"},
        "note": [{"date": "2019-04-30T08:13:59.509Z", "author": "Jean Pontus",
                  "text": "Already called the expert helpdesk.", "@type": "Note"}],
        "relatedEntity": [{"id": "3472", "name": "November Bill", "role": "disputed bill",
                           "@referredType": "CustomerBill"}],
        "relatedParty": [{"id": "9870", "name": "Jackie Moore", "role": "member",
                          "@referredType": "Individual"}],
        "externalId": "EXT-77",
        "requestedResolutionDate": "2019-05-10T08:00:00Z",
        "@type": "TroubleTicket"
    })
}

fn record(state: &str, fields: Value) -> Record {
    serde_json::from_value(json!({
        "id": "INC-7", "kind": "incident", "process": "recover", "domain": "it",
        "state": state, "title": "Complaint over last invoice", "fields": fields,
        "links": [{"rel": "caused_by", "to": "PRB-2"}], "version": 3,
        "created_at": "2026-12-01T09:00:00Z", "created_by": "crm",
        "updated_at": "2026-12-01T10:00:00Z", "updated_by": "crm"
    }))
    .unwrap()
}

#[test]
fn the_guides_create_example_becomes_an_incident_and_reads_back_as_sent() {
    let create: TroubleTicketCreate = serde_json::from_value(guide_create()).unwrap();
    let new = new_incident(create).unwrap();
    assert_eq!(new.title, "Complaint over last invoice");
    assert_eq!(new.fields["impact"], "high", "Urgent is a high impact");
    assert_eq!(new.fields["category"], "Bill Dispute");
    assert_eq!(
        new.fields["description"],
        "Customer complaint over last invoice."
    );

    let stored = record("new", Value::Object(new.fields));
    let ticket = ticket(&stored, None);
    let shown = serde_json::to_value(&ticket).unwrap();
    let sent = guide_create();
    for member in [
        "name",
        "description",
        "severity",
        "ticketType",
        "attachment",
        "channel",
        "note",
        "relatedParty",
        "externalId",
        "requestedResolutionDate",
        "@type",
    ] {
        assert_eq!(shown[member], sent[member], "{member}");
    }
    assert_eq!(shown["status"], "acknowledged");
    assert_eq!(shown["id"], "INC-7");
    assert_eq!(
        shown["href"],
        "/tmf-api/troubleTicket/v4/troubleTicket/INC-7"
    );
    assert_eq!(shown["creationDate"], "2026-12-01T09:00:00Z");
    assert_eq!(shown["lastUpdate"], "2026-12-01T10:00:00Z");
    // The client's entities first, then the incident's own links.
    assert_eq!(
        shown["relatedEntity"],
        json!([sent["relatedEntity"][0], {"id": "PRB-2", "role": "caused_by"}])
    );
}

#[test]
fn a_ticket_without_a_name_is_titled_by_its_description_and_bad_members_are_named() {
    let new = new_incident(
        serde_json::from_value(json!({
            "description": "Line 1 is dead\nsince the storm last night",
            "severity": "minor", "ticketType": "Line"}))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(new.title, "Line 1 is dead");
    assert_eq!(new.fields["impact"], "low");

    for (body, field) in [
        (
            json!({"description": "x", "severity": "apocalyptic", "ticketType": "t"}),
            "/severity",
        ),
        (
            json!({"description": " ", "severity": "minor", "ticketType": "t"}),
            "/description",
        ),
        (
            json!({"description": "x", "severity": "minor", "ticketType": "t", "status": "resolved"}),
            "/status",
        ),
        (
            json!({"description": "x", "severity": "minor", "ticketType": "t", "name": ""}),
            "/name",
        ),
    ] {
        let create: TroubleTicketCreate = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(new_incident(create).unwrap_err().field, field, "{body}");
    }
    // Members the resource does not have, or that only the server sets, are not accepted.
    for body in [
        json!({"description": "x", "severity": "minor", "ticketType": "t", "id": "INC-1"}),
        json!({"description": "x", "severity": "minor", "ticketType": "t", "priorty": "1"}),
        json!({"description": "x", "severity": "minor"}),
    ] {
        assert!(serde_json::from_value::<TroubleTicketCreate>(body).is_err());
    }
}

#[test]
fn every_status_maps_to_a_state_and_back() {
    for status in [
        Status::Acknowledged,
        Status::Rejected,
        Status::Pending,
        Status::Held,
        Status::InProgress,
        Status::Cancelled,
        Status::Closed,
        Status::Resolved,
    ] {
        let (state, fields) = status.target();
        let record = record(state, Value::Object(fields));
        assert_eq!(Status::of(&record), Some(status), "{}", status.as_str());
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            Value::from(status.as_str())
        );
    }
    // Any hold other than waiting for the customer is `held`; a module's state has no status.
    let parts = record("on_hold", json!({"hold_reason": "awaiting_parts"}));
    assert_eq!(Status::of(&parts), Some(Status::Held));
    assert_eq!(Status::of(&record("triage", json!({}))), None);
}

#[test]
fn a_patch_moves_the_incident_or_only_retags_it_within_a_state() {
    let working = record("in_progress", json!({"impact": "low"}));
    let update: TroubleTicketUpdate = serde_json::from_value(json!({
        "status": "resolved", "statusChangeReason": "Credit note issued",
        "severity": "major", "name": "Invoice corrected"}))
    .unwrap();
    let change = change(update, &working).unwrap();
    assert_eq!(change.title.as_deref(), Some("Invoice corrected"));
    assert_eq!(
        change.transition,
        Some(("resolved".into(), Some("Credit note issued".into())))
    );
    assert_eq!(change.fields["impact"], "medium");
    assert_eq!(change.fields["resolution"], "Credit note issued");
    assert_eq!(change.fields["extra"]["tmf621"]["severity"], "major");

    // held → pending is the same state: only the hold reason changes.
    let held = record("on_hold", json!({"hold_reason": "held"}));
    let pending = super::change(
        serde_json::from_value(json!({"status": "pending"})).unwrap(),
        &held,
    )
    .unwrap();
    assert_eq!(pending.transition, None);
    assert_eq!(pending.fields["hold_reason"], "awaiting_customer");

    // Rejecting cancels with the rejected resolution code, in the move's own write.
    let fresh = record("new", json!({}));
    let rejected = super::change(
        serde_json::from_value(json!({"status": "rejected"})).unwrap(),
        &fresh,
    )
    .unwrap();
    assert_eq!(rejected.transition, Some(("cancelled".into(), None)));
    assert_eq!(rejected.fields["resolution_code"], "rejected");

    // A reason without a new status says nothing.
    let error = super::change(
        serde_json::from_value(json!({"statusChangeReason": "because"})).unwrap(),
        &fresh,
    )
    .unwrap_err();
    assert_eq!(error.field, "/statusChangeReason");
    // Read-only members are refused by the body's shape.
    for body in [
        json!({"id": "INC-9"}),
        json!({"creationDate": "2020-01-01T00:00:00Z"}),
        json!({"priority": "P1"}),
    ] {
        assert!(serde_json::from_value::<TroubleTicketUpdate>(body).is_err());
    }
}

#[test]
fn a_sparse_ticket_keeps_its_identity_and_filters_match_as_shown() {
    let record = record(
        "in_progress",
        json!({"impact": "high", "category": "Line",
        "extra": {"tmf621": {"externalId": "EXT-1", "severity": "critical"}}}),
    );
    let ticket = ticket(&record, None);
    let sparse = select(&ticket, Some(&["status".to_owned(), "severity".to_owned()]));
    assert_eq!(
        sparse,
        json!({"id": "INC-7", "href": "/tmf-api/troubleTicket/v4/troubleTicket/INC-7",
               "@type": "TroubleTicket", "status": "inProgress", "severity": "critical"})
    );
    let filter = TicketFilter {
        status: Some(Status::InProgress),
        severity: Some("CRITICAL".into()),
        ticket_type: Some("Line".into()),
        external_id: Some("EXT-1".into()),
    };
    assert_eq!(filter.state(), Some("in_progress"));
    assert!(filter.matches(&ticket));
    let other = TicketFilter {
        severity: Some("minor".into()),
        ..TicketFilter::default()
    };
    assert!(!other.matches(&ticket));
    // A severity sent once but outdated by a later impact reads as the impact's word.
    let mut changed = record.clone();
    changed.fields.insert("impact".into(), json!("low"));
    assert_eq!(
        super::ticket(&changed, None).severity.as_deref(),
        Some("minor")
    );
}
