use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Domain, Kind, RecordId, Role, State, diff::Change};

/// The five USM processes; every record kind belongs to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Process {
    /// Agreements with customers and suppliers, the service catalog, customer wishes (CTM).
    Agree,
    /// Controlled change of the managed infrastructure (CHM).
    Change,
    /// Restoring the agreed service after an incident (INC).
    Recover,
    /// Planned, routine work: operational tasks and standard requests (OPS).
    Operate,
    /// Risk management and continual improvement (IMP).
    Improve,
}

impl Process {
    /// All processes in USM order.
    pub const ALL: [Process; 5] = [
        Self::Agree,
        Self::Change,
        Self::Recover,
        Self::Operate,
        Self::Improve,
    ];

    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agree => "agree",
            Self::Change => "change",
            Self::Recover => "recover",
            Self::Operate => "operate",
            Self::Improve => "improve",
        }
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a link relates its record to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LinkRel {
    /// The target is this record's parent (a task of a request, an incident of a problem).
    Parent,
    /// The target caused this record (an incident caused by a change).
    CausedBy,
    /// This record fixes the target (a change fixing a problem).
    Fixes,
    /// This record affects the target, typically a `ci` or a `service`.
    Affects,
    /// This record duplicates the target.
    DuplicateOf,
    /// A plain association.
    RelatesTo,
}

impl LinkRel {
    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parent => "parent",
            Self::CausedBy => "caused_by",
            Self::Fixes => "fixes",
            Self::Affects => "affects",
            Self::DuplicateOf => "duplicate_of",
            Self::RelatesTo => "relates_to",
        }
    }
}

/// A typed relation from one record to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Link {
    /// The relation.
    pub rel: LinkRel,
    /// The related record.
    pub to: RecordId,
}

/// A record: one agreement, change, incident, request, task, … with its current version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Record {
    /// Human-friendly id, e.g. `INC-1042`.
    pub id: RecordId,
    /// The record kind.
    pub kind: Kind,
    /// The USM process the kind belongs to.
    pub process: Process,
    /// The service domain the record lives in.
    pub domain: Domain,
    /// The current lifecycle state.
    pub state: State,
    /// A one-line summary.
    pub title: String,
    /// Kind-specific data, validated by the kind's JSON Schema.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub fields: Map<String, Value>,
    /// Typed relations to other records.
    pub links: Vec<Link>,
    /// Starts at 1 and grows by one with every write.
    pub version: u64,
    /// When the record was created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// Who created the record.
    pub created_by: String,
    /// When the record was last written.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
    /// Who last wrote the record.
    pub updated_by: String,
}

/// What a write did, as recorded in history and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Action {
    /// The record was created.
    Create,
    /// Title, fields or links were changed.
    Update,
    /// The record moved to another lifecycle state.
    Transition,
    /// An approval decision was recorded.
    Approval,
    /// A comment was added to the record's conversation.
    Comment,
    /// A file was attached or an attachment removed.
    Attachment,
}

/// Who reads a comment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Visibility {
    /// The requester and the agents.
    #[default]
    Public,
    /// Agents only (a work note).
    Internal,
}

/// The outcome of one pipeline step during a write, kept in history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepRun {
    /// The module that contributed the step.
    pub module: String,
    /// The step's name within the module.
    pub step: String,
    /// `continued`, `patched`, `rejected`, `failed` or `skipped`.
    pub outcome: String,
    /// Wall time spent in the step, in microseconds.
    pub micros: u64,
    /// What the step changed on the proposed record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
}

/// One entry of a record's history: one per version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    /// The record version this write produced.
    pub version: u64,
    /// When the write was made.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// Who made the write.
    pub actor: String,
    /// What kind of write it was.
    pub action: Action,
    /// A free-text comment given with a transition or approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// What changed, as JSON-pointer paths with old and new values.
    pub changes: Vec<Change>,
    /// The approval recorded by this write, for `approval` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The pipeline steps that ran for this write, in order.
    #[serde(default)]
    pub steps: Vec<StepRun>,
    /// The after-step whose effect made this write, when a step made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// For `comment` entries, who reads it; the body is `comment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    /// Approvals (by `seq`) this write made stale by changing the content they approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_approvals: Vec<u64>,
    /// Made by a principal holding the agent or admin role, not by a pipeline step's effect:
    /// the first such write after creation meets a record's response target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_agent: bool,
}

/// The after-step effect that caused a write: answers "why does this record exist?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cause {
    /// The outbox event the step ran for.
    pub event: u64,
    /// The record that event was about.
    pub record_id: RecordId,
    /// The module of the step.
    pub module: String,
    /// The step.
    pub step: String,
    /// How many effects deep this write is (1 = caused by a client's write).
    pub depth: u32,
}

/// An approval decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Decision {
    /// The approver agrees.
    Approve,
    /// The approver refuses.
    Reject,
}

/// Who approved (or rejected) what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Approval {
    /// Position among the record's approvals, from 1.
    pub seq: u64,
    /// The decision.
    pub decision: Decision,
    /// The approver's reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The approver.
    pub actor: String,
    /// The approver's roles at the time.
    pub roles: Vec<Role>,
    /// When the decision was recorded.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// The record state the decision was made in.
    pub state: State,
    /// The record version the approver saw.
    pub record_version: u64,
    /// A digest of the material content (the kind's material fields) the approver approved;
    /// an edit of any of them makes the approval stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The approver's groups in the record's domain at the time: an authority (say a change
    /// authority) is a group, not a token's name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// What happened to a record; the outbox carries these to after-steps, webhooks and SLAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    /// A record was created.
    #[serde(rename = "record.created")]
    RecordCreated,
    /// Title, fields or links changed.
    #[serde(rename = "record.updated")]
    RecordUpdated,
    /// The record changed state.
    #[serde(rename = "record.transitioned")]
    RecordTransitioned,
    /// An approval was recorded.
    #[serde(rename = "record.approval")]
    ApprovalRecorded,
    /// A comment was added.
    #[serde(rename = "record.commented")]
    RecordCommented,
    /// A file was attached or an attachment removed.
    #[serde(rename = "record.attachment")]
    AttachmentChanged,
    /// A step asked for a notification about the record.
    #[serde(rename = "notification")]
    Notification,
    /// An SLA clock reached its warning threshold.
    #[serde(rename = "sla.warning")]
    SlaWarning,
    /// An SLA clock reached its target.
    #[serde(rename = "sla.breach")]
    SlaBreach,
}

impl EventType {
    /// Whether the event is a client's or step's write of a new record version (SLA timers and
    /// `notify` effects name a version some earlier write made).
    pub fn is_record_write(self) -> bool {
        matches!(
            self,
            Self::RecordCreated
                | Self::RecordUpdated
                | Self::RecordTransitioned
                | Self::RecordCommented
        )
    }
}

impl From<Action> for EventType {
    fn from(action: Action) -> Self {
        match action {
            Action::Create => Self::RecordCreated,
            Action::Update => Self::RecordUpdated,
            Action::Transition => Self::RecordTransitioned,
            Action::Approval => Self::ApprovalRecorded,
            Action::Comment => Self::RecordCommented,
            Action::Attachment => Self::AttachmentChanged,
        }
    }
}

/// An outbox event, written in the same transaction as the record version it describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Position in the outbox; strictly increasing.
    pub seq: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The record it happened to.
    pub record_id: RecordId,
    /// The record's kind.
    pub kind: Kind,
    /// The record's domain.
    pub domain: Domain,
    /// The record version the write produced.
    pub version: u64,
    /// The state after the write.
    pub state: State,
    /// Who made the write.
    pub actor: String,
    /// When.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// How many after-step effects deep the write is (0 = a client's write).
    #[serde(default)]
    pub depth: u32,
    /// Extra data, e.g. a notification's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<serde_json::Value>,
}
