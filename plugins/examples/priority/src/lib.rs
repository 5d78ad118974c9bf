//! Example usm step: sets an incident's `priority` (P1–P5) from its `impact` and `urgency`
//! through a matrix given in the module config, and flags P1 as a major incident.

use usm_sdk::{Error, Hook, Input, Output, Step, export_step, json};

/// The priority step.
struct Priority;

/// `matrix[impact][urgency]` → priority, e.g. `matrix.high.high = "P1"`.
#[derive(serde::Deserialize)]
struct Config {
    matrix: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl Step for Priority {
    const NAME: &'static str = "priority";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Update];
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "required": ["matrix"], "properties": {"matrix": {"type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^P[1-5]$"}}}}}"#,
    );

    fn run(input: Input) -> Result<Output, Error> {
        let config: Config = input.config()?;
        let (Some(impact), Some(urgency)) = (input.field_str("impact"), input.field_str("urgency"))
        else {
            return Ok(Output::proceed());
        };
        let Some(priority) = config.matrix.get(impact).and_then(|row| row.get(urgency)) else {
            return Ok(Output::reject(
                "unknown_priority",
                format!("no priority is defined for impact {impact} and urgency {urgency}"),
            ));
        };
        if input.field_str("priority") == Some(priority.as_str()) {
            return Ok(Output::proceed());
        }
        Ok(Output::set_fields(json!({
            "priority": priority,
            "major_incident": priority == "P1",
        })))
    }
}

export_step!(Priority);
