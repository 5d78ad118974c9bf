//! Admins' pages: modules, enabled and disabled per domain with the caller's own rights.

use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::{Value, context};
use usm_api::{ApiError, Services};
use usm_model::{ErrorCode, Role};

use crate::{
    render::{Refusal, see_other, value_of},
    signin::{Visitor, checked_form, page_for},
};

fn admin_only(visitor: &Visitor) -> Result<(), Refusal> {
    if visitor.actor.has_role(Role::Admin) {
        Ok(())
    } else {
        Err(Refusal::Api(ApiError::new(
            ErrorCode::Forbidden,
            "module administration needs the admin role",
        )))
    }
}

/// `GET /ui/admin/modules`: installed modules, where each is enabled among the caller's
/// domains, and the composed pipelines.
pub async fn modules(
    services: web::Data<Services>,
    visitor: Visitor,
) -> Result<HttpResponse, Refusal> {
    admin_only(&visitor)?;
    let actor = &visitor.actor;
    let domains: Vec<String> = services
        .engine
        .domains()
        .iter()
        .filter(|d| actor.in_domain(d))
        .map(ToString::to_string)
        .collect();
    let modules: Vec<Value> = services
        .registry
        .list()
        .into_iter()
        .map(|module| {
            let enabled: Vec<String> = module
                .domains
                .iter()
                .filter(|d| actor.in_domain(d))
                .map(ToString::to_string)
                .collect();
            context! {
                id => module.id, version => module.version, framework => module.framework,
                description => module.description, steps => module.steps, enabled => enabled,
            }
        })
        .collect();
    let pipelines: Vec<_> = services
        .engine
        .pipelines()
        .describe()
        .into_iter()
        .filter(|p| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.get("domain").and_then(|d| d.as_str().map(str::to_owned)))
                .is_none_or(|domain| domains.contains(&domain))
        })
        .collect();
    page_for(
        &visitor,
        "modules.html",
        context! { modules => modules, domains => domains,
        pipelines => value_of(&pipelines) },
    )
}

/// `POST /ui/admin/modules/{id}/enable|disable`: `domain`, `csrf`, optional `force`.
pub async fn change_module(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    let form = checked_form(&request, &visitor, &body)?;
    admin_only(&visitor)?;
    let (id, action) = path.into_inner();
    let domain = form
        .text("domain")
        .ok_or_else(|| Refusal::BadForm("which domain? (`domain`)".into()))?;
    let force = form.get("force").is_some();
    let (registry, actor) = (services.registry.clone(), visitor.actor.clone());
    web::block(move || match action.as_str() {
        "enable" => registry
            .enable(&actor, &id, &[domain], None)
            .map_err(|e| Refusal::Api(e.into())),
        "disable" => registry
            .disable(&actor, &id, &[domain], force)
            .map_err(|e| Refusal::Api(e.into())),
        other => Err(Refusal::BadForm(format!(
            "{other}: a module is enabled or disabled"
        ))),
    })
    .await
    .map_err(ApiError::from)??;
    Ok(see_other("/ui/admin/modules"))
}

/// `GET /ui/admin/tokens`: the tokens within the admin's domains, and a form for a new one.
pub async fn tokens(
    services: web::Data<Services>,
    visitor: Visitor,
) -> Result<HttpResponse, Refusal> {
    admin_only(&visitor)?;
    let tokens = services.tokens.list(&visitor.actor);
    page_for(
        &visitor,
        "tokens.html",
        context! { tokens => value_of(&tokens), created => None::<String> },
    )
}

/// `POST /ui/admin/tokens`: `name`, `role`, optional `domain`; the page shows the secret once.
pub async fn create_token(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    let form = checked_form(&request, &visitor, &body)?;
    admin_only(&visitor)?;
    let new: usm_engine::auth::NewToken = serde_json::from_value(serde_json::json!({
        "name": form.text("name").unwrap_or_default(),
        "roles": [form.text("role").unwrap_or_else(|| "agent".to_owned())],
        "domains": form.text("domain").map(|d| vec![d]),
    }))
    .map_err(|error| Refusal::BadForm(format!("not a token: {error}")))?;
    let (shared, actor) = (services.clone().into_inner(), visitor.actor.clone());
    let created = web::block(move || usm_api::create_token_audited(&shared, &actor, new))
        .await
        .map_err(ApiError::from)??;
    let secret = created.token;
    let tokens = services.tokens.list(&visitor.actor);
    page_for(
        &visitor,
        "tokens.html",
        context! { tokens => value_of(&tokens), created => Some(secret) },
    )
}

/// `POST /ui/admin/tokens/{id}/revoke`.
pub async fn revoke_token(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Refusal> {
    checked_form(&request, &visitor, &body)?;
    admin_only(&visitor)?;
    let (shared, actor) = (services.into_inner(), visitor.actor.clone());
    web::block(move || usm_api::revoke_token_audited(&shared, &actor, &id))
        .await
        .map_err(ApiError::from)??;
    Ok(see_other("/ui/admin/tokens"))
}

/// `GET /ui/admin/people`: the directory's people and groups in the admin's domains.
pub async fn people(
    services: web::Data<Services>,
    visitor: Visitor,
) -> Result<HttpResponse, Refusal> {
    admin_only(&visitor)?;
    let (engine, actor) = (services.engine.clone(), visitor.actor.clone());
    let (people, groups) = web::block(move || -> Result<_, ApiError> {
        let directory = engine.directory();
        Ok((
            directory.people(&actor, None, 500)?,
            directory.groups(&actor, None)?,
        ))
    })
    .await
    .map_err(ApiError::from)??;
    page_for(
        &visitor,
        "people.html",
        context! { people => value_of(&people), groups => value_of(&groups) },
    )
}

/// `GET /ui/admin/webhooks`: subscriptions (secrets hidden) with their latest deliveries.
pub async fn webhooks(
    services: web::Data<Services>,
    visitor: Visitor,
) -> Result<HttpResponse, Refusal> {
    admin_only(&visitor)?;
    let (store, actor) = (services.engine.store().clone(), visitor.actor.clone());
    let subscriptions = web::block(move || -> Result<Vec<Value>, ApiError> {
        usm_engine::webhooks::list_visible(store.as_ref(), &actor)?
            .into_iter()
            .map(|subscription| {
                let mut log =
                    usm_engine::webhooks::deliveries(store.as_ref(), &actor, &subscription.id)?;
                let total = log.len();
                log.reverse();
                log.truncate(20);
                Ok(context! {
                    id => subscription.id,
                    url => usm_api::redacted_url(&subscription.url),
                    events => value_of(&subscription.events),
                    domains => value_of(&subscription.domains),
                    deliveries => value_of(&log),
                    total => total,
                })
            })
            .collect()
    })
    .await
    .map_err(ApiError::from)??;
    page_for(
        &visitor,
        "webhooks.html",
        context! { webhooks => subscriptions },
    )
}

/// Query of the audit page.
#[derive(Debug, serde::Deserialize)]
pub struct AuditQuery {
    after: Option<u64>,
}

/// `GET /ui/admin/audit?after=…`: the audit log the admin may read, 100 entries a page.
pub async fn audit(
    services: web::Data<Services>,
    visitor: Visitor,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, Refusal> {
    admin_only(&visitor)?;
    let (store, actor) = (services.engine.store().clone(), visitor.actor.clone());
    let after = query.after.unwrap_or(0);
    let entries =
        web::block(move || usm_engine::auth::audit_entries(store.as_ref(), &actor, after, 100))
            .await
            .map_err(ApiError::from)?
            .map_err(|error| {
                tracing::error!(%error, "cannot read the audit log");
                ApiError::new(ErrorCode::Internal, "the audit log cannot be read now")
            })?;
    let next = (entries.len() == 100)
        .then(|| serde_json::to_value(entries.last()).ok())
        .flatten()
        .and_then(|last| last.get("seq").and_then(serde_json::Value::as_u64));
    page_for(
        &visitor,
        "audit.html",
        context! { entries => value_of(&entries), next => next },
    )
}

/// Query of a module preview.
#[derive(Debug, serde::Deserialize)]
pub struct PreviewQuery {
    domain: String,
    change: String,
}

/// `GET /ui/admin/modules/{id}/preview?domain=…&change=enable|disable`: what enabling or
/// disabling the module there would do to the domain's recent creates, replayed through the
/// pipelines as they are and as they would be. Writes nothing.
pub async fn preview(
    services: web::Data<Services>,
    visitor: Visitor,
    id: web::Path<String>,
    query: web::Query<PreviewQuery>,
) -> Result<HttpResponse, Refusal> {
    admin_only(&visitor)?;
    let PreviewQuery { domain, change } = query.into_inner();
    let id = id.into_inner();
    let planned = match change.as_str() {
        "enable" => usm_engine::PreviewChange::Enable(id.clone()),
        "disable" => usm_engine::PreviewChange::Disable(id.clone()),
        other => {
            return Err(Refusal::BadForm(format!(
                "{other}: a preview is of an enable or a disable"
            )));
        }
    };
    let (registry, actor) = (services.registry.clone(), visitor.actor.clone());
    let domains = vec![domain.clone()];
    let report = web::block(move || registry.preview(&actor, planned, &domains, 100))
        .await
        .map_err(ApiError::from)?
        .map_err(ApiError::from)?;
    page_for(
        &visitor,
        "preview.html",
        context! { module => id, domain => domain, change => change,
        report => value_of(&report) },
    )
}

/// `POST /ui/admin/modules`: installs or upgrades a module from an uploaded `.tar.gz` bundle
/// (`multipart/form-data`: `csrf`, then the file), as `POST /api/v1/modules` does.
pub async fn install(
    services: web::Data<Services>,
    visitor: Visitor,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, Refusal> {
    admin_only(&visitor)?;
    // Installing is for global admins; checked before the upload is read.
    usm_engine::auth::global_admin(&visitor.actor, "installing or upgrading a module")
        .map_err(ApiError::from)?;
    let guard = visitor.upload_guard();
    let (_, bundle) = usm_api::form_file(&request, body, guard, usm_api::MAX_BUNDLE_UPLOAD).await?;
    let (registry, actor) = (services.registry.clone(), visitor.actor.clone());
    web::block(move || registry.install_bundle(&actor, &bundle))
        .await
        .map_err(ApiError::from)?
        .map_err(ApiError::from)?;
    Ok(see_other("/ui/admin/modules"))
}
