//! Builds the bundled modules into the binary: the rhai modules under `scripts/` as they are, and
//! the framework plugins under `plugins/` compiled from source to wasm32-wasip2 components.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// Bundled modules: the directory, and for plugin modules the component the manifest names.
const BUNDLED: &[(&str, Option<(&str, &str)>)] = &[
    ("scripts/usm-core", None),
    ("plugins/itil4", Some(("itil4.wasm", "itil4"))),
    ("plugins/cobit2019", Some(("cobit2019.wasm", "cobit2019"))),
    ("plugins/iso20000", Some(("iso20000.wasm", "iso20000"))),
    ("scripts/hr", None),
    ("scripts/facilities", None),
];

fn files_under(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(root, &path, out);
        } else {
            let name = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((name, path));
        }
    }
}

fn main() {
    // Read when the script runs, not baked in when it was compiled: cargo reuses a compiled
    // build script for a checkout elsewhere that shares the target directory (a worktree).
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("core/server lives two levels below the repository root");
    let components = usm_guest_build::build_plugins(&root.join("plugins"), &root.join("sdk"))
        .unwrap_or_else(|error| panic!("cannot build the bundled plugins: {error}"));
    let mut code = String::from(
        "/// Modules built into the binary.\npub const BUNDLED: &[BundledModule] = &[\n",
    );
    for (dir, component) in BUNDLED {
        let dir_path = root.join(dir);
        println!("cargo:rerun-if-changed={}", dir_path.display());
        let mut files = Vec::new();
        match component {
            None => files_under(&dir_path, &dir_path, &mut files),
            Some((file, name)) => {
                files.push(("module.toml".to_owned(), dir_path.join("module.toml")));
                let built = components
                    .iter()
                    .find(|c| c.name == *name)
                    .unwrap_or_else(|| panic!("plugins/ built no {name}.wasm"));
                files.push(((*file).to_owned(), built.path.clone()));
            }
        }
        let id = Path::new(dir)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a directory name");
        let _ = writeln!(code, "    BundledModule {{ dir: {id:?}, files: &[");
        for (name, path) in files {
            let _ = writeln!(
                code,
                "        ({name:?}, include_bytes!({:?})),",
                path.display().to_string()
            );
        }
        let _ = writeln!(code, "    ] }},");
    }
    code.push_str("];\n");
    // Automations: `<id>.toml` (description, trigger, domains, config) with `<id>.rhai`.
    let automations = root.join("scripts/automations");
    println!("cargo:rerun-if-changed={}", automations.display());
    code.push_str("/// Automations built into the binary: (id, definition TOML, script).\npub const BUNDLED_AUTOMATIONS: &[(&str, &str, &str)] = &[\n");
    let mut definitions: Vec<PathBuf> = std::fs::read_dir(&automations)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    definitions.sort();
    for definition in definitions
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let id = definition
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a file name");
        let script = definition.with_extension("rhai");
        assert!(
            script.is_file(),
            "{} has no {}",
            definition.display(),
            script.display()
        );
        let _ = writeln!(
            code,
            "    ({id:?}, include_str!({:?}), include_str!({:?})),",
            definition.display().to_string(),
            script.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out).join("bundled.rs"), code).expect("OUT_DIR is writable");
}
