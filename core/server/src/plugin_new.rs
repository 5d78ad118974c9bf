//! `usm plugin new`: a module directory for a step in Rust, JavaScript or Python — manifest,
//! step source, build script and a fixture record — that builds and passes `usm plugin test` as
//! written. The templates are `sdk/templates`, embedded in the binary.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};

/// What to create.
#[derive(Debug, Clone, clap::Args)]
pub struct PluginNewArgs {
    /// The module and step id: lowercase letters, digits, '-' or '_', starting with a letter.
    pub name: String,
    /// The language the step is written in.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The directory to create [default: ./NAME]; it must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// usm-sdk's crate directory, for Rust (`sdk/rust` of a usm checkout) [default: the one this
    /// binary was built from, when it is still there].
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// The languages a plugin can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with usm-sdk, built by cargo for wasm32-wasip2.
    Rust,
    /// JavaScript, built by componentize-js (npm).
    Js,
    /// Python, built by componentize-py (PyPI).
    Python,
}

const WIT: &str = include_str!("../../../sdk/wit/usm-plugin.wit");
const MODULE_TOML: &str = include_str!("../../../sdk/templates/module.toml");
const FIXTURE: &str = include_str!("../../../sdk/templates/incident.json");

/// `(path in the new directory, template)`; every file is rendered.
fn templates(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let mut files = vec![
        ("module.toml", MODULE_TOML),
        ("fixtures/incident.json", FIXTURE),
    ];
    files.extend(match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../../sdk/templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../sdk/templates/rust/src/lib.rs"),
            ),
            (
                "build.sh",
                include_str!("../../../sdk/templates/rust/build.sh"),
            ),
            (
                ".gitignore",
                include_str!("../../../sdk/templates/rust/.gitignore"),
            ),
        ],
        Lang::Js => vec![
            (
                "package.json",
                include_str!("../../../sdk/templates/js/package.json"),
            ),
            ("step.js", include_str!("../../../sdk/templates/js/step.js")),
            (
                "build.sh",
                include_str!("../../../sdk/templates/js/build.sh"),
            ),
            (
                ".gitignore",
                include_str!("../../../sdk/templates/js/.gitignore"),
            ),
        ],
        Lang::Python => vec![
            (
                "pyproject.toml",
                include_str!("../../../sdk/templates/python/pyproject.toml"),
            ),
            (
                "app.py",
                include_str!("../../../sdk/templates/python/app.py"),
            ),
            (
                "build.sh",
                include_str!("../../../sdk/templates/python/build.sh"),
            ),
            (
                ".gitignore",
                include_str!("../../../sdk/templates/python/.gitignore"),
            ),
        ],
    });
    files
}

/// Files copied as they are: the SDK helper and the WIT contract.
fn verbatim(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => Vec::new(),
        Lang::Js => vec![
            ("usm.js", include_str!("../../../sdk/js/usm.js")),
            ("wit/usm-plugin.wit", WIT),
        ],
        Lang::Python => vec![
            ("usm.py", include_str!("../../../sdk/python/usm.py")),
            ("wit/usm-plugin.wit", WIT),
        ],
    }
}

/// Writes the new module directory and reports its files and the next command.
pub fn run(args: &PluginNewArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        usm_engine::valid_module_id(&args.name),
        "{:?} is not a module id: 1-64 lowercase letters, digits, '-' or '_', starting with a letter",
        args.name
    );
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("{} exists and is not a directory", dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(empty, "{} exists and is not empty", dir.display());
    }
    let sdk = match args.lang {
        Lang::Rust => sdk_path(args.sdk.as_deref())?.display().to_string(),
        Lang::Js | Lang::Python => String::new(),
    };
    let context = json!({
        "name": args.name,
        "lib": args.name.replace('-', "_"),
        "wasm": format!("{}.wasm", args.name),
        "sdk": sdk,
    });
    let mut environment = minijinja::Environment::new();
    environment.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()?,
    );
    let context = minijinja::value::Serde(&context);
    let mut written = Vec::new();
    for (path, template) in templates(args.lang) {
        let text = environment
            .render_str(template, context)
            .with_context(|| format!("the {path} template"))?;
        write(&dir, path, &text)?;
        written.push(path);
    }
    for (path, text) in verbatim(args.lang) {
        write(&dir, path, text)?;
        written.push(path);
    }
    written.sort_unstable();
    let shown = dir.display();
    Ok(json!({
        "dir": shown.to_string(),
        "files": written,
        "next": format!(
            "sh {shown}/build.sh && usm plugin test {shown} --record {shown}/fixtures/incident.json"
        ),
    }))
}

fn write(dir: &Path, relative: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The usm-sdk crate a Rust plugin depends on, as an absolute path.
fn sdk_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/rust");
    let path = given.unwrap_or(&built_from);
    anyhow::ensure!(
        path.join("Cargo.toml").is_file(),
        "{} is not usm-sdk's crate directory: pass --sdk PATH (sdk/rust of a usm checkout)",
        path.display()
    );
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}
