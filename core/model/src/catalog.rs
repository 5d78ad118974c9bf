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
    /// Who writes each field; a field not named is written by agents.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub writers: BTreeMap<String, Writer>,
    /// The fields (and `title`) an approval is bound to: changing one after an approval makes
    /// the approval stale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub material: Vec<String>,
    /// State → field: the principal who moves a record into the state is recorded in the field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub actor_fields: BTreeMap<State, String>,
    /// How the requester confirms or rejects a resolution, for kinds that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<Confirmation>,
}

/// Who may write a field: the policy a client's write (or a step's patch) is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Writer {
    /// Requesters may set it when they create a record; agents may write it any time.
    Requester,
    /// Agents, automations and admins.
    Agent,
    /// Only the steps of the named module (an owned field).
    Module(String),
    /// Only the engine: identities, stamps and computed values.
    System,
}

impl Writer {
    /// Whether a client (not a step) acting as `actor` may write the field, `creating` a record
    /// or changing one.
    pub fn admits_client(&self, actor: &crate::Actor, creating: bool) -> bool {
        match self {
            Self::Requester => creating || actor.works_records(),
            Self::Agent => actor.works_records(),
            Self::Module(_) | Self::System => false,
        }
    }

    /// Whether a step of `module` may write the field: steps work records, so everything but
    /// another module's fields and the engine's own.
    pub fn admits_module(&self, module: &str) -> bool {
        match self {
            Self::Requester | Self::Agent => true,
            Self::Module(owner) => owner == module,
            Self::System => false,
        }
    }
}

impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requester => f.write_str("requester"),
            Self::Agent => f.write_str("agent"),
            Self::Module(id) => write!(f, "module:{id}"),
            Self::System => f.write_str("system"),
        }
    }
}

impl From<Writer> for String {
    fn from(writer: Writer) -> Self {
        writer.to_string()
    }
}

impl TryFrom<String> for Writer {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "requester" => Ok(Self::Requester),
            "agent" => Ok(Self::Agent),
            "system" => Ok(Self::System),
            _ => match text.strip_prefix("module:") {
                Some(id) if !id.is_empty() => Ok(Self::Module(id.to_owned())),
                _ => Err(format!(
                    "writer {text:?}: requester, agent, module:<id> or system"
                )),
            },
        }
    }
}

/// The requester's answer to a resolution: from `state`, accepting moves the record to
/// `accept`, rejecting to `reject`; leaving `state` other than by accepting clears `clears`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Confirmation {
    /// The resolved state the requester answers in, e.g. `resolved`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: State,
    /// Where accepting leads, e.g. `closed`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub accept: State,
    /// Where rejecting leads, e.g. `in_progress`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub reject: State,
    /// Resolution data a reopening clears.
    pub clears: Vec<String>,
}

impl KindDef {
    /// Who writes `field`.
    pub fn writer(&self, field: &str) -> &Writer {
        self.writers.get(field).unwrap_or(&Writer::Agent)
    }

    /// Whether `field` may be written at all: the schema names it, or leaves its members open
    /// (`additionalProperties` other than `false`). Everything else is a misspelling or a field
    /// no module declared, refused rather than stored silently.
    pub fn declares(&self, field: &str) -> bool {
        let declared = self
            .schema
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|properties| properties.contains_key(field));
        let open = self
            .schema
            .get("additionalProperties")
            .is_some_and(|extra| extra != &Value::Bool(false));
        declared || open
    }
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
    /// An addition names a kind the catalog does not have.
    #[error("kind {0} is not in the catalog")]
    UnknownKind(Kind),
    /// A field is already typed differently (by the core or another module).
    #[error("field {field} of kind {kind} is already defined with another schema")]
    FieldConflict {
        /// The kind.
        kind: Kind,
        /// The field's name.
        field: String,
    },
    /// A state the kind's lifecycle already has.
    #[error("kind {kind} already has a state {state}")]
    StateExists {
        /// The kind.
        kind: Kind,
        /// The state.
        state: State,
    },
    /// Added states may not be initial (a lifecycle has exactly one) and added transitions must
    /// lead into or out of the added state, so a module never rewires the states it did not add.
    #[error("kind {kind}: {detail}")]
    BadStateAddition {
        /// The kind.
        kind: Kind,
        /// What is wrong.
        detail: String,
    },
    /// A field another module (or the engine) already owns.
    #[error("field {field} of kind {kind} is already written only by {owner}")]
    FieldOwned {
        /// The kind.
        kind: Kind,
        /// The field's name.
        field: String,
        /// Who writes it.
        owner: Writer,
    },
    /// An addition of one module failed.
    #[error("module {module}: {source}")]
    Module {
        /// The module's id.
        module: String,
        /// What failed.
        source: Box<CatalogError>,
    },
}

/// A lifecycle state a module adds to an existing kind, with the transitions into and out of it.
#[derive(Debug, Clone)]
pub struct StateAddition {
    /// The kind whose lifecycle grows.
    pub kind: Kind,
    /// The new state (`active` or `inactive`).
    pub state: StateDef,
    /// Transitions, each from or to the new state.
    pub transitions: Vec<TransitionDef>,
}

/// What one module adds to the catalog: whole kinds, typed fields on kinds, lifecycle states.
#[derive(Debug, Clone, Default)]
pub struct CatalogAdditions {
    /// New kinds.
    pub kinds: Vec<KindDef>,
    /// Field properties (name → JSON Schema) added to a kind's schema.
    pub fields: Vec<(Kind, Map<String, Value>)>,
    /// States added to kinds' lifecycles.
    pub states: Vec<StateAddition>,
    /// Write policies and material fields the module sets on kinds.
    pub policies: Vec<FieldPolicies>,
}

/// What a module says about a kind's fields: which it owns (only its steps write them), which
/// requesters may set at create, which an approval is bound to.
#[derive(Debug, Clone)]
pub struct FieldPolicies {
    /// The kind.
    pub kind: Kind,
    /// Fields only the module's steps write.
    pub owns: Vec<String>,
    /// Fields requesters may set when they create a record.
    pub requester: Vec<String>,
    /// Fields (or `title`) approvals are bound to.
    pub material: Vec<String>,
}

impl CatalogAdditions {
    /// Whether the module adds nothing.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
            && self.fields.is_empty()
            && self.states.is_empty()
            && self.policies.is_empty()
    }
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
    /// Modules that added the kind or extended it.
    contributors: Vec<String>,
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
            kinds.insert(
                def.name.clone(),
                CompiledKind {
                    def,
                    validator,
                    contributors: Vec::new(),
                },
            );
        }
        Ok(Self { kinds })
    }

    /// Builds the catalog of `base` plus what each module adds, modules in the order given.
    /// Kinds are added first, so a module may extend a kind another module adds. Additions only
    /// add: a field typed twice must have the same schema, a state must be new.
    pub fn compose<'a>(
        base: impl IntoIterator<Item = KindDef>,
        modules: impl IntoIterator<Item = (&'a str, &'a CatalogAdditions)>,
    ) -> Result<Self, CatalogError> {
        let modules: Vec<(&str, &CatalogAdditions)> = modules.into_iter().collect();
        let mut defs: BTreeMap<Kind, (KindDef, Vec<String>)> = base
            .into_iter()
            .map(|def| (def.name.clone(), (def, Vec::new())))
            .collect();
        let in_module = |module: &str, error: CatalogError| CatalogError::Module {
            module: module.to_owned(),
            source: Box::new(error),
        };
        for (module, additions) in &modules {
            for def in &additions.kinds {
                if defs.contains_key(&def.name) {
                    return Err(in_module(
                        module,
                        CatalogError::DuplicateKind(def.name.clone()),
                    ));
                }
                defs.insert(def.name.clone(), (def.clone(), vec![(*module).to_owned()]));
            }
        }
        for (module, additions) in &modules {
            let fail = |error| in_module(module, error);
            for (kind, properties) in &additions.fields {
                let (def, contributors) = defs
                    .get_mut(kind)
                    .ok_or_else(|| fail(CatalogError::UnknownKind(kind.clone())))?;
                add_properties(def, properties).map_err(fail)?;
                if !contributors.iter().any(|c| c == module) {
                    contributors.push((*module).to_owned());
                }
            }
            for addition in &additions.states {
                let (def, contributors) = defs
                    .get_mut(&addition.kind)
                    .ok_or_else(|| fail(CatalogError::UnknownKind(addition.kind.clone())))?;
                add_state(def, addition).map_err(fail)?;
                if !contributors.iter().any(|c| c == module) {
                    contributors.push((*module).to_owned());
                }
            }
            for policies in &additions.policies {
                let (def, contributors) = defs
                    .get_mut(&policies.kind)
                    .ok_or_else(|| fail(CatalogError::UnknownKind(policies.kind.clone())))?;
                add_policies(def, module, policies).map_err(fail)?;
                if !contributors.iter().any(|c| c == module) {
                    contributors.push((*module).to_owned());
                }
            }
        }
        let mut contributors: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
        let mut plain = Vec::with_capacity(defs.len());
        for (name, (def, by)) in defs {
            contributors.insert(name, by);
            plain.push(def);
        }
        let mut catalog = Self::new(plain)?;
        for (name, compiled) in &mut catalog.kinds {
            compiled.contributors = contributors.remove(name).unwrap_or_default();
        }
        Ok(catalog)
    }

    /// The modules that added `kind` or extended it, by id.
    pub fn contributors(&self, kind: &Kind) -> &[String] {
        self.kinds
            .get(kind)
            .map_or(&[], |k| k.contributors.as_slice())
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

fn add_properties(def: &mut KindDef, properties: &Map<String, Value>) -> Result<(), CatalogError> {
    let Some(Value::Object(existing)) = def
        .schema
        .as_object_mut()
        .map(|schema| schema.entry("properties").or_insert_with(|| json!({})))
    else {
        return Err(CatalogError::BadSchema(
            def.name.clone(),
            "`properties` must be an object".into(),
        ));
    };
    for (field, schema) in properties {
        match existing.get(field) {
            Some(current) if current != schema => {
                return Err(CatalogError::FieldConflict {
                    kind: def.name.clone(),
                    field: field.clone(),
                });
            }
            Some(_) => {}
            None => {
                existing.insert(field.clone(), schema.clone());
            }
        }
    }
    Ok(())
}

fn add_policies(
    def: &mut KindDef,
    module: &str,
    policies: &FieldPolicies,
) -> Result<(), CatalogError> {
    let kind = def.name.clone();
    let owned = |field: &String, owner: &Writer| CatalogError::FieldOwned {
        kind: kind.clone(),
        field: field.clone(),
        owner: owner.clone(),
    };
    for field in &policies.owns {
        match def.writer(field).clone() {
            Writer::Module(owner) if owner == module => {}
            owner @ (Writer::Module(_) | Writer::System) => return Err(owned(field, &owner)),
            Writer::Requester | Writer::Agent => {
                def.writers
                    .insert(field.clone(), Writer::Module(module.to_owned()));
            }
        }
    }
    for field in &policies.requester {
        match def.writer(field).clone() {
            Writer::Requester => {}
            Writer::Agent => {
                def.writers.insert(field.clone(), Writer::Requester);
            }
            owner => return Err(owned(field, &owner)),
        }
    }
    for field in &policies.material {
        if !def.material.contains(field) {
            def.material.push(field.clone());
        }
    }
    Ok(())
}

fn add_state(def: &mut KindDef, addition: &StateAddition) -> Result<(), CatalogError> {
    let state = &addition.state.name;
    let bad = |detail: String| CatalogError::BadStateAddition {
        kind: def.name.clone(),
        detail,
    };
    if addition.state.category == StateCategory::Initial {
        return Err(bad(format!(
            "added state {state} cannot be initial; the kind has one"
        )));
    }
    if def.lifecycle.state(state).is_some() {
        return Err(CatalogError::StateExists {
            kind: def.name.clone(),
            state: state.clone(),
        });
    }
    if let Some(t) = addition
        .transitions
        .iter()
        .find(|t| &t.from != state && &t.to != state)
    {
        return Err(bad(format!(
            "transition {} -> {} must lead into or out of the added state {state}",
            t.from, t.to
        )));
    }
    let mut states = def.lifecycle.states().to_vec();
    states.push(addition.state.clone());
    let mut transitions = def.lifecycle.transitions().to_vec();
    transitions.extend(addition.transitions.iter().cloned());
    def.lifecycle = Lifecycle::new(states, transitions)
        .map_err(|e| CatalogError::Lifecycle(def.name.clone(), e))?;
    Ok(())
}

/// The roles that work records: who may take a transition when none are named.
pub const WORKERS: &[Role] = &[Role::Agent, Role::Automation];
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
        // People (directory ids) who hear of the record as its notification rules say.
        "watchers": {"type": "array", "items": text(200), "maxItems": 50, "uniqueItems": true},
        // Why a record waits, while it is on hold; `awaiting_customer` ends with their reply.
        "hold_reason": text(100),
        // Written by the engine as files are attached and removed.
        "attachments": {"type": "array", "items": {"type": "object"}},
        // The integrator's own data, which no module reads: every other field must be declared.
        "extra": {"type": "object", "maxProperties": 100},
    }) else {
        unreachable!("a json! object literal is an object")
    };
    map
}

/// The field schema of a kind with `properties` of its own besides the members every kind has.
pub fn kind_schema(properties: Map<String, Value>) -> Value {
    let mut all = common_properties();
    all.extend(properties);
    json!({"type": "object", "properties": all})
}

fn schema(properties: Value) -> Value {
    match properties {
        Value::Object(own) => kind_schema(own),
        _ => kind_schema(Map::new()),
    }
}

fn kind_def(
    name: &str,
    prefix: &str,
    process: Process,
    properties: Value,
    lifecycle: Lifecycle,
) -> KindDef {
    // What a requester tells when asking for something; the rest is agents' work or the
    // engine's (who the requester is).
    let mut writers: BTreeMap<String, Writer> =
        ["description", "category", "service", "tags", "extra"]
            .into_iter()
            .map(|field| (field.to_owned(), Writer::Requester))
            .collect();
    writers.insert("requester".into(), Writer::System);
    writers.insert("attachments".into(), Writer::System);
    KindDef {
        name: Kind::new(name).unwrap_or_else(|e| panic!("built-in kind {name}: {e}")),
        prefix: prefix.to_owned(),
        process,
        schema: schema(properties),
        lifecycle,
        writers,
        material: Vec::new(),
        actor_fields: BTreeMap::new(),
        confirmation: None,
    }
}

impl KindDef {
    fn with_writers(mut self, writer: Writer, fields: &[&str]) -> Self {
        for field in fields {
            self.writers.insert((*field).to_owned(), writer.clone());
        }
        self
    }

    fn with_actor_field(mut self, entered: &str, field: &str) -> Self {
        self.actor_fields.insert(state(entered), field.to_owned());
        self
    }

    fn with_confirmation(mut self, resolved: &str, clears: &[&str]) -> Self {
        self.confirmation = Some(Confirmation {
            state: state(resolved),
            accept: state("closed"),
            reject: state("in_progress"),
            clears: clears.iter().map(|f| (*f).to_owned()).collect(),
        });
        self
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
                                   "resolution_minutes": {"type": "number", "exclusiveMinimum": 0},
                                   "around_the_clock": {"type": "boolean"}},
                    "additionalProperties": false}},
                "calendar": {"type": "object"},
                "pause_states": {"type": "array", "items": {"type": "string"}},
                // Hold reasons for which on_hold stops the clocks ("*": every hold).
                "pause_reasons": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 100}},
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
        )
        .with_writers(Writer::Requester, &["wish_type"]),
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
                "plan": text(20_000),
                "backout_plan": text(20_000),
                "outcome": {"type": "string", "enum": ["successful", "failed", "partially_successful"]},
                "review": text(20_000),
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
        )
        .with_writers(Writer::System, &["implementer"])
        .with_actor_field("implement", "implementer"),
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
                    ("in_progress", "cancelled", WORKERS),
                    ("on_hold", "in_progress", WORKERS),
                    ("on_hold", "resolved", WORKERS),
                    ("on_hold", "cancelled", WORKERS),
                    ("in_progress", "resolved", WORKERS),
                    ("resolved", "closed", WORKERS),
                    ("resolved", "in_progress", WORKERS),
                    ("resolved", "cancelled", WORKERS),
                ],
            ),
        )
        .with_writers(Writer::Requester, &["impact", "urgency"])
        .with_writers(Writer::System, &["customer_confirmed"])
        .with_confirmation(
            "resolved",
            &["resolution", "resolution_code", "customer_confirmed"],
        ),
        kind_def(
            "request",
            "REQ",
            Process::Operate,
            json!({"request_type": text(100), "due": date, "customer_confirmed": {"type": "boolean"},
                   "resolution_code": text(100), "resolution": text(20_000),
                   "catalog_item": text(200),
                   "variables": {"type": "object"},
                   "approvers": {"type": "array", "maxItems": 20, "items": text(200)},
                   "fulfilment": {"type": "array", "maxItems": 20, "items": {
                       "type": "object",
                       "required": ["title", "domain"],
                       "properties": {
                           "title": text(200), "domain": text(64), "group": text(64),
                           "after": {"type": "array", "maxItems": 20,
                                     "items": {"type": "integer", "minimum": 0, "maximum": 19}}},
                       "additionalProperties": false}}}),
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
                    ("in_progress", "cancelled", WORKERS),
                    ("on_hold", "in_progress", WORKERS),
                    ("on_hold", "fulfilled", WORKERS),
                    ("on_hold", "cancelled", WORKERS),
                    ("in_progress", "fulfilled", WORKERS),
                    ("fulfilled", "closed", WORKERS),
                    ("fulfilled", "in_progress", WORKERS),
                    ("fulfilled", "cancelled", WORKERS),
                ],
            ),
        )
        .with_writers(Writer::Requester, &["request_type", "due"])
        .with_writers(
            Writer::System,
            &[
                "customer_confirmed",
                "catalog_item",
                "variables",
                "approvers",
                "fulfilment",
            ],
        )
        .with_confirmation(
            "fulfilled",
            &["resolution", "resolution_code", "customer_confirmed"],
        ),
        kind_def(
            "task",
            "TSK",
            Process::Operate,
            json!({"due": datetime, "team": text(200),
                   "catalog_step": {"type": "integer", "minimum": 0, "maximum": 19}}),
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
        )
        .with_writers(Writer::System, &["catalog_step"]),
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
                    ("in_progress", "cancelled", WORKERS),
                ],
            ),
        ),
        kind_def(
            "problem",
            "PRB",
            Process::Improve,
            json!({"root_cause": text(20_000), "workaround": text(20_000)}),
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
                    ("investigate", "cancelled", WORKERS),
                    ("known_error", "resolved", WORKERS),
                    ("known_error", "cancelled", WORKERS),
                    ("resolved", "closed", WORKERS),
                    ("resolved", "investigate", WORKERS),
                    ("resolved", "cancelled", WORKERS),
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

    fn risk_kind() -> KindDef {
        KindDef {
            name: kind("risk"),
            prefix: "RSK".into(),
            process: Process::Improve,
            schema: kind_schema(
                json!({"likelihood": {"type": "integer", "minimum": 1, "maximum": 5}})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
            lifecycle: lifecycle(
                &[
                    ("identified", StateCategory::Initial),
                    ("closed", StateCategory::Inactive),
                ],
                &[("identified", "closed", WORKERS)],
            ),
            writers: BTreeMap::new(),
            material: Vec::new(),
            actor_fields: BTreeMap::new(),
            confirmation: None,
        }
    }

    fn scheduled_change() -> StateAddition {
        StateAddition {
            kind: kind("change"),
            state: StateDef {
                name: state("scheduled"),
                category: StateCategory::Active,
            },
            transitions: vec![
                TransitionDef {
                    from: state("assess"),
                    to: state("scheduled"),
                    roles: WORKERS.to_vec(),
                },
                TransitionDef {
                    from: state("scheduled"),
                    to: state("implement"),
                    roles: WORKERS.to_vec(),
                },
            ],
        }
    }

    #[test]
    fn modules_add_kinds_fields_and_states() {
        let risk = CatalogAdditions {
            kinds: vec![risk_kind()],
            fields: vec![(
                kind("incident"),
                json!({"building": {"type": "string", "maxLength": 10}})
                    .as_object()
                    .cloned()
                    .unwrap(),
            )],
            states: vec![scheduled_change()],
            policies: Vec::new(),
        };
        // A second module extends the kind the first adds.
        let score = CatalogAdditions {
            fields: vec![(
                kind("risk"),
                json!({"score": {"type": "integer"}})
                    .as_object()
                    .cloned()
                    .unwrap(),
            )],
            ..CatalogAdditions::default()
        };
        let catalog = Catalog::compose(core_kinds(), [("score", &score), ("risk", &risk)]).unwrap();
        assert_eq!(catalog.kinds().count(), 11);
        assert_eq!(catalog.by_prefix("RSK").unwrap().name, kind("risk"));
        assert_eq!(catalog.contributors(&kind("risk")), ["risk", "score"]);
        assert_eq!(catalog.contributors(&kind("incident")), ["risk"]);
        assert!(catalog.contributors(&kind("task")).is_empty());
        assert!(
            catalog
                .validate_fields(&kind("risk"), &json!({"likelihood": 9}))
                .is_err()
        );
        assert!(
            catalog
                .validate_fields(&kind("risk"), &json!({"score": "high"}))
                .is_err()
        );
        assert!(
            catalog
                .validate_fields(
                    &kind("incident"),
                    &json!({"building": "far too long a name"})
                )
                .is_err()
        );
        let change = &catalog.get(&kind("change")).unwrap().lifecycle;
        let agent = Actor::new("ann", [Role::Agent]);
        assert!(
            change
                .check(&state("assess"), &state("scheduled"), &agent)
                .is_ok()
        );
        assert!(
            change
                .check(&state("scheduled"), &state("implement"), &agent)
                .is_ok()
        );
        // The core's own transitions stay.
        assert!(
            change
                .check(&state("assess"), &state("implement"), &agent)
                .is_ok()
        );
    }

    #[test]
    fn additions_never_redefine() {
        let compose = |additions: CatalogAdditions| {
            Catalog::compose(core_kinds(), [("m", &additions)]).map(|_| ())
        };
        let twice = CatalogAdditions {
            kinds: vec![KindDef {
                name: kind("incident"),
                ..risk_kind()
            }],
            ..CatalogAdditions::default()
        };
        assert!(matches!(
            compose(twice),
            Err(CatalogError::Module { ref module, ref source })
                if module == "m" && matches!(**source, CatalogError::DuplicateKind(_))
        ));
        let same_prefix = CatalogAdditions {
            kinds: vec![KindDef {
                prefix: "INC".into(),
                ..risk_kind()
            }],
            ..CatalogAdditions::default()
        };
        assert!(matches!(
            compose(same_prefix),
            Err(CatalogError::DuplicatePrefix(..))
        ));
        let retyped = CatalogAdditions {
            fields: vec![(
                kind("incident"),
                json!({"impact": {"type": "integer"}})
                    .as_object()
                    .cloned()
                    .unwrap(),
            )],
            ..CatalogAdditions::default()
        };
        let error = compose(retyped).unwrap_err().to_string();
        assert!(error.contains("field impact of kind incident"), "{error}");
        let unknown = CatalogAdditions {
            fields: vec![(kind("asset"), Map::new())],
            ..CatalogAdditions::default()
        };
        assert!(compose(unknown).unwrap_err().to_string().contains("asset"));
        let existing_state = CatalogAdditions {
            states: vec![StateAddition {
                state: StateDef {
                    name: state("implement"),
                    category: StateCategory::Active,
                },
                transitions: Vec::new(),
                ..scheduled_change()
            }],
            ..CatalogAdditions::default()
        };
        assert!(compose(existing_state).is_err());
        let mut rewiring = scheduled_change();
        rewiring.transitions.push(TransitionDef {
            from: state("new"),
            to: state("closed"),
            roles: WORKERS.to_vec(),
        });
        let error = compose(CatalogAdditions {
            states: vec![rewiring],
            ..CatalogAdditions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("must lead into or out of"), "{error}");
        let mut initial = scheduled_change();
        initial.state.category = StateCategory::Initial;
        assert!(
            compose(CatalogAdditions {
                states: vec![initial],
                ..CatalogAdditions::default()
            })
            .is_err()
        );
    }
    fn owns(kind_name: &str, fields: &[&str]) -> CatalogAdditions {
        CatalogAdditions {
            policies: vec![FieldPolicies {
                kind: kind(kind_name),
                owns: fields.iter().map(|f| (*f).to_owned()).collect(),
                requester: Vec::new(),
                material: vec!["title".into()],
            }],
            ..CatalogAdditions::default()
        }
    }

    #[test]
    fn a_field_has_one_owner() {
        let itil = owns("incident", &["priority"]);
        let catalog = Catalog::compose(core_kinds(), [("itil4", &itil)]).unwrap();
        let incident = catalog.get(&kind("incident")).unwrap();
        assert_eq!(incident.writer("priority"), &Writer::Module("itil4".into()));
        assert_eq!(incident.writer("impact"), &Writer::Requester);
        assert_eq!(incident.writer("anything"), &Writer::Agent);
        assert_eq!(incident.material, ["title"]);
        assert_eq!(catalog.contributors(&kind("incident")), ["itil4"]);
        // A second owner, or an owner of what the engine derives, is refused.
        let other = owns("incident", &["priority"]);
        let error = Catalog::compose(core_kinds(), [("itil4", &itil), ("mine", &other)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("written only by module:itil4"), "{error}");
        let identity = owns("incident", &["requester"]);
        let error = Catalog::compose(core_kinds(), [("mine", &identity)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("written only by system"), "{error}");
        // Writers round-trip through their names.
        for text in ["requester", "agent", "system", "module:itil4"] {
            let writer = Writer::try_from(text.to_owned()).unwrap();
            assert_eq!(writer.to_string(), text);
        }
        assert!(Writer::try_from("module:".to_owned()).is_err());
        assert!(Writer::try_from("root".to_owned()).is_err());
    }
}
