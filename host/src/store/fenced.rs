//! A store whose every record write is fenced by one lease: the store the owner of an
//! agent's background work (its change-feed cursor, its mailbox, its dead letters) writes
//! through. Each write becomes a [`RecordStore::record_apply`] with the lease's
//! [`Fence`], so once another node took the lease (a later epoch), a former owner that
//! wakes up (paused, partitioned) cannot move a cursor, remove a message or park a dead
//! letter any more: its writes fail with [`StoreError::Fenced`]. Reads and document
//! writes go straight through.

use std::sync::Arc;

use super::wrapper::{Wrapper, WrapsDocuments, WrapsFeed, WrapsGraph, WrapsRecords};
use super::{Fence, Quota, RecordKind, RecordOp, Result, Store, StoreError};

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

impl Wrapper for Fenced {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }
}

impl WrapsDocuments for Fenced {}
impl WrapsFeed for Fenced {}
impl WrapsGraph for Fenced {}

#[async_trait::async_trait]
impl WrapsRecords for Fenced {
    async fn wrapped_record_put_within(
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
    async fn wrapped_record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        let op = RecordOp::Delete { kind, key: key.to_owned(), expected: None };
        Ok(self.inner.record_apply(Some(&self.fence), &[op], Quota::NONE).await?.first() == Some(&1))
    }
    async fn wrapped_record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let ops: Vec<RecordOp> =
            keys.iter().map(|k| RecordOp::Delete { kind, key: k.clone(), expected: None }).collect();
        Ok(self.inner.record_apply(Some(&self.fence), &ops, Quota::NONE).await?.iter().sum())
    }
    async fn wrapped_record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
        // Its own fence always; another one asked for cannot be checked in the same step.
        if fence.is_some_and(|f| *f != self.fence) {
            return Err(StoreError::Fenced { key: self.fence.key.clone(), held: 0, carried: self.fence.epoch });
        }
        self.inner.record_apply(Some(&self.fence), ops, quota).await
    }
}
