//! # usm-sdk — write usm pipeline steps in Rust
//!
//! A step is a type implementing [`Step`], exported with [`export_step!`], built for
//! `wasm32-wasip2`. The generated WIT bindings stay private; you work with JSON records
//! ([`serde_json::Value`]), an [`Input`] with typed helpers, and an [`Output`].
//!
//! A complete plugin that sets an incident's priority from its impact and urgency:
//!
//! ```no_run
//! use usm_sdk::{Error, Hook, Input, Output, Step, export_step, json};
//!
//! struct Priority;
//!
//! impl Step for Priority {
//!     const NAME: &'static str = "priority";
//!     const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Update];
//!
//!     fn run(input: Input) -> Result<Output, Error> {
//!         let priority = match (input.field_str("impact"), input.field_str("urgency")) {
//!             (Some("high"), Some("high")) => "P1",
//!             (Some("high"), _) | (_, Some("high")) => "P2",
//!             (None, _) | (_, None) => return Ok(Output::proceed()),
//!             _ => "P4",
//!         };
//!         Ok(Output::set_fields(json!({ "priority": priority })))
//!     }
//! }
//!
//! export_step!(Priority);
//! ```
//!
//! See `sdk/README.md` for building, packaging the module and running it in `usm serve`.

// Lets the generated bindings name this crate by the same path inside and outside it.
extern crate self as usm_sdk;

use serde::de::DeserializeOwned;
pub use serde_json::{self, Map, Value, json};

/// The `usm:plugin` WIT version this SDK builds plugins for.
pub const API_VERSION: &str = "0.1.0";

/// The write a pipeline runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A record is created.
    Create,
    /// Title, fields or links change.
    Update,
    /// The record changes state.
    Transition,
    /// An approval decision is recorded.
    Approval,
    /// An SLA clock reached its warning threshold or its target (after-steps).
    Sla,
}

/// Before the write (may patch or reject) or after it (may return effects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Runs inside the write, on the proposed record.
    Before,
    /// Runs after the write is durable.
    After,
}

/// Who makes the write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Actor {
    /// The principal's name.
    pub name: String,
    /// Its roles: `admin`, `agent`, `requester`, `automation`.
    pub roles: Vec<String>,
}

impl Actor {
    /// Whether the actor holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// An error from a step: the hook fails with this message (use [`Output::reject`] to refuse a
/// write with a message for the client instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self(error.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

/// One call of a step.
#[derive(Debug, Clone)]
pub struct Input {
    /// The hook.
    pub hook: Hook,
    /// The phase.
    pub phase: Phase,
    /// The record: proposed (before-steps) or current (after-steps), in the API's JSON shape.
    pub record: Value,
    /// The stored version the write started from (before-steps of updates and transitions).
    pub previous: Option<Value>,
    /// Who makes the write.
    pub actor: Actor,
    /// Hook details: `{"transition": {"from", "to", "comment"}}`, `{"approval": {...}}`, or for
    /// after-steps `{"event": {...}, "changes": [...]}`.
    pub context: Value,
    /// The step's config from the module manifest.
    pub config: Value,
}

impl Input {
    /// The record's kind, e.g. `incident`.
    pub fn kind(&self) -> &str {
        self.record["kind"].as_str().unwrap_or_default()
    }

    /// The record's state.
    pub fn state(&self) -> &str {
        self.record["state"].as_str().unwrap_or_default()
    }

    /// The record's id (absent while a create is being proposed).
    pub fn id(&self) -> Option<&str> {
        self.record["id"].as_str()
    }

    /// A member of the record's `fields`.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.record.get("fields")?.get(name)
    }

    /// A string member of the record's `fields`.
    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.field(name)?.as_str()
    }

    /// The state a transition moves to.
    pub fn transition_to(&self) -> Option<&str> {
        self.context.get("transition")?.get("to")?.as_str()
    }

    /// The step's config, deserialised.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_value(self.config.clone())?)
    }
}

/// A follow-up write requested by an after-step, carried out by usm as the module.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect(Value);

impl Effect {
    /// Create a record in the triggering record's domain; `link` (e.g. `"parent"`) links the new
    /// record to the triggering one.
    pub fn create_record(kind: &str, title: &str, fields: Value, link: Option<&str>) -> Self {
        Self(
            json!({"type": "create_record", "kind": kind, "title": title, "fields": fields, "link": link}),
        )
    }

    /// Create a record in another domain.
    pub fn create_record_in(
        domain: &str,
        kind: &str,
        title: &str,
        fields: Value,
        link: Option<&str>,
    ) -> Self {
        Self(
            json!({"type": "create_record", "domain": domain, "kind": kind, "title": title, "fields": fields, "link": link}),
        )
    }

    /// Move a record (the triggering one when `record` is `None`) to `to`.
    pub fn transition(record: Option<&str>, to: &str, comment: Option<&str>) -> Self {
        Self(json!({"type": "transition", "record": record, "to": to, "comment": comment}))
    }

    /// Add a link from `from` (the triggering record when `None`) to `to`.
    pub fn link(from: Option<&str>, rel: &str, to: &str) -> Self {
        Self(json!({"type": "link", "from": from, "rel": rel, "to": to}))
    }

    /// Emit a notification about the triggering record.
    pub fn notify(audience: &str, message: &str) -> Self {
        Self(json!({"type": "notify", "audience": audience, "message": message}))
    }
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Go on unchanged.
    Proceed,
    /// Go on with this JSON merge patch of `title`, `fields` and `links`.
    Patch(Map<String, Value>),
    /// Refuse the write.
    Reject {
        /// A machine-readable reason.
        code: String,
        /// A message for the client.
        message: String,
    },
    /// Follow-up writes (after-steps).
    Effects(Vec<Effect>),
}

impl Output {
    /// Go on unchanged.
    pub fn proceed() -> Self {
        Self::Proceed
    }

    /// Merge `fields` (an object) into the record's fields; `null` members remove fields.
    pub fn set_fields(fields: Value) -> Self {
        Self::patch(json!({ "fields": fields }))
    }

    /// A merge patch of the record (`title`, `fields`, `links`); a non-object continues unchanged.
    pub fn patch(patch: Value) -> Self {
        match patch {
            Value::Object(map) => Self::Patch(map),
            _ => Self::Proceed,
        }
    }

    /// Refuse the write with a code and a message for the client.
    pub fn reject(code: &str, message: impl Into<String>) -> Self {
        Self::Reject {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// Follow-up writes.
    pub fn effects(effects: impl IntoIterator<Item = Effect>) -> Self {
        Self::Effects(effects.into_iter().collect())
    }
}

/// A pipeline step. Implement it on a unit struct and export it with [`export_step!`].
pub trait Step {
    /// The step's name, shown by `describe`.
    const NAME: &'static str;
    /// The step's version.
    const VERSION: &'static str = "0.1.0";
    /// The hooks the step serves; a manifest giving it another hook is refused.
    const HOOKS: &'static [Hook];
    /// JSON Schema of the step's config; the server checks the manifest's config against it.
    const CONFIG_SCHEMA: Option<&'static str> = None;

    /// Runs the step on one write.
    fn run(input: Input) -> Result<Output, Error>;
}

/// Calls into the server.
pub mod host {
    use super::{Error, Value};
    use crate::__private::bindings::usm::plugin::host as wit;

    /// Severity of a log line.
    #[derive(Debug, Clone, Copy)]
    pub enum Level {
        /// Very detailed.
        Trace,
        /// For debugging.
        Debug,
        /// Normal operation.
        Info,
        /// Something unexpected.
        Warn,
        /// Something failed.
        Error,
    }

    /// Writes a line to the server's log, tagged with the module and step.
    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    /// Milliseconds since the Unix epoch.
    pub fn now() -> u64 {
        wit::now()
    }

    /// A record of the pipeline's domain; needs the `records:read` capability.
    pub fn get_record(id: &str) -> Result<Option<Value>, Error> {
        match wit::get_record(id).map_err(Error)? {
            Some(json) => Ok(Some(serde_json::from_str(&json)?)),
            None => Ok(None),
        }
    }

    /// Records of the pipeline's domain matching `{"kind"?, "state"?, "limit"?}`; needs
    /// `records:read`.
    pub fn query(filter: &Value) -> Result<Vec<Value>, Error> {
        let json = wit::query(&filter.to_string()).map_err(Error)?;
        Ok(serde_json::from_str(&json)?)
    }
}

/// Exports a [`Step`] implementation as the plugin's `describe` and `run`.
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        $crate::__export_step_with_api!($step, "0.1.0");
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_step_with_api {
    ($step:ty, $api:literal) => {
        #[doc(hidden)]
        pub struct __UsmStepExport;

        impl $crate::__private::bindings::Guest for __UsmStepExport {
            fn describe() -> $crate::__private::bindings::Info {
                $crate::__private::describe::<$step>()
            }

            fn run(
                input: $crate::__private::bindings::Input,
            ) -> ::core::result::Result<$crate::__private::bindings::Output, ::std::string::String>
            {
                $crate::__private::run::<$step>(input)
            }
        }

        $crate::__private::bindings::__export_step_world!(__UsmStepExport);

        /// The `usm:plugin` version this plugin was built for, read by the server before it
        /// instantiates anything.
        #[doc(hidden)]
        #[allow(unsafe_code)]
        #[unsafe(link_section = "usm-plugin-api")]
        #[used]
        static __USM_PLUGIN_API: [u8; $api.len()] = $crate::__private::api_bytes($api);
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// Bindings generated from `sdk/wit`, the same WIT the server reads.
    #[allow(clippy::too_many_arguments, missing_docs)]
    pub mod bindings {
        wit_bindgen::generate!({
            world: "step",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__export_step_world",
            default_bindings_module: "::usm_sdk::__private::bindings",
            runtime_path: "::usm_sdk::__private::wit_bindgen::rt",
        });
    }

    use bindings::usm::plugin::types as wit;

    use crate::{Actor, Hook, Input, Output, Phase, Step, Value};

    /// The bytes of a string, as an array for a custom section.
    pub const fn api_bytes<const N: usize>(text: &str) -> [u8; N] {
        let bytes = text.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = bytes[i];
            i += 1;
        }
        out
    }

    fn wit_hook(hook: Hook) -> wit::Hook {
        match hook {
            Hook::Create => wit::Hook::Create,
            Hook::Update => wit::Hook::Update,
            Hook::Transition => wit::Hook::Transition,
            Hook::Approval => wit::Hook::Approval,
            Hook::Sla => wit::Hook::Sla,
        }
    }

    pub fn describe<S: Step>() -> wit::Info {
        wit::Info {
            name: S::NAME.to_owned(),
            version: S::VERSION.to_owned(),
            hooks: S::HOOKS.iter().copied().map(wit_hook).collect(),
            config_schema: S::CONFIG_SCHEMA.map(str::to_owned),
        }
    }

    fn parse(what: &str, json: &str) -> Result<Value, String> {
        serde_json::from_str(json).map_err(|e| format!("the host sent invalid {what}: {e}"))
    }

    pub fn run<S: Step>(input: wit::Input) -> Result<wit::Output, String> {
        let actor: Actor = serde_json::from_str(&input.actor)
            .map_err(|e| format!("the host sent an invalid actor: {e}"))?;
        let input = Input {
            hook: match input.hook {
                wit::Hook::Create => Hook::Create,
                wit::Hook::Update => Hook::Update,
                wit::Hook::Transition => Hook::Transition,
                wit::Hook::Approval => Hook::Approval,
                wit::Hook::Sla => Hook::Sla,
            },
            phase: match input.phase {
                wit::Phase::Before => Phase::Before,
                wit::Phase::After => Phase::After,
            },
            record: parse("record", &input.record)?,
            previous: input
                .previous
                .as_deref()
                .map(|p| parse("previous record", p))
                .transpose()?,
            actor,
            context: parse("context", &input.context)?,
            config: parse("config", &input.config)?,
        };
        match S::run(input).map_err(|e| e.0)? {
            Output::Proceed => Ok(wit::Output::Proceed),
            Output::Patch(patch) => Ok(wit::Output::Patch(Value::Object(patch).to_string())),
            Output::Reject { code, message } => {
                Ok(wit::Output::Reject(wit::Rejection { code, message }))
            }
            Output::Effects(effects) => Ok(wit::Output::Effects(
                effects.into_iter().map(|e| e.0.to_string()).collect(),
            )),
        }
    }
}
