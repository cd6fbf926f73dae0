//! The embedded backend: one redb file in the data directory, zero set-up.
//!
//! Layout: table `documents` maps `tenant | collection | key` (each part length-prefixed, so
//! no tenant's key range can overlap another's) to `revision (u64 BE) ++ JSON text`.
//! Every write transaction commits with immediate durability (fsync) before it returns.
//!
//! The change feed ([`feed`]) is appended in the same write transaction as the document
//! writes it reports, and waiters are woken in-process after the commit. Graph edges live
//! in two tables, one per direction ([`graph`]).

pub mod backup;
mod feed;
mod graph;

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    ChangeOp, Document, DocumentStore, FeedSignal, Page, Quota, RecordKind, RecordStore, Result, Scope, StoreError,
    Usage, WriteOp, record_tenant,
};

const DOCUMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("documents");
/// Bytes stored per tenant (document values, edges, metered records), kept in the same
/// transaction as each write.
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");
/// Graph edges per tenant, kept in the same transaction as each link and unlink.
const EDGE_COUNT: TableDefinition<&str, u64> = TableDefinition::new("edge_counts");
/// Registry records: `kind/key` to `revision (u64 BE) ++ JSON`.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// The audit log: sequence number to JSON.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Each tenant's own audit log: `(tenant id, its sequence number)` to JSON.
const TENANT_AUDIT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("tenant_audit");

/// The documents table, open in a write transaction.
type DocTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The tables a document write touches.
struct Tables<'t> {
    docs: DocTable<'t>,
    usage: redb::Table<'t, &'static str, u64>,
    feed: feed::FeedTables<'t>,
}

/// Documents in a redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    signal: Arc<FeedSignal>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Corrupted(m) => StoreError::Corrupted(m),
        redb::Error::UpgradeRequired(v) => StoreError::Corrupted(format!("file format {v} needs an upgrade")),
        redb::Error::DatabaseAlreadyOpen => StoreError::Backend {
            message: "the database is open in another process".into(),
            transient: true,
            source: None,
        },
        other => StoreError::Backend { message: other.to_string(), transient: false, source: None },
    }
}

/// `tenant | collection |` as a key prefix.
fn collection_prefix(tenant: &str, collection: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + tenant.len() + collection.len());
    push_part(&mut k, tenant.as_bytes());
    push_part(&mut k, collection.as_bytes());
    k
}

fn push_part(buf: &mut Vec<u8>, part: &[u8]) {
    // Names are validated far below u16::MAX bytes; saturate defensively.
    let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&part[..usize::from(len)]);
}

/// Every key of `table` that starts with `prefix`.
fn keys_with_prefix<T: ReadableTable<&'static [u8], V>, V: redb::Value + 'static>(
    table: &T,
    prefix: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for item in table.range::<&[u8]>(prefix..).map_err(backend)? {
        let (k, _) = item.map_err(backend)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push(k.value().to_vec());
    }
    Ok(out)
}

fn doc_key(scope: &Scope, collection: &str, key: &str) -> Vec<u8> {
    let mut k = collection_prefix(&scope.tenant, collection);
    k.extend_from_slice(key.as_bytes());
    k
}

fn encode(revision: u64, value: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(value.as_bytes());
    v
}

fn decode(key: String, raw: &[u8]) -> Result<Document> {
    let (rev, json) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupted(format!("document {key:?} is shorter than its header")))?;
    let value = std::str::from_utf8(json)
        .map_err(|_| StoreError::Corrupted(format!("document {key:?} is not UTF-8")))?
        .to_owned();
    Ok(Document { key, value, revision: u64::from_be_bytes(*rev) })
}

fn revision_of(raw: &[u8]) -> Result<u64> {
    raw.first_chunk::<8>()
        .map(|r| u64::from_be_bytes(*r))
        .ok_or_else(|| StoreError::Corrupted("document shorter than its header".into()))
}

impl EmbeddedStore {
    /// Open (or create) `dir/documents.redb`.
    pub fn open(dir: &Path) -> Result<Self> {
        let open = |source| StoreError::Open { path: dir.to_owned(), source };
        crate::fsutil::private_dir(dir).map_err(open)?;
        // redb creates its file with the umask's mode: create it owner-only first.
        let file = dir.join("documents.redb");
        crate::fsutil::ensure_private_file(&file).map_err(open)?;
        let db = Database::create(file).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(DOCUMENTS).map_err(backend)?;
        txn.open_table(USAGE).map_err(backend)?;
        txn.open_table(EDGE_COUNT).map_err(backend)?;
        txn.open_table(RECORDS).map_err(backend)?;
        txn.open_table(AUDIT).map_err(backend)?;
        txn.open_table(TENANT_AUDIT).map_err(backend)?;
        feed::create_tables(&txn)?;
        graph::create_tables(&txn)?;
        txn.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db), signal: Arc::default() })
    }

    /// Run a document write transaction on a blocking thread (commits fsync, which must
    /// not stall the async workers), then wake the waiters of the feeds it appended to.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // The writer's span (a host call, a request) is current here, not on the blocking thread.
        let trace = crate::telemetry::otel::TraceContext::current();
        let (out, head) = self
            .write_txn(move |txn| {
                let mut tables = Tables {
                    docs: txn.open_table(DOCUMENTS).map_err(backend)?,
                    usage: txn.open_table(USAGE).map_err(backend)?,
                    feed: feed::FeedTables::open(txn, trace)?,
                };
                let out = f(&mut tables)?;
                Ok((out, tables.feed.appended))
            })
            .await?;
        for (tenant, head) in head {
            self.signal.publish(&tenant, head);
        }
        Ok(out)
    }

    /// Run a read on a blocking thread: a scan (and the file reads under it) never stalls
    /// the async workers. Point reads of one key stay inline.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            f(&txn)
        })
        .await
        .map_err(|e| StoreError::Backend {
            message: format!("read task failed: {e}"),
            transient: true,
            source: None,
        })?
    }

    async fn write_txn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(backend)?;
            let out = f(&txn)?;
            // On error above, `txn` is dropped here: redb aborts it, nothing is applied.
            txn.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend {
            message: format!("write task failed: {e}"),
            transient: true,
            source: None,
        })?
    }
}

/// The current revision and value size of `key` (0, 0 when absent), checked against `expected`.
fn check_expected(docs: &DocTable<'_>, key: &[u8], expected: Option<u64>) -> Result<(u64, u64)> {
    let (current, size) = match docs.get(key).map_err(backend)? {
        Some(raw) => (revision_of(raw.value())?, raw.value().len().saturating_sub(8) as u64),
        None => (0, 0),
    };
    match expected {
        Some(want) if want != current => Err(StoreError::Conflict { current }),
        _ => Ok((current, size)),
    }
}

fn add_usage(t: &mut Tables<'_>, tenant: &str, add: u64, remove: u64) -> Result<()> {
    add_bytes(&mut t.usage, tenant, add, remove)
}

/// Bytes the tenant stores, as counted in `table`.
fn bytes_of<T: ReadableTable<&'static str, u64>>(table: &T, tenant: &str) -> Result<u64> {
    Ok(table.get(tenant).map_err(backend)?.map_or(0, |v| v.value()))
}

/// Change a tenant's count in a usage table (bytes or edges).
fn add_bytes(table: &mut redb::Table<'_, &'static str, u64>, tenant: &str, add: u64, remove: u64) -> Result<()> {
    let now = bytes_of(table, tenant)?;
    table.insert(tenant, now.saturating_add(add).saturating_sub(remove)).map_err(backend)?;
    Ok(())
}

/// Check the bytes quota after a write transaction changed the tenant's usage from `before`.
fn check_bytes(t: &Tables<'_>, tenant: &str, before: u64, quota: Quota) -> Result<()> {
    let after = bytes_of(&t.usage, tenant)?;
    quota.check(Usage { bytes: before, edges: 0 }, Usage { bytes: after, edges: 0 })
}

/// Write a document and append its change event.
fn apply_put(
    t: &mut Tables<'_>,
    scope: &Scope,
    collection: &str,
    key: &str,
    value: &str,
    expected: Option<u64>,
) -> Result<u64> {
    let k = doc_key(scope, collection, key);
    let (current, old_size) = check_expected(&t.docs, &k, expected)?;
    let next = current + 1;
    t.docs.insert(k.as_slice(), encode(next, value).as_slice()).map_err(backend)?;
    add_usage(t, &scope.tenant, value.len() as u64, old_size)?;
    t.feed.append(scope, collection, key, ChangeOp::Put, next)?;
    Ok(next)
}

/// Remove a document and append its change event (none when it was absent).
fn apply_delete(t: &mut Tables<'_>, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
    let k = doc_key(scope, collection, key);
    let (current, old_size) = check_expected(&t.docs, &k, expected)?;
    if current == 0 {
        return Ok(false);
    }
    t.docs.remove(k.as_slice()).map_err(backend)?;
    add_usage(t, &scope.tenant, 0, old_size)?;
    t.feed.append(scope, collection, key, ChangeOp::Delete, current)?;
    Ok(true)
}

#[async_trait::async_trait]
impl DocumentStore for EmbeddedStore {
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>> {
        let k = doc_key(scope, collection, key);
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(DOCUMENTS).map_err(backend)?;
        match table.get(k.as_slice()).map_err(backend)? {
            Some(raw) => decode(key.to_owned(), raw.value()).map(Some),
            None => Ok(None),
        }
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
        let (s, c, k, v) = (scope.clone(), collection.to_owned(), key.to_owned(), value.to_owned());
        self.write(move |t| {
            let before = bytes_of(&t.usage, &s.tenant)?;
            let rev = apply_put(t, &s, &c, &k, &v, expected)?;
            check_bytes(t, &s.tenant, before, quota)?;
            Ok(rev)
        })
        .await
    }

    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        let (s, c, k) = (scope.clone(), collection.to_owned(), key.to_owned());
        self.write(move |t| apply_delete(t, &s, &c, &k, expected)).await
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
        let base = collection_prefix(&scope.tenant, collection);
        let mut want = base.clone();
        want.extend_from_slice(prefix.as_bytes());
        let start = match cursor {
            Some(c) if c.as_bytes() >= prefix.as_bytes() => {
                let mut s = base.clone();
                s.extend_from_slice(c.as_bytes());
                Bound::Excluded(s)
            }
            _ => Bound::Included(want.clone()),
        };
        self.read(move |txn| {
            let table = txn.open_table(DOCUMENTS).map_err(backend)?;
            let range = table.range::<&[u8]>((start.as_ref().map(Vec::as_slice), Bound::Unbounded)).map_err(backend)?;
            let mut page = Page::default();
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut bytes = 0usize;
            for item in range {
                let (k, v) = item.map_err(backend)?;
                let k = k.value();
                if !k.starts_with(&want) {
                    break;
                }
                // The value is only borrowed from redb's page until it is decoded: the
                // page stops before copying what would pass the budget.
                let size = (k.len() - base.len()).saturating_add(v.value().len().saturating_sub(8));
                let full = page.documents.len() == limit
                    || (!page.documents.is_empty() && bytes.saturating_add(size) > max_bytes);
                if full {
                    page.next = page.documents.last().map(|d| d.key.clone());
                    break;
                }
                bytes = bytes.saturating_add(size);
                let key = String::from_utf8_lossy(&k[base.len()..]).into_owned();
                page.documents.push(decode(key, v.value())?);
            }
            Ok(page)
        })
        .await
    }

    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], quota: Quota) -> Result<Vec<u64>> {
        let s = scope.clone();
        let ops = ops.to_vec();
        self.write(move |t| {
            let before = bytes_of(&t.usage, &s.tenant)?;
            let mut revisions = Vec::with_capacity(ops.len());
            for op in &ops {
                let rev = match op {
                    WriteOp::Put { collection, key, value, expected } => {
                        apply_put(t, &s, collection, key, value, *expected)?
                    }
                    WriteOp::Delete { collection, key, expected } => {
                        apply_delete(t, &s, collection, key, *expected)?;
                        0
                    }
                };
                revisions.push(rev);
            }
            check_bytes(t, &s.tenant, before, quota)?;
            Ok(revisions)
        })
        .await
    }
}

fn record_key(kind: RecordKind, key: &str) -> String {
    format!("{}/{key}", kind.as_str())
}

/// The scope registry changes are appended under ([`super::REGISTRY_FEED`]).
fn registry_scope() -> Scope {
    Scope::new(super::REGISTRY_FEED, "")
}

/// The record writes of one write transaction: the records table, usage, and the
/// registry change stream (appended for replicated kinds); the documents table too, opened
/// by the first document written beside the records.
struct RecordTables<'t> {
    txn: &'t redb::WriteTransaction,
    records: redb::Table<'t, &'static str, &'static [u8]>,
    usage: redb::Table<'t, &'static str, u64>,
    feed: feed::FeedTables<'t>,
    docs: Option<DocTable<'t>>,
}

impl<'t> RecordTables<'t> {
    fn open(txn: &'t redb::WriteTransaction, trace: Option<crate::telemetry::otel::TraceContext>) -> Result<Self> {
        Ok(Self {
            txn,
            records: txn.open_table(RECORDS).map_err(backend)?,
            usage: txn.open_table(USAGE).map_err(backend)?,
            feed: feed::FeedTables::open(txn, trace)?,
            docs: None,
        })
    }

    /// Put a document (no expected revision) with its usage (within `quota`) and its
    /// change event, as [`apply_put`] does.
    fn put_document(&mut self, scope: &Scope, collection: &str, key: &str, value: &str, quota: Quota) -> Result<u64> {
        let docs = match &mut self.docs {
            Some(docs) => docs,
            None => self.docs.insert(self.txn.open_table(DOCUMENTS).map_err(backend)?),
        };
        let k = doc_key(scope, collection, key);
        let (current, old_size) = check_expected(docs, &k, None)?;
        let next = current + 1;
        docs.insert(k.as_slice(), encode(next, value).as_slice()).map_err(backend)?;
        let before = bytes_of(&self.usage, &scope.tenant)?;
        add_bytes(&mut self.usage, &scope.tenant, value.len() as u64, old_size)?;
        let after = bytes_of(&self.usage, &scope.tenant)?;
        quota.check(Usage { bytes: before, edges: 0 }, Usage { bytes: after, edges: 0 })?;
        self.feed.append(scope, collection, key, ChangeOp::Put, next)?;
        Ok(next)
    }

    /// The current revision and value size of a record (0, 0 when absent).
    fn current(&self, k: &str) -> Result<(u64, u64)> {
        Ok(match self.records.get(k).map_err(backend)? {
            Some(raw) => (revision_of(raw.value())?, raw.value().len().saturating_sub(8) as u64),
            None => (0, 0),
        })
    }

    /// Put one record (compare-and-swap with `expected`), metering and logging it.
    fn put(&mut self, kind: RecordKind, key: &str, value: &[u8], expected: Option<u64>, quota: Quota) -> Result<u64> {
        let k = record_key(kind, key);
        let (current, old_size) = self.current(&k)?;
        if expected.is_some_and(|want| want != current) {
            return Err(StoreError::Conflict { current });
        }
        if kind.is_metered() {
            let tenant = record_tenant(key);
            let before = bytes_of(&self.usage, tenant)?;
            add_bytes(&mut self.usage, tenant, value.len() as u64, old_size)?;
            let after = bytes_of(&self.usage, tenant)?;
            quota.check(Usage { bytes: before, edges: 0 }, Usage { bytes: after, edges: 0 })?;
        }
        let mut v = (current + 1).to_be_bytes().to_vec();
        v.extend_from_slice(value);
        self.records.insert(k.as_str(), v.as_slice()).map_err(backend)?;
        if kind.is_replicated() {
            self.feed.append(&registry_scope(), kind.as_str(), key, ChangeOp::Put, current + 1)?;
        }
        Ok(current + 1)
    }

    /// Delete one record (compare-and-swap with `expected`); whether it existed.
    fn delete(&mut self, kind: RecordKind, key: &str, expected: Option<u64>) -> Result<bool> {
        let k = record_key(kind, key);
        if let Some(want) = expected {
            let (current, _) = self.current(&k)?;
            if want != current {
                return Err(StoreError::Conflict { current });
            }
        }
        let Some(old) = self.records.remove(k.as_str()).map_err(backend)? else { return Ok(false) };
        let rev = revision_of(old.value())?;
        let size = old.value().len().saturating_sub(8) as u64;
        drop(old);
        if kind.is_metered() {
            add_bytes(&mut self.usage, record_tenant(key), 0, size)?;
        }
        if kind.is_replicated() {
            self.feed.append(&registry_scope(), kind.as_str(), key, ChangeOp::Delete, rev)?;
        }
        Ok(true)
    }

    /// Refuse unless the lease record `fence.key` holds `fence.epoch`.
    fn check_fence(&self, fence: &super::Fence) -> Result<()> {
        let held = match self.records.get(record_key(RecordKind::Lease, &fence.key).as_str()).map_err(backend)? {
            Some(raw) => super::lease_epoch(raw.value().get(8..).unwrap_or_default()),
            None => 0,
        };
        if held == fence.epoch && held != 0 {
            Ok(())
        } else {
            Err(StoreError::Fenced { key: fence.key.clone(), held, carried: fence.epoch })
        }
    }
}

impl EmbeddedStore {
    /// A write transaction over the record tables; wakes the waiters of the streams it
    /// appended to (the registry's, a document's tenant's).
    async fn write_records<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RecordTables<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // The writer's span is current here, not on the blocking thread (see `write`).
        let trace = crate::telemetry::otel::TraceContext::current();
        let (out, head) = self
            .write_txn(move |txn| {
                let mut t = RecordTables::open(txn, trace)?;
                let out = f(&mut t)?;
                Ok((out, t.feed.appended))
            })
            .await?;
        for (tenant, head) in head {
            self.signal.publish(&tenant, head);
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl RecordStore for EmbeddedStore {
    async fn snapshot(&self) -> Result<Option<Box<dyn crate::store::backup::StoreSnapshot>>> {
        Ok(Some(Box::new(EmbeddedStore::snapshot(self)?)))
    }
    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(RECORDS).map_err(backend)?;
        let Some(raw) = table.get(record_key(kind, key).as_str()).map_err(backend)? else { return Ok(None) };
        let raw = raw.value();
        Ok(Some((raw.get(8..).unwrap_or_default().to_vec(), revision_of(raw)?)))
    }

    async fn record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        let key = key.to_owned();
        self.write_records(move |t| t.put(kind, &key, &value, expected, quota)).await
    }

    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        Ok(self.record_delete_many(kind, &[key.to_owned()]).await? == 1)
    }

    async fn record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        let keys = keys.to_vec();
        self.write_records(move |t| {
            let mut n = 0;
            for k in &keys {
                n += u64::from(t.delete(kind, k, None)?);
            }
            Ok(n)
        })
        .await
    }

    async fn record_apply(
        &self,
        fence: Option<&super::Fence>,
        ops: &[super::RecordOp],
        quota: Quota,
    ) -> Result<Vec<u64>> {
        let fence = fence.cloned();
        let ops = ops.to_vec();
        self.write_records(move |t| {
            if let Some(f) = &fence {
                t.check_fence(f)?;
            }
            ops.iter()
                .map(|op| match op {
                    super::RecordOp::Put { kind, key, value, expected } => t.put(*kind, key, value, *expected, quota),
                    super::RecordOp::Delete { kind, key, expected } => t.delete(*kind, key, *expected).map(u64::from),
                    super::RecordOp::PutDocument { scope, collection, key, value } => {
                        t.put_document(scope, collection, key, value, quota)
                    }
                })
                .collect()
        })
        .await
    }

    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.record_list_revisions(kind, prefix).await?.into_iter().map(|(k, v, _)| (k, v)).collect())
    }

    async fn record_list_revisions(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>, u64)>> {
        let start = record_key(kind, prefix);
        let base = record_key(kind, "").len();
        self.read(move |txn| {
            let table = txn.open_table(RECORDS).map_err(backend)?;
            let mut out = Vec::new();
            for item in table.range::<&str>(start.as_str()..).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let k = k.value();
                if !k.starts_with(&start) {
                    break;
                }
                let raw = v.value();
                out.push((k[base..].to_owned(), raw.get(8..).unwrap_or_default().to_vec(), revision_of(raw)?));
            }
            Ok(out)
        })
        .await
    }

    async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> Result<(u64, Option<u64>)> {
        let tenant = tenant.map(str::to_owned);
        self.write_txn(move |txn| {
            let mut table = txn.open_table(AUDIT).map_err(backend)?;
            let last = table.last().map_err(backend)?.map_or(0, |(k, _)| k.value());
            table.insert(last + 1, event.as_slice()).map_err(backend)?;
            let Some(tenant) = tenant else { return Ok((last + 1, None)) };
            let mut own = txn.open_table(TENANT_AUDIT).map_err(backend)?;
            let own_last =
                match own.range((tenant.as_str(), 0)..=(tenant.as_str(), u64::MAX)).map_err(backend)?.next_back() {
                    Some(item) => item.map_err(backend)?.0.value().1,
                    None => 0,
                };
            own.insert((tenant.as_str(), own_last + 1), event.as_slice()).map_err(backend)?;
            Ok((last + 1, Some(own_last + 1)))
        })
        .await
    }

    async fn audit_list(&self, tenant: Option<&str>, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| {
            let mut out = Vec::new();
            let from = since.saturating_add(1);
            if let Some(tenant) = tenant {
                let table = txn.open_table(TENANT_AUDIT).map_err(backend)?;
                let range = (tenant.as_str(), from)..=(tenant.as_str(), u64::MAX);
                for item in table.range(range).map_err(backend)?.take(limit) {
                    let (k, v) = item.map_err(backend)?;
                    out.push((k.value().1, v.value().to_vec()));
                }
                return Ok(out);
            }
            let table = txn.open_table(AUDIT).map_err(backend)?;
            for item in table.range(from..).map_err(backend)?.take(limit) {
                let (k, v) = item.map_err(backend)?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn audit_prune(&self, tenant: Option<&str>, through: u64) -> Result<u64> {
        let tenant = tenant.map(str::to_owned);
        self.write_txn(move |txn| {
            let mut n = 0;
            if let Some(tenant) = tenant {
                let mut table = txn.open_table(TENANT_AUDIT).map_err(backend)?;
                let last =
                    match table.range((tenant.as_str(), 0)..=(tenant.as_str(), u64::MAX)).map_err(backend)?.next_back()
                    {
                        Some(item) => item.map_err(backend)?.0.value().1,
                        None => 0,
                    };
                let through = through.min(last.saturating_sub(1));
                let seqs: Vec<u64> = table
                    .range((tenant.as_str(), 0)..=(tenant.as_str(), through))
                    .map_err(backend)?
                    .map(|item| item.map(|(k, _)| k.value().1).map_err(backend))
                    .collect::<Result<_>>()?;
                for seq in seqs {
                    table.remove((tenant.as_str(), seq)).map_err(backend)?;
                    n += 1;
                }
                return Ok(n);
            }
            let mut table = txn.open_table(AUDIT).map_err(backend)?;
            let last = table.last().map_err(backend)?.map_or(0, |(k, _)| k.value());
            let through = through.min(last.saturating_sub(1));
            let seqs: Vec<u64> = table
                .range(..=through)
                .map_err(backend)?
                .map(|item| item.map(|(k, _)| k.value()).map_err(backend))
                .collect::<Result<_>>()?;
            for seq in seqs {
                table.remove(seq).map_err(backend)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64> {
        let mut prefix = Vec::new();
        push_part(&mut prefix, tenant.as_bytes());
        let tenant: Arc<str> = tenant.into();
        let t2 = tenant.clone();
        let removed = self
            .write(move |t| {
                let keys = keys_with_prefix(&t.docs, &prefix)?;
                for k in &keys {
                    t.docs.remove(k.as_slice()).map_err(backend)?;
                }
                t.usage.remove(&*t2).map_err(backend)?;
                t.feed.purge(&t2)?;
                Ok(keys.len() as u64)
            })
            .await?;
        let t2 = tenant.clone();
        self.write_txn(move |txn| graph::purge(txn, &t2)).await?;
        // Waiters re-read the head (now 0) and keep waiting.
        self.signal.publish(&tenant, 0);
        Ok(removed)
    }

    async fn usage(&self, tenant: &str) -> Result<Usage> {
        let txn = self.db.begin_read().map_err(backend)?;
        let bytes = bytes_of(&txn.open_table(USAGE).map_err(backend)?, tenant)?;
        let edges = bytes_of(&txn.open_table(EDGE_COUNT).map_err(backend)?, tenant)?;
        Ok(Usage { bytes, edges })
    }

    async fn ping(&self) -> Result<()> {
        self.db.begin_read().map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(t: &str) -> Scope {
        Scope::new(t, "agent")
    }

    #[tokio::test]
    async fn cas_conflict_returns_current_revision() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let a = scope("a");
        assert_eq!(s.put(&a, "c", "k", "1", Some(0)).await.unwrap(), 1);
        assert!(matches!(s.put(&a, "c", "k", "2", Some(0)).await, Err(StoreError::Conflict { current: 1 })));
        assert_eq!(s.put(&a, "c", "k", "2", Some(1)).await.unwrap(), 2);
        assert!(matches!(s.delete(&a, "c", "k", Some(1)).await, Err(StoreError::Conflict { current: 2 })));
        assert!(s.delete(&a, "c", "k", Some(2)).await.unwrap());
        assert!(!s.delete(&a, "c", "k", None).await.unwrap());
        assert_eq!(s.get(&a, "c", "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn tenants_never_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        s.put(&scope("a"), "c", "k", "\"a\"", None).await.unwrap();
        // Tenant names that are prefixes of each other must not collide.
        s.put(&scope("ab"), "c", "k", "\"ab\"", None).await.unwrap();
        assert_eq!(s.get(&scope("b"), "c", "k").await.unwrap(), None);
        assert_eq!(s.get(&scope("a"), "c", "k").await.unwrap().unwrap().value, "\"a\"");
        let page = s.list(&scope("a"), "c", "", 10, None).await.unwrap();
        assert_eq!(page.documents.len(), 1);
    }

    #[tokio::test]
    async fn list_pages_by_prefix_and_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let a = scope("a");
        for k in ["o/1", "o/2", "o/3", "p/1"] {
            s.put(&a, "c", k, "0", None).await.unwrap();
        }
        let p1 = s.list(&a, "c", "o/", 2, None).await.unwrap();
        let keys: Vec<_> = p1.documents.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["o/1", "o/2"]);
        assert_eq!(p1.next.as_deref(), Some("o/2"));
        let p2 = s.list(&a, "c", "o/", 2, p1.next.as_deref()).await.unwrap();
        let keys: Vec<_> = p2.documents.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["o/3"]);
        assert_eq!(p2.next, None);
    }

    #[tokio::test]
    async fn transact_applies_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let a = scope("a");
        s.put(&a, "c", "x", "1", None).await.unwrap();
        let put = |k: &str, e| WriteOp::Put { collection: "c".into(), key: k.into(), value: "9".into(), expected: e };
        let bad = [put("y", None), put("x", Some(7))];
        assert!(matches!(s.transact(&a, &bad).await, Err(StoreError::Conflict { current: 1 })));
        assert_eq!(s.get(&a, "c", "y").await.unwrap(), None, "the first op must be rolled back");
        let good = [
            put("y", Some(0)),
            put("x", Some(1)),
            WriteOp::Delete { collection: "c".into(), key: "y".into(), expected: Some(1) },
        ];
        assert_eq!(s.transact(&a, &good).await.unwrap(), vec![1, 2, 0]);
    }

    #[tokio::test]
    async fn usage_follows_writes_and_purge_removes_only_one_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        s.put(&scope("a"), "c", "k1", "1234", None).await.unwrap();
        s.put(&scope("a"), "c", "k2", "12", None).await.unwrap();
        s.put(&scope("a"), "c", "k1", "1", None).await.unwrap();
        s.put(&scope("ab"), "c", "k", "123", None).await.unwrap();
        assert_eq!(s.stored_bytes("a").await.unwrap(), 3);
        s.delete(&scope("a"), "c", "k2", None).await.unwrap();
        assert_eq!(s.stored_bytes("a").await.unwrap(), 1);
        assert_eq!(s.purge_tenant_documents("a").await.unwrap(), 1);
        assert_eq!(s.stored_bytes("a").await.unwrap(), 0);
        assert_eq!(s.get(&scope("ab"), "c", "k").await.unwrap().unwrap().value, "123");
    }

    #[tokio::test]
    async fn records_and_audit_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.record_put(RecordKind::Agent, "t/a", b"{}".to_vec(), Some(0)).await.unwrap(), 1);
        assert!(matches!(
            s.record_put(RecordKind::Agent, "t/a", b"{}".to_vec(), Some(0)).await,
            Err(StoreError::Conflict { current: 1 })
        ));
        s.record_put(RecordKind::Agent, "t/b", b"2".to_vec(), None).await.unwrap();
        s.record_put(RecordKind::Agent, "u/a", b"3".to_vec(), None).await.unwrap();
        s.record_put(RecordKind::Module, "t/x", b"4".to_vec(), None).await.unwrap();
        let keys: Vec<String> =
            s.record_list(RecordKind::Agent, "t/").await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["t/a", "t/b"]);
        assert_eq!(s.record_get(RecordKind::Agent, "t/b").await.unwrap(), Some((b"2".to_vec(), 1)));
        assert!(s.record_delete(RecordKind::Agent, "t/b").await.unwrap());
        assert_eq!(s.audit_append(b"e1".to_vec(), None).await.unwrap(), (1, None));
        assert_eq!(s.audit_append(b"e2".to_vec(), Some("t1")).await.unwrap(), (2, Some(1)));
        assert_eq!(s.audit_list(None, 1, 10).await.unwrap(), vec![(2, b"e2".to_vec())]);
    }

    #[tokio::test]
    async fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.put(&scope("a"), "c", "k", "{\"n\":1}", None).await.unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let d = s.get(&scope("a"), "c", "k").await.unwrap().unwrap();
        assert_eq!((d.value.as_str(), d.revision), ("{\"n\":1}", 1));
    }
}
