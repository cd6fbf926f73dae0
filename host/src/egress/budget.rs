//! Per-tenant egress quotas (requests per second, body bytes per day) and the daily token
//! budget of metered grants.
//!
//! Across a cluster each node enforces its share, `ceil(quota / n)` for `n` live nodes, as
//! the invocation quotas do (see `agents::quota`): with no traffic between nodes per request,
//! the cluster admits at most `n * ceil(q / n)` (less than `q + n`). A day is a UTC day; the
//! counts start again at midnight. A request admitted before a daily quota was spent may
//! take it past the quota by its own bytes or tokens; the next one is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;

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

/// What a tenant and one of its agents used of egress today (this node's count).
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

#[derive(Debug)]
struct TenantCount {
    /// The rate bucket's tokens, and when it was last filled.
    tokens: f64,
    filled: Instant,
    day: u64,
    bytes: u64,
    model_tokens: u64,
    agents: HashMap<String, Usage>,
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

fn today() -> u64 {
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
            bytes: 0,
            model_tokens: 0,
            agents: HashMap::new(),
        });
        if c.day != day {
            c.day = day;
            c.bytes = 0;
            c.model_tokens = 0;
            c.agents.clear();
        }
        f(c)
    }

    /// Admit one request of `tenant` (to a metered grant when `metered`), or say which
    /// quota refuses it.
    pub(super) fn admit(&self, tenant: &str, q: &EgressQuotas, metered: bool) -> Result<(), Refusal> {
        let rate = self.share(u64::from(q.requests_per_second)) as f64;
        let bytes = self.share(q.bytes_per_day);
        let tokens = self.share(q.tokens_per_day);
        self.with(tenant, |c| {
            if c.bytes >= bytes {
                return Err(Refusal::Bytes);
            }
            if metered && c.model_tokens >= tokens {
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
            self.with(tenant, |c| c.bytes = c.bytes.saturating_add(n));
        }
    }

    /// Count the tokens of a metered response of `agent` of `tenant`.
    pub(super) fn add_tokens(&self, tenant: &str, agent: &str, u: Usage) {
        self.with(tenant, |c| {
            c.model_tokens = c.model_tokens.saturating_add(u.total());
            let a = c.agents.entry(agent.to_owned()).or_default();
            a.prompt = a.prompt.saturating_add(u.prompt);
            a.completion = a.completion.saturating_add(u.completion);
        });
    }

    pub(super) fn usage(&self, tenant: &str, agent: &str) -> EgressUsage {
        self.with(tenant, |c| {
            let a = c.agents.get(agent).copied().unwrap_or_default();
            EgressUsage {
                tenant_bytes_today: c.bytes,
                tenant_tokens_today: c.model_tokens,
                agent_prompt_tokens_today: a.prompt,
                agent_completion_tokens_today: a.completion,
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
    fn nodes_share_the_quotas() {
        let b = Budget::default();
        b.set_nodes(2);
        let q = q(1000, u64::MAX, 11);
        b.add_tokens("t", "a", Usage { prompt: 6, completion: 0 });
        assert_eq!(b.admit("t", &q, true), Err(Refusal::Tokens));
    }
}
