//! Per-tenant egress quotas (requests per second, body bytes per day) and the daily token
//! budget of metered grants.
//!
//! The rate is a per-node share: each node enforces `ceil(quota / n)` for `n` live nodes,
//! as the invocation quotas do (see `agents::quota`), so the cluster admits at most
//! `n * ceil(q / n)` a second (less than `q + n`).
//!
//! The daily bytes and tokens are durable and cluster-wide. Each node counts in memory (the
//! request path never waits for the store) and its periodic flush (every heartbeat, and at
//! shutdown) writes its totals of the UTC day per tenant into a
//! [`RecordKind::Counter`](crate::store::RecordKind::Counter) record
//! `egress/<tenant>/<day>/<node>`, and reads the other nodes' records of the day: a tenant's
//! budget is the sum over nodes, checked against the whole quota. A node that starts again
//! (same node id) takes its own record of the day back before it serves. Records of earlier
//! days are deleted by the flush. The overshoot is bounded: what the other nodes admitted
//! within one flush interval (a heartbeat) before their counts arrived, plus, as on one
//! node, the bytes or tokens of the requests admitted before the budget was spent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::meter::Usage;
use crate::registry::Quotas;

/// The egress quotas of one tenant, from its [`Quotas`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressQuotas {
    /// Sustained outbound requests per second (also the burst).
    pub requests_per_second: u32,
    /// Request and response body bytes per UTC day.
    pub bytes_per_day: u64,
    /// Prompt and completion tokens of metered grants per UTC day.
    pub tokens_per_day: u64,
}

impl EgressQuotas {
    /// The egress quotas among `q`.
    pub fn of(q: &Quotas) -> Self {
        Self {
            requests_per_second: q.egress_requests_per_second,
            bytes_per_day: q.egress_bytes_per_day,
            tokens_per_day: q.tokens_per_day,
        }
    }
}

/// What a tenant and one of its agents used of egress today, over the cluster (as of this
/// node's last flush, plus what it counted since).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EgressUsage {
    /// Body bytes the tenant sent and received today.
    pub tenant_bytes_today: u64,
    /// Tokens of the tenant's metered requests today.
    pub tenant_tokens_today: u64,
    /// Prompt tokens of the agent's metered requests today.
    pub agent_prompt_tokens_today: u64,
    /// Completion tokens of the agent's metered requests today.
    pub agent_completion_tokens_today: u64,
}

/// Which quota refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Requests per second.
    Rate {
        /// When a request would be admitted again, in milliseconds.
        retry_after_ms: u64,
    },
    /// Bytes per day.
    Bytes,
    /// Tokens per day.
    Tokens,
}

impl Refusal {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Rate { .. } => "egress_rate_limited",
            Refusal::Bytes => "egress_bytes_exhausted",
            Refusal::Tokens => "token_budget_exhausted",
        }
    }
}

/// One node's counts of one tenant for one UTC day: the value of its counter record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DayCount {
    /// Body bytes sent and received.
    pub bytes: u64,
    /// Tokens of metered responses.
    pub tokens: u64,
    /// Prompt and completion tokens by agent.
    #[serde(default)]
    pub agents: HashMap<String, (u64, u64)>,
}

impl DayCount {
    pub(super) fn add(&mut self, other: &DayCount) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.tokens = self.tokens.saturating_add(other.tokens);
        for (a, (p, c)) in &other.agents {
            let e = self.agents.entry(a.clone()).or_default();
            e.0 = e.0.saturating_add(*p);
            e.1 = e.1.saturating_add(*c);
        }
    }
}

#[derive(Debug)]
struct TenantCount {
    /// The rate bucket's tokens, and when it was last filled.
    tokens: f64,
    filled: Instant,
    day: u64,
    /// This node's counts of the day.
    own: DayCount,
    /// The other nodes' counts of the day, as of the last flush.
    others: DayCount,
    /// Whether `own` changed since the last flush.
    dirty: bool,
}

/// The counts of every tenant this node has sent requests for.
#[derive(Debug)]
pub(super) struct Budget {
    nodes: AtomicU32,
    tenants: Mutex<HashMap<String, TenantCount>>,
}

impl Default for Budget {
    fn default() -> Self {
        Self { nodes: AtomicU32::new(1), tenants: Mutex::default() }
    }
}

/// Today's number (days since the epoch, UTC).
pub(super) fn today() -> u64 {
    crate::registry::now_ms() / 86_400_000
}

impl Budget {
    pub(super) fn set_nodes(&self, n: u32) {
        self.nodes.store(n.max(1), Ordering::Relaxed);
    }

    fn share(&self, q: u64) -> u64 {
        q.div_ceil(u64::from(self.nodes.load(Ordering::Relaxed).max(1)))
    }

    fn with<R>(&self, tenant: &str, f: impl FnOnce(&mut TenantCount) -> R) -> R {
        let mut m = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let day = today();
        let c = m.entry(tenant.to_owned()).or_insert_with(|| TenantCount {
            tokens: f64::MAX,
            filled: Instant::now(),
            day,
            own: DayCount::default(),
            others: DayCount::default(),
            dirty: false,
        });
        if c.day != day {
            c.day = day;
            c.own = DayCount::default();
            c.others = DayCount::default();
            c.dirty = false;
        }
        f(c)
    }

    /// The tenants whose counts changed since the last call, with this node's counts of
    /// `day` (tenants counting another day are left for their next change).
    pub(super) fn take_dirty(&self, day: u64) -> Vec<(String, DayCount)> {
        let mut m = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        m.iter_mut()
            .filter(|(_, c)| c.dirty && c.day == day)
            .map(|(t, c)| {
                c.dirty = false;
                (t.clone(), c.own.clone())
            })
            .collect()
    }

    /// Forget `tenant`'s counts (its rate bucket, today's counts of this node and the others).
    pub(super) fn forget(&self, tenant: &str) {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
    }

    /// Mark `tenant` changed again (its flush failed).
    pub(super) fn mark_dirty(&self, tenant: &str) {
        self.with(tenant, |c| c.dirty = true);
    }

    /// Add this node's counts of today as stored before it started (once, at start).
    pub(super) fn restore_own(&self, tenant: &str, stored: &DayCount) {
        self.with(tenant, |c| {
            c.own.add(stored);
            c.dirty = true;
        });
    }

    /// The other nodes' counts of today, by tenant (a tenant not listed: none).
    pub(super) fn set_others(&self, others: HashMap<String, DayCount>) {
        for c in self.tenants.lock().unwrap_or_else(PoisonError::into_inner).values_mut() {
            c.others = DayCount::default();
        }
        // `with` starts a tenant counting another day afresh first.
        for (t, o) in others {
            self.with(&t, |c| c.others = o);
        }
    }

    /// Admit one request of `tenant` (to a metered grant when `metered`), or say which
    /// quota refuses it.
    pub(super) fn admit(&self, tenant: &str, q: &EgressQuotas, metered: bool) -> Result<(), Refusal> {
        let rate = self.share(u64::from(q.requests_per_second)) as f64;
        self.with(tenant, |c| {
            if c.own.bytes.saturating_add(c.others.bytes) >= q.bytes_per_day {
                return Err(Refusal::Bytes);
            }
            if metered && c.own.tokens.saturating_add(c.others.tokens) >= q.tokens_per_day {
                return Err(Refusal::Tokens);
            }
            let now = Instant::now();
            c.tokens = (c.tokens.min(rate) + now.duration_since(c.filled).as_secs_f64() * rate).min(rate);
            c.filled = now;
            if rate < 1.0 || c.tokens < 1.0 {
                let wait = if rate > 0.0 { (1.0 - c.tokens) / rate } else { 1.0 };
                return Err(Refusal::Rate { retry_after_ms: (wait * 1000.0).ceil() as u64 });
            }
            c.tokens -= 1.0;
            Ok(())
        })
    }

    /// Count `n` body bytes of `tenant`.
    pub(super) fn add_bytes(&self, tenant: &str, n: u64) {
        if n > 0 {
            self.with(tenant, |c| {
                c.own.bytes = c.own.bytes.saturating_add(n);
                c.dirty = true;
            });
        }
    }

    /// Count the tokens of a metered response of `agent` of `tenant`.
    pub(super) fn add_tokens(&self, tenant: &str, agent: &str, u: Usage) {
        self.with(tenant, |c| {
            c.own.tokens = c.own.tokens.saturating_add(u.total());
            let a = c.own.agents.entry(agent.to_owned()).or_default();
            a.0 = a.0.saturating_add(u.prompt);
            a.1 = a.1.saturating_add(u.completion);
            c.dirty = true;
        });
    }

    pub(super) fn usage(&self, tenant: &str, agent: &str) -> EgressUsage {
        self.with(tenant, |c| {
            let mine = c.own.agents.get(agent).copied().unwrap_or_default();
            let theirs = c.others.agents.get(agent).copied().unwrap_or_default();
            EgressUsage {
                tenant_bytes_today: c.own.bytes.saturating_add(c.others.bytes),
                tenant_tokens_today: c.own.tokens.saturating_add(c.others.tokens),
                agent_prompt_tokens_today: mine.0.saturating_add(theirs.0),
                agent_completion_tokens_today: mine.1.saturating_add(theirs.1),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(rps: u32, bytes: u64, tokens: u64) -> EgressQuotas {
        EgressQuotas { requests_per_second: rps, bytes_per_day: bytes, tokens_per_day: tokens }
    }

    #[test]
    fn the_rate_admits_its_burst_then_refuses() {
        let b = Budget::default();
        let q = q(3, u64::MAX, u64::MAX);
        for _ in 0..3 {
            b.admit("t", &q, false).unwrap();
        }
        assert!(matches!(b.admit("t", &q, false), Err(Refusal::Rate { .. })));
        // Another tenant has its own.
        b.admit("u", &q, false).unwrap();
    }

    #[test]
    fn daily_bytes_and_tokens_are_spent() {
        let b = Budget::default();
        let q = q(1000, 100, 50);
        b.admit("t", &q, true).unwrap();
        b.add_tokens("t", "a", Usage { prompt: 20, completion: 30 });
        assert_eq!(b.admit("t", &q, true), Err(Refusal::Tokens));
        // Unmetered requests still go.
        b.admit("t", &q, false).unwrap();
        b.add_bytes("t", 100);
        assert_eq!(b.admit("t", &q, false), Err(Refusal::Bytes));
        let u = b.usage("t", "a");
        assert_eq!((u.tenant_tokens_today, u.agent_prompt_tokens_today, u.tenant_bytes_today), (50, 20, 100));
    }

    #[test]
    fn nodes_share_the_rate_and_sum_the_daily_counts() {
        let b = Budget::default();
        b.set_nodes(2);
        let q = q(4, u64::MAX, 11);
        b.add_tokens("t", "a", Usage { prompt: 6, completion: 0 });
        // The token budget is the whole quota, over every node's count.
        b.admit("t", &q, true).unwrap();
        let mut other = DayCount { bytes: 0, tokens: 5, agents: HashMap::new() };
        other.agents.insert("a".into(), (5, 0));
        b.set_others(HashMap::from([("t".to_owned(), other)]));
        assert_eq!(b.admit("t", &q, true), Err(Refusal::Tokens));
        assert_eq!(b.usage("t", "a").agent_prompt_tokens_today, 11);
        // The rate is this node's share: 2 of 4 (one admitted above).
        b.admit("t", &q, false).unwrap();
        assert!(matches!(b.admit("t", &q, false), Err(Refusal::Rate { .. })));
        // Only what this node counted is flushed, once.
        let dirty = b.take_dirty(today());
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].1.tokens, 6);
        assert!(b.take_dirty(today()).is_empty());
    }
}
