//! Per-call host state: the WASI context that grants nothing, the limiter, and the `host`
//! interface with its capability checks.

use std::sync::Arc;

use serde::Deserialize;
use usm_engine::budget::{CallBudget, thread_cpu_time};
use usm_model::{Domain, Kind, RecordId, State};
use usm_store::{ListQuery, Store};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView, p2::pipe::MemoryOutputPipe};

use crate::{
    bindings::usm::plugin::host,
    limits::Limiter,
    queries::{QueryCache, QueryKey},
};

/// Most log lines one call may write.
const MAX_LOG_LINES: u32 = 64;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 4096;
/// Most records one `host.query` returns.
const MAX_QUERY: usize = 100;
/// Bytes of the guest's stderr kept to explain a trap (a Rust panic message lands there).
const STDERR_CAPACITY: usize = 16 * 1024;

pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    stderr: MemoryOutputPipe,
    module: String,
    step: String,
    domain: Option<String>,
    records: Option<Arc<dyn Store>>,
    queries: Arc<QueryCache>,
    can_read_records: bool,
    log_lines: u32,
    /// The call's time budget; host calls are not charged to it.
    pub(crate) budget: CallBudget,
    /// The call was stopped by the wall-clock backstop, not for its own CPU time.
    pub(crate) stalled: bool,
}

/// What a new call's host state is made of.
pub(crate) struct CallSetup<'a> {
    pub(crate) module: &'a str,
    pub(crate) step: &'a str,
    pub(crate) memory_bytes: u64,
    pub(crate) domain: Option<String>,
    pub(crate) records: Option<Arc<dyn Store>>,
    pub(crate) queries: Arc<QueryCache>,
    pub(crate) can_read_records: bool,
    pub(crate) budget: CallBudget,
}

/// A wall clock stopped at the epoch: WASI clocks tell a plugin nothing.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl HostState {
    pub(crate) fn new(setup: CallSetup<'_>) -> Self {
        let CallSetup {
            module,
            step,
            memory_bytes,
            domain,
            records,
            queries,
            can_read_records,
            budget,
        } = setup;
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopened directories, environment, arguments, network or name lookup; stdout is
        // discarded and stderr kept only to explain crashes; clocks are stopped.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(memory_bytes),
            stderr,
            module: module.to_owned(),
            step: step.to_owned(),
            domain,
            records,
            queries,
            can_read_records,
            log_lines: 0,
            budget,
            stalled: false,
        }
    }

    /// The last bytes the guest wrote to stderr, trimmed.
    pub(crate) fn stderr_tail(&self) -> String {
        let contents = self.stderr.contents();
        let text = String::from_utf8_lossy(&contents);
        let text = text.trim();
        let start = text.len().saturating_sub(1000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    fn records(&self) -> Result<(&dyn Store, Domain), String> {
        if !self.can_read_records {
            return Err(format!(
                "capability {} not granted to this module",
                usm_engine::RECORDS_READ
            ));
        }
        let store = self
            .records
            .as_deref()
            .ok_or("record reads are unavailable")?;
        let domain = self
            .domain
            .as_deref()
            .and_then(|d| Domain::new(d).ok())
            .ok_or("no domain to read records in")?;
        Ok((store, domain))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryFilter {
    kind: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let mut end = message.len().min(MAX_LOG_LINE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let (module, step) = (&self.module, &self.step);
        match level {
            host::Level::Trace => {
                tracing::trace!(target: "usm::plugin", %module, %step, "{message}")
            }
            host::Level::Debug => {
                tracing::debug!(target: "usm::plugin", %module, %step, "{message}")
            }
            host::Level::Info => tracing::info!(target: "usm::plugin", %module, %step, "{message}"),
            host::Level::Warn => tracing::warn!(target: "usm::plugin", %module, %step, "{message}"),
            host::Level::Error => {
                tracing::error!(target: "usm::plugin", %module, %step, "{message}")
            }
        }
    }

    fn now(&mut self) -> u64 {
        u64::try_from(jiff_now_millis()).unwrap_or(0)
    }

    fn get_record(&mut self, id: String) -> Result<Option<String>, String> {
        let started = thread_cpu_time();
        let result = self.read_record(&id);
        self.budget.exclude_since(started);
        result
    }

    fn query(&mut self, filter: String) -> Result<String, String> {
        let started = thread_cpu_time();
        let result = self.run_query(&filter);
        self.budget.exclude_since(started);
        result
    }
}

/// Record reads for the guest: host work, not charged to the step's budget.
impl HostState {
    fn read_record(&self, id: &str) -> Result<Option<String>, String> {
        let (store, domain) = self.records()?;
        let Ok(id) = RecordId::parse(id) else {
            return Ok(None);
        };
        let record = store.get(&id).map_err(|e| e.to_string())?;
        // Another domain's record is indistinguishable from a missing one.
        Ok(record
            .filter(|r| r.domain == domain)
            .map(|r| serde_json::to_string(&r).unwrap_or_default()))
    }

    fn run_query(&self, filter: &str) -> Result<String, String> {
        let (store, domain) = self.records()?;
        let filter: QueryFilter =
            serde_json::from_str(filter).map_err(|e| format!("bad filter: {e}"))?;
        let kind = filter
            .kind
            .map(Kind::new)
            .transpose()
            .map_err(|e| e.to_string())?;
        let state = filter
            .state
            .map(State::new)
            .transpose()
            .map_err(|e| e.to_string())?;
        let limit = filter.limit.unwrap_or(MAX_QUERY).clamp(1, MAX_QUERY);
        let query = ListQuery {
            kind: kind.clone(),
            state: state.clone(),
            domain: Some(domain.clone()),
            limit,
            ..ListQuery::default()
        };
        let load = || {
            let page = store.list(&query).map_err(|e| e.to_string())?;
            serde_json::to_string(&page.records).map_err(|e| e.to_string())
        };
        match kind {
            // Only a query of one kind has a write count to say when its answer went stale.
            None => load(),
            Some(kind) => self
                .queries
                .answer(
                    store,
                    QueryKey {
                        domain,
                        kind,
                        state,
                        limit,
                    },
                    load,
                )
                .map(|answer| answer.to_string()),
        }
    }
}

impl crate::bindings::usm::plugin::types::Host for HostState {}

fn jiff_now_millis() -> i64 {
    usm_model::Timestamp::now().as_millisecond()
}
