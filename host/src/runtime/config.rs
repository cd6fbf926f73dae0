//! Sandbox configuration: node-wide engine settings and per-invocation limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::KeyLimits;

/// Node-wide settings of the one wasmtime engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How often the epoch ticker fires; deadlines are precise to one tick.
    #[serde(with = "duration_ms")]
    pub epoch_tick: Duration,
    /// Component instances that may be alive at once (the pool's size).
    pub max_instances: u32,
    /// Core instances per component (Python and JS components use a dozen or more).
    pub max_core_instances_per_component: u32,
    /// Largest linear memory any agent may ever get, in bytes (a pool slot's size).
    pub max_memory_bytes: u64,
    /// Elements of one table.
    pub max_table_elements: usize,
    /// Bytes of linear memory kept resident (not returned to the OS) per pool slot.
    pub memory_keep_resident: usize,
    /// Bytes of table kept resident per pool slot.
    pub table_keep_resident: usize,
    /// Deepest wasm stack, in bytes.
    pub max_wasm_stack: usize,
    /// Longest a compilation of an upload may take (its child process is killed then).
    #[serde(with = "duration_ms")]
    pub compile_timeout: Duration,
    /// Bounds of compiling an upload (`[engine.compile]`).
    pub compile: super::CompileConfig,
    /// Bytes of loaded modules kept in memory (least recently used out first); modules of
    /// deployed agents stay loaded regardless.
    pub module_cache_bytes: u64,
    /// Meter guest execution with fuel (the `fuel` limit). Off only to measure its cost.
    pub fuel_metering: bool,
    /// Interrupt guest code at the deadline with epochs. Off only to measure its cost:
    /// without it a guest in a loop is never stopped.
    pub epoch_interruption: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            epoch_tick: Duration::from_millis(10),
            max_instances: 1000,
            max_core_instances_per_component: 64,
            max_memory_bytes: 4 << 30,
            max_table_elements: 100_000,
            memory_keep_resident: 1 << 20,
            table_keep_resident: 64 << 10,
            max_wasm_stack: 512 << 10,
            compile_timeout: Duration::from_secs(120),
            compile: super::CompileConfig::default(),
            module_cache_bytes: 1 << 30,
            fuel_metering: true,
            epoch_interruption: true,
        }
    }
}

/// Limits of one invocation. Exceeding one ends it with a typed outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel (roughly: wasm instructions) the invocation may burn.
    pub fuel: u64,
    /// Bytes of linear memory, summed over the component's memories.
    pub memory_bytes: u64,
    /// Wall-clock time, host calls included.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Calls to Cortex imports (documents, runtime, graph, messaging).
    pub host_calls: u64,
    /// Bytes `handle` may return.
    pub output_bytes: u64,
    /// Bytes of one message sent, called with or published.
    pub message_bytes: u64,
    /// Bytes of stdout, stderr and log records kept; the rest is dropped and marked.
    pub log_bytes: usize,
    /// Elements of any one table.
    pub table_elements: usize,
    /// Core instances, tables and memories a component may create.
    pub instances: usize,
    /// Key and value sizes for documents.
    pub keys: KeyLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 2_000_000_000,
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            host_calls: 10_000,
            output_bytes: 1 << 20,
            message_bytes: 256 << 10,
            log_bytes: 64 << 10,
            table_elements: 20_000,
            instances: 64,
            keys: KeyLimits::default(),
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
