//! The `usm` server: layered configuration (defaults < file < `USM_*` environment < flags),
//! logging, and the process that serves the API over the embedded store. The binary and the
//! end-to-end tests start servers through [`Server`].

pub mod admin;
pub mod bench;
pub mod bundled;
pub mod cli;
mod config;
mod peers;
pub mod plugin_dev;
pub mod plugin_new;
pub mod store_copy;
mod telemetry;
pub mod webhooks;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix_web::{HttpServer, dev::ServerHandle, web};
use anyhow::Context as _;
use usm_api::{ApiConfig, HttpMetrics, RateLimiter, Services};
use usm_engine::{
    AfterStepWorker, Engine, Module, Registry, Runtimes, SlaWorker, auth::Tokens,
    retention::Pruner, webhooks::WebhookPolicy,
};
use usm_model::{Catalog, Domain};
use usm_plugin_host::{PluginHost, PluginLimits};
use usm_script_host::{
    ScriptHost, ScriptLimits,
    automation::{AutomationWorker, Automations},
};
use usm_store::{SledStore, Store, StoreConfig};

/// glibc's allocator gives each thread that allocates an arena of its own and keeps what those
/// arenas freed: after 10 uploads of 20 MiB the server held 42–49 MiB more than before, growing
/// with the bytes that passed through though every upload streams (7.8 MiB with one arena).
/// jemalloc returns freed pages from a background thread: +7.6–12.7 MiB for the same uploads.
/// mimalloc, also tried, doubled the idle server's resident memory (95 to 211 MiB). Every binary
/// that links the server (the `usm` binary, the tests' servers) runs on it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub use config::{Config, ConfigOverrides, LogFormat, ModuleConfig};
pub use telemetry::init_tracing;

/// A bound, not yet running server.
pub struct Server {
    addr: SocketAddr,
    server: actix_web::dev::Server,
    engine: Arc<Engine>,
    after_steps: AfterStepWorker,
    sla: SlaWorker,
    webhooks: webhooks::WebhookWorker,
    automations: AutomationWorker,
    search: usm_search::SearchWorker,
    notifications: usm_notify::NotificationWorker,
    fulfilment: usm_service_catalog::FulfilmentWorker,
    kpis: usm_kpis::KpiWorker,
    pruner: Pruner,
    /// Follows the other nodes sharing the store, when it is shared.
    peers: Option<peers::Peers>,
}

/// The engine, the module registry and the tokens over one store.
pub struct Opened {
    /// The record engine.
    pub engine: Arc<Engine>,
    /// The module registry.
    pub registry: Arc<Registry>,
    /// The API tokens.
    pub tokens: Arc<Tokens>,
    /// The secret of an admin token created just now, to show once.
    pub new_admin_token: Option<String>,
    /// The automations.
    pub automations: Arc<Automations>,
    /// Attachment contents.
    pub blobs: usm_blobs::BlobStore,
    /// The KPIs.
    pub kpis: Arc<usm_kpis::KpiService>,
}

impl Server {
    /// Opens the store, builds the engine and binds the listener. Call inside an async runtime.
    pub fn bind(config: &Config) -> anyhow::Result<Self> {
        check_open_access(config)?;
        let Opened {
            engine,
            registry,
            tokens,
            new_admin_token,
            automations,
            blobs,
            kpis,
        } = open(config)?;
        if let Some(secret) = new_admin_token {
            announce_admin_token(&secret);
        }
        let unknown_senders = match config.inbound_unknown_senders.as_str() {
            "refuse" => usm_mailgate::UnknownSenders::Refuse,
            "create" => usm_mailgate::UnknownSenders::Create,
            other => {
                anyhow::bail!("inbound_unknown_senders is \"refuse\" or \"create\", not {other:?}")
            }
        };
        let peers = match config.store_url {
            Some(_) => Some(follow_peers(&engine, &registry, &tokens, &automations)?),
            None => None,
        };
        let search_dir = config.data_dir.join("search");
        let search = Arc::new(usm_search::SearchIndex::open(&search_dir).with_context(|| {
            format!("cannot open the search index in {}", search_dir.display())
        })?);
        let services = web::Data::new(Services {
            engine: engine.clone(),
            registry: Arc::clone(&registry),
            tokens,
            automations: Arc::clone(&automations),
            rate_limiter: RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            http_metrics: HttpMetrics::default(),
            config: ApiConfig {
                max_body_bytes: config.max_body_bytes,
                auth_required: config.auth_required,
                public_health: config.public_health,
                public_metrics: config.public_metrics,
                require_if_match: config.require_if_match,
                webhook_policy: webhook_policy(config)?,
                body_timeout: Duration::from_secs(config.body_timeout_secs.max(1)),
                attachment_max_bytes: config.attachment_max_bytes,
                inbound_max_bytes: config.inbound_max_bytes,
                head: usm_api::HeadLimits {
                    max_url_bytes: config.max_url_bytes,
                    max_headers: config.max_headers,
                    max_header_bytes: config.max_header_bytes,
                },
            },
            blobs: blobs.clone(),
            search: Arc::clone(&search),
            kpis: Arc::clone(&kpis),
            mailgate: Arc::new(usm_mailgate::Mailgate::new(engine.clone(), unknown_senders)),
            catalog: Arc::new(usm_service_catalog::ServiceCatalog::new(
                engine.clone(),
                Arc::clone(&registry),
            )),
        });
        let console = web::Data::new(usm_console::Console::new(
            Arc::clone(engine.store()),
            &usm_console::ConsoleConfig {
                session_ttl: Duration::from_secs(config.console_session_secs),
            },
        ));
        let mut http = HttpServer::new(move || {
            usm_api::create_app(services.clone())
                .app_data(console.clone())
                .configure(usm_console::configure)
        })
        .shutdown_timeout(config.shutdown_timeout_secs)
        .disable_signals();
        if let Some(workers) = config.workers {
            http = http.workers(workers);
        }
        let http = http
            .bind(&config.addr)
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let addr = *http
            .addrs()
            .first()
            .context("the listener has no address")?;
        let after_steps = AfterStepWorker::start(Arc::clone(&engine))
            .context("cannot start the after-step worker")?;
        let sla = SlaWorker::start(Arc::clone(&engine)).context("cannot start the SLA worker")?;
        let webhooks = webhooks::WebhookWorker::start(
            Arc::clone(&engine),
            Duration::from_millis(config.webhook_retry_base_ms),
            webhook_policy(config)?,
        )
        .context("cannot start the webhook worker")?;
        let automations =
            AutomationWorker::start(automations).context("cannot start the automation worker")?;
        let search = usm_search::SearchWorker::start(Arc::clone(&engine), search)
            .context("cannot start the search worker")?;
        let mail = usm_notify::MailConfig {
            smtp_url: config.smtp_url.clone(),
            smtp_from: config.smtp_from.clone(),
            smtp_password_file: config.smtp_password_file.clone(),
        };
        mail.check().context("the mail settings are wrong")?;
        let notifications = usm_notify::NotificationWorker::start(
            Arc::clone(&engine),
            Arc::clone(&registry),
            &mail,
        )
        .context("cannot start the notification worker")?;
        let fulfilment = usm_service_catalog::FulfilmentWorker::start(Arc::clone(&engine))
            .context("cannot start the fulfilment worker")?;
        let kpis = usm_kpis::KpiWorker::start(kpis).context("cannot start the KPI worker")?;
        let consumers = [
            AfterStepWorker::CONSUMER,
            SlaWorker::CONSUMER,
            AutomationWorker::CONSUMER,
            usm_search::SearchWorker::CONSUMER,
            usm_notify::NotificationWorker::CONSUMER,
            usm_service_catalog::FulfilmentWorker::CONSUMER,
            usm_kpis::KpiWorker::CONSUMER,
        ];
        let grace = Duration::from_secs(config.attachment_grace_secs);
        let collect_blobs: usm_engine::retention::Chore = Box::new(move |engine| {
            // An upload's blob is written before the commit that references it: the grace keeps
            // the blobs of writes still in flight.
            match engine.referenced_blobs() {
                Ok(referenced) => match blobs.collect(&referenced, grace) {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::info!(removed, "collected unreferenced attachment blobs")
                    }
                    Err(error) => tracing::error!(%error, "cannot collect attachment blobs"),
                },
                Err(error) => {
                    tracing::error!(%error, "cannot list the referenced attachment blobs")
                }
            }
        });
        let forget_mail: usm_engine::retention::Chore = Box::new(|engine| {
            match usm_mailgate::forget_seen(engine.store().as_ref(), usm_mailgate::SEEN_RETENTION) {
                Ok(0) => {}
                Ok(forgotten) => tracing::info!(forgotten, "forgot old inbound message ids"),
                Err(error) => tracing::error!(%error, "cannot forget old inbound message ids"),
            }
        });
        let pruner = Pruner::start(
            Arc::clone(&engine),
            consumers.map(str::to_owned).to_vec(),
            Duration::from_secs(config.prune_interval_secs.max(1)),
            vec![collect_blobs, forget_mail],
        )
        .context("cannot start the pruner")?;
        Ok(Self {
            addr,
            server: http.run(),
            engine,
            after_steps,
            sla,
            webhooks,
            automations,
            search,
            notifications,
            fulfilment,
            kpis,
            pruner,
            peers,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, then finishes in-flight requests and flushes the store.
    pub async fn run(self) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "usm serving");
        self.server.await.context("the HTTP server failed")?;
        let (after_steps, sla, webhooks, automations, search, notifications, fulfilment, kpis) = (
            self.after_steps,
            self.sla,
            self.webhooks,
            self.automations,
            self.search,
            self.notifications,
            self.fulfilment,
            self.kpis,
        );
        let (pruner, peers) = (self.pruner, self.peers);
        web::block(move || {
            drop(peers);
            pruner.stop();
            kpis.stop();
            fulfilment.stop();
            notifications.stop();
            search.stop();
            automations.stop();
            webhooks.stop();
            sla.stop();
            after_steps.stop();
        })
        .await?;
        let store = self.engine.store().clone();
        drop(self.engine);
        let flushed = Arc::clone(&store);
        // The workers have stopped: the nodes sharing the store may take their work over now
        // rather than once the leases expire.
        web::block(move || {
            flushed.flush()?;
            flushed.release_leases()
        })
        .await??;
        // HTTP workers drop their copies of the services on their own threads; wait for them so
        // the store is closed (and the data directory unlocked) when `run` returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&store) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!("the store is still in use after shutdown");
        }
        drop(store);
        tracing::info!("usm stopped; store flushed and closed");
        Ok(())
    }
}

/// Reloads what the other nodes sharing the store change: tokens (a revocation takes effect on
/// every node), modules and their enablement, the directory, automations and agreements.
fn follow_peers(
    engine: &Arc<Engine>,
    registry: &Arc<Registry>,
    tokens: &Arc<Tokens>,
    automations: &Arc<Automations>,
) -> anyhow::Result<peers::Peers> {
    let (registry, tokens, automations) = (
        Arc::clone(registry),
        Arc::clone(tokens),
        Arc::clone(automations),
    );
    let (directory, policies) = (Arc::clone(engine), Arc::clone(engine));
    let areas: Vec<(&'static str, peers::Reload)> = vec![
        (
            "token",
            Box::new(move || tokens.reload().map_err(|e| e.to_string())),
        ),
        (
            "module",
            Box::new(move || registry.refresh().map(drop).map_err(|e| e.to_string())),
        ),
        (
            "directory",
            Box::new(move || {
                directory.directory().reload();
                Ok(())
            }),
        ),
        (
            "automation",
            Box::new(move || automations.reload().map_err(|e| e.to_string())),
        ),
        (
            "kind/agreement",
            Box::new(move || {
                policies.sla_policies().invalidate();
                Ok(())
            }),
        ),
    ];
    peers::Peers::start(engine, areas)
}

/// `auth_required = false` makes every caller an anonymous admin: allowed only on an address
/// that no other machine can reach, and announced loudly.
fn check_open_access(config: &Config) -> anyhow::Result<()> {
    if config.auth_required {
        return Ok(());
    }
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<SocketAddr> = config
        .addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the listen address {}", config.addr))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "auth_required = false makes every caller an admin; it is refused on {}, which is \
             not loopback-only (listen on 127.0.0.1 or ::1, or require tokens)",
            config.addr
        );
    }
    tracing::warn!(
        addr = %config.addr,
        "AUTHENTICATION IS OFF (auth_required = false): every local caller is an anonymous admin \
         who can read and change everything; use this only for local experiments"
    );
    Ok(())
}

/// The configured store: PostgreSQL when `store_url` names a database, else sled in the data
/// directory.
fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store_config = StoreConfig {
        durable_acks: config.durable_acks,
        cache_capacity: config.cache_mib.saturating_mul(1024 * 1024),
        idempotency_ttl: Duration::from_secs(config.idempotency_retention_secs),
        outbox_retention: Duration::from_secs(config.outbox_retention_secs),
    };
    Ok(match &config.store_url {
        Some(url) => {
            let settings = usm_store_postgres::PostgresSettings {
                password_file: config.store_password_file.clone(),
                ca_file: config.store_ca_file.clone(),
                pool_size: config.store_pool_size.max(1),
                lease_ttl: Duration::from_secs(config.store_lease_secs.max(1)),
                ..usm_store_postgres::PostgresSettings::new(url.as_str())
            };
            let store = usm_store_postgres::PostgresStore::connect(&settings, store_config)
                .with_context(|| {
                    format!(
                        "cannot open the store at {}",
                        usm_store_postgres::redact(url)
                    )
                })?;
            tracing::info!(database = %usm_store_postgres::redact(url), "store on PostgreSQL");
            Arc::new(store)
        }
        None => Arc::new(SledStore::open(&config.data_dir, store_config)?),
    })
}

/// Opens the store in the configured data directory, builds the engine over it, restores the
/// installed modules, installs the bundled ones (enabling the default mix on a fresh data
/// directory) and the module directories named in the configuration.
pub fn open(config: &Config) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = open_store(config)?;
    let domains = config
        .domains
        .iter()
        .map(|d| {
            Domain::new(d.as_str()).with_context(|| format!("domain {d:?} in the configuration"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        Arc::new(Catalog::core()),
        config.engine_config(domains),
    ));
    let mut plugins = PluginHost::new(PluginLimits::default(), Some(Arc::clone(&store)))?;
    if let Some(shared) = &config.shared_artifacts {
        plugins = plugins.with_shared_artifacts(shared.clone());
    }
    let runtimes = Runtimes {
        wasm: Some(Arc::new(plugins)),
        rhai: Some(Arc::new(ScriptHost::new(ScriptLimits::default()))),
        manifest_checks: vec![Arc::new(usm_notify::ModuleNotificationsCheck)],
    };
    let registry = Registry::open(Arc::clone(&engine), runtimes)
        .context("cannot restore the installed modules")?;
    if config.bundled_modules {
        bundled::install(&registry, store.as_ref(), &config.domains)
            .context("cannot install the bundled modules")?;
        bundled::default_groups(&engine, &config.domains)
            .context("cannot create the default groups")?;
    }
    if config.default_agreements {
        bundled::default_agreements(&engine, &config.domains)
            .context("cannot create the default agreements")?;
    }
    let operator = usm_model::Actor::new("config", [usm_model::Role::Admin]);
    for module_config in &config.modules {
        let module = Module::read_dir(&module_config.path)
            .with_context(|| format!("module {}", module_config.path.display()))?;
        let (info, _) = registry
            .install_declared(&operator, module)
            .with_context(|| format!("module {}", module_config.path.display()))?;
        registry
            .enable(
                &operator,
                &info.id,
                &module_config.domains,
                Some(module_config.grant.clone()),
            )
            .with_context(|| format!("module {}", info.id))?;
    }
    let tokens = Tokens::open(
        Arc::clone(&store),
        engine.domains().to_vec(),
        Arc::clone(engine.directory()),
    )
    .context("cannot load the API tokens")?;
    let new_admin_token = bootstrap_admin(&tokens, config)?;
    let kpis =
        usm_kpis::KpiService::open(Arc::clone(&engine)).context("cannot read the KPI sums")?;
    let automations = Automations::new(
        Arc::clone(&engine),
        Arc::clone(&kpis),
        &ScriptLimits::default(),
        Duration::from_secs(5),
    )
    .map_err(|e| anyhow::anyhow!("cannot load the automations: {e}"))?;
    if config.bundled_modules {
        bundled::define_automations(&automations)?;
    }
    let mut blobs = usm_blobs::BlobStore::open(&config.data_dir.join("attachments"))
        .context("cannot open the attachment store")?;
    if config.store_url.is_some() {
        // Every node serves every attachment: the database keeps them, this directory caches.
        blobs = blobs.shared_through(Arc::clone(engine.store()));
    }
    Ok(Opened {
        engine,
        registry: Arc::new(registry),
        tokens: Arc::new(tokens),
        new_admin_token,
        automations: Arc::new(automations),
        blobs,
        kpis,
    })
}

/// Where webhooks may deliver, from `webhook_allowed_networks`.
pub fn webhook_policy(config: &Config) -> anyhow::Result<WebhookPolicy> {
    WebhookPolicy::new(&config.webhook_allowed_networks).map_err(|e| anyhow::anyhow!(e))
}

/// Makes sure an admin can get in: the operator's chosen secret (config, `USM_ADMIN_TOKEN` or a
/// file) becomes the bootstrap admin token (a changed secret replaces the earlier one); a fresh
/// data directory without one gets a random admin token, returned to be shown once.
fn bootstrap_admin(tokens: &Tokens, config: &Config) -> anyhow::Result<Option<String>> {
    let system = usm_model::Actor::new("system", [usm_model::Role::Admin]);
    let chosen = match (&config.admin_token, &config.admin_token_file) {
        (Some(secret), _) => Some(secret.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    match chosen {
        Some(secret) => {
            if tokens.authenticate(&secret).is_err() {
                tokens
                    .bootstrap(&system, Some(&secret))
                    .context("cannot create the admin token")?;
                tracing::info!("admin token set from the configured secret");
            }
            Ok(None)
        }
        None if tokens.is_empty() => {
            let secret = tokens
                .bootstrap(&system, None)
                .context("cannot create the admin token")?;
            Ok(Some(secret))
        }
        None => Ok(None),
    }
}

/// Shows a freshly created admin token once, on standard output.
#[allow(clippy::print_stdout)] // shown to the operator once, by design
fn announce_admin_token(secret: &str) {
    println!("usm: created an admin token; it is shown only now, keep it safe:\n\n    {secret}\n");
}

/// Stops the server on SIGINT or SIGTERM: stop accepting, finish in-flight requests, flush.
pub async fn stop_on_signal(handle: ServerHandle, grace: Duration) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
    tracing::info!(grace_secs = grace.as_secs(), "finishing in-flight requests");
    handle.stop(true).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_access_is_refused_unless_the_address_is_loopback_only() {
        let check = |addr: &str, auth_required: bool| {
            check_open_access(&Config {
                addr: addr.into(),
                auth_required,
                ..Config::default()
            })
        };
        for addr in ["0.0.0.0:8080", "[::]:8080", "10.0.0.1:8080", "192.0.2.1:80"] {
            let error = check(addr, false).expect_err(addr).to_string();
            assert!(error.contains("auth_required = false"), "{error}");
            assert!(check(addr, true).is_ok(), "{addr} with tokens");
        }
        for addr in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "127.0.0.2:80",
            "localhost:8080",
        ] {
            assert!(check(addr, false).is_ok(), "{addr}");
        }
    }
}
