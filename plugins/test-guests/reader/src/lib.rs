//! Test guest: looks up the record named in `fields.lookup` and counts the domain's incidents,
//! through the host; records what it saw or the host's refusal.

use usm_sdk::{Error, Hook, Input, Output, Step, export_step, host, json};

struct Reader;

impl Step for Reader {
    const NAME: &'static str = "reader";
    const HOOKS: &'static [Hook] = &[Hook::Create];

    fn run(input: Input) -> Result<Output, Error> {
        let Some(id) = input.field_str("lookup") else {
            return Ok(Output::proceed());
        };
        host::log(host::Level::Info, &format!("looking up {id}"));
        let seen = match host::get_record(id) {
            Ok(Some(record)) => json!(record["title"]),
            Ok(None) => json!("not found"),
            Err(error) => json!(format!("refused: {error}")),
        };
        let count = match host::query(&json!({"kind": "incident"})) {
            Ok(records) => json!(records.len()),
            Err(error) => json!(format!("refused: {error}")),
        };
        Ok(Output::set_fields(
            json!({"seen": seen, "incidents": count, "now": host::now()}),
        ))
    }
}

export_step!(Reader);
