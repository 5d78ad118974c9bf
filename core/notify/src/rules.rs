//! Who hears of a commit: the default notification rules.

use serde_json::{Value, json};
use usm_directory::Person;
use usm_engine::Engine;
use usm_model::{Event, EventType, HistoryEntry, Record, Visibility};
use usm_store::StoreError;

/// A message to render for one person.
pub(crate) struct Notice {
    /// The template set: `created`, `replied` or `assigned`.
    pub template: &'static str,
    /// Who receives it (a person with an e-mail address).
    pub person: Person,
    /// What the templates see.
    pub context: Value,
    /// The first message of the record's thread.
    pub opens_thread: bool,
}

fn text<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record.fields.get(name).and_then(Value::as_str)
}

/// The person the record was requested by: `requester`, or the one who created it.
fn requester(record: &Record) -> &str {
    text(record, "requester").unwrap_or(&record.created_by)
}

/// The notices of `event`: the requester's acknowledgement of a new record, the requester on a
/// public comment by someone else, the assignee on an assignment by someone else.
pub(crate) fn notices(engine: &Engine, event: &Event) -> Result<Vec<Notice>, StoreError> {
    let store = engine.store();
    let Some(record) = store.get(&event.record_id)? else {
        return Ok(Vec::new());
    };
    let entry: Option<HistoryEntry> = store
        .history(&event.record_id, event.version.saturating_sub(1), 1)?
        .into_iter()
        .find(|e| e.version == event.version);
    let directory = engine.directory();
    let reachable = |id: &str| directory.active_person(id).filter(|p| p.email.is_some());
    let name_of = |id: &str| {
        directory
            .active_person(id)
            .map_or_else(|| id.to_owned(), |p| p.name)
    };
    let context = |person: &Person, comment: Option<Value>| {
        json!({
            "record": {"id": record.id.as_str(), "title": record.title, "kind": record.kind.as_str(),
                       "state": record.state.as_str(), "domain": record.domain.as_str(),
                       "group": text(&record, "assignment_group")},
            "recipient": {"id": person.id, "name": person.name},
            "comment": comment,
        })
    };
    let mut notices = Vec::new();
    let requester = requester(&record);
    if event.event_type == EventType::RecordCreated
        && let Some(person) = reachable(requester)
    {
        notices.push(Notice {
            template: "created",
            context: context(&person, None),
            person,
            opens_thread: true,
        });
    }
    let Some(entry) = entry else {
        return Ok(notices);
    };
    if event.event_type == EventType::RecordCommented
        && entry.visibility.unwrap_or_default() == Visibility::Public
        && entry.actor != requester
        && let (Some(body), Some(person)) = (&entry.comment, reachable(requester))
    {
        let comment = json!({"author": name_of(&entry.actor), "body": body,
                             "html": usm_engine::conversation::render(body)});
        notices.push(Notice {
            template: "replied",
            context: context(&person, Some(comment)),
            person,
            opens_thread: false,
        });
    }
    let assigned = entry
        .changes
        .iter()
        .find(|c| c.path == "/fields/assignee")
        .and_then(|c| c.to.as_ref())
        .and_then(Value::as_str);
    if let Some(assignee) = assigned
        && assignee != entry.actor
        && let Some(person) = reachable(assignee)
    {
        notices.push(Notice {
            template: "assigned",
            context: context(&person, None),
            person,
            opens_thread: false,
        });
    }
    Ok(notices)
}
