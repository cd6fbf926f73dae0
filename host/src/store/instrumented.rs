//! A store wrapper that times every operation (for the `cortex_store_operation_seconds`
//! metric), and follows how many records of each tenant it creates and deletes (for the
//! `cortex_modules` and `cortex_dead_letters` gauges), without the backends knowing about
//! metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    ChangeEvent, Direction, Document, DocumentStore, Edge, FeedStore, Fence, GraphStore, Page, Quota, RecordKind,
    RecordOp, RecordStore, Result, Scope, Store, Usage, WriteOp,
};

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

#[async_trait::async_trait]
impl DocumentStore for Instrumented {
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>> {
        self.time("get", self.inner.get(scope, collection, key)).await
    }
    async fn put_within(
        &self,
        scope: &Scope,
        collection: &str,
        key: &str,
        value: &str,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        self.time("put", self.inner.put_within(scope, collection, key, value, expected, quota)).await
    }
    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        self.time("delete", self.inner.delete(scope, collection, key, expected)).await
    }
    async fn list_bounded(
        &self,
        scope: &Scope,
        collection: &str,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
        max_bytes: usize,
    ) -> Result<Page> {
        self.time("list", self.inner.list_bounded(scope, collection, prefix, limit, cursor, max_bytes)).await
    }
    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], quota: Quota) -> Result<Vec<u64>> {
        self.time("transact", self.inner.transact_within(scope, ops, quota)).await
    }
}

#[async_trait::async_trait]
impl RecordStore for Instrumented {
    async fn snapshot(&self) -> Result<Option<Box<dyn super::backup::StoreSnapshot>>> {
        self.inner.snapshot().await
    }
    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        self.time("record_get", self.inner.record_get(kind, key)).await
    }
    async fn record_put_within(
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
    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        let gone = self.time("record_delete", self.inner.record_delete(kind, key)).await?;
        if gone {
            self.counted(kind, key, -1);
        }
        Ok(gone)
    }
    async fn record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        let n = self.time("record_delete_many", self.inner.record_delete_many(kind, keys)).await?;
        // Callers delete one tenant's records at a time; keys of several tenants are
        // counted for the first one's.
        if let Some(first) = keys.first() {
            self.counted(kind, first, -i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(n)
    }
    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.time("record_list", self.inner.record_list(kind, prefix)).await
    }
    async fn record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
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

    async fn record_list_revisions(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>, u64)>> {
        self.time("record_list", self.inner.record_list_revisions(kind, prefix)).await
    }
    async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> Result<(u64, Option<u64>)> {
        self.time("audit_append", self.inner.audit_append(event, tenant)).await
    }
    async fn audit_list(&self, tenant: Option<&str>, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.time("audit_list", self.inner.audit_list(tenant, since, limit)).await
    }
    async fn audit_prune(&self, tenant: Option<&str>, through: u64) -> Result<u64> {
        self.time("audit_prune", self.inner.audit_prune(tenant, through)).await
    }
    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64> {
        self.time("purge_tenant", self.inner.purge_tenant_documents(tenant)).await
    }
    async fn usage(&self, tenant: &str) -> Result<Usage> {
        self.time("stored_bytes", self.inner.usage(tenant)).await
    }
    async fn ping(&self) -> Result<()> {
        self.time("ping", self.inner.ping()).await
    }
}

#[async_trait::async_trait]
impl FeedStore for Instrumented {
    async fn feed_since(&self, tenant: &str, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        self.time("feed_since", self.inner.feed_since(tenant, since, limit)).await
    }
    async fn feed_head(&self, tenant: &str) -> Result<u64> {
        self.time("feed_head", self.inner.feed_head(tenant)).await
    }
    async fn wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        // Not timed: its latency is how long the feed stayed quiet, not the store's speed.
        self.inner.wait_for(tenant, after, timeout).await
    }
}

#[async_trait::async_trait]
impl GraphStore for Instrumented {
    async fn link_within(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        quota: Quota,
    ) -> Result<()> {
        self.time("link", self.inner.link_within(tenant, from, to, kind, attrs, quota)).await
    }
    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>> {
        self.time("edge", self.inner.edge(tenant, from, to, kind)).await
    }
    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        self.time("unlink", self.inner.unlink(tenant, from, to, kind)).await
    }
    async fn neighbours_bounded(
        &self,
        tenant: &str,
        agent: &str,
        kind: Option<&str>,
        direction: Direction,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Edge>> {
        self.time("neighbours", self.inner.neighbours_bounded(tenant, agent, kind, direction, limit, max_bytes)).await
    }
    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        self.time("remove_agent_edges", self.inner.remove_agent_edges(tenant, agent)).await
    }
}
