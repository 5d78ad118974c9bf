//! TM Forum's Trouble Ticket API (TMF621 v4) over usm incidents: the `TroubleTicket` resource,
//! the table between its statuses and the incident lifecycle, and the mapping both ways. The
//! HTTP routes live in the API crate and go through the engine, so a ticket is an incident with
//! the same rights, pipelines and history as any other.
//!
//! | TMF621 `status` | incident `state` | and                                   |
//! |-----------------|------------------|---------------------------------------|
//! | `acknowledged`  | `new`            |                                       |
//! | `inProgress`    | `in_progress`    |                                       |
//! | `pending`       | `on_hold`        | `hold_reason` = `awaiting_customer`   |
//! | `held`          | `on_hold`        | any other `hold_reason` (`held` when set from TMF621) |
//! | `resolved`      | `resolved`       |                                       |
//! | `closed`        | `closed`         |                                       |
//! | `cancelled`     | `cancelled`      |                                       |
//! | `rejected`      | `cancelled`      | `resolution_code` = `rejected`        |
//!
//! Moving to `resolved`, `statusChangeReason` is also the incident's `resolution`, and a
//! characteristic named `resolutionCode` its `resolution_code`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use usm_model::{Record, Timestamp};

/// Where the API is served.
pub const BASE_PATH: &str = "/tmf-api/troubleTicket/v4";
/// The kind trouble tickets are.
pub const KIND: &str = "incident";
/// The hold reason that makes an on-hold incident `pending` (waiting for the customer).
pub const AWAITING_CUSTOMER: &str = "awaiting_customer";
/// The hold reason TMF621's `held` sets.
pub const HELD: &str = "held";
/// The resolution code that makes a cancelled incident `rejected`.
pub const REJECTED: &str = "rejected";
/// Where a ticket's TMF621-only members are kept: `fields.extra.tmf621`.
const EXTRA: &str = "tmf621";
/// The characteristic whose value a resolving PATCH records as the incident's resolution code.
pub const RESOLUTION_CODE: &str = "resolutionCode";
/// Longest title made from a description when a ticket has no `name`.
const TITLE_FROM_DESCRIPTION: usize = 120;

/// Why a TMF621 body cannot become an incident or a change of one.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MappingError {
    /// JSON pointer of the member, e.g. `/severity`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> MappingError {
    MappingError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A trouble ticket's status (TMF621 v4 `TroubleTicketStatusType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = TroubleTicketStatus))]
pub enum Status {
    /// Received, not yet worked: `new`.
    Acknowledged,
    /// Refused: `cancelled` with resolution code `rejected`.
    Rejected,
    /// Waiting for the customer: `on_hold` awaiting the customer.
    Pending,
    /// Put aside for another reason: `on_hold`.
    Held,
    /// Being worked: `in_progress`.
    InProgress,
    /// Withdrawn: `cancelled`.
    Cancelled,
    /// Done and confirmed: `closed`.
    Closed,
    /// Fixed, awaiting confirmation: `resolved`.
    Resolved,
}

impl Status {
    /// The status of an incident, or `None` in a state the table does not name (a module's).
    pub fn of(record: &Record) -> Option<Self> {
        let field = |name: &str| record.fields.get(name).and_then(Value::as_str);
        Some(match record.state.as_str() {
            "new" => Self::Acknowledged,
            "in_progress" => Self::InProgress,
            "on_hold" if field("hold_reason") == Some(AWAITING_CUSTOMER) => Self::Pending,
            "on_hold" => Self::Held,
            "resolved" => Self::Resolved,
            "closed" => Self::Closed,
            "cancelled" if field("resolution_code") == Some(REJECTED) => Self::Rejected,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// The incident state this status is, and the fields that tell it apart from its
    /// neighbours in that state.
    pub fn target(self) -> (&'static str, Map<String, Value>) {
        let with = |name: &str, value: &str| {
            let mut fields = Map::new();
            fields.insert(name.to_owned(), Value::from(value));
            fields
        };
        match self {
            Self::Acknowledged => ("new", Map::new()),
            Self::InProgress => ("in_progress", Map::new()),
            Self::Pending => ("on_hold", with("hold_reason", AWAITING_CUSTOMER)),
            Self::Held => ("on_hold", with("hold_reason", HELD)),
            Self::Resolved => ("resolved", Map::new()),
            Self::Closed => ("closed", Map::new()),
            Self::Cancelled => ("cancelled", Map::new()),
            Self::Rejected => ("cancelled", with("resolution_code", REJECTED)),
        }
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acknowledged => "acknowledged",
            Self::Rejected => "rejected",
            Self::Pending => "pending",
            Self::Held => "held",
            Self::InProgress => "inProgress",
            Self::Cancelled => "cancelled",
            Self::Closed => "closed",
            Self::Resolved => "resolved",
        }
    }
}

/// How severe a ticket is, as the incident's `impact`: the words TMF621's examples and common
/// practice use, any case. The first of each level is how an incident without a severity of
/// its own reads.
const SEVERITIES: [(&str, &str); 8] = [
    ("critical", "high"),
    ("urgent", "high"),
    ("high", "high"),
    ("major", "medium"),
    ("medium", "medium"),
    ("moderate", "medium"),
    ("minor", "low"),
    ("low", "low"),
];

fn impact_of(severity: &str) -> Result<&'static str, MappingError> {
    SEVERITIES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(severity.trim()))
        .map(|(_, impact)| *impact)
        .ok_or_else(|| {
            invalid(
                "/severity",
                "one of critical, urgent, high (impact high); major, medium, moderate (medium); minor, low (low)",
            )
        })
}

/// The severity a ticket shows: the word its client sent while the impact still says it,
/// else the first word of the impact's level.
fn severity_of(impact: &str, sent: Option<&str>) -> Option<String> {
    if let Some(sent) = sent
        && impact_of(sent).is_ok_and(|level| level == impact)
    {
        return Some(sent.to_owned());
    }
    SEVERITIES
        .iter()
        .find(|(_, level)| *level == impact)
        .map(|(name, _)| (*name).to_owned())
}

/// A name–value pair a client attaches to a ticket (kept as sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = TroubleTicketCharacteristic))]
pub struct Characteristic {
    /// The name.
    pub name: String,
    /// The value: any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: Value,
}

/// A trouble ticket: an incident as TMF621 v4 shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TroubleTicket {
    /// The incident's id.
    pub id: String,
    /// Where the ticket is read.
    pub href: String,
    /// The incident's title.
    pub name: String,
    /// What is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How severe it is: the word the client sent while the impact still says it, else
    /// `critical`, `major` or `minor` for impact high, medium or low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The incident's category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_type: Option<String>,
    /// Where the ticket is in its life (see the status table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The incident's priority (`P1`–`P5`), as the domain's rules set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// When the incident was created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub creation_date: Timestamp,
    /// When the incident was last written.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_update: Timestamp,
    /// When its SLA says it is due to be resolved, while the clock runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expected_resolution_date: Option<Timestamp>,
    /// When the customer asked for it to be resolved (as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_resolution_date: Option<String>,
    /// The client's own id for the ticket (as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The client's name–value pairs (as sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub characteristic: Vec<Characteristic>,
    /// The entities the client named (as sent), then the records the incident is linked to
    /// (`id`, and the link's relation as `role`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub related_entity: Vec<Map<String, Value>>,
    /// The parties and their roles (as sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub related_party: Vec<Map<String, Value>>,
    /// Notes (as sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub note: Vec<Map<String, Value>>,
    /// References to attachments (as sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub attachment: Vec<Map<String, Value>>,
    /// The channel the ticket came through (as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub channel: Option<Map<String, Value>>,
    /// `TroubleTicket`.
    #[serde(rename = "@type")]
    pub type_name: String,
}

/// A new trouble ticket.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = TroubleTicket_Create))]
pub struct TroubleTicketCreate {
    /// A one-line summary; the description's first line when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// What is wrong.
    pub description: String,
    /// `critical`, `urgent` or `high`; `major`, `medium` or `moderate`; `minor` or `low` (any
    /// case): the incident's impact high, medium or low.
    pub severity: String,
    /// What kind of trouble it is: the incident's category.
    pub ticket_type: String,
    /// Only `acknowledged`: a ticket starts there.
    #[serde(default)]
    pub status: Option<Status>,
    /// When the customer asks for it to be resolved (kept as sent).
    #[serde(default)]
    pub requested_resolution_date: Option<String>,
    /// The client's own id for the ticket (kept as sent).
    #[serde(default)]
    pub external_id: Option<String>,
    /// The client's name–value pairs (kept as sent, replaced whole).
    #[serde(default)]
    pub characteristic: Option<Vec<Characteristic>>,
    /// Entities the ticket is about (kept as sent, replaced whole).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub related_entity: Option<Vec<Map<String, Value>>>,
    /// The parties and their roles (kept as sent, replaced whole).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub related_party: Option<Vec<Map<String, Value>>>,
    /// Notes (kept as sent, replaced whole; the conversation is `/api/v1/records/{id}/comments`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub note: Option<Vec<Map<String, Value>>>,
    /// References to attachments (kept as sent, replaced whole; files are
    /// `/api/v1/records/{id}/attachments`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub attachment: Option<Vec<Map<String, Value>>>,
    /// The channel the ticket came through (kept as sent).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub channel: Option<Map<String, Value>>,
    /// Accepted and ignored (`TroubleTicket`).
    #[serde(default, rename = "@type")]
    pub type_name: Option<String>,
    /// Accepted and ignored.
    #[serde(default, rename = "@baseType")]
    pub base_type: Option<String>,
    /// Accepted and ignored.
    #[serde(default, rename = "@schemaLocation")]
    pub schema_location: Option<String>,
}

/// A change to a trouble ticket (a JSON merge patch of its patchable members).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = TroubleTicket_Update))]
pub struct TroubleTicketUpdate {
    /// A new summary.
    #[serde(default)]
    pub name: Option<String>,
    /// A new description.
    #[serde(default)]
    pub description: Option<String>,
    /// `critical`, `major` or `minor`.
    #[serde(default)]
    pub severity: Option<String>,
    /// A new category.
    #[serde(default)]
    pub ticket_type: Option<String>,
    /// Moves the ticket (see the status table); the lifecycle decides which moves exist.
    #[serde(default)]
    pub status: Option<Status>,
    /// Why the status changes: the move's comment in the incident's history.
    #[serde(default)]
    pub status_change_reason: Option<String>,
    /// When the customer asks for it to be resolved (kept as sent).
    #[serde(default)]
    pub requested_resolution_date: Option<String>,
    /// The client's own id for the ticket (kept as sent).
    #[serde(default)]
    pub external_id: Option<String>,
    /// The client's name–value pairs (kept as sent, replaced whole).
    #[serde(default)]
    pub characteristic: Option<Vec<Characteristic>>,
    /// Entities the ticket is about (kept as sent, replaced whole).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub related_entity: Option<Vec<Map<String, Value>>>,
    /// The parties and their roles (kept as sent, replaced whole).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub related_party: Option<Vec<Map<String, Value>>>,
    /// Notes (kept as sent, replaced whole; the conversation is `/api/v1/records/{id}/comments`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub note: Option<Vec<Map<String, Value>>>,
    /// References to attachments (kept as sent, replaced whole; files are
    /// `/api/v1/records/{id}/attachments`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub attachment: Option<Vec<Map<String, Value>>>,
    /// The channel the ticket came through (kept as sent).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub channel: Option<Map<String, Value>>,
}

/// What a new ticket becomes: the incident's title and fields.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIncident {
    /// The title.
    pub title: String,
    /// The fields.
    pub fields: Map<String, Value>,
}

/// The incident a new ticket is.
pub fn new_incident(ticket: TroubleTicketCreate) -> Result<NewIncident, MappingError> {
    if ticket
        .status
        .is_some_and(|status| status != Status::Acknowledged)
    {
        return Err(invalid("/status", "a new ticket is acknowledged"));
    }
    let description = ticket.description.trim();
    if description.is_empty() {
        return Err(invalid("/description", "must not be empty"));
    }
    let title = match ticket.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        Some(_) => return Err(invalid("/name", "must not be empty")),
        None => description
            .lines()
            .next()
            .unwrap_or(description)
            .chars()
            .take(TITLE_FROM_DESCRIPTION)
            .collect(),
    };
    let mut fields = Map::new();
    fields.insert("description".into(), Value::from(ticket.description));
    fields.insert("impact".into(), Value::from(impact_of(&ticket.severity)?));
    fields.insert("category".into(), Value::from(ticket.ticket_type));
    let mut kept = Kept {
        requested_resolution_date: ticket.requested_resolution_date,
        external_id: ticket.external_id,
        characteristic: ticket.characteristic,
        related_entity: ticket.related_entity,
        related_party: ticket.related_party,
        note: ticket.note,
        attachment: ticket.attachment,
        channel: ticket.channel,
    }
    .into_map();
    kept.insert("severity".into(), Value::from(ticket.severity));
    fields.insert("extra".into(), json!({ EXTRA: kept }));
    Ok(NewIncident { title, fields })
}

/// The TMF621 members no incident field holds, kept as sent under `fields.extra.tmf621`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Kept {
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_resolution_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    characteristic: Option<Vec<Characteristic>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    related_entity: Option<Vec<Map<String, Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    related_party: Option<Vec<Map<String, Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<Vec<Map<String, Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attachment: Option<Vec<Map<String, Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<Map<String, Value>>,
}

impl Kept {
    fn into_map(self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(members)) => members,
            _ => Map::new(),
        }
    }
}

/// What a PATCH does to the incident: a new title, a merge patch of fields, and a move.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentChange {
    /// The new title.
    pub title: Option<String>,
    /// A JSON merge patch of the fields (applied with the move when there is one).
    pub fields: Map<String, Value>,
    /// The state to move to, and the move's comment.
    pub transition: Option<(String, Option<String>)>,
}

/// The change a ticket update makes to `current`. A `status` the ticket already has moves
/// nothing; one that only changes the hold reason or resolution code (`pending` ⇄ `held`)
/// changes that field without a move.
pub fn change(
    update: TroubleTicketUpdate,
    current: &Record,
) -> Result<IncidentChange, MappingError> {
    let mut change = IncidentChange::default();
    if let Some(name) = update.name {
        if name.trim().is_empty() {
            return Err(invalid("/name", "must not be empty"));
        }
        change.title = Some(name);
    }
    if let Some(description) = update.description {
        change
            .fields
            .insert("description".into(), Value::from(description));
    }
    let resolution_code = update
        .characteristic
        .iter()
        .flatten()
        .find(|pair| pair.name == RESOLUTION_CODE)
        .and_then(|pair| pair.value.as_str())
        .map(str::to_owned);
    let mut kept = Kept {
        requested_resolution_date: update.requested_resolution_date,
        external_id: update.external_id,
        characteristic: update.characteristic,
        related_entity: update.related_entity,
        related_party: update.related_party,
        note: update.note,
        attachment: update.attachment,
        channel: update.channel,
    }
    .into_map();
    if let Some(severity) = update.severity {
        change
            .fields
            .insert("impact".into(), Value::from(impact_of(&severity)?));
        kept.insert("severity".into(), Value::from(severity));
    }
    if let Some(ticket_type) = update.ticket_type {
        change
            .fields
            .insert("category".into(), Value::from(ticket_type));
    }
    if !kept.is_empty() {
        change.fields.insert("extra".into(), json!({ EXTRA: kept }));
    }
    if let Some(status) = update.status
        && Status::of(current) != Some(status)
    {
        let (state, fields) = status.target();
        change.fields.extend(fields);
        if status == Status::Resolved {
            // A resolution is recorded as the incident's: the reason is its text, and the
            // `resolutionCode` characteristic its code, for the rules that ask for both.
            if let Some(reason) = &update.status_change_reason {
                change
                    .fields
                    .insert("resolution".into(), Value::from(reason.clone()));
            }
            if let Some(code) = resolution_code {
                change
                    .fields
                    .insert("resolution_code".into(), Value::from(code));
            }
        }
        if state != current.state.as_str() {
            change.transition = Some((state.to_owned(), update.status_change_reason));
        }
    } else if update.status_change_reason.is_some() {
        return Err(invalid(
            "/statusChangeReason",
            "is the reason of a status change: send it with a new status",
        ));
    }
    Ok(change)
}

/// How an incident reads as a trouble ticket.
pub fn ticket(record: &Record, expected_resolution: Option<Timestamp>) -> TroubleTicket {
    let text = |name: &str| {
        record
            .fields
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let own = record
        .fields
        .get("extra")
        .and_then(|extra| extra.get(EXTRA))
        .and_then(Value::as_object);
    let own_text = |name: &str| {
        own.and_then(|own| own.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let own_list = |name: &str| {
        own.and_then(|own| own.get(name))
            .and_then(Value::as_array)
            .cloned()
    };
    let own_objects = |name: &str| -> Vec<Map<String, Value>> {
        own_list(name)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|item| match item {
                Value::Object(members) => Some(members),
                _ => None,
            })
            .collect()
    };
    TroubleTicket {
        id: record.id.to_string(),
        href: format!("{BASE_PATH}/troubleTicket/{}", record.id),
        name: record.title.clone(),
        description: text("description"),
        severity: text("impact")
            .as_deref()
            .and_then(|impact| severity_of(impact, own_text("severity").as_deref())),
        ticket_type: text("category"),
        status: Status::of(record),
        priority: text("priority"),
        creation_date: record.created_at,
        last_update: record.updated_at,
        expected_resolution_date: expected_resolution,
        requested_resolution_date: own_text("requestedResolutionDate"),
        external_id: own_text("externalId"),
        characteristic: own_list("characteristic")
            .and_then(|pairs| serde_json::from_value(Value::Array(pairs)).ok())
            .unwrap_or_default(),
        related_party: own_objects("relatedParty"),
        note: own_objects("note"),
        attachment: own_objects("attachment"),
        channel: own
            .and_then(|own| own.get("channel"))
            .and_then(Value::as_object)
            .cloned(),
        related_entity: own_objects("relatedEntity")
            .into_iter()
            .chain(record.links.iter().map(|link| {
                let mut entity = Map::new();
                entity.insert("id".into(), Value::from(link.to.to_string()));
                entity.insert("role".into(), Value::from(link.rel.as_str()));
                entity
            }))
            .collect(),
        type_name: "TroubleTicket".into(),
    }
}

/// Members a sparse ticket always keeps.
const ALWAYS: [&str; 3] = ["id", "href", "@type"];

/// A ticket with only the members `fields` names (TMF630's `fields=`), besides `id`, `href`
/// and `@type`.
pub fn select(ticket: &TroubleTicket, fields: Option<&[String]>) -> Value {
    let mut value = serde_json::to_value(ticket).unwrap_or_default();
    if let (Some(fields), Value::Object(members)) = (fields, &mut value) {
        members.retain(|name, _| {
            ALWAYS.contains(&name.as_str()) || fields.iter().any(|field| field == name)
        });
    }
    value
}

/// The attribute filters of a ticket listing (TMF630 `attribute=value`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TicketFilter {
    /// Only tickets in this status.
    pub status: Option<Status>,
    /// Only tickets of this severity.
    pub severity: Option<String>,
    /// Only tickets of this type.
    pub ticket_type: Option<String>,
    /// Only tickets with this external id.
    pub external_id: Option<String>,
}

impl TicketFilter {
    /// The incident state every match is in, to narrow the listing before mapping.
    pub fn state(&self) -> Option<&'static str> {
        self.status.map(|status| status.target().0)
    }

    /// Whether `ticket` passes every filter.
    pub fn matches(&self, ticket: &TroubleTicket) -> bool {
        self.status.is_none_or(|s| ticket.status == Some(s))
            && self.severity.as_deref().is_none_or(|s| {
                ticket
                    .severity
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(s))
            })
            && self
                .ticket_type
                .as_deref()
                .is_none_or(|t| ticket.ticket_type.as_deref() == Some(t))
            && self
                .external_id
                .as_deref()
                .is_none_or(|e| ticket.external_id.as_deref() == Some(e))
    }
}

#[cfg(test)]
mod tests;
