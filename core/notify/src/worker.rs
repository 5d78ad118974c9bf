//! The notification thread: turns outbox events into queued mails and delivers them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lettre::{
    Message, SmtpTransport, Transport,
    message::{Mailbox, MultiPart},
    transport::smtp::authentication::Credentials,
};
use usm_engine::{Background, Engine, Registry};
use usm_model::Timestamp;
use usm_store::StoreError;

use crate::{
    ModuleNotifications, NotifyError,
    queue::{self, Delivery, DeliveryStatus, Mail},
    rules,
    templates::Templates,
};

/// Outbox events read per batch.
const BATCH: usize = 128;
/// Delivery attempts before a mail is logged as failed.
const MAX_ATTEMPTS: u32 = 8;
/// The first retry's delay; each later one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where and as whom mail is sent.
#[derive(Debug, Clone, Default)]
pub struct MailConfig {
    /// `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS) or
    /// `smtps://host:port` (TLS), optionally with `user:password@`. No mail is sent without it.
    pub smtp_url: Option<String>,
    /// The sender, e.g. `Service desk <desk@example.org>`.
    pub smtp_from: Option<String>,
    /// A file holding the SMTP password (for the user named in `smtp_url`).
    pub smtp_password_file: Option<std::path::PathBuf>,
}

/// What the worker sends with.
struct Sender {
    transport: SmtpTransport,
    from: Mailbox,
    /// The domain of `Message-ID`s.
    host: String,
}

impl MailConfig {
    fn sender(&self) -> Result<Option<Sender>, NotifyError> {
        let Some(url) = &self.smtp_url else {
            return Ok(None);
        };
        let from: Mailbox = self
            .smtp_from
            .as_deref()
            .ok_or_else(|| NotifyError::Config("smtp_url is set but smtp_from is not".into()))?
            .parse()
            .map_err(|e| NotifyError::Config(format!("smtp_from: {e}")))?;
        let mut builder = SmtpTransport::from_url(url)
            .map_err(|e| NotifyError::Config(format!("smtp_url: {e}")))?
            .timeout(Some(SMTP_TIMEOUT));
        if let Some(file) = &self.smtp_password_file {
            let password = std::fs::read_to_string(file)
                .map_err(|e| NotifyError::Config(format!("smtp_password_file: {e}")))?;
            let user = url::Url::parse(url)
                .map(|u| u.username().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user, password.trim_end().to_owned()));
        }
        let host = from.email.domain().to_owned();
        Ok(Some(Sender {
            transport: builder.build(),
            from,
            host,
        }))
    }

    /// Checks the settings without connecting; says once when no mail will be sent.
    pub fn check(&self) -> Result<(), NotifyError> {
        if self.sender()?.is_none() {
            tracing::warn!("no smtp_url: notifications are not sent by e-mail");
        }
        Ok(())
    }
}

/// The notification thread. Stops when dropped.
pub struct NotificationWorker(Background);

impl NotificationWorker {
    /// The name of its outbox cursor.
    pub const CONSUMER: &str = "notify";

    /// Starts following the outbox and delivering mail.
    pub fn start(
        engine: Arc<Engine>,
        registry: Arc<Registry>,
        config: &MailConfig,
    ) -> Result<Self, NotifyError> {
        let sender = config.sender()?;
        let templates = Templates::new()?;
        let commits = Arc::clone(engine.commits());
        Background::spawn("usm-notify", commits, move |stop| {
            while !stop.load(Ordering::SeqCst) {
                let seen = engine.commits().count();
                let queued = consume(&engine, &registry, sender.as_ref(), &templates, &stop)
                    .unwrap_or_else(|error| {
                        tracing::error!(%error, "the notification worker cannot read the outbox");
                        0
                    });
                let next = sender
                    .as_ref()
                    .map_or(Ok(None), |sender| deliver(&engine, sender, &stop));
                let wait = match next {
                    Ok(next) => next.unwrap_or(Duration::from_millis(500)),
                    Err(error) => {
                        tracing::error!(%error, "the notification worker cannot deliver");
                        Duration::from_secs(1)
                    }
                };
                if queued == 0 {
                    engine
                        .commits()
                        .wait_past(seen, wait.min(Duration::from_millis(500)));
                }
            }
        })
        .map(Self)
        .map_err(|e| NotifyError::Config(format!("cannot start the notification thread: {e}")))
    }

    /// Stops the worker and waits for it.
    pub fn stop(self) {
        self.0.stop();
    }
}

/// Queues the mails of outbox events past the cursor; returns how many events it read.
fn consume(
    engine: &Engine,
    registry: &Registry,
    sender: Option<&Sender>,
    templates: &Templates,
    stop: &AtomicBool,
) -> Result<usize, NotifyError> {
    let store = engine.store().as_ref();
    if !usm_store::holds_lease(store, NotificationWorker::CONSUMER) {
        return Ok(0);
    }
    let cursor = store.cursor(NotificationWorker::CONSUMER)?;
    let events = store.events_after(cursor, BATCH)?;
    for event in &events {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // Without a server the cursor still moves, so the outbox is not held back for nothing.
        if let Some(sender) = sender {
            let mut mails = Vec::new();
            let modules = ModuleNotifications::of(registry, &event.domain);
            for notice in rules::notices(engine, event, &modules)? {
                // One mail per person and event: the same key when the event is read again.
                let key = format!("{:020}-{}", event.seq, notice.person.id);
                if queue::known(store, &key)? {
                    continue;
                }
                let rendered = match templates.render(
                    store,
                    &event.domain,
                    &modules,
                    &notice.template,
                    notice.person.locale.as_deref(),
                    &notice.context,
                ) {
                    Ok(rendered) => rendered,
                    Err(error) => {
                        tracing::error!(%error, record = %event.record_id, "a notification does not render");
                        continue;
                    }
                };
                let thread = format!("{}@{}", event.record_id, sender.host);
                mails.push(Mail {
                    key: key.clone(),
                    record: event.record_id.to_string(),
                    domain: event.domain.to_string(),
                    person: notice.person.id.clone(),
                    to: notice.person.email.clone().unwrap_or_default(),
                    subject: rendered.subject,
                    text: rendered.text,
                    html: rendered.html,
                    message_id: if notice.opens_thread {
                        thread.clone()
                    } else {
                        format!(
                            "{}.{}.{}@{}",
                            event.record_id, event.seq, notice.person.id, sender.host
                        )
                    },
                    thread: (!notice.opens_thread).then_some(thread),
                    attempts: 0,
                    not_before: event.at,
                    last_error: None,
                });
            }
            if !mails.is_empty() {
                queue::enqueue(store, &mails)?;
            }
        }
        store.set_cursor(NotificationWorker::CONSUMER, event.seq)?;
    }
    Ok(events.len())
}

/// `Auto-Submitted: auto-generated` (RFC 3834): vacation responders do not answer it, and
/// inbound mail that carries it back makes nothing.
#[derive(Clone)]
struct AutoGenerated;

impl lettre::message::header::Header for AutoGenerated {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "auto-generated".into())
    }
}

fn message(sender: &Sender, mail: &Mail) -> Result<Message, String> {
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| format!("address {}: {e}", mail.to))?;
    let mut builder = Message::builder()
        .from(sender.from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .header(AutoGenerated)
        .message_id(Some(format!("<{}>", mail.message_id)));
    if let Some(thread) = &mail.thread {
        builder = builder
            .in_reply_to(format!("<{thread}>"))
            .references(format!("<{thread}>"));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            mail.html.clone(),
        ))
        .map_err(|e| e.to_string())
}

/// Sends the mails that are due; returns how long until the next one is.
fn deliver(
    engine: &Engine,
    sender: &Sender,
    stop: &AtomicBool,
) -> Result<Option<Duration>, StoreError> {
    let store = engine.store().as_ref();
    let now = Timestamp::now();
    let mut next: Option<Duration> = None;
    for mut mail in queue::pending(store)? {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if mail.not_before > now {
            let wait = Duration::try_from(mail.not_before.duration_since(now)).unwrap_or_default();
            next = Some(next.map_or(wait, |n| n.min(wait)));
            continue;
        }
        let outcome = message(sender, &mail).and_then(|message| {
            sender
                .transport
                .send(&message)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        mail.attempts += 1;
        let ended = match outcome {
            Ok(()) => Some((DeliveryStatus::Delivered, None)),
            Err(error) if mail.attempts >= MAX_ATTEMPTS => {
                tracing::error!(to = %mail.to, record = %mail.record, %error, "a notification could not be delivered");
                Some((DeliveryStatus::Failed, Some(error)))
            }
            Err(error) => {
                tracing::warn!(to = %mail.to, attempts = mail.attempts, %error, "notification delivery failed; will retry");
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << (mail.attempts - 1).min(20))
                    .min(MAX_BACKOFF);
                mail.not_before = now
                    .checked_add(jiff::SignedDuration::try_from(backoff).unwrap_or_default())
                    .unwrap_or(now);
                mail.last_error = Some(error);
                queue::retry(store, &mail)?;
                next = Some(next.map_or(backoff, |n| n.min(backoff)));
                None
            }
        };
        if let Some((status, error)) = ended {
            let delivery = Delivery {
                key: mail.key.clone(),
                record: mail.record.clone(),
                domain: mail.domain.clone(),
                person: mail.person.clone(),
                subject: mail.subject.clone(),
                status,
                attempts: mail.attempts,
                error,
                at: Timestamp::now(),
            };
            queue::finish(store, &mail, &delivery)?;
        }
    }
    Ok(next)
}
