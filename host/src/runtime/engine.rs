//! The one wasmtime [`Engine`] of a node, and the ticker that drives its epochs.
//!
//! Settings, each measured (see the README's architecture notes): component model, async, fuel and epochs on,
//! concurrency support off (it triples call cost and is only needed for WASIp3), and a
//! pooling allocator that keeps memory and tables resident and uses `pagemap_scan` to
//! reset only dirty pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::EngineConfig;

/// The wasmtime [`Config`] Cortex runs guests with. Public so that benchmarks can build a
/// bare wasmtime engine with exactly the same settings.
pub fn wasmtime_config(cfg: &EngineConfig) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    let instances = cfg.max_instances.max(1);
    let per_component = cfg.max_core_instances_per_component.max(1);
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(4).max(per_component))
        .max_core_instances_per_component(per_component)
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(usize::try_from(cfg.max_memory_bytes).unwrap_or(usize::MAX))
        .table_elements(cfg.max_table_elements)
        .linear_memory_keep_resident(cfg.memory_keep_resident)
        .table_keep_resident(cfg.table_keep_resident)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .concurrency_support(false)
        .consume_fuel(cfg.fuel_metering)
        .epoch_interruption(cfg.epoch_interruption)
        .max_wasm_stack(cfg.max_wasm_stack)
        .async_stack_size(cfg.max_wasm_stack + (1 << 20))
        // A few frames are enough to locate a trap; capturing more costs time on every trap.
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(16))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Build the engine for `cfg`.
pub fn build_engine(cfg: &EngineConfig) -> wasmtime::Result<Engine> {
    Engine::new(&wasmtime_config(cfg))
}

/// Increments the engine's epoch every tick until dropped.
#[derive(Debug)]
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Start a ticker thread for `engine`.
    pub fn start(engine: Engine, tick: std::time::Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("cortex-epoch".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
