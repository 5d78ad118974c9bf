use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    Kind, Lifecycle, LifecycleError, Process, Role, State, StateCategory, StateDef, TransitionDef,
};

/// The definition of a record kind: its id prefix, process, field schema and lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KindDef {
    /// The kind's name, e.g. `incident`.
    pub name: Kind,
    /// Id prefix, 2–6 uppercase letters, e.g. `INC`.
    pub prefix: String,
    /// The USM process the kind belongs to.
    pub process: Process,
    /// JSON Schema (draft 2020-12) for the record's `fields`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub schema: Value,
    /// The kind's state machine.
    pub lifecycle: Lifecycle,
}

/// Why a catalog could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Two kinds share a name.
    #[error("kind {0} is defined twice")]
    DuplicateKind(Kind),
    /// Two kinds share an id prefix.
    #[error("kinds {0} and {1} share the id prefix {2}")]
    DuplicatePrefix(Kind, Kind, String),
    /// The prefix is not 2–6 uppercase letters.
    #[error("kind {0}: id prefix {1:?} must be 2 to 6 uppercase letters")]
    BadPrefix(Kind, String),
    /// The schema is not a valid JSON Schema or does not describe an object.
    #[error("kind {0}: invalid field schema: {1}")]
    BadSchema(Kind, String),
    /// The lifecycle is malformed.
    #[error("kind {0}: {1}")]
    Lifecycle(Kind, LifecycleError),
}

/// A schema violation in a record's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// JSON pointer to the offending value, e.g. `/fields/impact`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

struct CompiledKind {
    def: KindDef,
    validator: jsonschema::Validator,
}

/// The set of record kinds the server knows, with their schemas compiled once.
pub struct Catalog {
    kinds: BTreeMap<Kind, CompiledKind>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

/// At most this many schema violations are reported for one write.
const MAX_FIELD_ERRORS: usize = 10;

impl Catalog {
    /// Builds a catalog, compiling each kind's schema and checking names, prefixes and lifecycles.
    pub fn new(defs: impl IntoIterator<Item = KindDef>) -> Result<Self, CatalogError> {
        let mut kinds: BTreeMap<Kind, CompiledKind> = BTreeMap::new();
        for def in defs {
            let prefix_ok = (2..=6).contains(&def.prefix.len())
                && def.prefix.bytes().all(|b| b.is_ascii_uppercase());
            if !prefix_ok {
                return Err(CatalogError::BadPrefix(
                    def.name.clone(),
                    def.prefix.clone(),
                ));
            }
            if kinds.contains_key(&def.name) {
                return Err(CatalogError::DuplicateKind(def.name.clone()));
            }
            if let Some(other) = kinds.values().find(|k| k.def.prefix == def.prefix) {
                return Err(CatalogError::DuplicatePrefix(
                    other.def.name.clone(),
                    def.name.clone(),
                    def.prefix.clone(),
                ));
            }
            if def.schema.get("type") != Some(&Value::from("object")) {
                return Err(CatalogError::BadSchema(
                    def.name.clone(),
                    "the root must be {\"type\": \"object\", …}".into(),
                ));
            }
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&def.schema)
                .map_err(|e| CatalogError::BadSchema(def.name.clone(), e.to_string()))?;
            kinds.insert(def.name.clone(), CompiledKind { def, validator });
        }
        Ok(Self { kinds })
    }

    /// The catalog of the USM core kinds.
    pub fn core() -> Self {
        Self::new(core_kinds())
            .unwrap_or_else(|e| panic!("the built-in core kinds are invalid: {e}"))
    }

    /// The definition of `kind`.
    pub fn get(&self, kind: &Kind) -> Option<&KindDef> {
        self.kinds.get(kind).map(|k| &k.def)
    }

    /// The kind whose ids start with `prefix`.
    pub fn by_prefix(&self, prefix: &str) -> Option<&KindDef> {
        self.kinds
            .values()
            .map(|k| &k.def)
            .find(|d| d.prefix == prefix)
    }

    /// All kinds, by name.
    pub fn kinds(&self) -> impl Iterator<Item = &KindDef> {
        self.kinds.values().map(|k| &k.def)
    }

    /// Validates a record's `fields` (an object) against the kind's schema.
    pub fn validate_fields(&self, kind: &Kind, fields: &Value) -> Result<(), Vec<FieldError>> {
        let Some(compiled) = self.kinds.get(kind) else {
            return Err(vec![FieldError {
                field: "/kind".into(),
                message: format!("unknown kind {kind}"),
            }]);
        };
        let errors: Vec<FieldError> = compiled
            .validator
            .iter_errors(fields)
            .take(MAX_FIELD_ERRORS)
            .map(|error| FieldError {
                field: format!("/fields{}", error.instance_path()),
                message: error.to_string(),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

const WORKERS: &[Role] = &[Role::Agent, Role::Automation];
const ANYONE: &[Role] = &[Role::Agent, Role::Automation, Role::Requester];

fn state(name: &str) -> State {
    State::new(name).unwrap_or_else(|e| panic!("built-in state {name}: {e}"))
}

fn lifecycle(states: &[(&str, StateCategory)], transitions: &[(&str, &str, &[Role])]) -> Lifecycle {
    let states = states
        .iter()
        .map(|(name, category)| StateDef {
            name: state(name),
            category: *category,
        })
        .collect();
    let transitions = transitions
        .iter()
        .map(|(from, to, roles)| TransitionDef {
            from: state(from),
            to: state(to),
            roles: roles.to_vec(),
        })
        .collect();
    Lifecycle::new(states, transitions).unwrap_or_else(|e| panic!("built-in lifecycle: {e}"))
}

/// Members every kind accepts, merged into each kind's own properties.
fn common_properties() -> Map<String, Value> {
    let text = |max: u64| json!({"type": "string", "maxLength": max});
    let Value::Object(map) = json!({
        "description": text(20_000),
        "category": text(200),
        "assignee": text(200),
        "assignment_group": text(200),
        "requester": text(200),
        "service": text(200),
        "tags": {"type": "array", "items": text(100), "maxItems": 50, "uniqueItems": true},
    }) else {
        unreachable!("a json! object literal is an object")
    };
    map
}

fn schema(properties: Value) -> Value {
    let mut all = common_properties();
    if let Value::Object(own) = properties {
        all.extend(own);
    }
    json!({"type": "object", "properties": all})
}

fn kind_def(
    name: &str,
    prefix: &str,
    process: Process,
    properties: Value,
    lifecycle: Lifecycle,
) -> KindDef {
    KindDef {
        name: Kind::new(name).unwrap_or_else(|e| panic!("built-in kind {name}: {e}")),
        prefix: prefix.to_owned(),
        process,
        schema: schema(properties),
        lifecycle,
    }
}

/// The USM core kinds with their default schemas and lifecycles.
pub fn core_kinds() -> Vec<KindDef> {
    use StateCategory::{Active, Inactive, Initial};
    let level = json!({"type": "string", "enum": ["high", "medium", "low"]});
    let text = |max: u64| json!({"type": "string", "maxLength": max});
    let datetime = json!({"type": "string", "format": "date-time"});
    let date = json!({"type": "string", "format": "date"});
    vec![
        kind_def(
            "service",
            "SVC",
            Process::Agree,
            json!({"owner": text(200), "criticality": level}),
            lifecycle(
                &[("draft", Initial), ("live", Active), ("retired", Inactive)],
                &[
                    ("draft", "live", WORKERS),
                    ("live", "retired", WORKERS),
                    ("retired", "live", WORKERS),
                ],
            ),
        ),
        kind_def(
            "agreement",
            "AGR",
            Process::Agree,
            json!({
                "agreement_type": {"type": "string", "enum": ["sla", "ola", "uc"]},
                "customer": text(200),
                "valid_from": date,
                "valid_to": date,
                "targets": {"type": "object", "additionalProperties": {"type": "object",
                    "properties": {"response_minutes": {"type": "number", "exclusiveMinimum": 0},
                                   "resolution_minutes": {"type": "number", "exclusiveMinimum": 0}},
                    "additionalProperties": false}},
                "calendar": {"type": "object"},
                "pause_states": {"type": "array", "items": {"type": "string"}},
                "stop_states": {"type": "array", "items": {"type": "string"}},
                "warning_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "applies_to": {"type": "array", "items": {"type": "string"}},
            }),
            lifecycle(
                &[
                    ("draft", Initial),
                    ("active", Active),
                    ("expired", Inactive),
                    ("terminated", Inactive),
                ],
                &[
                    ("draft", "active", WORKERS),
                    ("draft", "terminated", WORKERS),
                    ("active", "expired", WORKERS),
                    ("active", "terminated", WORKERS),
                ],
            ),
        ),
        kind_def(
            "wish",
            "WSH",
            Process::Agree,
            json!({"wish_type": {"type": "string", "enum": ["new_need", "complaint", "compliment", "question"]}}),
            lifecycle(
                &[
                    ("new", Initial),
                    ("assess", Active),
                    ("accepted", Active),
                    ("declined", Inactive),
                    ("closed", Inactive),
                ],
                &[
                    ("new", "assess", WORKERS),
                    ("new", "declined", WORKERS),
                    ("assess", "accepted", WORKERS),
                    ("assess", "declined", WORKERS),
                    ("accepted", "closed", WORKERS),
                ],
            ),
        ),
        kind_def(
            "change",
            "CHG",
            Process::Change,
            json!({
                "change_type": {"type": "string", "enum": ["standard", "normal", "emergency"]},
                "risk": level,
                "implementer": text(200),
                "planned_start": datetime,
                "planned_end": datetime,
                "backout_plan": text(20_000),
                "outcome": {"type": "string", "enum": ["successful", "failed", "partially_successful"]},
            }),
            lifecycle(
                &[
                    ("new", Initial),
                    ("assess", Active),
                    ("implement", Active),
                    ("review", Active),
                    ("closed", Inactive),
                    ("cancelled", Inactive),
                ],
                &[
                    ("new", "assess", WORKERS),
                    ("new", "implement", WORKERS),
                    ("assess", "implement", WORKERS),
                    ("implement", "review", WORKERS),
                    ("review", "implement", WORKERS),
                    ("review", "closed", WORKERS),
                    ("new", "cancelled", ANYONE),
                    ("assess", "cancelled", WORKERS),
                ],
            ),
        ),
        kind_def(
            "incident",
            "INC",
            Process::Recover,
            json!({
                "impact": level,
                "urgency": level,
                "priority": {"type": "string", "pattern": "^P[1-5]$"},
                "major_incident": {"type": "boolean"},
                "resolution_code": text(100),
                "resolution": text(20_000),
                "customer_confirmed": {"type": "boolean"},
            }),
            lifecycle(
                &[
                    ("new", Initial),
                    ("in_progress", Active),
                    ("on_hold", Active),
                    ("resolved", Active),
                    ("closed", Inactive),
                    ("cancelled", Inactive),
                ],
                &[
                    ("new", "in_progress", WORKERS),
                    ("new", "cancelled", ANYONE),
                    ("in_progress", "on_hold", WORKERS),
                    ("on_hold", "in_progress", WORKERS),
                    ("in_progress", "resolved", WORKERS),
                    ("resolved", "closed", ANYONE),
                    ("resolved", "in_progress", ANYONE),
                ],
            ),
        ),
        kind_def(
            "request",
            "REQ",
            Process::Operate,
            json!({"request_type": text(100), "due": date, "customer_confirmed": {"type": "boolean"},
                   "resolution_code": text(100), "resolution": text(20_000)}),
            lifecycle(
                &[
                    ("new", Initial),
                    ("in_progress", Active),
                    ("on_hold", Active),
                    ("fulfilled", Active),
                    ("closed", Inactive),
                    ("cancelled", Inactive),
                ],
                &[
                    ("new", "in_progress", WORKERS),
                    ("new", "cancelled", ANYONE),
                    ("in_progress", "on_hold", WORKERS),
                    ("on_hold", "in_progress", WORKERS),
                    ("in_progress", "fulfilled", WORKERS),
                    ("fulfilled", "closed", ANYONE),
                    ("fulfilled", "in_progress", ANYONE),
                ],
            ),
        ),
        kind_def(
            "task",
            "TSK",
            Process::Operate,
            json!({"due": datetime, "team": text(200)}),
            lifecycle(
                &[
                    ("new", Initial),
                    ("in_progress", Active),
                    ("on_hold", Active),
                    ("done", Inactive),
                    ("cancelled", Inactive),
                ],
                &[
                    ("new", "in_progress", WORKERS),
                    ("new", "done", WORKERS),
                    ("new", "cancelled", WORKERS),
                    ("in_progress", "on_hold", WORKERS),
                    ("on_hold", "in_progress", WORKERS),
                    ("in_progress", "done", WORKERS),
                    ("in_progress", "cancelled", WORKERS),
                ],
            ),
        ),
        kind_def(
            "improvement",
            "IMP",
            Process::Improve,
            json!({
                "improvement_type": {"type": "string", "enum": ["risk", "improvement"]},
                "risk_level": level,
                "benefit": text(20_000),
                "kpi": text(200),
            }),
            lifecycle(
                &[
                    ("new", Initial),
                    ("planned", Active),
                    ("in_progress", Active),
                    ("done", Inactive),
                    ("cancelled", Inactive),
                ],
                &[
                    ("new", "planned", WORKERS),
                    ("new", "cancelled", WORKERS),
                    ("planned", "in_progress", WORKERS),
                    ("planned", "cancelled", WORKERS),
                    ("in_progress", "done", WORKERS),
                ],
            ),
        ),
        kind_def(
            "problem",
            "PRB",
            Process::Improve,
            json!({"root_cause": text(20_000), "workaround": text(20_000), "known_error": {"type": "boolean"}}),
            lifecycle(
                &[
                    ("new", Initial),
                    ("investigate", Active),
                    ("known_error", Active),
                    ("resolved", Active),
                    ("closed", Inactive),
                    ("cancelled", Inactive),
                ],
                &[
                    ("new", "investigate", WORKERS),
                    ("new", "cancelled", WORKERS),
                    ("investigate", "known_error", WORKERS),
                    ("investigate", "resolved", WORKERS),
                    ("known_error", "resolved", WORKERS),
                    ("resolved", "closed", WORKERS),
                    ("resolved", "investigate", WORKERS),
                ],
            ),
        ),
        kind_def(
            "ci",
            "CI",
            Process::Change,
            json!({"ci_type": text(100), "owner": text(200), "location": text(200), "serial_number": text(100)}),
            lifecycle(
                &[
                    ("planned", Initial),
                    ("operational", Active),
                    ("maintenance", Active),
                    ("retired", Inactive),
                ],
                &[
                    ("planned", "operational", WORKERS),
                    ("operational", "maintenance", WORKERS),
                    ("maintenance", "operational", WORKERS),
                    ("operational", "retired", WORKERS),
                    ("maintenance", "retired", WORKERS),
                ],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Actor;

    fn kind(name: &str) -> Kind {
        Kind::new(name).unwrap()
    }

    #[test]
    fn core_kinds_cover_every_process_with_unique_prefixes() {
        let catalog = Catalog::core();
        assert_eq!(catalog.kinds().count(), 10);
        for process in Process::ALL {
            assert!(
                catalog.kinds().any(|k| k.process == process),
                "{process} has no kind"
            );
        }
        assert_eq!(catalog.by_prefix("INC").unwrap().name, kind("incident"));
    }

    #[test]
    fn schema_violations_name_the_field() {
        let catalog = Catalog::core();
        let errors = catalog
            .validate_fields(
                &kind("incident"),
                &json!({"impact": "huge", "priority": "P9"}),
            )
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"/fields/impact"), "{errors:?}");
        assert!(fields.contains(&"/fields/priority"), "{errors:?}");
        assert!(
            catalog
                .validate_fields(&kind("incident"), &json!({"impact": "high"}))
                .is_ok()
        );
        assert!(
            catalog
                .validate_fields(&kind("change"), &json!({"planned_start": "tomorrow"}))
                .is_err()
        );
    }

    #[test]
    fn incident_lifecycle_allows_reopen_and_lists_allowed_states() {
        let catalog = Catalog::core();
        let lc = &catalog.get(&kind("incident")).unwrap().lifecycle;
        let agent = Actor::new("ann", [Role::Agent]);
        assert_eq!(lc.initial().as_str(), "new");
        assert!(
            lc.check(&state("resolved"), &state("in_progress"), &agent)
                .is_ok()
        );
        match lc.check(&state("new"), &state("closed"), &agent) {
            Err(LifecycleError::Illegal { allowed, .. }) => {
                assert_eq!(allowed, vec![state("in_progress"), state("cancelled")]);
            }
            other => panic!("expected an illegal transition, got {other:?}"),
        }
        let requester = Actor::new("rob", [Role::Requester]);
        assert!(matches!(
            lc.check(&state("new"), &state("in_progress"), &requester),
            Err(LifecycleError::Forbidden { .. })
        ));
    }

    #[test]
    fn malformed_catalogs_are_refused() {
        let mut defs = core_kinds();
        defs[1].prefix = defs[0].prefix.clone();
        assert!(matches!(
            Catalog::new(defs),
            Err(CatalogError::DuplicatePrefix(..))
        ));
        let mut defs = core_kinds();
        defs[0].schema = json!({"type": "object", "properties": {"x": {"type": "nope"}}});
        assert!(matches!(
            Catalog::new(defs),
            Err(CatalogError::BadSchema(..))
        ));
        let lifecycle: Result<Lifecycle, _> = serde_json::from_value(json!({
            "states": [{"name": "a", "category": "initial"}, {"name": "b", "category": "initial"}],
            "transitions": []
        }));
        assert!(lifecycle.is_err());
    }
}
