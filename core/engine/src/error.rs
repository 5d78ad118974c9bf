use usm_model::{ErrorCode, FieldError, RecordId, Role, State, Writer};
use usm_store::StoreError;

/// Why an engine operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The record does not exist.
    #[error("record {0} does not exist")]
    NotFound(String),
    /// The kind is not in the catalog.
    #[error("unknown kind {kind:?}; known kinds: {known}")]
    UnknownKind {
        /// The requested kind.
        kind: String,
        /// The catalog's kinds, comma separated.
        known: String,
    },
    /// The fields violate the kind's schema.
    #[error("fields do not match the {kind} schema: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidFields {
        /// The kind.
        kind: String,
        /// The violations, first one first.
        errors: Vec<FieldError>,
    },
    /// A member of the input has an invalid value.
    #[error("{field}: {message}")]
    InvalidInput {
        /// JSON pointer (or parameter name) of the member.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The caller may not write the field.
    #[error("{field} is not yours to write: {}", who_writes(.owner))]
    FieldNotWritable {
        /// JSON pointer of the field, e.g. `/fields/priority`.
        field: String,
        /// Who writes it.
        owner: Writer,
    },
    /// The field is not in the kind's schema.
    #[error("{field} is not a field of {kind}: declare it in a module before writing it")]
    UnknownField {
        /// JSON pointer of the field, e.g. `/fields/urgancy`.
        field: String,
        /// The record's kind.
        kind: String,
    },
    /// The input names a person or group that does not exist, is inactive or is of another
    /// domain.
    #[error("{field}: {message}")]
    UnknownReference {
        /// JSON pointer of the member.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The record is not in the state where its requester answers a resolution.
    #[error("{id} is {state}; a resolution is confirmed or rejected only in {expected}")]
    ConfirmationNotExpected {
        /// The record.
        id: RecordId,
        /// Its state.
        state: State,
        /// Where confirmations are taken, if the kind takes them at all.
        expected: String,
    },
    /// The state is not part of the kind's lifecycle.
    #[error("{state} is not a state of {kind}; states: {}", .states.iter().map(State::as_str).collect::<Vec<_>>().join(", "))]
    UnknownState {
        /// The requested state.
        state: String,
        /// The record's kind.
        kind: String,
        /// The kind's states.
        states: Vec<State>,
    },
    /// The lifecycle has no transition from the current state to the requested one.
    #[error("{kind} cannot go from {from} to {to}; allowed: {}", .allowed.iter().map(State::as_str).collect::<Vec<_>>().join(", "))]
    IllegalTransition {
        /// The record's kind.
        kind: String,
        /// Current state.
        from: State,
        /// Requested state.
        to: State,
        /// States reachable from `from`.
        allowed: Vec<State>,
    },
    /// The actor's roles do not allow the transition.
    #[error("going from {from} to {to} needs one of the roles {roles:?}")]
    TransitionForbidden {
        /// Current state.
        from: State,
        /// Requested state.
        to: State,
        /// Roles that may.
        roles: Vec<Role>,
    },
    /// The actor may not perform the operation.
    #[error("{0}")]
    Forbidden(String),
    /// A link names a record that does not exist, or one the actor may not see (the answer is
    /// the same, so it tells nothing).
    #[error("{field}: record {target} is not found")]
    UnknownLinkTarget {
        /// JSON pointer of the link.
        field: String,
        /// The missing record.
        target: RecordId,
    },
    /// The record is finished and takes no approvals.
    #[error("record {id} is {state}, an inactive state")]
    RecordInactive {
        /// The record.
        id: RecordId,
        /// Its state.
        state: State,
    },
    /// `If-Match` named another version than the current one.
    #[error("record {id} is at version {current}, not {expected}")]
    VersionMismatch {
        /// The record.
        id: RecordId,
        /// The version the client sent.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// The cursor is malformed or belongs to a different query.
    #[error("bad cursor: {0}")]
    BadCursor(&'static str),
    /// The idempotency key was first used for a different request.
    #[error("Idempotency-Key was already used for a different request (it created {record_id})")]
    IdempotencyKeyReused {
        /// The record the key created.
        record_id: RecordId,
    },
    /// The write kept losing races with concurrent writers.
    #[error("record {id} changed concurrently {attempts} times in a row; retry")]
    WriteConflict {
        /// The record.
        id: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A before-step refused the write.
    #[error("{module}/{step} rejected the write: {message}")]
    StepRejected {
        /// The step's module.
        module: String,
        /// The step.
        step: String,
        /// The step's reason code.
        code: String,
        /// The step's message.
        message: String,
    },
    /// A step failed and its policy fails the hook.
    #[error("step {module}/{step} {error}")]
    StepFailed {
        /// The step's module.
        module: String,
        /// The step.
        step: String,
        /// What went wrong.
        error: crate::StepError,
    },
    /// The record's domain no longer has its kind, or the state it is in: the module that adds
    /// it was disabled there with `force`. The record is read-only until the module is enabled
    /// again.
    #[error("{id} is read-only in {domain}: {domain} no longer has its {what}; {}", match .module {
        Some(module) => format!("enable module {module} in {domain} to change it again"),
        None => "no installed module adds it".to_owned(),
    })]
    ModuleNotEnabled {
        /// The record.
        id: RecordId,
        /// Its domain.
        domain: usm_model::Domain,
        /// What the domain lacks (`kind risk`, `state scheduled of change`).
        what: String,
        /// The module that adds it.
        module: Option<String>,
    },
    /// The record holds as many attachments, or attachment bytes, as it may.
    #[error("{id} {message}")]
    AttachmentQuotaExceeded {
        /// The record.
        id: RecordId,
        /// Which limit, in words.
        message: String,
    },
    /// More writes arrived than the server can run; the client should retry later.
    #[error("the server is overloaded: {reason}; retry in {retry_after_secs} s")]
    Overloaded {
        /// What is full.
        reason: String,
        /// When to retry.
        retry_after_secs: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => Self::NotFound(id.to_string()),
            StoreError::VersionMismatch {
                id,
                expected,
                current,
            } => Self::VersionMismatch {
                id,
                expected,
                current,
            },
            other => Self::Store(other),
        }
    }
}

impl EngineError {
    /// The stable code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::RecordNotFound,
            Self::UnknownKind { .. } => ErrorCode::UnknownKind,
            Self::InvalidFields { .. } => ErrorCode::InvalidFields,
            Self::FieldNotWritable { .. } => ErrorCode::FieldNotWritable,
            Self::UnknownField { .. } => ErrorCode::UnknownField,
            Self::UnknownReference { .. } => ErrorCode::UnknownReference,
            Self::ConfirmationNotExpected { .. } => ErrorCode::ConfirmationNotExpected,
            Self::InvalidInput { .. } => ErrorCode::InvalidInput,
            Self::UnknownState { .. } => ErrorCode::UnknownState,
            Self::IllegalTransition { .. } => ErrorCode::IllegalTransition,
            Self::TransitionForbidden { .. } => ErrorCode::TransitionForbidden,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::UnknownLinkTarget { .. } => ErrorCode::UnknownLinkTarget,
            Self::RecordInactive { .. } => ErrorCode::RecordInactive,
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::BadCursor(_) => ErrorCode::BadCursor,
            Self::IdempotencyKeyReused { .. } => ErrorCode::IdempotencyKeyReused,
            Self::WriteConflict { .. } => ErrorCode::WriteConflict,
            Self::StepRejected { .. } => ErrorCode::StepRejected,
            Self::AttachmentQuotaExceeded { .. } => ErrorCode::AttachmentQuotaExceeded,
            Self::ModuleNotEnabled { .. } => ErrorCode::ModuleNotEnabled,
            // A call the host could not finish in time is the server's overload, not the step's.
            Self::StepFailed {
                error: crate::StepError::Stalled(_),
                ..
            }
            | Self::Overloaded { .. } => ErrorCode::Overloaded,
            Self::StepFailed { .. } => ErrorCode::StepFailed,
            Self::Store(_) => ErrorCode::Internal,
        }
    }

    /// The offending member, as a JSON pointer into the request, where there is one.
    pub fn field(&self) -> Option<String> {
        match self {
            Self::UnknownKind { .. } => Some("/kind".into()),
            Self::InvalidFields { errors, .. } => errors.first().map(|e| e.field.clone()),
            Self::InvalidInput { field, .. }
            | Self::UnknownLinkTarget { field, .. }
            | Self::FieldNotWritable { field, .. }
            | Self::UnknownField { field, .. }
            | Self::UnknownReference { field, .. } => Some(field.clone()),
            Self::UnknownState { .. } => Some("/to".into()),
            Self::BadCursor(_) => Some("cursor".into()),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, for errors that say so.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Overloaded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::StepFailed {
                error: crate::StepError::Stalled(_),
                ..
            } => Some(1),
            _ => None,
        }
    }

    /// Bad input in `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn who_writes(owner: &Writer) -> String {
    match owner {
        Writer::Requester => {
            "a requester sets it only when creating a record; agents write it after".into()
        }
        Writer::Agent => "agents, automations and admins write it".into(),
        Writer::Module(id) => format!("only the steps of module {id} write it"),
        Writer::System => "the server derives it; no client writes it".into(),
    }
}
