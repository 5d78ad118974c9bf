//! Test guest: panics (a trap) unless the record says not to.

use usm_sdk::{Error, Hook, Input, Output, Step, export_step};

struct Trap;

impl Step for Trap {
    const NAME: &'static str = "trap";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Update, Hook::Transition, Hook::Approval];

    fn run(input: Input) -> Result<Output, Error> {
        if input.field_str("category") == Some("calm") {
            return Ok(Output::proceed());
        }
        panic!("deliberate failure in the trap guest");
    }
}

export_step!(Trap);
