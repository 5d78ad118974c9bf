//! The durable mail queue and the delivery log, in the store's settings: a message is queued in
//! the same durable write as nothing else depends on, so a crash loses none and a re-read event
//! queues none twice.

use serde::{Deserialize, Serialize};
use usm_model::Timestamp;
use usm_store::{Store, StoreError};

const PENDING: &str = "mail/pending/";
const LOG: &str = "mail/log/";
/// Log entries kept; the oldest go first.
pub(crate) const MAX_LOG: usize = 1_000;

/// A message waiting for delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mail {
    /// `<outbox seq>-<person>`: unique, and the same when an event is read again.
    pub key: String,
    /// The record it is about.
    pub record: String,
    /// The record's domain.
    pub domain: String,
    /// The person it goes to.
    pub person: String,
    /// Their address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
    /// Its `Message-ID`, without angle brackets.
    pub message_id: String,
    /// The thread it answers (`In-Reply-To` and `References`), without angle brackets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not to be tried before.
    pub not_before: Timestamp,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The SMTP server accepted it.
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// An entry of the delivery log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// The mail's key.
    pub key: String,
    /// The record it was about.
    pub record: String,
    /// The record's domain.
    pub domain: String,
    /// The person it went to.
    pub person: String,
    /// Subject line.
    pub subject: String,
    /// How it ended.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it ended.
    pub at: Timestamp,
}

fn corrupt(what: &'static str, error: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: error.to_string(),
    }
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| corrupt(what, &e))
}

/// Whether a mail with this key was queued or logged already.
pub(crate) fn known(store: &dyn Store, key: &str) -> Result<bool, StoreError> {
    Ok(store.setting(&format!("{PENDING}{key}"))?.is_some()
        || store.setting(&format!("{LOG}{key}"))?.is_some())
}

/// Queues mails durably.
pub(crate) fn enqueue(store: &dyn Store, mails: &[Mail]) -> Result<(), StoreError> {
    let puts = mails
        .iter()
        .map(|m| Ok((format!("{PENDING}{}", m.key), encode("mail", m)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    store.write_settings(&puts, &[])
}

/// Every queued mail, oldest first.
pub(crate) fn pending(store: &dyn Store) -> Result<Vec<Mail>, StoreError> {
    store
        .settings(PENDING)?
        .iter()
        .map(|(_, bytes)| serde_json::from_slice(bytes).map_err(|e| corrupt("mail", &e)))
        .collect()
}

/// Puts a mail back with its new attempt count and time.
pub(crate) fn retry(store: &dyn Store, mail: &Mail) -> Result<(), StoreError> {
    enqueue(store, std::slice::from_ref(mail))
}

/// Moves a mail from the queue to the log, dropping the oldest log entries past [`MAX_LOG`].
pub(crate) fn finish(
    store: &dyn Store,
    mail: &Mail,
    delivery: &Delivery,
) -> Result<(), StoreError> {
    let mut delete = vec![format!("{PENDING}{}", mail.key)];
    let logged = store.settings(LOG)?;
    if logged.len() >= MAX_LOG {
        let mut keys: Vec<&String> = logged.iter().map(|(k, _)| k).collect();
        // Keys begin with the zero-padded outbox position: their order is the log's.
        keys.sort();
        delete.extend(
            keys.iter()
                .take(logged.len() + 1 - MAX_LOG)
                .map(|k| (*k).clone()),
        );
    }
    store.write_settings(
        &[(format!("{LOG}{}", mail.key), encode("delivery", delivery)?)],
        &delete,
    )
}

/// The delivery log, newest first (at most the last 1,000 deliveries).
pub fn deliveries(store: &dyn Store) -> Result<Vec<Delivery>, StoreError> {
    let mut entries = store
        .settings(LOG)?
        .iter()
        .map(|(_, bytes)| {
            serde_json::from_slice::<Delivery>(bytes).map_err(|e| corrupt("delivery", &e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by(|a, b| b.key.cmp(&a.key));
    Ok(entries)
}
