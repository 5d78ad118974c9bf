//! Test guest: allocates the number of MiB the record asks for (all it can by default).

use usm_sdk::{Error, Hook, Input, Output, Step, export_step, json};

struct MemoryBomb;

impl Step for MemoryBomb {
    const NAME: &'static str = "memory-bomb";
    const HOOKS: &'static [Hook] = &[Hook::Create];

    fn run(input: Input) -> Result<Output, Error> {
        let mib = input
            .field("mib")
            .and_then(|v| v.as_u64())
            .unwrap_or(u64::MAX);
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        for _ in 0..mib {
            blocks.push(std::hint::black_box(vec![1u8; 1024 * 1024]));
        }
        Ok(Output::set_fields(json!({"allocated_mib": blocks.len()})))
    }
}

export_step!(MemoryBomb);
