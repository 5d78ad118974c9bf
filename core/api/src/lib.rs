//! `usm-api` is the only crate that knows HTTP. It maps requests onto the engine, engine errors
//! onto `application/problem+json` documents with stable codes, and describes itself in an
//! OpenAPI document generated from the handlers. [`create_app`] builds the whole application;
//! the binary and the end-to-end tests both use it.

mod admin;
mod attachments;
mod batch;
mod body;
mod catalog;
mod directory;
mod headers;
mod inbound;
mod metrics;
mod modules;
mod notifications;
mod principal;
mod problem;
mod records;
mod search;
mod shape;
mod tmf621;

use std::{sync::Arc, time::Instant};

use actix_web::{
    App, HttpResponse,
    body::MessageBody,
    dev::{ServiceFactory, ServiceRequest, ServiceResponse},
    web,
};
use serde::Serialize;
use usm_engine::{Engine, Registry, auth::Tokens};
use usm_model::ErrorCode;
use utoipa::OpenApi;

pub use admin::{create_token_audited, redacted_url, revoke_token_audited};
pub use attachments::{FormGuard, download_as, form_file, upload_as};
pub use metrics::HttpMetrics;
pub use modules::MAX_BUNDLE_UPLOAD;
pub use principal::{RateLimiter, admit, limit_address};
pub use problem::{ApiError, Problem, status_of};
pub use records::{ListParams, RecordPage, list_page};

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Every `/api/v1` route needs a bearer token (turn off only for local experiments).
    pub auth_required: bool,
    /// `/healthz` answers without a token.
    pub public_health: bool,
    /// `/metrics` answers without a token.
    pub public_metrics: bool,
    /// Where webhooks may deliver.
    pub webhook_policy: usm_engine::webhooks::WebhookPolicy,
    /// A request body that sends nothing for this long fails with `408`.
    pub body_timeout: std::time::Duration,
    /// Largest attachment, in bytes (a record's attachments in all: the engine's `Limits`).
    pub attachment_max_bytes: u64,
    /// Largest inbound e-mail message, in bytes.
    pub inbound_max_bytes: usize,
    /// Bounds on a request's head, checked before anything else.
    pub head: HeadLimits,
    /// A change of a record (edit, transition, approval) without `If-Match` is `428`.
    pub require_if_match: bool,
}

/// Bounds on a request's head, checked before routing, authentication or any handler, each
/// answered with a problem document. actix-http's own bounds lie above them (a head over
/// 128 KiB or with more than 96 header lines: an empty `431`; a malformed head: an empty `400`).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request target (path and query), in bytes; longer is `414`.
    pub max_url_bytes: usize,
    /// Most header lines; more is `431`.
    pub max_headers: usize,
    /// Most header bytes (names, values and their separators); more is `431`.
    pub max_header_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_url_bytes: 8 * 1024,
            max_headers: 64,
            max_header_bytes: 32 * 1024,
        }
    }
}

impl HeadLimits {
    /// Refuses a request whose target or headers pass the bounds.
    fn check(&self, request: &actix_web::HttpRequest) -> Result<(), ApiError> {
        let uri = request.uri();
        let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.scheme_str().map_or(0, |s| s.len() + 3);
        if target > self.max_url_bytes {
            return Err(ApiError::new(
                ErrorCode::UriTooLong,
                format!(
                    "the request target is {target} bytes long; at most {} are accepted",
                    self.max_url_bytes
                ),
            ));
        }
        let headers = request.headers();
        if headers.len() > self.max_headers {
            return Err(ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!(
                    "the request has {} header lines; at most {} are accepted",
                    headers.len(),
                    self.max_headers
                ),
            ));
        }
        // Each line as sent: name, ": ", value, CRLF.
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if bytes > self.max_header_bytes {
            return Err(ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!(
                    "the request headers are {bytes} bytes; at most {} are accepted",
                    self.max_header_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            auth_required: true,
            public_health: true,
            public_metrics: false,
            webhook_policy: usm_engine::webhooks::WebhookPolicy::default(),
            body_timeout: std::time::Duration::from_secs(10),
            attachment_max_bytes: 25 * 1024 * 1024,
            inbound_max_bytes: 40 * 1024 * 1024,
            head: HeadLimits::default(),
            require_if_match: false,
        }
    }
}

/// Everything the handlers need, shared across workers.
pub struct Services {
    /// The record engine.
    pub engine: Arc<Engine>,
    /// Installed modules and workflows.
    pub registry: Arc<Registry>,
    /// API tokens.
    pub tokens: Arc<Tokens>,
    /// Scheduled, event-driven and on-demand scripts.
    pub automations: Arc<usm_script_host::automation::Automations>,
    /// Requests per principal.
    pub rate_limiter: RateLimiter,
    /// Request counters for `/metrics`.
    pub http_metrics: metrics::HttpMetrics,
    /// HTTP settings.
    pub config: ApiConfig,
    /// Attachment contents.
    pub blobs: usm_blobs::BlobStore,
    /// Queues and full-text search.
    pub search: Arc<usm_search::SearchIndex>,
    /// Improve-process KPIs.
    pub kpis: Arc<usm_kpis::KpiService>,
    /// Inbound e-mail.
    pub mailgate: Arc<usm_mailgate::Mailgate>,
    /// The service catalog.
    pub catalog: Arc<usm_service_catalog::ServiceCatalog>,
}

/// The OpenAPI description of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "usm", description = "Unified Service Management server"),
    modifiers(&BearerAuth, &CommonProblems),
    security(("bearer" = [])),
    paths(
        records::create_record,
        tmf621::create_ticket,
        tmf621::list_tickets,
        tmf621::get_ticket,
        tmf621::patch_ticket,
        tmf621::register_listener,
        tmf621::unregister_listener,
        batch::batch,
        records::list_records,
        records::get_record,
        records::patch_record,
        records::transition_record,
        records::record_history,
        records::record_sla,
        records::create_approval,
        records::list_approvals,
        records::confirm_resolution,
        records::add_comment,
        records::list_comments,
        attachments::upload,
        attachments::list,
        attachments::download,
        attachments::remove,
        pipelines,
        kinds,
        modules::list_modules,
        modules::get_module,
        modules::install_module,
        modules::preview_module,
        modules::enable_module,
        modules::disable_module,
        modules::remove_module,
        modules::list_workflows,
        modules::get_workflow,
        modules::import_workflow,
        admin::create_token,
        directory::create_person,
        directory::list_people,
        directory::get_person,
        directory::patch_person,
        directory::delete_person,
        directory::create_group,
        directory::list_groups,
        directory::get_group,
        directory::patch_group,
        directory::delete_group,
        search::search,
        search::create_queue,
        search::list_queues,
        search::get_queue,
        search::delete_queue,
        search::queue_records,
        catalog::list_items,
        catalog::create_item,
        catalog::get_item,
        catalog::patch_item,
        catalog::delete_item,
        catalog::order_item,
        notifications::deliveries,
        notifications::list_rules,
        notifications::put_rule,
        notifications::delete_rule,
        notifications::list_templates,
        notifications::put_template,
        notifications::delete_template,
        inbound::receive,
        admin::list_tokens,
        admin::revoke_token,
        admin::audit_log,
        admin::create_webhook,
        admin::list_webhooks,
        admin::delete_webhook,
        admin::webhook_deliveries,
        admin::redeliver,
        records::kpis,
        admin::list_automations,
        admin::define_automation,
        admin::run_automation,
        admin::automation_runs,
        healthz,
    ),
    components(schemas(Problem, Health, usm_model::ErrorCode)),
    servers((url = "/", description = "The server that serves this document")),
    tags(
        (name = "records", description = "Agreements, changes, incidents, requests, tasks, … and their lifecycles"),
        (name = "approvals", description = "Approval decisions on records"),
        (name = "pipelines", description = "The steps that run on each write"),
        (name = "modules", description = "Framework modules: install, enable per domain, upgrade, remove"),
        (name = "workflows", description = "USM workflow templates, imported and exported as USM-WIF"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "directory", description = "People and groups: admins of a domain manage them, agents read them"),
        (name = "search", description = "Full-text search and saved queues, from an index that follows commits"),
        (name = "inbound", description = "E-mail in: messages an MTA hands over become records and replies"),
        (name = "catalog", description = "The service catalog: items with a form, an approval and fulfilment tasks, ordered as requests"),
        (name = "notifications", description = "E-mail to the people a record concerns: rules and template sets per domain, the delivery log (admin)"),
        (name = "audit", description = "The audit log of admin actions (admin)"),
        (name = "kpis", description = "Improve: KPIs from history"),
        (name = "automations", description = "Scheduled, event-driven and on-demand rhai scripts (admin)"),
        (name = "webhooks", description = "Event subscriptions delivered as signed CloudEvents (admin)"),
        (name = "operations", description = "Health and API description"),
        (name = "tmf621", description = "TM Forum's Trouble Ticket API (TMF621 v4): trouble tickets are incidents, with the same rights and pipelines"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme every `/api/v1` route uses.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Documents the problems any route can answer with: bad parameters or bodies, missing or
/// invalid tokens, rate limiting and internal failures (only what a route lists itself is
/// specific to it).
struct CommonProblems;

impl utoipa::Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            ContentBuilder, Ref, RefOr,
            path::Operation,
            response::{Response, ResponseBuilder},
        };
        let problem = |description: &str| -> RefOr<Response> {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        };
        let integer_header = |description: &str| {
            utoipa::openapi::HeaderBuilder::new()
                .schema(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::Integer),
                )
                .description(Some(description))
                .build()
        };
        let retry_after = || integer_header("Seconds to wait before trying again");
        let add = |operation: &mut Operation, api: bool, admitted: bool| {
            // A one-line doc comment becomes only the summary; generators show the description.
            if operation.description.is_none() {
                operation.description = operation.summary.clone();
            }
            // Every body the API reads is required; a description without it lets generated
            // clients send none.
            if let Some(body) = &mut operation.request_body {
                body.required = Some(utoipa::openapi::Required::True);
            }
            let has_body = operation.request_body.is_some();
            let responses = &mut operation.responses.responses;
            let mut common = vec![
                ("400", "Invalid parameters or body"),
                (
                    "405",
                    "Not a method of this path; `Allow` lists those that are",
                ),
                ("414", "Request target too long"),
                ("431", "Too many or too large request headers"),
                ("500", "Internal error"),
            ];
            if api {
                common.push(("401", "No valid bearer token"));
                common.push((
                    "403",
                    "The token's roles or domains do not allow this (admin-only routes, scoped tokens)",
                ));
                common.push(("429", "Rate limited; see Retry-After"));
            }
            if api && admitted {
                common.push(("503", "Overloaded: nothing was written; see Retry-After"));
            }
            if has_body {
                common.push(("408", "The body stopped arriving"));
                common.push(("413", "Body too large"));
                common.push(("415", "Unsupported content type"));
            }
            for (status, description) in common {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description));
            }
            for status in ["429", "503"] {
                if let Some(RefOr::T(response)) = responses.get_mut(status) {
                    response
                        .headers
                        .entry("Retry-After".to_owned())
                        .or_insert_with(retry_after);
                }
            }
            if let Some(RefOr::T(response)) = responses.get_mut("405") {
                response
                    .headers
                    .entry("Allow".to_owned())
                    .or_insert_with(|| {
                        utoipa::openapi::HeaderBuilder::new()
                            .schema(
                                utoipa::openapi::ObjectBuilder::new()
                                    .schema_type(utoipa::openapi::schema::Type::String),
                            )
                            .description(Some("The methods of the path, e.g. `GET, PATCH`"))
                            .build()
                    });
            }
            if api {
                for response in responses.values_mut() {
                    if let RefOr::T(response) = response {
                        for (name, description) in [
                            ("RateLimit-Limit", "Requests the caller may send at once"),
                            ("RateLimit-Remaining", "Requests the caller has left now"),
                            (
                                "RateLimit-Reset",
                                "Seconds until the caller's budget is full",
                            ),
                        ] {
                            response
                                .headers
                                .entry(name.to_owned())
                                .or_insert_with(|| integer_header(description));
                        }
                    }
                }
            }
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/api/") || path.starts_with("/tmf-api/");
            // Writes of records wait for a pipeline turn and may be turned away.
            let admitted = path.starts_with("/api/v1/records") || path.ends_with("/order");
            if let Some(get) = &mut item.get {
                add(get, api, false);
            }
            for operation in [
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add(operation, api, admitted);
            }
        }
    }
}

/// Health of the server.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` when the server serves requests.
    pub status: &'static str,
}

/// Reports that the server is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz(services: web::Data<Services>, request: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::{FromRequest as _, ResponseError as _};
    let allowed = if services.config.public_health {
        principal::limit_address(&services, &request)
    } else {
        principal::Principal::extract(&request).await.map(drop)
    };
    match allowed {
        Ok(()) => HttpResponse::Ok().json(Health { status: "ok" }),
        Err(error) => error.error_response(),
    }
}

/// The composed pipelines in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PipelineList {
    /// One entry per (domain, process, hook, phase) with steps.
    pub pipelines: Vec<usm_engine::PipelineView>,
}

/// Lists the composed pipelines: which steps run, in which order, for each domain, process,
/// hook and phase.
#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", responses((status = 200, body = PipelineList)))]
async fn pipelines(
    services: web::Data<Services>,
    _principal: principal::Principal,
) -> HttpResponse {
    HttpResponse::Ok().json(PipelineList {
        pipelines: services.engine.pipelines().describe(),
    })
}

/// A record kind: its id prefix, process, field schema, lifecycle, and the modules that added
/// or extended it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindView {
    /// The kind's name, e.g. `incident`.
    pub name: String,
    /// Id prefix, e.g. `INC`.
    pub prefix: String,
    /// The USM process the kind belongs to.
    pub process: usm_model::Process,
    /// JSON Schema (draft 2020-12) for the record's `fields`.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    /// The kind's state machine.
    pub lifecycle: usm_model::Lifecycle,
    /// Modules that added the kind or extended it; empty for an unextended core kind.
    pub modules: Vec<String>,
    /// Who writes each field (`requester`, `agent`, `module:<id>`, `system`); a field not
    /// listed is written by agents.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub writers: std::collections::BTreeMap<String, usm_model::Writer>,
    /// The fields (and `title`) approvals are bound to.
    pub material: Vec<String>,
}

/// The record kinds in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindList {
    /// By name.
    pub kinds: Vec<KindView>,
}

/// Query parameters of the kinds listing.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KindsParams {
    /// Only the kinds in force in this domain, as the modules enabled there shape them.
    pub domain: Option<String>,
}

/// Lists the record kinds: the USM core's and those modules add, with the fields and lifecycle
/// states modules add to them. A module's additions exist only in the domains where it is
/// enabled: with `domain`, the kinds of that domain; without, every kind in force somewhere.
#[utoipa::path(get, path = "/api/v1/kinds", tag = "records", params(KindsParams),
    responses((status = 200, body = KindList), (status = 403, body = Problem, content_type = "application/problem+json")))]
async fn kinds(
    services: web::Data<Services>,
    principal::Principal(actor): principal::Principal,
    params: web::Query<KindsParams>,
) -> Result<HttpResponse, ApiError> {
    let catalog = services
        .engine
        .kinds_for(&actor, params.domain.as_deref())?;
    let kinds = catalog
        .kinds()
        .map(|def| KindView {
            name: def.name.to_string(),
            prefix: def.prefix.clone(),
            process: def.process,
            schema: def.schema.clone(),
            lifecycle: def.lifecycle.clone(),
            modules: catalog.contributors(&def.name).to_vec(),
            writers: def.writers.clone(),
            material: def.material.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(KindList { kinds }))
}

async fn openapi_json(
    services: web::Data<Services>,
    request: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // Public, so built once and charged to the caller's address like any anonymous request.
    static DOCUMENT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    principal::limit_address(&services, &request)?;
    let document = DOCUMENT.get_or_init(|| {
        serde_json::to_vec(&ApiDoc::openapi()).unwrap_or_else(|error| {
            tracing::error!(%error, "cannot serialise the OpenAPI document");
            Vec::new()
        })
    });
    Ok(HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(document.clone()))
}

async fn route_not_found(request: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::ResponseError as _;
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("no route for {} {}", request.method(), request.path()),
    )
    .error_response()
}

/// The methods of each path, as the API description declares them: what `Allow` says.
fn allowed_methods(pattern: &str) -> Option<&'static str> {
    static METHODS: std::sync::OnceLock<std::collections::HashMap<String, String>> =
        std::sync::OnceLock::new();
    METHODS
        .get_or_init(|| {
            ApiDoc::openapi()
                .paths
                .paths
                .iter()
                .map(|(path, item)| {
                    let methods: Vec<&str> = [
                        ("GET", item.get.is_some()),
                        ("POST", item.post.is_some()),
                        ("PUT", item.put.is_some()),
                        ("PATCH", item.patch.is_some()),
                        ("DELETE", item.delete.is_some()),
                    ]
                    .into_iter()
                    .filter_map(|(method, declared)| declared.then_some(method))
                    .collect();
                    (path.clone(), methods.join(", "))
                })
                .collect()
        })
        .get(pattern)
        .map(String::as_str)
}

async fn method_not_allowed(request: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::ResponseError as _;
    let mut response = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", request.method(), request.path()),
    )
    .error_response();
    let allow = request
        .match_pattern()
        .and_then(|pattern| allowed_methods(&pattern))
        .and_then(|methods| actix_web::http::header::HeaderValue::from_str(methods).ok());
    if let Some(allow) = allow {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, allow);
    }
    response
}

/// Registers the routes on `config`.
pub fn configure(config: &mut web::ServiceConfig) {
    let resource = |path: &str| web::resource(path).default_service(web::to(method_not_allowed));
    config
        .service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/openapi.json").route(web::get().to(openapi_json)))
        .service(resource("/metrics").route(web::get().to(metrics::metrics)))
        .service(
            web::scope(usm_tmf621::BASE_PATH)
                .service(
                    resource("/troubleTicket")
                        .route(web::get().to(tmf621::list_tickets))
                        .route(web::post().to(tmf621::create_ticket)),
                )
                .service(
                    resource("/troubleTicket/{id}")
                        .route(web::get().to(tmf621::get_ticket))
                        .route(web::patch().to(tmf621::patch_ticket)),
                )
                .service(resource("/hub").route(web::post().to(tmf621::register_listener)))
                .service(
                    resource("/hub/{id}").route(web::delete().to(tmf621::unregister_listener)),
                ),
        )
        .service(
            web::scope("/api/v1")
                .service(resource("/openapi.json").route(web::get().to(openapi_json)))
                .service(resource("/pipelines").route(web::get().to(pipelines)))
                .service(resource("/kinds").route(web::get().to(kinds)))
                .service(
                    resource("/modules")
                        .route(web::get().to(modules::list_modules))
                        .route(web::post().to(modules::install_module)),
                )
                .service(
                    resource("/modules/preview").route(web::post().to(modules::preview_module)),
                )
                .service(
                    resource("/modules/{id}")
                        .route(web::get().to(modules::get_module))
                        .route(web::delete().to(modules::remove_module)),
                )
                .service(
                    resource("/modules/{id}/enable").route(web::post().to(modules::enable_module)),
                )
                .service(
                    resource("/modules/{id}/disable")
                        .route(web::post().to(modules::disable_module)),
                )
                .service(
                    resource("/workflows")
                        .route(web::get().to(modules::list_workflows))
                        .route(web::post().to(modules::import_workflow)),
                )
                .service(resource("/workflows/{slug}").route(web::get().to(modules::get_workflow)))
                .service(
                    resource("/tokens")
                        .route(web::post().to(admin::create_token))
                        .route(web::get().to(admin::list_tokens)),
                )
                .service(resource("/tokens/{id}").route(web::delete().to(admin::revoke_token)))
                .service(
                    resource("/people")
                        .route(web::post().to(directory::create_person))
                        .route(web::get().to(directory::list_people)),
                )
                .service(
                    resource("/people/{id}")
                        .route(web::get().to(directory::get_person))
                        .route(web::patch().to(directory::patch_person))
                        .route(web::delete().to(directory::delete_person)),
                )
                .service(
                    resource("/groups")
                        .route(web::post().to(directory::create_group))
                        .route(web::get().to(directory::list_groups)),
                )
                .service(
                    resource("/groups/{id}")
                        .route(web::get().to(directory::get_group))
                        .route(web::patch().to(directory::patch_group))
                        .route(web::delete().to(directory::delete_group)),
                )
                .service(resource("/search").route(web::get().to(search::search)))
                .service(
                    resource("/queues")
                        .route(web::post().to(search::create_queue))
                        .route(web::get().to(search::list_queues)),
                )
                .service(
                    resource("/queues/{id}")
                        .route(web::get().to(search::get_queue))
                        .route(web::delete().to(search::delete_queue)),
                )
                .service(
                    resource("/queues/{id}/records").route(web::get().to(search::queue_records)),
                )
                .service(
                    resource("/catalog/items")
                        .route(web::get().to(catalog::list_items))
                        .route(web::post().to(catalog::create_item)),
                )
                .service(
                    resource("/catalog/items/{id}")
                        .route(web::get().to(catalog::get_item))
                        .route(web::patch().to(catalog::patch_item))
                        .route(web::delete().to(catalog::delete_item)),
                )
                .service(
                    resource("/catalog/items/{id}/order")
                        .route(web::post().to(catalog::order_item)),
                )
                .service(
                    resource("/notifications/deliveries")
                        .route(web::get().to(notifications::deliveries)),
                )
                .service(
                    resource("/notifications/rules")
                        .route(web::get().to(notifications::list_rules)),
                )
                .service(resource("/inbound/email").route(web::post().to(inbound::receive)))
                .service(
                    resource("/notifications/rules/{domain}/{id}")
                        .route(web::put().to(notifications::put_rule))
                        .route(web::delete().to(notifications::delete_rule)),
                )
                .service(
                    resource("/notifications/templates")
                        .route(web::get().to(notifications::list_templates)),
                )
                .service(
                    resource("/notifications/templates/{domain}/{name}")
                        .route(web::put().to(notifications::put_template))
                        .route(web::delete().to(notifications::delete_template)),
                )
                .service(resource("/audit").route(web::get().to(admin::audit_log)))
                .service(resource("/kpis").route(web::get().to(records::kpis)))
                .service(
                    resource("/automations")
                        .route(web::get().to(admin::list_automations))
                        .route(web::post().to(admin::define_automation)),
                )
                .service(
                    resource("/automations/{id}/run").route(web::post().to(admin::run_automation)),
                )
                .service(
                    resource("/automations/{id}/runs").route(web::get().to(admin::automation_runs)),
                )
                .service(
                    resource("/webhooks")
                        .route(web::post().to(admin::create_webhook))
                        .route(web::get().to(admin::list_webhooks)),
                )
                .service(resource("/webhooks/{id}").route(web::delete().to(admin::delete_webhook)))
                .service(
                    resource("/webhooks/{id}/deliveries")
                        .route(web::get().to(admin::webhook_deliveries)),
                )
                .service(
                    resource("/webhooks/{id}/deliveries/{event}/redeliver")
                        .route(web::post().to(admin::redeliver)),
                )
                .service(
                    resource("/records")
                        .route(web::post().to(records::create_record))
                        .route(web::get().to(records::list_records)),
                )
                .service(resource("/records:batch").route(web::post().to(batch::batch)))
                .service(
                    resource("/records/{id}")
                        .route(web::get().to(records::get_record))
                        .route(web::patch().to(records::patch_record)),
                )
                .service(
                    resource("/records/{id}/transitions")
                        .route(web::post().to(records::transition_record)),
                )
                .service(
                    resource("/records/{id}/history").route(web::get().to(records::record_history)),
                )
                .service(resource("/records/{id}/sla").route(web::get().to(records::record_sla)))
                .service(
                    resource("/records/{id}/approvals")
                        .route(web::post().to(records::create_approval))
                        .route(web::get().to(records::list_approvals)),
                )
                .service(
                    resource("/records/{id}/confirmation")
                        .route(web::post().to(records::confirm_resolution)),
                )
                .service(
                    resource("/records/{id}/comments")
                        .route(web::post().to(records::add_comment))
                        .route(web::get().to(records::list_comments)),
                )
                .service(
                    resource("/records/{id}/attachments")
                        .route(web::post().to(attachments::upload))
                        .route(web::get().to(attachments::list)),
                )
                .service(
                    resource("/records/{id}/attachments/{attachment}")
                        .route(web::get().to(attachments::download))
                        .route(web::delete().to(attachments::remove)),
                ),
        );
}

/// Every error is a problem document: an error response a layer below the handlers made in
/// another form (actix's own `text/plain` 413, for one) is replaced by the problem for its
/// status.
fn as_problem<B: MessageBody + 'static>(
    response: ServiceResponse<B>,
) -> ServiceResponse<actix_web::body::BoxBody> {
    use actix_web::ResponseError as _;
    let status = response.status();
    // The console answers people with pages, errors included.
    if response.request().path().starts_with("/ui") {
        return response.map_into_boxed_body();
    }
    let is_problem = response
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    match problem::problem_for_status(status) {
        Some(problem) if !is_problem => {
            let (request, _) = response.into_parts();
            ServiceResponse::new(request, problem.error_response())
        }
        _ => response.map_into_boxed_body(),
    }
}

/// Builds the application: routes, extractor limits, error mapping and request logging.
pub fn create_app(
    services: web::Data<Services>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = services.config.max_body_bytes;
    let body_timeout = services.config.body_timeout;
    let head_limits = services.config.head;
    let observed = services.clone();
    App::new()
        .app_data(services)
        .app_data(
            web::JsonConfig::default()
                .limit(limit)
                .error_handler(|error, _| problem::json_error(error).into()),
        )
        .app_data(web::PayloadConfig::default().limit(limit))
        .app_data(
            web::QueryConfig::default()
                .error_handler(|error, _| problem::query_error(error).into()),
        )
        .app_data(
            web::PathConfig::default().error_handler(|error, _| problem::path_error(error).into()),
        )
        .configure(configure)
        .default_service(web::to(route_not_found))
        .wrap_fn(move |mut request, service| {
            use actix_web::{HttpMessage as _, dev::Service as _};
            let payload = body::IdleTimeout::new(request.take_payload(), body_timeout);
            let stream: std::pin::Pin<Box<dyn futures_core::Stream<Item = _>>> = Box::pin(payload);
            request.set_payload(actix_web::dev::Payload::from(stream));
            let response = service.call(request);
            async move {
                let mut response = as_problem(response.await?);
                // The caller's budget, on every answer to an authenticated request.
                let quota = response
                    .request()
                    .extensions()
                    .get::<principal::Quota>()
                    .copied();
                if let Some(quota) = quota {
                    quota.write(response.headers_mut());
                }
                Ok(response)
            }
        })
        // Before routing, authentication and rate limiting: a head past our bounds gets no
        // further.
        .wrap_fn(move |request, service| {
            use actix_web::{ResponseError as _, dev::Service as _};
            let outcome = match head_limits.check(request.request()) {
                Ok(()) => Ok(service.call(request)),
                Err(error) => Err(request.into_response(error.error_response())),
            };
            async move {
                match outcome {
                    Ok(response) => response.await,
                    Err(refused) => Ok(refused),
                }
            }
        })
        .wrap_fn(move |request, service| {
            use actix_web::dev::Service as _;
            let started = Instant::now();
            let method = request.method().clone();
            let path = request.path().to_owned();
            let observed = observed.clone();
            let response = service.call(request);
            async move {
                let response = response.await?;
                let status = response.status().as_u16();
                let elapsed = started.elapsed();
                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                observed.http_metrics.observe(
                    response.request().match_pattern().as_deref(),
                    method.as_str(),
                    status,
                    elapsed.as_secs_f64(),
                );
                if status >= 500 {
                    tracing::warn!(%method, %path, status, micros, "request failed");
                } else {
                    tracing::debug!(%method, %path, status, micros, "request");
                }
                Ok(response)
            }
        })
}
