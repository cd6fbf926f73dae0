//! Tenant records as this node reads them: a short-lived cache over the registry, with the
//! limiter of each tenant's current quotas. Invocations, deliveries and calls read it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::quota::{Limiters, TenantLimiter};
use super::scheduler::{Lane, Scheduler};
use crate::registry::{Registry, Tenant};
use crate::store::{RecordKind, StoreError};

/// How long a cached tenant record is trusted: bounds how long another node's change
/// (quotas, deletion) takes to be seen here.
pub const TENANT_TTL: Duration = Duration::from_secs(1);

/// Records read from the registry, trusted for [`TENANT_TTL`]: bounds how long a change
/// made by another node takes to be seen here. A change made on this node forgets the
/// record at once, and a read that started before that change does not put back what it
/// read (each forget moves the generation on).
pub(crate) struct TtlCache<V> {
    entries: RwLock<HashMap<String, (Arc<V>, std::time::Instant)>>,
    generation: AtomicU64,
}

impl<V> Default for TtlCache<V> {
    fn default() -> Self {
        Self { entries: RwLock::default(), generation: AtomicU64::new(0) }
    }
}

impl<V> TtlCache<V> {
    /// The record of `key`, if read less than [`TENANT_TTL`] ago.
    pub(crate) fn fresh(&self, key: &str) -> Option<Arc<V>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|(_, at)| at.elapsed() < TENANT_TTL).map(|(v, _)| v.clone())
    }

    /// Taken before reading the registry, for [`Self::remember`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keep what a read that began at generation `seen` found (`None`: nothing, which is not
    /// remembered), unless something was forgotten since.
    pub(crate) fn remember(&self, key: &str, found: Option<Arc<V>>, seen: u64) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        match found {
            Some(v) if self.generation.load(Ordering::Acquire) == seen => {
                entries.insert(key.to_owned(), (v, std::time::Instant::now()));
            }
            _ => {
                entries.remove(key);
            }
        }
    }

    pub(crate) fn forget(&self, key: &str) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.remove(key);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A tenant's record as this node caches it, with the limiter of its current quotas.
#[derive(Debug)]
pub struct CachedTenant {
    /// The record.
    pub record: Tenant,
    /// Its rate bucket and concurrency count.
    pub limiter: Arc<TenantLimiter>,
    /// Its place in the node's scheduler.
    pub lane: Arc<Lane>,
    /// Its egress allow-list, parsed (None: none set; a list that no longer parses allows
    /// nothing).
    pub allow_list: Option<Arc<[crate::egress::Prefix]>>,
}

impl std::ops::Deref for CachedTenant {
    type Target = Tenant;

    fn deref(&self) -> &Tenant {
        &self.record
    }
}

/// The tenants this node serves: cached records and their limiters.
pub struct Tenants {
    registry: Registry,
    /// Rate limiters and concurrency caps.
    pub limiters: Limiters,
    /// The node's guest slots and the tenants' queues for them.
    pub scheduler: Scheduler,
    cache: TtlCache<CachedTenant>,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants").finish_non_exhaustive()
    }
}

impl Tenants {
    /// Over `registry`, nothing cached; `guests` running at once (0: one per core).
    pub fn new(registry: Registry, guests: u32) -> Self {
        Self { registry, limiters: Limiters::default(), scheduler: Scheduler::new(guests), cache: TtlCache::default() }
    }

    /// A tenant record and its limiter, from a short-lived cache (see [`TENANT_TTL`]) or
    /// the registry.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<CachedTenant>>, StoreError> {
        if let Some(t) = self.cache.fresh(name) {
            return Ok(Some(t));
        }
        let seen = self.cache.generation();
        let found = self.registry.get::<Tenant>(RecordKind::Tenant, name).await?.map(|(record, _)| {
            // The limiter for the quotas just read: a new one if they changed.
            let limiter = self.limiters.of(name, &record.quotas);
            let lane = self.scheduler.lane(name, record.quotas.weight);
            let allow_list: Option<Arc<[crate::egress::Prefix]>> = record
                .egress_allow
                .as_deref()
                .map(|list| crate::egress::parse_allow_list(list).map_or_else(|_| Arc::from([]), Arc::from));
            Arc::new(CachedTenant { record, limiter, lane, allow_list })
        });
        self.cache.remember(name, found.clone(), seen);
        Ok(found)
    }

    /// Forget what this node keeps of a deleted tenant: its limiter and its lane.
    pub fn forget_deleted(&self, name: &str) {
        self.limiters.forget(name);
        self.scheduler.forget(name);
    }

    /// Forget a cached tenant record (after this node changed or deleted it).
    pub fn forget(&self, name: &str) {
        self.cache.forget(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_older_than_a_forget_is_not_remembered() {
        let c = TtlCache::<u32>::default();
        c.remember("k", Some(Arc::new(1)), c.generation());
        assert_eq!(c.fresh("k").as_deref(), Some(&1));
        // A read starts, the record changes and is forgotten, then the read ends.
        let seen = c.generation();
        c.forget("k");
        c.remember("k", Some(Arc::new(1)), seen);
        assert_eq!(c.fresh("k"), None, "the stale record came back");
        // A read that starts after the change is remembered; nothing found is not.
        c.remember("k", Some(Arc::new(2)), c.generation());
        assert_eq!(c.fresh("k").as_deref(), Some(&2));
        c.remember("k", None, c.generation());
        assert_eq!(c.fresh("k"), None);
    }
}
