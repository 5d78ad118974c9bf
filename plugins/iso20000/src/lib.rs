//! ISO/IEC 20000-1:2018 conformity rules as usm pipeline rules (`config.rule` picks one):
//! - `resolution-data` (8.6.1 incident management, 8.6.2 service request management): an
//!   incident or request is not resolved (fulfilled) without classification (`category`) and
//!   resolution data (`resolution_code`, `resolution`).
//! - `customer-confirmation`: it is not closed without the customer's confirmation
//!   (`customer_confirmed = true`).
//! - `sla-targets` (8.3.3 service level management): on creation, the targets of the domain's
//!   active agreement for the record's service are recorded in `fields.sla` (needs the
//!   `records:read` capability).

use usm_sdk::{Error, Hook, Input, Output, Step, Value, export_step, host, json};

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

fn customer_confirmation(input: &Input) -> Result<Output, Error> {
    if input.transition_to() != Some("closed")
        || input.field("customer_confirmed") == Some(&json!(true))
    {
        return Ok(Output::proceed());
    }
    Ok(Output::reject(
        "customer_confirmation_required",
        "ISO/IEC 20000-1 8.6: set customer_confirmed = true once the customer confirms, then close",
    ))
}

fn sla_targets(input: &Input) -> Result<Output, Error> {
    if input.field("sla").is_some() {
        return Ok(Output::proceed());
    }
    let agreements =
        match host::query(&json!({"kind": "agreement", "state": "active", "limit": 100})) {
            Ok(agreements) => agreements,
            Err(error) => {
                host::log(
                    host::Level::Warn,
                    &format!("cannot read agreements: {error}"),
                );
                return Ok(Output::proceed());
            }
        };
    let service = input.field_str("service");
    let for_service = |a: &&Value| service.is_some() && a["fields"]["service"].as_str() == service;
    let general = |a: &&Value| a["fields"].get("service").is_none();
    let Some(agreement) = agreements
        .iter()
        .find(for_service)
        .or_else(|| agreements.iter().find(general))
    else {
        return Ok(Output::proceed());
    };
    Ok(Output::set_fields(json!({"sla": {
        "agreement": agreement["id"],
        "targets": agreement["fields"]["targets"],
    }})))
}

impl Step for Iso20000 {
    const NAME: &'static str = "iso20000";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Transition];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "required": ["rule"], "properties": {
            "rule": {"enum": ["resolution-data", "customer-confirmation", "sla-targets"]},
            "states": {"type": "array", "items": {"type": "string"}}}}"#,
    );

    fn run(input: Input) -> Result<Output, Error> {
        match input.config["rule"].as_str() {
            Some("resolution-data") => resolution_data(&input),
            Some("customer-confirmation") => customer_confirmation(&input),
            Some("sla-targets") => sla_targets(&input),
            other => Err(Error(format!("unknown rule {other:?}"))),
        }
    }
}

export_step!(Iso20000);
