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

/// Builds the example plugins written in other languages: every `examples/*/build.sh` under
/// `plugins` runs (fetching its pinned toolchain from npm or PyPI the first time) and must leave
/// `priority.wasm`-style components named in its `module.toml`. Returns one component per
/// directory, named after it (`priority-js` → `priority_js`), at the `.wasm` it built.
pub fn build_script_plugins(plugins: &Path) -> Result<Vec<Component>, String> {
    let examples = plugins.join("examples");
    let mut components = Vec::new();
    for entry in std::fs::read_dir(&examples).map_err(|e| format!("{}: {e}", examples.display()))? {
        let dir = entry.map_err(|e| e.to_string())?.path();
        let script = dir.join("build.sh");
        if !script.is_file() {
            continue;
        }
        let output = Command::new("sh")
            .arg("build.sh")
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let wasm = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.extension().is_some_and(|e| e == "wasm"))
            .ok_or_else(|| format!("{} built no .wasm in {}", script.display(), dir.display()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().replace('-', "_"))
            .unwrap_or_default();
        components.push(Component { name, path: wasm });
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

/// Rebuild when guest sources change. Watches files one by one, never what a build writes:
/// build directories (`target/`, `node_modules/`, hidden ones such as `.venv/`) and `.wasm`
/// files, or every build would make the next one run again.
fn watch(plugins: &Path, sdk: &Path) -> Result<(), String> {
    for root in [plugins, sdk] {
        watch_tree(root)?;
    }
    Ok(())
}

fn watch_tree(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let generated = name.starts_with('.')
            || ["target", "node_modules", "__pycache__"].contains(&name.as_ref())
            || name.ends_with(".wasm");
        if generated {
            continue;
        }
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            watch_tree(&path)?;
        } else {
            #[allow(clippy::print_stdout)] // build-script protocol
            {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Ok(())
}
