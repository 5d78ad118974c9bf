//! The conditional and idempotency headers.

use actix_web::{HttpRequest, HttpResponseBuilder, http::header};
use usm_model::{ErrorCode, Record};

use crate::problem::ApiError;

/// The `ETag` of a record version: the version number as a strong tag.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Adds `ETag` for the record's version.
pub fn with_etag(builder: &mut HttpResponseBuilder, record: &Record) {
    builder.insert_header((header::ETAG, etag(record.version)));
}

/// The version a change of a record is conditioned on (see [`if_match`]); when the server
/// requires it (`require_if_match`), a change without `If-Match` is `428`.
pub fn change_condition(request: &HttpRequest, required: bool) -> Result<Option<u64>, ApiError> {
    if required && !request.headers().contains_key(header::IF_MATCH) {
        return Err(ApiError::new(
            ErrorCode::PreconditionRequired,
            "this server changes a record only with If-Match: send the ETag of the version you read (or * to change any)",
        )
        .with_field("If-Match"));
    }
    if_match(request)
}

/// Whether `If-None-Match` names `version` (or is `*`): a conditional read's answer is then
/// `304`.
pub fn not_modified(request: &HttpRequest, version: u64) -> bool {
    let Some(value) = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let current = etag(version);
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == current || tag.strip_prefix("W/") == Some(current.as_str()))
}

/// The version `If-Match` requires: `None` when absent or `*`.
pub fn if_match(request: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = request.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidInput,
            "If-Match must be a record ETag such as \"3\" (quotes included) or *",
        )
        .with_field("If-Match")
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    inner.parse::<u64>().map(Some).map_err(|_| bad())
}

/// The `Idempotency-Key` header, if sent.
pub fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    request
        .headers()
        .get("idempotency-key")
        .map(|value| {
            value.to_str().map(str::to_owned).map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidInput,
                    "Idempotency-Key must be printable ASCII",
                )
                .with_field("Idempotency-Key")
            })
        })
        .transpose()
}

/// A page of records as an answer: the page, and with a next page an RFC 8288 `Link` to it (the
/// same query with the next cursor).
pub fn page_response(
    request: &HttpRequest,
    page: &crate::records::RecordPage,
) -> actix_web::HttpResponse {
    let mut builder = actix_web::HttpResponse::Ok();
    if let Some(cursor) = &page.next_cursor {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in url::form_urlencoded::parse(request.query_string().as_bytes()) {
            if name != "cursor" {
                query.append_pair(&name, &value);
            }
        }
        query.append_pair("cursor", cursor);
        builder.insert_header((
            header::LINK,
            format!("<{}?{}>; rel=\"next\"", request.path(), query.finish()),
        ));
    }
    builder.json(page)
}

/// The answer to a create: `201` with the record, its `ETag` and `Location`, and
/// `Idempotent-Replayed: true` when an earlier request with the same key created it.
pub fn created_response(created: &usm_engine::Created) -> actix_web::HttpResponse {
    let mut builder = actix_web::HttpResponse::Created();
    with_etag(&mut builder, &created.record);
    builder.insert_header((
        header::LOCATION,
        format!("/api/v1/records/{}", created.record.id),
    ));
    if created.replayed {
        builder.insert_header(("Idempotent-Replayed", "true"));
    }
    builder.json(&created.record)
}

/// A domain of this server named by a query parameter, or `400` naming the parameter.
pub fn known_domain(
    services: &crate::Services,
    name: &str,
    parameter: &'static str,
) -> Result<usm_model::Domain, ApiError> {
    usm_model::Domain::new(name)
        .ok()
        .filter(|d| services.engine.domains().contains(d))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "{} is not a domain of this server",
                    name.chars().take(64).collect::<String>()
                ),
            )
            .with_field(parameter)
        })
}
