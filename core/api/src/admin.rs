//! `/api/v1/tokens`, `/api/v1/audit`, `/api/v1/webhooks` and `/api/v1/automations`: for admins,
//! each within its domains (the engine's `auth` decides what a scoped admin may see and do).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use usm_engine::auth::{self, AuditEntry, Forbidden, NewToken, TokenError, TokenInfo};
use usm_model::ErrorCode;

use crate::{
    Services,
    principal::Admin,
    problem::{ApiError, Problem},
};

impl From<Forbidden> for ApiError {
    fn from(error: Forbidden) -> Self {
        Self::new(ErrorCode::Forbidden, error.0)
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match &error {
            TokenError::Invalid { field, .. } => {
                Self::new(error.code(), error.to_string()).with_field(*field)
            }
            TokenError::NameTaken(_) => {
                Self::new(error.code(), error.to_string()).with_field("/name")
            }
            TokenError::Reference { field, .. } => {
                Self::new(error.code(), error.to_string()).with_field(*field)
            }
            TokenError::Forbidden(_) => Self::new(error.code(), error.to_string()),
            TokenError::Store(_) => {
                tracing::error!(%error, "internal error");
                Self::new(
                    ErrorCode::Internal,
                    "the server failed to complete the request; it has been logged",
                )
            }
            TokenError::NotFound(_) => Self::new(error.code(), error.to_string()),
        }
    }
}

/// A created token: its secret is shown here once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The secret for `Authorization: Bearer …`; not retrievable later.
    pub token: String,
    /// The token's details.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// The tokens.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    /// The tokens whose domains lie within the caller's, without secrets.
    pub tokens: Vec<TokenInfo>,
}

/// Creates an API token; a scoped admin only within its domains (never an unscoped token).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "Another token has that name", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "The person is not an active person of the token's domains", body = Problem, content_type = "application/problem+json")))]
pub async fn create_token(
    services: web::Data<Services>,
    Admin(actor): Admin,
    body: web::Json<NewToken>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let result =
        web::block(move || create_token_audited(&services, &actor, body.into_inner())).await??;
    Ok(HttpResponse::Created().json(result))
}

/// Creates a token as `actor` and writes its audit entry: the API's and the console's way.
/// Blocks on the store.
pub fn create_token_audited(
    services: &Services,
    actor: &usm_model::Actor,
    new: NewToken,
) -> Result<CreatedToken, ApiError> {
    let (info, token) = services.tokens.create(actor, new)?;
    audit(
        services,
        actor,
        ("token.create", &info),
        None,
        serde_json::to_value(&info).ok(),
    );
    Ok(CreatedToken { token, info })
}

/// Revokes a token as `actor` and writes its audit entry: the API's and the console's way.
/// Blocks on the store.
pub fn revoke_token_audited(
    services: &Services,
    actor: &usm_model::Actor,
    id: &str,
) -> Result<TokenInfo, ApiError> {
    let info = services.tokens.revoke(actor, id)?;
    audit(
        services,
        actor,
        ("token.revoke", &info),
        serde_json::to_value(&info).ok(),
        None,
    );
    Ok(info)
}

/// Lists the API tokens whose domains lie within the caller's (without their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = TokenList)))]
pub async fn list_tokens(services: web::Data<Services>, Admin(actor): Admin) -> HttpResponse {
    HttpResponse::Ok().json(TokenList {
        tokens: services.tokens.list(&actor),
    })
}

/// Revokes an API token whose domains lie within the caller's; it stops working at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 200, body = TokenInfo), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_token(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let info = web::block(move || revoke_token_audited(&services, &actor, &id)).await??;
    Ok(HttpResponse::Ok().json(info))
}

/// Audits a token action; it concerns the token's domains.
fn audit(
    services: &Services,
    actor: &usm_model::Actor,
    (action, token): (&str, &TokenInfo),
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) {
    let target = format!("token:{}", token.id);
    if let Err(error) = auth::audit(
        services.engine.store().as_ref(),
        actor,
        action,
        &target,
        token.domains.as_ref(),
        before,
        after,
    ) {
        tracing::error!(%error, action, "cannot write the audit entry");
    }
}

/// Query parameters of the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only entries after this position.
    #[serde(default)]
    pub after: u64,
    /// At most this many entries (default 100, max 1000).
    pub limit: Option<usize>,
}

/// A page of the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Entries, oldest first.
    pub entries: Vec<AuditEntry>,
}

/// Lists admin actions: module and token changes, webhooks, automations, workflow imports, with
/// before and after. A scoped admin sees the entries that concern only its domains.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn audit_log(
    services: web::Data<Services>,
    Admin(actor): Admin,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(
            ApiError::new(ErrorCode::InvalidInput, "limit must be between 1 and 1000")
                .with_field("limit"),
        );
    }
    let store = services.engine.store().clone();
    let after = params.after;
    let entries = web::block(move || auth::audit_entries(store.as_ref(), &actor, after, limit))
        .await?
        .map_err(|error| {
            tracing::error!(%error, "cannot read the audit log");
            ApiError::new(
                ErrorCode::Internal,
                "the server failed to read the audit log; it has been logged",
            )
        })?;
    Ok(HttpResponse::Ok().json(AuditPage { entries }))
}

impl From<usm_engine::webhooks::WebhookError> for ApiError {
    fn from(error: usm_engine::webhooks::WebhookError) -> Self {
        use usm_engine::webhooks::WebhookError as E;
        match &error {
            E::Invalid { field, .. } => {
                Self::new(error.code(), error.to_string()).with_field(*field)
            }
            E::Refused(_) => Self::new(error.code(), error.to_string()).with_field("/url"),
            E::NotFound(_) | E::Forbidden(_) => Self::new(error.code(), error.to_string()),
            E::Store(_) => {
                tracing::error!(%error, "internal error");
                Self::new(
                    ErrorCode::Internal,
                    "the server failed to complete the request; it has been logged",
                )
            }
        }
    }
}

/// A subscription as listed: the secret is shown only when it is created, a password in the
/// URL (possible in subscriptions made before URL credentials were refused) never.
fn redacted(mut subscription: Subscription) -> Subscription {
    subscription.secret = "(hidden)".into();
    subscription.url = redacted_url(&subscription.url);
    subscription
}

/// A webhook's URL as shown to admins: a password in it is replaced by `hidden`.
pub fn redacted_url(address: &str) -> String {
    if let Ok(mut url) = url::Url::parse(address)
        && url.password().is_some()
        && url.set_password(Some("hidden")).is_ok()
    {
        return url.into();
    }
    address.to_owned()
}

use usm_engine::webhooks::{self, Delivery, NewSubscription, Subscription};

/// The webhook subscriptions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    /// By id, secrets hidden.
    pub webhooks: Vec<Subscription>,
}

/// A subscription's delivery log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryLog {
    /// Newest first.
    pub deliveries: Vec<Delivery>,
}

/// Subscribes a URL to events (CloudEvents 1.0 JSON, signed with HMAC-SHA256 in
/// `X-Usm-Signature: sha256=<hex>`); the answer shows the signing secret once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = NewSubscription,
    responses((status = 201, body = Subscription), (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "The destination policy refuses the URL", body = Problem, content_type = "application/problem+json")))]
pub async fn create_webhook(
    services: web::Data<Services>,
    Admin(actor): Admin,
    body: web::Json<NewSubscription>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let subscription =
        web::block(move || subscribe(&services, &actor, body.into_inner())).await??;
    Ok(HttpResponse::Created().json(subscription))
}

/// Creates a subscription for `actor` and audits it (the webhooks and the TMF621 hub).
pub(crate) fn subscribe(
    services: &Services,
    actor: &usm_model::Actor,
    new: NewSubscription,
) -> Result<Subscription, ApiError> {
    let store = services.engine.store();
    let policy = &services.config.webhook_policy;
    let subscription = webhooks::create(store.as_ref(), policy, actor, new)?;
    let shown = serde_json::to_value(redacted(subscription.clone())).ok();
    if let Err(error) = auth::audit(
        store.as_ref(),
        actor,
        "webhook.create",
        &format!("webhook:{}", subscription.id),
        auth::scope_of(&subscription.domains).as_ref(),
        None,
        shown,
    ) {
        tracing::error!(%error, "cannot write the audit entry");
    }
    Ok(subscription)
}

/// Deletes a subscription `actor` may see and audits it (the webhooks and the TMF621 hub).
pub(crate) fn unsubscribe(
    store: &dyn usm_store::Store,
    actor: &usm_model::Actor,
    id: &str,
) -> Result<Subscription, ApiError> {
    let deleted = redacted(webhooks::delete(store, actor, id)?);
    if let Err(error) = auth::audit(
        store,
        actor,
        "webhook.delete",
        &format!("webhook:{id}"),
        auth::scope_of(&deleted.domains).as_ref(),
        serde_json::to_value(&deleted).ok(),
        None,
    ) {
        tracing::error!(%error, "cannot write the audit entry");
    }
    Ok(deleted)
}

/// Lists the webhook subscriptions whose domains lie within the caller's.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", responses((status = 200, body = WebhookList)))]
pub async fn list_webhooks(
    services: web::Data<Services>,
    Admin(actor): Admin,
) -> Result<HttpResponse, ApiError> {
    let store = services.engine.store().clone();
    let list = web::block(move || webhooks::list_visible(store.as_ref(), &actor)).await??;
    Ok(HttpResponse::Ok().json(WebhookList {
        webhooks: list.into_iter().map(redacted).collect(),
    }))
}

/// Deletes a webhook subscription and its delivery log.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Subscription), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_webhook(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = services.engine.store().clone();
    let deleted = web::block(move || unsubscribe(store.as_ref(), &actor, &id)).await??;
    Ok(HttpResponse::Ok().json(deleted))
}

/// A subscription's delivery log: each event's attempts, status (`delivered`, `retrying`,
/// `dead`) and the receiver's last answer.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = DeliveryLog), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn webhook_deliveries(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = services.engine.store().clone();
    let deliveries =
        web::block(move || webhooks::deliveries(store.as_ref(), &actor, &id)).await??;
    Ok(HttpResponse::Ok().json(DeliveryLog { deliveries }))
}

/// Delivers an event to a subscription again (e.g. after a dead letter), within a second.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{event}/redeliver", tag = "webhooks",
    params(("id" = String, Path), ("event" = u64, Path)),
    responses((status = 202, description = "Queued"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn redeliver(
    services: web::Data<Services>,
    Admin(actor): Admin,
    path: web::Path<(String, u64)>,
) -> Result<HttpResponse, ApiError> {
    let store = services.engine.store().clone();
    let (id, event) = path.into_inner();
    web::block(move || webhooks::request_redelivery(store.as_ref(), &actor, &id, event)).await??;
    Ok(HttpResponse::Accepted().json(serde_json::json!({"status": "queued"})))
}

use usm_script_host::automation::{AutomationError, AutomationSpec, RunLog};

impl From<AutomationError> for ApiError {
    fn from(error: AutomationError) -> Self {
        match &error {
            AutomationError::Invalid(_) => Self::new(ErrorCode::InvalidInput, error.to_string()),
            AutomationError::NotFound(_) => {
                Self::new(ErrorCode::AutomationNotFound, error.to_string())
            }
            AutomationError::Forbidden(_) => Self::new(ErrorCode::Forbidden, error.to_string()),
            AutomationError::Store(_) => {
                tracing::error!(%error, "internal error");
                Self::new(
                    ErrorCode::Internal,
                    "the server failed to complete the request; it has been logged",
                )
            }
        }
    }
}

/// The automations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AutomationList {
    /// By id.
    pub automations: Vec<AutomationSpec>,
}

/// A run log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunLog>,
}

/// Lists the automations whose domains lie within the caller's.
#[utoipa::path(get, path = "/api/v1/automations", tag = "automations", responses((status = 200, body = AutomationList)))]
pub async fn list_automations(services: web::Data<Services>, Admin(actor): Admin) -> HttpResponse {
    HttpResponse::Ok().json(AutomationList {
        automations: services.automations.list(&actor),
    })
}

/// Defines or replaces an automation (the script must compile and define `fn run(ctx)`); a
/// scoped admin only within its domains.
#[utoipa::path(post, path = "/api/v1/automations", tag = "automations", request_body = AutomationSpec,
    responses((status = 201, body = AutomationSpec), (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn define_automation(
    services: web::Data<Services>,
    Admin(actor): Admin,
    body: web::Json<AutomationSpec>,
) -> Result<HttpResponse, ApiError> {
    let services = services.into_inner();
    let spec = web::block(move || -> Result<_, ApiError> {
        let spec = services.automations.define(&actor, body.into_inner())?;
        let target = format!("automation:{}", spec.id);
        let domains: Vec<usm_model::Domain> = spec
            .domains
            .iter()
            .filter_map(|d| usm_model::Domain::new(d.as_str()).ok())
            .collect();
        if let Err(error) = auth::audit(
            services.engine.store().as_ref(),
            &actor,
            "automation.define",
            &target,
            auth::scope_of(&domains).as_ref(),
            None,
            serde_json::to_value(&spec).ok(),
        ) {
            tracing::error!(%error, "cannot write the audit entry");
        }
        Ok(spec)
    })
    .await??;
    Ok(HttpResponse::Created().json(spec))
}

/// Runs an automation now and answers with its run log.
#[utoipa::path(post, path = "/api/v1/automations/{id}/run", tag = "automations", params(("id" = String, Path)),
    responses((status = 200, body = RunLog), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn run_automation(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let automations = services.automations.clone();
    let run = web::block(move || automations.run_manually(&actor, &id)).await??;
    Ok(HttpResponse::Ok().json(run))
}

/// An automation's runs: output, errors and duration.
#[utoipa::path(get, path = "/api/v1/automations/{id}/runs", tag = "automations", params(("id" = String, Path)),
    responses((status = 200, body = RunList), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn automation_runs(
    services: web::Data<Services>,
    Admin(actor): Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let automations = services.automations.clone();
    let runs = web::block(move || automations.runs(&actor, &id)).await??;
    Ok(HttpResponse::Ok().json(RunList { runs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_subscriptions_hide_secrets_and_url_passwords() {
        let subscription = Subscription {
            id: "abc".into(),
            url: "https://ops:hunter2@hooks.example.com/in".into(),
            events: vec![],
            kinds: vec![],
            domains: vec![],
            secret: "s3cret-s3cret-s3cret".into(),
            max_attempts: 8,
            format: usm_engine::webhooks::Format::Cloudevents,
            created_at: usm_model::Timestamp::now(),
            created_by: "admin".into(),
        };
        let shown = redacted(subscription);
        assert_eq!(shown.secret, "(hidden)");
        assert_eq!(shown.url, "https://ops:hidden@hooks.example.com/in");
    }
}
