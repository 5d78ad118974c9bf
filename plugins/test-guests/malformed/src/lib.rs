//! Test guest: bypasses the SDK's types to return a patch that is not JSON.

use usm_sdk::__private::bindings::{Guest, Info, Input, Output, usm::plugin::types::Hook};

struct Malformed;

impl Guest for Malformed {
    fn describe() -> Info {
        Info {
            name: "malformed".into(),
            version: "0.1.0".into(),
            hooks: vec![Hook::Create],
            config_schema: None,
        }
    }

    fn run(_input: Input) -> Result<Output, String> {
        Ok(Output::Patch("{\"fields\": {\"priority\": ".into()))
    }
}

usm_sdk::__private::bindings::__export_step_world!(Malformed);

#[allow(unsafe_code)]
#[unsafe(link_section = "usm-plugin-api")]
#[used]
static API: [u8; 5] = *b"0.1.0";
