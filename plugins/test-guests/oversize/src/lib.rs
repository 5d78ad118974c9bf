//! Test guest: returns a patch of the size the record asks for, in KiB (2 MiB by default).

use usm_sdk::{Error, Hook, Input, Output, Step, export_step, json};

struct Oversize;

impl Step for Oversize {
    const NAME: &'static str = "oversize";
    const HOOKS: &'static [Hook] = &[Hook::Create];

    fn run(input: Input) -> Result<Output, Error> {
        let kib = input.field("kib").and_then(|v| v.as_u64()).unwrap_or(2048);
        let text = "x".repeat(usize::try_from(kib * 1024).unwrap_or(usize::MAX));
        Ok(Output::set_fields(json!({"description": text})))
    }
}

export_step!(Oversize);
