//! `/api/v1/records/{id}/attachments`: files streamed to the blob store (never whole in
//! memory), made durable, then referenced by the record; streamed back as downloads that a
//! browser will not run.

use std::str::FromStr as _;

use actix_web::{
    HttpMessage as _, HttpRequest, HttpResponse,
    http::header::{self, ContentDisposition, DispositionParam, DispositionType},
    web,
};
use futures_core::Stream;
use serde::Serialize;
use usm_blobs::BlobError;
use usm_engine::attachments::{Attachment, NewAttachment, valid_filename};
use usm_model::ErrorCode;

use crate::{
    Services,
    headers::etag,
    principal::Principal,
    problem::{ApiError, Problem},
};

impl From<BlobError> for ApiError {
    fn from(error: BlobError) -> Self {
        match error {
            BlobError::TooLarge { limit } => Self::new(
                ErrorCode::PayloadTooLarge,
                format!("an attachment is at most {limit} bytes"),
            ),
            BlobError::Io(error) => {
                tracing::error!(%error, "cannot store an attachment");
                Self::new(
                    ErrorCode::Internal,
                    "the server failed to store the file; it has been logged",
                )
            }
        }
    }
}

async fn engine<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, usm_engine::EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(web::block(work).await??)
}

/// The file name a request gives in `Content-Disposition` (`filename*` first).
fn filename(request: &HttpRequest) -> Result<String, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorCode::InvalidInput,
            "give the file name: Content-Disposition: attachment; filename=\"…\"",
        )
        .with_field("Content-Disposition")
    };
    let disposition = request
        .get_header::<ContentDisposition>()
        .ok_or_else(missing)?;
    let name = match disposition.get_filename_ext() {
        Some(extended) => String::from_utf8(extended.value.clone()).map_err(|_| missing())?,
        None => disposition.get_filename().ok_or_else(missing)?.to_owned(),
    };
    Ok(valid_filename(&name)?)
}

/// The media type a request gives for its file; `application/octet-stream` when none.
fn media_type(request: &HttpRequest) -> Result<String, ApiError> {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return Ok(mime::APPLICATION_OCTET_STREAM.to_string());
    };
    let parsed = value
        .to_str()
        .ok()
        .and_then(|text| mime::Mime::from_str(text).ok())
        .ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidInput, "Content-Type is not a media type")
                .with_field("Content-Type")
        })?;
    if parsed.type_() == mime::MULTIPART {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the file itself as the body, with its own Content-Type (multipart bodies are not read)",
        ));
    }
    Ok(parsed.essence_str().to_owned())
}

/// Attaches the body (the file, with its `Content-Type` and a `Content-Disposition` naming it)
/// to a record the caller may see. The file is streamed to disk and made durable first; a
/// refused or broken upload leaves no attachment.
#[utoipa::path(
    post, path = "/api/v1/records/{id}/attachments", tag = "records",
    params(("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file; `Content-Disposition: attachment; filename=\"…\"` names it"),
    responses(
        (status = 201, body = Attachment, headers(("ETag" = String, description = "The record's new version"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upload(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
    request: HttpRequest,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Rights and the headers first: a client that may not attach sends us no bytes to store.
    let record = {
        let (engine_ref, actor, id) = (services.engine.clone(), actor.clone(), id.clone());
        engine(move || engine_ref.get(&actor, &id)).await?
    };
    let filename = filename(&request)?;
    let content_type = media_type(&request)?;
    let limit = services.config.attachment_max_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(BlobError::TooLarge { limit }.into());
    }
    let mut writer = services.blobs.writer(limit)?;
    while let Some(chunk) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_next(cx)).await
    {
        let chunk = chunk.map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("the upload broke off: {error}"),
            )
        })?;
        writer.write(&chunk)?;
    }
    let blob = web::block(move || writer.finish()).await??;
    let engine_ref = services.engine.clone();
    let record_id = record.id.to_string();
    let attachment = engine(move || {
        engine_ref.attach(
            &actor,
            &record_id,
            NewAttachment {
                filename,
                content_type,
                sha256: blob.sha256,
                size: blob.size,
            },
        )
    })
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, etag(record.version + 1)))
        .json(attachment))
}

/// A record's attachments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttachmentList {
    /// The record.
    pub record_id: String,
    /// In the order they were attached.
    pub attachments: Vec<Attachment>,
}

/// Lists a record's attachments.
#[utoipa::path(get, path = "/api/v1/records/{id}/attachments", tag = "records",
    params(("id" = String, Path)),
    responses((status = 200, body = AttachmentList), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine_ref = services.engine.clone();
    let record_id = id.clone();
    let attachments = engine(move || engine_ref.attachments(&actor, &id)).await?;
    Ok(HttpResponse::Ok().json(AttachmentList {
        record_id,
        attachments,
    }))
}

/// Downloads an attachment, always as a download (`Content-Disposition: attachment`,
/// `X-Content-Type-Options: nosniff`), never as a page the browser would run.
#[utoipa::path(get, path = "/api/v1/records/{id}/attachments/{attachment}", tag = "records",
    params(("id" = String, Path), ("attachment" = String, Path)),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn download(
    services: web::Data<Services>,
    Principal(actor): Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, attachment_id) = path.into_inner();
    let engine_ref = services.engine.clone();
    let attachment = engine(move || engine_ref.attachment(&actor, &id, &attachment_id)).await?;
    let path = services.blobs.path(&attachment.sha256).ok_or_else(|| {
        ApiError::new(ErrorCode::Internal, "the attachment's digest is malformed")
    })?;
    let file = tokio::fs::File::open(&path).await.map_err(|error| {
        tracing::error!(%error, blob = %attachment.sha256, "an attachment's blob is missing");
        ApiError::new(
            ErrorCode::Internal,
            "the server cannot read the file; it has been logged",
        )
    })?;
    let disposition = ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: vec![DispositionParam::FilenameExt(header::ExtendedValue {
            charset: header::Charset::Ext("UTF-8".into()),
            language_tag: None,
            value: attachment.filename.into_bytes(),
        })],
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, attachment.content_type))
        .insert_header(disposition)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(actix_web::body::SizedStream::new(
            attachment.size,
            tokio_util::io::ReaderStream::new(file),
        )))
}

/// Removes an attachment (agents); the record's history keeps what it was.
#[utoipa::path(delete, path = "/api/v1/records/{id}/attachments/{attachment}", tag = "records",
    params(("id" = String, Path), ("attachment" = String, Path)),
    responses((status = 200, body = Attachment), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn remove(
    services: web::Data<Services>,
    Principal(actor): Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, attachment_id) = path.into_inner();
    let engine_ref = services.engine.clone();
    let removed = engine(move || engine_ref.detach(&actor, &id, &attachment_id)).await?;
    Ok(HttpResponse::Ok().json(removed))
}
