//! COBIT 2019 governance controls as usm pipeline rules (`config.rule` picks one per step):
//! - `objective`: tags records with their governance objective in `fields.cobit_objective`
//!   (BAI06 managed IT changes, DSS02 managed service requests and incidents, APO09 managed
//!   service agreements), from the `objectives` map in config.
//! - `sod-approval`: segregation of duties — whoever requested a change may not approve it;
//!   every approval leaves control evidence in `fields.control_evidence`.
//! - `sod-implementer`: whoever approved a change may not implement it.

use usm_sdk::{Error, Hook, Input, Output, Step, Value, export_step, host, json};

struct Cobit2019;

fn requester(input: &Input) -> Option<&str> {
    input
        .field_str("requester")
        .or_else(|| input.record["created_by"].as_str())
}

fn objective(input: &Input) -> Result<Output, Error> {
    let Some(objective) = input.config["objectives"][input.kind()].as_str() else {
        return Ok(Output::proceed());
    };
    if input.field_str("cobit_objective") == Some(objective) {
        return Ok(Output::proceed());
    }
    Ok(Output::set_fields(json!({"cobit_objective": objective})))
}

fn sod_approval(input: &Input) -> Result<Output, Error> {
    let approval = &input.context["approval"];
    let approver = approval["actor"].as_str().unwrap_or_default();
    let requester = requester(input).unwrap_or_default();
    if approver == requester {
        return Ok(Output::reject(
            "sod_approver_is_requester",
            format!(
                "segregation of duties (BAI06): {approver} requested this change and may not approve it"
            ),
        ));
    }
    let mut evidence = input
        .field("control_evidence")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    evidence.push(json!({
        "control": "BAI06.01 segregation of duties",
        "check": "approver differs from requester",
        "approver": approver,
        "requester": requester,
        "decision": approval["decision"],
        "record_version": input.record["version"],
        "at_ms": host::now(),
    }));
    Ok(Output::set_fields(json!({"control_evidence": evidence})))
}

fn sod_implementer(input: &Input) -> Result<Output, Error> {
    if input.transition_to() != Some("implement") {
        return Ok(Output::proceed());
    }
    let implementer = input.field_str("implementer").unwrap_or(&input.actor.name);
    let approved_by_implementer = input.context["approvals"].as_array().is_some_and(|a| {
        a.iter()
            .any(|a| a["decision"] == "approve" && a["actor"] == implementer)
    });
    if approved_by_implementer {
        return Ok(Output::reject(
            "sod_implementer_is_approver",
            format!(
                "segregation of duties (BAI06): {implementer} approved this change and may not implement it"
            ),
        ));
    }
    Ok(Output::proceed())
}

impl Step for Cobit2019 {
    const NAME: &'static str = "cobit2019";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Transition, Hook::Approval];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "required": ["rule"], "properties": {
            "rule": {"enum": ["objective", "sod-approval", "sod-implementer"]},
            "objectives": {"type": "object", "additionalProperties": {"type": "string"}}}}"#,
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
