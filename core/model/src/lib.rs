//! `usm-model` owns the vocabulary of usm: records and their kinds, the five USM processes,
//! lifecycles, history entries, approvals, outbox events and the stable error codes that every
//! layer reports. It has no I/O: the store persists these types, the engine changes them, the API
//! serialises them.

mod catalog;
mod code;
mod diff;
mod ids;
mod lifecycle;
mod patch;
mod record;
pub mod service_catalog;

pub use catalog::{
    Catalog, CatalogAdditions, CatalogError, Confirmation, FieldError, FieldPolicies, KindDef,
    StateAddition, WORKERS, Writer, core_kinds, kind_schema,
};
pub use code::ErrorCode;
pub use diff::{Change, diff_record_values, diff_records};
pub use ids::{Actor, Domain, IdError, Kind, RecordId, Role, State};
pub use lifecycle::{Lifecycle, LifecycleError, StateCategory, StateDef, TransitionDef};
pub use patch::{MergePatchError, merge_patch};
pub use record::{
    Action, Approval, Cause, Decision, Event, EventType, HistoryEntry, Link, LinkRel, Process,
    Record, StepRun, Visibility,
};

/// Re-exported so that every crate agrees on one timestamp type.
pub use jiff::Timestamp;
