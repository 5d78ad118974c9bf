//! Test guest: an after-step that creates a task linked to the record (its parent), after
//! busy-waiting `config.delay_ms` by the host clock.

use usm_sdk::{Effect, Error, Hook, Input, Output, Step, export_step, host, json};

struct FollowUp;

impl Step for FollowUp {
    const NAME: &'static str = "follow-up";
    const HOOKS: &'static [Hook] = &[Hook::Create];

    fn run(input: Input) -> Result<Output, Error> {
        let delay = input
            .config
            .get("delay_ms")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let until = host::now() + delay;
        while host::now() < until {
            std::hint::spin_loop();
        }
        let title = format!("Follow up on {}", input.id().unwrap_or("?"));
        Ok(Output::effects([Effect::create_record(
            "task",
            &title,
            json!({}),
            Some("parent"),
        )]))
    }
}

export_step!(FollowUp);
