//! Webhook subscriptions and their delivery logs. The engine stores and matches them; delivering
//! over HTTP is the server's job (the engine knows no HTTP).

use serde::{Deserialize, Serialize};
use usm_model::{Actor, Domain, ErrorCode, Event, EventType, Kind, Timestamp};
use usm_store::{Store, StoreError};

use crate::auth::{Forbidden, admin_over, admin_sees, scope_of};

const SUBSCRIPTION_PREFIX: &str = "webhook/";
const DELIVERY_PREFIX: &str = "delivery/";
/// Delivery log entries kept per subscription.
const MAX_LOG: usize = 1000;

/// Why a webhook operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A member of the request is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The member.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such subscription or delivery (or none the caller may see).
    #[error("no webhook {0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WebhookError {
    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid { .. } => ErrorCode::InvalidInput,
            Self::NotFound(_) => ErrorCode::WebhookNotFound,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::Store(_) => ErrorCode::Internal,
        }
    }
}

/// A subscription to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewSubscription {
    /// Where to POST events (`http` or `https`).
    pub url: String,
    /// Event types to send (`record.created`, `record.updated`, `record.transitioned`,
    /// `record.approval`, `notification`, `sla.warning`, `sla.breach`); all when empty.
    #[serde(default)]
    pub events: Vec<EventType>,
    /// Only records of these kinds; all when empty.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only records of these domains; all when empty.
    #[serde(default)]
    pub domains: Vec<String>,
    /// The HMAC-SHA256 key for `X-Usm-Signature`; generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Attempts before a delivery is dead-lettered (default 8, max 20).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// A webhook subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// Where events go.
    pub url: String,
    /// Event types; all when empty.
    pub events: Vec<EventType>,
    /// Kinds; all when empty.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub kinds: Vec<Kind>,
    /// Domains; all when empty.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub domains: Vec<Domain>,
    /// The signing key.
    pub secret: String,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// Who created it.
    pub created_by: String,
}

impl Subscription {
    /// Whether `event` goes to this subscription.
    pub fn wants(&self, event: &Event) -> bool {
        (self.events.is_empty() || self.events.contains(&event.event_type))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && (self.domains.is_empty() || self.domains.contains(&event.domain))
    }

    /// The outbox consumer name of this subscription.
    pub fn consumer(&self) -> String {
        format!("webhook:{}", self.id)
    }
}

/// One delivery of one event to one subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// The outbox event.
    pub event: u64,
    /// `delivered`, `retrying` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's last HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last attempt ended.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
}

fn invalid(field: &'static str, message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid {
        field,
        message: message.into(),
    }
}

fn random_hex(bytes: usize) -> Result<String, WebhookError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|e| invalid("secret", format!("no randomness: {e}")))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

fn corrupt(what: &'static str, error: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: error.to_string(),
    }
}

/// Creates a subscription for `actor`, an admin whose domains include all the subscription's
/// (a scoped admin must name them). New subscriptions start at the end of the outbox: they get
/// events from now on.
pub fn create(
    store: &dyn Store,
    actor: &Actor,
    new: NewSubscription,
) -> Result<Subscription, WebhookError> {
    let domains = new
        .domains
        .iter()
        .map(|d| Domain::new(d.as_str()).map_err(|e| invalid("/domains", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    admin_over(actor, scope_of(&domains).as_ref())?;
    let url = new.url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.len() > 2000
        || url.contains(char::is_whitespace)
    {
        return Err(invalid(
            "/url",
            "an http:// or https:// URL of at most 2000 characters",
        ));
    }
    let kinds = new
        .kinds
        .iter()
        .map(|k| Kind::new(k.as_str()).map_err(|e| invalid("/kinds", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let secret = match new.secret {
        Some(secret) if (16..=256).contains(&secret.len()) => secret,
        Some(_) => return Err(invalid("/secret", "16 to 256 characters")),
        None => random_hex(32)?,
    };
    let max_attempts = new.max_attempts.unwrap_or(8);
    if !(1..=20).contains(&max_attempts) {
        return Err(invalid("/max_attempts", "between 1 and 20"));
    }
    let subscription = Subscription {
        id: random_hex(6)?,
        url: url.to_owned(),
        events: new.events,
        kinds,
        domains,
        secret,
        max_attempts,
        created_at: Timestamp::now(),
        created_by: actor.name.clone(),
    };
    store.set_cursor(&subscription.consumer(), latest_event(store)?)?;
    let encoded = serde_json::to_vec(&subscription).map_err(|e| corrupt("webhook", &e))?;
    store.write_settings(
        &[(format!("{SUBSCRIPTION_PREFIX}{}", subscription.id), encoded)],
        &[],
    )?;
    Ok(subscription)
}

/// The newest outbox position.
fn latest_event(store: &dyn Store) -> Result<u64, StoreError> {
    // Walk forward in pages from the after-step consumer's cursor (close to the end).
    let mut position = store.cursor("after-steps")?;
    loop {
        let events = store.events_after(position, 1000)?;
        match events.last() {
            Some(last) => position = last.seq,
            None => return Ok(position),
        }
    }
}

/// Every subscription, by id.
pub fn list(store: &dyn Store) -> Result<Vec<Subscription>, WebhookError> {
    store
        .settings(SUBSCRIPTION_PREFIX)?
        .iter()
        .map(|(_, bytes)| {
            serde_json::from_slice(bytes).map_err(|e| WebhookError::Store(corrupt("webhook", &e)))
        })
        .collect()
}

/// The subscriptions `actor` may see: those whose domains lie within its own.
pub fn list_visible(store: &dyn Store, actor: &Actor) -> Result<Vec<Subscription>, WebhookError> {
    let mut all = list(store)?;
    all.retain(|subscription| admin_sees(actor, scope_of(&subscription.domains).as_ref()));
    Ok(all)
}

/// One subscription `actor` may see; one outside its domains is not found.
fn visible(store: &dyn Store, actor: &Actor, id: &str) -> Result<Subscription, WebhookError> {
    let subscription = get(store, id)?;
    if admin_sees(actor, scope_of(&subscription.domains).as_ref()) {
        Ok(subscription)
    } else {
        Err(WebhookError::NotFound(id.chars().take(64).collect()))
    }
}

/// One subscription.
pub fn get(store: &dyn Store, id: &str) -> Result<Subscription, WebhookError> {
    let bytes = store
        .setting(&format!("{SUBSCRIPTION_PREFIX}{id}"))?
        .ok_or_else(|| WebhookError::NotFound(id.chars().take(64).collect()))?;
    serde_json::from_slice(&bytes).map_err(|e| WebhookError::Store(corrupt("webhook", &e)))
}

/// Deletes a subscription `actor` may see, and its delivery log.
pub fn delete(store: &dyn Store, actor: &Actor, id: &str) -> Result<Subscription, WebhookError> {
    let subscription = visible(store, actor, id)?;
    let mut keys: Vec<String> = store
        .settings(&format!("{DELIVERY_PREFIX}{id}/"))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.push(format!("{SUBSCRIPTION_PREFIX}{id}"));
    store.write_settings(&[], &keys)?;
    Ok(subscription)
}

fn delivery_key(subscription: &str, event: u64) -> String {
    format!("{DELIVERY_PREFIX}{subscription}/{event:020}")
}

/// Records the outcome of a delivery, keeping the log bounded.
pub fn log_delivery(
    store: &dyn Store,
    subscription: &str,
    delivery: &Delivery,
) -> Result<(), StoreError> {
    let encoded = serde_json::to_vec(delivery).map_err(|e| corrupt("delivery", &e))?;
    let prefix = format!("{DELIVERY_PREFIX}{subscription}/");
    let existing = store.settings(&prefix)?;
    let drop: Vec<String> = existing
        .iter()
        .take(existing.len().saturating_sub(MAX_LOG - 1))
        .map(|(k, _)| k.clone())
        .collect();
    store.write_settings(
        &[(delivery_key(subscription, delivery.event), encoded)],
        &drop,
    )
}

/// The delivery log of a subscription `actor` may see, newest first.
pub fn deliveries(
    store: &dyn Store,
    actor: &Actor,
    subscription: &str,
) -> Result<Vec<Delivery>, WebhookError> {
    visible(store, actor, subscription)?;
    let mut log: Vec<Delivery> = store
        .settings(&format!("{DELIVERY_PREFIX}{subscription}/"))?
        .iter()
        .map(|(_, bytes)| {
            serde_json::from_slice(bytes).map_err(|e| WebhookError::Store(corrupt("delivery", &e)))
        })
        .collect::<Result<_, _>>()?;
    log.reverse();
    Ok(log)
}

const REDELIVER_PREFIX: &str = "redeliver/";

/// Queues an event for delivery again to a subscription `actor` may see (the worker picks it up
/// within a second).
pub fn request_redelivery(
    store: &dyn Store,
    actor: &Actor,
    subscription: &str,
    event: u64,
) -> Result<(), WebhookError> {
    visible(store, actor, subscription)?;
    if store
        .events_after(event.saturating_sub(1), 1)?
        .first()
        .is_none_or(|e| e.seq != event)
    {
        return Err(WebhookError::NotFound(format!(
            "{subscription}/deliveries/{event}"
        )));
    }
    store.write_settings(
        &[(
            format!("{REDELIVER_PREFIX}{subscription}/{event:020}"),
            Vec::new(),
        )],
        &[],
    )?;
    Ok(())
}

/// Queued redeliveries of a subscription: (queue key, event).
pub fn queued_redeliveries(
    store: &dyn Store,
    subscription: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    Ok(store
        .settings(&format!("{REDELIVER_PREFIX}{subscription}/"))?
        .into_iter()
        .filter_map(|(key, _)| {
            let event = key.rsplit('/').next()?.parse().ok()?;
            Some((key, event))
        })
        .collect())
}
