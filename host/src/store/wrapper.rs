//! The delegation every store wrapper ([`super::Fenced`], [`super::Instrumented`],
//! [`super::Faulty`], [`super::Overlay`]) shares, written once: a wrapper says what it
//! wraps ([`Wrapper::inner`]) and what it does around each call ([`Wrapper::around`]),
//! and takes the store traits it does not implement itself from the blanket impls here
//! by implementing the matching marker ([`WrapsDocuments`], [`WrapsRecords`],
//! [`WrapsFeed`], [`WrapsGraph`]). The few calls a wrapper changes beyond that (record
//! writes, `wait_for`, `snapshot`) are default methods of those markers it overrides.
//!
//! The traits' default methods (`put`, `list`, `transact`, `record_put`, `link`,
//! `neighbours`, `stored_bytes`) are not delegated: they stay the traits' own, so they go
//! through the wrapper's `*_within`, `*_bounded` and `usage` like every other call.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{
    ChangeEvent, Direction, Document, DocumentStore, Edge, FeedStore, Fence, GraphStore, Page, Quota, RecordKind,
    RecordOp, RecordStore, Result, Scope, Store, Usage, WriteOp, backup::StoreSnapshot,
};

/// One call through a wrapper: its operation name and whether it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The operation's name (as in the `cortex_store_operation_seconds` metric).
    pub op: &'static str,
    /// Whether it may write.
    pub write: bool,
}

const fn read(op: &'static str) -> Call {
    Call { op, write: false }
}

const fn write(op: &'static str) -> Call {
    Call { op, write: true }
}

/// A store over another one.
pub trait Wrapper: Send + Sync + 'static {
    /// The store it wraps.
    fn inner(&self) -> &dyn Store;

    /// Run `f`, the wrapped store's answer to `call`, with what the wrapper adds (the
    /// default: nothing).
    fn around<'a, T: Send + 'a>(&'a self, call: Call, f: BoxFuture<'a, Result<T>>) -> BoxFuture<'a, Result<T>> {
        let _ = call;
        f
    }
}

/// Take [`DocumentStore`] from [`Wrapper`].
pub trait WrapsDocuments: Wrapper {}

/// Take [`FeedStore`] from [`Wrapper`].
#[async_trait::async_trait]
pub trait WrapsFeed: Wrapper {
    /// [`FeedStore::wait_for`]; by default straight to the wrapped store, not through
    /// [`Wrapper::around`] (its latency is how long the feed stayed quiet).
    async fn wrapped_wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        self.inner().wait_for(tenant, after, timeout).await
    }
}

/// Take [`GraphStore`] from [`Wrapper`].
pub trait WrapsGraph: Wrapper {}

/// Take [`RecordStore`] from [`Wrapper`]; its record writes may be changed.
#[async_trait::async_trait]
pub trait WrapsRecords: Wrapper {
    /// [`RecordStore::record_put_within`].
    async fn wrapped_record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        self.around(write("record_put"), self.inner().record_put_within(kind, key, value, expected, quota)).await
    }
    /// [`RecordStore::record_delete`].
    async fn wrapped_record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.around(write("record_delete"), self.inner().record_delete(kind, key)).await
    }
    /// [`RecordStore::record_delete_many`].
    async fn wrapped_record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        self.around(write("record_delete_many"), self.inner().record_delete_many(kind, keys)).await
    }
    /// [`RecordStore::record_apply`].
    async fn wrapped_record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
        self.around(write("record_apply"), self.inner().record_apply(fence, ops, quota)).await
    }
    /// [`RecordStore::snapshot`]; by default none (the trait's default).
    async fn wrapped_snapshot(&self) -> Result<Option<Box<dyn StoreSnapshot>>> {
        Ok(None)
    }
}

#[async_trait::async_trait]
impl<W: WrapsDocuments> DocumentStore for W {
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>> {
        self.around(read("get"), self.inner().get(scope, collection, key)).await
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
        self.around(write("put"), self.inner().put_within(scope, collection, key, value, expected, quota)).await
    }
    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        self.around(write("delete"), self.inner().delete(scope, collection, key, expected)).await
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
        self.around(read("list"), self.inner().list_bounded(scope, collection, prefix, limit, cursor, max_bytes)).await
    }
    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], quota: Quota) -> Result<Vec<u64>> {
        self.around(write("transact"), self.inner().transact_within(scope, ops, quota)).await
    }
}

#[async_trait::async_trait]
impl<W: WrapsRecords> RecordStore for W {
    async fn snapshot(&self) -> Result<Option<Box<dyn StoreSnapshot>>> {
        self.wrapped_snapshot().await
    }
    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        self.around(read("record_get"), self.inner().record_get(kind, key)).await
    }
    async fn record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        self.wrapped_record_put_within(kind, key, value, expected, quota).await
    }
    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.wrapped_record_delete(kind, key).await
    }
    async fn record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        self.wrapped_record_delete_many(kind, keys).await
    }
    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.around(read("record_list"), self.inner().record_list(kind, prefix)).await
    }
    async fn record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
        self.wrapped_record_apply(fence, ops, quota).await
    }
    async fn record_list_revisions(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>, u64)>> {
        self.around(read("record_list"), self.inner().record_list_revisions(kind, prefix)).await
    }
    async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> Result<(u64, Option<u64>)> {
        self.around(write("audit_append"), self.inner().audit_append(event, tenant)).await
    }
    async fn audit_list(&self, tenant: Option<&str>, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.around(read("audit_list"), self.inner().audit_list(tenant, since, limit)).await
    }
    async fn audit_prune(&self, tenant: Option<&str>, through: u64) -> Result<u64> {
        self.around(write("audit_prune"), self.inner().audit_prune(tenant, through)).await
    }
    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64> {
        self.around(write("purge_tenant"), self.inner().purge_tenant_documents(tenant)).await
    }
    async fn usage(&self, tenant: &str) -> Result<Usage> {
        self.around(read("stored_bytes"), self.inner().usage(tenant)).await
    }
    async fn ping(&self) -> Result<()> {
        self.around(read("ping"), self.inner().ping()).await
    }
}

#[async_trait::async_trait]
impl<W: WrapsFeed> FeedStore for W {
    async fn feed_since(&self, tenant: &str, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        self.around(read("feed_since"), self.inner().feed_since(tenant, since, limit)).await
    }
    async fn feed_head(&self, tenant: &str) -> Result<u64> {
        self.around(read("feed_head"), self.inner().feed_head(tenant)).await
    }
    async fn wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        self.wrapped_wait_for(tenant, after, timeout).await
    }
}

#[async_trait::async_trait]
impl<W: WrapsGraph> GraphStore for W {
    async fn link_within(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        quota: Quota,
    ) -> Result<()> {
        self.around(write("link"), self.inner().link_within(tenant, from, to, kind, attrs, quota)).await
    }
    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>> {
        self.around(read("edge"), self.inner().edge(tenant, from, to, kind)).await
    }
    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        self.around(write("unlink"), self.inner().unlink(tenant, from, to, kind)).await
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
        let f = self.inner().neighbours_bounded(tenant, agent, kind, direction, limit, max_bytes);
        self.around(read("neighbours"), f).await
    }
    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        self.around(write("remove_agent_edges"), self.inner().remove_agent_edges(tenant, agent)).await
    }
}
