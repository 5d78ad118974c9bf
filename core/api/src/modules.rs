//! `/api/v1/modules` and `/api/v1/workflows`: the admin surface of the module registry.

use actix_web::{
    HttpMessage as _, HttpRequest, HttpResponse,
    http::header::{self, Header as _},
    web,
};
use serde::{Deserialize, Serialize};
use usm_engine::{
    Installed, ModuleInfo, RegistryError, WorkflowSummary,
    workflow::{DocumentType, WifDocument},
};

use crate::{
    Services,
    principal::{Admin, Principal},
    problem::{ApiError, Problem},
};

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let code = error.code();
        if code == usm_model::ErrorCode::Internal {
            tracing::error!(%error, "internal error");
            return Self::new(
                code,
                "the server failed to complete the request; it has been logged",
            );
        }
        let mut api = Self::new(code, error.to_string());
        if let Some(location) = error.location() {
            api = api.with_field(location);
        }
        if let Some(reason) = error.reason() {
            api = api.with_reason(reason);
        }
        api
    }
}

/// Largest module bundle upload (compressed).
pub const MAX_BUNDLE_UPLOAD: usize = 64 * 1024 * 1024;

/// Reads an uploaded bundle, at most [`MAX_BUNDLE_UPLOAD`] bytes.
async fn read_bundle(payload: web::Payload) -> Result<web::Bytes, ApiError> {
    payload
        .to_bytes_limited(MAX_BUNDLE_UPLOAD)
        .await
        .map_err(|_| {
            ApiError::new(
                usm_model::ErrorCode::PayloadTooLarge,
                format!("a module bundle may be at most {MAX_BUNDLE_UPLOAD} bytes"),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                usm_model::ErrorCode::InvalidInput,
                format!("cannot read the upload: {e}"),
            )
        })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(web::block(work).await??)
}

/// The installed modules.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModuleList {
    /// By id.
    pub modules: Vec<ModuleInfo>,
}

/// The result of an upload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstallResult {
    /// The module as installed now.
    pub module: ModuleInfo,
    /// What the upload did.
    pub result: Installed,
}

/// Domains to enable or disable a module in.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainsRequest {
    /// Domains, e.g. `["it", "hr"]`.
    pub domains: Vec<String>,
    /// Enable only: the capabilities granted to the module (replacing earlier grants); only
    /// those its manifest asks for take effect.
    #[serde(default)]
    pub grant: Option<Vec<String>>,
}

/// Lists installed modules with their version, framework, status and domains.
#[utoipa::path(get, path = "/api/v1/modules", tag = "modules", responses((status = 200, body = ModuleList)))]
pub async fn list_modules(services: web::Data<Services>, admin: Admin) -> HttpResponse {
    let modules = services
        .registry
        .list()
        .into_iter()
        .map(|module| scoped(module, &admin.0))
        .collect();
    HttpResponse::Ok().json(ModuleList { modules })
}

/// A module as an admin sees it: the domains it is enabled in, among the admin's own, so a
/// domain admin learns nothing about the others' set-up.
fn scoped(mut module: ModuleInfo, admin: &usm_model::Actor) -> ModuleInfo {
    module.domains.retain(|domain| admin.in_domain(domain));
    if module.domains.is_empty() {
        module.status = "installed";
    }
    module
}

/// Shows one installed module.
#[utoipa::path(get, path = "/api/v1/modules/{id}", tag = "modules",
    params(("id" = String, Path)),
    responses((status = 200, body = ModuleInfo), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_module(
    services: web::Data<Services>,
    admin: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(scoped(services.registry.get(&id)?, &admin.0)))
}

/// A module bundle: a `.tar.gz` of the module directory.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ModuleBundle(
    #[expect(
        dead_code,
        reason = "only the API description reads the type; the handler reads the payload"
    )]
    Vec<u8>,
);

/// Installs a module from a `.tar.gz` bundle (the body), or upgrades the installed module of
/// the same id to a newer version. The bundle is checked and compiled first: a broken one is
/// refused whole and nothing changes.
#[utoipa::path(post, path = "/api/v1/modules", tag = "modules",
    request_body(content((ModuleBundle = "application/gzip"), (ModuleBundle = "application/octet-stream")),
        description = "A .tar.gz of the module directory"),
    responses(
        (status = 201, description = "Installed or upgraded", body = InstallResult),
        (status = 200, description = "The same bundle was already installed", body = InstallResult),
        (status = 403, description = "Needs a global admin (a token without a domain restriction)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not newer than the installed version, or the upgrade drops a kind or state records use", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid bundle; `field` names the file, key or line", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn install_module(
    services: web::Data<Services>,
    Admin(actor): Admin,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Decided again by the registry; checked first so a scoped admin's upload is not read.
    usm_engine::auth::global_admin(&actor, "installing or upgrading a module")?;
    let body = read_bundle(payload).await?;
    let registry = services.registry.clone();
    let (module, result) = blocking(move || registry.install_bundle(&actor, &body)).await?;
    let mut response = if result == Installed::Unchanged {
        HttpResponse::Ok()
    } else {
        HttpResponse::Created()
    };
    Ok(response.json(InstallResult { module, result }))
}

/// Query parameters of a preview.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PreviewParams {
    /// The domains whose recent records are replayed, comma-separated.
    pub domains: String,
    /// Replay the most recent this many records (1–1000; default 100).
    pub limit: Option<usize>,
    /// Preview enabling this installed module in those domains (no body).
    pub module: Option<String>,
    /// Preview disabling this installed module in those domains (no body).
    pub without: Option<String>,
}

/// What would this module change? Replays the most recent creates of the domains through their
/// pipelines as they are and as they would be with a change — the uploaded bundle installed
/// (or upgrading the installed module of its id) and enabled there, or with `module=ID` an
/// installed module enabled there, or with `without=ID` one disabled there — each from the
/// input its create recorded (the result with the steps' changes undone), replayed as its
/// creator with the agent role, under the catalogs the change would compose. Writes nothing
/// and runs no after-step. A bundle is compiled as an install would be, so it needs a global
/// admin.
#[utoipa::path(post, path = "/api/v1/modules/preview", tag = "modules", params(PreviewParams),
    request_body(content((ModuleBundle = "application/gzip"), (ModuleBundle = "application/octet-stream")),
        description = "A .tar.gz of the module directory; empty with `module` or `without`"),
    responses(
        (status = 200, description = "What the change would do", body = usm_engine::PreviewReport),
        (status = 400, description = "Both or neither of a bundle and `module`/`without`", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No installed module of that id", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid bundle, or an unknown domain", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn preview_module(
    services: web::Data<Services>,
    Admin(actor): Admin,
    params: web::Query<PreviewParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let PreviewParams {
        domains,
        limit,
        module,
        without,
    } = params.into_inner();
    let body = read_bundle(payload).await?;
    let change = match (module, without, body.is_empty()) {
        (Some(id), None, true) => usm_engine::PreviewChange::Enable(id),
        (None, Some(id), true) => usm_engine::PreviewChange::Disable(id),
        (None, None, false) => {
            let files = usm_engine::bundle::unpack(&body).map_err(|message| {
                ApiError::new(usm_model::ErrorCode::ModuleInvalid, message).with_field("bundle")
            })?;
            usm_engine::PreviewChange::Module(files)
        }
        _ => {
            return Err(ApiError::new(
                usm_model::ErrorCode::InvalidInput,
                "preview one change: a bundle as the body, or `module` or `without` with no body",
            ));
        }
    };
    let limit = limit.unwrap_or(100);
    if !(1..=usm_engine::MAX_PREVIEW_RECORDS).contains(&limit) {
        return Err(ApiError::new(
            usm_model::ErrorCode::InvalidInput,
            format!(
                "limit is {limit}; a preview replays 1 to {} records",
                usm_engine::MAX_PREVIEW_RECORDS
            ),
        )
        .with_field("limit"));
    }
    let domains: Vec<String> = domains
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    let registry = services.registry.clone();
    let report = blocking(move || registry.preview(&actor, change, &domains, limit)).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Enables a module in domains: its steps and catalog additions join those domains at once.
/// A scoped admin enables only in its domains, and changes grants only of a module enabled
/// nowhere else.
#[utoipa::path(post, path = "/api/v1/modules/{id}/enable", tag = "modules",
    params(("id" = String, Path)), request_body = DomainsRequest,
    responses((status = 200, body = ModuleInfo), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller does not administer those domains", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another module's additions need a kind this domain would not have", body = Problem, content_type = "application/problem+json")))]
pub async fn enable_module(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
    body: web::Json<DomainsRequest>,
) -> Result<HttpResponse, ApiError> {
    let registry = services.registry.clone();
    let DomainsRequest { domains, grant } = body.into_inner();
    let info = blocking(move || registry.enable(&actor, &id, &domains, grant)).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Query parameters of a disable.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DisableParams {
    /// Disable even where records of a kind or state only the module adds remain: they stay
    /// readable and are read-only (`409 module_not_enabled`) until it is enabled there again.
    pub force: Option<bool>,
}

/// Disables a module in domains: its steps and catalog additions leave those domains at once.
/// Where records still use a kind or state only it adds, this is refused (the answer counts
/// them), unless `force=true`.
#[utoipa::path(post, path = "/api/v1/modules/{id}/disable", tag = "modules",
    params(("id" = String, Path), DisableParams), request_body = DomainsRequest,
    responses((status = 200, body = ModuleInfo), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller does not administer those domains", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Records of those domains still use a kind or state the module adds (without `force`)", body = Problem, content_type = "application/problem+json")))]
pub async fn disable_module(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
    params: web::Query<DisableParams>,
    body: web::Json<DomainsRequest>,
) -> Result<HttpResponse, ApiError> {
    let registry = services.registry.clone();
    let domains = body.into_inner().domains;
    let force = params.force.unwrap_or(false);
    let info = blocking(move || registry.disable(&actor, &id, &domains, force)).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Removes a module that is enabled nowhere.
#[utoipa::path(delete, path = "/api/v1/modules/{id}", tag = "modules",
    params(("id" = String, Path)),
    responses((status = 200, body = ModuleInfo), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs a global admin (a token without a domain restriction)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The module is enabled in some domains (named), or another module extends a kind it adds", body = Problem, content_type = "application/problem+json")))]
pub async fn remove_module(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let registry = services.registry.clone();
    let info = blocking(move || registry.remove(&actor, &id)).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// The workflows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowList {
    /// By slug.
    pub workflows: Vec<WorkflowSummary>,
}

/// Lists workflows: the modules' templates (the eight USM workflows from usm-core) and imports.
#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows", responses((status = 200, body = WorkflowList)))]
pub async fn list_workflows(
    services: web::Data<Services>,
    _principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let registry = services.registry.clone();
    let workflows = blocking(move || registry.workflows()).await?;
    Ok(HttpResponse::Ok().json(WorkflowList { workflows }))
}

const JSON: &str = "application/json";

/// The media type to answer with: the document's own, unless the client's `Accept` prefers (or
/// only takes) `application/json`. An `Accept` that takes neither is disregarded, as RFC 9110
/// (12.5.1) allows, rather than answered with 406.
fn negotiate(request: &HttpRequest, own: &'static str) -> &'static str {
    let Ok(accept) = header::Accept::parse(request) else {
        return own;
    };
    // The quality of the most specific range that matches (exact, type/*, */*), if one does.
    let quality = |media_type: &str| {
        let (kind, _) = media_type.split_once('/').unwrap_or((media_type, ""));
        accept
            .iter()
            .filter_map(|range| {
                let essence = range.item.essence_str();
                let specificity = if essence == media_type {
                    2
                } else if range.item.subtype() == "*" && range.item.type_() == kind {
                    1
                } else if essence == "*/*" {
                    0
                } else {
                    return None;
                };
                Some((specificity, range.quality))
            })
            .max_by_key(|(specificity, _)| *specificity)
            .map(|(_, quality)| quality)
    };
    let zero = header::Quality::ZERO;
    match (quality(own), quality(JSON)) {
        (Some(mine), json) if mine > zero && json.is_none_or(|json| mine >= json) => own,
        (_, Some(json)) if json > zero => JSON,
        _ => own,
    }
}

/// Exports one workflow as a USM-WIF 1.0.0 document (a draft-shaped import is exported
/// converted), as `application/x-usm-workflow-template` or `application/x-usm-workflow` after
/// its `type`, or as `application/json` for a client whose `Accept` prefers that.
#[utoipa::path(get, path = "/api/v1/workflows/{slug}", tag = "workflows",
    params(("slug" = String, Path)),
    responses((status = 200, description = "The document; `Vary: Accept`",
            content((WifDocument = "application/x-usm-workflow-template"), (WifDocument = "application/x-usm-workflow"), (WifDocument = "application/json"))),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_workflow(
    services: web::Data<Services>,
    _principal: Principal,
    request: HttpRequest,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let registry = services.registry.clone();
    let document = blocking(move || registry.workflow(&slug)).await?;
    let media_type = negotiate(&request, document.document_type.media_type());
    Ok(HttpResponse::Ok()
        .content_type(media_type)
        .insert_header((header::VARY, "Accept"))
        .json(document))
}

/// The type the request's media type names: `None` for `application/json`.
fn declared_type(request: &HttpRequest) -> Result<Option<DocumentType>, ApiError> {
    let mime = request.mime_type().ok().flatten();
    match mime.as_ref().map(|m| m.essence_str()) {
        Some(JSON) => Ok(None),
        Some(essence) if let Some(declared) = DocumentType::from_media_type(essence) => {
            Ok(Some(declared))
        }
        _ => Err(ApiError::new(
            usm_model::ErrorCode::UnsupportedMediaType,
            format!(
                "send a workflow as {}, {} or {JSON}",
                DocumentType::Workflow.media_type(),
                DocumentType::WorkflowTemplate.media_type()
            ),
        )),
    }
}

/// Imports a USM-WIF 1.0.0 document. Members the format does not define are kept and exported
/// again. A `type` the media type contradicts is refused; with `application/json` the document
/// must give its `type`. The deprecated draft shape (`usm_wif`, `workflow`) is still read as
/// `application/json`, converted to a 1.0.0 template, for this release only. Replacing a module's
/// template of the same slug needs `workflow-version`.
#[utoipa::path(post, path = "/api/v1/workflows", tag = "workflows",
    request_body(content((WifDocument = "application/x-usm-workflow-template"), (WifDocument = "application/x-usm-workflow"), (WifDocument = "application/json"))),
    responses((status = 201, body = WorkflowSummary),
        (status = 400, description = "Not JSON (`malformed_json`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs a global admin (a token without a domain restriction)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The slug is a module's template and the import gives no `workflow-version`", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not one of the three media types", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`workflow_invalid`: `field` is the JSON pointer of the member, `reason` the rule (wrong_type, required, unsupported_version, unknown_value, type_mismatch, invalid_slug, invalid_length, invalid_timestamp, invalid_letter, duplicate_id, unknown_profile, too_many)", body = Problem, content_type = "application/problem+json")))]
pub async fn import_workflow(
    services: web::Data<Services>,
    Admin(actor): Admin,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // Decided again by the registry; checked first so a scoped admin learns nothing else.
    usm_engine::auth::global_admin(&actor, "importing a workflow")?;
    let declared = declared_type(&request)?;
    let registry = services.registry.clone();
    let summary = blocking(move || registry.import_workflow(&actor, &body, declared)).await?;
    Ok(HttpResponse::Created().json(summary))
}
