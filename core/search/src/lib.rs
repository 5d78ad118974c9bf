//! Queues and full-text search over records.
//!
//! A tantivy index in the data directory holds, per record, the terms a desk filters on
//! (domain, kind, state, assignee, group, requester, priority), the keys it sorts by (creation,
//! last update, priority, SLA due time) and the words of its title, text fields, comments and
//! attachment names. An outbox consumer keeps it in step with commits; it is rebuilt from the
//! store when missing, of another schema, or behind what the outbox still holds.
//!
//! The store stays the truth. The index chooses and orders candidates; every hit is read again
//! from the store and shown only if the caller may see it and it still matches the filters, so
//! the index lagging a commit can delay a record's arrival in a queue but never show one that
//! the caller may not see or that no longer belongs there.

mod document;
mod index;
mod query;
pub mod queues;
mod worker;

pub use index::{Hits, SearchIndex};
pub use query::{Filter, SlaFilter, Sort, SortKey};
pub use worker::SearchWorker;

use usm_engine::EngineError;
use usm_store::StoreError;

/// What a search or a queue can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A parameter has an invalid value.
    #[error("{field}: {message}")]
    InvalidInput {
        /// The parameter.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The search text does not parse.
    #[error("{0}")]
    Syntax(String),
    /// The cursor is malformed or belongs to another query.
    #[error("the cursor is malformed or belongs to another query")]
    BadCursor,
    /// The index is being rebuilt from the store.
    #[error("the search index is being rebuilt from the store; try again shortly")]
    Rebuilding,
    /// No saved queue with that id (or none the caller may see).
    #[error("queue {0} does not exist")]
    QueueNotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A queue names a group or person that does not exist in its domain.
    #[error("{field}: {message}")]
    UnknownReference {
        /// JSON pointer of the member.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index failed.
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
}

impl SearchError {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}
