//! ITIL 4 practices as usm pipeline rules. One component, several rules; the manifest picks the
//! rule per step with `config.rule`:
//! - `priority`: incident priority P1–P5 from impact × urgency (matrix in config); P1 is a major
//!   incident.
//! - `change-approval`: a normal change needs an approving approval (and no rejection) before it
//!   moves to `implement`; an emergency change needs one from an `admin` or a configured
//!   emergency approver; a standard change needs none.
//! - `close-children`: an incident cannot close while a record linked to it as its child
//!   (`parent` link) is still open.

use usm_sdk::{Error, Hook, Input, Output, Step, Value, export_step, json};

struct Itil4;

fn approvals(input: &Input) -> Vec<&Value> {
    input.context["approvals"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn priority(input: &Input) -> Result<Output, Error> {
    let (Some(impact), Some(urgency)) = (input.field_str("impact"), input.field_str("urgency"))
    else {
        return Ok(Output::proceed());
    };
    let Some(priority) = input.config["matrix"][impact][urgency].as_str() else {
        return Ok(Output::reject(
            "unknown_priority",
            format!("the priority matrix has no entry for impact {impact} and urgency {urgency}"),
        ));
    };
    let major = priority == "P1";
    if input.field_str("priority") == Some(priority)
        && input.field("major_incident") == Some(&json!(major))
    {
        return Ok(Output::proceed());
    }
    Ok(Output::set_fields(
        json!({"priority": priority, "major_incident": major}),
    ))
}

fn change_approval(input: &Input) -> Result<Output, Error> {
    if input.transition_to() != Some("implement") {
        return Ok(Output::proceed());
    }
    let approvals = approvals(input);
    let approves: Vec<&Value> = approvals
        .iter()
        .copied()
        .filter(|a| a["decision"] == "approve")
        .collect();
    if let Some(rejection) = approvals.iter().find(|a| a["decision"] == "reject") {
        return Ok(Output::reject(
            "change_rejected",
            format!(
                "{} rejected this change; it cannot be implemented",
                rejection["actor"].as_str().unwrap_or("an approver")
            ),
        ));
    }
    match input.field_str("change_type").unwrap_or("normal") {
        "standard" => Ok(Output::proceed()),
        "emergency" => {
            let approvers: Vec<&str> = input.config["emergency_approvers"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let authorised = approves.iter().any(|a| {
                let admin = a["roles"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|role| role == "admin"));
                admin
                    || a["actor"]
                        .as_str()
                        .is_some_and(|actor| approvers.contains(&actor))
            });
            if authorised {
                Ok(Output::proceed())
            } else {
                Ok(Output::reject(
                    "emergency_approval_required",
                    "an emergency change needs an approval from an admin or an emergency approver before implement",
                ))
            }
        }
        _ => {
            let needed = input.config["min_approvals"].as_u64().unwrap_or(1);
            let approved = approves.len() as u64;
            if approved >= needed {
                Ok(Output::proceed())
            } else {
                Ok(Output::reject(
                    "approval_required",
                    format!(
                        "a normal change needs {needed} approving approval(s) before implement; it has {approved}"
                    ),
                ))
            }
        }
    }
}

fn close_children(input: &Input) -> Result<Output, Error> {
    if input.transition_to() != Some("closed") {
        return Ok(Output::proceed());
    }
    let open: Vec<&str> = input.context["children"]
        .as_array()
        .map(|children| {
            children
                .iter()
                .filter(|c| c["rel"] == "parent" && c["active"] == true)
                .filter_map(|c| c["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    if open.is_empty() {
        Ok(Output::proceed())
    } else {
        Ok(Output::reject(
            "open_children",
            format!("close the linked records first: {}", open.join(", ")),
        ))
    }
}

impl Step for Itil4 {
    const NAME: &'static str = "itil4";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Update, Hook::Transition];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "required": ["rule"], "properties": {
            "rule": {"enum": ["priority", "change-approval", "close-children"]},
            "matrix": {"type": "object", "additionalProperties": {"type": "object",
                "additionalProperties": {"type": "string", "pattern": "^P[1-5]$"}}},
            "min_approvals": {"type": "integer", "minimum": 1},
            "emergency_approvers": {"type": "array", "items": {"type": "string"}}}}"#,
    );

    fn run(input: Input) -> Result<Output, Error> {
        match input.config["rule"].as_str() {
            Some("priority") => priority(&input),
            Some("change-approval") => change_approval(&input),
            Some("close-children") => close_children(&input),
            other => Err(Error(format!("unknown rule {other:?}"))),
        }
    }
}

export_step!(Itil4);
