//! The `usm` command line, shared by the `usm` binary and the test harness's copy of it.

use std::{path::PathBuf, time::Duration};

use crate::{Config, ConfigOverrides, Server, admin, bench};
use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// usm — Unified Service Management server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Run a module's steps on a record in the server's sandbox and limits; prints each step's
    /// outcome, patch or rejection, effects and time (exit 1 when a step fails).
    Test(crate::plugin_dev::PluginTestArgs),
    /// Create a module directory for a step in Rust, JavaScript or Python: module.toml, the
    /// step's source, build.sh and a fixture record, ready for `sh build.sh` and `plugin test`.
    New(crate::plugin_new::PluginNewArgs),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy a whole store — records, history, settings, attachments — between a data directory
    /// and a PostgreSQL database (either way), into an empty target, checking counts at the end.
    Copy(crate::store_copy::CopyArgs),
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API over the embedded store.
    Serve {
        /// TOML configuration file [env: USM_CONFIG] [default: ./usm.toml when present]
        #[arg(long, env = "USM_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: ConfigOverrides,
    },
    /// Move a stopped server's store between the embedded store and PostgreSQL.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Measure durable creates per second and their latency.
    Bench(bench::BenchArgs),
    /// Develop plugins: run a module's steps on a record locally.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Create, list and revoke API tokens on a running server.
    Token {
        #[command(flatten)]
        remote: admin::Remote,
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
    /// Install, list, enable, disable and remove modules on a running server.
    Module {
        #[command(flatten)]
        remote: admin::Remote,
        #[command(subcommand)]
        command: admin::ModuleCommand,
    },
    /// Hand one e-mail message on standard input to a running server, as an MTA's delivery
    /// command does (`| usm mailgate --domain it`). Exits 0 when it was taken, 75 (EX_TEMPFAIL,
    /// the MTA tries again) when the server could not be reached or failed, 65 (EX_DATAERR, the
    /// MTA bounces it) when the server refused the message.
    Mailgate {
        #[command(flatten)]
        remote: admin::Remote,
        /// The domain the mailbox serves.
        #[arg(long)]
        domain: String,
        /// The kind of record a new message becomes.
        #[arg(long, default_value = "incident")]
        kind: String,
    },
}

/// Parses the command line and runs the chosen command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, overrides } => serve(config, &overrides),
        Command::Store {
            command: StoreCommand::Copy(args),
        } => {
            let report = crate::store_copy::run(&args)?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &report)?;
            use std::io::Write as _;
            writeln!(out)?;
            Ok(())
        }
        Command::Token { remote, command } => {
            let result = admin::run_token(&remote, command)?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &result)?;
            use std::io::Write as _;
            writeln!(out)?;
            Ok(())
        }
        Command::Mailgate {
            remote,
            domain,
            kind,
        } => {
            let mut message = Vec::new();
            use std::io::Read as _;
            std::io::stdin()
                .lock()
                .read_to_end(&mut message)
                .context("cannot read the message from standard input")?;
            match admin::mailgate(&remote, &domain, &kind, message) {
                Ok(outcome) => {
                    use std::io::Write as _;
                    writeln!(std::io::stdout().lock(), "{outcome}")?;
                    Ok(())
                }
                Err((code, error)) => {
                    eprintln!("usm mailgate: {error}");
                    std::process::exit(code);
                }
            }
        }
        Command::Module { remote, command } => {
            let result = match command {
                admin::ModuleCommand::Pack { dir, output } => admin::pack(&dir, output.as_deref())?,
                command => admin::run(&remote, command)?,
            };
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &result)?;
            use std::io::Write as _;
            writeln!(out)?;
            Ok(())
        }
        Command::Plugin { command } => {
            let report = match command {
                PluginCommand::Test(args) => crate::plugin_dev::run(&args)?,
                PluginCommand::New(args) => crate::plugin_new::run(&args)?,
            };
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &report)?;
            use std::io::Write as _;
            writeln!(out)?;
            Ok(())
        }
        Command::Bench(args) => {
            let reports = bench::run(&args)?;
            let mut out = std::io::stdout().lock();
            if args.json {
                serde_json::to_writer_pretty(&mut out, &reports)?;
            } else {
                use std::io::Write as _;
                writeln!(
                    out,
                    "path    records  clients  durable  body B  records/s   p50 µs   p99 µs   max µs"
                )?;
                for r in &reports {
                    writeln!(
                        out,
                        "{:<7} {:>7}  {:>7}  {:>7}  {:>6}  {:>9.0}  {:>7}  {:>7}  {:>7}",
                        r.path,
                        r.records,
                        r.concurrency,
                        r.durable_acks,
                        r.body_bytes,
                        r.records_per_second,
                        r.p50_micros,
                        r.p99_micros,
                        r.max_micros
                    )?;
                    if let Some(rate) = r.rate {
                        writeln!(
                            out,
                            "        at a steady {rate} creates/s asked; latency counted from each create's due time"
                        )?;
                    }
                }
            }
            drop(out);
            bench::check_min_rate(&args, &reports)
        }
    }
}

fn serve(file: Option<PathBuf>, overrides: &ConfigOverrides) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref(), overrides)?;
    crate::init_tracing(config.log_format, &config.log_level)?;
    actix_web::rt::System::new().block_on(async move {
        let server = Server::bind(&config).context("cannot start usm")?;
        let grace = Duration::from_secs(config.shutdown_timeout_secs);
        actix_web::rt::spawn(crate::stop_on_signal(server.handle(), grace));
        server.run().await
    })
}
