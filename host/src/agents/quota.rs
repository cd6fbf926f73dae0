//! Per-tenant rate limits and concurrency caps.
//!
//! One [`TenantLimiter`] per tenant, found with one map lookup per invocation: its rate is a
//! token bucket kept as a single atomic (the generic cell rate algorithm: the time at which
//! the bucket would be full again), its concurrency cap a single atomic counter.

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
    tenants: RwLock<HashMap<String, Arc<TenantLimiter>>>,
}

impl Default for Limiters {
    fn default() -> Self {
        Self { epoch: Instant::now(), tenants: RwLock::default() }
    }
}

impl Limiters {
    /// The limiter of `tenant` for its current quotas `q`. When the quotas changed since the
    /// last call, a new limiter takes over: the tokens spent stay spent, and invocations
    /// already running no longer count against the new cap.
    pub fn of(&self, tenant: &str, q: &Quotas) -> Arc<TenantLimiter> {
        let wanted = Settings::of(q);
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
    fn of(q: &Quotas) -> Self {
        Self {
            interval: (NANOS_PER_SECOND / u64::from(q.invocations_per_second.max(1))).max(1),
            burst: q.burst.max(1),
            concurrent: q.concurrent_invocations,
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
}
