//! A record's conversation: public comments between the requester and the desk, internal work
//! notes among agents. Each comment is a history entry (ISO/IEC 20000-1 8.6.1: records are
//! updated with the actions taken), so it is as durable, ordered and audited as any write.

use jiff::Timestamp;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use usm_model::{Action, Actor, HistoryEntry, State, Visibility};

use crate::{Engine, EngineError, Proposal, WriteTarget, controls};

/// The state a record waits in; `hold_reason` says why, and holds only while it is there.
pub const HOLD_STATE: &str = "on_hold";
/// The field that says why a record is on hold.
pub const HOLD_REASON: &str = "hold_reason";
/// The hold reason a requester's reply ends.
pub const AWAITING_CUSTOMER: &str = "awaiting_customer";

/// A comment to add.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewComment {
    /// Plain text or Markdown.
    pub body: String,
    /// `public` (default: the requester reads it) or `internal` (agents only).
    #[serde(default)]
    pub visibility: Visibility,
}

/// A comment as read back.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Comment {
    /// The record version the comment made.
    pub version: u64,
    /// When it was written.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// Who wrote it.
    pub author: String,
    /// Who reads it.
    pub visibility: Visibility,
    /// As written.
    pub body: String,
    /// The body as Markdown rendered to HTML, with raw HTML escaped and only `http`, `https`,
    /// `mailto` and relative links kept: safe to show as is.
    pub html: String,
}

impl Comment {
    fn from_entry(entry: &HistoryEntry) -> Option<Self> {
        let body = entry.comment.clone()?;
        Some(Self {
            version: entry.version,
            at: entry.at,
            author: entry.actor.clone(),
            visibility: entry.visibility.unwrap_or_default(),
            html: render(&body),
            body,
        })
    }
}

/// Renders Markdown to HTML that cannot carry script: raw HTML is shown as text and links or
/// images with other schemes (`javascript:`, `data:`, …) lose their target.
pub fn render(markdown: &str) -> String {
    fn safe(url: CowStr<'_>) -> CowStr<'_> {
        let lower = url.trim_start().to_ascii_lowercase();
        let scheme = lower
            .split_once(':')
            .map(|(scheme, _)| scheme)
            .filter(|s| !s.contains(['/', '?', '#']));
        match scheme {
            None | Some("http" | "https" | "mailto") => url,
            Some(_) => CowStr::Borrowed("#"),
        }
    }
    let events = Parser::new_ext(
        markdown,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
    )
    .map(|event| match event {
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe(dest_url),
            title,
            id,
        }),
        other => other,
    });
    let mut html = String::with_capacity(markdown.len() * 5 / 4);
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

impl Engine {
    /// Adds a comment. Requesters write public comments on their own records; agents write
    /// both. A requester's reply to a record held `awaiting_customer` puts it back in progress.
    pub fn add_comment(
        &self,
        actor: &Actor,
        id: &str,
        new: NewComment,
        if_match: Option<u64>,
    ) -> Result<Comment, EngineError> {
        let max = self.config.limits.max_comment_chars;
        if new.body.trim().is_empty() {
            return Err(EngineError::invalid("/body", "a comment has a body"));
        }
        if new.body.chars().count() > max {
            return Err(EngineError::invalid(
                "/body",
                format!("must be at most {max} characters"),
            ));
        }
        if new.body.contains('\0') {
            return Err(EngineError::invalid("/body", "must not contain NUL"));
        }
        let target = WriteTarget {
            id,
            if_match,
            action: Action::Comment,
            cause: None,
        };
        let committed = self.write(actor, target, |current| {
            if new.visibility == Visibility::Internal && !actor.works_records() {
                return Err(EngineError::Forbidden(
                    "internal notes are the desk's: a requester comments publicly".into(),
                ));
            }
            let mut next = current.clone();
            let replying = controls::requester_of(current) == actor.name
                && new.visibility == Visibility::Public
                && current.fields.get(HOLD_REASON).and_then(Value::as_str)
                    == Some(AWAITING_CUSTOMER);
            if replying {
                let resumed = State::new("in_progress").ok().filter(|to| {
                    let catalog = self.catalog_in(&current.domain);
                    catalog.get(&current.kind).is_some_and(|def| {
                        def.lifecycle
                            .transitions()
                            .iter()
                            .any(|t| t.from == current.state && &t.to == to)
                    })
                });
                if let Some(to) = resumed {
                    next.state = to;
                    next.fields.remove(HOLD_REASON);
                }
            }
            Ok(Proposal {
                record: next,
                comment: Some(new.body.clone()),
                approval: None,
                context: Value::Null,
                visibility: Some(new.visibility),
            })
        })?;
        Comment::from_entry(&committed.history).ok_or_else(|| {
            EngineError::Store(usm_store::StoreError::Corrupt {
                what: "comment",
                detail: "the committed entry lost its body".into(),
            })
        })
    }

    /// The conversation of a record after version `after`, oldest first: everything for those
    /// who work records, the public part for the requester.
    pub fn comments(
        &self,
        actor: &Actor,
        id: &str,
        after: u64,
        limit: Option<usize>,
    ) -> Result<Vec<Comment>, EngineError> {
        let limit = self.page_size(limit, self.config.limits.max_history_page)?;
        let record = self.get(actor, id)?;
        let mut comments = Vec::new();
        let mut cursor = after;
        // Comments are a subset of history: read pages until enough are found or it ends.
        loop {
            let entries = self.store.history(&record.id, cursor, 500)?;
            let Some(last) = entries.last() else {
                return Ok(comments);
            };
            cursor = last.version;
            for entry in &entries {
                if entry.action != Action::Comment || !can_read(actor, entry) {
                    continue;
                }
                comments.extend(Comment::from_entry(entry));
                if comments.len() == limit {
                    return Ok(comments);
                }
            }
            if entries.len() < 500 {
                return Ok(comments);
            }
        }
    }
}

/// Whether `actor` reads the history entry: internal notes are for those who work records.
pub fn can_read(actor: &Actor, entry: &HistoryEntry) -> bool {
    entry.visibility != Some(Visibility::Internal) || actor.works_records()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markdown_renders_without_script() {
        assert_eq!(render("**done**"), "<p><strong>done</strong></p>\n");
        let html = render("<script>alert(1)</script> <img src=x onerror=alert(1)>");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        let html = render("[click](javascript:alert(1)) [ok](https://example.org) [rel](/a/b)");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://example.org\""), "{html}");
        assert!(html.contains("href=\"/a/b\""), "{html}");
        let html = render("![x](data:image/png;base64,AAAA)");
        assert!(!html.contains("data:"), "{html}");
        assert!(render("[m](MAILTO:a@b.c)").contains("MAILTO:a@b.c"));
    }
}
