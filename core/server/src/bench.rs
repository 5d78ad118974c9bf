//! `usm bench`: durable creates per second and their latency, through the engine in-process and
//! through the HTTP API, on a fresh store in a temporary directory.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use usm_engine::NewRecord;
use usm_model::{Actor, Role};

use crate::{Config, Server};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Records to create per run.
    #[arg(long, default_value_t = 5000)]
    pub records: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Which paths to measure.
    #[arg(long, value_enum, default_value_t = BenchMode::Both)]
    pub mode: BenchMode,
    /// Benchmark an already running server at this base URL instead of an in-process one.
    #[arg(long)]
    pub url: Option<String>,
    /// The bearer token for `--url` (an in-process server gets its own).
    #[arg(long, env = "USM_TOKEN")]
    pub token: Option<String>,
    /// Acknowledge writes without waiting for the flush to disk (to measure what durability costs).
    #[arg(long)]
    pub no_durable_acks: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// A JSON file with the body of each create (`kind`, `title`, `fields`, …); the title gets
    /// the record's number appended. Default: a realistic incident of about 1 KB.
    #[arg(long)]
    pub body: Option<std::path::PathBuf>,
    /// The kind to create, in place of the body's.
    #[arg(long)]
    pub kind: Option<String>,
    /// A steady rate: this many creates a second in all, each due at its time whether or not
    /// the ones before it finished; latency is counted from when a create was due, so a server
    /// that falls behind shows it (HTTP only).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run the in-process engine and server with the bundled modules enabled, as `usm serve`
    /// does (the default `it` mix: usm-core, itil4, cobit2019, iso20000); without it they run
    /// the bare engine.
    #[arg(long)]
    pub bundled_modules: bool,
    /// Fail (exit non-zero) when any measured path creates fewer records a second than this: a
    /// regression check.
    #[arg(long)]
    pub min_rate: Option<f64>,
}

/// The paths `usm bench` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// Engine calls on threads, no HTTP.
    Engine,
    /// HTTP requests to a server.
    Http,
    /// Both, one after the other.
    Both,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `engine` or `http`.
    pub path: &'static str,
    /// Records created.
    pub records: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Whether acks waited for the disk.
    pub durable_acks: bool,
    /// Bytes of the JSON body of one create (the first one; titles differ by their number).
    pub body_bytes: usize,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// Created records per second.
    pub records_per_second: f64,
    /// Median latency of one create, in microseconds.
    pub p50_micros: u64,
    /// 99th percentile latency, in microseconds.
    pub p99_micros: u64,
    /// Slowest create, in microseconds.
    pub max_micros: u64,
    /// The steady rate asked for (creates a second), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

fn report(
    path: &'static str,
    args: &BenchArgs,
    body: &Body,
    elapsed: Duration,
    mut latencies: Vec<Duration>,
) -> BenchReport {
    latencies.sort_unstable();
    let pick = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies
            .get(index)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    };
    BenchReport {
        path,
        records: latencies.len(),
        concurrency: args.concurrency,
        durable_acks: !args.no_durable_acks,
        body_bytes: body.json(0).to_string().len(),
        seconds: elapsed.as_secs_f64(),
        records_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_micros: pick(0.50),
        p99_micros: pick(0.99),
        max_micros: pick(1.0),
        rate: args.rate,
    }
}

/// The body of every create: a template whose title gets each record's number.
struct Body(serde_json::Map<String, serde_json::Value>);

impl Body {
    /// From `--body FILE`, or the default incident.
    fn load(args: &BenchArgs) -> anyhow::Result<Self> {
        let value = match &args.body {
            Some(path) => serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("{} is not JSON", path.display()))?,
            None => default_incident(),
        };
        let mut body = match value {
            serde_json::Value::Object(body) => Self(body),
            _ => anyhow::bail!("the body must be a JSON object"),
        };
        if let Some(kind) = &args.kind {
            body.0.insert("kind".into(), kind.clone().into());
        }
        // Checked up front, so a bad file fails before anything is measured.
        body.record(0)?;
        Ok(body)
    }

    /// The JSON body of create number `i`.
    fn json(&self, i: usize) -> serde_json::Value {
        let mut body = self.0.clone();
        let title = body
            .get("title")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("Benchmark record");
        body.insert("title".into(), format!("{title} #{i}").into());
        serde_json::Value::Object(body)
    }

    /// Create number `i` for the engine.
    fn record(&self, i: usize) -> anyhow::Result<NewRecord> {
        serde_json::from_value(self.json(i)).context("the body is not a record to create")
    }
}

/// An incident as a service desk records it: about 1 KB of JSON with the reporter's account of
/// the fault, who and what is affected, and what was tried.
fn default_incident() -> serde_json::Value {
    // What a desk records on a phone call: the schema's fields, and the rest of the caller's
    // story under `extra`, where data no module reads belongs.
    serde_json::json!({
        "kind": "incident",
        "title": "Printers on floor 3 hold every job in 'pending' since this morning",
        "fields": {
            "impact": "medium",
            "urgency": "high",
            "category": "hardware",
            "service": "printing",
            "description": "Since about 08:30 every print job sent to the two printers on floor 3 east stays in 'pending' in the queue. Jobs to other floors print. The printers' displays show 'Ready'; a test page printed from the panel comes out fine. About 40 people on the floor are affected, among them payroll, who must print cheques before 14:00.",
            "tags": ["printer", "floor-3", "payroll"],
            "extra": {
                "subcategory": "printer",
                "configuration_item": "PRN-FL3-EAST-02",
                "location": {"site": "HQ", "building": "B", "floor": 3, "room": "3.14"},
                "reported_by": {"name": "Dana Kim", "email": "dana.kim@example.org", "phone": "+31 20 555 0134"},
                "channel": "phone",
                "steps_taken": ["Restarted the print spooler on PRINT-01", "Power-cycled PRN-FL3-EAST-02", "Checked the toner and paper"],
                "workaround": "Print to floor 2 (PRN-FL2-WEST-01) for now",
            },
        },
    })
}

/// Runs the benchmark and returns one report per measured path.
pub fn run(args: &BenchArgs) -> anyhow::Result<Vec<BenchReport>> {
    anyhow::ensure!(
        args.concurrency > 0 && args.records > 0,
        "records and concurrency must be positive"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of creates a second"
        );
        anyhow::ensure!(
            args.mode == BenchMode::Http,
            "--rate paces HTTP clients: add --mode http"
        );
    }
    if let Some(floor) = args.min_rate {
        anyhow::ensure!(
            floor.is_finite() && floor > 0.0,
            "--min-rate must be a positive number of creates a second"
        );
    }
    anyhow::ensure!(
        !(args.bundled_modules && args.url.is_some()),
        "--bundled-modules sets up an in-process server; a server at --url runs its own modules"
    );
    let body = Body::load(args)?;
    let mut reports = Vec::new();
    if matches!(args.mode, BenchMode::Engine | BenchMode::Both) {
        reports.push(bench_engine(args, &body)?);
    }
    if matches!(args.mode, BenchMode::Http | BenchMode::Both) {
        reports.push(bench_http(args, &body)?);
    }
    Ok(reports)
}

/// The reports that fall below `--min-rate`, as an error naming each.
pub fn check_min_rate(args: &BenchArgs, reports: &[BenchReport]) -> anyhow::Result<()> {
    let Some(floor) = args.min_rate else {
        return Ok(());
    };
    let slow: Vec<String> = reports
        .iter()
        .filter(|r| r.records_per_second < floor)
        .map(|r| format!("{} made {:.0} creates/s", r.path, r.records_per_second))
        .collect();
    anyhow::ensure!(
        slow.is_empty(),
        "below the floor of {floor:.0} creates/s: {}",
        slow.join("; ")
    );
    Ok(())
}

/// The admin secret of the in-process server the benchmark starts.
const BENCH_TOKEN: &str = "usm_bench_0123456789abcdef0123456789abcdef";

fn temp_config(args: &BenchArgs, dir: &std::path::Path) -> Config {
    Config {
        addr: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        durable_acks: !args.no_durable_acks,
        bundled_modules: args.bundled_modules,
        default_agreements: args.bundled_modules,
        admin_token: Some(BENCH_TOKEN.into()),
        rate_limit_per_second: 0,
        ..Config::default()
    }
}

fn bench_engine(args: &BenchArgs, body: &Body) -> anyhow::Result<BenchReport> {
    let dir = tempfile::tempdir()?;
    let engine = crate::open(&temp_config(args, dir.path()))?.engine;
    let actor = Actor::new("bench", [Role::Agent]);
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| -> anyhow::Result<Vec<Duration>> {
        let workers: Vec<_> = (0..args.concurrency)
            .map(|worker| {
                let engine = &engine;
                let actor = &actor;
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut latencies = Vec::new();
                    for i in (worker..args.records).step_by(args.concurrency) {
                        let record = body.record(i)?;
                        let t = Instant::now();
                        engine.create(actor, record, None)?;
                        latencies.push(t.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(args.records);
        for worker in workers {
            let latencies = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
            all.extend(latencies);
        }
        Ok(all)
    })?;
    Ok(report("engine", args, body, started.elapsed(), latencies))
}

fn bench_http(args: &BenchArgs, body: &Body) -> anyhow::Result<BenchReport> {
    let dir = tempfile::tempdir()?;
    let config = temp_config(args, dir.path());
    let runtime = actix_web::rt::System::new();
    runtime.block_on(async {
        let token = match &args.url {
            Some(_) => args.token.clone().unwrap_or_default(),
            None => BENCH_TOKEN.to_owned(),
        };
        let (base, handle) = match &args.url {
            Some(url) => (url.trim_end_matches('/').to_owned(), None),
            None => {
                let server = Server::bind(&config)?;
                let base = format!("http://{}", server.addr());
                let handle = server.handle();
                actix_web::rt::spawn(server.run());
                (base, Some(handle))
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .default_headers(headers)
            .build()?;
        let url = format!("{base}/api/v1/records");
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|worker| {
                let client = client.clone();
                let url = url.clone();
                let bodies = Body(body.0.clone());
                let records = args.records;
                let step = args.concurrency;
                let rate = args.rate;
                actix_web::rt::spawn(async move {
                    let mut latencies = Vec::new();
                    for i in (worker..records).step_by(step) {
                        let body = serde_json::to_vec(&bodies.json(i))?;
                        // At a steady rate, create `i` is due at its slot, and its latency runs
                        // from there: waiting for an earlier slow create counts.
                        let t = match rate {
                            Some(rate) => {
                                let due = started + Duration::from_secs_f64(i as f64 / rate);
                                tokio::time::sleep_until(due.into()).await;
                                due
                            }
                            None => Instant::now(),
                        };
                        let response = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await?;
                        let status = response.status();
                        let answer = response.bytes().await?;
                        anyhow::ensure!(
                            status.as_u16() == 201,
                            "create failed: {status}: {}",
                            String::from_utf8_lossy(&answer[..answer.len().min(500)])
                        );
                        latencies.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>(latencies)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(args.records);
        for task in tasks {
            all.extend(task.await.context("a bench task panicked")??);
        }
        let elapsed = started.elapsed();
        if let Some(handle) = handle {
            handle.stop(true).await;
        }
        Ok(report("http", args, body, elapsed, all))
    })
}
