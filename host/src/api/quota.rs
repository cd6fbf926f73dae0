//! Per-tenant rate limits (token buckets) and concurrency caps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::registry::Quotas;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets and concurrency semaphores, one of each per tenant.
#[derive(Debug, Default)]
pub struct Limiters {
    buckets: Mutex<HashMap<String, Bucket>>,
    running: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
}

impl Limiters {
    /// Take one token for `tenant`; `Err(seconds)` until one is available.
    pub fn take(&self, tenant: &str, q: &Quotas) -> Result<(), u64> {
        let rate = f64::from(q.invocations_per_second.max(1));
        let burst = f64::from(q.burst.max(1));
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // One lookup by borrow on the hot path; the key is allocated once per tenant.
        let b = match map.get_mut(tenant) {
            Some(b) => b,
            None => map.entry(tenant.to_owned()).or_insert(Bucket { tokens: burst, last: now }),
        };
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// A slot among the tenant's concurrent invocations, if one is free.
    pub fn enter(&self, tenant: &str, q: &Quotas) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut map = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            // By borrow on the hot path: the key is allocated once per tenant.
            let entry = match map.get_mut(tenant) {
                Some(entry) => entry,
                None => map.entry(tenant.to_owned()).or_insert_with(|| {
                    (q.concurrent_invocations, Arc::new(Semaphore::new(q.concurrent_invocations as usize)))
                }),
            };
            if entry.0 != q.concurrent_invocations {
                // Quotas changed: new invocations count against a fresh semaphore.
                *entry = (q.concurrent_invocations, Arc::new(Semaphore::new(q.concurrent_invocations as usize)));
            }
            entry.1.clone()
        };
        sem.try_acquire_owned().ok()
    }

    /// Forget a tenant (deleted).
    pub fn forget(&self, tenant: &str) {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses_with_a_retry_time() {
        let l = Limiters::default();
        let q = Quotas { invocations_per_second: 1, burst: 3, ..Quotas::default() };
        for _ in 0..3 {
            assert!(l.take("t", &q).is_ok());
        }
        assert_eq!(l.take("t", &q), Err(1));
        assert!(l.take("other", &q).is_ok(), "tenants have separate buckets");
    }

    #[test]
    fn concurrency_cap_holds_until_a_permit_is_dropped() {
        let l = Limiters::default();
        let q = Quotas { concurrent_invocations: 1, ..Quotas::default() };
        let p = l.enter("t", &q).unwrap();
        assert!(l.enter("t", &q).is_none());
        drop(p);
        assert!(l.enter("t", &q).is_some());
    }
}
