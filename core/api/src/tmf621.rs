//! TM Forum's Trouble Ticket API (TMF621 v4) at `/tmf-api/troubleTicket/v4`: trouble tickets
//! are incidents, created, read, listed and changed through the engine with the caller's
//! rights and the domain's pipelines. The mapping is `usm_tmf621`'s.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use usm_engine::{
    Engine, EngineError, ListRequest, NewRecord, RecordPatch,
    webhooks::{self, Format, NewSubscription},
};
use usm_model::{Actor, ErrorCode, EventType, Record};
use usm_tmf621::{
    MappingError, Status, TicketFilter, TroubleTicket, TroubleTicketCreate, TroubleTicketUpdate,
};

use crate::{
    Services,
    body::Object,
    headers::{change_condition, etag, idempotency_key},
    principal::Principal,
    problem::{ApiError, Problem},
};

/// Most tickets one page holds.
const MAX_LIMIT: usize = 500;
/// Most incidents a listing reads to find its page: the bound on what one filtered request
/// costs. `X-Total-Count` is sent only when the count is complete within it.
const MAX_SCAN: usize = 10_000;

impl From<MappingError> for ApiError {
    fn from(error: MappingError) -> Self {
        let field = error.field.clone();
        ApiError::new(ErrorCode::InvalidInput, error.to_string()).with_field(field)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work).await?
}

/// A ticket's sparse fieldset, as the `fields` query parameter names it.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TicketParams {
    /// Members to return, comma-separated (`id`, `href` and `@type` always come).
    pub fields: Option<String>,
}

/// A ticket listing's paging, fieldset and attribute filters (TMF630).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TicketListParams {
    /// Members to return, comma-separated (`id`, `href` and `@type` always come).
    pub fields: Option<String>,
    /// Tickets to skip (default 0).
    pub offset: Option<usize>,
    /// Tickets to return (default 50, at most 500).
    pub limit: Option<usize>,
    /// Only tickets in this status.
    #[param(value_type = Option<String>)]
    pub status: Option<Status>,
    /// Only tickets of this severity (any case).
    pub severity: Option<String>,
    /// Only tickets of this type.
    pub ticket_type: Option<String>,
    /// Only the ticket with this external id.
    pub external_id: Option<String>,
}

fn field_list(fields: Option<&str>) -> Option<Vec<String>> {
    fields.map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// The ticket of incident `record`, with its SLA's resolution due time.
fn ticket_of(engine: &Engine, record: &Record) -> Result<TroubleTicket, ApiError> {
    let due = engine
        .sla(record)
        .map_err(EngineError::from)?
        .and_then(|sla| sla.resolution)
        .and_then(|clock| clock.due_at);
    Ok(usm_tmf621::ticket(record, due))
}

/// The incident `id`, if the caller may see it: other kinds are not tickets.
fn incident(engine: &Engine, actor: &Actor, id: &str) -> Result<Record, ApiError> {
    let record = engine.get(actor, id)?;
    if record.kind.as_str() == usm_tmf621::KIND {
        Ok(record)
    } else {
        Err(EngineError::NotFound(id.to_owned()).into())
    }
}

fn ticket_response(
    mut builder: actix_web::HttpResponseBuilder,
    record: &Record,
    ticket: &TroubleTicket,
    fields: Option<&[String]>,
) -> HttpResponse {
    builder.insert_header((header::ETAG, etag(record.version)));
    builder.json(usm_tmf621::select(ticket, fields))
}

/// Creates a trouble ticket: an incident in the server's default domain.
#[utoipa::path(
    post, path = "/tmf-api/troubleTicket/v4/troubleTicket", tag = "tmf621",
    request_body = TroubleTicketCreate,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: a repeat with the same key and body returns the first result")),
    responses(
        (status = 201, body = TroubleTicket, headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Malformed JSON, a member the resource lacks, or a bad value (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused by the incident's schema or its pipeline", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A pipeline step is overloaded", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    )
)]
pub async fn create_ticket(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    body: web::Json<Object<TroubleTicketCreate>>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&request)?;
    let services = services.into_inner();
    let (record, ticket, replayed) = blocking(move || {
        let new = usm_tmf621::new_incident(body.into_inner().0)?;
        let engine = &services.engine;
        let created = engine.create(
            &actor,
            NewRecord {
                kind: usm_tmf621::KIND.into(),
                domain: None,
                title: new.title,
                fields: new.fields,
                links: Vec::new(),
            },
            key.as_deref(),
        )?;
        let ticket = ticket_of(engine, &created.record)?;
        Ok((created.record, ticket, created.replayed))
    })
    .await?;
    let mut builder = HttpResponse::Created();
    builder.insert_header((header::LOCATION, ticket.href.clone()));
    if replayed {
        builder.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(ticket_response(builder, &record, &ticket, None))
}

/// Reads a trouble ticket.
#[utoipa::path(
    get, path = "/tmf-api/troubleTicket/v4/troubleTicket/{id}", tag = "tmf621",
    params(("id" = String, Path, description = "The incident's id, e.g. INC-42"), TicketParams),
    responses(
        (status = 200, body = TroubleTicket, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No incident the caller may see has this id", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_ticket(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
    params: web::Query<TicketParams>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let (record, ticket) = blocking(move || {
        let record = incident(&services.engine, &actor, &id)?;
        let ticket = ticket_of(&services.engine, &record)?;
        Ok((record, ticket))
    })
    .await?;
    let fields = field_list(params.fields.as_deref());
    Ok(ticket_response(
        HttpResponse::Ok(),
        &record,
        &ticket,
        fields.as_deref(),
    ))
}

/// Lists the trouble tickets the caller may see, oldest first, with offset paging
/// (`X-Result-Count`; `X-Total-Count` when the filters could be counted in full).
#[utoipa::path(
    get, path = "/tmf-api/troubleTicket/v4/troubleTicket", tag = "tmf621",
    params(TicketListParams),
    responses(
        (status = 200, body = Vec<TroubleTicket>,
            headers(("X-Result-Count" = usize, description = "Tickets in this answer"),
                    ("X-Total-Count" = usize, description = "Tickets the filters select (absent when more than 10,000 incidents would have to be read)"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tickets(
    services: web::Data<Services>,
    Principal(actor): Principal,
    params: web::Query<TicketListParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    let offset = params.offset.unwrap_or(0);
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("limit: from 1 to {MAX_LIMIT}"),
        )
        .with_field("limit"));
    }
    if offset >= MAX_SCAN {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("offset: below {MAX_SCAN}; narrow the listing with filters"),
        )
        .with_field("offset"));
    }
    let filter = TicketFilter {
        status: params.status,
        severity: params.severity,
        ticket_type: params.ticket_type,
        external_id: params.external_id,
    };
    let fields = field_list(params.fields.as_deref());
    let services = services.into_inner();
    let (page, total) = blocking(move || {
        let engine = &services.engine;
        let mut page = Vec::new();
        let mut matched = 0;
        let mut read = 0;
        let mut cursor = None;
        loop {
            let batch = engine.list(
                &actor,
                ListRequest {
                    kind: Some(usm_tmf621::KIND.into()),
                    state: filter.state().map(str::to_owned),
                    domain: None,
                    limit: Some(MAX_LIMIT),
                    cursor: cursor.take(),
                },
            )?;
            for record in &batch.records {
                read += 1;
                let ticket = ticket_of(engine, record)?;
                if !filter.matches(&ticket) {
                    continue;
                }
                if matched >= offset && page.len() < limit {
                    page.push(usm_tmf621::select(&ticket, fields.as_deref()));
                }
                matched += 1;
            }
            match batch.next_cursor {
                Some(next) if read < MAX_SCAN => cursor = Some(next),
                Some(_) => return Ok((page, None)),
                None => return Ok((page, Some(matched))),
            }
        }
    })
    .await?;
    let mut builder = HttpResponse::Ok();
    builder.insert_header(("X-Result-Count", page.len().to_string()));
    if let Some(total) = total {
        builder.insert_header(("X-Total-Count", total.to_string()));
    }
    Ok(builder.json(page))
}

/// Changes a trouble ticket (a JSON merge patch of its patchable members). A new `status`
/// moves the incident along its lifecycle in the same write as the other members; with a new
/// `name` as well, the name is written first (two versions).
#[utoipa::path(
    patch, path = "/tmf-api/troubleTicket/v4/troubleTicket/{id}", tag = "tmf621",
    request_body(content = TroubleTicketUpdate, content_type = "application/merge-patch+json"),
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "The ETag the change is based on")),
    responses(
        (status = 200, body = TroubleTicket, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON, a member that cannot be patched, or a bad value", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The lifecycle has no move from the current status to the new one (`illegal_transition`), or the incident is read-only (`module_not_enabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The ticket changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A rule of the domain refused the change (`step_rejected`), or the incident's schema did", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "The server requires If-Match (`require_if_match`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A pipeline step is overloaded", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64))),
    )
)]
pub async fn patch_ticket(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Object<TroubleTicketUpdate>>,
) -> Result<HttpResponse, ApiError> {
    let expected = change_condition(&request, services.config.require_if_match)?;
    let services = services.into_inner();
    let (record, ticket) = blocking(move || {
        let engine = &services.engine;
        let current = incident(engine, &actor, &id)?;
        let change = usm_tmf621::change(body.into_inner().0, &current)?;
        let mut record = current;
        let mut expected = expected;
        let fields = (!change.fields.is_empty()).then_some(change.fields);
        match change.transition {
            Some((to, comment)) => {
                if let Some(title) = change.title {
                    let patch = RecordPatch {
                        title: Some(title),
                        ..RecordPatch::default()
                    };
                    record = engine.update(&actor, &id, patch, expected)?;
                    expected = Some(record.version);
                }
                record =
                    engine.transition_with_fields(&actor, &id, &to, comment, expected, fields)?;
            }
            None if change.title.is_some() || fields.is_some() => {
                let patch = RecordPatch {
                    title: change.title,
                    fields,
                    links: None,
                };
                record = engine.update(&actor, &id, patch, expected)?;
            }
            None => {}
        }
        let ticket = ticket_of(engine, &record)?;
        Ok((record, ticket))
    })
    .await?;
    Ok(ticket_response(HttpResponse::Ok(), &record, &ticket, None))
}

/// A listener's registration (TMF630 hub): events go to `callback` as TMF621 events.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TroubleTicketHub_Create)]
pub struct HubRegistration {
    /// Where events are POSTed (`http` or `https`, within the server's webhook policy).
    pub callback: String,
    /// `eventType=` one or more of `TroubleTicketCreateEvent`,
    /// `TroubleTicketAttributeValueChangeEvent`, `TroubleTicketStateChangeEvent`,
    /// comma-separated; every one when absent.
    #[serde(default)]
    pub query: Option<String>,
}

/// A registered listener.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = TroubleTicketHub)]
pub struct Hub {
    /// Its id (a webhook subscription's, listed and logged with the webhooks).
    pub id: String,
    /// Where events go.
    pub callback: String,
    /// The event filter, as registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// The event types a hub query names.
fn hub_events(query: Option<&str>) -> Result<Vec<EventType>, ApiError> {
    let refuse = |message: String| {
        ApiError::new(ErrorCode::InvalidInput, format!("query: {message}")).with_field("/query")
    };
    let mut events = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "eventType" {
            return Err(refuse(format!(
                "{}: only eventType can be filtered on",
                name.chars().take(64).collect::<String>()
            )));
        }
        for event in value.split(',').map(str::trim) {
            events.push(match event {
                "TroubleTicketCreateEvent" => EventType::RecordCreated,
                "TroubleTicketAttributeValueChangeEvent" => EventType::RecordUpdated,
                "TroubleTicketStateChangeEvent" => EventType::RecordTransitioned,
                other => {
                    return Err(refuse(format!(
                        "{}: not an event of this API",
                        other.chars().take(64).collect::<String>()
                    )));
                }
            });
        }
    }
    Ok(events)
}

/// Registers a listener for trouble ticket events (admins): creations, changes and status
/// changes of the incidents in the caller's domains, signed and retried as webhooks are.
#[utoipa::path(
    post, path = "/tmf-api/troubleTicket/v4/hub", tag = "tmf621",
    request_body = HubRegistration,
    responses(
        (status = 201, body = Hub, headers(("Location" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The webhook policy refuses the callback", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register_listener(
    services: web::Data<Services>,
    crate::principal::Admin(actor): crate::principal::Admin,
    body: web::Json<Object<HubRegistration>>,
) -> Result<HttpResponse, ApiError> {
    let registration = body.into_inner().0;
    let events = hub_events(registration.query.as_deref())?;
    let services = services.into_inner();
    let callback = registration.callback.clone();
    let subscription = blocking(move || {
        let new = NewSubscription {
            url: callback,
            events,
            kinds: Vec::new(),
            // A scoped admin hears of its own domains.
            domains: actor
                .domains
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect(),
            secret: None,
            max_attempts: None,
            format: Format::Tmf621,
        };
        crate::admin::subscribe(&services, &actor, new)
    })
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("{}/hub/{}", usm_tmf621::BASE_PATH, subscription.id),
        ))
        .json(Hub {
            id: subscription.id,
            callback: registration.callback,
            query: registration.query,
        }))
}

/// Removes a listener.
#[utoipa::path(
    delete, path = "/tmf-api/troubleTicket/v4/hub/{id}", tag = "tmf621",
    params(("id" = String, Path)),
    responses(
        (status = 204),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No listener with this id", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn unregister_listener(
    services: web::Data<Services>,
    crate::principal::Admin(actor): crate::principal::Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = services.engine.store().clone();
    blocking(move || {
        // Only listeners: a CloudEvents webhook is removed through /api/v1/webhooks.
        let listener = webhooks::get(store.as_ref(), &id)
            .ok()
            .filter(|s| s.format == Format::Tmf621);
        if listener.is_none() {
            return Err(webhooks::WebhookError::NotFound(id.chars().take(64).collect()).into());
        }
        crate::admin::unsubscribe(store.as_ref(), &actor, &id)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
