//! USM-WIF 1.0.0, the SURVUZ Foundation's JSON interchange format for USM workflows ("USM
//! Workflow Interchange Format", a proposal by M. Ahonen, github.com/mikko-ahonen/usm-rfc): a
//! workflow (or workflow template) of steps, each in one of the five USM processes, each made of
//! activities with RACI responsibilities per profile.
//!
//! The format demands a must-ignore policy: a member this module does not know is never an
//! error. It is kept (`extra`, at every level) and written back on export, so a document passes
//! through usm without losing what another system put in it; the request body limit bounds it.
//!
//! The home-made shape usm read before (`{"usm_wif": …, "workflow": {…}}`) is still read, and
//! converted, for one release; export always writes 1.0.0.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use usm_model::Process;

/// The format version this module writes; it reads every 1.x.y (semantic versioning: a minor
/// version only adds members, which the must-ignore policy keeps).
pub const FORMAT_VERSION: &str = "1.0.0";

/// Most steps a workflow, activities a step and profiles a document may have (responsibilities
/// name profiles, so an activity has at most as many).
pub const MAX_ITEMS: usize = 100;

/// Longest workflow name, in characters.
const MAX_NAME: usize = 200;

/// Longest slug and `workflow-version`, in bytes (both are ASCII-only or printable and short).
const MAX_KEY: usize = 64;

/// Members that a document has at every level but this module does not know.
pub type Extra = Map<String, Value>;

/// What a document describes; each has its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DocumentType {
    /// A basis for workflows; the format requires no member of it.
    WorkflowTemplate,
    /// A workflow, e.g. exchanged between a BPM system and a ticketing system.
    Workflow,
}

impl DocumentType {
    /// The media type of documents of this type.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::WorkflowTemplate => "application/x-usm-workflow-template",
            Self::Workflow => "application/x-usm-workflow",
        }
    }

    /// The type a media type (without parameters, lowercase) names, if it names one.
    pub fn from_media_type(essence: &str) -> Option<Self> {
        [Self::WorkflowTemplate, Self::Workflow]
            .into_iter()
            .find(|t| t.media_type() == essence)
    }
}

/// Whether the path through the USM processes is fixed in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Dynamicity {
    /// The path is pre-defined.
    Static,
    /// The path is decided at a fork step.
    Dynamic,
}

/// A RACI role of a profile in an activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Raci {
    /// Responsible.
    R,
    /// Accountable.
    A,
    /// Consulted.
    C,
    /// Informed.
    I,
}

impl Raci {
    fn from_letter(letter: &str) -> Option<Self> {
        match letter {
            "R" => Some(Self::R),
            "A" => Some(Self::A),
            "C" => Some(Self::C),
            "I" => Some(Self::I),
            _ => None,
        }
    }
}

/// A USM-WIF 1.0.0 document: a workflow or a workflow template.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WifDocument {
    /// Always `1.0.0` (what usm writes; documents of any 1.x.y are read).
    pub format_version: String,
    /// `workflow-template` or `workflow`.
    #[serde(rename = "type")]
    pub document_type: DocumentType,
    /// The USM process of the workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// `static` or `dynamic`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamicity: Option<Dynamicity>,
    /// The domain of the workflow in its organisation, e.g. `it-infra`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Identifier in URLs: ASCII letters, digits and single dashes inside, at most 64.
    pub slug: String,
    /// Display name; a `workflow` must have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the workflow is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The originating system, `vendor-domain:system`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_system_type: Option<String>,
    /// The originating system's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_system_version: Option<String>,
    /// The originating system's instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_system_instance: Option<String>,
    /// The version of the content; an import that replaces a module's template of the same slug
    /// must give one, so a template is never overwritten by accident.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_version: Option<String>,
    /// When the workflow was created (ISO 8601).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Who created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Person>,
    /// When it was last modified (ISO 8601).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
    /// Who last modified it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_by: Option<Person>,
    /// usm's extension: position among the eight USM workflows, for the templates.
    #[serde(rename = "x-usm-number", skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// usm's extension: `reactive` (a customer call starts it) or `proactive` (a plan does).
    #[serde(rename = "x-usm-trigger", skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The steps, as given (each `sort-index` suggests the order).
    pub steps: Vec<Step>,
    /// The profiles (roles or positions) responsibilities name.
    pub profiles: Vec<Profile>,
    /// Members usm does not know, kept.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: Extra,
}

/// A person who created or modified a workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Person {
    /// Unique within the originating system.
    pub id: String,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Members usm does not know, kept.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: Extra,
}

/// A role or position responsibilities are assigned to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Profile {
    /// Unique in the document.
    pub id: String,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Members usm does not know, kept.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: Extra,
}

/// One step of a workflow, in one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Step {
    /// Unique in the workflow.
    pub id: String,
    /// Suggested position, ascending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_index: Option<u64>,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What happens in the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `agree`, `change`, `recover`, `operate` or `improve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The activities, as given.
    pub activities: Vec<Activity>,
    /// Members usm does not know, kept.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: Extra,
}

/// One activity of a step, with who is Responsible, Accountable, Consulted and Informed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Activity {
    /// Unique in the step.
    pub id: String,
    /// Suggested position, ascending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_index: Option<u64>,
    /// What is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Profile id (one of `profiles`) → its RACI roles.
    pub responsibilities: BTreeMap<String, Vec<Raci>>,
    /// Members usm does not know, kept.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: Extra,
}

/// Which rule a refused document broke; clients match on [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The bytes are not JSON.
    NotJson,
    /// A member has the wrong JSON type.
    WrongType,
    /// A member the format (or usm, for `slug`) needs is missing.
    Required,
    /// `format-version` is not 1.x.y.
    UnsupportedVersion,
    /// A value outside the format's list (`type`, `process`, `dynamicity`).
    UnknownValue,
    /// `type` contradicts the media type the document was sent as.
    TypeMismatch,
    /// The slug has characters other than letters, digits and single inner dashes.
    InvalidSlug,
    /// A name or `workflow-version` that is empty or too long.
    InvalidLength,
    /// `created-at` or `modified-at` is not an ISO 8601 date and time.
    InvalidTimestamp,
    /// A responsibility other than R, A, C and I.
    InvalidLetter,
    /// Two steps, two activities of a step or two profiles with the same id.
    DuplicateId,
    /// A responsibility names a profile that `profiles` does not list.
    UnknownProfile,
    /// More than [`MAX_ITEMS`] steps, activities of a step or profiles.
    TooMany,
}

impl Reason {
    /// The reason as clients see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::WrongType => "wrong_type",
            Self::Required => "required",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownValue => "unknown_value",
            Self::TypeMismatch => "type_mismatch",
            Self::InvalidSlug => "invalid_slug",
            Self::InvalidLength => "invalid_length",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::InvalidLetter => "invalid_letter",
            Self::DuplicateId => "duplicate_id",
            Self::UnknownProfile => "unknown_profile",
            Self::TooMany => "too_many",
        }
    }
}

/// A refused document: where (a JSON pointer into it), which rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct WifError {
    /// The offending member (RFC 6901; empty for the whole document).
    pub pointer: String,
    /// The rule.
    pub reason: Reason,
    /// What is wrong.
    pub message: String,
}

impl WifError {
    fn new(pointer: impl Into<String>, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Parses and checks a document. `declared` is the type its media type names (`None` for
/// `application/json`); the draft shape is read only without one.
pub fn parse(bytes: &[u8], declared: Option<DocumentType>) -> Result<WifDocument, WifError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| WifError::new("", Reason::NotJson, format!("not JSON: {e}")))?;
    let document = if value.get("usm_wif").is_some() && value.get("format-version").is_none() {
        if declared.is_some() {
            return Err(WifError::new(
                "/format-version",
                Reason::Required,
                "is required; the deprecated draft shape (usm_wif) is read only as application/json",
            ));
        }
        draft::convert(value)?
    } else {
        decode(value, declared)?
    };
    check(&document)?;
    Ok(document)
}

/// Escapes an object key for a JSON pointer (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(pointer: String, expected: &str, got: &Value) -> WifError {
    WifError::new(
        pointer,
        Reason::WrongType,
        format!("must be {expected}, not {}", json_type(got)),
    )
}

/// The members of one object of a document, taken one by one; what is left is `extra`.
struct Members {
    map: Map<String, Value>,
    at: String,
}

impl Members {
    fn of(value: Value, at: String) -> Result<Self, WifError> {
        match value {
            Value::Object(map) => Ok(Self { map, at }),
            other => Err(wrong_type(at, "an object", &other)),
        }
    }

    fn pointer(&self, key: &str) -> String {
        format!("{}/{}", self.at, escape(key))
    }

    fn take(&mut self, key: &str) -> Option<(Value, String)> {
        let value = self.map.remove(key)?;
        Some((value, self.pointer(key)))
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, WifError> {
        self.take(key)
            .map(|(value, at)| match value {
                Value::String(s) => Ok(s),
                other => Err(wrong_type(at, "a string", &other)),
            })
            .transpose()
    }

    fn required_string(&mut self, key: &str) -> Result<String, WifError> {
        let at = self.pointer(key);
        self.string(key)?
            .ok_or_else(|| WifError::new(at, Reason::Required, "is required"))
    }

    /// A string from a fixed list (`allowed` names it for the message).
    fn one_of<T: DeserializeOwned>(
        &mut self,
        key: &str,
        allowed: &str,
    ) -> Result<Option<T>, WifError> {
        self.take(key)
            .map(|(value, at)| match value {
                Value::String(s) => serde_json::from_value(Value::String(s)).map_err(|_| {
                    WifError::new(
                        at,
                        Reason::UnknownValue,
                        format!("must be one of {allowed}"),
                    )
                }),
                other => Err(wrong_type(at, "a string", &other)),
            })
            .transpose()
    }

    /// A non-negative integer. A string of digits is read too: the format's own examples write
    /// `"sort-index": "3"`. Export writes the integer.
    fn sort_index(&mut self) -> Result<Option<u64>, WifError> {
        self.take("sort-index")
            .map(|(value, at)| {
                let index = match &value {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                    _ => None,
                };
                index.ok_or_else(|| wrong_type(at, "a non-negative integer", &value))
            })
            .transpose()
    }

    fn number(&mut self, key: &str) -> Result<Option<u32>, WifError> {
        self.take(key)
            .map(|(value, at)| {
                value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| wrong_type(at, "a non-negative 32-bit integer", &value))
            })
            .transpose()
    }

    fn object(&mut self, key: &str) -> Result<Option<Members>, WifError> {
        self.take(key)
            .map(|(value, at)| Members::of(value, at))
            .transpose()
    }

    /// The items of an array member (absent: none), each with its pointer.
    fn array(&mut self, key: &str) -> Result<Vec<(Value, String)>, WifError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some((Value::Array(items), at)) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, item)| (item, format!("{at}/{i}")))
                .collect()),
            Some((other, at)) => Err(wrong_type(at, "an array", &other)),
        }
    }

    fn each<T>(
        &mut self,
        key: &str,
        item: fn(Value, String) -> Result<T, WifError>,
    ) -> Result<Vec<T>, WifError> {
        self.array(key)?
            .into_iter()
            .map(|(value, at)| item(value, at))
            .collect()
    }

    fn person(&mut self, key: &str) -> Result<Option<Person>, WifError> {
        self.object(key)?
            .map(|mut m| {
                Ok(Person {
                    id: m.required_string("id")?,
                    name: m.string("name")?,
                    email: m.string("email")?,
                    extra: m.map,
                })
            })
            .transpose()
    }
}

const PROCESSES: &str = "agree, change, recover, operate, improve";

fn decode(value: Value, declared: Option<DocumentType>) -> Result<WifDocument, WifError> {
    let mut m = Members::of(value, String::new())?;
    let version = m.required_string("format-version")?;
    if semver::Version::parse(&version).map_or(true, |v| v.major != 1) {
        return Err(WifError::new(
            "/format-version",
            Reason::UnsupportedVersion,
            format!("usm reads USM-WIF 1.x.y, not {version:?}"),
        ));
    }
    let document_type = match (m.one_of("type", "workflow-template, workflow")?, declared) {
        (Some(given), Some(declared)) if given != declared => {
            return Err(WifError::new(
                "/type",
                Reason::TypeMismatch,
                format!("the document was sent as {}", declared.media_type()),
            ));
        }
        (Some(given), _) => given,
        (None, Some(declared)) => declared,
        (None, None) => {
            return Err(WifError::new(
                "/type",
                Reason::Required,
                "is required unless the media type names it",
            ));
        }
    };
    Ok(WifDocument {
        format_version: FORMAT_VERSION.to_owned(),
        document_type,
        process: m.one_of("process", PROCESSES)?,
        dynamicity: m.one_of("dynamicity", "static, dynamic")?,
        context: m.string("context")?,
        slug: m.required_string("slug")?,
        name: m.string("name")?,
        description: m.string("description")?,
        source_system_type: m.string("source-system-type")?,
        source_system_version: m.string("source-system-version")?,
        source_system_instance: m.string("source-system-instance")?,
        workflow_version: m.string("workflow-version")?,
        created_at: m.string("created-at")?,
        created_by: m.person("created-by")?,
        modified_at: m.string("modified-at")?,
        modified_by: m.person("modified-by")?,
        number: m.number("x-usm-number")?,
        trigger: m.string("x-usm-trigger")?,
        steps: m.each("steps", step)?,
        profiles: m.each("profiles", profile)?,
        extra: m.map,
    })
}

fn profile(value: Value, at: String) -> Result<Profile, WifError> {
    let mut m = Members::of(value, at)?;
    Ok(Profile {
        id: m.required_string("id")?,
        name: m.string("name")?,
        extra: m.map,
    })
}

fn step(value: Value, at: String) -> Result<Step, WifError> {
    let mut m = Members::of(value, at)?;
    Ok(Step {
        id: m.required_string("id")?,
        sort_index: m.sort_index()?,
        name: m.string("name")?,
        description: m.string("description")?,
        process: m.one_of("process", PROCESSES)?,
        activities: m.each("activities", activity)?,
        extra: m.map,
    })
}

fn activity(value: Value, at: String) -> Result<Activity, WifError> {
    let mut m = Members::of(value, at)?;
    let id = m.required_string("id")?;
    let sort_index = m.sort_index()?;
    let description = m.string("description")?;
    let mut responsibilities = BTreeMap::new();
    if let Some(mut by_profile) = m.object("responsibilities")? {
        for profile in by_profile.map.keys().cloned().collect::<Vec<_>>() {
            let mut letters = Vec::new();
            for (letter, at) in by_profile.array(&profile)? {
                let raci = letter.as_str().and_then(Raci::from_letter).ok_or_else(|| {
                    WifError::new(
                        at,
                        Reason::InvalidLetter,
                        "must be \"R\", \"A\", \"C\" or \"I\"",
                    )
                })?;
                letters.push(raci);
            }
            responsibilities.insert(profile, letters);
        }
    }
    Ok(Activity {
        id,
        sort_index,
        description,
        responsibilities,
        extra: m.map,
    })
}

/// The rules across members: slug, name, lengths, timestamps, sizes, unique ids, known profiles.
fn check(document: &WifDocument) -> Result<(), WifError> {
    let slug = &document.slug;
    let slug_ok = (1..=MAX_KEY).contains(&slug.len())
        && slug.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
        && !slug.contains("--");
    if !slug_ok {
        return Err(WifError::new(
            "/slug",
            Reason::InvalidSlug,
            format!(
                "1-{MAX_KEY} ASCII letters, digits and dashes, no dash first, last or twice in a row"
            ),
        ));
    }
    match &document.name {
        None if document.document_type == DocumentType::Workflow => {
            return Err(WifError::new(
                "/name",
                Reason::Required,
                "a workflow needs a name",
            ));
        }
        Some(name) if name.trim().is_empty() || name.chars().count() > MAX_NAME => {
            return Err(WifError::new(
                "/name",
                Reason::InvalidLength,
                format!("1-{MAX_NAME} characters"),
            ));
        }
        _ => {}
    }
    if document
        .workflow_version
        .as_ref()
        .is_some_and(|v| v.trim().is_empty() || v.len() > MAX_KEY || v.contains(char::is_control))
    {
        return Err(WifError::new(
            "/workflow-version",
            Reason::InvalidLength,
            format!("1-{MAX_KEY} printable characters"),
        ));
    }
    for (key, value) in [
        ("created-at", &document.created_at),
        ("modified-at", &document.modified_at),
    ] {
        if let Some(value) = value
            && value.parse::<jiff::Timestamp>().is_err()
            && value.parse::<jiff::civil::DateTime>().is_err()
        {
            return Err(WifError::new(
                format!("/{key}"),
                Reason::InvalidTimestamp,
                "must be an ISO 8601 date and time, e.g. 2021-03-22T07:38:22.800+00:00",
            ));
        }
    }
    at_most("/steps", document.steps.len())?;
    at_most("/profiles", document.profiles.len())?;
    unique("/profiles", document.profiles.iter().map(|p| &p.id))?;
    unique("/steps", document.steps.iter().map(|s| &s.id))?;
    let profiles: BTreeSet<&str> = document.profiles.iter().map(|p| p.id.as_str()).collect();
    for (s, step) in document.steps.iter().enumerate() {
        let at = format!("/steps/{s}/activities");
        at_most(&at, step.activities.len())?;
        unique(&at, step.activities.iter().map(|a| &a.id))?;
        for (a, activity) in step.activities.iter().enumerate() {
            let at = format!("{at}/{a}/responsibilities");
            if let Some(profile) = activity
                .responsibilities
                .keys()
                .find(|p| !profiles.contains(p.as_str()))
            {
                return Err(WifError::new(
                    format!("{at}/{}", escape(profile)),
                    Reason::UnknownProfile,
                    format!("profile {profile:?} is not in /profiles"),
                ));
            }
        }
    }
    Ok(())
}

fn at_most(at: &str, count: usize) -> Result<(), WifError> {
    if count > MAX_ITEMS {
        return Err(WifError::new(
            at,
            Reason::TooMany,
            format!("at most {MAX_ITEMS}, not {count}"),
        ));
    }
    Ok(())
}

/// Refuses the second item (of the array at `at`) whose id an earlier one has.
fn unique<'a>(at: &str, ids: impl Iterator<Item = &'a String>) -> Result<(), WifError> {
    let mut seen = BTreeSet::new();
    for (i, id) in ids.enumerate() {
        if !seen.insert(id) {
            return Err(WifError::new(
                format!("{at}/{i}/id"),
                Reason::DuplicateId,
                format!("id {id:?} is taken by an earlier item"),
            ));
        }
    }
    Ok(())
}

/// The deprecated shape usm read before 1.0.0, converted on import: steps and activities are
/// numbered from 1 (id and sort-index), an activity's name becomes its description, RACI strings
/// become lists and the profiles they name become `profiles`.
mod draft {
    use super::*;

    #[derive(Deserialize)]
    struct Document {
        #[allow(dead_code)] // Its presence marks the shape; its value never mattered.
        usm_wif: Value,
        workflow: Workflow,
    }

    #[derive(Deserialize)]
    struct Workflow {
        slug: String,
        name: String,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        number: Option<u32>,
        #[serde(default)]
        trigger: Option<String>,
        #[serde(default)]
        description: String,
        steps: Vec<DraftStep>,
    }

    #[derive(Deserialize)]
    struct DraftStep {
        name: String,
        process: Process,
        #[serde(default)]
        description: String,
        activities: Vec<DraftActivity>,
    }

    #[derive(Deserialize)]
    struct DraftActivity {
        name: String,
        #[serde(default)]
        raci: BTreeMap<String, String>,
    }

    fn non_empty(text: String) -> Option<String> {
        (!text.is_empty()).then_some(text)
    }

    fn position(index: usize) -> (String, Option<u64>) {
        let n = index + 1;
        (n.to_string(), u64::try_from(n).ok())
    }

    pub(super) fn convert(value: Value) -> Result<WifDocument, WifError> {
        let draft: Document = serde_json::from_value(value).map_err(|e| {
            WifError::new(
                "",
                Reason::WrongType,
                format!("not a USM-WIF draft document: {e}"),
            )
        })?;
        let workflow = draft.workflow;
        at_most("/workflow/steps", workflow.steps.len())?;
        let mut profiles = BTreeSet::new();
        let mut steps = Vec::with_capacity(workflow.steps.len());
        for (s, draft_step) in workflow.steps.into_iter().enumerate() {
            at_most(
                &format!("/workflow/steps/{s}/activities"),
                draft_step.activities.len(),
            )?;
            let mut activities = Vec::with_capacity(draft_step.activities.len());
            for (a, draft_activity) in draft_step.activities.into_iter().enumerate() {
                let mut responsibilities = BTreeMap::new();
                for (profile, letters) in draft_activity.raci {
                    let roles: Option<Vec<Raci>> = letters
                        .chars()
                        .map(|c| Raci::from_letter(c.encode_utf8(&mut [0; 4])))
                        .collect();
                    let roles = roles.filter(|r| !r.is_empty()).ok_or_else(|| {
                        WifError::new(
                            format!(
                                "/workflow/steps/{s}/activities/{a}/raci/{}",
                                escape(&profile)
                            ),
                            Reason::InvalidLetter,
                            "use the letters R, A, C and I",
                        )
                    })?;
                    profiles.insert(profile.clone());
                    responsibilities.insert(profile, roles);
                }
                let (id, sort_index) = position(a);
                activities.push(Activity {
                    id,
                    sort_index,
                    description: Some(draft_activity.name),
                    responsibilities,
                    extra: Extra::new(),
                });
            }
            let (id, sort_index) = position(s);
            steps.push(Step {
                id,
                sort_index,
                name: Some(draft_step.name),
                description: non_empty(draft_step.description),
                process: Some(draft_step.process),
                activities,
                extra: Extra::new(),
            });
        }
        Ok(WifDocument {
            format_version: FORMAT_VERSION.to_owned(),
            document_type: DocumentType::WorkflowTemplate,
            process: None,
            dynamicity: None,
            context: None,
            slug: workflow.slug,
            name: Some(workflow.name),
            description: non_empty(workflow.description),
            source_system_type: None,
            source_system_version: None,
            source_system_instance: None,
            workflow_version: workflow.version,
            created_at: None,
            created_by: None,
            modified_at: None,
            modified_by: None,
            number: workflow.number,
            trigger: workflow.trigger,
            steps,
            profiles: profiles
                .into_iter()
                .map(|id| Profile {
                    id,
                    name: None,
                    extra: Extra::new(),
                })
                .collect(),
            extra: Extra::new(),
        })
    }
}

#[cfg(test)]
mod tests;
