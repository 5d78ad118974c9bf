//! `/api/v1/search` and `/api/v1/queues`, and the queue filters of `GET /api/v1/records`: all
//! answered from the search index, every hit read again from the store.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use usm_model::{Actor, ErrorCode};
use usm_search::{
    Filter, SearchError, SearchIndex, Sort,
    queues::{self, NewQueue, Queue},
};

use crate::{
    Services,
    principal::Principal,
    problem::{ApiError, Problem},
    records::RecordPage,
};

/// Seconds a client waits before asking again while the index is rebuilt.
const REBUILD_RETRY_SECS: u32 = 5;

impl From<SearchError> for ApiError {
    fn from(error: SearchError) -> Self {
        match error {
            SearchError::InvalidInput { ref field, .. } => {
                Self::new(ErrorCode::InvalidInput, error.to_string()).with_field(field.clone())
            }
            SearchError::UnknownReference { ref field, .. } => {
                Self::new(ErrorCode::UnknownReference, error.to_string()).with_field(field.clone())
            }
            SearchError::Syntax(_) => {
                Self::new(ErrorCode::SearchSyntax, error.to_string()).with_field("q")
            }
            SearchError::BadCursor => {
                Self::new(ErrorCode::BadCursor, error.to_string()).with_field("cursor")
            }
            SearchError::Rebuilding => Self::new(ErrorCode::SearchRebuilding, error.to_string())
                .with_header("Retry-After", REBUILD_RETRY_SECS.to_string()),
            SearchError::QueueNotFound(_) => Self::new(ErrorCode::QueueNotFound, error.to_string()),
            SearchError::Forbidden(_) => Self::new(ErrorCode::Forbidden, error.to_string()),
            SearchError::Engine(error) => error.into(),
            SearchError::Store(_) | SearchError::Index(_) => {
                tracing::error!(%error, "internal error");
                Self::new(
                    ErrorCode::Internal,
                    "the server failed to complete the request; it has been logged",
                )
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SearchError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(web::block(work).await??)
}

/// The queue parameters of a record listing, present when any of them is.
pub(crate) struct QueueParams {
    pub filter: Filter,
    pub sort: Option<String>,
}

/// A page of a record listing with queue filters or an order, from the search index.
pub(crate) fn list_queue(
    services: &Services,
    actor: &Actor,
    params: QueueParams,
    limit: Option<usize>,
    cursor: Option<String>,
) -> Result<usm_search::Hits, ApiError> {
    {
        let engine = &services.engine;
        let filter = params.filter.for_caller(actor);
        engine.list_filters(
            actor,
            filter.kind.as_deref(),
            filter.state.as_deref(),
            filter.domain.as_deref(),
        )?;
        let limit = engine.list_page_size(limit)?;
        let sort = params
            .sort
            .as_deref()
            .map(str::parse::<Sort>)
            .transpose()?
            .unwrap_or_default();
        Ok(services
            .search
            .queue(engine, actor, &filter, sort, limit, cursor.as_deref())?)
    }
}

/// Search parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Words and "quoted phrases" to find (every one must occur), and filters written
    /// `kind:incident`, `state:new`, `domain:it`, `assignee:me`, `group:network`,
    /// `requester:me`, `priority:P1`, `sla:breached|warning|running`. At most 1,000 bytes.
    pub q: String,
    /// Page size (default 50, max 500).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Searches the records the caller may see: titles, text fields, comments and attachment
/// names (internal notes only for those who work records), best match first; with filters
/// only, latest update first. The index follows commits within about a second.
#[utoipa::path(
    get, path = "/api/v1/search", tag = "search",
    params(SearchParams),
    responses(
        (status = 200, body = RecordPage),
        (status = 400, description = "Bad search text, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A domain filter outside the caller's domains", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind, state or domain", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index is being rebuilt", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn search(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: actix_web::HttpRequest,
    params: web::Query<SearchParams>,
) -> Result<HttpResponse, ApiError> {
    let SearchParams { q, limit, cursor } = params.into_inner();
    let services = services.into_inner();
    let hits = blocking(move || {
        let engine = &services.engine;
        let limit = engine.list_page_size(limit)?;
        services
            .search
            .search(engine, &actor, &q, limit, cursor.as_deref())
    })
    .await?;
    let page = RecordPage::plain(hits.records, hits.next_cursor);
    Ok(crate::headers::page_response(&request, &page))
}

/// A saved queue with how many records it holds now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueView {
    /// The queue.
    #[serde(flatten)]
    pub queue: Queue,
    /// Records it holds that the caller may see, as the index has them.
    pub count: usize,
}

/// The saved queues the caller sees.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueList {
    /// By name.
    pub queues: Vec<QueueView>,
}

fn view(index: &SearchIndex, actor: &Actor, queue: Queue) -> Result<QueueView, SearchError> {
    let count = index.count(actor, &queue.filter.clone().for_caller(actor))?;
    Ok(QueueView { queue, count })
}

/// Saves a queue: a filter and an order for a group of the domain (its members see it) or a
/// person (the caller, unless an admin of the domain saves it for someone).
#[utoipa::path(
    post, path = "/api/v1/queues", tag = "search",
    request_body = NewQueue,
    responses(
        (status = 201, body = QueueView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A requester, a domain the caller does not work in, or a group the caller is not a member of", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind, state, group or person", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index is being rebuilt", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_queue(
    services: web::Data<Services>,
    Principal(actor): Principal,
    body: web::Json<NewQueue>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let made = blocking(move || {
        let engine = &services.engine;
        let new = body.into_inner();
        engine.list_filters(
            &Actor {
                domains: None,
                ..actor.clone()
            },
            new.filter.kind.as_deref(),
            new.filter.state.as_deref(),
            None,
        )?;
        let queue = queues::create(
            engine.store().as_ref(),
            engine.directory(),
            engine.domains(),
            &actor,
            new,
        )?;
        if let Err(error) = usm_engine::auth::audit(
            engine.store().as_ref(),
            &actor,
            "queue.create",
            &format!("queue:{}", queue.id),
            Some(&std::collections::BTreeSet::from([queue.domain.clone()])),
            None,
            serde_json::to_value(&queue).ok(),
        ) {
            tracing::error!(%error, "cannot write the audit entry");
        }
        view(&services.search, &actor, queue)
    })
    .await?;
    Ok(HttpResponse::Created().json(made))
}

/// The saved queues the caller sees (its own, its groups', all of a domain it administers),
/// each with its count.
#[utoipa::path(
    get, path = "/api/v1/queues", tag = "search",
    responses(
        (status = 200, body = QueueList),
        (status = 403, description = "Requesters have no queues", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index is being rebuilt", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_queues(
    services: web::Data<Services>,
    Principal(actor): Principal,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let list = blocking(move || {
        let engine = &services.engine;
        let queues = queues::list(engine.store().as_ref(), engine.directory(), &actor)?
            .into_iter()
            .map(|queue| view(&services.search, &actor, queue))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QueueList { queues })
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// A saved queue with its count.
#[utoipa::path(
    get, path = "/api/v1/queues/{id}", tag = "search",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = QueueView),
        (status = 403, description = "Requesters have no queues", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index is being rebuilt", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_queue(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let found = blocking(move || {
        let engine = &services.engine;
        requester_check(&actor)?;
        let queue = queues::get(engine.store().as_ref(), engine.directory(), &actor, &id)?;
        view(&services.search, &actor, queue)
    })
    .await?;
    Ok(HttpResponse::Ok().json(found))
}

/// Removes a saved queue (its person, its group's members, or an admin of the domain).
#[utoipa::path(
    delete, path = "/api/v1/queues/{id}", tag = "search",
    params(("id" = String, Path)),
    responses(
        (status = 204),
        (status = 403, description = "Requesters have no queues", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_queue(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    blocking(move || {
        let engine = &services.engine;
        requester_check(&actor)?;
        let queue = queues::delete(engine.store().as_ref(), engine.directory(), &actor, &id)?;
        if let Err(error) = usm_engine::auth::audit(
            engine.store().as_ref(),
            &actor,
            "queue.delete",
            &format!("queue:{}", queue.id),
            Some(&std::collections::BTreeSet::from([queue.domain.clone()])),
            None,
            None,
        ) {
            tracing::error!(%error, "cannot write the audit entry");
        }
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Paging of a queue's records.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct QueuePageParams {
    /// Page size (default 50, max 500).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of a saved queue's records, in its order.
#[utoipa::path(
    get, path = "/api/v1/queues/{id}/records", tag = "search",
    params(("id" = String, Path), QueuePageParams),
    responses(
        (status = 200, body = RecordPage),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Requesters have no queues", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index is being rebuilt", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn queue_records(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: actix_web::HttpRequest,
    id: web::Path<String>,
    params: web::Query<QueuePageParams>,
) -> Result<HttpResponse, ApiError> {
    let QueuePageParams { limit, cursor } = params.into_inner();
    let services = services.into_inner();
    let hits = blocking(move || {
        let engine = &services.engine;
        requester_check(&actor)?;
        let limit = engine.list_page_size(limit)?;
        let queue = queues::get(engine.store().as_ref(), engine.directory(), &actor, &id)?;
        let filter = queue.filter.for_caller(&actor);
        services.search.queue(
            engine,
            &actor,
            &filter,
            queue.sort,
            limit,
            cursor.as_deref(),
        )
    })
    .await?;
    let page = RecordPage::plain(hits.records, hits.next_cursor);
    Ok(crate::headers::page_response(&request, &page))
}

fn requester_check(actor: &Actor) -> Result<(), SearchError> {
    if actor.works_records() {
        Ok(())
    } else {
        Err(SearchError::Forbidden(
            "queues are for those who work records".into(),
        ))
    }
}
