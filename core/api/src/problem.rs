//! RFC 9457 problem documents: the one shape of every error the API returns.

use actix_web::{
    HttpResponse, ResponseError,
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{StatusCode, header},
};
use serde::Serialize;
use usm_engine::EngineError;
use usm_model::{ErrorCode, FieldError, State};

/// A problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:usm:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The stable machine-readable code. An open set: the known values are the `ErrorCode`
    /// schema's, and a client should treat one it does not know by the HTTP status.
    #[schema(value_type = String, example = "record_not_found")]
    pub code: ErrorCode,
    /// The offending member as a JSON pointer into the request body, or a parameter name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every schema violation, for `invalid_fields`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// States reachable from the current one, for `illegal_transition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed: Option<Vec<State>>,
    /// The record's current version, for `version_mismatch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The module of the step that rejected or failed the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The step that rejected or failed the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The rejecting step's own reason code; for `workflow_invalid`, the USM-WIF rule broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who writes the field, for `field_not_writable`: `requester`, `agent`, `module:<id>` or
    /// `system`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The HTTP status of each error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::MalformedJson
        | C::InvalidInput
        | C::BadCursor
        | C::SearchSyntax
        | C::InboundUnparsable
        | C::MultipartInvalid => StatusCode::BAD_REQUEST,
        C::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::UriTooLong => StatusCode::URI_TOO_LONG,
        C::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        C::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        C::UnknownKind
        | C::InvalidFields
        | C::UnknownState
        | C::UnknownLinkTarget
        | C::IdempotencyKeyReused
        | C::StepRejected
        | C::ModuleInvalid
        | C::FieldNotWritable
        | C::UnknownField
        | C::UnknownReference
        | C::WorkflowInvalid
        | C::NotificationInvalid
        | C::CatalogItemInvalid
        | C::SenderUnknown
        | C::WebhookDestinationRefused => StatusCode::UNPROCESSABLE_ENTITY,
        C::ModuleVersionConflict
        | C::AttachmentQuotaExceeded
        | C::ModuleInUse
        | C::ModuleNotEnabled
        | C::WorkflowConflict
        | C::TokenNameTaken
        | C::CatalogItemExists
        | C::CatalogItemReadOnly
        | C::CatalogItemUnavailable
        | C::DirectoryIdTaken => StatusCode::CONFLICT,
        C::ModuleNotFound
        | C::PersonNotFound
        | C::GroupNotFound
        | C::QueueNotFound
        | C::NotificationNotFound
        | C::CatalogItemNotFound
        | C::WorkflowNotFound
        | C::TokenNotFound
        | C::WebhookNotFound
        | C::AutomationNotFound => StatusCode::NOT_FOUND,
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        C::IllegalTransition
        | C::RecordInactive
        | C::WriteConflict
        | C::ConfirmationNotExpected => StatusCode::CONFLICT,
        C::TransitionForbidden | C::Forbidden => StatusCode::FORBIDDEN,
        C::RecordNotFound | C::RouteNotFound => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::VersionMismatch => StatusCode::PRECONDITION_FAILED,
        C::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
        C::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        C::Unavailable | C::Overloaded | C::SearchRebuilding => StatusCode::SERVICE_UNAVAILABLE,
        C::Internal | C::StepFailed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn title_of(code: ErrorCode) -> &'static str {
    use ErrorCode as C;
    match code {
        C::MalformedJson => "Malformed JSON body",
        C::InvalidInput => "Invalid input",
        C::PayloadTooLarge => "Request body too large",
        C::UnsupportedMediaType => "Unsupported media type",
        C::MultipartInvalid => "Malformed multipart upload",
        C::AttachmentQuotaExceeded => "The record's attachments are full",
        C::UriTooLong => "Request target too long",
        C::HeadersTooLarge => "Request headers too large",
        C::UnknownKind => "Unknown record kind",
        C::InvalidFields => "Fields do not match the kind's schema",
        C::UnknownState => "Unknown state",
        C::IllegalTransition => "Transition not allowed",
        C::TransitionForbidden => "Transition not allowed for your roles",
        C::UnknownLinkTarget => "Link to an unknown record",
        C::RecordInactive => "Record is inactive",
        C::Forbidden => "Forbidden",
        C::RecordNotFound => "Record not found",
        C::RouteNotFound => "No such route",
        C::MethodNotAllowed => "Method not allowed",
        C::VersionMismatch => "Version mismatch",
        C::PreconditionRequired => "If-Match required",
        C::BadCursor => "Bad cursor",
        C::IdempotencyKeyReused => "Idempotency key reused",
        C::WriteConflict => "Write conflict",
        C::StepRejected => "Rejected by a pipeline step",
        C::StepFailed => "A pipeline step failed",
        C::ModuleInvalid => "Invalid module",
        C::ModuleNotFound => "Module not found",
        C::ModuleVersionConflict => "Not a newer version of the installed module",
        C::ModuleInUse => "The module is in use",
        C::ModuleNotEnabled => "The record's module is not enabled in its domain",
        C::WorkflowConflict => "The workflow would replace a module's template",
        C::FieldNotWritable => "The field is not the caller's to write",
        C::UnknownField => "The field is not in the kind's schema",
        C::PersonNotFound => "Person not found",
        C::GroupNotFound => "Group not found",
        C::QueueNotFound => "Queue not found",
        C::NotificationInvalid => "Notification rule or template not acceptable",
        C::InboundUnparsable => "Not an e-mail message",
        C::SenderUnknown => "Unknown sender",
        C::NotificationNotFound => "Notification rule or template not found",
        C::CatalogItemNotFound => "Catalog item not found",
        C::CatalogItemInvalid => "Catalog item not acceptable",
        C::CatalogItemExists => "A catalog item has that id",
        C::CatalogItemReadOnly => "The catalog item comes from a module",
        C::CatalogItemUnavailable => "The catalog item cannot be ordered now",
        C::SearchSyntax => "Search syntax error",
        C::SearchRebuilding => "Search index rebuilding",
        C::DirectoryIdTaken => "The id is taken",
        C::UnknownReference => "A person or group named does not exist here",
        C::ConfirmationNotExpected => "The record is not waiting for a confirmation",
        C::WorkflowNotFound => "Workflow not found",
        C::WorkflowInvalid => "Invalid USM-WIF document",
        C::Unauthorized => "Authentication required",
        C::TokenNotFound => "Token not found",
        C::TokenNameTaken => "Token name taken",
        C::RateLimited => "Too many requests",
        C::WebhookNotFound => "Webhook not found",
        C::WebhookDestinationRefused => "Webhook destination refused",
        C::AutomationNotFound => "Automation not found",
        C::RequestTimeout => "Request body timed out",
        C::Unavailable => "Service unavailable",
        C::Overloaded => "Server overloaded",
        C::Internal => "Internal error",
    }
}

/// An error on its way to becoming a problem response.
#[derive(Debug)]
pub struct ApiError(Box<Problem>, Vec<(&'static str, String)>);

impl ApiError {
    /// The problem document, for answers that carry several (a batch's results).
    pub(crate) fn into_problem(self) -> Problem {
        *self.0
    }

    /// A problem with the given code and detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self(
            Box::new(Problem {
                problem_type: format!("urn:usm:problem:{code}"),
                title: title_of(code).to_owned(),
                status: status_of(code).as_u16(),
                detail: detail.into(),
                code,
                field: None,
                errors: None,
                allowed: None,
                current_version: None,
                module: None,
                step: None,
                reason: None,
                owner: None,
            }),
            Vec::new(),
        )
    }

    /// Adds a response header (e.g. `Retry-After`, `WWW-Authenticate`).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.1.push((name, value.into()));
        self
    }

    /// Names the offending member.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    /// Names the rule broken.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.0.reason = Some(reason.into());
        self
    }

    /// The problem document.
    pub fn problem(&self) -> &Problem {
        &self.0
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_of(self.0.code)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        for (name, value) in &self.1 {
            response.insert_header((*name, value.as_str()));
        }
        response.json(&*self.0)
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let code = error.code();
        if code == ErrorCode::Internal {
            // Log the cause; do not hand storage internals to clients.
            tracing::error!(%error, "internal error");
            return Self::new(
                code,
                "the server failed to complete the request; it has been logged",
            );
        }
        let mut api = Self::new(code, error.to_string());
        api.0.field = error.field();
        if let Some(seconds) = error.retry_after_secs() {
            api = api.with_header("Retry-After", seconds.to_string());
        }
        match error {
            EngineError::InvalidFields { errors, .. } => api.0.errors = Some(errors),
            EngineError::IllegalTransition { allowed, .. } => api.0.allowed = Some(allowed),
            EngineError::VersionMismatch { current, .. } => api.0.current_version = Some(current),
            EngineError::StepRejected {
                module, step, code, ..
            } => {
                api.0.module = Some(module);
                api.0.step = Some(step);
                api.0.reason = Some(code);
            }
            EngineError::StepFailed { module, step, .. } => {
                api.0.module = Some(module);
                api.0.step = Some(step);
            }
            EngineError::FieldNotWritable { owner, .. } => api.0.owner = Some(owner.to_string()),
            EngineError::ModuleNotEnabled { module, .. } => api.0.module = module,
            _ => {}
        }
        api
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        Self::new(ErrorCode::Unavailable, "the server is shutting down")
    }
}

/// Maps body extraction failures (size, content type, syntax, shape) to problems.
pub fn json_error(error: JsonPayloadError) -> ApiError {
    match error {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
        ),
        JsonPayloadError::Deserialize(error) if error.is_data() => ApiError::new(
            ErrorCode::InvalidInput,
            format!("the body has the wrong shape: {error}"),
        ),
        JsonPayloadError::Deserialize(error) => ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {error}"),
        ),
        JsonPayloadError::Payload(error) => payload_error(&error),
        other => ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body could not be read: {other}"),
        ),
    }
}

/// Maps failures to read a body to problems.
pub fn payload_error(error: &actix_web::error::PayloadError) -> ApiError {
    use actix_web::error::PayloadError as P;
    match error {
        P::Overflow => ApiError::new(ErrorCode::PayloadTooLarge, "the body is too large"),
        P::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            ApiError::new(ErrorCode::RequestTimeout, io.to_string())
        }
        other => ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body could not be read: {other}"),
        ),
    }
}

/// The problem for an error response some layer below the handlers made without a body of
/// ours (e.g. a `Bytes` body over the limit, 413 `text/plain`); `None` for statuses we never
/// answer that way.
pub fn problem_for_status(status: StatusCode) -> Option<ApiError> {
    let (code, detail) = match status {
        StatusCode::BAD_REQUEST => (ErrorCode::InvalidInput, "the request is malformed"),
        StatusCode::NOT_FOUND => (ErrorCode::RouteNotFound, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (ErrorCode::MethodNotAllowed, "method not allowed"),
        StatusCode::REQUEST_TIMEOUT => (ErrorCode::RequestTimeout, "the body timed out"),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "the body is too large"),
        StatusCode::URI_TOO_LONG => (ErrorCode::UriTooLong, "the request target is too long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            ErrorCode::HeadersTooLarge,
            "the request headers are too large",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (ErrorCode::UnsupportedMediaType, "unsupported content type")
        }
        StatusCode::SERVICE_UNAVAILABLE => (ErrorCode::Unavailable, "try again later"),
        status if status.is_server_error() => (
            ErrorCode::Internal,
            "the server failed to complete the request; it has been logged",
        ),
        _ => return None,
    };
    Some(ApiError::new(code, detail))
}

/// Maps query-string failures to problems.
pub fn query_error(error: QueryPayloadError) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidInput,
        format!("bad query string: {error}"),
    )
}

/// Maps path failures to problems.
pub fn path_error(error: PathError) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, format!("bad path: {error}"))
}
