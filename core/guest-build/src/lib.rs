//! Used from build scripts: installs the `wasm32-wasip2` target when it is missing, builds the
//! `plugins/` workspace from source in release mode, and reports the components it produced, so
//! no compiled `.wasm` is ever committed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The target guests are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// One built component: the cargo package's library name and the file.
#[derive(Debug, Clone)]
pub struct Component {
    /// The library name, e.g. `guest_looper`.
    pub name: String,
    /// The `.wasm` file.
    pub path: PathBuf,
}

/// Builds every package of the plugins workspace and returns the components, sorted by name.
/// Prints `cargo:rerun-if-changed` lines for the sources it depends on.
pub fn build_plugins(plugins: &Path, sdk: &Path) -> Result<Vec<Component>, String> {
    watch(plugins, sdk)?;
    ensure_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(plugins)
        .args(["build", "--release", "--workspace", "--target", TARGET]);
    // Settings meant for the host build must not leak into the guest build.
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(variable);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo for the plugins workspace: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed ({status})", plugins.display()));
    }
    let dir = plugins.join("target").join(TARGET).join("release");
    let mut components = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            components.push(Component { name, path });
        }
    }
    components.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(components)
}

/// Writes `pub const NAME: &str = "path";` for each component, upper-cased.
pub fn constants(components: &[Component]) -> String {
    components
        .iter()
        .map(|c| {
            format!(
                "/// `{}`, built from `plugins/`.\npub const {}: &str = {:?};\n",
                c.name,
                c.name.to_uppercase(),
                c.path.display().to_string()
            )
        })
        .collect()
}

fn ensure_target() -> Result<(), String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let installed = libdir.status.success()
        && Path::new(String::from_utf8_lossy(&libdir.stdout).trim()).is_dir();
    if installed {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map_err(|e| format!("the {TARGET} target is missing and rustup cannot be run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`rustup target add {TARGET}` failed ({status})"))
    }
}

/// Rebuild when guest sources change; never watch `target/` (it changes on every build).
fn watch(plugins: &Path, sdk: &Path) -> Result<(), String> {
    for root in [plugins, sdk] {
        let entries = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            #[allow(clippy::print_stdout)] // build-script protocol
            {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Ok(())
}
