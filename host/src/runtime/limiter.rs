//! The per-invocation [`ResourceLimiter`]: memory, tables and instances, with peak tracking.
//!
//! A refused growth is a trap carrying [`LimitExceeded`] (not a `-1` from `memory.grow`),
//! so exceeding a limit always ends the invocation with a typed outcome, and the refusal is
//! recognised by type rather than by message.

use wasmtime::ResourceLimiter;

/// A sandbox limit the guest tried to exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// Linear memory would exceed the invocation's memory limit.
    #[error("memory limit: growing to {desired} bytes exceeds the limit of {limit} bytes")]
    Memory {
        /// Total bytes requested.
        desired: u64,
        /// The limit.
        limit: u64,
    },
    /// A table would exceed its element limit.
    #[error("table limit: growing to {desired} elements exceeds the limit of {limit}")]
    Table {
        /// Elements requested.
        desired: usize,
        /// The limit.
        limit: usize,
    },
}

/// Tracks and bounds what one invocation allocates.
#[derive(Debug)]
pub struct Limiter {
    memory_limit: u64,
    table_limit: usize,
    instances: usize,
    memory_total: u64,
    /// Highest total linear memory seen, in bytes.
    pub peak_memory: u64,
    /// Set when a growth was refused.
    pub exceeded: Option<LimitExceeded>,
}

impl Limiter {
    /// A limiter for one invocation.
    pub fn new(memory_limit: u64, table_limit: usize, instances: usize) -> Self {
        Self { memory_limit, table_limit, instances, memory_total: 0, peak_memory: 0, exceeded: None }
    }

    /// The invocation's memory limit, in bytes (what the host may hand the guest is
    /// bounded by it).
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let growth = as_u64(desired.saturating_sub(current));
        let total = self.memory_total.saturating_add(growth);
        if total > self.memory_limit {
            let e = LimitExceeded::Memory { desired: total, limit: self.memory_limit };
            self.exceeded = Some(e.clone());
            return Err(wasmtime::Error::new(e));
        }
        self.memory_total = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_limit {
            let e = LimitExceeded::Table { desired, limit: self.table_limit };
            self.exceeded = Some(e.clone());
            return Err(wasmtime::Error::new(e));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_summed_over_memories_and_refused_past_the_limit() {
        let mut l = Limiter::new(10 << 16, 100, 4);
        assert!(l.memory_growing(0, 4 << 16, None).unwrap());
        assert!(l.memory_growing(0, 4 << 16, None).unwrap());
        assert_eq!(l.peak_memory, 8 << 16);
        let err = l.memory_growing(4 << 16, 7 << 16, None).unwrap_err();
        assert!(matches!(err.downcast_ref::<LimitExceeded>(), Some(LimitExceeded::Memory { .. })));
        assert_eq!(l.peak_memory, 8 << 16);
        assert!(l.table_growing(0, 100, None).unwrap());
        assert!(l.table_growing(0, 101, None).is_err());
    }
}
