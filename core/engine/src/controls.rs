//! Controls that hold whatever a client sends: who may write which field, identities taken
//! from principals rather than fields, approvals bound to the content they approved, and
//! resolution data that a reopening clears.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use usm_model::{Actor, Approval, KindDef, Record};

use crate::EngineError;

/// The field naming the person a record is for; the engine's, not a client's, to fill.
pub const REQUESTER: &str = "requester";

/// The person a record is for: the one named when an agent created it on their behalf, else
/// its creator.
pub fn requester_of(record: &Record) -> &str {
    record
        .fields
        .get(REQUESTER)
        .and_then(Value::as_str)
        .unwrap_or(&record.created_by)
}

/// The field naming who decides a record's approvals (person ids and `group:<id>`); the
/// engine's services fill it, never a client.
pub const APPROVERS: &str = "approvers";

/// The approvers a record names; none means any agent or admin may decide.
pub fn approvers_of(record: &Record) -> impl Iterator<Item = &str> {
    record
        .fields
        .get(APPROVERS)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether `actor` (a member of `groups` in the record's domain) may decide an approval of
/// `record`: with approvers named, one of them but never the requester; else an agent or admin.
pub fn may_approve(actor: &Actor, groups: &[String], record: &Record) -> Result<(), EngineError> {
    let mut named = approvers_of(record).peekable();
    if named.peek().is_none() {
        if actor.has_role(usm_model::Role::Agent) || actor.has_role(usm_model::Role::Admin) {
            return Ok(());
        }
        return Err(EngineError::Forbidden(
            "an approval is a person's decision: it needs the agent or admin role, and automations do not approve".into(),
        ));
    }
    if requester_of(record) == actor.name {
        return Err(EngineError::Forbidden(
            "no one approves what they asked for themself".into(),
        ));
    }
    let eligible = named.any(|approver| match approver.strip_prefix("group:") {
        Some(group) => groups.iter().any(|g| g == group),
        None => approver == actor.name,
    });
    if eligible {
        Ok(())
    } else {
        Err(EngineError::Forbidden(format!(
            "only the record's approvers decide: {}",
            approvers_of(record).collect::<Vec<_>>().join(", ")
        )))
    }
}

/// The module whose steps act as `actor`, for writes made by a step's effects.
fn module_of(actor: &Actor) -> Option<&str> {
    actor.name.strip_prefix("module:")
}

/// Fields whose value differs between `before` and `after` (added, changed or removed).
fn changed<'a>(
    before: Option<&'a Map<String, Value>>,
    after: &'a Map<String, Value>,
) -> impl Iterator<Item = &'a str> {
    let added_or_changed = after
        .iter()
        .filter(move |(name, value)| before.and_then(|b| b.get(*name)) != Some(value))
        .map(|(name, _)| name.as_str());
    let removed = before
        .into_iter()
        .flat_map(|b| b.keys())
        .filter(move |name| !after.contains_key(*name))
        .map(String::as_str);
    added_or_changed.chain(removed)
}

/// How a client's write came about, for the requester rule.
pub struct ClientWrite<'a> {
    /// Who writes.
    pub actor: &'a Actor,
    /// The fields before the write; `None` for a create.
    pub before: Option<&'a Map<String, Value>>,
    /// Whether the actor administers the record's domain (may correct the requester).
    pub domain_admin: bool,
}

/// Refuses a client's write of a field it may not write, naming the field and who writes it.
pub fn check_client(
    def: &KindDef,
    write: &ClientWrite<'_>,
    after: &Map<String, Value>,
) -> Result<(), EngineError> {
    let creating = write.before.is_none();
    for field in changed(write.before, after) {
        check_declared(def, field, after)?;
        let allowed = if field == REQUESTER {
            // Named once: by the requester themself, or by an agent creating on someone's
            // behalf; corrected later only by an admin of the domain (history records who).
            if creating {
                write.actor.works_records()
                    || after.get(REQUESTER).and_then(Value::as_str)
                        == Some(write.actor.name.as_str())
            } else {
                write.domain_admin
            }
        } else {
            let writer = def.writer(field);
            match module_of(write.actor) {
                Some(module) => writer.admits_module(module),
                None => writer.admits_client(write.actor, creating),
            }
        };
        if !allowed {
            return Err(EngineError::FieldNotWritable {
                field: format!("/fields/{}", pointer_escape(field)),
                owner: def.writer(field).clone(),
            });
        }
    }
    Ok(())
}

/// Refuses a step's patch of a field another module owns or the engine derives.
pub fn check_step(
    def: &KindDef,
    module: &str,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> Result<(), EngineError> {
    for field in changed(Some(before), after) {
        check_declared(def, field, after)?;
        if !def.writer(field).admits_module(module) {
            return Err(EngineError::FieldNotWritable {
                field: format!("/fields/{}", pointer_escape(field)),
                owner: def.writer(field).clone(),
            });
        }
    }
    Ok(())
}

/// Refuses a write that sets a field the kind does not declare; removing one (left by an older
/// schema) is always allowed.
fn check_declared(
    def: &KindDef,
    field: &str,
    after: &Map<String, Value>,
) -> Result<(), EngineError> {
    if after.contains_key(field) && !def.declares(field) {
        return Err(EngineError::UnknownField {
            field: format!("/fields/{}", pointer_escape(field)),
            kind: def.name.to_string(),
        });
    }
    Ok(())
}

fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// A digest of what an approval of `record` approves: its kind's material fields (and title).
/// `None` when the kind declares none, so approvals bind to nothing in particular.
pub fn material_digest(def: &KindDef, record: &Record) -> Option<String> {
    if def.material.is_empty() {
        return None;
    }
    let mut names: Vec<&String> = def.material.iter().collect();
    names.sort();
    names.dedup();
    let content: Vec<(&str, Value)> = names
        .into_iter()
        .map(|name| {
            let value = if name == "title" {
                Value::String(record.title.clone())
            } else {
                record
                    .fields
                    .get(name.as_str())
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            (name.as_str(), value)
        })
        .collect();
    let mut hasher = Sha256::new();
    // serde_json writes a map's members in key order, so equal content hashes equally.
    hasher.update(serde_json::to_vec(&content).unwrap_or_default());
    Some(format!("{:x}", hasher.finalize()))
}

/// Whether `approval` still approves what the record now says.
pub fn is_current(approval: &Approval, digest: Option<&String>) -> bool {
    match (&approval.content, digest) {
        (Some(approved), Some(now)) => approved == now,
        // Approvals recorded before the kind had material fields bind to nothing.
        _ => true,
    }
}

/// An approval with whether it still holds.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalStatus {
    /// The decision as recorded.
    #[serde(flatten)]
    pub approval: Approval,
    /// `false` once a material field changed after the decision: it no longer counts.
    pub current: bool,
}

/// Refuses an assignment to a group that is not of the record's domain, or to someone who is
/// not an active person of the domain (and, with a group, one of its members), and watchers who
/// are not active people of the domain. Only a changed assignment or watcher list is checked: a
/// person deactivated later leaves their records as they were.
pub fn check_assignment(
    directory: &usm_directory::Directory,
    previous: Option<&Record>,
    record: &Record,
) -> Result<(), EngineError> {
    let get = |r: &Record, field: &str| {
        r.fields
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let watchers = |r: &Record| r.fields.get("watchers").cloned();
    if previous.is_none_or(|p| watchers(p) != watchers(record))
        && let Some(Value::Array(list)) = record.fields.get("watchers")
    {
        let ids: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
        directory
            .check_watchers(&record.domain, &ids)
            .map_err(|(field, message)| EngineError::UnknownReference { field, message })?;
    }
    let group = get(record, "assignment_group");
    let assignee = get(record, "assignee");
    let changed = previous
        .is_none_or(|p| get(p, "assignment_group") != group || get(p, "assignee") != assignee);
    if !changed || (group.is_none() && assignee.is_none()) {
        return Ok(());
    }
    directory
        .check_assignment(&record.domain, group.as_deref(), assignee.as_deref())
        .map_err(|(field, message)| EngineError::UnknownReference {
            field: field.to_owned(),
            message,
        })
}

/// What entering a state does to a record besides the state: the principal who moved it is
/// recorded where the kind says, and leaving a resolution other than by accepting it clears
/// the resolution data.
pub fn on_transition(def: &KindDef, actor: &Actor, current: &Record, next: &mut Record) {
    // A hold reason holds while the record is on hold.
    if current.state.as_str() == crate::conversation::HOLD_STATE && next.state != current.state {
        next.fields.remove(crate::conversation::HOLD_REASON);
    }
    if let Some(field) = def.actor_fields.get(&next.state) {
        next.fields
            .insert(field.clone(), Value::String(actor.name.clone()));
    }
    if let Some(confirmation) = &def.confirmation
        && current.state == confirmation.state
        && next.state != confirmation.accept
    {
        for field in &confirmation.clears {
            next.fields.remove(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use serde_json::json;
    use usm_model::{Catalog, Domain, Kind, RecordId, Role, State, Writer};

    use super::*;

    fn record(kind: &str, fields: Value, by: &str) -> Record {
        let catalog = Catalog::core();
        let def = catalog.get(&Kind::new(kind).unwrap()).unwrap();
        Record {
            id: RecordId::from_parts(&def.prefix, 1),
            kind: def.name.clone(),
            process: def.process,
            domain: Domain::default(),
            state: def.lifecycle.initial().clone(),
            title: "t".into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
            links: vec![],
            version: 1,
            created_at: Timestamp::now(),
            created_by: by.into(),
            updated_at: Timestamp::now(),
            updated_by: by.into(),
        }
    }

    fn def(kind: &str) -> KindDef {
        Catalog::core()
            .get(&Kind::new(kind).unwrap())
            .unwrap()
            .clone()
    }

    fn create(def: &KindDef, actor: &Actor, fields: Value) -> Result<(), EngineError> {
        let write = ClientWrite {
            actor,
            before: None,
            domain_admin: false,
        };
        check_client(def, &write, fields.as_object().unwrap())
    }

    #[test]
    fn requesters_set_only_what_they_may_tell() {
        let incident = def("incident");
        let rob = Actor::new("rob", [Role::Requester]);
        assert!(
            create(
                &incident,
                &rob,
                json!({"impact": "high", "description": "x"})
            )
            .is_ok()
        );
        assert!(create(&incident, &rob, json!({"requester": "rob"})).is_ok());
        for field in ["assignee", "resolution", "customer_confirmed", "requester"] {
            let value = if field == "customer_confirmed" {
                json!(true)
            } else {
                json!("ann")
            };
            match create(&incident, &rob, json!({ field: value })) {
                Err(EngineError::FieldNotWritable { field: pointer, .. }) => {
                    assert_eq!(pointer, format!("/fields/{field}"));
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        // An agent names the person a record is for; only a domain admin corrects it later.
        let ann = Actor::new("ann", [Role::Agent]);
        assert!(create(&incident, &ann, json!({"requester": "rob"})).is_ok());
        let before = json!({"requester": "rob"});
        let after = json!({"requester": "ann"});
        let mut update = ClientWrite {
            actor: &ann,
            before: before.as_object(),
            domain_admin: false,
        };
        assert!(check_client(&incident, &update, after.as_object().unwrap()).is_err());
        update.domain_admin = true;
        assert!(check_client(&incident, &update, after.as_object().unwrap()).is_ok());
    }

    #[test]
    fn owned_fields_are_written_by_their_module_alone() {
        let mut incident = def("incident");
        incident
            .writers
            .insert("priority".into(), Writer::Module("itil4".into()));
        let ann = Actor::new("ann", [Role::Agent, Role::Admin]);
        match create(&incident, &ann, json!({"priority": "P1"})) {
            Err(EngineError::FieldNotWritable { owner, .. }) => {
                assert_eq!(owner, Writer::Module("itil4".into()));
            }
            other => panic!("{other:?}"),
        }
        let none = Map::new();
        let patched = json!({"priority": "P2"});
        let patched = patched.as_object().unwrap();
        assert!(check_step(&incident, "itil4", &none, patched).is_ok());
        assert!(check_step(&incident, "triage", &none, patched).is_err());
        // Removing a field is writing it.
        assert!(check_step(&incident, "triage", patched, &none).is_err());
        let effects = Actor::new("module:itil4", [Role::Automation]);
        assert!(create(&incident, &effects, json!({"priority": "P1"})).is_ok());
    }

    #[test]
    fn the_digest_follows_material_fields_only() {
        let mut change = def("change");
        let plain = record("change", json!({"risk": "low", "assignee": "ann"}), "rob");
        assert_eq!(material_digest(&change, &plain), None);
        change.material = vec!["title".into(), "risk".into(), "plan".into()];
        let digest = material_digest(&change, &plain);
        let mut reassigned = plain.clone();
        reassigned.fields.insert("assignee".into(), json!("bo"));
        assert_eq!(material_digest(&change, &reassigned), digest);
        let mut riskier = plain.clone();
        riskier.fields.insert("risk".into(), json!("high"));
        assert_ne!(material_digest(&change, &riskier), digest);
        let mut retitled = plain;
        retitled.title = "another".into();
        assert_ne!(material_digest(&change, &retitled), digest);
    }

    #[test]
    fn entering_implement_records_the_implementer_and_reopening_clears_the_resolution() {
        let change = def("change");
        let ivy = Actor::new("ivy", [Role::Agent]);
        let current = record("change", json!({}), "rob");
        let mut next = current.clone();
        next.state = State::new("implement").unwrap();
        on_transition(&change, &ivy, &current, &mut next);
        assert_eq!(next.fields["implementer"], "ivy");

        let incident = def("incident");
        let mut resolved = record(
            "incident",
            json!({"resolution": "rebooted", "customer_confirmed": true, "impact": "low"}),
            "rob",
        );
        resolved.state = State::new("resolved").unwrap();
        let mut reopened = resolved.clone();
        reopened.state = State::new("in_progress").unwrap();
        on_transition(&incident, &ivy, &resolved, &mut reopened);
        assert_eq!(
            reopened.fields,
            *json!({"impact": "low"}).as_object().unwrap()
        );
        let mut closed = resolved.clone();
        closed.state = State::new("closed").unwrap();
        on_transition(&incident, &ivy, &resolved, &mut closed);
        assert_eq!(closed.fields, resolved.fields);
    }
}
