//! Builds the guest plugins from `plugins/` (installing the wasm32-wasip2 target if needed) and
//! generates a constant with the path of each component.

use std::path::Path;

fn main() {
    // Read when the script runs, not baked in when it was compiled: cargo reuses a compiled
    // build script for a checkout elsewhere that shares the target directory (a worktree).
    let manifest = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest
        .parent()
        .expect("tests/ lives in the repository root");
    let mut components = usm_guest_build::build_plugins(&root.join("plugins"), &root.join("sdk"))
        .unwrap_or_else(|error| panic!("cannot build the guest plugins: {error}"));
    components.extend(
        usm_guest_build::build_script_plugins(&root.join("plugins"))
            .unwrap_or_else(|error| panic!("cannot build the example plugins: {error}")),
    );
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(
        Path::new(&out).join("guests.rs"),
        usm_guest_build::constants(&components),
    )
    .expect("OUT_DIR is writable");
}
