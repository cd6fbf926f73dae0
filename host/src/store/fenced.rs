//! A store whose every record write is fenced by one lease: the store the owner of an
//! agent's background work (its change-feed cursor, its mailbox, its dead letters) writes
//! through. Each write becomes a [`RecordStore::record_apply`] with the lease's
//! [`Fence`], so once another node took the lease (a later epoch), a former owner that
//! wakes up (paused, partitioned) cannot move a cursor, remove a message or park a dead
//! letter any more: its writes fail with [`StoreError::Fenced`]. Reads and document
//! writes go straight through.

use std::sync::Arc;
use std::time::Duration;

use super::{
    ChangeEvent, Direction, Document, DocumentStore, Edge, FeedStore, Fence, GraphStore, Page, Quota, RecordKind,
    RecordOp, RecordStore, Result, Scope, Store, StoreError, Usage, WriteOp,
};

/// `inner`, with every record write fenced by `fence`.
pub struct Fenced {
    inner: Arc<dyn Store>,
    fence: Fence,
}

impl Fenced {
    /// Fence `inner`'s record writes with `fence`.
    pub fn new(inner: Arc<dyn Store>, fence: Fence) -> Self {
        Self { inner, fence }
    }

    /// The fence.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

#[async_trait::async_trait]
impl DocumentStore for Fenced {
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>> {
        self.inner.get(scope, collection, key).await
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
        self.inner.put_within(scope, collection, key, value, expected, quota).await
    }
    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        self.inner.delete(scope, collection, key, expected).await
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
        self.inner.list_bounded(scope, collection, prefix, limit, cursor, max_bytes).await
    }
    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], quota: Quota) -> Result<Vec<u64>> {
        self.inner.transact_within(scope, ops, quota).await
    }
}

#[async_trait::async_trait]
impl RecordStore for Fenced {
    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        self.inner.record_get(kind, key).await
    }
    async fn record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        let op = RecordOp::Put { kind, key: key.to_owned(), value, expected };
        let out = self.inner.record_apply(Some(&self.fence), &[op], quota).await?;
        Ok(out.first().copied().unwrap_or(0))
    }
    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        let op = RecordOp::Delete { kind, key: key.to_owned(), expected: None };
        Ok(self.inner.record_apply(Some(&self.fence), &[op], Quota::NONE).await?.first() == Some(&1))
    }
    async fn record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let ops: Vec<RecordOp> =
            keys.iter().map(|k| RecordOp::Delete { kind, key: k.clone(), expected: None }).collect();
        Ok(self.inner.record_apply(Some(&self.fence), &ops, Quota::NONE).await?.iter().sum())
    }
    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.record_list(kind, prefix).await
    }
    async fn record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
        // Its own fence always; another one asked for cannot be checked in the same step.
        if fence.is_some_and(|f| *f != self.fence) {
            return Err(StoreError::Fenced { key: self.fence.key.clone(), held: 0, carried: self.fence.epoch });
        }
        self.inner.record_apply(Some(&self.fence), ops, quota).await
    }

    async fn record_list_revisions(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>, u64)>> {
        self.inner.record_list_revisions(kind, prefix).await
    }
    async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> Result<(u64, Option<u64>)> {
        self.inner.audit_append(event, tenant).await
    }
    async fn audit_list(&self, tenant: Option<&str>, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.audit_list(tenant, since, limit).await
    }
    async fn audit_prune(&self, tenant: Option<&str>, through: u64) -> Result<u64> {
        self.inner.audit_prune(tenant, through).await
    }
    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64> {
        self.inner.purge_tenant_documents(tenant).await
    }
    async fn usage(&self, tenant: &str) -> Result<Usage> {
        self.inner.usage(tenant).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[async_trait::async_trait]
impl FeedStore for Fenced {
    async fn feed_since(&self, tenant: &str, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        self.inner.feed_since(tenant, since, limit).await
    }
    async fn feed_head(&self, tenant: &str) -> Result<u64> {
        self.inner.feed_head(tenant).await
    }
    async fn wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        // Not timed: its latency is how long the feed stayed quiet, not the store's speed.
        self.inner.wait_for(tenant, after, timeout).await
    }
}

#[async_trait::async_trait]
impl GraphStore for Fenced {
    async fn link_within(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        quota: Quota,
    ) -> Result<()> {
        self.inner.link_within(tenant, from, to, kind, attrs, quota).await
    }
    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>> {
        self.inner.edge(tenant, from, to, kind).await
    }
    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        self.inner.unlink(tenant, from, to, kind).await
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
        self.inner.neighbours_bounded(tenant, agent, kind, direction, limit, max_bytes).await
    }
    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        self.inner.remove_agent_edges(tenant, agent).await
    }
}
