//! Notifications: e-mail to the people a record concerns.
//!
//! An outbox consumer turns commits into messages for people of the directory, as the
//! notification rules of the record's domain say (by default: the requester's acknowledgement
//! when a record is created and every public reply of someone else, the assignee when a record
//! is assigned to them, the change authority when a change awaits approval, whoever a module's
//! `notify` effect names). Messages are rendered from templates (minijinja; plain text and
//! HTML; per domain and language), queued durably in the store's settings, and delivered over
//! SMTP (lettre) with retries and backoff; every outcome goes to a delivery log. Mails of a
//! record form one thread: the subject carries `[usm INC-12]`, the acknowledgement's
//! `Message-ID` is the record's, and every later mail refers to it.

mod modules;
mod queue;
pub mod rules;
pub mod templates;
mod worker;

pub use modules::{ModuleNotifications, ModuleNotificationsCheck};
pub use queue::{Delivery, DeliveryStatus, Mail, deliveries};
pub use rules::{Recipient, Rule, RuleInForce, Trigger};
pub use templates::TemplateSet;
pub use worker::{MailConfig, NotificationWorker};

use usm_store::StoreError;

/// What notifications can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// A template does not render.
    #[error("template {name}: {detail}")]
    Template {
        /// The template.
        name: String,
        /// Why.
        detail: String,
    },
    /// A rule or template set is not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// The JSON pointer of the member at fault.
        field: String,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
