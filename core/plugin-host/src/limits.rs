//! The engine configuration and the per-store resource limiter.

use std::time::Duration;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter,
};

/// Limits of the plugin host, with safe defaults.
#[derive(Debug, Clone)]
pub struct PluginLimits {
    /// Time budget of a call when the manifest gives none.
    pub default_timeout_ms: u64,
    /// Largest time budget a manifest may ask for.
    pub max_timeout: Duration,
    /// Memory cap of an instance when the manifest gives none.
    pub default_memory_bytes: u64,
    /// Largest memory cap a manifest may ask for (also the pool's per-memory size).
    pub max_memory_bytes: u64,
    /// Largest output of a call.
    pub max_output_bytes: usize,
    /// Instances that may exist at once (the pool size).
    pub max_instances: u32,
    /// How often the epoch advances; deadlines are rounded up to it.
    pub epoch_tick: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            default_timeout_ms: 50,
            max_timeout: Duration::from_secs(10),
            default_memory_bytes: 32 * 1024 * 1024,
            max_memory_bytes: 256 * 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_instances: 256,
            epoch_tick: Duration::from_millis(1),
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    config
}

/// Builds the engine: pooling allocator when its reservation succeeds, on-demand otherwise.
pub(crate) fn engine(limits: &PluginLimits) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let instances = limits.max_instances;
    pool.total_component_instances(instances)
        // A Rust wasip2 component has a handful of core instances and one or two memories.
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .max_memory_size(usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX))
        // Reset the first pages of a slot in place instead of unmapping them: a fresh instance
        // then starts without page faults (a Rust guest's stack and small heap live there).
        .linear_memory_keep_resident(2 * 1024 * 1024)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(wasmtime::Enabled::Auto)
        // Return the rest to the OS in batches: fewer madvise calls and TLB shootdowns.
        .decommit_batch_size(32);
    let mut pooled = base_config();
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&pooled) {
        Ok(engine) => Ok(engine),
        Err(error) => {
            tracing::warn!(%error, "the pooling allocator is unavailable; allocating instances on demand");
            Engine::new(&base_config())
        }
    }
}

/// Caps linear memory and table growth of one store and remembers a refused memory grow, so a
/// guest's out-of-memory abort is reported as a memory limit rather than a generic trap.
pub(crate) struct Limiter {
    memory_bytes: usize,
    memory_denied: bool,
}

/// Most table elements an instance may have.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl Limiter {
    pub(crate) fn new(memory_bytes: u64) -> Self {
        Self {
            memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            memory_denied: false,
        }
    }

    pub(crate) fn memory_denied(&self) -> bool {
        self.memory_denied
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
