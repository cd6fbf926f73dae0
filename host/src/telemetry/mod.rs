//! Prometheus metrics, served at `/metrics`.
//!
//! Label cardinality is bounded: past `max_agent_labels` distinct agents, further agents
//! are counted under the label `other`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use self::sharded::{ShardedHistogram, ShardedHistogramVec};
use crate::runtime::{Outcome, Report};

pub mod sharded;

/// The metric handles of one agent, resolved once when it is installed, so that an
/// invocation updates them without label lookups.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    tenant: String,
    label: String,
    ok: IntCounter,
    duration: Arc<ShardedHistogram>,
    fuel: IntCounter,
}

/// The host's metrics.
pub struct Metrics {
    registry: Registry,
    invocations: IntCounterVec,
    duration: ShardedHistogramVec,
    fuel: IntCounterVec,
    peak_memory: Arc<ShardedHistogram>,
    traps: IntCounterVec,
    host_calls: IntCounterVec,
    rate_limited: IntCounterVec,
    store_latency: HistogramVec,
    change_batches: IntCounterVec,
    messages: IntCounterVec,
    agent_health: IntGaugeVec,
    circuit_state: IntGaugeVec,
    circuit_transitions: IntCounterVec,
    task_restarts: IntCounterVec,
    agents_seen: Mutex<HashMap<String, HashSet<String>>>,
    max_agent_labels: usize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g =
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

/// Histograms every invocation observes: sharded per thread (see [`sharded`]).
fn sharded(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> ShardedHistogramVec {
    let h = ShardedHistogramVec::new(name, help, labels, buckets)
        .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

impl Metrics {
    /// Create and register every metric.
    pub fn new(max_agent_labels: usize) -> Self {
        let r = Registry::new();
        let secs = prometheus::exponential_buckets(0.000_05, 2.5, 14).unwrap_or_default();
        let bytes = prometheus::exponential_buckets(65536.0, 4.0, 10).unwrap_or_default();
        let peak =
            sharded(&r, "cortex_invocation_peak_memory_bytes", "Peak linear memory of an invocation", &[], bytes)
                .with_label_values(&[]);
        Self {
            invocations: counter(
                &r,
                "cortex_invocations_total",
                "Invocations by tenant, agent and outcome",
                &["tenant", "agent", "outcome"],
            ),
            duration: sharded(
                &r,
                "cortex_invocation_duration_seconds",
                "Wall time of invocations",
                &["tenant"],
                secs.clone(),
            ),
            fuel: counter(&r, "cortex_fuel_used_total", "Fuel burned by invocations", &["tenant"]),
            peak_memory: peak,
            traps: counter(&r, "cortex_traps_total", "Invocations that ended on a trap or limit, by kind", &["kind"]),
            host_calls: counter(
                &r,
                "cortex_host_calls_total",
                "Calls to Cortex imports by interface",
                &["tenant", "interface"],
            ),
            rate_limited: counter(
                &r,
                "cortex_rate_limited_total",
                "Requests refused by a rate limit or quota",
                &["tenant", "reason"],
            ),
            store_latency: histogram(
                &r,
                "cortex_store_operation_seconds",
                "Latency of store operations issued by the API",
                &["op"],
                secs,
            ),
            change_batches: counter(
                &r,
                "cortex_change_batches_total",
                "Change-feed batches by result: delivered, retried, dead_lettered",
                &["tenant", "result"],
            ),
            messages: counter(
                &r,
                "cortex_messages_total",
                "Messages between agents by result: sent, deduplicated, delivered, retried, dead_lettered",
                &["tenant", "result"],
            ),
            agent_health: gauge(
                &r,
                "cortex_agent_health",
                "Health of an agent once it changed: 0 healthy, 1 degraded, 2 failing, 3 stopped",
                &["tenant", "agent"],
            ),
            circuit_state: gauge(
                &r,
                "cortex_agent_circuit_state",
                "Circuit breaker of an agent once it moved: 0 closed, 1 open, 2 half_open",
                &["tenant", "agent"],
            ),
            circuit_transitions: counter(
                &r,
                "cortex_agent_circuit_transitions_total",
                "Circuit breaker transitions by the state entered: open, half_open, closed",
                &["tenant", "agent", "to"],
            ),
            task_restarts: counter(
                &r,
                "cortex_task_restarts_total",
                "Background tasks that panicked and were restarted, by kind: watcher, mailbox, mailbox_sweep",
                &["kind"],
            ),
            registry: r,
            agents_seen: Mutex::new(HashMap::new()),
            max_agent_labels,
        }
    }

    fn agent_label<'a>(&self, tenant: &str, agent: &'a str) -> &'a str {
        let mut seen = self.agents_seen.lock().unwrap_or_else(PoisonError::into_inner);
        // No allocation on the hot path: an agent already labelled is found by borrow.
        if seen.get(tenant).is_some_and(|s| s.contains(agent)) {
            return agent;
        }
        let total: usize = seen.values().map(HashSet::len).sum();
        if total < self.max_agent_labels {
            seen.entry(tenant.to_owned()).or_default().insert(agent.to_owned());
            agent
        } else {
            "other"
        }
    }

    /// The handles of `tenant/agent` (its agent label decided now, as for
    /// [`invocation`](Self::invocation)).
    pub fn agent(&self, tenant: &str, agent: &str) -> AgentMetrics {
        let label = self.agent_label(tenant, agent).to_owned();
        AgentMetrics {
            ok: self.invocations.with_label_values(&[tenant, &label, "ok"]),
            duration: self.duration.with_label_values(&[tenant]),
            fuel: self.fuel.with_label_values(&[tenant]),
            tenant: tenant.to_owned(),
            label,
        }
    }

    /// Count one invocation of the agent of `m`.
    pub fn invocation_of(&self, m: &AgentMetrics, report: &Report) {
        if report.outcome.is_ok() {
            m.ok.inc();
        } else {
            self.invocations.with_label_values(&[&m.tenant, &m.label, report.outcome.code()]).inc();
        }
        m.duration.observe(report.stats.wall_time.as_secs_f64());
        m.fuel.inc_by(report.stats.fuel_used);
        self.rest(&m.tenant, report);
    }

    /// What every invocation counts beyond its agent's handles.
    fn rest(&self, tenant: &str, report: &Report) {
        self.peak_memory.observe(report.stats.peak_memory as f64);
        for iface in crate::capabilities::Interface::ALL {
            let n = report.stats.host_calls_by_interface[iface as usize];
            if n > 0 {
                self.host_calls.with_label_values(&[tenant, iface.name()]).inc_by(n);
            }
        }
        match &report.outcome {
            Outcome::Ok { .. } | Outcome::AgentError { .. } => {}
            Outcome::Trap { kind, .. } => self.traps.with_label_values(&[kind.as_str()]).inc(),
            other => self.traps.with_label_values(&[other.code()]).inc(),
        }
    }

    /// The health of the agent of `m` changed to `value` (see `cortex_agent_health`).
    pub fn agent_health(&self, m: &AgentMetrics, value: i64) {
        self.agent_health.with_label_values(&[&m.tenant, &m.label]).set(value);
    }

    /// The circuit breaker of the agent of `m` entered state `to` (whose gauge value is
    /// `value`).
    pub fn circuit_transition(&self, m: &AgentMetrics, to: &str, value: i64) {
        self.circuit_state.with_label_values(&[&m.tenant, &m.label]).set(value);
        self.circuit_transitions.with_label_values(&[&m.tenant, &m.label, to]).inc();
    }

    /// Count one change-feed batch delivery attempt by its result.
    pub fn change_batch(&self, tenant: &str, result: &str) {
        self.change_batches.with_label_values(&[tenant, result]).inc();
    }

    /// Count one message event by its result.
    pub fn message(&self, tenant: &str, result: &str) {
        self.messages.with_label_values(&[tenant, result]).inc();
    }

    /// Count a background task restarted after a panic.
    pub fn task_restarted(&self, kind: &str) {
        self.task_restarts.with_label_values(&[kind]).inc();
    }

    /// Count a refusal by a rate limit or quota.
    pub fn refused(&self, tenant: &str, reason: &str) {
        self.rate_limited.with_label_values(&[tenant, reason]).inc();
    }

    /// The store latency histogram (labelled by operation), for the store wrapper.
    pub fn store_latency(&self) -> HistogramVec {
        self.store_latency.clone()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
