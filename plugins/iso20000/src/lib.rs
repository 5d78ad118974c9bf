//! ISO/IEC 20000-1:2018 conformity rules as usm pipeline rules (`config.rule` picks one):
//! - `resolution-data` (8.6.1 incident management, 8.6.2 service request management): an
//!   incident or request is not resolved (fulfilled) without classification (`category`) and
//!   resolution data (`resolution_code`, `resolution`).
//!
//! 8.6.1 asks that incidents be recorded, classified, prioritised, resolved and closed with the
//! record updated with the actions taken; it does not ask for the customer's confirmation (usm's
//! own requester confirmation, `POST /api/v1/records/{id}/confirmation`, is not an ISO rule).

use usm_sdk::{Error, Hook, Input, Output, Step, Value, export_step};

struct Iso20000;

fn filled(input: &Input, field: &str) -> bool {
    match input.field(field) {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

fn resolution_data(input: &Input) -> Result<Output, Error> {
    let resolved: Vec<&str> = input.config["states"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| vec!["resolved", "fulfilled"]);
    let Some(to) = input.transition_to() else {
        return Ok(Output::proceed());
    };
    if !resolved.contains(&to) {
        return Ok(Output::proceed());
    }
    let missing: Vec<&str> = ["category", "resolution_code", "resolution"]
        .into_iter()
        .filter(|f| !filled(input, f))
        .collect();
    if missing.is_empty() {
        return Ok(Output::proceed());
    }
    let code = if missing.contains(&"category") {
        "classification_required"
    } else {
        "resolution_required"
    };
    Ok(Output::reject(
        code,
        format!(
            "ISO/IEC 20000-1 8.6: record {} before moving to {to}",
            missing.join(", ")
        ),
    ))
}

impl Step for Iso20000 {
    const NAME: &'static str = "iso20000";
    const VERSION: &'static str = "1.1.0";
    const HOOKS: &'static [Hook] = &[Hook::Transition];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "required": ["rule"], "properties": {
            "rule": {"enum": ["resolution-data"]},
            "states": {"type": "array", "items": {"type": "string"}}}}"#,
    );

    fn run(input: Input) -> Result<Output, Error> {
        match input.config["rule"].as_str() {
            Some("resolution-data") => resolution_data(&input),
            other => Err(Error(format!("unknown rule {other:?}"))),
        }
    }
}

export_step!(Iso20000);
