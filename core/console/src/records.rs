//! Agents' pages: queues, a record with its conversation, clocks and history (each write's
//! pipeline trace), state changes, replies, and the create form from the kind's schema.

use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::{Value, context};
use serde::Serialize;
use usm_api::{ApiError, ListParams, Services};
use usm_engine::{NewRecord, conversation::NewComment};
use usm_model::{Decision, Domain, ErrorCode, Kind, Record, Writer};

use crate::{
    form::{self, FormBody},
    render::{Refusal, see_other, value_of},
    signin::{Visitor, checked_form, page_for},
};

/// Runs blocking engine work off the async executor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    web::block(work).await.map_err(ApiError::from)?
}

/// The queues every agent has: the API's filters, named.
const QUEUES: &[(&str, &str)] = &[
    ("queue_my_work", "assignee=me&sort=-updated_at"),
    ("queue_my_requests", "requester=me&sort=-updated_at"),
    ("queue_breached", "sla=breached&sort=sla_due"),
    ("queue_warning", "sla=warning&sort=sla_due"),
    ("queue_all", ""),
];

/// The columns a queue can be sorted by.
const SORTS: &[&str] = &["created_at", "updated_at", "priority", "sla_due"];

fn encoded(pairs: &[(&str, &str)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, value);
    }
    query.finish()
}

/// `GET /ui/records?…`: a queue, taking the API listing's filters.
pub async fn queue(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
) -> Result<HttpResponse, Refusal> {
    let query = request.query_string().to_owned();
    let parse = |count: bool| -> Result<ListParams, Refusal> {
        let params = web::Query::<ListParams>::from_query(&query)
            .map_err(|error| Refusal::BadForm(format!("the queue's filters: {error}")))?
            .into_inner();
        Ok(ListParams {
            count: Some(count),
            ..params
        })
    };
    let with_count = parse(true)?;
    let without_count = parse(false)?;
    let filters: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name != "cursor" && name != "sort" && name != "count")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let sorted = with_count.sort.clone();
    let actor = visitor.actor.clone();
    let directory = std::sync::Arc::clone(services.engine.directory());
    let services_domains: Vec<Domain> = services
        .engine
        .domains()
        .iter()
        .filter(|domain| visitor.actor.in_domain(domain))
        .cloned()
        .collect();
    let services = services.into_inner();
    let (page, saved) = blocking(move || {
        // Counts come from the search index; while it is rebuilt (at a first start, say) the
        // listing shows without them rather than not at all.
        match usm_api::list_page(&services, &actor, with_count) {
            Ok(page) => Ok((page, saved_queues(&services, &actor)?)),
            Err(error) if error.problem().code == ErrorCode::SearchRebuilding => Ok((
                usm_api::list_page(&services, &actor, without_count)?,
                Vec::new(),
            )),
            Err(error) => Err(error.into()),
        }
    })
    .await?;
    let filter_pairs: Vec<(&str, &str)> = filters
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sort_links: Vec<Value> = SORTS
        .iter()
        .map(|column| {
            let descending = sorted.as_deref() == Some(&format!("-{column}"));
            let next = if sorted.as_deref() == Some(*column) {
                format!("-{column}")
            } else {
                (*column).to_owned()
            };
            let mut pairs = filter_pairs.clone();
            pairs.push(("sort", &next));
            context! {
                column => *column,
                href => format!("/ui/records?{}", encoded(&pairs)),
                active => sorted.as_deref().is_some_and(|s| s.trim_start_matches('-') == *column),
                descending => descending,
            }
        })
        .collect();
    let next_page = page.next_cursor.as_ref().map(|cursor| {
        let mut pairs = filter_pairs.clone();
        if let Some(sort) = &sorted {
            pairs.push(("sort", sort));
        }
        pairs.push(("cursor", cursor));
        format!("/ui/records?{}", encoded(&pairs))
    });
    let mut queues: Vec<Value> = QUEUES
        .iter()
        .map(|(label, query)| {
            context! { label => *label, href => format!("/ui/records?{query}"),
            current => *query == request.query_string() }
        })
        .collect();
    // "My group": each group of each domain the agent is a member of.
    for domain in services_domains {
        for group in directory.groups_of(&visitor.actor.name, &domain) {
            let query = encoded(&[
                ("domain", domain.as_ref()),
                ("assignment_group", &group),
                ("sort", "-updated_at"),
            ]);
            queues.push(context! {
                group => group, href => format!("/ui/records?{query}"),
                current => query == request.query_string(),
            });
        }
    }
    page_for(
        &visitor,
        "records.html",
        context! {
            records => value_of(&page.records),
            total => page.total,
            next_page => next_page,
            queues => queues,
            saved => value_of(&saved),
            sorts => sort_links,
            current => filters.iter().cloned().collect::<std::collections::BTreeMap<String, String>>(),
        },
    )
}

/// The saved queues the caller sees, each with its count and a link to its listing.
fn saved_queues(services: &Services, actor: &usm_model::Actor) -> Result<Vec<Value>, Refusal> {
    if !actor.works_records() {
        return Ok(Vec::new());
    }
    let engine = &services.engine;
    let queues = usm_search::queues::list(engine.store().as_ref(), engine.directory(), actor)
        .map_err(ApiError::from)?;
    queues
        .into_iter()
        .map(|queue| {
            let count = services
                .search
                .count(actor, &queue.filter.clone().for_caller(actor))
                .map_err(ApiError::from)?;
            let mut pairs: Vec<(String, String)> = match serde_json::to_value(&queue.filter) {
                Ok(serde_json::Value::Object(members)) => members
                    .into_iter()
                    .filter_map(|(name, value)| match value {
                        serde_json::Value::String(s) => Some((name, s)),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if let Ok(serde_json::Value::String(sort)) = serde_json::to_value(queue.sort) {
                pairs.push(("sort".to_owned(), sort));
            }
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            Ok(context! { name => queue.name, count => count,
            href => format!("/ui/records?{}", encoded(&pairs)) })
        })
        .collect()
}

/// A transition the caller may take from the record's state.
#[derive(Debug, Serialize)]
struct Move {
    to: String,
    category: String,
}

/// `GET /ui/records/{id}`: the record, its conversation, approvals, clocks and history.
pub async fn record(
    services: web::Data<Services>,
    visitor: Visitor,
    id: web::Path<String>,
) -> Result<HttpResponse, Refusal> {
    let actor = visitor.actor.clone();
    let engine = services.engine.clone();
    let services = services.into_inner();
    let view = blocking(move || {
        let record = engine.get(&actor, &id).map_err(ApiError::from)?;
        let sla = engine
            .sla(&record)
            .map_err(|error| ApiError::from(usm_engine::EngineError::from(error)))?;
        let comments = engine
            .comments(&actor, &id, 0, Some(200))
            .map_err(ApiError::from)?;
        let history = engine
            .history(&actor, &id, 0, Some(200))
            .map_err(ApiError::from)?;
        let approvals = engine.approvals(&actor, &id).map_err(ApiError::from)?;
        let attachments = engine.attachments(&actor, &id).map_err(ApiError::from)?;
        let moves = moves(&engine, &actor, &record);
        let writable = engine.writable(&record).is_ok();
        let edit = edit_fields(&services, &actor, &record)?;
        Ok(context! {
            record => value_of(&record),
            sla => value_of(&sla),
            comments => value_of(&comments),
            history => value_of(&history),
            approvals => value_of(&approvals),
            attachments => value_of(&attachments),
            moves => value_of(&moves),
            edit => value_of(&edit),
            writable => writable,
            requester => is_requester(&actor, &record),
        })
    })
    .await?;
    page_for(&visitor, "record.html", view)
}

fn is_requester(actor: &usm_model::Actor, record: &Record) -> bool {
    let requester = record
        .fields
        .get("requester")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(&record.created_by);
    requester == actor.name || requester == actor.id
}

fn moves(engine: &usm_engine::Engine, actor: &usm_model::Actor, record: &Record) -> Vec<Move> {
    let catalog = engine.catalog_in(&record.domain);
    let Some(def) = catalog.get(&record.kind) else {
        return Vec::new();
    };
    let lifecycle = &def.lifecycle;
    lifecycle
        .allowed_from(&record.state)
        .into_iter()
        .filter(|to| lifecycle.check(&record.state, to, actor).is_ok())
        .map(|to| Move {
            category: lifecycle
                .state(&to)
                .map(|s| format!("{:?}", s.category).to_lowercase())
                .unwrap_or_default(),
            to: to.to_string(),
        })
        .collect()
}

fn record_page(id: &str) -> String {
    format!(
        "/ui/records/{}",
        url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    )
}

/// The shape of every form a record page posts: check the session's CSRF token, do `act` off
/// the executor as the visitor, and go back to the record (at `anchor`).
async fn act_on_record(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
    anchor: &'static str,
    act: impl FnOnce(&Services, &usm_model::Actor, &str, FormBody) -> Result<(), Refusal>
    + Send
    + 'static,
) -> Result<HttpResponse, Refusal> {
    let form = checked_form(&request, &visitor, &body)?;
    let id = id.into_inner();
    let (actor, target) = (visitor.actor.clone(), id.clone());
    let services = services.into_inner();
    blocking(move || act(&services, &actor, &target, form)).await?;
    Ok(see_other(&format!("{}{anchor}", record_page(&id))))
}

/// `POST /ui/records/{id}/transition`: `to`, `csrf`, optional `comment`, and the fields to
/// change in the same write (only those that differ from the record's are sent). Without `to`,
/// the fields are saved and the state stays.
pub async fn transition(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    act_on_record(
        services,
        visitor,
        request,
        id,
        body,
        "",
        |services, actor, id, form| {
            let engine = &services.engine;
            let record = engine.get(actor, id).map_err(ApiError::from)?;
            let fields = edit_fields(services, actor, &record)?;
            let changed = changed_fields(&form, &fields, &record)?;
            // The version the agent's page showed: a change made meanwhile is not overwritten.
            let expected = form
                .get("version")
                .and_then(|v| v.parse::<u64>().ok())
                .or(Some(record.version));
            match form.text("to") {
                Some(to) => engine.transition_with_fields(
                    actor,
                    id,
                    &to,
                    form.text("comment"),
                    expected,
                    (!changed.is_empty()).then_some(changed),
                ),
                None if changed.is_empty() => return Ok(()),
                None => engine.update(
                    actor,
                    id,
                    usm_engine::RecordPatch {
                        title: None,
                        fields: Some(changed),
                        links: None,
                    },
                    expected,
                ),
            }
            .map(drop)
            .map_err(|error| Refusal::Api(error.into()))
        },
    )
    .await
}

/// `POST /ui/records/{id}/comments`: a public reply or an internal note.
pub async fn comment(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    act_on_record(
        services,
        visitor,
        request,
        id,
        body,
        "#conversation",
        |services, actor, id, form| {
            let text = form
                .text("body")
                .ok_or_else(|| Refusal::BadForm("the reply is empty".into()))?;
            let visibility = match form.get("visibility").unwrap_or("public") {
                "internal" => usm_model::Visibility::Internal,
                _ => usm_model::Visibility::Public,
            };
            services
                .engine
                .add_comment(
                    actor,
                    id,
                    NewComment {
                        body: text,
                        visibility,
                    },
                    None,
                )
                .map(drop)
                .map_err(|error| Refusal::Api(error.into()))
        },
    )
    .await
}

/// `POST /ui/records/{id}/attachments`: the upload form, `multipart/form-data` with the
/// `csrf` field before the file; stored as the API stores uploads.
pub async fn attach(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, Refusal> {
    let id = id.into_inner();
    let guard = visitor.upload_guard();
    usm_api::upload_as(
        &services,
        visitor.actor.clone(),
        id.clone(),
        &request,
        body,
        Some(guard),
    )
    .await?;
    Ok(see_other(&format!("{}#attachments-h", record_page(&id))))
}

/// `GET /ui/records/{id}/attachments/{attachment}`: the file, as the API serves it.
pub async fn download(
    services: web::Data<Services>,
    visitor: Visitor,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Refusal> {
    let (id, attachment) = path.into_inner();
    Ok(usm_api::download_as(&services, visitor.actor.clone(), id, attachment).await?)
}

/// `POST /ui/records/{id}/confirmation`: the requester accepts or rejects a resolution.
pub async fn confirmation(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    act_on_record(
        services,
        visitor,
        request,
        id,
        body,
        "",
        |services, actor, id, form| {
            let accept = match form.get("accept") {
                Some("true") => true,
                Some("false") => false,
                _ => return Err(Refusal::BadForm("accept is true or false".into())),
            };
            services
                .engine
                .confirm(actor, id, accept, form.text("comment"))
                .map(drop)
                .map_err(|error| Refusal::Api(error.into()))
        },
    )
    .await
}

/// `POST /ui/records/{id}/approvals`: an approver's decision.
pub async fn approve(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    act_on_record(
        services,
        visitor,
        request,
        id,
        body,
        "",
        |services, actor, id, form| {
            let decision = match form.get("decision") {
                Some("approve") => Decision::Approve,
                Some("reject") => Decision::Reject,
                _ => return Err(Refusal::BadForm("decision is approve or reject".into())),
            };
            services
                .engine
                .approve(actor, id, decision, form.text("comment"), None)
                .map(drop)
                .map_err(|error| Refusal::Api(error.into()))
        },
    )
    .await
}

/// Query of the create form.
#[derive(Debug, serde::Deserialize)]
pub struct NewQuery {
    kind: Option<String>,
    domain: Option<String>,
}

/// The kind's fields the caller may set when creating a record, as form fields.
fn create_fields(
    services: &Services,
    actor: &usm_model::Actor,
    kind: &str,
    domain: &str,
) -> Result<Vec<form::Field>, Refusal> {
    let catalog = services
        .engine
        .kinds_for(actor, Some(domain))
        .map_err(ApiError::from)?;
    let unknown = || {
        ApiError::new(
            ErrorCode::UnknownKind,
            format!("there is no kind {kind:?} in {domain}"),
        )
    };
    let name = Kind::new(kind).map_err(|_| unknown())?;
    let def = catalog.get(&name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownKind,
            format!("there is no kind {kind:?} in {domain}"),
        )
    })?;
    Ok(form::fields_of(&def.schema, |name| {
        def.writer(name).admits_client(actor, true) && !matches!(def.writer(name), Writer::System)
    }))
}

/// The kind's fields the caller may change on `record`, prefilled with its values.
fn edit_fields(
    services: &Services,
    actor: &usm_model::Actor,
    record: &Record,
) -> Result<Vec<form::Field>, Refusal> {
    let catalog = services
        .engine
        .kinds_for(actor, Some(record.domain.as_ref()))
        .map_err(ApiError::from)?;
    let Some(def) = catalog.get(&record.kind) else {
        return Ok(Vec::new());
    };
    let mut fields = form::fields_of(&def.schema, |name| {
        def.writer(name).admits_client(actor, false)
    });
    for field in &mut fields {
        field.value = match record.fields.get(&field.name) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
    }
    Ok(fields)
}

/// The posted fields that differ from the record's: what a change sends as its merge patch.
fn changed_fields(
    form: &FormBody,
    fields: &[form::Field],
    record: &Record,
) -> Result<serde_json::Map<String, serde_json::Value>, Refusal> {
    let posted = form::values_of(form, fields)?;
    Ok(posted
        .into_iter()
        .filter(|(name, value)| match record.fields.get(name) {
            Some(current) => current != value,
            // An unticked box for a flag never set changes nothing.
            None => value != &serde_json::Value::Bool(false),
        })
        .collect())
}

/// The domains the caller works in.
fn my_domains(services: &Services, actor: &usm_model::Actor) -> Vec<String> {
    services
        .engine
        .domains()
        .iter()
        .filter(|domain| actor.in_domain(domain))
        .map(Domain::to_string)
        .collect()
}

/// `GET /ui/new?kind=…&domain=…`: the create form, generated from the kind's JSON Schema.
pub async fn new_form(
    services: web::Data<Services>,
    visitor: Visitor,
    query: web::Query<NewQuery>,
) -> Result<HttpResponse, Refusal> {
    let domains = my_domains(&services, &visitor.actor);
    let domain = query
        .domain
        .clone()
        .or_else(|| domains.first().cloned())
        .unwrap_or_default();
    let actor = visitor.actor.clone();
    let catalog = services
        .engine
        .kinds_for(&actor, Some(&domain))
        .map_err(ApiError::from)?;
    let kinds: Vec<String> = catalog.kinds().map(|def| def.name.to_string()).collect();
    let kind = query.kind.clone().unwrap_or_else(|| "incident".to_owned());
    let fields = create_fields(&services, &actor, &kind, &domain)?;
    page_for(
        &visitor,
        "new.html",
        context! { kind => kind, domain => domain, kinds => kinds, domains => domains,
        fields => value_of(&fields) },
    )
}

/// `POST /ui/records`: creates a record from the generated form.
pub async fn create(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    let form = checked_form(&request, &visitor, &body)?;
    let kind = form
        .text("kind")
        .ok_or_else(|| Refusal::BadForm("which kind? (`kind`)".into()))?;
    let domain = form
        .text("domain")
        .ok_or_else(|| Refusal::BadForm("which domain? (`domain`)".into()))?;
    let title = form
        .text("title")
        .ok_or_else(|| Refusal::BadForm("a record needs a title".into()))?;
    let fields = create_fields(&services, &visitor.actor, &kind, &domain)?;
    let values = form::values_of(&form, &fields)?;
    let new: NewRecord = serde_json::from_value(serde_json::json!({
        "kind": kind, "domain": domain, "title": title, "fields": values,
    }))
    .map_err(|error| Refusal::BadForm(error.to_string()))?;
    let (engine, actor) = (services.engine.clone(), visitor.actor.clone());
    let created = blocking(move || {
        engine
            .create(&actor, new, None)
            .map_err(|error| Refusal::Api(error.into()))
    })
    .await?;
    Ok(see_other(&record_page(&created.record.id.to_string())))
}
