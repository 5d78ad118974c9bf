//! Test guest: built as if for usm:plugin 9.0.0, which the server must refuse before
//! instantiating it.

use usm_sdk::{Error, Hook, Input, Output, Step};

struct WrongApi;

impl Step for WrongApi {
    const NAME: &'static str = "wrong-api";
    const HOOKS: &'static [Hook] = &[Hook::Create];

    fn run(_input: Input) -> Result<Output, Error> {
        Ok(Output::proceed())
    }
}

usm_sdk::__export_step_with_api!(WrongApi, "9.0.0");
