//! What the index holds of a record: its schema and how a record becomes a document.

use serde_json::Value;
use sha2::{Digest, Sha256};
use tantivy::{
    TantivyDocument,
    schema::{
        FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
        TextOptions,
    },
};
use usm_engine::sla::SlaStatus;
use usm_model::{Record, Timestamp, Visibility};

/// Bumped whenever the schema or what goes into a document changes: an index of another
/// version is rebuilt from the store.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// Text indexed per record, at most (the rest of a huge record is not searchable).
const MAX_TEXT_BYTES: usize = 1 << 20;

/// The value of a sort key a record does not have (no priority, no running clock): it sorts
/// after every real value in ascending order.
pub(crate) const ABSENT: u64 = u64::MAX;

/// The index's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub id: Field,
    pub domain: Field,
    pub kind: Field,
    pub state: Field,
    pub assignee: Field,
    pub group: Field,
    /// The creating principal and the requester: who reads the record as its requester.
    pub owner: Field,
    pub priority: Field,
    /// Title, text fields, public comments and attachment names.
    pub text: Field,
    /// Internal notes: searched for those who work records only.
    pub internal: Field,
    pub created: Field,
    pub updated: Field,
    pub rank: Field,
    pub sla_due: Field,
    pub sla_warning: Field,
    pub breached: Field,
    /// A hash of the id: the last tie-breaker of every order.
    pub tie: Field,
}

pub(crate) fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("en_stem")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        id: builder.add_text_field("id", STRING | STORED),
        domain: builder.add_text_field("domain", STRING),
        kind: builder.add_text_field("kind", STRING),
        state: builder.add_text_field("state", STRING),
        assignee: builder.add_text_field("assignee", STRING),
        group: builder.add_text_field("assignment_group", STRING),
        owner: builder.add_text_field("owner", STRING),
        priority: builder.add_text_field("priority", STRING),
        text: builder.add_text_field("text", words.clone()),
        internal: builder.add_text_field("internal", words),
        created: builder.add_u64_field("created", FAST | INDEXED),
        updated: builder.add_u64_field("updated", FAST | INDEXED),
        rank: builder.add_u64_field("rank", FAST | INDEXED),
        sla_due: builder.add_u64_field("sla_due", FAST | INDEXED),
        sla_warning: builder.add_u64_field("sla_warning", FAST | INDEXED),
        breached: builder.add_u64_field("breached", FAST | INDEXED),
        tie: builder.add_u64_field("tie", FAST),
    };
    (builder.build(), fields)
}

/// Microseconds since the epoch, 0 before it.
pub(crate) fn micros(at: Timestamp) -> u64 {
    u64::try_from(at.as_microsecond()).unwrap_or(0)
}

/// The tie-breaker of a record id.
pub(crate) fn tie(id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The order of a priority: the number in `P1`, `2`, `p3`; absent or other names last.
pub(crate) fn priority_rank(priority: Option<&str>) -> u64 {
    priority
        .map(|p| p.trim_start_matches(['P', 'p']))
        .and_then(|digits| digits.parse::<u64>().ok())
        .unwrap_or(ABSENT)
}

pub(crate) fn text_field<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record.fields.get(name).and_then(Value::as_str)
}

/// Where a record's clocks stand: the earliest due and warning instants of the clocks still
/// running, and whether a clock not yet stopped has breached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlaMarks {
    pub due: u64,
    pub warning: u64,
    pub breached: bool,
}

impl SlaMarks {
    pub(crate) fn of(status: Option<&SlaStatus>) -> Self {
        let mut marks = Self {
            due: ABSENT,
            warning: ABSENT,
            breached: false,
        };
        let clocks = status
            .into_iter()
            .flat_map(|s| [s.response.as_ref(), s.resolution.as_ref()])
            .flatten();
        for clock in clocks.filter(|c| !c.stopped) {
            marks.breached |= clock.breached;
            if clock.paused {
                continue;
            }
            if let Some(due) = clock.due_at {
                marks.due = marks.due.min(micros(due));
            }
            if let Some(warning) = clock.warning_at {
                marks.warning = marks.warning.min(micros(warning));
            }
        }
        marks
    }
}

/// A comment or note of the record's history, for the index.
pub(crate) struct Note {
    pub text: String,
    pub visibility: Visibility,
}

/// Collects text up to [`MAX_TEXT_BYTES`].
struct Words(String);

impl Words {
    fn push(&mut self, text: &str) {
        if self.0.len() >= MAX_TEXT_BYTES || text.is_empty() {
            return;
        }
        let room = MAX_TEXT_BYTES - self.0.len();
        let mut end = text.len().min(room);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.0.push_str(&text[..end]);
        self.0.push('\n');
    }

    /// Every string in `value`, keys excluded.
    fn push_strings(&mut self, value: &Value) {
        match value {
            Value::String(text) => self.push(text),
            Value::Array(items) => items.iter().for_each(|item| self.push_strings(item)),
            Value::Object(members) => members.values().for_each(|item| self.push_strings(item)),
            _ => {}
        }
    }
}

/// The document of `record`.
pub(crate) fn document(
    fields: &Fields,
    record: &Record,
    notes: &[Note],
    sla: Option<&SlaStatus>,
) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_text(fields.id, record.id.as_str());
    doc.add_text(fields.domain, record.domain.as_str());
    doc.add_text(fields.kind, record.kind.as_str());
    doc.add_text(fields.state, record.state.as_str());
    if let Some(assignee) = text_field(record, "assignee") {
        doc.add_text(fields.assignee, assignee);
    }
    if let Some(group) = text_field(record, "assignment_group") {
        doc.add_text(fields.group, group);
    }
    doc.add_text(fields.owner, &record.created_by);
    if let Some(requester) = text_field(record, "requester")
        && requester != record.created_by
    {
        doc.add_text(fields.owner, requester);
    }
    let priority = text_field(record, "priority");
    if let Some(priority) = priority {
        doc.add_text(fields.priority, priority);
    }
    doc.add_u64(fields.rank, priority_rank(priority));
    doc.add_u64(fields.created, micros(record.created_at));
    doc.add_u64(fields.updated, micros(record.updated_at));
    doc.add_u64(fields.tie, tie(record.id.as_str()));
    let marks = SlaMarks::of(sla);
    doc.add_u64(fields.sla_due, marks.due);
    doc.add_u64(fields.sla_warning, marks.warning);
    doc.add_u64(fields.breached, u64::from(marks.breached));

    let mut public = Words(String::new());
    public.push(record.id.as_str());
    public.push(&record.title);
    for (name, value) in &record.fields {
        if name == usm_engine::attachments::ATTACHMENTS {
            // Only the names: hashes and media types are not words anyone searches for.
            for attachment in value.as_array().into_iter().flatten() {
                if let Some(name) = attachment.get("filename").and_then(Value::as_str) {
                    public.push(name);
                }
            }
        } else {
            public.push_strings(value);
        }
    }
    let mut internal = Words(String::new());
    for note in notes {
        match note.visibility {
            Visibility::Public => public.push(&note.text),
            Visibility::Internal => internal.push(&note.text),
        }
    }
    doc.add_text(fields.text, &public.0);
    if !internal.0.is_empty() {
        doc.add_text(fields.internal, &internal.0);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_order_by_their_number_and_others_last() {
        assert_eq!(priority_rank(Some("P1")), 1);
        assert_eq!(priority_rank(Some("p4")), 4);
        assert_eq!(priority_rank(Some("3")), 3);
        assert_eq!(priority_rank(Some("urgent")), ABSENT);
        assert_eq!(priority_rank(None), ABSENT);
    }

    #[test]
    fn text_is_capped_on_a_character_boundary() {
        let mut words = Words(String::new());
        words.push(&"é".repeat(MAX_TEXT_BYTES));
        assert!(words.0.len() <= MAX_TEXT_BYTES + 1);
        assert!(words.0.trim_end().chars().all(|c| c == 'é'));
        let before = words.0.len();
        words.push("more");
        assert_eq!(words.0.len(), before, "nothing past the cap");
    }
}
