//! Host bindings generated from the single WIT source of truth in `sdk/wit`.

wasmtime::component::bindgen!({
    world: "step",
    path: "../../sdk/wit",
});

pub(crate) use usm::plugin::types as wit;

/// The WIT twin of an engine hook.
pub(crate) fn wit_hook(hook: usm_engine::Hook) -> wit::Hook {
    match hook {
        usm_engine::Hook::Create => wit::Hook::Create,
        usm_engine::Hook::Update => wit::Hook::Update,
        usm_engine::Hook::Transition => wit::Hook::Transition,
        usm_engine::Hook::Approval => wit::Hook::Approval,
        usm_engine::Hook::Sla => wit::Hook::Sla,
    }
}
