//! Webhook delivery: one task per subscription follows the outbox from its own durable cursor
//! and POSTs matching events as CloudEvents 1.0 JSON, signed with HMAC-SHA256, retrying with
//! exponential backoff and dead-lettering after the subscription's attempts. In order per
//! subscription (so per record), at least once: the cursor moves only after the outcome is logged.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use usm_engine::{
    Background, Engine,
    webhooks::{self, Delivery, Format, Subscription, WebhookPolicy},
};
use usm_model::{Event, EventType, Timestamp};

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The delivery worker. Stops when dropped.
pub struct WebhookWorker(Background);

impl WebhookWorker {
    /// Starts delivering; `retry_base` is the first backoff, doubled per attempt. Every attempt
    /// goes only where `policy` allows.
    pub fn start(
        engine: Arc<Engine>,
        retry_base: Duration,
        policy: WebhookPolicy,
    ) -> std::io::Result<Self> {
        let commits = Arc::clone(engine.commits());
        Background::spawn("usm-webhooks", commits, move |stop| {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the webhook runtime");
                    return;
                }
            };
            runtime.block_on(supervise(engine, retry_base, Arc::new(policy), stop));
        })
        .map(Self)
    }

    /// Stops delivering (an attempt in flight is abandoned and retried after the next start).
    pub fn stop(self) {
        self.0.stop();
    }
}

/// Resolves a destination's name for a delivery and hands the connection only the addresses
/// it checked, so a name that resolved to a public address when the subscription was made
/// cannot be rebound to an internal one later.
struct CheckedResolver(Arc<WebhookPolicy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            policy.check_addresses(&host, &ips)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The delivery client: no redirects (a receiver cannot bounce a delivery to an internal
/// address), no proxy from the environment, names resolved and checked per connection.
fn client(policy: &Arc<WebhookPolicy>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(CheckedResolver(Arc::clone(policy))))
        .build()
}

/// Keeps one task per subscription running.
async fn supervise(
    engine: Arc<Engine>,
    retry_base: Duration,
    policy: Arc<WebhookPolicy>,
    stop: Arc<AtomicBool>,
) {
    let client = match client(&policy) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the webhook client");
            return;
        }
    };
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        match webhooks::list(engine.store().as_ref()) {
            Ok(subscriptions) => {
                tasks.retain(|id, task| {
                    let keep = subscriptions.iter().any(|s| &s.id == id);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for subscription in subscriptions {
                    tasks.entry(subscription.id.clone()).or_insert_with(|| {
                        tokio::spawn(follow(
                            Arc::clone(&engine),
                            client.clone(),
                            Arc::clone(&policy),
                            subscription,
                            retry_base,
                            Arc::clone(&stop),
                        ))
                    });
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the webhook subscriptions"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for task in tasks.into_values() {
        task.abort();
    }
}

/// Delivers one subscription's events, in outbox order.
async fn follow(
    engine: Arc<Engine>,
    client: reqwest::Client,
    policy: Arc<WebhookPolicy>,
    subscription: Subscription,
    retry_base: Duration,
    stop: Arc<AtomicBool>,
) {
    let store = Arc::clone(engine.store());
    let consumer = subscription.consumer();
    while !stop.load(Ordering::SeqCst) {
        if !usm_store::holds_lease(store.as_ref(), &consumer) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let queued =
            webhooks::queued_redeliveries(store.as_ref(), &subscription.id).unwrap_or_default();
        for (key, seq) in queued {
            if let Ok(Some(event)) = store
                .events_after(seq.saturating_sub(1), 1)
                .map(|e| e.into_iter().next())
            {
                deliver(&engine, &client, &policy, &subscription, &event, retry_base).await;
            }
            if let Err(error) = store.write_settings(&[], &[key]) {
                tracing::error!(%error, "cannot dequeue a redelivery");
            }
        }
        let cursor = match store.cursor(&consumer) {
            Ok(cursor) => cursor,
            Err(error) => {
                tracing::error!(%error, "cannot read a webhook cursor");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let events = store.events_after(cursor, 100).unwrap_or_default();
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for event in events {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if subscription.wants(&event) {
                deliver(&engine, &client, &policy, &subscription, &event, retry_base).await;
            }
            if let Err(error) = store.set_cursor(&consumer, event.seq) {
                tracing::error!(%error, "cannot move a webhook cursor");
            }
        }
    }
}

/// The CloudEvents 1.0 JSON of an event, with the record as it is now.
fn cloud_event(engine: &Engine, event: &Event) -> Value {
    let record = engine.store().get(&event.record_id).ok().flatten();
    let type_name = serde_json::to_value(event.event_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    json!({
        "specversion": "1.0",
        "id": format!("usm-{}", event.seq),
        "source": format!("/usm/{}", event.domain),
        "type": format!("usm.{type_name}"),
        "subject": event.record_id,
        "time": event.at,
        "datacontenttype": "application/json",
        "data": {"event": event, "record": record},
    })
}

/// The TMF621 v4 event of an incident's event: the ticket as it is at delivery, in the state
/// the event left it (a listener catching up learns each move in order); `None` when the
/// incident is gone.
fn ticket_event(engine: &Engine, event: &Event) -> Option<Value> {
    let mut record = engine.store().get(&event.record_id).ok().flatten()?;
    record.state = event.state.clone();
    let due = engine
        .sla(&record)
        .ok()
        .flatten()
        .and_then(|sla| sla.resolution)
        .and_then(|clock| clock.due_at);
    let event_type = match event.event_type {
        EventType::RecordCreated => "TroubleTicketCreateEvent",
        EventType::RecordTransitioned => "TroubleTicketStateChangeEvent",
        _ => "TroubleTicketAttributeValueChangeEvent",
    };
    Some(json!({
        "eventId": format!("usm-{}", event.seq),
        "eventTime": event.at,
        "eventType": event_type,
        "event": {"troubleTicket": usm_tmf621::ticket(&record, due)},
    }))
}

/// HMAC-SHA256 of the body with the subscription's secret, hex.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Delivers one event with retries; logs the outcome.
async fn deliver(
    engine: &Engine,
    client: &reqwest::Client,
    policy: &WebhookPolicy,
    subscription: &Subscription,
    event: &Event,
    retry_base: Duration,
) {
    let (body, content_type) = match subscription.format {
        Format::Cloudevents => (cloud_event(engine, event), "application/cloudevents+json"),
        Format::Tmf621 => match ticket_event(engine, event) {
            Some(body) => (body, "application/json"),
            None => return,
        },
    };
    let body = body.to_string();
    let signature = format!(
        "sha256={}",
        signature(&subscription.secret, body.as_bytes())
    );
    let mut backoff = retry_base;
    let mut delivery = Delivery {
        event: event.seq,
        status: "retrying".into(),
        attempts: 0,
        response_status: None,
        error: None,
        at: Timestamp::now(),
    };
    while delivery.attempts < subscription.max_attempts {
        delivery.attempts += 1;
        // Addresses in the URL are checked here (they are never resolved), names by the
        // client's resolver, both at every attempt.
        let result = match policy.check_url(&subscription.url) {
            Ok(url) => client
                .post(url)
                .header("content-type", content_type)
                .header("x-usm-signature", &signature)
                .header(
                    "x-usm-delivery",
                    format!("{}/{}", subscription.id, event.seq),
                )
                .body(body.clone())
                .send()
                .await
                .map_err(|error| {
                    // The resolver's refusal is the error's source; show it, not only "error
                    // sending request".
                    let mut message = error.to_string();
                    let mut source = std::error::Error::source(&error);
                    while let Some(inner) = source {
                        message = format!("{message}: {inner}");
                        source = inner.source();
                    }
                    message
                }),
            Err(refused) => Err(refused.to_string()),
        };
        delivery.at = Timestamp::now();
        match result {
            Ok(response) if response.status().is_success() => {
                delivery.status = "delivered".into();
                delivery.response_status = Some(response.status().as_u16());
                delivery.error = None;
                break;
            }
            Ok(response) => {
                delivery.response_status = Some(response.status().as_u16());
                delivery.error = Some(format!("the receiver answered {}", response.status()));
            }
            Err(error) => delivery.error = Some(error),
        }
        if delivery.attempts >= subscription.max_attempts {
            delivery.status = "dead".into();
            tracing::warn!(webhook = %subscription.id, event = event.seq, "delivery dead-lettered");
            break;
        }
        log(engine, subscription, &delivery);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    log(engine, subscription, &delivery);
}

fn log(engine: &Engine, subscription: &Subscription, delivery: &Delivery) {
    if let Err(error) = webhooks::log_delivery(engine.store().as_ref(), &subscription.id, delivery)
    {
        tracing::error!(%error, "cannot log a webhook delivery");
    }
}
