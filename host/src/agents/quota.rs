//! Per-tenant rate limits and concurrency caps.
//!
//! One [`TenantLimiter`] per tenant, found with one map lookup per invocation: its rate is a
//! token bucket kept as a single atomic (the generic cell rate algorithm: the time at which
//! the bucket would be full again), its concurrency cap a single atomic counter.
//!
//! # Quotas across nodes
//!
//! Every node of a cluster keeps its own limiters, with no traffic between nodes per
//! invocation: each live node enforces its *share* of the tenant's quota,
//! `share = ceil(quota / n)` (at least 1 for the rate and the burst) for the rate, the burst
//! and the concurrent invocations, where `n` is the live node count given to
//! [`Limiters::set_nodes`] (1 by default: a single node enforces the whole quota). The error
//! bound, for a quota `q` on `n` nodes:
//!
//! - the cluster never admits more than `n * ceil(q / n)`, that is less than `q + n` (at
//!   most `n - 1` over the quota, from rounding up);
//! - with traffic spread evenly over the nodes, the tenant gets that: between `q` and
//!   `q + n - 1`;
//! - with an uneven spread it gets less: at least `ceil(q / n)` (all its traffic on one
//!   node), up to the above as the spread evens out;
//! - while the node count is changing (a node joined or left and the membership has not yet
//!   called [`Limiters::set_nodes`]), the shares are those of the old count.
//!
//! A quota of zero concurrent invocations stays zero on every node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::registry::Quotas;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The limiters of every tenant this node has served.
#[derive(Debug)]
pub struct Limiters {
    /// The zero of every limiter's clock.
    epoch: Instant,
    /// The live node count the quotas are shared among (at least 1).
    nodes: AtomicU32,
    tenants: RwLock<HashMap<String, Arc<TenantLimiter>>>,
}

impl Default for Limiters {
    fn default() -> Self {
        Self { epoch: Instant::now(), nodes: AtomicU32::new(1), tenants: RwLock::default() }
    }
}

impl Limiters {
    /// Share every tenant's rate, burst and concurrency quotas among `n` live nodes (0 is
    /// taken as 1): this node enforces `ceil(quota / n)` of each (see the module docs for the
    /// error bound). Each tenant's limiter is rebuilt on its next use, as on a quota change:
    /// the tokens spent stay spent.
    pub fn set_nodes(&self, n: u32) {
        self.nodes.store(n.max(1), Ordering::Relaxed);
    }

    /// The live node count the quotas are shared among (1 unless [`Self::set_nodes`] said
    /// otherwise).
    pub fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// The limiter of `tenant` for its current quotas `q`, holding this node's share of them.
    /// When the quotas or the node count changed since the last call, a new limiter takes
    /// over: the tokens spent stay spent, and invocations already running no longer count
    /// against the new cap.
    pub fn of(&self, tenant: &str, q: &Quotas) -> Arc<TenantLimiter> {
        let wanted = Settings::of(q, self.nodes());
        if let Some(l) = self.tenants.read().unwrap_or_else(PoisonError::into_inner).get(tenant)
            && l.settings == wanted
        {
            return l.clone();
        }
        let mut map = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        let level = match map.get(tenant) {
            Some(l) if l.settings == wanted => return l.clone(),
            // The tokens the old bucket was missing are missing from the new one (at most
            // all of them): raised quotas give the new burst at once, less what was spent.
            Some(l) => {
                let now = self.now();
                let missing = l.full_at.load(Ordering::Relaxed).saturating_sub(now).div_ceil(l.settings.interval);
                now + missing.min(u64::from(wanted.burst)) * wanted.interval
            }
            None => 0,
        };
        let l = Arc::new(TenantLimiter {
            epoch: self.epoch,
            settings: wanted,
            full_at: AtomicU64::new(level),
            running: AtomicU32::new(0),
        });
        map.insert(tenant.to_owned(), l.clone());
        l
    }

    /// Nanoseconds since the limiters' epoch.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Forget a tenant (deleted).
    pub fn forget(&self, tenant: &str) {
        self.tenants.write().unwrap_or_else(PoisonError::into_inner).remove(tenant);
    }
}

/// What a limiter was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    /// Nanoseconds per token (at least 1).
    interval: u64,
    /// Tokens the bucket holds.
    burst: u32,
    /// Invocations that may run at once.
    concurrent: u32,
}

impl Settings {
    /// This node's share of the quotas `q` among `nodes` nodes.
    fn of(q: &Quotas, nodes: u32) -> Self {
        let nodes = nodes.max(1);
        let rate = q.invocations_per_second.max(1).div_ceil(nodes);
        Self {
            interval: (NANOS_PER_SECOND / u64::from(rate)).max(1),
            burst: q.burst.max(1).div_ceil(nodes),
            concurrent: q.concurrent_invocations.div_ceil(nodes),
        }
    }
}

/// One tenant's rate bucket and concurrency count.
#[derive(Debug)]
pub struct TenantLimiter {
    epoch: Instant,
    settings: Settings,
    /// When (nanoseconds after `epoch`) the bucket is full again: each token taken moves it
    /// one interval later, and the bucket is empty while it is `burst` intervals ahead.
    full_at: AtomicU64,
    running: AtomicU32,
}

impl TenantLimiter {
    /// Take one token; `Err(seconds)` to wait until one is available.
    pub fn take(&self) -> Result<(), u64> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let Settings { interval, burst, .. } = self.settings;
        let capacity = interval.saturating_mul(u64::from(burst));
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(interval);
            let ahead = next - now;
            if ahead > capacity {
                return Err((ahead - capacity).div_ceil(NANOS_PER_SECOND).max(1));
            }
            match self.full_at.compare_exchange_weak(full_at, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => full_at = actual,
            }
        }
    }

    /// A slot among the tenant's concurrent invocations, if one is free; it is given back
    /// when the slot is dropped.
    pub fn enter(&self) -> Option<Slot<'_>> {
        if self.running.fetch_add(1, Ordering::Acquire) >= self.settings.concurrent {
            self.running.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(Slot(self))
    }
}

/// One running invocation counted against its tenant's cap.
#[derive(Debug)]
pub struct Slot<'a>(&'a TenantLimiter);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses_with_a_retry_time() {
        let l = Limiters::default();
        let q = Quotas { invocations_per_second: 1, burst: 3, ..Quotas::default() };
        let t = l.of("t", &q);
        for _ in 0..3 {
            assert!(t.take().is_ok());
        }
        assert_eq!(t.take(), Err(1));
        assert_eq!(l.of("t", &q).take(), Err(1), "one bucket per tenant");
        assert!(l.of("other", &q).take().is_ok(), "tenants have separate buckets");
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let l = Limiters::default();
        // 1000 per second: a token every millisecond.
        let q = Quotas { invocations_per_second: 1000, burst: 2, ..Quotas::default() };
        let t = l.of("t", &q);
        assert!(t.take().is_ok() && t.take().is_ok());
        assert!(t.take().is_err());
        let start = Instant::now();
        while t.take().is_err() {
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "the bucket never refilled");
            std::hint::spin_loop();
        }
        assert!(start.elapsed() <= std::time::Duration::from_secs(1));
    }

    #[test]
    fn new_quotas_keep_the_tokens_spent_and_start_a_new_count() {
        let l = Limiters::default();
        let q = Quotas { invocations_per_second: 1, burst: 1, concurrent_invocations: 1, ..Quotas::default() };
        let t = l.of("t", &q);
        assert!(t.take().is_ok());
        let running = t.enter().unwrap();
        let q2 = Quotas { concurrent_invocations: 2, ..q };
        let t2 = l.of("t", &q2);
        assert!(t2.take().is_err(), "a quota change must not refill the bucket");
        // A larger burst: the one token spent is still missing, the rest is there.
        let q3 = Quotas { burst: 4, ..q2 };
        let t3 = l.of("t", &q3);
        assert!(t3.take().is_ok() && t3.take().is_ok() && t3.take().is_ok());
        assert!(t3.take().is_err(), "one token of the new burst was already spent");
        let t2 = l.of("t", &q2);
        let a = t2.enter();
        let b = t2.enter();
        assert!(a.is_some() && b.is_some(), "running invocations count against the old cap only");
        assert!(t2.enter().is_none());
        drop(running);
    }

    #[test]
    fn concurrency_cap_holds_until_a_slot_is_dropped() {
        let l = Limiters::default();
        let q = Quotas { concurrent_invocations: 1, ..Quotas::default() };
        let t = l.of("t", &q);
        let p = t.enter().unwrap();
        assert!(l.of("t", &q).enter().is_none());
        drop(p);
        assert!(l.of("t", &q).enter().is_some());
        let none = Quotas { concurrent_invocations: 0, ..Quotas::default() };
        assert!(l.of("u", &none).enter().is_none(), "a cap of zero admits nothing");
    }

    #[test]
    fn one_node_enforces_the_whole_quota() {
        let l = Limiters::default();
        assert_eq!(l.nodes(), 1);
        let q = Quotas { invocations_per_second: 10, burst: 5, concurrent_invocations: 3, ..Quotas::default() };
        l.set_nodes(0);
        assert_eq!(l.nodes(), 1, "zero nodes is taken as one");
        let t = l.of("t", &q);
        assert_eq!(t.settings, Settings { interval: NANOS_PER_SECOND / 10, burst: 5, concurrent: 3 });
        for _ in 0..5 {
            assert!(t.take().is_ok());
        }
        assert!(t.take().is_err());
        let slots: Vec<_> = (0..3).filter_map(|_| t.enter()).collect();
        assert_eq!(slots.len(), 3);
        assert!(t.enter().is_none());
    }

    #[test]
    fn three_nodes_each_enforce_a_third_rounded_up() {
        let l = Limiters::default();
        l.set_nodes(3);
        assert_eq!(l.nodes(), 3);
        let q = Quotas { invocations_per_second: 10, burst: 7, concurrent_invocations: 4, ..Quotas::default() };
        let t = l.of("t", &q);
        // ceil(10 / 3) = 4 per second, ceil(7 / 3) = 3 tokens, ceil(4 / 3) = 2 at once.
        assert_eq!(t.settings, Settings { interval: NANOS_PER_SECOND / 4, burst: 3, concurrent: 2 });
        for _ in 0..3 {
            assert!(t.take().is_ok());
        }
        assert!(t.take().is_err(), "the node's share of the burst is spent");
        let a = t.enter();
        let b = t.enter();
        assert!(a.is_some() && b.is_some());
        assert!(t.enter().is_none(), "the node's share of the concurrency is taken");
        // Small quotas: at least one token per node, a cap of zero stays zero.
        let small = Quotas { invocations_per_second: 1, burst: 1, concurrent_invocations: 0, ..Quotas::default() };
        let u = l.of("u", &small);
        assert_eq!(u.settings, Settings { interval: NANOS_PER_SECOND, burst: 1, concurrent: 0 });
        assert!(u.take().is_ok());
        assert!(u.enter().is_none());
    }

    #[test]
    fn a_new_node_count_keeps_the_tokens_spent() {
        let l = Limiters::default();
        let q = Quotas { invocations_per_second: 1, burst: 6, concurrent_invocations: 4, ..Quotas::default() };
        let t = l.of("t", &q);
        for _ in 0..3 {
            assert!(t.take().is_ok());
        }
        l.set_nodes(2);
        let t2 = l.of("t", &q);
        assert_eq!(t2.settings.burst, 3);
        assert!(t2.take().is_err(), "three tokens were spent: the share of three is empty");
        assert!(Arc::ptr_eq(&t2, &l.of("t", &q)), "one limiter per node count");
        l.set_nodes(1);
        let t1 = l.of("t", &q);
        assert_eq!(t1.settings.burst, 6);
        for _ in 0..3 {
            assert!(t1.take().is_ok(), "the three tokens not spent are back");
        }
        assert!(t1.take().is_err());
    }
}
