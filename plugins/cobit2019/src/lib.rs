//! COBIT 2019 governance controls as usm pipeline rules (`config.rule` picks one per step):
//! - `objective`: tags every record with its governance objective in `fields.cobit_objective`
//!   (from the `objectives` map in config; `risk_objective` for improvements recording a risk).
//!   The module owns the field: no client writes it.
//! - `sod-approval`: segregation of duties (DSS06.03) — the change's requester and whoever
//!   raised it (facts the engine records from principals) may not approve it.
//! - `sod-implementer`: whoever approved the change's current content may not be the one who
//!   moves it into `implement` (the engine records that principal as the implementer).
//!
//! The evidence of both controls is the record's approvals and history, which no client edits.

use usm_sdk::{Error, Hook, Input, Output, Step, export_step, json};

struct Cobit2019;

fn requester(input: &Input) -> &str {
    input
        .field_str("requester")
        .or_else(|| input.record["created_by"].as_str())
        .unwrap_or_default()
}

fn objective(input: &Input) -> Result<Output, Error> {
    let risk = input.kind() == "improvement" && input.field_str("improvement_type") == Some("risk");
    let configured = if risk {
        input.config["risk_objective"].as_str()
    } else {
        None
    };
    let Some(objective) = configured.or_else(|| input.config["objectives"][input.kind()].as_str())
    else {
        return Ok(Output::proceed());
    };
    if input.field_str("cobit_objective") == Some(objective) {
        return Ok(Output::proceed());
    }
    Ok(Output::set_fields(json!({"cobit_objective": objective})))
}

fn sod_approval(input: &Input) -> Result<Output, Error> {
    let approver = input.context["approval"]["actor"]
        .as_str()
        .unwrap_or_default();
    // Raising a change on someone's behalf is raising it too.
    let raised_by = input.record["created_by"].as_str().unwrap_or_default();
    if approver == requester(input) || approver == raised_by {
        return Ok(Output::reject(
            "sod_approver_is_requester",
            format!(
                "segregation of duties (COBIT 2019 DSS06.03): {approver} requested or raised this change and may not approve it"
            ),
        ));
    }
    Ok(Output::proceed())
}

fn sod_implementer(input: &Input) -> Result<Output, Error> {
    if input.transition_to() != Some("implement") {
        return Ok(Output::proceed());
    }
    let implementer = input.actor.name.as_str();
    let approved_by_implementer = input.context["approvals"].as_array().is_some_and(|a| {
        a.iter().any(|a| {
            a["decision"] == "approve" && a["current"] != false && a["actor"] == implementer
        })
    });
    if approved_by_implementer {
        return Ok(Output::reject(
            "sod_implementer_is_approver",
            format!(
                "segregation of duties (COBIT 2019 DSS06.03): {implementer} approved this change and may not implement it"
            ),
        ));
    }
    Ok(Output::proceed())
}

impl Step for Cobit2019 {
    const NAME: &'static str = "cobit2019";
    const VERSION: &'static str = "1.1.0";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Update, Hook::Transition, Hook::Approval];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "required": ["rule"], "properties": {
            "rule": {"enum": ["objective", "sod-approval", "sod-implementer"]},
            "objectives": {"type": "object", "additionalProperties": {"type": "string"}},
            "risk_objective": {"type": "string"}}}"#,
    );

    fn run(input: Input) -> Result<Output, Error> {
        match input.config["rule"].as_str() {
            Some("objective") => objective(&input),
            Some("sod-approval") => sod_approval(&input),
            Some("sod-implementer") => sod_implementer(&input),
            other => Err(Error(format!("unknown rule {other:?}"))),
        }
    }
}

export_step!(Cobit2019);
