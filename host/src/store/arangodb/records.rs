//! Record writes that need a stream transaction: records of a metered kind (their tenant's
//! usage document moves with them), of a replicated kind (each write appends one event to
//! the registry change stream, [`REGISTRY_FEED`], through the same feed machinery as
//! document writes, [`feed::append`]) and fenced multi-record writes
//! ([`RecordStore::record_apply`](crate::store::RecordStore::record_apply)), which may
//! also write documents ([`RecordOp::PutDocument`]: the document, its tenant's usage and
//! its change event in the same transaction).
//!
//! Records of other kinds (messages aside: cursors, leases, nodes, chunks, counters...) are
//! written without a transaction by the caller: they are hot paths and append nothing.
//!
//! The registry stream is the change feed of the pseudo-tenant [`REGISTRY_FEED`] (stream
//! `t:~registry` in `cortex_feed`), so `feed_since`, `feed_head` and `wait_for` read it
//! like any tenant's feed: its head document serialises concurrent writers (of this
//! process or another), numbers are dense and in commit order.
//!
//! Fencing: the lease record is read inside the transaction and, when its epoch is the
//! fence's, written back unchanged with `If-Match: <_rev>` (only ArangoDB's `_rev` moves,
//! not our `rev`, so the lease's own compare-and-swap is unaffected). That write is what
//! orders a fenced write against a concurrent lease write: if another node replaced the
//! lease after our read, the write-back fails (412, or 409 write-write conflict) and the
//! attempt starts over, then finds the new epoch and refuses; if our write-back comes
//! first, the other node's lease write meets our uncommitted document (409) and retries
//! after we commit. A read alone would not do: a stream transaction's reads take no locks,
//! so a takeover could commit between our read and our commit. We do not take the
//! transaction's exclusive lock on `cortex_records` instead because that would stall every
//! record write of the cluster (messages, cursors, other leases) behind each fenced write;
//! the write-back conflicts only with writers of this one lease.

use arangors::document::options::ReplaceOptions;

use super::feed::{self, Pending};
use super::keys::{arango_key, hex};
use super::usage::Meter;
use super::{
    ArangoStore, Coll, DOCUMENTS, FEED, MAX_ATTEMPTS, RECORDS, Step, StoredDoc, StoredRecord, backend, bytes_of,
    cas_delete, cas_put, doc_key, doc_rev, lost_race, read, record_rev, stored_doc, too_busy, with_key,
};
use crate::store::{
    ChangeOp, Fence, Quota, REGISTRY_FEED, RecordKind, RecordOp, Result, Scope, StoreError, lease_epoch, record_tenant,
};

/// The `_key` of a record.
pub(super) fn record_key(kind: RecordKind, key: &str) -> String {
    arango_key(&[kind.as_str(), key])
}

/// The scope registry changes are appended under: the pseudo-tenant, no agent.
fn registry_scope() -> Scope {
    Scope::new(REGISTRY_FEED, "")
}

/// The record kind an op writes (`None`: a document).
fn kind_of(op: &RecordOp) -> Option<RecordKind> {
    match op {
        RecordOp::Put { kind, .. } | RecordOp::Delete { kind, .. } => Some(*kind),
        RecordOp::PutDocument { .. } => None,
    }
}

/// Whether a write of `kind` needs a transaction (usage or the registry stream).
pub(super) fn needs_transaction(kind: RecordKind) -> bool {
    kind.is_metered() || kind.is_replicated()
}

/// Refuse unless the lease record `fence.key` (read through `records`, bound to the
/// write's transaction) holds `fence.epoch`; then write it back unchanged so a concurrent
/// lease write conflicts with this transaction (see the module docs). `Retry` when the
/// lease changed since the read.
async fn hold_fence(records: &Coll, fence: &Fence) -> Result<Step<()>> {
    let k = record_key(RecordKind::Lease, &fence.key);
    let current = read::<StoredRecord>(records, &k).await?;
    let held = match &current {
        Some((_, r)) => lease_epoch(&bytes_of(&r.value)?),
        None => 0,
    };
    let Some((rev, lease)) = current.filter(|_| held == fence.epoch && held != 0) else {
        return Err(StoreError::Fenced { key: fence.key.clone(), held, carried: fence.epoch });
    };
    let body = with_key(&k, &lease)?;
    match records.replace_document(&k, body, ReplaceOptions::default(), Some(rev)).await {
        Ok(_) => Ok(Step::Done(())),
        Err(e) if lost_race(&e) => Ok(Step::Retry),
        Err(e) => Err(backend(e)),
    }
}

/// The meter of `tenant` among `meters`, read through `records` the first time.
async fn meter_of<'m>(
    store: &ArangoStore,
    meters: &'m mut Vec<Meter>,
    records: &Coll,
    tenant: &str,
) -> Result<&'m mut Meter> {
    let i = match meters.iter().position(|m| m.tenant() == tenant) {
        Some(i) => i,
        None => {
            meters.push(store.meter(records, tenant).await?);
            meters.len() - 1
        }
    };
    Ok(&mut meters[i])
}

impl ArangoStore {
    /// Apply `ops` in one stream transaction (with `fence` checked and held in it), with
    /// their usage and registry events; retries lost races, then wakes this process's
    /// registry waiters. Returns a put's new revision, a delete's 1 (existed) or 0.
    pub(super) async fn apply_records(
        &self,
        fence: Option<&Fence>,
        ops: &[RecordOp],
        quota: Quota,
        what: &str,
    ) -> Result<Vec<u64>> {
        for _ in 0..MAX_ATTEMPTS {
            if let Step::Done((out, heads)) = self.apply_records_once(fence, ops, quota).await? {
                for (tenant, head) in heads {
                    self.signal.publish(&tenant, head);
                }
                return Ok(out);
            }
        }
        Err(too_busy(what))
    }

    /// One attempt of [`Self::apply_records`]; also returns the new heads of the streams
    /// it appended to (the registry's, a document's tenant's).
    async fn apply_records_once(
        &self,
        fence: Option<&Fence>,
        ops: &[RecordOp],
        quota: Quota,
    ) -> Result<Step<(Vec<u64>, Vec<(String, u64)>)>> {
        let replicated = ops.iter().any(|op| kind_of(op).is_some_and(RecordKind::is_replicated));
        let documents = ops.iter().any(|op| kind_of(op).is_none());
        let collections: &[&str] = match (replicated, documents) {
            (_, true) => &[RECORDS, FEED, DOCUMENTS],
            (true, false) => &[RECORDS, FEED],
            (false, false) => &[RECORDS],
        };
        self.in_transaction(collections, |id| async move {
            let records = self.records.clone_with_transaction(id.clone()).map_err(backend)?;
            let docs =
                if documents { Some(self.docs.clone_with_transaction(id.clone()).map_err(backend)?) } else { None };
            // The change events of documents, by scope.
            let mut changes: Vec<(&crate::store::Scope, Vec<Pending<'_>>)> = Vec::new();
            if let Some(f) = fence
                && let Step::Retry = hold_fence(&records, f).await?
            {
                return Ok(Step::Retry);
            }
            let mut meters: Vec<Meter> = Vec::new();
            let mut out = Vec::with_capacity(ops.len());
            let mut events = Vec::new();
            for op in ops {
                match op {
                    RecordOp::Put { kind, key, value, expected } => {
                        let k = record_key(*kind, key);
                        let make = |rev| StoredRecord {
                            kind: kind.as_str().to_owned(),
                            key: key.clone(),
                            khex: hex(key.as_bytes()),
                            value: hex(value),
                            rev,
                        };
                        let Step::Done((rev, old)) = cas_put(&records, &k, *expected, record_rev, make).await? else {
                            return Ok(Step::Retry);
                        };
                        if kind.is_metered() {
                            let m = meter_of(self, &mut meters, &records, record_tenant(key)).await?;
                            m.step(value.len() as u64, old.map_or(0, |o| o.value.len() as u64 / 2), quota)?;
                        }
                        if kind.is_replicated() {
                            events.push(Pending { collection: kind.as_str(), key, op: ChangeOp::Put, revision: rev });
                        }
                        out.push(rev);
                    }
                    RecordOp::Delete { kind, key, expected } => {
                        let k = record_key(*kind, key);
                        let Step::Done(removed) =
                            cas_delete::<StoredRecord>(&records, &k, *expected, record_rev).await?
                        else {
                            return Ok(Step::Retry);
                        };
                        let Some(old) = removed else {
                            out.push(0);
                            continue;
                        };
                        if kind.is_metered() {
                            let m = meter_of(self, &mut meters, &records, record_tenant(key)).await?;
                            m.remove(old.value.len() as u64 / 2, 0);
                        }
                        if kind.is_replicated() {
                            events.push(Pending {
                                collection: kind.as_str(),
                                key,
                                op: ChangeOp::Delete,
                                revision: old.rev,
                            });
                        }
                        out.push(1);
                    }
                    RecordOp::PutDocument { scope, collection, key, value } => {
                        let Some(docs) = &docs else { return Err(no_documents()) };
                        let k = doc_key(&scope.tenant, collection, key);
                        let make = stored_doc(&scope.tenant, collection, key, value);
                        let Step::Done((rev, old)) = cas_put(docs, &k, None, doc_rev, make).await? else {
                            return Ok(Step::Retry);
                        };
                        let m = meter_of(self, &mut meters, &records, &scope.tenant).await?;
                        m.step(value.len() as u64, old.map_or(0, |d: StoredDoc| d.size), quota)?;
                        let event = Pending { collection, key, op: ChangeOp::Put, revision: rev };
                        match changes.iter_mut().find(|(s, _)| *s == scope) {
                            Some((_, events)) => events.push(event),
                            None => changes.push((scope, vec![event])),
                        }
                        out.push(rev);
                    }
                }
            }
            for m in meters {
                if let Step::Retry = m.commit(&records, quota).await? {
                    return Ok(Step::Retry);
                }
            }
            let mut heads = Vec::new();
            if events.is_empty() && changes.is_empty() {
                return Ok(Step::Done((out, heads)));
            }
            let feed = self.feed.clone_with_transaction(id).map_err(backend)?;
            let registry = registry_scope();
            for (scope, events) in std::iter::once((&registry, events)).chain(changes) {
                match feed::append(&feed, scope, &events).await? {
                    Step::Done(Some(head)) => heads.push((scope.tenant.to_string(), head)),
                    Step::Done(None) => {}
                    Step::Retry => return Ok(Step::Retry),
                }
            }
            Ok(Step::Done((out, heads)))
        })
        .await
    }
}

fn no_documents() -> StoreError {
    StoreError::Backend {
        message: "arangodb: a document op outside a transaction over the documents".into(),
        transient: false,
        source: None,
    }
}
