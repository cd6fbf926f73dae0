//! A store wrapper that times every operation (for the `cortex_store_operation_seconds`
//! metric), and follows how many records of each tenant it creates and deletes (for the
//! `cortex_modules` and `cortex_dead_letters` gauges), without the backends knowing about
//! metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::wrapper::{Call, Wrapper, WrapsDocuments, WrapsFeed, WrapsGraph, WrapsRecords};
use super::{Fence, Quota, RecordKind, RecordOp, Result, Store};

/// Called with the operation name and its latency.
pub type Observer = Arc<dyn Fn(&'static str, Duration) + Send + Sync>;

/// Called with a record kind, a tenant and how many of its records of that kind were
/// created (positive) or deleted (negative).
pub type CountObserver = Arc<dyn Fn(RecordKind, &str, i64) + Send + Sync>;

/// Times each call to `inner`.
pub struct Instrumented {
    inner: Arc<dyn Store>,
    observe: Observer,
    count: Option<CountObserver>,
}

impl Instrumented {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Store>, observe: Observer) -> Self {
        Self { inner, observe, count: None }
    }

    /// Tell `count` of the records created and deleted through this store. A record is
    /// created by the write that gives it revision 1 (in every backend).
    pub fn counting(self, count: CountObserver) -> Self {
        Self { count: Some(count), ..self }
    }

    fn counted(&self, kind: RecordKind, key: &str, delta: i64) {
        if let Some(count) = &self.count
            && delta != 0
        {
            count(kind, super::record_tenant(key), delta);
        }
    }

    async fn time<T>(&self, op: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        (self.observe)(op, start.elapsed());
        out
    }
}

impl Wrapper for Instrumented {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    fn around<'a, T: Send + 'a>(&'a self, call: Call, f: BoxFuture<'a, Result<T>>) -> BoxFuture<'a, Result<T>> {
        Box::pin(self.time(call.op, f))
    }
}

impl WrapsDocuments for Instrumented {}
// `wait_for` is not timed: its latency is how long the feed stayed quiet, not the
// store's speed (the default).
impl WrapsFeed for Instrumented {}
impl WrapsGraph for Instrumented {}

#[async_trait::async_trait]
impl WrapsRecords for Instrumented {
    async fn wrapped_snapshot(&self) -> Result<Option<Box<dyn super::backup::StoreSnapshot>>> {
        self.inner.snapshot().await
    }
    async fn wrapped_record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        let rev = self.time("record_put", self.inner.record_put_within(kind, key, value, expected, quota)).await?;
        if rev == 1 {
            self.counted(kind, key, 1);
        }
        Ok(rev)
    }
    async fn wrapped_record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        let gone = self.time("record_delete", self.inner.record_delete(kind, key)).await?;
        if gone {
            self.counted(kind, key, -1);
        }
        Ok(gone)
    }
    async fn wrapped_record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        let n = self.time("record_delete_many", self.inner.record_delete_many(kind, keys)).await?;
        // Callers delete one tenant's records at a time; keys of several tenants are
        // counted for the first one's.
        if let Some(first) = keys.first() {
            self.counted(kind, first, -i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(n)
    }
    async fn wrapped_record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
        let out = self.time("record_apply", self.inner.record_apply(fence, ops, quota)).await?;
        for (op, r) in ops.iter().zip(&out) {
            match op {
                RecordOp::Put { kind, key, .. } if *r == 1 => self.counted(*kind, key, 1),
                RecordOp::Delete { kind, key, .. } if *r == 1 => self.counted(*kind, key, -1),
                _ => {}
            }
        }
        Ok(out)
    }
}
