//! Webhook subscriptions and their delivery logs. The engine stores and matches them; delivering
//! over HTTP is the server's job (the engine knows no HTTP).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs as _};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::{Host, Url};
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
    /// The URL is not a destination the policy allows.
    #[error("/url: {0}")]
    Refused(DestinationRefused),
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
            Self::Refused(_) => ErrorCode::WebhookDestinationRefused,
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
    /// How events are written (default `cloudevents`).
    #[serde(default)]
    pub format: Format,
}

/// How a subscription's events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = WebhookFormat))]
pub enum Format {
    /// CloudEvents 1.0 JSON with the event and the record.
    #[default]
    Cloudevents,
    /// TMF621 v4 trouble ticket events (`TroubleTicketCreateEvent`, …) of incidents; the
    /// other kinds and event types are not sent.
    Tmf621,
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
    /// How its events are written.
    #[serde(default)]
    pub format: Format,
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

/// Where webhooks may deliver: public addresses, plus the networks the operator allows.
/// Loopback, private, link-local, unique-local, shared (CGNAT), multicast, documentation,
/// unspecified and reserved addresses are internal and refused unless allowed.
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    allowed: Vec<IpNet>,
}

/// Why a webhook destination is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DestinationRefused(String);

impl WebhookPolicy {
    /// A policy allowing `networks` (CIDRs such as `10.0.0.0/8` or `::1/128`) besides public
    /// addresses.
    pub fn new(networks: &[String]) -> Result<Self, String> {
        let allowed = networks
            .iter()
            .map(|net| {
                net.trim()
                    .parse::<IpNet>()
                    .map_err(|e| format!("webhook network {net:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Whether events may go to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !internal(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Checks what the URL says without resolving names: an `http` or `https` URL without
    /// credentials, whose host, when an address, is allowed.
    pub fn check_url(&self, url: &str) -> Result<Url, DestinationRefused> {
        let refuse = |why: &str| DestinationRefused(why.to_owned());
        let parsed = Url::parse(url).map_err(|e| refuse(&format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(refuse("only http and https URLs"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(refuse(
                "credentials in the URL are refused; authenticate with the signature",
            ));
        }
        let ip = match parsed.host() {
            None => return Err(refuse("the URL has no host")),
            Some(Host::Domain(_)) => None,
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        };
        if let Some(ip) = ip
            && !self.allows(ip)
        {
            return Err(self.internal_address(ip));
        }
        Ok(parsed)
    }

    /// Checks the addresses a destination resolved to: every one must be allowed.
    pub fn check_addresses(
        &self,
        host: &str,
        addresses: &[IpAddr],
    ) -> Result<(), DestinationRefused> {
        if addresses.is_empty() {
            return Err(DestinationRefused(format!("{host} does not resolve")));
        }
        match addresses.iter().find(|ip| !self.allows(**ip)) {
            Some(ip) => Err(self.internal_address(*ip)),
            None => Ok(()),
        }
    }

    fn internal_address(&self, ip: IpAddr) -> DestinationRefused {
        DestinationRefused(format!(
            "{ip} is an internal address; the operator has not allowed its network \
             (webhook_allowed_networks)"
        ))
    }
}

/// Not a public unicast address.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || a >= 240 // reserved
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and IPv4-compatible addresses carry an IPv4 address.
    let embedded = || {
        let [.., hi, lo] = segments;
        Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
    };
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || ip.is_multicast()
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && internal_v4(embedded()))
        || (segments[..6] == [0; 6] && internal_v4(embedded()))
}

/// Creates a subscription for `actor`, an admin whose domains include all the subscription's
/// (a scoped admin must name them). New subscriptions start at the end of the outbox: they get
/// events from now on. The URL must pass `policy`, with every address its host resolves to now
/// (deliveries check again, each time).
pub fn create(
    store: &dyn Store,
    policy: &WebhookPolicy,
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
    if url.len() > 2000 || url.contains(char::is_whitespace) {
        return Err(invalid(
            "/url",
            "an http:// or https:// URL of at most 2000 characters",
        ));
    }
    let parsed = policy.check_url(url).map_err(WebhookError::Refused)?;
    if let Some(Host::Domain(name)) = parsed.host() {
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addresses: Vec<IpAddr> = (name, port)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default();
        policy
            .check_addresses(name, &addresses)
            .map_err(WebhookError::Refused)?;
    }
    let mut kinds = new
        .kinds
        .iter()
        .map(|k| Kind::new(k.as_str()).map_err(|e| invalid("/kinds", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut events = new.events;
    if new.format == Format::Tmf621 {
        // Trouble tickets are incidents, and TMF621 has events for their creation, changes
        // and moves only.
        const TICKET_EVENTS: [EventType; 3] = [
            EventType::RecordCreated,
            EventType::RecordUpdated,
            EventType::RecordTransitioned,
        ];
        if kinds.iter().any(|kind| kind.as_str() != "incident") {
            return Err(invalid("/kinds", "tmf621 events are of incidents only"));
        }
        if let Some(other) = events.iter().find(|e| !TICKET_EVENTS.contains(e)) {
            return Err(invalid(
                "/events",
                format!(
                    "tmf621 has no event for {}: record.created, record.updated and record.transitioned only",
                    serde_json::to_value(other).unwrap_or_default()
                ),
            ));
        }
        kinds = vec![Kind::new("incident").map_err(|e| invalid("/kinds", e.to_string()))?];
        if events.is_empty() {
            events = TICKET_EVENTS.to_vec();
        }
    }
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
        events,
        kinds,
        domains,
        secret,
        max_attempts,
        format: new.format,
        created_at: Timestamp::now(),
        created_by: actor.name.clone(),
    };
    store.set_cursor(&subscription.consumer(), crate::outbox::head(store)?)?;
    let encoded = serde_json::to_vec(&subscription).map_err(|e| corrupt("webhook", &e))?;
    store.write_settings(
        &[(format!("{SUBSCRIPTION_PREFIX}{}", subscription.id), encoded)],
        &[],
    )?;
    Ok(subscription)
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
