//! The contract between the engine and pipeline steps, whatever runs them (WASM, rhai, native).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use usm_model::{Actor, LinkRel};

/// The write a pipeline runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Hook {
    /// A record is created.
    Create,
    /// Title, fields or links change.
    Update,
    /// The record changes state.
    Transition,
    /// An approval decision is recorded.
    Approval,
    /// An SLA clock reached its warning threshold or its target (after-steps only).
    Sla,
}

impl Hook {
    /// The lowercase name used in manifests and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Transition => "transition",
            Self::Approval => "approval",
            Self::Sla => "sla",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a step runs relative to the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Phase {
    /// Synchronously, on the proposed record, before the commit; may patch or reject.
    Before,
    /// Asynchronously from the outbox, after the commit; may return effects.
    After,
}

/// What a step failure does to the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OnError {
    /// The hook fails: a before-step failure refuses the write.
    Fail,
    /// The failure is logged and the pipeline continues.
    Skip,
}

/// What a step sees. Records are JSON objects in the API's record shape.
#[derive(Debug, Clone, Serialize)]
pub struct StepInput<'a> {
    /// The hook.
    pub hook: Hook,
    /// The phase.
    pub phase: Phase,
    /// Before: the proposed record. After: the record as it is now.
    pub record: &'a Value,
    /// Before: the stored version the write started from (absent on create).
    pub previous: Option<&'a Value>,
    /// Who makes the write.
    pub actor: &'a Actor,
    /// Hook details: `{"transition": {from, to, comment}}`, `{"approval": {...}}`, or for
    /// after-steps `{"event": {...}, "changes": [...]}`.
    pub context: &'a Value,
}

/// An after-step's request for a follow-up write, carried out by the engine as the module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Effect {
    /// Create a record, optionally linked to the triggering record.
    CreateRecord {
        /// The kind.
        kind: String,
        /// The title.
        title: String,
        /// The domain; the triggering record's when absent.
        #[serde(default)]
        domain: Option<String>,
        /// The fields.
        #[serde(default)]
        fields: Map<String, Value>,
        /// Link the new record to the triggering one with this relation (e.g. `parent`).
        #[serde(default)]
        link: Option<LinkRel>,
    },
    /// Move a record (the triggering one when `record` is absent) to another state.
    Transition {
        /// The record to move.
        #[serde(default)]
        record: Option<String>,
        /// The target state.
        to: String,
        /// Why.
        #[serde(default)]
        comment: Option<String>,
    },
    /// Add a link from a record (the triggering one when `from` is absent) to another.
    Link {
        /// The record that gets the link.
        #[serde(default)]
        from: Option<String>,
        /// The relation.
        rel: LinkRel,
        /// The target.
        to: String,
    },
    /// Emit a notification event about the triggering record.
    Notify {
        /// Who or what should hear about it, e.g. `team:network`.
        audience: String,
        /// The message.
        message: String,
    },
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutput {
    /// Go on unchanged.
    Continue,
    /// Go on with this JSON merge patch applied to the proposed record (`title`, `fields`,
    /// `links` only). Before-steps only.
    Patch(Map<String, Value>),
    /// Refuse the write. Before-steps only.
    Reject {
        /// A machine-readable reason, e.g. `missing_category`.
        code: String,
        /// A message for the client.
        message: String,
    },
    /// Follow-up writes. After-steps only.
    Effects(Vec<Effect>),
}

/// Why a step failed (as opposed to rejecting the write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The step's own code used up its CPU time budget.
    #[error("exceeded its time budget of {0} ms of CPU time")]
    Timeout(u64),
    /// The call ran past its wall-clock backstop without using up its CPU budget: the host
    /// stalled or could not give it a core. Not the step's fault, so it never trips the breaker.
    #[error("could not finish within {0} ms: the server is overloaded or stalled")]
    Stalled(u64),
    /// The step tried to use more memory than allowed.
    #[error("exceeded its memory limit: {0}")]
    Memory(String),
    /// The step trapped or raised an error.
    #[error("crashed: {0}")]
    Trap(String),
    /// The step returned something that is not a valid output.
    #[error("returned an invalid output: {0}")]
    InvalidOutput(String),
    /// The step's output exceeds the size limit.
    #[error("returned {size} bytes, over the limit of {limit}")]
    OutputTooLarge {
        /// The output's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The step exceeded an operation or size limit of its sandbox.
    #[error("exceeded a sandbox limit: {0}")]
    Limit(String),
    /// The step kept exceeding its budget and is suspended for this many more seconds.
    #[error("is suspended for {0} s after repeatedly exceeding its time or memory budget")]
    Suspended(u64),
}

impl StepError {
    /// A short tag for logs, history and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Stalled(_) => "stalled",
            Self::Memory(_) => "memory",
            Self::Trap(_) => "trap",
            Self::InvalidOutput(_) => "invalid_output",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::Limit(_) => "limit",
            Self::Suspended(_) => "suspended",
        }
    }
}

/// A pipeline step, built once from its module's manifest with its config bound.
pub trait Step: Send + Sync {
    /// Runs the step on one write.
    fn run(&self, input: &StepInput<'_>) -> Result<StepOutput, StepError>;
}

impl<F> Step for F
where
    F: Fn(&StepInput<'_>) -> Result<StepOutput, StepError> + Send + Sync,
{
    fn run(&self, input: &StepInput<'_>) -> Result<StepOutput, StepError> {
        self(input)
    }
}
