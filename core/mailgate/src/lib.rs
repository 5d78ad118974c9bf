//! Inbound e-mail: a message an MTA hands over (`usm mailgate`, like Request Tracker's
//! rt-mailgate) becomes a record, or a public comment on the record it answers, from the person
//! who sent it.
//!
//! A message answers a record when its subject carries the record's tag (`[usm INC-12]`) or its
//! `In-Reply-To`/`References` name a message of the record's thread (one usm sent, whose id
//! begins with the record's id, or one usm received for it). Auto-replies and bounces
//! (`Auto-Submitted`, `Precedence: bulk|junk|list`, a null sender, a delivery report) make
//! nothing, and a message whose `Message-ID` was processed before is not processed again. MIME
//! is parsed by mail-parser (multipart, HTML-only, quoted-printable, other charsets).

use std::sync::Arc;

use mail_parser::{HeaderValue, MessageParser, MimeHeaders as _};
use serde::Serialize;
use sha2::{Digest, Sha256};
use usm_directory::{NewPerson, Person};
use usm_engine::{Engine, EngineError, NewRecord, conversation::NewComment};
use usm_model::{Actor, Domain, RecordId, Role, Visibility};
use usm_store::StoreError;

const SEEN: &str = "inbound/seen/";
/// How long a processed message's id is remembered: longer than an MTA retries a delivery
/// (Postfix gives up after 5 days, Exim after 4). Within a day a redelivery would also find the
/// record through the create's idempotency key.
pub const SEEN_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Attachments taken from one message; more are skipped and counted.
pub const MAX_ATTACHMENTS: usize = 20;
const MAX_TITLE_CHARS: usize = 200;
/// The `References` read when looking for the record a reply answers: the newest ones (a
/// thread's own messages are at the end; a forged list of thousands costs no more).
const MAX_REFERENCES: usize = 50;
const MAX_DESCRIPTION_CHARS: usize = 20_000;

/// What receiving a message can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The bytes are not an e-mail message.
    #[error("not an e-mail message: {0}")]
    Unparsable(String),
    /// The sender is not a person of the directory, and unknown senders are refused.
    #[error("{0} is not a person of the directory; unknown senders are refused")]
    UnknownSender(String),
    /// The engine refused the record or comment.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The directory refused the new person.
    #[error(transparent)]
    Directory(#[from] usm_directory::DirectoryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to do with mail from an address no person of the directory has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSenders {
    /// Refuse the message (the MTA bounces it).
    #[default]
    Refuse,
    /// Add the sender to the directory as a person of the mailbox's domain.
    Create,
}

/// A file a message carries.
pub struct InboundFile {
    /// Its name (`attachment-<n>` when the message gives none).
    pub filename: String,
    /// Its media type.
    pub content_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A message, as far as usm reads it.
pub struct Parsed {
    /// `Message-ID`, without angle brackets.
    pub message_id: Option<String>,
    /// The sender's address.
    pub from: Option<String>,
    /// The sender's display name.
    pub from_name: Option<String>,
    /// The subject.
    pub subject: String,
    /// The body as plain text (HTML converted).
    pub text: String,
    /// The ids of `In-Reply-To` and `References`.
    pub references: Vec<String>,
    /// Why the message is automatic (an auto-reply, a bounce), if it is.
    pub automatic: Option<String>,
    /// Its attachments, at most [`MAX_ATTACHMENTS`].
    pub attachments: Vec<InboundFile>,
    /// Attachments beyond [`MAX_ATTACHMENTS`].
    pub skipped_attachments: usize,
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(text) => vec![text.to_string()],
        HeaderValue::TextList(list) => list.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Reads a raw RFC 5322 message.
pub fn parse(raw: &[u8]) -> Result<Parsed, MailError> {
    // mail-parser reads nearly anything; a message is one with a sender.
    let message = MessageParser::default()
        .parse(raw)
        .filter(|m| m.from().is_some())
        .ok_or_else(|| MailError::Unparsable("no From header field".into()))?;
    let sender = message.from().and_then(|from| from.first());
    let from = sender
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase());
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let content_type = message.root_part().content_type().map(|ct| {
        format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()).to_ascii_lowercase()
    });
    let automatic = if header("auto-submitted").is_some_and(|v| !v.starts_with("no")) {
        Some("Auto-Submitted".to_owned())
    } else if header("precedence").is_some_and(|v| matches!(v.as_str(), "bulk" | "junk" | "list")) {
        Some("Precedence".to_owned())
    } else if header("x-autoreply").is_some() || header("x-autorespond").is_some() {
        Some("an auto-reply header".to_owned())
    } else if header("return-path").is_some_and(|v| v == "<>") {
        Some("a null sender".to_owned())
    } else if content_type.as_deref() == Some("multipart/report") {
        Some("a delivery report".to_owned())
    } else if from.as_deref().is_some_and(|f| {
        let local = f.split('@').next().unwrap_or_default();
        local == "mailer-daemon" || local == "postmaster"
    }) {
        Some("a mailer daemon".to_owned())
    } else {
        None
    };
    let mut references = ids(message.in_reply_to());
    let all = ids(message.references());
    references.extend(all.iter().rev().take(MAX_REFERENCES).cloned());
    let mut attachments = Vec::new();
    let mut skipped_attachments = 0;
    for (n, part) in message.attachments().enumerate() {
        if attachments.len() >= MAX_ATTACHMENTS {
            skipped_attachments += 1;
            continue;
        }
        let content_type = part.content_type().map_or_else(
            || "application/octet-stream".to_owned(),
            |ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("octet-stream")),
        );
        attachments.push(InboundFile {
            filename: part
                .attachment_name()
                .map_or_else(|| format!("attachment-{}", n + 1), str::to_owned),
            content_type,
            bytes: part.contents().to_vec(),
        });
    }
    Ok(Parsed {
        message_id: message.message_id().map(str::to_owned),
        from,
        from_name: sender.and_then(|a| a.name()).map(str::to_owned),
        subject: message.subject().unwrap_or_default().trim().to_owned(),
        text: message
            .body_text(0)
            .map(|t| t.trim().to_owned())
            .unwrap_or_default(),
        references,
        automatic,
        attachments,
        skipped_attachments,
    })
}

/// What became of a message.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Outcome {
    /// `created` (a new record), `commented` (a reply on its record), `ignored` (automatic
    /// mail) or `duplicate` (its `Message-ID` was processed before).
    pub outcome: &'static str,
    /// The record it made or answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Why it was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Attachments stored on the record.
    pub attachments: usize,
    /// Attachments not stored (too many, too large), with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl Outcome {
    fn of(outcome: &'static str, record: Option<String>) -> Self {
        Self {
            outcome,
            record,
            reason: None,
            attachments: 0,
            skipped: Vec::new(),
        }
    }
}

/// A message taken: what became of it, and for a new record or reply the person who wrote it,
/// whom its attachments are attached as.
pub struct Taken {
    /// The outcome.
    pub outcome: Outcome,
    /// The sender acting, with the record to attach to.
    pub author: Option<(Actor, RecordId)>,
    /// The settings key that marks the message processed; written once its attachments are.
    seen: Option<String>,
}

/// Receives mail for one server.
pub struct Mailgate {
    engine: Arc<Engine>,
    unknown_senders: UnknownSenders,
}

/// The record id a message id of a usm thread begins with (`INC-12@…`, `INC-12.57.ann@…`).
fn record_of_message_id(id: &str) -> Option<RecordId> {
    let local = id.split('@').next()?;
    RecordId::parse(local.split('.').next()?).ok()
}

/// The record id of a subject's `[usm INC-12]` tag.
fn record_of_subject(subject: &str) -> Option<RecordId> {
    let start = subject.find("[usm ")? + "[usm ".len();
    let end = subject[start..].find(']')? + start;
    RecordId::parse(subject[start..end].trim()).ok()
}

fn digest(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// A directory id for an address's local part: `ann.lee@corp` → `ann.lee`.
fn id_for(address: &str) -> String {
    let local = address.split('@').next().unwrap_or_default();
    let id: String = local
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let id = id
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    if id.is_empty() { "sender".into() } else { id }
}

impl Mailgate {
    /// A mailgate over `engine`.
    pub fn new(engine: Arc<Engine>, unknown_senders: UnknownSenders) -> Self {
        Self {
            engine,
            unknown_senders,
        }
    }

    /// The sender as a person: looked up by address, or added when the setting says so.
    fn sender(
        &self,
        domain: &Domain,
        parsed: &Parsed,
        taken: &dyn Fn(&str) -> bool,
    ) -> Result<Person, MailError> {
        let address = parsed
            .from
            .clone()
            .ok_or_else(|| MailError::UnknownSender("a message without From".into()))?;
        let directory = self.engine.directory();
        if let Some(person) = directory.active_person_by_email(&address) {
            return Ok(person);
        }
        if self.unknown_senders == UnknownSenders::Refuse {
            return Err(MailError::UnknownSender(address));
        }
        let base = id_for(&address);
        let system = Actor::new("system", [Role::Admin]);
        let mut n = 1;
        loop {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            if !directory.has_person(&id) && !taken(&id) {
                let name = parsed
                    .from_name
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| address.clone());
                let new = NewPerson {
                    id,
                    name: truncate(&name, 200),
                    email: Some(address.clone()),
                    domains: Some(vec![domain.to_string()]),
                    manager: None,
                    vip: false,
                    locale: None,
                };
                let person = directory.create_person(&system, new, taken)?;
                tracing::info!(person = %person.id, "a person was added for an unknown sender");
                return Ok(person);
            }
            n += 1;
            if n > 100 {
                return Err(MailError::UnknownSender(address));
            }
        }
    }

    /// The record a message answers, if any.
    fn answered(&self, parsed: &Parsed) -> Result<Option<RecordId>, MailError> {
        if let Some(id) = record_of_subject(&parsed.subject) {
            return Ok(Some(id));
        }
        let store = self.engine.store();
        for reference in &parsed.references {
            if let Some(bytes) = store.setting(&format!("{SEEN}{}", digest(reference)))? {
                let record = String::from_utf8_lossy(&bytes).into_owned();
                if let Ok(id) = RecordId::parse(&record) {
                    return Ok(Some(id));
                }
            }
            if let Some(id) = record_of_message_id(reference)
                && store.get(&id)?.is_some()
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Takes a parsed message for `domain`: a new record of `kind`, or a reply on the record it
    /// answers. `taken` says whether a new person id is a token principal's.
    pub fn take(
        &self,
        domain: &Domain,
        kind: &str,
        parsed: &Parsed,
        taken: &dyn Fn(&str) -> bool,
    ) -> Result<Taken, MailError> {
        if let Some(reason) = &parsed.automatic {
            tracing::info!(from = ?parsed.from, %reason, "an automatic message was ignored");
            return Ok(Taken {
                outcome: Outcome {
                    reason: Some(format!("automatic mail: {reason}")),
                    ..Outcome::of("ignored", None)
                },
                author: None,
                seen: None,
            });
        }
        let store = self.engine.store();
        let seen = parsed
            .message_id
            .as_deref()
            .map(|id| format!("{SEEN}{}", digest(id)));
        if let Some(key) = &seen
            && let Some(record) = store.setting(key)?
        {
            let record = String::from_utf8_lossy(&record);
            let record = record.split(' ').next().unwrap_or_default().to_owned();
            return Ok(Taken {
                outcome: Outcome::of("duplicate", Some(record)),
                author: None,
                seen: None,
            });
        }
        let person = self.sender(domain, parsed, taken)?;
        let directory = self.engine.directory();
        // Members of a group of the domain work there; everyone else writes as a requester.
        let role = if directory.groups_of(&person.id, domain).is_empty() {
            Role::Requester
        } else {
            Role::Agent
        };
        let actor = Actor::new(person.id.clone(), [role]).in_domains([domain.clone()]);
        let text = if parsed.text.is_empty() {
            "(no text)".to_owned()
        } else {
            parsed.text.clone()
        };
        let (outcome, record) = match self.answered(parsed)? {
            Some(record) => {
                let max = self.engine.limits().max_comment_chars;
                self.engine.add_comment(
                    &actor,
                    record.as_str(),
                    NewComment {
                        body: truncate(&text, max),
                        visibility: Visibility::Public,
                    },
                    None,
                )?;
                ("commented", record)
            }
            None => {
                let title = if parsed.subject.is_empty() {
                    "(no subject)".to_owned()
                } else {
                    truncate(&parsed.subject, MAX_TITLE_CHARS)
                };
                let mut fields = serde_json::Map::new();
                fields.insert(
                    "description".into(),
                    truncate(&text, MAX_DESCRIPTION_CHARS).into(),
                );
                let new = NewRecord {
                    kind: kind.to_owned(),
                    domain: Some(domain.to_string()),
                    title,
                    fields,
                    links: Vec::new(),
                };
                // The message id makes the create idempotent: a redelivery after a crash
                // before the message was marked returns the same record.
                let key = parsed
                    .message_id
                    .as_deref()
                    .map(|id| format!("mail:{}", digest(id)));
                let created = self.engine.create(&actor, new, key.as_deref())?;
                ("created", created.record.id)
            }
        };
        Ok(Taken {
            outcome: Outcome::of(outcome, Some(record.to_string())),
            author: Some((actor, record)),
            seen,
        })
    }

    /// Marks a taken message processed (after its attachments are stored), so a redelivery
    /// is a duplicate.
    pub fn mark(&self, taken: &Taken) -> Result<(), MailError> {
        if let (Some(key), Some((_, record))) = (&taken.seen, &taken.author) {
            // The record it made, and when: what a duplicate is answered with, and its age.
            let value = format!("{record} {}", usm_model::Timestamp::now().as_second());
            self.engine
                .store()
                .write_settings(&[(key.clone(), value.into_bytes())], &[])?;
        }
        Ok(())
    }
}

/// Forgets the ids of messages processed more than `retention` ago; returns how many.
pub fn forget_seen(
    store: &dyn usm_store::Store,
    retention: std::time::Duration,
) -> Result<usize, usm_store::StoreError> {
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = usm_model::Timestamp::now()
        .as_second()
        .saturating_sub(retention);
    let stale: Vec<String> = store
        .settings(SEEN)?
        .into_iter()
        .filter(|(_, value)| {
            // An entry from before ages were kept has none: it goes at once, its record being
            // older than the create's idempotency key in all but a day's worth of cases.
            let at = String::from_utf8_lossy(value)
                .split(' ')
                .nth(1)
                .and_then(|at| at.parse::<i64>().ok())
                .unwrap_or(0);
            at < cutoff
        })
        .map(|(key, _)| key)
        .collect();
    for batch in stale.chunks(1_000) {
        store.write_settings(&[], batch)?;
    }
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_message_ids_are_forgotten_after_the_retention_only() {
        use usm_store::Store as _;
        let store = usm_store::MemoryStore::default();
        let now = usm_model::Timestamp::now().as_second();
        let day = 24 * 3600;
        store
            .write_settings(
                &[
                    (format!("{SEEN}fresh"), format!("INC-1 {now}").into_bytes()),
                    (
                        format!("{SEEN}old"),
                        format!("INC-2 {}", now - 40 * day).into_bytes(),
                    ),
                    (format!("{SEEN}ageless"), b"INC-3".to_vec()),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(forget_seen(&store, SEEN_RETENTION).unwrap(), 2);
        let kept: Vec<String> = store
            .settings(SEEN)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(kept, [format!("{SEEN}fresh")]);
    }

    #[test]
    fn threads_are_found_by_tag_and_by_message_id() {
        assert_eq!(
            record_of_subject("Re: [usm INC-12] Printer on fire").map(|r| r.to_string()),
            Some("INC-12".into())
        );
        assert!(record_of_subject("Re: printer").is_none());
        assert!(record_of_subject("[usm nonsense").is_none());
        assert_eq!(
            record_of_message_id("CHG-3.57.ann.lee@desk.example").map(|r| r.to_string()),
            Some("CHG-3".into())
        );
        assert!(record_of_message_id("CAF=abc@mail.gmail.com").is_none());
    }

    #[test]
    fn automatic_mail_is_told_from_people_by_its_headers() {
        let message = |headers: &str| {
            format!("From: Rob <rob@example.org>\r\n{headers}Subject: x\r\n\r\nbody\r\n")
        };
        for (headers, why) in [
            ("Auto-Submitted: auto-replied\r\n", "Auto-Submitted"),
            ("Precedence: bulk\r\n", "Precedence"),
            ("Precedence: junk\r\n", "Precedence"),
            ("Precedence: list\r\n", "Precedence"),
            ("X-Autoreply: yes\r\n", "auto-reply"),
            ("Return-Path: <>\r\n", "null sender"),
            (
                "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
                "delivery report",
            ),
        ] {
            let parsed = parse(message(headers).as_bytes()).unwrap();
            assert!(
                parsed.automatic.as_deref().is_some_and(|a| a.contains(why)),
                "{headers}: {:?}",
                parsed.automatic
            );
        }
        let daemon =
            parse(b"From: MAILER-DAEMON@mx.example\r\nSubject: x\r\n\r\nfailed\r\n").unwrap();
        assert!(daemon.automatic.is_some());
        for human in ["Auto-Submitted: no\r\n", "Precedence: first-class\r\n", ""] {
            let parsed = parse(message(human).as_bytes()).unwrap();
            assert_eq!(parsed.automatic, None, "{human}");
            assert_eq!(parsed.from.as_deref(), Some("rob@example.org"));
        }
        assert!(matches!(
            parse(b"no headers here"),
            Err(MailError::Unparsable(_))
        ));
    }

    #[test]
    fn a_sender_gets_an_id_from_the_address() {
        assert_eq!(id_for("Ann.Lee@corp.example"), "ann.lee");
        assert_eq!(id_for("o'brien+desk@x.y"), "o-brien-desk");
        assert_eq!(id_for("@x.y"), "sender");
    }
}
