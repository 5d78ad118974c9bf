//! {{ name }}: refuses incidents without a category and routes the rest to the team the module
//! config names for it.

use usm_sdk::{Error, Hook, Input, Output, Step, export_step, json};

struct Route;

impl Step for Route {
    const NAME: &'static str = "{{ name }}";
    const HOOKS: &'static [Hook] = &[Hook::Create];

    fn run(input: Input) -> Result<Output, Error> {
        let Some(category) = input.field_str("category") else {
            return Ok(Output::reject("missing_category", "choose a category for the incident"));
        };
        // An `Err` fails the write with its message, as a thrown error does in JavaScript.
        let teams = input.config["teams"]
            .as_object()
            .ok_or_else(|| Error("config: teams must map categories to groups".into()))?;
        let team = teams.get(category).and_then(|t| t.as_str()).unwrap_or("service-desk");
        Ok(Output::set_fields(json!({ "assignment_group": team })))
    }
}

export_step!(Route);
