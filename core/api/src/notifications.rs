//! `/api/v1/notifications/…`: the rules and template sets of a domain's notifications, and
//! what was mailed to whom and how it ended.

use std::collections::BTreeSet;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use usm_model::{Actor, Domain, ErrorCode};
use usm_notify::{Rule, RuleInForce, TemplateSet};

use crate::{
    Services,
    principal::Admin,
    problem::{ApiError, Problem},
};

/// One delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The record the mail was about.
    pub record: String,
    /// The record's domain.
    pub domain: String,
    /// The person it went to.
    pub person: String,
    /// Its subject.
    pub subject: String,
    /// `delivered` (the SMTP server accepted it) or `failed` (every attempt failed).
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it ended.
    #[schema(value_type = String, format = DateTime)]
    pub at: usm_model::Timestamp,
}

/// The delivery log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryLog {
    /// Newest first; the last 1,000.
    pub deliveries: Vec<DeliveryView>,
}

/// Which deliveries are listed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// Only the mails about this record.
    pub record: Option<String>,
}

/// The notification mails delivered or given up on, newest first; a scoped admin sees those of
/// its domains.
#[utoipa::path(get, path = "/api/v1/notifications/deliveries", tag = "notifications",
    params(DeliveryParams),
    responses((status = 200, body = DeliveryLog),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn deliveries(
    services: web::Data<Services>,
    Admin(actor): Admin,
    params: web::Query<DeliveryParams>,
) -> Result<HttpResponse, ApiError> {
    let record = params.into_inner().record;
    let store = services.engine.store().clone();
    let log = web::block(move || usm_notify::deliveries(store.as_ref()))
        .await?
        .map_err(usm_engine::EngineError::from)?;
    let deliveries = log
        .into_iter()
        .filter(|d| Domain::new(d.domain.clone()).is_ok_and(|domain| actor.in_domain(&domain)))
        .filter(|d| record.as_ref().is_none_or(|r| *r == d.record))
        .map(|d| DeliveryView {
            record: d.record,
            domain: d.domain,
            person: d.person,
            subject: d.subject,
            status: match d.status {
                usm_notify::DeliveryStatus::Delivered => "delivered".into(),
                usm_notify::DeliveryStatus::Failed => "failed".into(),
            },
            attempts: d.attempts,
            error: d.error,
            at: d.at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(DeliveryLog { deliveries }))
}

impl From<usm_notify::NotifyError> for ApiError {
    fn from(error: usm_notify::NotifyError) -> Self {
        match error {
            usm_notify::NotifyError::Invalid { field, message } => {
                Self::new(ErrorCode::NotificationInvalid, message).with_field(field)
            }
            usm_notify::NotifyError::Store(error) => usm_engine::EngineError::from(error).into(),
            other => {
                tracing::error!(error = %other, "notification settings failed");
                Self::new(
                    ErrorCode::Internal,
                    "the server failed to complete the request; it has been logged",
                )
            }
        }
    }
}

/// The domain a caller names, if it exists and they administer it.
fn administered(services: &Services, actor: &Actor, domain: &str) -> Result<Domain, ApiError> {
    let domain = crate::headers::known_domain(services, domain, "domain")?;
    usm_engine::auth::admin_over(actor, Some(&BTreeSet::from([domain.clone()])))
        .map_err(|e| ApiError::new(ErrorCode::Forbidden, e.to_string()))?;
    Ok(domain)
}

/// Writes the audit entry of a change to a domain's notification settings.
fn audited(
    store: &dyn usm_store::Store,
    actor: &Actor,
    action: &str,
    domain: &Domain,
    target: &str,
    after: Option<serde_json::Value>,
) -> Result<(), ApiError> {
    let scope = BTreeSet::from([domain.clone()]);
    usm_engine::auth::audit(
        store,
        actor,
        action,
        &format!("{domain}/{target}"),
        Some(&scope),
        None,
        after,
    )
    .map_err(|e| usm_engine::EngineError::from(e).into())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work).await?
}

/// The domain a listing is of.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DomainParam {
    /// A domain the caller administers.
    pub domain: String,
}

/// A domain's notification rules in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuleList {
    /// By id.
    pub rules: Vec<RuleInForce>,
}

/// The notification rules in force in a domain: the defaults as the domain replaced them, and
/// its own (admins of the domain).
#[utoipa::path(get, path = "/api/v1/notifications/rules", tag = "notifications",
    params(DomainParam),
    responses((status = 200, body = RuleList),
        (status = 400, description = "No such domain", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_rules(
    services: web::Data<Services>,
    Admin(actor): Admin,
    params: web::Query<DomainParam>,
) -> Result<HttpResponse, ApiError> {
    let domain = administered(&services, &actor, &params.domain)?;
    let store = services.engine.store().clone();
    let modules = usm_notify::ModuleNotifications::of(&services.registry, &domain);
    let rules = blocking(move || {
        Ok(
            usm_notify::rules::in_force(store.as_ref(), &domain, &modules)
                .map_err(usm_engine::EngineError::from)?,
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(RuleList { rules }))
}

/// Writes a rule of a domain: a default's id replaces that default there (`"enabled": false`
/// switches it off); any other id adds a rule. The body's `id` is the path's.
#[utoipa::path(put, path = "/api/v1/notifications/rules/{domain}/{id}", tag = "notifications",
    params(("domain" = String, Path), ("id" = String, Path)), request_body = Rule,
    responses((status = 200, description = "Replaced", body = RuleInForce),
        (status = 201, description = "Added", body = RuleInForce),
        (status = 400, description = "No such domain, or a body that is not a rule", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A member is not acceptable (`notification_invalid`, with `field`)", body = Problem, content_type = "application/problem+json")))]
pub async fn put_rule(
    services: web::Data<Services>,
    Admin(actor): Admin,
    path: web::Path<(String, String)>,
    body: web::Json<Rule>,
) -> Result<HttpResponse, ApiError> {
    let (domain, id) = path.into_inner();
    let domain = administered(&services, &actor, &domain)?;
    let rule = body.into_inner();
    if rule.id != id {
        return Err(ApiError::new(
            ErrorCode::NotificationInvalid,
            "the body's id is not the path's",
        )
        .with_field("/id"));
    }
    let store = services.engine.store().clone();
    let modules = usm_notify::ModuleNotifications::of(&services.registry, &domain);
    let (added, view) = blocking(move || {
        let store = store.as_ref();
        let added = usm_notify::rules::put(store, &domain, &rule, |name| {
            usm_notify::templates::exists(store, &domain, &modules, name).unwrap_or(false)
        })?;
        let after = serde_json::to_value(&rule).unwrap_or_default();
        audited(
            store,
            &actor,
            "notification.rule.put",
            &domain,
            &rule.id,
            Some(after),
        )?;
        let view = usm_notify::rules::in_force(store, &domain, &modules)
            .map_err(usm_engine::EngineError::from)?
            .into_iter()
            .find(|r| r.rule.id == rule.id);
        Ok((added, view))
    })
    .await?;
    let mut reply = if added {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(reply.json(view))
}

/// Removes a domain's own rule; a default it replaced is in force as shipped again.
#[utoipa::path(delete, path = "/api/v1/notifications/rules/{domain}/{id}", tag = "notifications",
    params(("domain" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "Removed"),
        (status = 400, description = "No such domain", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The domain has no rule of its own with that id", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_rule(
    services: web::Data<Services>,
    Admin(actor): Admin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (domain, id) = path.into_inner();
    let domain = administered(&services, &actor, &domain)?;
    let store = services.engine.store().clone();
    blocking(move || {
        let store = store.as_ref();
        if !usm_notify::rules::delete(store, &domain, &id).map_err(usm_engine::EngineError::from)? {
            return Err(ApiError::new(
                ErrorCode::NotificationNotFound,
                format!(
                    "domain {domain} has no notification rule {} of its own",
                    id.chars().take(64).collect::<String>()
                ),
            ));
        }
        audited(
            store,
            &actor,
            "notification.rule.delete",
            &domain,
            &id,
            None,
        )?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A domain's template sets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TemplateList {
    /// The sets the server ships, which rules may name in every domain.
    pub built_in: Vec<&'static str>,
    /// The domain's own sets, per language.
    pub own: Vec<TemplateSet>,
}

/// The template sets rules of a domain can name: the built-in ones and the domain's own.
#[utoipa::path(get, path = "/api/v1/notifications/templates", tag = "notifications",
    params(DomainParam),
    responses((status = 200, body = TemplateList),
        (status = 400, description = "No such domain", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_templates(
    services: web::Data<Services>,
    Admin(actor): Admin,
    params: web::Query<DomainParam>,
) -> Result<HttpResponse, ApiError> {
    let domain = administered(&services, &actor, &params.domain)?;
    let store = services.engine.store().clone();
    let own = blocking(move || {
        Ok(usm_notify::templates::own(store.as_ref(), &domain)
            .map_err(usm_engine::EngineError::from)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(TemplateList {
        built_in: usm_notify::templates::BUILT_IN.to_vec(),
        own,
    }))
}

/// Writes a template set of a domain, for the body's `locale` or (without one) for everyone:
/// it replaces the built-in set of that name there, or adds a set rules can name. Every part is
/// compiled first; a syntax error is `422` naming the part.
#[utoipa::path(put, path = "/api/v1/notifications/templates/{domain}/{name}", tag = "notifications",
    params(("domain" = String, Path), ("name" = String, Path)), request_body = TemplateSet,
    responses((status = 200, description = "Replaced", body = TemplateSet),
        (status = 201, description = "Added", body = TemplateSet),
        (status = 400, description = "No such domain, or a body that is not a template set", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A member is not acceptable (`notification_invalid`, with `field`)", body = Problem, content_type = "application/problem+json")))]
pub async fn put_template(
    services: web::Data<Services>,
    Admin(actor): Admin,
    path: web::Path<(String, String)>,
    body: web::Json<TemplateSet>,
) -> Result<HttpResponse, ApiError> {
    let (domain, name) = path.into_inner();
    let domain = administered(&services, &actor, &domain)?;
    let set = body.into_inner();
    if set.name != name {
        return Err(ApiError::new(
            ErrorCode::NotificationInvalid,
            "the body's name is not the path's",
        )
        .with_field("/name"));
    }
    let store = services.engine.store().clone();
    let (added, set) = blocking(move || {
        let store = store.as_ref();
        let added = usm_notify::templates::put(store, &domain, &set)?;
        let target = format!("{}/{}", set.name, set.locale.as_deref().unwrap_or("-"));
        audited(
            store,
            &actor,
            "notification.template.put",
            &domain,
            &target,
            None,
        )?;
        Ok((added, set))
    })
    .await?;
    let mut reply = if added {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(reply.json(set))
}

/// Which language's set is meant.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LocaleParam {
    /// The set's language tag; the set for everyone when absent.
    pub locale: Option<String>,
}

/// Removes a domain's template set (of one language, or the one for everyone).
#[utoipa::path(delete, path = "/api/v1/notifications/templates/{domain}/{name}", tag = "notifications",
    params(("domain" = String, Path), ("name" = String, Path), LocaleParam),
    responses((status = 204, description = "Removed"),
        (status = 400, description = "No such domain", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The domain has no such set", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_template(
    services: web::Data<Services>,
    Admin(actor): Admin,
    path: web::Path<(String, String)>,
    params: web::Query<LocaleParam>,
) -> Result<HttpResponse, ApiError> {
    let (domain, name) = path.into_inner();
    let domain = administered(&services, &actor, &domain)?;
    let locale = params.into_inner().locale;
    let store = services.engine.store().clone();
    blocking(move || {
        let store = store.as_ref();
        if !usm_notify::templates::delete(store, &domain, &name, locale.as_deref())
            .map_err(usm_engine::EngineError::from)?
        {
            return Err(ApiError::new(
                ErrorCode::NotificationNotFound,
                format!("domain {domain} has no such template set of its own"),
            ));
        }
        let target = format!("{name}/{}", locale.as_deref().unwrap_or("-"));
        audited(
            store,
            &actor,
            "notification.template.delete",
            &domain,
            &target,
            None,
        )?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
