use std::fmt;

use serde::Serialize;

/// A stable, machine-readable error code. Clients match on these strings; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    /// The request body is not valid JSON or does not have the expected shape.
    MalformedJson,
    /// A parameter or body member has an invalid value.
    InvalidInput,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The request has a content type the route does not accept.
    UnsupportedMediaType,
    /// A `multipart/form-data` body is broken (no boundary, cut off, malformed) or does not
    /// carry exactly one part, the file.
    MultipartInvalid,
    /// The record holds as many attachments, or as many bytes of them, as it may.
    AttachmentQuotaExceeded,
    /// The request target (path and query) is longer than the server accepts.
    UriTooLong,
    /// The request has more header lines, or more header bytes, than the server accepts.
    HeadersTooLarge,
    /// The record kind is not defined in the catalog.
    UnknownKind,
    /// The record's `fields` violate the kind's JSON Schema.
    InvalidFields,
    /// The caller may not write this field: another module owns it, the engine derives it, or
    /// it is not the caller's to set (`owner` says who writes it).
    FieldNotWritable,
    /// The field is not in the kind's schema: a misspelling, or a field no module declares
    /// (`field` names it).
    UnknownField,
    /// The record is not waiting for its requester to confirm a resolution.
    ConfirmationNotExpected,
    /// The state is not a state of the kind's lifecycle.
    UnknownState,
    /// The lifecycle has no transition from the current state to the requested one.
    IllegalTransition,
    /// The actor's roles do not allow this transition.
    TransitionForbidden,
    /// A link points at a record that does not exist.
    UnknownLinkTarget,
    /// The record is in an inactive (finished) state and takes no more approvals.
    RecordInactive,
    /// The actor may not do this.
    Forbidden,
    /// The record does not exist.
    RecordNotFound,
    /// No route matches the request path.
    RouteNotFound,
    /// The route exists but not for this HTTP method.
    MethodNotAllowed,
    /// `If-Match` names a version that is not the current one.
    VersionMismatch,
    /// The server changes records only with `If-Match` (`require_if_match`), and none was sent.
    PreconditionRequired,
    /// The cursor is malformed or belongs to a different query.
    BadCursor,
    /// The `Idempotency-Key` was already used for a different request.
    IdempotencyKeyReused,
    /// A pipeline step refused the write.
    StepRejected,
    /// A pipeline step failed (trap, timeout, memory, invalid output) and its policy is `fail`.
    StepFailed,
    /// A module bundle or manifest is invalid; `location` names the file, key or line.
    ModuleInvalid,
    /// No module with that id is installed.
    ModuleNotFound,
    /// The upload does not upgrade the installed module (same or older version).
    ModuleVersionConflict,
    /// Removing or upgrading the module would drop a kind or state that records still use, or
    /// the module is still enabled in some domains; disabling it would leave records of its
    /// kinds or states read-only (`force=true` does).
    ModuleInUse,
    /// The record is read-only: its domain no longer has its kind or its state, whose module
    /// was disabled there; `module` names the module to enable again.
    ModuleNotEnabled,
    /// An import would replace a module's workflow template without naming a version.
    WorkflowConflict,
    /// No workflow template with that slug.
    WorkflowNotFound,
    /// A USM-WIF document breaks a rule of the format; `field` points at the member, `reason`
    /// names the rule.
    WorkflowInvalid,
    /// The request carries no valid token.
    Unauthorized,
    /// No token with that id.
    TokenNotFound,
    /// Another token has that name; names are unique.
    TokenNameTaken,
    /// No person with that id (or none the caller may see).
    PersonNotFound,
    /// No group with that id (or none the caller may see).
    GroupNotFound,
    /// No saved queue with that id (or none the caller may see).
    QueueNotFound,
    /// The inbound message is not an e-mail message.
    InboundUnparsable,
    /// The sender of an inbound message is not a person of the directory, and unknown senders
    /// are refused.
    SenderUnknown,
    /// A notification rule or template set is not acceptable (`field` names the member).
    NotificationInvalid,
    /// The domain has no notification rule or template set of its own by that name.
    NotificationNotFound,
    /// No catalog item by that id is offered to the caller.
    CatalogItemNotFound,
    /// A catalog item is not acceptable (`field` names the member).
    CatalogItemInvalid,
    /// Another catalog item has that id.
    CatalogItemExists,
    /// The item comes from a module: it changes with the module, not through the API.
    CatalogItemReadOnly,
    /// The item cannot be ordered here now: its approver or a fulfilment group or domain is
    /// missing.
    CatalogItemUnavailable,
    /// The search text does not parse: an unclosed quote, an unknown `name:` filter, too long.
    SearchSyntax,
    /// The search index is being rebuilt from the store; retry after `Retry-After` seconds.
    SearchRebuilding,
    /// Another person or group (or a token's principal) has that id.
    DirectoryIdTaken,
    /// A person or group the input names does not exist, is inactive, or is not of the
    /// record's domain (an assignee, a group member, a manager, a token's person).
    UnknownReference,
    /// Too many requests from this token; retry after the `Retry-After` seconds.
    RateLimited,
    /// No webhook subscription (or delivery) with that id.
    WebhookNotFound,
    /// A webhook URL the destination policy refuses (scheme, credentials, internal address).
    WebhookDestinationRefused,
    /// No automation with that id.
    AutomationNotFound,
    /// The write lost too many races with concurrent writers; retry it.
    WriteConflict,
    /// The request body stopped arriving before it was complete.
    RequestTimeout,
    /// The server is shutting down.
    Unavailable,
    /// More writes arrived than the server can run now; retry after `Retry-After` seconds.
    Overloaded,
    /// An unexpected internal failure (storage I/O, corrupted data).
    Internal,
}

impl ErrorCode {
    /// The code as it appears in problem documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::InvalidInput => "invalid_input",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MultipartInvalid => "multipart_invalid",
            Self::AttachmentQuotaExceeded => "attachment_quota_exceeded",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UnknownKind => "unknown_kind",
            Self::InvalidFields => "invalid_fields",
            Self::FieldNotWritable => "field_not_writable",
            Self::UnknownField => "unknown_field",
            Self::ConfirmationNotExpected => "confirmation_not_expected",
            Self::UnknownState => "unknown_state",
            Self::IllegalTransition => "illegal_transition",
            Self::TransitionForbidden => "transition_forbidden",
            Self::UnknownLinkTarget => "unknown_link_target",
            Self::RecordInactive => "record_inactive",
            Self::Forbidden => "forbidden",
            Self::RecordNotFound => "record_not_found",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::VersionMismatch => "version_mismatch",
            Self::PreconditionRequired => "precondition_required",
            Self::BadCursor => "bad_cursor",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::StepRejected => "step_rejected",
            Self::StepFailed => "step_failed",
            Self::ModuleInvalid => "module_invalid",
            Self::ModuleNotFound => "module_not_found",
            Self::ModuleVersionConflict => "module_version_conflict",
            Self::ModuleInUse => "module_in_use",
            Self::ModuleNotEnabled => "module_not_enabled",
            Self::WorkflowConflict => "workflow_conflict",
            Self::WorkflowNotFound => "workflow_not_found",
            Self::WorkflowInvalid => "workflow_invalid",
            Self::Unauthorized => "unauthorized",
            Self::TokenNotFound => "token_not_found",
            Self::TokenNameTaken => "token_name_taken",
            Self::PersonNotFound => "person_not_found",
            Self::GroupNotFound => "group_not_found",
            Self::QueueNotFound => "queue_not_found",
            Self::InboundUnparsable => "inbound_unparsable",
            Self::SenderUnknown => "sender_unknown",
            Self::NotificationInvalid => "notification_invalid",
            Self::NotificationNotFound => "notification_not_found",
            Self::CatalogItemNotFound => "catalog_item_not_found",
            Self::CatalogItemInvalid => "catalog_item_invalid",
            Self::CatalogItemExists => "catalog_item_exists",
            Self::CatalogItemReadOnly => "catalog_item_read_only",
            Self::CatalogItemUnavailable => "catalog_item_unavailable",
            Self::SearchSyntax => "search_syntax",
            Self::SearchRebuilding => "search_rebuilding",
            Self::DirectoryIdTaken => "directory_id_taken",
            Self::UnknownReference => "unknown_reference",
            Self::RateLimited => "rate_limited",
            Self::WebhookNotFound => "webhook_not_found",
            Self::WebhookDestinationRefused => "webhook_destination_refused",
            Self::AutomationNotFound => "automation_not_found",
            Self::WriteConflict => "write_conflict",
            Self::RequestTimeout => "request_timeout",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
