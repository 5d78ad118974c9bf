//! `/api/v1/records/{id}/attachments`: files streamed to the blob store (never whole in
//! memory), made durable, then referenced by the record; streamed back as downloads that a
//! browser will not run.

use std::{pin::Pin, str::FromStr as _};

use actix_multipart::{Multipart, MultipartError};
use actix_web::{
    HttpMessage as _, HttpRequest, HttpResponse,
    error::PayloadError,
    http::header::{self, ContentDisposition, DispositionParam, DispositionType, HeaderMap},
    web::{self, Bytes},
};
use futures_core::Stream;
use serde::Serialize;
use usm_blobs::{Blob, BlobError, BlobWriter};
use usm_engine::attachments::{Attachment, NewAttachment, attachments_of, valid_filename};
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

/// Bytes a `multipart/form-data` body may carry besides its file: boundaries and the part's
/// headers.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// The file name a `Content-Disposition` gives (`filename*` first); `None` when it names none.
fn filename_in(disposition: &ContentDisposition) -> Option<Result<String, ApiError>> {
    let name = match disposition.get_filename_ext() {
        Some(extended) => String::from_utf8(extended.value.clone()).map_err(|_| {
            ApiError::new(ErrorCode::InvalidInput, "the file name is not UTF-8")
                .with_field("Content-Disposition")
        }),
        None => Ok(disposition.get_filename()?.to_owned()),
    };
    Some(name.and_then(|name| Ok(valid_filename(&name)?)))
}

/// The file name a raw upload gives in its `Content-Disposition` header.
fn filename(request: &HttpRequest) -> Result<String, ApiError> {
    request
        .get_header::<ContentDisposition>()
        .as_ref()
        .and_then(filename_in)
        .unwrap_or_else(|| {
            Err(ApiError::new(
                ErrorCode::InvalidInput,
                "give the file name: Content-Disposition: attachment; filename=\"…\"",
            )
            .with_field("Content-Disposition"))
        })
}

/// The media type `headers` give (a request's or a part's); `application/octet-stream` when
/// none.
fn media_type(headers: &HeaderMap) -> Result<mime::Mime, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(mime::APPLICATION_OCTET_STREAM);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| mime::Mime::from_str(text).ok())
        .ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidInput, "Content-Type is not a media type")
                .with_field("Content-Type")
        })
}

/// What room a record has for one more file: the per-file limit, or less when the record's
/// attachments are near their limit in all.
struct Room {
    record: String,
    per_file: u64,
    per_record: u64,
    held: u64,
}

impl Room {
    fn of(services: &Services, record: &usm_model::Record) -> Result<Self, ApiError> {
        let limits = services.engine.limits();
        let held = attachments_of(record);
        let room = Self {
            record: record.id.to_string(),
            per_file: services.config.attachment_max_bytes,
            per_record: limits.max_attachment_bytes_per_record,
            held: held.iter().map(|a| a.size).sum(),
        };
        if held.len() >= limits.max_attachments_per_record {
            return Err(ApiError::new(
                ErrorCode::AttachmentQuotaExceeded,
                format!(
                    "{} holds {} attachments, as many as a record may",
                    room.record, limits.max_attachments_per_record
                ),
            ));
        }
        Ok(room)
    }

    fn left(&self) -> u64 {
        self.per_record.saturating_sub(self.held)
    }

    /// The most bytes the file may have.
    fn limit(&self) -> u64 {
        self.per_file.min(self.left())
    }

    /// The answer to a file of `size` bytes (or more) that does not fit: `409` when the
    /// record's total is what it passes, `413` when it is the per-file limit.
    fn refuse(&self, size: u64) -> ApiError {
        if size <= self.per_file {
            ApiError::new(
                ErrorCode::AttachmentQuotaExceeded,
                format!(
                    "{} holds {} bytes of attachments; its attachments hold at most {} bytes in all",
                    self.record, self.held, self.per_record
                ),
            )
        } else {
            BlobError::TooLarge {
                limit: self.per_file,
            }
            .into()
        }
    }

    fn blob_error(&self, error: BlobError) -> ApiError {
        match error {
            BlobError::TooLarge { limit } => self.refuse(limit.saturating_add(1)),
            other => other.into(),
        }
    }
}

/// Chunks received but not yet written: enough to keep the disk busy while the next arrive,
/// few enough that an upload's memory stays a small fraction of a file.
const CHUNKS_IN_FLIGHT: usize = 16;

enum Feed {
    Chunk(Bytes),
    Finish,
}

/// A blob hashed and written on a blocking thread while the HTTP worker receives the next
/// chunks, so receiving, hashing and the disk overlap and no HTTP worker waits on the disk.
/// Dropped before [`BlobFeed::finish`] (a refused or broken upload), it keeps nothing.
struct BlobFeed {
    chunks: tokio::sync::mpsc::Sender<Feed>,
    writing: tokio::task::JoinHandle<Result<Option<Blob>, BlobError>>,
    received: u64,
    limit: u64,
}

impl BlobFeed {
    fn start(mut writer: BlobWriter, limit: u64) -> Self {
        let (chunks, mut queue) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        let writing = tokio::task::spawn_blocking(move || {
            while let Some(feed) = queue.blocking_recv() {
                match feed {
                    Feed::Chunk(chunk) => writer.write(chunk)?,
                    Feed::Finish => return writer.finish().map(Some),
                }
            }
            // The upload was abandoned: dropping the writer removes what it wrote.
            Ok(None)
        });
        Self {
            chunks,
            writing,
            received: 0,
            limit,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.received = self.received.saturating_add(chunk.len() as u64);
        if self.received > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        if self.chunks.send(Feed::Chunk(chunk)).await.is_err() {
            // The writer stopped on an error of its own; it is in its result.
            return Err(self.stopped().await);
        }
        Ok(())
    }

    async fn stopped(&mut self) -> BlobError {
        match (&mut self.writing).await {
            Ok(Err(error)) => error,
            Ok(Ok(_)) => BlobError::Io(std::io::Error::other("the blob writer stopped early")),
            Err(joined) => BlobError::Io(std::io::Error::other(joined)),
        }
    }

    /// Makes the blob durable under its digest.
    async fn finish(mut self) -> Result<Blob, BlobError> {
        if self.chunks.send(Feed::Finish).await.is_err() {
            return Err(self.stopped().await);
        }
        match (&mut self.writing).await {
            Ok(Ok(Some(blob))) => Ok(blob),
            Ok(Ok(None)) => Err(BlobError::Io(std::io::Error::other(
                "the blob writer ended without finishing",
            ))),
            Ok(Err(error)) => Err(error),
            Err(joined) => Err(BlobError::Io(std::io::Error::other(joined))),
        }
    }
}

/// Streams `body` into `feed`, a chunk at a time.
async fn stream_into<S, E>(
    body: &mut S,
    feed: &mut BlobFeed,
    room: &Room,
    broken: impl Fn(E) -> ApiError,
) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    while let Some(chunk) = next(body).await {
        feed.write(chunk.map_err(&broken)?)
            .await
            .map_err(|error| room.blob_error(error))?;
    }
    Ok(())
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

fn broken_off(error: &PayloadError) -> ApiError {
    match error {
        PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            ApiError::new(ErrorCode::RequestTimeout, io.to_string())
        }
        other => ApiError::new(
            ErrorCode::InvalidInput,
            format!("the upload broke off: {other}"),
        ),
    }
}

fn multipart_error(error: MultipartError, limit: u64) -> ApiError {
    match error {
        MultipartError::Payload(PayloadError::Overflow) => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("a multipart upload is at most {limit} bytes"),
        ),
        MultipartError::Payload(PayloadError::Io(io))
            if io.kind() == std::io::ErrorKind::TimedOut =>
        {
            ApiError::new(ErrorCode::RequestTimeout, io.to_string())
        }
        MultipartError::Payload(other) => ApiError::new(
            ErrorCode::MultipartInvalid,
            format!("the upload broke off: {other}"),
        ),
        other => ApiError::new(
            ErrorCode::MultipartInvalid,
            format!("the multipart body is malformed: {other}"),
        ),
    }
}

/// A body that fails with `Overflow` once it passes `left` bytes.
struct Capped<S> {
    inner: S,
    left: u64,
}

impl<S: Stream<Item = Result<Bytes, PayloadError>> + Unpin> Stream for Capped<S> {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            let size = chunk.len() as u64;
            if size > self.left {
                self.left = 0;
                return std::task::Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
            self.left -= size;
        }
        polled
    }
}

/// The file of a `multipart/form-data` body: exactly one part, with a file name, streamed
/// into `feed`; the name and media type come from the part's own headers.
async fn multipart_file(
    request: &HttpRequest,
    body: web::Payload,
    feed: &mut BlobFeed,
    room: &Room,
    guard: Option<FormGuard>,
) -> Result<(String, String), ApiError> {
    let limit = room.per_file.saturating_add(MULTIPART_OVERHEAD);
    let mut multipart = Multipart::new(
        request.headers(),
        Capped {
            inner: body,
            left: limit,
        },
    );
    let broken = |error| multipart_error(error, limit);
    let mut guarded = guard.is_none();
    let part = loop {
        let part = next(&mut multipart)
            .await
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::MultipartInvalid,
                    "the multipart body has no file part; send one, the file",
                )
            })?
            .map_err(broken)?;
        let named_file = part.content_disposition().and_then(filename_in);
        match (named_file, &guard) {
            (Some(filename), _) => break (part, filename?),
            // A form's own field before its file: read it whole (it is small) and check it.
            (None, Some(guard)) if part.name() == Some(guard.field) => {
                let value = form_field(part, broken).await?;
                guarded = (guard.accepts)(&value);
            }
            (None, _) => {
                return Err(ApiError::new(
                    ErrorCode::MultipartInvalid,
                    "the part is not a file: its Content-Disposition names no filename",
                ));
            }
        }
    };
    if !guarded {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the upload form is missing its CSRF token or carries a wrong one",
        ));
    }
    let (mut file, filename) = part;
    let content_type = media_type(file.headers())?.essence_str().to_owned();
    stream_into(&mut file, feed, room, broken).await?;
    drop(file);
    match next(&mut multipart).await {
        None => Ok((filename, content_type)),
        Some(Ok(_)) => Err(ApiError::new(
            ErrorCode::MultipartInvalid,
            "the multipart body has more than one file part; send exactly one, the file",
        )),
        Some(Err(error)) => Err(broken(error)),
    }
}

/// Reads a `multipart/form-data` form held in memory: its guard field, then one file of at
/// most `limit` bytes. For the console's small uploads (module bundles); attachments stream to
/// disk through [`upload_as`] instead.
pub async fn form_file(
    request: &HttpRequest,
    body: web::Payload,
    guard: FormGuard,
    limit: usize,
) -> Result<(String, Vec<u8>), ApiError> {
    let total = u64::try_from(limit)
        .unwrap_or(u64::MAX)
        .saturating_add(MULTIPART_OVERHEAD);
    let mut multipart = Multipart::new(
        request.headers(),
        Capped {
            inner: body,
            left: total,
        },
    );
    let broken = |error| multipart_error(error, total);
    let mut guarded = false;
    while let Some(part) = next(&mut multipart).await {
        let mut part = part.map_err(broken)?;
        match part.content_disposition().and_then(filename_in) {
            None if part.name() == Some(guard.field) => {
                guarded = (guard.accepts)(&form_field(part, broken).await?);
            }
            None => {
                return Err(ApiError::new(
                    ErrorCode::MultipartInvalid,
                    "an unexpected form field before the file",
                ));
            }
            Some(filename) => {
                if !guarded {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "the upload form is missing its CSRF token or carries a wrong one",
                    ));
                }
                let filename = filename?;
                let mut bytes = Vec::new();
                while let Some(chunk) = next(&mut part).await {
                    bytes.extend_from_slice(&chunk.map_err(broken)?);
                    if bytes.len() > limit {
                        return Err(ApiError::new(
                            ErrorCode::PayloadTooLarge,
                            format!("the file is larger than {limit} bytes"),
                        ));
                    }
                }
                return Ok((filename, bytes));
            }
        }
    }
    Err(ApiError::new(
        ErrorCode::MultipartInvalid,
        "the form has no file",
    ))
}

/// Most bytes of a form field read before an upload's file.
const MAX_FORM_FIELD: usize = 4 * 1024;

async fn form_field(
    mut part: actix_multipart::Field,
    broken: impl Fn(MultipartError) -> ApiError,
) -> Result<String, ApiError> {
    let mut value = Vec::new();
    while let Some(chunk) = next(&mut part).await {
        value.extend_from_slice(&chunk.map_err(&broken)?);
        if value.len() > MAX_FORM_FIELD {
            return Err(ApiError::new(
                ErrorCode::MultipartInvalid,
                format!("a form field before the file is longer than {MAX_FORM_FIELD} bytes"),
            ));
        }
    }
    String::from_utf8(value)
        .map_err(|_| ApiError::new(ErrorCode::MultipartInvalid, "a form field is not UTF-8"))
}

/// Attaches a file to a record the caller may see: the body is either the file itself, with
/// its `Content-Type` and a `Content-Disposition` naming it, or `multipart/form-data` with
/// exactly one part, the file (`curl -F file=@…`), named and typed by the part's own headers.
/// The file is streamed to disk and made durable first; a refused or broken upload leaves no
/// attachment.
#[utoipa::path(
    post, path = "/api/v1/records/{id}/attachments", tag = "records",
    params(("id" = String, Path),
        ("Content-Disposition" = Option<String>, Header,
            description = "For a raw body: `attachment; filename=\"report.pdf\"` names the file"),
        ("If-Match" = Option<String>, Header, description = "The ETag the change is based on (never required: nothing is overwritten)")),
    request_body(
        description = "The file itself (`Content-Disposition: attachment; filename=\"…\"` names it), or `multipart/form-data` with exactly one part, the file",
        content(
            (FileBytes = "application/octet-stream"),
            (UploadForm = "multipart/form-data"),
        )
    ),
    responses(
        (status = 201, body = Attachment, headers(("ETag" = String, description = "The record's new version"))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "No file name, a bad media type, or a broken multipart body (`multipart_invalid`)"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The record's attachments are full (`attachment_quota_exceeded`), or it is read-only: its module is not enabled in its domain (`module_not_enabled`)"),
        (status = 412, description = "The record changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "The file is larger than `attachment_max_bytes`"),
        (status = 415, body = Problem, content_type = "application/problem+json", description = "A multipart type other than `multipart/form-data`"),
    )
)]
pub async fn upload(
    services: web::Data<Services>,
    Principal(actor): Principal,
    id: web::Path<String>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (attachment, version) =
        upload_as(&services, actor, id.into_inner(), &request, body, None).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, etag(version)))
        .json(attachment))
}

/// A form field a browser's upload must carry before its file (the console's CSRF token): its
/// name, and whether a value is the right one. Without it, or with a wrong value, the upload is
/// refused with `403 forbidden` before any byte of the file is stored.
pub struct FormGuard {
    /// The field's name.
    pub field: &'static str,
    /// Whether the value sent is right.
    pub accepts: Box<dyn Fn(&str) -> bool + Send>,
}

/// Stores an upload (the body of `POST …/attachments`, raw or `multipart/form-data`) and
/// attaches it to record `id` as `actor`; returns the attachment and the record's new version.
/// The console posts its upload form through this, with a [`FormGuard`].
pub async fn upload_as(
    services: &Services,
    actor: usm_model::Actor,
    id: String,
    request: &HttpRequest,
    mut body: web::Payload,
    guard: Option<FormGuard>,
) -> Result<(usm_engine::attachments::Attachment, u64), ApiError> {
    // Rights and the headers first: a client that may not attach sends us no bytes to store.
    let record = {
        let (engine_ref, actor, id) = (services.engine.clone(), actor.clone(), id.clone());
        engine(move || engine_ref.get(&actor, &id)).await?
    };
    services.engine.writable(&record)?;
    // A stale If-Match is refused before any byte is stored; the write checks it again.
    let expected = crate::headers::if_match(request)?;
    if let Some(expected) = expected
        && expected != record.version
    {
        return Err(usm_engine::EngineError::VersionMismatch {
            id: record.id.clone(),
            expected,
            current: record.version,
        }
        .into());
    }
    let room = Room::of(services, &record)?;
    let media = media_type(request.headers())?;
    let multipart = media.type_() == mime::MULTIPART;
    if multipart && media.subtype() != mime::FORM_DATA {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a multipart upload is multipart/form-data; or send the file itself as the body",
        ));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let overhead = if multipart { MULTIPART_OVERHEAD } else { 0 };
    if let Some(length) = declared
        && length > room.limit().saturating_add(overhead)
    {
        return Err(room.refuse(length.saturating_sub(overhead)));
    }
    let started = std::time::Instant::now();
    let mut feed = BlobFeed::start(services.blobs.writer(room.limit())?, room.limit());
    let (filename, content_type) = if multipart {
        multipart_file(request, body, &mut feed, &room, guard).await?
    } else if guard.is_some() {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the upload form is sent as multipart/form-data",
        ));
    } else {
        let named = (filename(request)?, media.essence_str().to_owned());
        stream_into(&mut body, &mut feed, &room, |error| broken_off(&error)).await?;
        named
    };
    let received = started.elapsed();
    let blob = feed
        .finish()
        .await
        .map_err(|error| room.blob_error(error))?;
    let durable = started.elapsed();
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
            expected,
        )
    })
    .await?;
    tracing::debug!(
        target: "usm::attachments",
        size = attachment.size,
        received_us = received.as_micros(),
        durable_us = durable.as_micros(),
        referenced_us = started.elapsed().as_micros(),
        "attachment stored"
    );
    Ok((attachment, record.version + 1))
}

/// A file's bytes, as the body of an upload.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct FileBytes(
    #[expect(
        dead_code,
        reason = "only the API description reads the type; the handler streams"
    )]
    Vec<u8>,
);

/// A `multipart/form-data` upload: one part, the file.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // describes the body for OpenAPI; the handler streams the part itself
pub struct UploadForm {
    /// The file; the part's `Content-Disposition` filename names it and its `Content-Type`
    /// types it.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
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
    download_as(&services, actor, id, attachment_id).await
}

/// An attachment's bytes as a download (`Content-Disposition: attachment`, `nosniff`), read as
/// `actor`: the API's and the console's way.
pub async fn download_as(
    services: &Services,
    actor: usm_model::Actor,
    id: String,
    attachment_id: String,
) -> Result<HttpResponse, ApiError> {
    let engine_ref = services.engine.clone();
    let attachment = engine(move || engine_ref.attachment(&actor, &id, &attachment_id)).await?;
    let blobs = services.blobs.clone();
    let sha256 = attachment.sha256.clone();
    let path = web::block(move || blobs.fetch(&sha256)).await?;
    let opened = match path {
        Ok(path) => tokio::fs::File::open(&path).await,
        Err(error) => Err(error),
    };
    let file = opened.map_err(|error| {
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
            tokio_util::io::ReaderStream::with_capacity(file, DOWNLOAD_CHUNK),
        )))
}

/// Bytes read from a blob per chunk of a download. Each read of a `tokio::fs::File` is a trip
/// to the blocking pool: at the stream's default 4 KiB a 20 MiB download made 5,120 of them and
/// ran at about 146 MiB/s.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Removes an attachment (agents); the record's history keeps what it was.
#[utoipa::path(delete, path = "/api/v1/records/{id}/attachments/{attachment}", tag = "records",
    params(("id" = String, Path), ("attachment" = String, Path), ("If-Match" = Option<String>, Header, description = "The ETag the change is based on (never required: nothing is overwritten)")),
    responses((status = 200, body = Attachment), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The record changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The record is read-only: its module is not enabled in its domain (`module_not_enabled`)", body = Problem, content_type = "application/problem+json")))]
pub async fn remove(
    services: web::Data<Services>,
    Principal(actor): Principal,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, attachment_id) = path.into_inner();
    let expected = crate::headers::if_match(&request)?;
    let engine_ref = services.engine.clone();
    let removed = engine(move || engine_ref.detach(&actor, &id, &attachment_id, expected)).await?;
    Ok(HttpResponse::Ok().json(removed))
}
