//! `/api/v1/notifications/deliveries`: what was mailed to whom and how it ended.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use usm_model::Domain;

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

/// The notification mails delivered or given up on, newest first; a scoped admin sees those of
/// its domains.
#[utoipa::path(get, path = "/api/v1/notifications/deliveries", tag = "notifications",
    responses((status = 200, body = DeliveryLog),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn deliveries(
    services: web::Data<Services>,
    Admin(actor): Admin,
) -> Result<HttpResponse, ApiError> {
    let store = services.engine.store().clone();
    let log = web::block(move || usm_notify::deliveries(store.as_ref()))
        .await?
        .map_err(usm_engine::EngineError::from)?;
    let deliveries = log
        .into_iter()
        .filter(|d| Domain::new(d.domain.clone()).is_ok_and(|domain| actor.in_domain(&domain)))
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
