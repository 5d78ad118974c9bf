//! Notifications: e-mail to the people a record concerns.
//!
//! An outbox consumer turns commits into messages for people of the directory: the requester's
//! acknowledgement when a record is created, the requester on every public reply of someone
//! else, the assignee when a record is assigned to them. Messages are rendered from templates
//! (minijinja; plain text and HTML), queued durably in the store's settings, and delivered over
//! SMTP (lettre) with retries and backoff; every outcome goes to a delivery log. Mails of a
//! record form one thread: the subject carries `[usm INC-12]`, the acknowledgement's
//! `Message-ID` is the record's, and every later mail refers to it.

mod queue;
mod rules;
mod templates;
mod worker;

pub use queue::{Delivery, DeliveryStatus, Mail, deliveries};
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
