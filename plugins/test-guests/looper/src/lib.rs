//! Test guest: never returns; the epoch deadline must stop it.

use usm_sdk::{Error, Hook, Input, Output, Step, export_step};

struct Looper;

impl Step for Looper {
    const NAME: &'static str = "looper";
    const HOOKS: &'static [Hook] = &[Hook::Create, Hook::Update];

    fn run(input: Input) -> Result<Output, Error> {
        // Obeyed when the record asks for a bounded loop; violated otherwise.
        let bound = input
            .field("spin")
            .and_then(|v| v.as_u64())
            .unwrap_or(u64::MAX);
        let mut counter = 0u64;
        while counter < bound {
            counter = std::hint::black_box(counter + 1);
        }
        Ok(Output::proceed())
    }
}

export_step!(Looper);
