//! Prometheus metrics, served at `/metrics`.
//!
//! Label cardinality is bounded: past `max_agent_labels` distinct agents, further agents
//! are counted under the label `other`; HTTP requests are labelled by route template.
//!
//! Every family is exposed from the start: a family whose label values are known (trap
//! kinds, results, reasons, cache hits) has them all at zero; one labelled by tenant or
//! agent gets its series at zero when the agent is installed on this node, and until a
//! first one is, the family is declared (`# HELP`, `# TYPE`) with no sample.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use self::sharded::{ShardedHistogram, ShardedHistogramVec};
use crate::runtime::{Outcome, Report};
use crate::store::RecordKind;

pub mod http;
pub mod logging;
pub mod otel;
pub mod process;
pub mod sharded;

/// The version of this build, and its git commit when it was built from a git checkout
/// (else `unknown`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// See [`VERSION`].
pub const GIT_COMMIT: &str = match option_env!("CORTEX_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Outcome codes other than `ok` and traps (whose kinds are open-ended).
const OUTCOME_CODES: [&str; 7] = [
    "agent_error",
    "fuel_exhausted",
    "memory_limit",
    "deadline_exceeded",
    "output_too_large",
    "host_call_limit",
    "exit",
];
/// `cortex_traps_total` kinds besides trap kinds.
const LIMIT_KINDS: [&str; 6] =
    ["fuel_exhausted", "memory_limit", "deadline_exceeded", "output_too_large", "host_call_limit", "exit"];
/// Results of change-feed batches.
const BATCH_RESULTS: [&str; 3] = ["delivered", "retried", "dead_lettered"];
/// Results of messages.
const MESSAGE_RESULTS: [&str; 5] = ["sent", "deduplicated", "delivered", "retried", "dead_lettered"];
/// Reasons of refusals by a rate limit or quota.
const REFUSALS: [&str; 4] = ["rate_limited", "concurrency_quota", "agent_quota", "module_quota"];
/// Circuit breaker states entered.
const CIRCUIT_STATES: [&str; 3] = ["open", "half_open", "closed"];
/// Background task kinds.
const TASK_KINDS: [&str; 4] = ["watcher", "mailbox", "mailbox_sweep", "ownership"];

/// What a scrape computes per tenant from the node's current state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantState {
    /// Invocations running in the tenant's agents' pools.
    pub running: u64,
    /// Invocations waiting in their queues.
    pub queued: u64,
    /// Messages waiting in the tenant's agents' mailboxes.
    pub mailbox: u64,
    /// Change-feed events the most behind of the tenant's watchers has yet to take.
    pub watcher_lag: u64,
    /// Agents deployed on this node.
    pub agents: u64,
}

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

/// The agents that have a label of their own, by tenant, and the tenants whose `other`
/// label has its series.
#[derive(Debug, Default)]
struct Labelled {
    labelled: HashMap<String, HashSet<String>>,
    others: HashSet<String>,
}

/// The handles of the invocation route's HTTP metrics, resolved once (the server's fast
/// path counts every invocation request).
#[derive(Clone)]
struct InvokeRoute {
    duration: Arc<ShardedHistogram>,
    ok: IntCounter,
}

/// The metrics of OIDC issuers' key fetches (see [`crate::api::oidc`]).
#[derive(Clone, Debug)]
pub struct OidcMetrics {
    /// `cortex_oidc_refresh_total{issuer,outcome}`.
    pub refresh: IntCounterVec,
    /// `cortex_oidc_last_refresh_timestamp_seconds{issuer}`.
    pub last_success: IntGaugeVec,
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
    http_requests: IntCounterVec,
    http_duration: ShardedHistogramVec,
    invoke_route: InvokeRoute,
    running: IntGaugeVec,
    queued: IntGaugeVec,
    mailbox_depth: IntGaugeVec,
    watcher_lag: IntGaugeVec,
    agents: IntGaugeVec,
    dead_letters: IntGaugeVec,
    modules: IntGaugeVec,
    compile: Histogram,
    artifact_cache: IntCounterVec,
    leases: IntCounterVec,
    oidc: OidcMetrics,
    /// Every family, for those with no series yet: name, help, type.
    declared: Vec<(String, String, &'static str)>,
    agents_seen: Mutex<Labelled>,
    max_agent_labels: usize,
    /// Held while a scrape publishes the state and renders.
    scraping: Mutex<()>,
}

impl Metrics {
    /// The metrics of OIDC key fetches.
    pub fn oidc(&self) -> OidcMetrics {
        self.oidc.clone()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The registry being filled, and what it declares.
struct Families {
    registry: Registry,
    declared: Vec<(String, String, &'static str)>,
}

impl Families {
    fn register(&mut self, c: Box<dyn prometheus::core::Collector>, name: &str, help: &str, kind: &'static str) {
        let _ = self.registry.register(c);
        self.declared.push((name.to_owned(), help.to_owned(), kind));
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
        self.register(Box::new(c.clone()), name, help, "counter");
        c
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
        self.register(Box::new(g.clone()), name, help, "gauge");
        g
    }

    /// Histograms observed on hot paths: sharded per thread (see [`sharded`]).
    fn sharded(&mut self, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> ShardedHistogramVec {
        let h = ShardedHistogramVec::new(name, help, labels, buckets)
            .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
        self.register(Box::new(h.clone()), name, help, "histogram");
        h
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
        self.register(Box::new(h.clone()), name, help, "histogram");
        h
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new(max_agent_labels: usize) -> Self {
        let mut f = Families { registry: Registry::new(), declared: Vec::new() };
        let secs = prometheus::exponential_buckets(0.000_05, 2.5, 14).unwrap_or_default();
        let bytes = prometheus::exponential_buckets(65536.0, 4.0, 10).unwrap_or_default();
        let peak = f
            .sharded("cortex_invocation_peak_memory_bytes", "Peak linear memory of an invocation", &[], bytes)
            .with_label_values(&[]);
        let build = f.gauge(
            "cortex_build_info",
            "The running build: its version and git commit (the value is 1)",
            &["version", "git_commit"],
        );
        build.with_label_values(&[VERSION, GIT_COMMIT]).set(1);
        // Trace export counts (process-wide, as the exporter is).
        let _ = f.registry.register(Box::new(otel::EXPORTS.clone()));
        let _ = f.registry.register(Box::new(otel::SPANS.clone()));
        match process::ProcessCollector::new() {
            Ok(p) => {
                let _ = f.registry.register(Box::new(p));
            }
            Err(e) => tracing::warn!(error = %e, "process metrics unavailable"),
        }
        let http_requests = f.counter(
            "cortex_http_requests_total",
            "HTTP requests answered, by method, route template and status code",
            &["method", "route", "status"],
        );
        let http_duration = f.sharded(
            "cortex_http_request_duration_seconds",
            "Time from a request's arrival to its response's headers, by method and route template",
            &["method", "route"],
            secs.clone(),
        );
        // The invocation route and the metrics route, whose series exist from the start.
        let invoke_route = InvokeRoute {
            duration: http_duration.with_label_values(&["POST", http::INVOKE_ROUTE]),
            ok: http_requests.with_label_values(&["POST", http::INVOKE_ROUTE, "200"]),
        };
        http_duration.with_label_values(&["GET", "/metrics"]);
        http_requests.with_label_values(&["GET", "/metrics", "200"]);
        let traps = f.counter("cortex_traps_total", "Invocations that ended on a trap or limit, by kind", &["kind"]);
        for kind in LIMIT_KINDS {
            traps.with_label_values(&[kind]);
        }
        let task_restarts = f.counter(
            "cortex_task_restarts_total",
            "Background tasks that panicked and were restarted, by kind: watcher, mailbox, mailbox_sweep, ownership",
            &["kind"],
        );
        for kind in TASK_KINDS {
            task_restarts.with_label_values(&[kind]);
        }
        let compile = f
            .histogram(
                "cortex_module_compile_seconds",
                "Time to compile a component to native code (artifact cache misses)",
                &[],
                prometheus::exponential_buckets(0.01, 2.0, 12).unwrap_or_default(),
            )
            .with_label_values::<&str>(&[]);
        let artifact_cache = f.counter(
            "cortex_artifact_cache_total",
            "Components loaded, by whether their compiled artifact was in the cache: hit, miss",
            &["result"],
        );
        for result in ["hit", "miss"] {
            artifact_cache.with_label_values(&[result]);
        }
        let leases = f.counter(
            "cortex_lease_events_total",
            "Leases of agents' background work on this node, by event: taken, handed_back, lost, expired",
            &["event"],
        );
        for event in ["taken", "handed_back", "lost", "expired"] {
            leases.with_label_values(&[event]);
        }
        let oidc = OidcMetrics {
            refresh: f.counter(
                "cortex_oidc_refresh_total",
                "Fetches of an OIDC issuer's signing keys (discovery document and key set), by issuer and outcome: ok, error",
                &["issuer", "outcome"],
            ),
            last_success: f.gauge(
                "cortex_oidc_last_refresh_timestamp_seconds",
                "When an OIDC issuer's signing keys were last fetched successfully (seconds since the epoch; 0: never)",
                &["issuer"],
            ),
        };
        Self {
            oidc,
            invocations: f.counter(
                "cortex_invocations_total",
                "Invocations by tenant, agent and outcome",
                &["tenant", "agent", "outcome"],
            ),
            duration: f.sharded(
                "cortex_invocation_duration_seconds",
                "Wall time of invocations, by tenant and agent",
                &["tenant", "agent"],
                secs.clone(),
            ),
            fuel: f.counter("cortex_fuel_used_total", "Fuel burned by invocations", &["tenant"]),
            peak_memory: peak,
            traps,
            host_calls: f.counter(
                "cortex_host_calls_total",
                "Calls to Cortex imports by interface",
                &["tenant", "interface"],
            ),
            rate_limited: f.counter(
                "cortex_rate_limited_total",
                "Requests refused by a rate limit or quota",
                &["tenant", "reason"],
            ),
            store_latency: f.histogram(
                "cortex_store_operation_seconds",
                "Latency of store operations issued by the API",
                &["op"],
                secs,
            ),
            change_batches: f.counter(
                "cortex_change_batches_total",
                "Change-feed batches by result: delivered, retried, dead_lettered",
                &["tenant", "result"],
            ),
            messages: f.counter(
                "cortex_messages_total",
                "Messages between agents by result: sent, deduplicated, delivered, retried, dead_lettered",
                &["tenant", "result"],
            ),
            agent_health: f.gauge(
                "cortex_agent_health",
                "Health of an agent: 0 healthy, 1 degraded, 2 failing, 3 stopped",
                &["tenant", "agent"],
            ),
            circuit_state: f.gauge(
                "cortex_agent_circuit_state",
                "Circuit breaker of an agent: 0 closed, 1 open, 2 half_open",
                &["tenant", "agent"],
            ),
            circuit_transitions: f.counter(
                "cortex_agent_circuit_transitions_total",
                "Circuit breaker transitions by the state entered: open, half_open, closed",
                &["tenant", "agent", "to"],
            ),
            task_restarts,
            http_requests,
            http_duration,
            invoke_route,
            running: f.gauge(
                "cortex_invocations_running",
                "Invocations running now in the agents' pools, by tenant",
                &["tenant"],
            ),
            queued: f.gauge(
                "cortex_invocations_queued",
                "Invocations waiting now in the agents' queues for a slot, by tenant",
                &["tenant"],
            ),
            mailbox_depth: f.gauge(
                "cortex_mailbox_depth",
                "Messages waiting in the agents' mailboxes, by tenant",
                &["tenant"],
            ),
            watcher_lag: f.gauge(
                "cortex_watcher_lag_events",
                "Change-feed events the most behind of a tenant's watchers has yet to take (feed head - cursor)",
                &["tenant"],
            ),
            agents: f.gauge("cortex_agents", "Agents deployed on this node, by tenant", &["tenant"]),
            dead_letters: f.gauge(
                "cortex_dead_letters",
                "Dead letters outstanding (not yet replayed or discarded), by tenant",
                &["tenant"],
            ),
            modules: f.gauge("cortex_modules", "Modules uploaded, by tenant", &["tenant"]),
            compile,
            artifact_cache,
            leases,
            registry: f.registry,
            declared: f.declared,
            agents_seen: Mutex::new(Labelled::default()),
            max_agent_labels,
            scraping: Mutex::new(()),
        }
    }

    /// The agent label of `tenant/agent`, and whether its series are yet to be made.
    fn agent_label<'a>(&self, tenant: &str, agent: &'a str) -> (&'a str, bool) {
        let mut seen = self.agents_seen.lock().unwrap_or_else(PoisonError::into_inner);
        // No allocation on the hot path: an agent already labelled is found by borrow.
        if seen.labelled.get(tenant).is_some_and(|s| s.contains(agent)) {
            return (agent, false);
        }
        let total: usize = seen.labelled.values().map(HashSet::len).sum();
        if total < self.max_agent_labels {
            seen.labelled.entry(tenant.to_owned()).or_default().insert(agent.to_owned());
            (agent, true)
        } else {
            let fresh = !seen.others.contains(tenant);
            if fresh {
                seen.others.insert(tenant.to_owned());
            }
            ("other", fresh)
        }
    }

    /// The handles of `tenant/agent` (its agent label decided now, as for
    /// [`invocation`](Self::invocation)).
    pub fn agent(&self, tenant: &str, agent: &str) -> AgentMetrics {
        let (label, fresh) = self.agent_label(tenant, agent);
        let label = label.to_owned();
        // Its series start at zero: a first event moves them, it does not make them. Made
        // once per label (a restore of many agents does not make them again).
        if fresh {
            self.tenant(tenant);
            for outcome in OUTCOME_CODES.into_iter().chain(["trap"]) {
                self.invocations.with_label_values(&[tenant, &label, outcome]);
            }
            for to in CIRCUIT_STATES {
                self.circuit_transitions.with_label_values(&[tenant, &label, to]);
            }
            self.agent_health.with_label_values(&[tenant, &label]);
            self.circuit_state.with_label_values(&[tenant, &label]);
        }
        AgentMetrics {
            ok: self.invocations.with_label_values(&[tenant, &label, "ok"]),
            duration: self.duration.with_label_values(&[tenant, &label]),
            fuel: self.fuel.with_label_values(&[tenant]),
            tenant: tenant.to_owned(),
            label,
        }
    }

    /// Make the series of `tenant` that are not an agent's (at zero, where they are new): a
    /// tenant known to the node has them before its first event.
    pub fn tenant(&self, tenant: &str) {
        self.fuel.with_label_values(&[tenant]);
        for iface in crate::capabilities::Interface::ALL {
            self.host_calls.with_label_values(&[tenant, iface.name()]);
        }
        for reason in REFUSALS {
            self.rate_limited.with_label_values(&[tenant, reason]);
        }
        for result in BATCH_RESULTS {
            self.change_batches.with_label_values(&[tenant, result]);
        }
        for result in MESSAGE_RESULTS {
            self.messages.with_label_values(&[tenant, result]);
        }
        self.dead_letters.with_label_values(&[tenant]);
        self.modules.with_label_values(&[tenant]);
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

    /// Count one HTTP request answered with `status` after `elapsed`, on the route whose
    /// template is `route` ([`http::UNMATCHED`] when none matched).
    pub fn http_request(&self, method: &axum::http::Method, route: &str, status: u16, elapsed: Duration) {
        let method = http::method_label(method);
        if route == http::INVOKE_ROUTE && method == "POST" {
            self.invoke_route.duration.observe(elapsed.as_secs_f64());
            if status == 200 {
                self.invoke_route.ok.inc();
                return;
            }
        } else {
            self.http_duration.with_label_values(&[method, route]).observe(elapsed.as_secs_f64());
        }
        self.http_requests.with_label_values(&[method, route, http::status_label(status)]).inc();
    }

    /// A lease of an agent's background work was taken, handed back, lost or let expire.
    pub fn lease_event(&self, event: &'static str) {
        self.leases.with_label_values(&[event]).inc();
    }

    /// A component was loaded: from the artifact cache, or compiled in `compile_time`.
    pub fn module_loaded(&self, from_cache: bool, compile_time: Duration) {
        if from_cache {
            self.artifact_cache.with_label_values(&["hit"]).inc();
        } else {
            self.artifact_cache.with_label_values(&["miss"]).inc();
            self.compile.observe(compile_time.as_secs_f64());
        }
    }

    /// Records of `kind` of `tenant` went up (or down) by `delta`: modules and dead letters
    /// are counted as the store writes them (other kinds are not counted).
    pub fn records_changed(&self, kind: RecordKind, tenant: &str, delta: i64) {
        if let Some(g) = self.record_gauge(kind) {
            g.with_label_values(&[tenant]).add(delta);
        }
    }

    /// Set the counts of records of `kind` per tenant, as found in the store (at start:
    /// the tenants not in `counts` keep their series at 0).
    pub fn records_counted(&self, kind: RecordKind, counts: &HashMap<String, i64>) {
        if let Some(g) = self.record_gauge(kind) {
            for (tenant, n) in counts {
                g.with_label_values(&[tenant]).set(*n);
            }
        }
    }

    fn record_gauge(&self, kind: RecordKind) -> Option<&IntGaugeVec> {
        match kind {
            RecordKind::Module => Some(&self.modules),
            RecordKind::DeadLetter => Some(&self.dead_letters),
            _ => None,
        }
    }

    /// [`Self::render`] after publishing `state`, the node's state per tenant (tenants
    /// absent have no series), one scrape at a time.
    pub fn render_with(&self, state: &HashMap<String, TenantState>) -> String {
        let _one = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        self.publish(state);
        self.render()
    }

    fn publish(&self, state: &HashMap<String, TenantState>) {
        type Figure = fn(&TenantState) -> u64;
        let gauges: [(&IntGaugeVec, Figure); 5] = [
            (&self.running, |s| s.running),
            (&self.queued, |s| s.queued),
            (&self.mailbox_depth, |s| s.mailbox),
            (&self.watcher_lag, |s| s.watcher_lag),
            (&self.agents, |s| s.agents),
        ];
        for (g, value) in gauges {
            g.reset();
            for (tenant, s) in state {
                g.with_label_values(&[tenant]).set(i64::try_from(value(s)).unwrap_or(i64::MAX));
            }
        }
    }

    /// The Prometheus registry, for collectors kept elsewhere (the egress metrics).
    pub fn prometheus(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format. A family with no series yet is declared all the same.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        for (name, help, kind) in &self.declared {
            if !families.iter().any(|f| f.name() == name) {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        text
    }
}
