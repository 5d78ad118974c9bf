//! `/api/v1/records` and its sub-resources.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::{Deserialize, Serialize};
use usm_engine::{ListRequest, NewRecord, RecordPatch};
use usm_model::{Approval, Decision, HistoryEntry, Record};

use crate::{
    Services,
    body::Object,
    headers::{change_condition, etag, idempotency_key, with_etag},
    principal::Principal,
    problem::{ApiError, Problem},
};

/// Runs blocking engine work off the async executor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, usm_engine::EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(web::block(work).await??)
}

fn record_response(status: actix_web::http::StatusCode, record: &Record) -> HttpResponse {
    let mut builder = HttpResponse::build(status);
    with_etag(&mut builder, record);
    builder.json(record)
}

/// Creates a record in its kind's initial state.
#[utoipa::path(
    post, path = "/api/v1/records", tag = "records",
    request_body = NewRecord,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: a repeat with the same key and body returns the first result")),
    responses(
        (status = 201, description = "Created (or replayed, with `Idempotent-Replayed: true`)", body = Record,
            headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Malformed JSON or invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind, schema violation, unknown link target or reused key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_record(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    body: web::Json<Object<NewRecord>>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&request)?;
    let engine = services.engine.clone();
    let created =
        blocking(move || engine.create(&actor, body.into_inner().0, key.as_deref())).await?;
    Ok(crate::headers::created_response(&created))
}

/// A record with its SLA clocks, when an agreement's policy covers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    /// The record.
    #[serde(flatten)]
    pub record: Record,
    /// Response and resolution clocks: target, elapsed, remaining, paused, breached, due time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sla: Option<usm_engine::sla::SlaStatus>,
}

/// Reads the current version of a record, with its SLA.
#[utoipa::path(
    get, path = "/api/v1/records/{id}", tag = "records",
    params(("id" = String, Path, description = "Record id, e.g. INC-42")),
    responses(
        (status = 200, body = RecordView, headers(("ETag" = String))),
        (status = 304, description = "`If-None-Match` names the current version", headers(("ETag" = String))),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_record(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine = services.engine.clone();
    let view = blocking(move || {
        let record = engine.get(&actor, &id)?;
        let sla = engine.sla(&record)?;
        Ok(RecordView { record, sla })
    })
    .await?;
    // The version is the record; SLA clocks are computed on each read and not part of it.
    if crate::headers::not_modified(&request, view.record.version) {
        let mut builder = HttpResponse::NotModified();
        with_etag(&mut builder, &view.record);
        return Ok(builder.finish());
    }
    let mut builder = HttpResponse::Ok();
    with_etag(&mut builder, &view.record);
    Ok(builder.json(view))
}

/// Changes title, fields (JSON merge patch) or links.
#[utoipa::path(
    patch, path = "/api/v1/records/{id}", tag = "records",
    request_body = RecordPatch,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "The ETag the change is based on")),
    responses(
        (status = 200, body = Record, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The record is read-only: its module is not enabled in its domain (`module_not_enabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The record changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "The server requires If-Match (`require_if_match`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_record(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Object<RecordPatch>>,
) -> Result<HttpResponse, ApiError> {
    let expected = change_condition(&request, services.config.require_if_match)?;
    let engine = services.engine.clone();
    let record =
        blocking(move || engine.update(&actor, &id, body.into_inner().0, expected)).await?;
    Ok(record_response(actix_web::http::StatusCode::OK, &record))
}

/// A transition request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    /// The target state.
    pub to: String,
    /// Why.
    #[serde(default)]
    pub comment: Option<String>,
    /// Fields to change with the move (a JSON merge patch), in the same write: resolve with
    /// the resolution, close with the outcome.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Moves a record to another state of its lifecycle, optionally changing fields in the same
/// write (one version, one history entry; the transition's rules see the new fields).
#[utoipa::path(
    post, path = "/api/v1/records/{id}/transitions", tag = "records",
    request_body = TransitionRequest,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses(
        (status = 200, body = Record, headers(("ETag" = String))),
        (status = 403, description = "Your roles may not take this transition", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed from the current state; `allowed` lists the reachable states", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The record changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "The server requires If-Match (`require_if_match`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown state, fields the kind's schema refuses, or fields not the caller's to write", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn transition_record(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<TransitionRequest>,
) -> Result<HttpResponse, ApiError> {
    let expected = change_condition(&request, services.config.require_if_match)?;
    let engine = services.engine.clone();
    let TransitionRequest {
        to,
        comment,
        fields,
    } = body.into_inner();
    let record = blocking(move || {
        engine.transition_with_fields(&actor, &id, &to, comment, expected, fields)
    })
    .await?;
    Ok(record_response(actix_web::http::StatusCode::OK, &record))
}

/// Query parameters of the history listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Only entries with a version above this one.
    #[serde(default)]
    pub after: u64,
    /// At most this many entries (default 50, max 1000).
    pub limit: Option<usize>,
}

/// A record's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// The record.
    pub record_id: String,
    /// Entries, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// Lists who changed what, when, and how: one entry per version.
#[utoipa::path(
    get, path = "/api/v1/records/{id}/history", tag = "records",
    params(("id" = String, Path), HistoryParams),
    responses(
        (status = 200, body = HistoryPage),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn record_history(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
    params: web::Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    let engine = services.engine.clone();
    let record_id = id.clone();
    let entries = blocking(move || engine.history(&actor, &id, params.after, params.limit)).await?;
    Ok(HttpResponse::Ok().json(HistoryPage { record_id, entries }))
}

/// A record's SLA: the clocks computed now from its history and the agreement in force, and its
/// ledger of every warning, breach and stop with the agreement and target of the moment.
#[utoipa::path(
    get, path = "/api/v1/records/{id}/sla", tag = "records",
    params(("id" = String, Path, description = "Record id, e.g. INC-42")),
    responses(
        (status = 200, body = usm_engine::SlaView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn record_sla(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine = services.engine.clone();
    let view = blocking(move || {
        let record = engine.get(&actor, &id)?;
        Ok(engine.sla_view(&record)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Query parameters of the record listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only records of this kind.
    pub kind: Option<String>,
    /// Only records in this state.
    pub state: Option<String>,
    /// Only records in this domain.
    pub domain: Option<String>,
    /// Only records assigned to this person (`me`: the caller). A queue filter.
    pub assignee: Option<String>,
    /// Only records assigned to this group. A queue filter.
    pub assignment_group: Option<String>,
    /// Only records this person requested or created (`me`: the caller). A queue filter.
    pub requester: Option<String>,
    /// Only records of this priority. A queue filter.
    pub priority: Option<String>,
    /// Only records whose SLA is `breached`, at `warning` or `running`. A queue filter.
    #[param(value_type = Option<String>)]
    pub sla: Option<String>,
    /// Only records written at or after this instant (RFC 3339). A queue filter.
    pub updated_since: Option<String>,
    /// `created_at`, `updated_at`, `priority` or `sla_due`, `-` first for descending. A queue
    /// order.
    pub sort: Option<String>,
    /// Page size (default 50, max 500).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// A sparse fieldset: the members of each record's `fields` to return, comma-separated
    /// (`fields=priority,assignee`); the record's own members (`id`, `state`, `version`, …)
    /// always come.
    pub fields: Option<String>,
    /// `links`: the records the page links to that the caller may see come in `included`
    /// (each once, at most 500 a page; a link to a record the caller may not see stays a link).
    pub expand: Option<String>,
    /// `true`: the answer carries `total`, how many records the filters select that the caller
    /// may see, counted from the search index (which follows commits within about a second).
    pub count: Option<bool>,
}

impl ListParams {
    /// The queue filters and order, when any is given: such listings are answered from the
    /// search index.
    fn queue(&mut self) -> Result<Option<crate::search::QueueParams>, ApiError> {
        let queued = self.assignee.is_some()
            || self.assignment_group.is_some()
            || self.requester.is_some()
            || self.priority.is_some()
            || self.sla.is_some()
            || self.updated_since.is_some()
            || self.sort.is_some();
        if !queued {
            return Ok(None);
        }
        let sla = self
            .sla
            .take()
            .map(|s| s.parse::<usm_search::SlaFilter>())
            .transpose()?;
        let updated_since = self
            .updated_since
            .take()
            .map(|at| {
                at.parse::<usm_model::Timestamp>().map_err(|error| {
                    ApiError::new(
                        usm_model::ErrorCode::InvalidInput,
                        format!("updated_since: not an RFC 3339 instant: {error}"),
                    )
                    .with_field("updated_since")
                })
            })
            .transpose()?;
        Ok(Some(crate::search::QueueParams {
            filter: usm_search::Filter {
                kind: self.kind.take(),
                state: self.state.take(),
                domain: self.domain.take(),
                assignee: self.assignee.take(),
                assignment_group: self.assignment_group.take(),
                requester: self.requester.take(),
                priority: self.priority.take(),
                sla,
                updated_since,
            },
            sort: self.sort.take(),
        }))
    }
}

/// A page of records.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordPage {
    /// Records, oldest first.
    pub records: Vec<Record>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many records the filters select (with `count=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    /// The records the page links to (with `expand=links`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub included: Vec<Record>,
}

impl RecordPage {
    /// A page as it is, with no total and nothing included.
    pub fn plain(records: Vec<Record>, next_cursor: Option<String>) -> Self {
        Self {
            records,
            next_cursor,
            total: None,
            included: Vec::new(),
        }
    }
}

/// Lists records the caller may see, with keyset pagination. Filtered by kind, state and
/// domain only, in creation order, it reads the store and sees every acknowledged write. With a
/// queue filter (`assignee`, `assignment_group`, `requester`, `priority`, `sla`,
/// `updated_since`) or a `sort`, it reads the search index, which follows commits within about
/// a second; each record is read again from the store and shown only if it still matches.
#[utoipa::path(
    get, path = "/api/v1/records", tag = "records",
    params(ListParams),
    responses(
        (status = 200, body = RecordPage,
            headers(("Link" = String, description = "RFC 8288: `<…&cursor=…>; rel=\"next\"` when there is a next page"))),
        (status = 400, description = "Bad limit, cursor, sort, sla, updated_since, fields, expand or count", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A domain outside the caller's domains", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind, state or domain", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The search index is being rebuilt (queue filters, sort or count only)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_records(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    let services = services.into_inner();
    let page = web::block(move || list_page(&services, &actor, params)).await??;
    Ok(crate::headers::page_response(&request, &page))
}

/// A page of the record listing as the caller may see it: what `GET /api/v1/records` answers,
/// for the console to render the same listing. Blocks on the store and the search index.
pub fn list_page(
    services: &Services,
    actor: &usm_model::Actor,
    mut params: ListParams,
) -> Result<RecordPage, ApiError> {
    let shape = crate::shape::Shape::parse(params.fields.as_deref(), params.expand.as_deref())?;
    let count = params.count.unwrap_or(false);
    let queue = params.queue()?;
    let (records, next_cursor, filter) = match queue {
        Some(queue) => {
            let filter = queue.filter.clone();
            let hits =
                crate::search::list_queue(services, actor, queue, params.limit, params.cursor)?;
            (hits.records, hits.next_cursor, filter)
        }
        None => {
            let filter = usm_search::Filter {
                kind: params.kind.clone(),
                state: params.state.clone(),
                domain: params.domain.clone(),
                ..usm_search::Filter::default()
            };
            let page = services.engine.list(
                actor,
                ListRequest {
                    kind: params.kind,
                    state: params.state,
                    domain: params.domain,
                    limit: params.limit,
                    cursor: params.cursor,
                },
            )?;
            (page.records, page.next_cursor, filter)
        }
    };
    let total = count
        .then(|| services.search.count(actor, &filter.for_caller(actor)))
        .transpose()?;
    let (records, included) = shape.apply(&services.engine, actor, records)?;
    Ok(RecordPage {
        records,
        next_cursor,
        total,
        included,
    })
}

/// An approval decision to record.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// `approve` or `reject`.
    pub decision: Decision,
    /// The approver's reasoning.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A record's approvals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApprovalList {
    /// The record.
    pub record_id: String,
    /// Approvals, oldest first, each with whether it still holds (`current`).
    pub approvals: Vec<usm_engine::controls::ApprovalStatus>,
}

/// Records an approval decision by the caller.
#[utoipa::path(
    post, path = "/api/v1/records/{id}/approvals", tag = "approvals",
    request_body = ApprovalRequest,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "The ETag of the version the approver decided on")),
    responses(
        (status = 201, body = Approval, headers(("ETag" = String, description = "The record's new version"))),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The record is inactive", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The record changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "The server requires If-Match (`require_if_match`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A pipeline step rejected the approval", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_approval(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<ApprovalRequest>,
) -> Result<HttpResponse, ApiError> {
    let expected = change_condition(&request, services.config.require_if_match)?;
    let engine = services.engine.clone();
    let ApprovalRequest { decision, comment } = body.into_inner();
    let (approval, record) =
        blocking(move || engine.approve(&actor, &id, decision, comment, expected)).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, etag(record.version)))
        .json(approval))
}

/// Lists a record's approvals.
#[utoipa::path(
    get, path = "/api/v1/records/{id}/approvals", tag = "approvals",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ApprovalList),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_approvals(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine = services.engine.clone();
    let record_id = id.clone();
    let approvals = blocking(move || engine.approvals(&actor, &id)).await?;
    Ok(HttpResponse::Ok().json(ApprovalList {
        record_id,
        approvals,
    }))
}

/// The requester's answer to a resolution.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationRequest {
    /// `true` accepts the resolution and closes the record; `false` rejects it and reopens it.
    pub accept: bool,
    /// Why, in the requester's words.
    #[serde(default)]
    pub comment: Option<String>,
}

/// The record's requester confirms or rejects its resolution. Accepting closes the record and
/// sets `customer_confirmed`; rejecting reopens it and clears the resolution.
#[utoipa::path(
    post, path = "/api/v1/records/{id}/confirmation", tag = "records",
    request_body = ConfirmationRequest,
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Record, headers(("ETag" = String, description = "The record's new version"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not the record's requester", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The record is not waiting for a confirmation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A pipeline step refused the answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_resolution(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
    body: web::Json<ConfirmationRequest>,
) -> Result<HttpResponse, ApiError> {
    let engine = services.engine.clone();
    let ConfirmationRequest { accept, comment } = body.into_inner();
    let record = blocking(move || engine.confirm(&actor, &id, accept, comment)).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(record.version)))
        .json(record))
}

/// A record's conversation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommentList {
    /// The record.
    pub record_id: String,
    /// Oldest first; a requester gets the public ones.
    pub comments: Vec<usm_engine::conversation::Comment>,
}

/// Paging of a conversation.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CommentParams {
    /// Only comments that made a record version after this one.
    pub after: Option<u64>,
    /// Page size.
    pub limit: Option<usize>,
}

/// Adds a comment: requesters write public comments on their own records, agents public
/// comments and internal notes. Each is a history entry; a requester's reply to a record held
/// `awaiting_customer` puts it back in progress.
#[utoipa::path(
    post, path = "/api/v1/records/{id}/comments", tag = "records",
    request_body = usm_engine::conversation::NewComment,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "The ETag the change is based on (never required: nothing is overwritten)")),
    responses(
        (status = 412, description = "The record changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 201, body = usm_engine::conversation::Comment, headers(("ETag" = String, description = "The record's new version"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A requester's internal note", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The record is read-only: its module is not enabled in its domain (`module_not_enabled`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_comment(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<usm_engine::conversation::NewComment>,
) -> Result<HttpResponse, ApiError> {
    // A comment adds and overwrites nothing, so If-Match is honoured when sent but never
    // required: two agents answering at once both get through.
    let expected = crate::headers::if_match(&request)?;
    let engine = services.engine.clone();
    let comment =
        blocking(move || engine.add_comment(&actor, &id, body.into_inner(), expected)).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, etag(comment.version)))
        .json(comment))
}

/// A record's conversation, oldest first.
#[utoipa::path(
    get, path = "/api/v1/records/{id}/comments", tag = "records",
    params(("id" = String, Path), CommentParams),
    responses(
        (status = 200, body = CommentList),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_comments(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
    params: web::Query<CommentParams>,
) -> Result<HttpResponse, ApiError> {
    let engine = services.engine.clone();
    let record_id = id.clone();
    let CommentParams { after, limit } = params.into_inner();
    let comments =
        blocking(move || engine.comments(&actor, &id, after.unwrap_or(0), limit)).await?;
    Ok(HttpResponse::Ok().json(CommentList {
        record_id,
        comments,
    }))
}

/// Query parameters of the KPIs.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KpiParams {
    /// Only this domain.
    pub domain: Option<String>,
    /// Only kinds of this process (`agree`, `change`, `recover`, `operate`, `improve`).
    pub process: Option<usm_model::Process>,
    /// Only records created at or after this instant (RFC 3339).
    pub from: Option<String>,
    /// Only records created before this instant (RFC 3339).
    pub to: Option<String>,
    /// `json` (default) or `csv`; `Accept: text/csv` works too.
    pub format: Option<String>,
}

fn instant(name: &str, value: Option<&str>) -> Result<Option<usm_model::Timestamp>, ApiError> {
    value
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::new(
                    usm_model::ErrorCode::InvalidInput,
                    format!("{name} must be an RFC 3339 instant"),
                )
                .with_field(name.to_owned())
            })
        })
        .transpose()
}

/// Improve-process KPIs from history: mean time to resolve, SLA compliance, change success rate,
/// backlog by state, reopen rate; as JSON or CSV.
#[utoipa::path(get, path = "/api/v1/kpis", tag = "kpis", params(KpiParams),
    responses((status = 200, description = "The KPIs, as JSON or (format=csv) CSV",
        content((usm_kpis::Kpis = "application/json"), (String = "text/csv")))))]
pub async fn kpis(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    params: web::Query<KpiParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    let csv = match params.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::new(
                usm_model::ErrorCode::InvalidInput,
                format!("format {other:?}: use json or csv"),
            )
            .with_field("format"));
        }
        None => request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv")),
    };
    let kpi_request = usm_kpis::KpiRequest {
        domain: params.domain,
        process: params.process,
        from: instant("from", params.from.as_deref())?,
        to: instant("to", params.to.as_deref())?,
    };
    let service = std::sync::Arc::clone(&services.kpis);
    let kpis = blocking(move || service.compute(&actor, &kpi_request)).await?;
    if csv {
        Ok(HttpResponse::Ok()
            .content_type("text/csv")
            .body(kpis.to_csv()))
    } else {
        Ok(HttpResponse::Ok().json(kpis))
    }
}
