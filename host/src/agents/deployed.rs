//! The deployed agents of this node: each one's record, loaded module and the counters,
//! pool, log ring and health that stay with it across config changes and upgrades.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::health::Health;
use super::logbook::LogBook;
use super::pool::Pool;
use crate::registry::{AgentRecord, AgentStatus, now_ms};
use crate::runtime::{AgentContext, Export, Fields, LogLine, LogRing, LogStream, Module, Outcome, Report};

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
    logs: Mutex<Ring>,
    /// The number of the last log line, for followers of the log.
    appended: tokio::sync::watch::Sender<u64>,
    /// Where the log is kept across restarts.
    book: Arc<LogBook>,
    tenant: String,
    name: String,
    /// Its health window and circuit breaker.
    pub health: Health,
}

/// The log ring, and whether the agent was deleted (it takes no more lines then).
#[derive(Debug)]
struct Ring {
    ring: LogRing,
    closed: bool,
}

impl Shared {
    pub(super) fn new(record: &AgentRecord, ring_lines: usize, ring_bytes: usize, book: Arc<LogBook>) -> Self {
        let queue_timeout = std::time::Duration::from_millis(record.queue_timeout_ms);
        Self {
            pool: Pool::new(record.max_concurrency, record.queue, queue_timeout),
            invocations: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            messages_retried: AtomicU64::new(0),
            messages_dead_lettered: AtomicU64::new(0),
            logs: Mutex::new(Ring { ring: LogRing::new(ring_lines, ring_bytes), closed: false }),
            appended: tokio::sync::watch::Sender::new(0),
            book,
            tenant: record.tenant.clone(),
            name: record.name.clone(),
            health: Health::default(),
        }
    }

    /// Append what `init` wrote (and a host line if it failed).
    pub fn record_logs(&self, report: &Report) {
        self.record_invocation(report, Export::Init(&[]));
    }

    /// Append what an invocation of `export` wrote and, when it did not succeed, a line of
    /// the `host` stream at level `error` saying how it ended (its outcome's fields, the
    /// export, and for `on-change` the batch's change sequence numbers).
    pub fn record_invocation(&self, report: &Report, export: Export<'_>) {
        let l = &report.logs;
        let failed = !report.outcome.is_ok();
        if !failed && l.stdout.is_empty() && l.stderr.is_empty() && l.records.is_empty() {
            return;
        }
        let invocation = report.id.to_string();
        let now = now_ms();
        let trace_id = crate::telemetry::otel::current_trace_id();
        self.write(|ring| {
            ring.record_traced(l, &invocation, now, trace_id.as_deref());
            if failed {
                let (message, fields) = failure(report, export);
                ring.push(now, &invocation, LogStream::Host, Some("error".into()), &message, fields);
            }
        });
    }

    /// Apply `f` to the ring (unless the agent was deleted), hand the new lines to the
    /// logbook and wake the followers.
    fn write(&self, f: impl FnOnce(&mut LogRing)) {
        let mut g = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        if g.closed {
            return;
        }
        let before = g.ring.last_seq();
        f(&mut g.ring);
        let last = g.ring.last_seq();
        // Under the lock: a purge after `close_logs` sees every line handed over before.
        self.book.append(&self.tenant, &self.name, g.ring.since(before, usize::MAX), g.ring.first_seq());
        drop(g);
        self.appended.send_replace(last);
    }

    /// Put back the lines kept before a restart.
    pub(super) fn restore_logs(&self, lines: Vec<LogLine>) {
        let mut g = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        g.ring.restore(lines);
        let last = g.ring.last_seq();
        drop(g);
        self.appended.send_replace(last);
    }

    /// The agent was deleted: no more lines; followers are woken to see it.
    pub(super) fn close_logs(&self) {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        self.appended.send_modify(|_| {});
    }

    /// Whether the agent was deleted (its log ends).
    pub fn logs_closed(&self) -> bool {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).closed
    }

    /// Lines after `since`, at most `limit`.
    pub fn logs(&self, since: u64, limit: usize) -> Vec<LogLine> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).ring.since(since, limit)
    }

    /// The number of the last log line (0: none yet).
    pub fn last_log_seq(&self) -> u64 {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).ring.last_seq()
    }

    /// Changes of the number of the last log line (and the deletion of the agent).
    pub fn follow_logs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }
}

/// The host's line about a failed invocation: its message and fields.
fn failure(report: &Report, export: Export<'_>) -> (String, Fields) {
    let mut fields = match serde_json::to_value(&report.outcome) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => Fields::new(),
    };
    fields.remove("outcome");
    if let Outcome::AgentError { code, message } = &report.outcome {
        // As in the invocation's problem: the agent's own code and message beside ours.
        fields.remove("message");
        fields.insert("agent_code".into(), code.as_str().into());
        fields.insert("agent_message".into(), message.as_str().into());
    }
    fields.insert("code".into(), report.outcome.code().into());
    fields.insert("export".into(), export.name().into());
    if let Export::OnChange(events) = export {
        fields.insert("events".into(), events.len().into());
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            fields.insert("first_change".into(), first.seq.into());
            fields.insert("last_change".into(), last.seq.into());
        }
    }
    let what = match export {
        Export::OnChange(events) => format!("on-change batch of {} events", events.len()),
        other => other.name().to_owned(),
    };
    (format!("{what} failed: {}", report.outcome), fields)
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

/// The deployed agents of every tenant, by `tenant/name`.
#[derive(Debug, Default)]
pub(super) struct DeployedMap(RwLock<Agents>);

#[derive(Debug, Default)]
struct Agents {
    by_key: HashMap<String, Arc<Deployed>>,
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
        map.by_key.insert(k, d.clone());
        d
    }

    pub(super) fn remove(&self, tenant: &str, name: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.by_key.remove(&key(tenant, name));
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
