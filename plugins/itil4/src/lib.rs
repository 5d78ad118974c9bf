//! ITIL 4 practices as usm pipeline rules. One component, several rules; the manifest picks the
//! rule per step with `config.rule`:
//! - `priority`: incident priority P1–P5 from impact × urgency (matrix in config); the module
//!   owns `priority`, so no client sets it. The priorities in `major_priorities` (P1 by
//!   default) suggest a major incident.
//! - `major-incident`: an agent declares a major incident (`major_incident`) naming its manager;
//!   it is not closed without a post-incident review.
//! - `change-approval`: before `implement`, a change needs what its type needs, counted over
//!   approvals that still hold (no material edit since) by distinct approvers.
//! - `change-close`: a closed change has an outcome; a failed or emergency one a review.
//! - `change-model-frozen`: a published change model is not edited.
//! - `close-children`: an incident cannot close while a record linked to it as its child
//!   (`parent` link) is still open.

use std::collections::BTreeMap;

use usm_sdk::{Error, Hook, Input, Output, Step, Value, export_step, host, json};

struct Itil4;

fn filled(input: &Input, field: &str) -> bool {
    match input.field(field) {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

/// Each approver's latest decision among the approvals that still hold.
fn decisions(input: &Input) -> BTreeMap<&str, &Value> {
    let mut latest = BTreeMap::new();
    for approval in input.context["approvals"].as_array().into_iter().flatten() {
        if approval["current"] == false {
            continue;
        }
        if let Some(actor) = approval["actor"].as_str() {
            latest.insert(actor, approval);
        }
    }
    latest
}

fn priority(input: &Input) -> Result<Output, Error> {
    let (Some(impact), Some(urgency)) = (input.field_str("impact"), input.field_str("urgency"))
    else {
        // Without both, there is no priority: whatever was computed before no longer holds.
        if input.field("priority").is_some() || input.field("major_incident_suggested").is_some() {
            return Ok(Output::set_fields(
                json!({"priority": null, "major_incident_suggested": null}),
            ));
        }
        return Ok(Output::proceed());
    };
    let Some(priority) = input.config["matrix"][impact][urgency].as_str() else {
        return Ok(Output::reject(
            "unknown_priority",
            format!("the priority matrix has no entry for impact {impact} and urgency {urgency}"),
        ));
    };
    // Which priorities suggest a major incident is the practice's to configure (P1 by default).
    let suggested = match input.config["major_priorities"].as_array() {
        Some(listed) => listed.iter().any(|p| p == priority),
        None => priority == "P1",
    };
    if input.field_str("priority") == Some(priority)
        && input.field("major_incident_suggested") == Some(&json!(suggested))
    {
        return Ok(Output::proceed());
    }
    Ok(Output::set_fields(
        json!({"priority": priority, "major_incident_suggested": suggested}),
    ))
}

fn major_incident(input: &Input) -> Result<Output, Error> {
    if input.field("major_incident") != Some(&json!(true)) {
        return Ok(Output::proceed());
    }
    if input.transition_to() == Some("closed") {
        if filled(input, "post_incident_review") {
            return Ok(Output::proceed());
        }
        return Ok(Output::reject(
            "post_incident_review_required",
            "a major incident is closed only after its post-incident review (post_incident_review)",
        ));
    }
    if input.transition_to().is_none() && !filled(input, "major_incident_manager") {
        return Ok(Output::reject(
            "major_incident_manager_required",
            "declaring a major incident names its manager (major_incident_manager)",
        ));
    }
    Ok(Output::proceed())
}

/// Whether `id` names a published change model of the change's domain.
fn published_model(input: &Input, id: &str) -> Result<bool, Error> {
    let Some(model) = host::get_record(id)? else {
        return Ok(false);
    };
    Ok(model["kind"] == "change_model"
        && model["state"] == "published"
        && model["domain"] == input.record["domain"])
}

fn change_approval(input: &Input) -> Result<Output, Error> {
    if input.transition_to() != Some("implement") {
        return Ok(Output::proceed());
    }
    let change_type = input.field_str("change_type").unwrap_or("normal");
    if change_type == "standard" {
        let Some(model) = input.field_str("change_model") else {
            return Ok(Output::reject(
                "change_model_required",
                "a standard change is pre-authorised only by the published change model it names (change_model)",
            ));
        };
        if published_model(input, model)? {
            return Ok(Output::proceed());
        }
        return Ok(Output::reject(
            "change_model_required",
            format!("{model} is not a published change model of this domain"),
        ));
    }
    let missing: Vec<&str> = ["risk", "plan", "backout_plan"]
        .into_iter()
        .filter(|f| !filled(input, f))
        .collect();
    if !missing.is_empty() {
        return Ok(Output::reject(
            "change_not_ready",
            format!(
                "a {change_type} change needs {} before implement",
                missing.join(", ")
            ),
        ));
    }
    let decisions = decisions(input);
    if let Some((actor, _)) = decisions.iter().find(|(_, a)| a["decision"] == "reject") {
        return Ok(Output::reject(
            "change_rejected",
            format!(
                "{actor} rejected this change; revise it (a material edit) and seek approval again"
            ),
        ));
    }
    let approvers: Vec<&&Value> = decisions.values().collect();
    if change_type == "emergency" {
        let listed = |key: &str| -> Vec<&str> {
            input.config[key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default()
        };
        let (groups, roles) = (listed("emergency_groups"), listed("emergency_roles"));
        let holds = |approval: &Value, key: &str, wanted: &[&str]| {
            approval[key].as_array().is_some_and(|held| {
                held.iter()
                    .any(|h| h.as_str().is_some_and(|h| wanted.contains(&h)))
            })
        };
        let authorised = approvers
            .iter()
            .any(|a| holds(a, "groups", &groups) || holds(a, "roles", &roles));
        if authorised {
            return Ok(Output::proceed());
        }
        return Ok(Output::reject(
            "emergency_approval_required",
            format!(
                "an emergency change needs an approval by a member of {} before implement",
                groups
                    .iter()
                    .chain(&roles)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ));
    }
    let needed = input.config["min_approvals"].as_u64().unwrap_or(1);
    let approved = approvers.len() as u64;
    if approved >= needed {
        Ok(Output::proceed())
    } else {
        Ok(Output::reject(
            "approval_required",
            format!(
                "a normal change needs approvals by {needed} distinct approver(s) of its current content before implement; it has {approved}"
            ),
        ))
    }
}

fn change_close(input: &Input) -> Result<Output, Error> {
    if input.transition_to() != Some("closed") {
        return Ok(Output::proceed());
    }
    let Some(outcome) = input.field_str("outcome") else {
        return Ok(Output::reject(
            "outcome_required",
            "a change is closed with its outcome (successful, failed or partially_successful)",
        ));
    };
    let emergency = input.field_str("change_type") == Some("emergency");
    if (outcome == "failed" || emergency) && !filled(input, "review") {
        return Ok(Output::reject(
            "review_required",
            "a failed or emergency change is closed only after its review (review)",
        ));
    }
    Ok(Output::proceed())
}

fn change_model_frozen(input: &Input) -> Result<Output, Error> {
    if input.state() == "draft" {
        return Ok(Output::proceed());
    }
    Ok(Output::reject(
        "change_model_published",
        "a published change model is not edited: retire it and publish a new one",
    ))
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
    const VERSION: &'static str = "1.1.0";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Update, Hook::Transition];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "required": ["rule"], "properties": {
            "rule": {"enum": ["priority", "major-incident", "change-approval", "change-close",
                "change-model-frozen", "close-children"]},
            "matrix": {"type": "object", "additionalProperties": {"type": "object",
                "additionalProperties": {"type": "string", "pattern": "^P[1-5]$"}}},
            "min_approvals": {"type": "integer", "minimum": 1},
            "major_priorities": {"type": "array", "items": {"type": "string", "pattern": "^P[1-5]$"}},
            "emergency_groups": {"type": "array", "items": {"type": "string"}},
            "emergency_roles": {"type": "array", "items": {"type": "string"}}}}"#,
    );

    fn run(input: Input) -> Result<Output, Error> {
        match input.config["rule"].as_str() {
            Some("priority") => priority(&input),
            Some("major-incident") => major_incident(&input),
            Some("change-approval") => change_approval(&input),
            Some("change-close") => change_close(&input),
            Some("change-model-frozen") => change_model_frozen(&input),
            Some("close-children") => close_children(&input),
            other => Err(Error(format!("unknown rule {other:?}"))),
        }
    }
}

export_step!(Itil4);
