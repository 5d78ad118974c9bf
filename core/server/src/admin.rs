//! `usm module …`: the admin CLI, a thin client of the HTTP admin API.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};

/// Module administration commands.
#[derive(Debug, clap::Subcommand)]
pub enum ModuleCommand {
    /// Install a module from a directory (packed here) or a .tar.gz bundle; upgrades the installed
    /// module of the same id when the version is newer.
    Install {
        /// A module directory or a .tar.gz bundle.
        path: PathBuf,
    },
    /// List installed modules.
    List,
    /// Enable a module in domains.
    Enable {
        /// The module id.
        id: String,
        /// A domain (repeat for several).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// A capability to grant (repeat for several); replaces earlier grants.
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// Disable a module in domains.
    Disable {
        /// The module id.
        id: String,
        /// A domain (repeat for several).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
    },
    /// Remove a module that is enabled nowhere (disable it first).
    Remove {
        /// The module id.
        id: String,
    },
    /// What would a change do? Replays the domains' recent creates with a module (a directory
    /// or bundle) installed and enabled there, `--enable ID` or `--disable ID`; writes nothing.
    Preview {
        /// A module directory or a .tar.gz bundle (or give --enable or --disable).
        #[arg(required_unless_present_any = ["enable", "disable"], conflicts_with_all = ["enable", "disable"])]
        path: Option<PathBuf>,
        /// Preview enabling this installed module.
        #[arg(long, conflicts_with = "disable")]
        enable: Option<String>,
        /// Preview disabling this installed module.
        #[arg(long)]
        disable: Option<String>,
        /// A domain whose records to replay (repeat for several).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Replay the most recent this many records (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Pack a module directory into the .tar.gz bundle the server accepts, locally; a
    /// `build.sh` in the directory runs first (to build its components).
    Pack {
        /// The module directory (with module.toml).
        dir: PathBuf,
        /// Where to write the bundle (default: ID-VERSION.tar.gz here).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

/// The name of the script `usm module pack` runs in a module directory before packing it.
pub const BUILD_SCRIPT: &str = "build.sh";

/// Packs the module directory `dir` into a bundle file and describes what it wrote.
pub fn pack(dir: &Path, output: Option<&Path>) -> anyhow::Result<Value> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let script = dir.join(BUILD_SCRIPT);
    if script.is_file() {
        let status = std::process::Command::new("sh")
            .arg(BUILD_SCRIPT)
            .current_dir(dir)
            .status()
            .with_context(|| format!("cannot run {}", script.display()))?;
        anyhow::ensure!(status.success(), "{} failed ({status})", script.display());
    }
    let mut files = usm_engine::Module::read_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    files.remove(BUILD_SCRIPT);
    let manifest = usm_engine::peek_manifest(&files).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = usm_engine::bundle::pack(&files).map_err(|e| anyhow::anyhow!(e))?;
    let output = output.map_or_else(
        || PathBuf::from(format!("{}-{}.tar.gz", manifest.id, manifest.version)),
        Path::to_path_buf,
    );
    std::fs::write(&output, &bytes)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(json!({
        "bundle": output.display().to_string(),
        "id": manifest.id,
        "version": manifest.version.to_string(),
        "files": files.keys().collect::<Vec<_>>(),
        "bytes": bytes.len(),
    }))
}

/// Token administration commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints its secret once.
    Create {
        /// The principal the token acts as.
        #[arg(long)]
        name: String,
        /// A role: admin, agent, requester or automation (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A domain the roles apply in (repeat; all domains when absent).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Expiry, RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List tokens (without secrets).
    List,
    /// Revoke a token by id.
    Revoke {
        /// The token id.
        id: String,
    },
}

/// Where the server is, and who is asking.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// Base URL of the usm server.
    #[arg(long, env = "USM_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin bearer token.
    #[arg(long, env = "USM_TOKEN")]
    pub token: Option<String>,
}

fn bundle(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.is_dir() {
        let files = usm_engine::Module::read_dir(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        usm_engine::bundle::pack(&files).map_err(|e| anyhow::anyhow!(e))
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Runs one token command against the server at `remote`.
pub fn run_token(remote: &Remote, command: TokenCommand) -> anyhow::Result<Value> {
    let base = format!("{}/api/v1/tokens", remote.url.trim_end_matches('/'));
    send(remote, move |client| match command {
        TokenCommand::Create {
            name,
            roles,
            domains,
            expires_at,
        } => {
            let mut body = json!({"name": name, "roles": roles});
            if !domains.is_empty() {
                body["domains"] = json!(domains);
            }
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            Ok(client.post(&base).json(&body))
        }
        TokenCommand::List => Ok(client.get(&base)),
        TokenCommand::Revoke { id } => Ok(client.delete(format!("{base}/{id}"))),
    })
}

/// Sends one request built by `build` with the admin token and returns the JSON answer.
fn send(
    remote: &Remote,
    build: impl FnOnce(&reqwest::Client) -> anyhow::Result<reqwest::RequestBuilder>,
) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let token = remote.token.clone().unwrap_or_default();
        let response = build(&client)?
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", remote.url))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            anyhow::bail!(
                "{status}: {} {}",
                body["detail"].as_str().unwrap_or("request failed"),
                body["field"]
                    .as_str()
                    .map(|f| format!("({f})"))
                    .unwrap_or_default()
            )
        }
    })
}

/// `sysexits.h`: a temporary failure the MTA retries, and a message the MTA bounces.
const EX_TEMPFAIL: i32 = 75;
const EX_DATAERR: i32 = 65;

/// Posts one raw message to the server's inbound mailbox for `domain`; the outcome, or the
/// exit code an MTA reads and why.
pub fn mailgate(
    remote: &Remote,
    domain: &str,
    kind: &str,
    message: Vec<u8>,
) -> Result<Value, (i32, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (EX_TEMPFAIL, e.to_string()))?;
    runtime.block_on(async {
        let mut url = url::Url::parse(&format!(
            "{}/api/v1/inbound/email",
            remote.url.trim_end_matches('/')
        ))
        .map_err(|e| (EX_DATAERR, format!("--url: {e}")))?;
        url.query_pairs_mut()
            .append_pair("domain", domain)
            .append_pair("kind", kind);
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(remote.token.clone().unwrap_or_default())
            .header("content-type", "message/rfc822")
            .body(message)
            .send()
            .await
            .map_err(|e| (EX_TEMPFAIL, format!("cannot reach {}: {e}", remote.url)))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let why = format!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or("request failed")
        );
        // The server's trouble, or a limit of the moment: worth another try.
        let temporary = status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT;
        Err((if temporary { EX_TEMPFAIL } else { EX_DATAERR }, why))
    })
}

/// Runs one module command against the server at `remote`.
pub fn run(remote: &Remote, command: ModuleCommand) -> anyhow::Result<Value> {
    let base = format!("{}/api/v1/modules", remote.url.trim_end_matches('/'));
    send(remote, move |client| {
        Ok(match command {
            ModuleCommand::Install { path } => client
                .post(&base)
                .header("content-type", "application/gzip")
                .body(bundle(&path)?),
            ModuleCommand::List => client.get(&base),
            ModuleCommand::Pack { .. } => anyhow::bail!("packing needs no server: call pack"),
            ModuleCommand::Enable {
                id,
                domains,
                grants,
            } => {
                let mut body = json!({"domains": domains});
                if !grants.is_empty() {
                    body["grant"] = json!(grants);
                }
                client.post(format!("{base}/{id}/enable")).json(&body)
            }
            ModuleCommand::Disable { id, domains } => client
                .post(format!("{base}/{id}/disable"))
                .json(&json!({"domains": domains})),
            ModuleCommand::Remove { id } => client.delete(format!("{base}/{id}")),
            ModuleCommand::Preview {
                path,
                enable,
                disable,
                domains,
                limit,
            } => {
                let mut query = vec![("domains", domains.join(",")), ("limit", limit.to_string())];
                query.extend(enable.map(|id| ("module", id)));
                query.extend(disable.map(|id| ("without", id)));
                let url = url::Url::parse_with_params(&format!("{base}/preview"), &query)
                    .context("the server URL")?;
                let request = client.post(url);
                match path {
                    Some(path) => request
                        .header("content-type", "application/gzip")
                        .body(bundle(&path)?),
                    None => request,
                }
            }
        })
    })
}
