use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Record;

/// One changed value: a JSON pointer into the record with the value before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    /// JSON pointer (RFC 6901) of the changed value, e.g. `/fields/impact`.
    pub path: String,
    /// The value before; absent when the value was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The value after; absent when the value was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// The changes from `old` to `new` over the members a client can change: title, state, domain,
/// fields (recursively through objects; arrays compare whole) and links.
pub fn diff_records(old: Option<&Record>, new: &Record) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut scalar = |path: &str, from: Option<Value>, to: Value| {
        if from.as_ref() != Some(&to) {
            changes.push(Change {
                path: path.to_owned(),
                from,
                to: Some(to),
            });
        }
    };
    scalar(
        "/title",
        old.map(|r| Value::from(r.title.as_str())),
        Value::from(new.title.as_str()),
    );
    scalar(
        "/state",
        old.map(|r| Value::from(r.state.as_str())),
        Value::from(new.state.as_str()),
    );
    scalar(
        "/domain",
        old.map(|r| Value::from(r.domain.as_str())),
        Value::from(new.domain.as_str()),
    );
    let empty = Map::new();
    diff_maps(
        "/fields",
        old.map_or(&empty, |r| &r.fields),
        &new.fields,
        &mut changes,
    );
    let links = |r: &Record| serde_json::to_value(&r.links).unwrap_or(Value::Null);
    let new_links = links(new);
    let old_links = old.map(links);
    let no_links = Value::Array(Vec::new());
    if old_links.as_ref().unwrap_or(&no_links) != &new_links {
        changes.push(Change {
            path: "/links".to_owned(),
            from: old_links,
            to: Some(new_links),
        });
    }
    changes
}

/// The changes between two JSON renderings of a record, over title, state, fields and links;
/// used to show what a pipeline step's patch did.
pub fn diff_record_values(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    for member in ["title", "state", "links"] {
        let (from, to) = (old.get(member), new.get(member));
        if from != to {
            changes.push(Change {
                path: format!("/{member}"),
                from: from.cloned(),
                to: to.cloned(),
            });
        }
    }
    let empty = Map::new();
    let old_fields = old
        .get("fields")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_fields = new
        .get("fields")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    diff_maps("/fields", old_fields, new_fields, &mut changes);
    changes
}

fn diff_maps(
    prefix: &str,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    out: &mut Vec<Change>,
) {
    for (key, new_value) in new {
        let path = format!("{prefix}/{}", escape_pointer(key));
        match old.get(key) {
            None => out.push(Change {
                path,
                from: None,
                to: Some(new_value.clone()),
            }),
            Some(Value::Object(old_map)) if matches!(new_value, Value::Object(_)) => {
                if let Value::Object(new_map) = new_value {
                    diff_maps(&path, old_map, new_map, out);
                }
            }
            Some(old_value) if old_value != new_value => out.push(Change {
                path,
                from: Some(old_value.clone()),
                to: Some(new_value.clone()),
            }),
            Some(_) => {}
        }
    }
    for (key, old_value) in old {
        if !new.contains_key(key) {
            out.push(Change {
                path: format!("{prefix}/{}", escape_pointer(key)),
                from: Some(old_value.clone()),
                to: None,
            });
        }
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Domain, Kind, Process, RecordId, State};

    fn record(fields: Value) -> Record {
        let now = jiff::Timestamp::UNIX_EPOCH;
        Record {
            id: RecordId::parse("INC-1").unwrap(),
            kind: Kind::new("incident").unwrap(),
            process: Process::Recover,
            domain: Domain::default(),
            state: State::new("new").unwrap(),
            title: "printer".into(),
            fields: fields.as_object().unwrap().clone(),
            links: vec![],
            version: 1,
            created_at: now,
            created_by: "a".into(),
            updated_at: now,
            updated_by: "a".into(),
        }
    }

    #[test]
    fn create_lists_every_member() {
        let new = record(json!({"impact": "high"}));
        let paths: Vec<_> = diff_records(None, &new)
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(paths, ["/title", "/state", "/domain", "/fields/impact"]);
    }

    #[test]
    fn update_lists_only_what_changed_with_nested_paths() {
        let old = record(
            json!({"impact": "high", "loc": {"site": "A", "room": 1}, "gone": true, "a/b": 1}),
        );
        let mut new = record(json!({"impact": "low", "loc": {"site": "A", "room": 2}, "a/b": 2}));
        new.state = State::new("in_progress").unwrap();
        let changes = diff_records(Some(&old), &new);
        let paths: Vec<_> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/state",
                "/fields/a~1b",
                "/fields/impact",
                "/fields/loc/room",
                "/fields/gone"
            ]
        );
        let gone = changes.last().unwrap();
        assert_eq!(gone.from, Some(json!(true)));
        assert_eq!(gone.to, None);
    }

    #[test]
    fn identical_records_have_no_changes() {
        let old = record(json!({"x": [1, 2]}));
        assert!(diff_records(Some(&old), &old.clone()).is_empty());
    }
}
