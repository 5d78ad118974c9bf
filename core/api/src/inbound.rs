//! `POST /api/v1/inbound/email`: a raw message from an MTA (through `usm mailgate`) becomes a
//! record or a reply on one, its attachments the record's.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use usm_engine::attachments::NewAttachment;
use usm_mailgate::{MailError, Outcome};
use usm_model::{Domain, ErrorCode, Role};

use crate::{
    Services,
    principal::Principal,
    problem::{ApiError, Problem},
};

impl From<MailError> for ApiError {
    fn from(error: MailError) -> Self {
        match error {
            MailError::Unparsable(_) => Self::new(ErrorCode::InboundUnparsable, error.to_string()),
            MailError::UnknownSender(_) => {
                Self::new(ErrorCode::SenderUnknown, error.to_string()).with_field("From")
            }
            MailError::Engine(error) => error.into(),
            MailError::Directory(error) => error.into(),
            MailError::Store(error) => usm_engine::EngineError::from(error).into(),
        }
    }
}

/// A raw RFC 5322 message, as an MTA delivers it.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawMessage(
    #[expect(
        dead_code,
        reason = "only the API description reads the type; the handler streams"
    )]
    Vec<u8>,
);

/// Where a message goes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    /// The domain the mailbox serves.
    pub domain: String,
    /// The kind of record a new message becomes; `incident` when absent.
    pub kind: Option<String>,
}

/// Takes one e-mail message (`message/rfc822`, the raw bytes an MTA delivers). A new message
/// becomes a record of `kind` in `domain` from the person who sent it (looked up by address;
/// an unknown sender is refused or added, as `inbound_unknown_senders` says); a reply — the
/// subject's `[usm INC-12]` tag, or `In-Reply-To`/`References` naming a message of the
/// record's thread — a public comment on its record. Attachments become the record's.
/// Auto-replies and bounces make nothing (`ignored`), and a `Message-ID` seen before is not
/// processed again (`duplicate`). For admins and automation tokens of the domain.
#[utoipa::path(post, path = "/api/v1/inbound/email", tag = "inbound",
    params(Mailbox),
    request_body(content((RawMessage = "message/rfc822"), (RawMessage = "application/octet-stream")),
        description = "The raw message"),
    responses((status = 201, description = "A new record", body = Outcome),
        (status = 200, description = "A reply on its record, or a message that made nothing (`ignored`, `duplicate`)", body = Outcome),
        (status = 400, description = "Not an e-mail message (`inbound_unparsable`), or no such domain", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin or automation token of the domain", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The record a reply names is not one its sender may see", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than `inbound_max_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither `message/rfc822` nor `application/octet-stream`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The sender is not a person of the directory (`sender_unknown`), or the record was refused", body = Problem, content_type = "application/problem+json")))]
pub async fn receive(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    mailbox: web::Query<Mailbox>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Mailbox { domain, kind } = mailbox.into_inner();
    let domain = Domain::new(domain.as_str())
        .ok()
        .filter(|d| services.engine.domains().contains(d))
        .ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidInput, "no such domain on this server")
                .with_field("domain")
        })?;
    if !(actor.has_role(Role::Admin) || actor.has_role(Role::Automation))
        || !actor.in_domain(&domain)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("taking mail for {domain} needs an admin or automation token of the domain"),
        ));
    }
    let rfc822 = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            // Generated clients send bytes as octet-stream; the bytes are the message either way.
            v.starts_with("message/rfc822") || v.starts_with("application/octet-stream")
        });
    if !rfc822 {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the raw message as message/rfc822 (or application/octet-stream)",
        ));
    }
    let limit = services.config.inbound_max_bytes;
    let mut raw = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("the message broke off: {e}"),
            )
        })?;
        if raw.len() + chunk.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("a message is at most {limit} bytes"),
            ));
        }
        raw.extend_from_slice(&chunk);
    }
    let kind = kind.unwrap_or_else(|| "incident".into());
    let gate = std::sync::Arc::clone(&services.mailgate);
    let tokens = std::sync::Arc::clone(&services.tokens);
    let blobs = services.blobs.clone();
    let engine = services.engine.clone();
    let per_file = services.config.attachment_max_bytes;
    let outcome = web::block(move || -> Result<Outcome, ApiError> {
        let parsed = usm_mailgate::parse(&raw)?;
        let taken = gate.take(&domain, &kind, &parsed, &|id| tokens.principal_named(id))?;
        let mut outcome = taken.outcome.clone();
        if let Some((author, record)) = &taken.author {
            for file in &parsed.attachments {
                match store_file(&blobs, &engine, author, record.as_str(), file, per_file) {
                    Ok(()) => outcome.attachments += 1,
                    Err(why) => outcome.skipped.push(format!("{}: {why}", file.filename)),
                }
            }
            if parsed.skipped_attachments > 0 {
                outcome.skipped.push(format!(
                    "{} more attachments (at most {} a message)",
                    parsed.skipped_attachments,
                    usm_mailgate::MAX_ATTACHMENTS
                ));
            }
        }
        gate.mark(&taken)?;
        Ok(outcome)
    })
    .await??;
    let mut reply = if outcome.outcome == "created" {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(reply.json(outcome))
}

/// Stores one attached file and attaches it as the message's author; why not, otherwise.
fn store_file(
    blobs: &usm_blobs::BlobStore,
    engine: &usm_engine::Engine,
    author: &usm_model::Actor,
    record: &str,
    file: &usm_mailgate::InboundFile,
    per_file: u64,
) -> Result<(), String> {
    let filename = usm_engine::attachments::valid_filename(&file.filename)
        .unwrap_or_else(|_| "attachment".to_owned());
    let mut writer = blobs.writer(per_file).map_err(|e| e.to_string())?;
    writer
        .write(file.bytes.clone())
        .map_err(|e| e.to_string())?;
    let blob = writer.finish().map_err(|e| e.to_string())?;
    engine
        .attach(
            author,
            record,
            NewAttachment {
                filename,
                content_type: file.content_type.clone(),
                sha256: blob.sha256,
                size: blob.size,
            },
            None,
        )
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn next_chunk(
    body: &mut web::Payload,
) -> Option<Result<web::Bytes, actix_web::error::PayloadError>> {
    use futures_core::Stream as _;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_next(cx)).await
}
