//! What would a module change? Replays the recent creates of some domains through the pipelines
//! as they are and as they would be with a change (a module installed or upgraded, enabled or
//! disabled there), each from the input its create recorded, and reports the difference. It
//! writes nothing and runs no after-step, so no effect leaves the server.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::{Map, Value};
use usm_model::{Action, Actor, Change, Domain, Record, Role, diff_records};
use usm_store::{ListQuery, StoreError};

use crate::{Catalogs, Engine, EngineError, Hook, ModuleFiles, Pipelines};

/// The most records one preview replays.
pub const MAX_PREVIEW_RECORDS: usize = 1000;
/// The most samples a report carries.
const MAX_SAMPLES: usize = 20;

/// The change to preview.
#[derive(Debug, Clone)]
pub enum PreviewChange {
    /// This module (a bundle's files) installed, or upgrading the installed one of its id, and
    /// enabled in the domains previewed.
    Module(ModuleFiles),
    /// The installed module of this id enabled in the domains previewed.
    Enable(String),
    /// The installed module of this id disabled in the domains previewed.
    Disable(String),
}

/// What the change would do to the recent creates.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreviewReport {
    /// Records replayed.
    pub records: usize,
    /// Records both pipelines accept whose result differs.
    pub changed: usize,
    /// Records the pipelines as they are accept and the changed ones refuse.
    pub rejected_now: usize,
    /// Records the pipelines as they are refuse and the changed ones accept.
    pub accepted_now: usize,
    /// Records whose outcome or result differs, the most recent first (at most 20).
    pub samples: Vec<PreviewSample>,
}

/// One record the change affects.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreviewSample {
    /// The record.
    pub id: String,
    /// Its create through the pipelines as they are.
    pub before: PreviewOutcome,
    /// Its create through the pipelines with the change.
    pub after: PreviewOutcome,
    /// From `before`'s result to `after`'s, when both accept.
    pub diff: Vec<Change>,
}

/// How a replayed create ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PreviewOutcome {
    /// Accepted; the record it would have created (before its id is assigned).
    Accepted {
        /// The record.
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        record: Value,
    },
    /// Refused by a step, or failed.
    Refused {
        /// The problem's stable code (`step_rejected`, `step_failed`, …).
        code: String,
        /// The module of the step, when a step refused it.
        #[serde(skip_serializing_if = "Option::is_none")]
        module: Option<String>,
        /// Why.
        detail: String,
    },
}

impl Engine {
    /// Replays the most recent `limit` creates of `domains` through `now` and `changed`.
    pub(crate) fn preview_creates(
        &self,
        now: &Pipelines,
        changed: (&Pipelines, &Catalogs),
        domains: &[Domain],
        limit: usize,
    ) -> Result<PreviewReport, StoreError> {
        let mut report = PreviewReport {
            records: 0,
            changed: 0,
            rejected_now: 0,
            accepted_now: 0,
            samples: Vec::new(),
        };
        for record in self.recent_records(domains, limit)? {
            let Some(input) = self.recorded_input(&record)? else {
                continue;
            };
            report.records += 1;
            let actor = Actor::new(record.created_by.as_str(), [Role::Agent]);
            let replay = |pipelines: &Pipelines, catalogs: Option<&Catalogs>| {
                self.run_before(
                    pipelines,
                    catalogs,
                    Hook::Create,
                    &actor,
                    input.clone(),
                    None,
                    Value::Null,
                    false,
                )
                .map(|(result, _)| result)
            };
            let (before, after) = (replay(now, None), replay(changed.0, Some(changed.1)));
            let diff = match (&before, &after) {
                (Ok(before), Ok(after)) => {
                    let diff = diff_records(Some(before), after);
                    if diff.is_empty() {
                        continue;
                    }
                    report.changed += 1;
                    diff
                }
                (Ok(_), Err(_)) => {
                    report.rejected_now += 1;
                    Vec::new()
                }
                (Err(_), Ok(_)) => {
                    report.accepted_now += 1;
                    Vec::new()
                }
                (Err(a), Err(b)) if a.to_string() == b.to_string() => continue,
                (Err(_), Err(_)) => {
                    report.changed += 1;
                    Vec::new()
                }
            };
            if report.samples.len() < MAX_SAMPLES {
                report.samples.push(PreviewSample {
                    id: record.id.to_string(),
                    before: outcome(before),
                    after: outcome(after),
                    diff,
                });
            }
        }
        Ok(report)
    }

    /// The last `limit` records created in `domains`, the most recent first (each domain read
    /// page by page in creation order).
    fn recent_records(&self, domains: &[Domain], limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut all = Vec::new();
        for domain in domains {
            let mut recent = VecDeque::with_capacity(limit + 1);
            let mut query = ListQuery {
                kind: None,
                state: None,
                domain: Some(domain.clone()),
                within: None,
                owner: None,
                after: None,
                limit: 500,
            };
            loop {
                let page = self.store.list(&query)?;
                for record in page.records {
                    recent.push_back(record);
                    if recent.len() > limit {
                        recent.pop_front();
                    }
                }
                match page.next {
                    Some(after) => query.after = Some(after),
                    None => break,
                }
            }
            all.extend(recent);
        }
        all.sort_by_key(|record| std::cmp::Reverse(record.created_at));
        all.truncate(limit);
        Ok(all)
    }

    /// The record as its creator sent it: the create's result with each step's changes undone,
    /// last step first. `None` when the record's history has no create (it cannot be replayed).
    fn recorded_input(&self, record: &Record) -> Result<Option<Record>, StoreError> {
        let Some(create) = self
            .store
            .history(&record.id, 0, 1)?
            .into_iter()
            .find(|entry| entry.action == Action::Create)
        else {
            return Ok(None);
        };
        let mut value = serde_json::json!({"title": "", "state": "", "fields": {}, "links": []});
        for change in &create.changes {
            set_pointer(&mut value, &change.path, change.to.clone());
        }
        for step in create.steps.iter().rev() {
            for change in step.changes.iter().rev() {
                set_pointer(&mut value, &change.path, change.from.clone());
            }
        }
        let mut input = record.clone();
        let member = |name: &str| value.get(name).cloned().unwrap_or(Value::Null);
        let (Ok(title), Ok(fields), Ok(links), Some(state)) = (
            serde_json::from_value(member("title")),
            serde_json::from_value::<Map<String, Value>>(member("fields")),
            serde_json::from_value(member("links")),
            member("state")
                .as_str()
                .and_then(|s| usm_model::State::new(s).ok()),
        ) else {
            return Ok(None);
        };
        input.title = title;
        input.fields = fields;
        input.links = links;
        input.state = state;
        input.version = 0;
        Ok(Some(input))
    }
}

fn outcome(result: Result<Record, EngineError>) -> PreviewOutcome {
    match result {
        Ok(record) => {
            let mut value = serde_json::to_value(&record).unwrap_or(Value::Null);
            if let Some(map) = value.as_object_mut() {
                map.insert("id".into(), Value::Null);
                map.remove("version");
            }
            PreviewOutcome::Accepted { record: value }
        }
        Err(error) => PreviewOutcome::Refused {
            code: error.code().as_str().to_owned(),
            module: match &error {
                EngineError::StepRejected { module, .. }
                | EngineError::StepFailed { module, .. } => Some(module.clone()),
                _ => None,
            },
            detail: error.to_string(),
        },
    }
}

/// Sets (or with `None` removes) the value at a JSON pointer, creating objects on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Option<Value>) {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut node = root;
    for token in parents {
        let Some(map) = node.as_object_mut() else {
            return;
        };
        node = map
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(map) = node.as_object_mut() {
        match value {
            Some(value) => {
                map.insert(last.clone(), value);
            }
            None => {
                map.remove(last);
            }
        }
    }
}
