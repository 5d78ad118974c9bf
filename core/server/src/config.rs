use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::{
    Figment,
    providers::{Env, Format as _, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The server's configuration, merged from defaults, a TOML file, `USM_*` variables and flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub addr: String,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// The store's database: `postgres://user@host:port/database` keeps records in PostgreSQL,
    /// where every node naming the same database shares them; absent, the embedded store in
    /// `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_url: Option<String>,
    /// A file holding the database password, so that it stays out of `store_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_password_file: Option<PathBuf>,
    /// PEM certificates of the CAs the database's certificate must chain to when `store_url`
    /// says `sslmode=require` (the Mozilla roots when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_ca_file: Option<PathBuf>,
    /// Most database connections this node keeps open.
    pub store_pool_size: usize,
    /// Seconds a node's lease on an outbox consumer outlives its last renewal: the longest the
    /// other nodes sharing the database wait to take over the work of a node that died.
    pub store_lease_secs: u64,
    /// Seconds a web console session lasts from sign-in.
    pub console_session_secs: u64,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter, in `RUST_LOG` syntax.
    pub log_level: String,
    /// HTTP worker threads; one per core when absent.
    pub workers: Option<usize>,
    /// Largest accepted request body, in bytes (attachments have their own limit).
    pub max_body_bytes: usize,
    /// Longest request target (path and query), in bytes; longer is answered `414`.
    pub max_url_bytes: usize,
    /// Most request header lines; more are answered `431`.
    pub max_headers: usize,
    /// Most request header bytes (names, values, separators); more are answered `431`.
    pub max_header_bytes: usize,
    /// Largest attachment, in bytes.
    pub attachment_max_bytes: u64,
    /// Most bytes one record's attachments hold in all; an upload past it is answered `409`.
    pub attachment_max_bytes_per_record: u64,
    /// Business minutes (of the record's SLA calendar) after which a resolved record its
    /// requester has not answered closes; 0 never.
    pub auto_close_after_business_minutes: f64,
    /// How old an attachment blob no record references must be before the pruner removes it
    /// (an upload's blob is written before the write that references it commits).
    pub attachment_grace_secs: u64,
    /// Seconds a request body may send nothing before the request fails with `408`.
    pub body_timeout_secs: u64,
    /// Acknowledge writes only once flushed to disk.
    pub durable_acks: bool,
    /// The store's page cache, in MiB (sled counts on-disk bytes; resident memory under write
    /// bursts measured at two to three times this, see BENCHMARKS.md).
    pub cache_mib: u64,
    /// Service domains records may live in.
    pub domains: Vec<String>,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Every `/api/v1` route needs a bearer token; turn off only for local experiments.
    pub auth_required: bool,
    /// The admin token's secret, chosen by the operator (`USM_ADMIN_TOKEN`); created on first
    /// use. Without it (and without `admin_token_file`), a fresh data directory gets a random
    /// admin token, printed once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// A file holding the admin token's secret (an alternative to `admin_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// `/healthz` answers without a token.
    pub public_health: bool,
    /// `/metrics` (Prometheus) answers without a token.
    pub public_metrics: bool,
    /// A change of a record (edit, transition, approval) must carry `If-Match`; without it the
    /// answer is `428 precondition_required`.
    pub require_if_match: bool,
    /// Requests per second allowed per principal, and per client address for requests without
    /// a valid token (0: no limit).
    pub rate_limit_per_second: u32,
    /// Requests a principal may send at once before the per-second rate applies.
    pub rate_limit_burst: u32,
    /// Install the modules built into the binary (usm-core, itil4, cobit2019, iso20000, hr,
    /// facilities) and, on a fresh data directory, enable the default mix.
    pub bundled_modules: bool,
    /// On a fresh data directory, create and activate a standard service agreement (SLA targets
    /// per priority, Monday–Friday 08:00–18:00 UTC) in every domain.
    pub default_agreements: bool,
    /// First wait before a failed webhook delivery is retried, in milliseconds (doubled per
    /// attempt, at most a minute).
    pub webhook_retry_base_ms: u64,
    /// Consecutive budget failures of a step's own making (CPU time, memory) that suspend it;
    /// 0 turns the circuit breaker off.
    pub breaker_trip_after: u32,
    /// Seconds a suspended step fails fast before one call may try again.
    pub breaker_suspension_secs: u64,
    /// Client writes running their pipelines at once; the number of cores when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_concurrency: Option<usize>,
    /// Client writes that may wait for a turn; more are answered `503` at once.
    pub pipeline_queue: usize,
    /// Longest a write waits for its turn before it is answered `503`, in milliseconds.
    pub pipeline_queue_wait_ms: u64,
    /// Networks webhooks may deliver to besides public addresses, as CIDRs (`10.0.0.0/8`,
    /// `::1/128`); `USM_WEBHOOK_ALLOWED_NETWORKS` takes them comma-separated. Loopback, private,
    /// link-local and unique-local destinations are refused unless listed here.
    #[serde(deserialize_with = "comma_list")]
    pub webhook_allowed_networks: Vec<String>,
    /// Where notifications are mailed: `smtp://host:port`, `smtp://host:port?tls=required`
    /// (STARTTLS) or `smtps://host:port`, optionally with `user:password@`. Without it nothing is
    /// mailed (the server says so once at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
    /// The sender of notifications, e.g. `Service desk <desk@example.org>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_from: Option<String>,
    /// Mail from an address no person has: `refuse` it (the MTA bounces it) or `create` the
    /// person, as a requester of the mailbox's domain.
    pub inbound_unknown_senders: String,
    /// Largest message `POST /api/v1/inbound/email` takes, in bytes.
    pub inbound_max_bytes: usize,
    /// A file holding the SMTP password of the user in `smtp_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_password_file: Option<PathBuf>,
    /// Seconds an `Idempotency-Key` stays bound to the record it created; pruned after.
    pub idempotency_retention_secs: u64,
    /// Seconds an outbox event is kept once every consumer has passed it (a webhook delivery can
    /// be redone while its event is kept).
    pub outbox_retention_secs: u64,
    /// Seconds between two prunings of consumed outbox events and expired idempotency keys.
    pub prune_interval_secs: u64,
    /// Module directories to install (or upgrade) at startup, and where to enable them.
    #[serde(default)]
    pub modules: Vec<ModuleConfig>,
    /// Compiled components shared with the other servers of this process that hold a clone,
    /// so each component is compiled once per process; set by programs that start several
    /// servers (the end-to-end tests), never read from a file or the environment.
    #[serde(skip)]
    pub shared_artifacts: Option<usm_plugin_host::SharedArtifacts>,
}

/// A list given as a TOML array or as one comma-separated string (how environment variables
/// carry lists).
fn comma_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(match List::deserialize(deserializer)? {
        List::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
        List::Many(items) => items,
    })
}

/// A module directory to load at startup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// The directory holding `module.toml`.
    pub path: PathBuf,
    /// Domains whose pipelines get the module's steps.
    pub domains: Vec<String>,
    /// Capabilities granted to the module; only those its manifest asks for take effect.
    #[serde(default)]
    pub grant: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            store_url: None,
            store_password_file: None,
            store_ca_file: None,
            store_pool_size: 16,
            store_lease_secs: 10,
            console_session_secs: 8 * 3600,
            log_format: LogFormat::Human,
            log_level: "info".into(),
            workers: None,
            max_body_bytes: 1024 * 1024,
            max_url_bytes: 8 * 1024,
            max_headers: 64,
            max_header_bytes: 32 * 1024,
            attachment_max_bytes: 25 * 1024 * 1024,
            attachment_max_bytes_per_record: 250 * 1024 * 1024,
            auto_close_after_business_minutes: 2400.0,
            attachment_grace_secs: 3600,
            body_timeout_secs: 10,
            durable_acks: true,
            cache_mib: 256,
            domains: vec!["it".into(), "hr".into(), "facilities".into()],
            shutdown_timeout_secs: 30,
            auth_required: true,
            admin_token: None,
            admin_token_file: None,
            public_health: true,
            public_metrics: false,
            require_if_match: false,
            rate_limit_per_second: 200,
            rate_limit_burst: 400,
            bundled_modules: true,
            default_agreements: true,
            webhook_retry_base_ms: 1000,
            breaker_trip_after: 5,
            breaker_suspension_secs: 30,
            pipeline_concurrency: None,
            pipeline_queue: 1024,
            pipeline_queue_wait_ms: 2000,
            webhook_allowed_networks: Vec::new(),
            smtp_url: None,
            smtp_from: None,
            inbound_unknown_senders: "refuse".into(),
            inbound_max_bytes: 40 * 1024 * 1024,
            smtp_password_file: None,
            idempotency_retention_secs: 24 * 60 * 60,
            outbox_retention_secs: 24 * 60 * 60,
            prune_interval_secs: 60,
            modules: Vec::new(),
            shared_artifacts: None,
        }
    }
}

/// Values given on the command line; they beat every other layer.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct ConfigOverrides {
    /// Address to listen on [env: USM_ADDR] [default: 127.0.0.1:8080]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Directory of the embedded store [env: USM_DATA_DIR] [default: ./data]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The store's database, `postgres://user@host:port/database` [env: USM_STORE_URL]
    /// [default: the embedded store in the data directory]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_url: Option<String>,
    /// Log format [env: USM_LOG_FORMAT] [default: human]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter [env: USM_LOG_LEVEL] [default: info]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// HTTP worker threads [env: USM_WORKERS]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

impl Config {
    /// The engine's settings of pipeline admission and the step circuit breaker.
    pub fn engine_config(&self, domains: Vec<usm_model::Domain>) -> usm_engine::EngineConfig {
        let admission = usm_engine::AdmissionConfig::default();
        usm_engine::EngineConfig {
            domains,
            limits: usm_engine::Limits {
                max_attachment_bytes_per_record: self.attachment_max_bytes_per_record,
                ..usm_engine::Limits::default()
            },
            breaker: usm_engine::BreakerPolicy {
                trip_after: self.breaker_trip_after,
                suspension: std::time::Duration::from_secs(self.breaker_suspension_secs),
            },
            admission: usm_engine::AdmissionConfig {
                max_running: self.pipeline_concurrency.unwrap_or(admission.max_running),
                max_waiting: self.pipeline_queue,
                max_wait: std::time::Duration::from_millis(self.pipeline_queue_wait_ms),
            },
            auto_close_after_business_minutes: (self.auto_close_after_business_minutes > 0.0)
                .then_some(self.auto_close_after_business_minutes),
        }
    }

    /// Merges the layers. `file` must exist when given; otherwise `./usm.toml` is read if present.
    pub fn load(file: Option<&Path>, overrides: &ConfigOverrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                anyhow::ensure!(
                    path.is_file(),
                    "config file {} does not exist",
                    path.display()
                );
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file("usm.toml")),
        }
        figment
            .merge(Env::prefixed("USM_").ignore(&["config"]))
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "addr = \"127.0.0.1:9000\"\ndata_dir = \"/from-file\"\nworkers = 3",
            )?;
            jail.set_env("USM_DATA_DIR", "/from-env");
            let overrides = ConfigOverrides {
                workers: Some(7),
                ..ConfigOverrides::default()
            };
            let config = Config::load(Some(Path::new("custom.toml")), &overrides)
                .map_err(|e| e.to_string())?;
            assert_eq!(config.addr, "127.0.0.1:9000", "file beats defaults");
            assert_eq!(
                config.data_dir,
                PathBuf::from("/from-env"),
                "env beats file"
            );
            assert_eq!(config.workers, Some(7), "flags beat everything");
            assert_eq!(config.log_level, "info", "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn the_example_file_is_a_valid_configuration() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../usm.example.toml");
        let config = Config::load(Some(Path::new(example)), &ConfigOverrides::default()).unwrap();
        assert_eq!(config.addr, Config::default().addr);
    }

    #[test]
    fn lists_come_from_toml_arrays_or_comma_separated_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("list.toml", "webhook_allowed_networks = [\"10.0.0.0/8\"]")?;
            let config = Config::load(Some(Path::new("list.toml")), &ConfigOverrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(config.webhook_allowed_networks, ["10.0.0.0/8"]);
            jail.set_env("USM_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128");
            let config = Config::load(Some(Path::new("list.toml")), &ConfigOverrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(config.webhook_allowed_networks, ["127.0.0.0/8", "::1/128"]);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "adr = \"typo\"")?;
            assert!(
                Config::load(Some(Path::new("bad.toml")), &ConfigOverrides::default()).is_err()
            );
            Ok(())
        });
    }
}
