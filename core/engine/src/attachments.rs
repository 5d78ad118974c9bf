//! A record's attachments: metadata in the record's `attachments` field (engine-written, so it
//! commits atomically with the version that adds or removes it), contents in the blob store by
//! SHA-256. The blob is durable before the write that references it, so no record ever names a
//! missing blob.

use std::collections::HashSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use usm_model::{Action, Actor, Record};
use usm_store::ListQuery;

use crate::{Engine, EngineError, Proposal, WriteTarget};

/// The record field holding the attachments' metadata.
pub const ATTACHMENTS: &str = "attachments";

/// An attached file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attachment {
    /// Its id within the record.
    pub id: String,
    /// The file name given at upload.
    pub filename: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
    /// The media type given at upload.
    pub content_type: String,
    /// Who attached it.
    pub created_by: String,
    /// When.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

/// A stored blob to attach.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    /// The file name.
    pub filename: String,
    /// The media type.
    pub content_type: String,
    /// The blob's digest.
    pub sha256: String,
    /// The blob's size.
    pub size: u64,
}

/// Checks an uploaded file name: a name, not a path, printable, at most 255 bytes.
pub fn valid_filename(name: &str) -> Result<String, EngineError> {
    let name = name.trim();
    let bad = name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
        || name == "."
        || name == "..";
    if bad {
        return Err(EngineError::invalid(
            "Content-Disposition",
            "a file name of 1-255 bytes, without control characters or path separators",
        ));
    }
    Ok(name.to_owned())
}

/// The attachments a record lists, in the order they were attached.
pub fn attachments_of(record: &Record) -> Vec<Attachment> {
    record
        .fields
        .get(ATTACHMENTS)
        .and_then(|value| serde_json::from_value(value.clone()).ok())
        .unwrap_or_default()
}

impl Engine {
    /// Writes a record's attachment list through `change`, which returns what it did; the list
    /// commits with the record's next version.
    fn change_attachments<T>(
        &self,
        actor: &Actor,
        id: &str,
        if_match: Option<u64>,
        change: impl Fn(&Record, &mut Vec<Attachment>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let target = WriteTarget {
            id,
            if_match,
            action: Action::Attachment,
            cause: None,
        };
        let outcome = std::sync::Mutex::new(None);
        self.write(actor, target, |current| {
            let mut attachments = attachments_of(current);
            let done = change(current, &mut attachments)?;
            *outcome
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(done);
            let mut next = current.clone();
            if attachments.is_empty() {
                next.fields.remove(ATTACHMENTS);
            } else {
                next.fields.insert(
                    ATTACHMENTS.into(),
                    serde_json::to_value(&attachments).unwrap_or(Value::Null),
                );
            }
            Ok(Proposal {
                record: next,
                comment: None,
                approval: None,
                context: Value::Null,
                visibility: None,
            })
        })?;
        outcome
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ok_or_else(|| EngineError::NotFound(format!("{id}: the attachment")))
    }

    /// Attaches a stored blob to a record the actor may see (a requester: their own).
    pub fn attach(
        &self,
        actor: &Actor,
        id: &str,
        new: NewAttachment,
        if_match: Option<u64>,
    ) -> Result<Attachment, EngineError> {
        let limits = &self.config.limits;
        self.change_attachments(actor, id, if_match, |current, attachments| {
            let current_id = &current.id;
            let full = |message: String| EngineError::AttachmentQuotaExceeded {
                id: current_id.clone(),
                message,
            };
            if attachments.len() >= limits.max_attachments_per_record {
                return Err(full(format!(
                    "holds {} attachments, as many as a record may",
                    limits.max_attachments_per_record
                )));
            }
            let held: u64 = attachments.iter().map(|a| a.size).sum();
            if held.saturating_add(new.size) > limits.max_attachment_bytes_per_record {
                return Err(full(format!(
                    "holds {held} bytes of attachments; with {} more it would pass its limit of {} bytes",
                    new.size, limits.max_attachment_bytes_per_record
                )));
            }
            let next_id = attachments
                .iter()
                .filter_map(|a| a.id.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
                + 1;
            let attachment = Attachment {
                id: next_id.to_string(),
                filename: new.filename.clone(),
                size: new.size,
                sha256: new.sha256.clone(),
                content_type: new.content_type.clone(),
                created_by: actor.name.clone(),
                created_at: Timestamp::now(),
            };
            attachments.push(attachment.clone());
            Ok(attachment)
        })
    }

    /// The attachments of a record the actor may see.
    pub fn attachments(&self, actor: &Actor, id: &str) -> Result<Vec<Attachment>, EngineError> {
        Ok(attachments_of(&self.get(actor, id)?))
    }

    /// One attachment of a record the actor may see.
    pub fn attachment(
        &self,
        actor: &Actor,
        id: &str,
        attachment: &str,
    ) -> Result<Attachment, EngineError> {
        self.attachments(actor, id)?
            .into_iter()
            .find(|a| a.id == attachment)
            .ok_or_else(|| EngineError::NotFound(format!("{id}/attachments/{attachment}")))
    }

    /// Removes an attachment (agents only); the history entry keeps what it was. The blob goes
    /// when no record references it any more.
    pub fn detach(
        &self,
        actor: &Actor,
        id: &str,
        attachment: &str,
        if_match: Option<u64>,
    ) -> Result<Attachment, EngineError> {
        self.change_attachments(actor, id, if_match, |_, attachments| {
            if !actor.works_records() {
                return Err(EngineError::Forbidden(
                    "removing an attachment needs the agent role".into(),
                ));
            }
            let at = attachments
                .iter()
                .position(|a| a.id == attachment)
                .ok_or_else(|| EngineError::NotFound(format!("{id}/attachments/{attachment}")))?;
            Ok(attachments.remove(at))
        })
    }

    /// Every blob some record references, for collecting the others.
    pub fn referenced_blobs(&self) -> Result<HashSet<String>, EngineError> {
        let mut referenced = HashSet::new();
        let mut query = ListQuery {
            limit: 500,
            ..ListQuery::default()
        };
        loop {
            let page = self.store.list(&query)?;
            for record in &page.records {
                referenced.extend(attachments_of(record).into_iter().map(|a| a.sha256));
            }
            match page.next {
                Some(after) => query.after = Some(after),
                None => return Ok(referenced),
            }
        }
    }
}
