//! The deployed agents of this node: each one's record, loaded module and the counters,
//! pool, log ring and health that stay with it across config changes and upgrades.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::health::Health;
use super::pool::Pool;
use crate::registry::{AgentRecord, AgentStatus, now_ms};
use crate::runtime::{AgentContext, LogLine, LogRing, Module, Report};

/// What stays with an agent across config changes and upgrades.
#[derive(Debug)]
pub struct Shared {
    /// Its invocations running and waiting.
    pub pool: Pool,
    /// Invocations so far.
    pub invocations: AtomicU64,
    /// Invocations that did not end `ok`.
    pub failures: AtomicU64,
    /// Messages delivered from its mailbox.
    pub messages_delivered: AtomicU64,
    /// Failed message deliveries that will be tried again.
    pub messages_retried: AtomicU64,
    /// Messages parked as dead letters after their retries.
    pub messages_dead_lettered: AtomicU64,
    logs: Mutex<LogRing>,
    /// Its health window and circuit breaker.
    pub health: Health,
}

impl Shared {
    pub(super) fn new(record: &AgentRecord, ring_lines: usize, ring_bytes: usize) -> Self {
        let queue_timeout = std::time::Duration::from_millis(record.queue_timeout_ms);
        Self {
            pool: Pool::new(record.max_concurrency, record.queue, queue_timeout),
            invocations: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            messages_retried: AtomicU64::new(0),
            messages_dead_lettered: AtomicU64::new(0),
            logs: Mutex::new(LogRing::new(ring_lines, ring_bytes)),
            health: Health::default(),
        }
    }

    /// Append what an invocation wrote.
    pub fn record_logs(&self, report: &Report) {
        let l = &report.logs;
        if l.stdout.is_empty() && l.stderr.is_empty() && l.records.is_empty() {
            return;
        }
        let invocation = report.id.to_string();
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).record(l, &invocation, now_ms());
    }

    /// Lines after `since`, at most `limit`.
    pub fn logs(&self, since: u64, limit: usize) -> Vec<LogLine> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).since(since, limit)
    }
}

/// A deployed agent: its record, its loaded module, its shared counters.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The record as stored, and its revision.
    pub record: AgentRecord,
    /// Revision of the record in the store.
    pub revision: u64,
    /// The loaded module.
    pub module: Arc<Module>,
    /// Pool, counters, logs.
    pub shared: Arc<Shared>,
    /// The parts of its sandbox context that do not change between invocations.
    pub(super) base: AgentContext,
    /// Its metric handles.
    pub(super) metrics: crate::telemetry::AgentMetrics,
}

impl Deployed {
    /// Whether it takes invocations (it is not stopped).
    pub fn is_running(&self) -> bool {
        self.record.status == AgentStatus::Running
    }
}

/// `tenant/name`, the key of an agent in this node's maps.
pub(super) fn key(tenant: &str, name: &str) -> String {
    // On every invocation: concatenated, not formatted.
    let mut k = String::with_capacity(tenant.len() + 1 + name.len());
    k.push_str(tenant);
    k.push('/');
    k.push_str(name);
    k
}

/// The deployed agents of every tenant, by `tenant/name`, with each tenant's count.
#[derive(Debug, Default)]
pub(super) struct DeployedMap(RwLock<Agents>);

#[derive(Debug, Default)]
struct Agents {
    by_key: HashMap<String, Arc<Deployed>>,
    /// Agents per tenant, kept with `by_key` under the same lock: the agent quota reads it
    /// instead of listing the tenant's records on every deploy.
    per_tenant: HashMap<String, usize>,
}

impl DeployedMap {
    /// A deployed agent.
    pub(super) fn get(&self, tenant: &str, name: &str) -> Option<Arc<Deployed>> {
        // On every invocation: the key is put together on the stack when it fits.
        let mut buf = [0u8; 160];
        let len = tenant.len() + 1 + name.len();
        let agents = &self.0.read().unwrap_or_else(PoisonError::into_inner).by_key;
        match buf.get_mut(..len) {
            Some(k) => {
                k[..tenant.len()].copy_from_slice(tenant.as_bytes());
                k[tenant.len()] = b'/';
                k[tenant.len() + 1..].copy_from_slice(name.as_bytes());
                std::str::from_utf8(k).ok().and_then(|k| agents.get(k)).cloned()
            }
            None => agents.get(&key(tenant, name)).cloned(),
        }
    }

    /// Put `make(the agent's current entry)` in place of the agent's entry, under the lock.
    pub(super) fn replace(
        &self,
        tenant: &str,
        name: &str,
        make: impl FnOnce(Option<&Arc<Deployed>>) -> Arc<Deployed>,
    ) -> Arc<Deployed> {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let k = key(tenant, name);
        let d = make(map.by_key.get(&k));
        if map.by_key.insert(k, d.clone()).is_none() {
            *map.per_tenant.entry(tenant.to_owned()).or_default() += 1;
        }
        d
    }

    pub(super) fn remove(&self, tenant: &str, name: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if map.by_key.remove(&key(tenant, name)).is_some()
            && let Some(n) = map.per_tenant.get_mut(tenant)
        {
            *n -= 1;
            if *n == 0 {
                map.per_tenant.remove(tenant);
            }
        }
    }

    /// How many agents `tenant` has on this node.
    pub(super) fn count(&self, tenant: &str) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Call `f` with every deployed agent, under the read lock (`f` must be quick).
    pub(super) fn each(&self, mut f: impl FnMut(&Deployed)) {
        self.0.read().unwrap_or_else(PoisonError::into_inner).by_key.values().for_each(|d| f(d));
    }

    /// Agents of a tenant, by name.
    pub(super) fn of(&self, tenant: &str) -> BTreeMap<String, Arc<Deployed>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_key
            .values()
            .filter(|d| d.record.tenant == tenant)
            .map(|d| (d.record.name.clone(), d.clone()))
            .collect()
    }

    /// Whether any agent of `tenant` runs `digest` or keeps it to roll back to.
    pub(super) fn uses_module(&self, tenant: &str, digest: &str) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).by_key.values().any(|d| {
            d.record.tenant == tenant
                && (d.record.module == digest || d.record.previous_module.as_deref() == Some(digest))
        })
    }
}
