//! A store wrapper that times every operation (for the `cortex_store_operation_seconds`
//! metric) without the backends knowing about metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Document, DocumentStore, Page, RecordKind, RecordStore, Result, Scope, Store, WriteOp};

/// Called with the operation name and its latency.
pub type Observer = Arc<dyn Fn(&'static str, Duration) + Send + Sync>;

/// Times each call to `inner`.
pub struct Instrumented {
    inner: Arc<dyn Store>,
    observe: Observer,
}

impl Instrumented {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Store>, observe: Observer) -> Self {
        Self { inner, observe }
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
    async fn put(&self, scope: &Scope, collection: &str, key: &str, value: &str, expected: Option<u64>) -> Result<u64> {
        self.time("put", self.inner.put(scope, collection, key, value, expected)).await
    }
    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        self.time("delete", self.inner.delete(scope, collection, key, expected)).await
    }
    async fn list(
        &self,
        scope: &Scope,
        collection: &str,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page> {
        self.time("list", self.inner.list(scope, collection, prefix, limit, cursor)).await
    }
    async fn transact(&self, scope: &Scope, ops: &[WriteOp]) -> Result<Vec<u64>> {
        self.time("transact", self.inner.transact(scope, ops)).await
    }
}

#[async_trait::async_trait]
impl RecordStore for Instrumented {
    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        self.time("record_get", self.inner.record_get(kind, key)).await
    }
    async fn record_put(&self, kind: RecordKind, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64> {
        self.time("record_put", self.inner.record_put(kind, key, value, expected)).await
    }
    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.time("record_delete", self.inner.record_delete(kind, key)).await
    }
    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.time("record_list", self.inner.record_list(kind, prefix)).await
    }
    async fn audit_append(&self, event: Vec<u8>) -> Result<u64> {
        self.time("audit_append", self.inner.audit_append(event)).await
    }
    async fn audit_list(&self, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.time("audit_list", self.inner.audit_list(since, limit)).await
    }
    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64> {
        self.time("purge_tenant", self.inner.purge_tenant_documents(tenant)).await
    }
    async fn stored_bytes(&self, tenant: &str) -> Result<u64> {
        self.time("stored_bytes", self.inner.stored_bytes(tenant)).await
    }
}
