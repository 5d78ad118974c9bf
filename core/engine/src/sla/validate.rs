//! Agreements are checked when written: a policy the SLA clocks could not use is refused with
//! the field at fault, instead of being skipped with a log line when the clocks load it.

use usm_model::Record;

use super::Policy;
use crate::EngineError;

/// Refuses an agreement record whose SLA policy is unusable (`422 invalid_fields`, `field` the
/// JSON pointer); other kinds pass.
pub fn agreement(record: &Record) -> Result<(), EngineError> {
    if record.kind.as_str() != "agreement" {
        return Ok(());
    }
    Policy::from_agreement(record)
        .map(drop)
        .map_err(|error| EngineError::InvalidFields {
            kind: record.kind.to_string(),
            errors: vec![error],
        })
}
