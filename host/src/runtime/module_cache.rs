//! The loaded modules a node keeps in memory, least recently used first out, bounded in
//! bytes.
//!
//! A module's weight is its compiled artifact's size plus its component's (its code mapped in
//! memory and the bytes it was admitted from). Evicting a module only drops the cache's
//! reference: a deployed agent holds its own, so the module stays loaded while it runs, and
//! a later lookup of an evicted one loads it again from the artifact cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::Module;

/// An LRU of loaded modules (or anything else) by digest, bounded by the sum of their
/// weights.
#[derive(Debug)]
pub struct ModuleCache<T = Module> {
    limit: u64,
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    /// Value, weight and the tick of its last use.
    entries: HashMap<String, (Arc<T>, u64, u64)>,
    bytes: u64,
    tick: u64,
}

/// What a module weighs in the cache.
pub fn weight(m: &Module) -> u64 {
    (m.compiled_size as u64).saturating_add(m.size as u64)
}

impl<T> ModuleCache<T> {
    /// An empty cache holding at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, inner: Mutex::new(Inner { entries: HashMap::new(), bytes: 0, tick: 0 }) }
    }

    /// The value for `digest`, marked as just used.
    pub fn get(&self, digest: &str) -> Option<Arc<T>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(digest)?;
        entry.2 = tick;
        Some(entry.0.clone())
    }

    /// Keep `value` of `weight` bytes under `digest`, evicting the least recently used
    /// entries until the total fits. A value heavier than the whole limit is not kept.
    pub fn insert(&self, digest: &str, value: Arc<T>, weight: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, old, _)) = inner.entries.remove(digest) {
            inner.bytes -= old;
        }
        if weight > self.limit {
            return;
        }
        while inner.bytes + weight > self.limit {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, e)| e.2).map(|(k, _)| k.clone()) else { break };
            if let Some((_, old, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= old;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += weight;
        inner.entries.insert(digest.to_owned(), (value, weight, tick));
    }

    /// Drop the value for `digest`, if held.
    pub fn remove(&self, digest: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, w, _)) = inner.entries.remove(digest) {
            inner.bytes -= w;
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).bytes
    }

    /// Whether `digest` is held (without marking it used).
    pub fn contains(&self, digest: &str) -> bool {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).entries.contains_key(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_by_bytes() {
        let cache = ModuleCache::<&str>::new(100);
        cache.insert("a", Arc::new("a"), 40);
        cache.insert("b", Arc::new("b"), 40);
        assert_eq!(cache.bytes(), 80);
        // Using `a` makes `b` the oldest: a 30-byte newcomer evicts `b` only.
        assert!(cache.get("a").is_some());
        cache.insert("c", Arc::new("c"), 30);
        assert!(cache.contains("a") && cache.contains("c") && !cache.contains("b"));
        assert_eq!(cache.bytes(), 70);
        // A 90-byte newcomer needs both others gone.
        cache.insert("d", Arc::new("d"), 90);
        assert!(cache.contains("d") && !cache.contains("a") && !cache.contains("c"));
        assert_eq!(cache.bytes(), 90);
        // Heavier than the whole limit: not kept, nothing evicted for it.
        cache.insert("e", Arc::new("e"), 101);
        assert!(!cache.contains("e") && cache.contains("d"));
        // Re-inserting replaces the weight; removing frees it.
        cache.insert("d", Arc::new("d"), 10);
        assert_eq!(cache.bytes(), 10);
        cache.remove("d");
        assert_eq!(cache.bytes(), 0);
        assert!(cache.get("d").is_none());
    }

    #[test]
    fn a_zero_limit_keeps_nothing() {
        let cache = ModuleCache::<u8>::new(0);
        cache.insert("a", Arc::new(1), 1);
        assert!(cache.get("a").is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
