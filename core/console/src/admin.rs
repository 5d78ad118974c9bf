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
