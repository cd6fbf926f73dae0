//! The ArangoDB backend: arangors 0.6 (no default features, `rocksdb`) over our own
//! reqwest client with connect and request timeouts ([`client`]).
//!
//! Layout, one database (`[store] database`), four collections:
//! - `cortex_documents`: one ArangoDB document per stored document, for every tenant.
//!   `_key` is the escaped `(tenant, collection, key)` ([`keys`]); the fields are `tenant`,
//!   `collection`, `key` (the original), `khex` (hex of the key: sorts in byte order, also
//!   under ArangoDB's ICU collation), `value` (the JSON text, kept verbatim), `rev` (our
//!   revision: 1, 2, 3...) and `size`. A persistent index on `[tenant, collection, khex]`
//!   serves `get`-by-prefix listing, usage sums and purges.
//! - `cortex_records`: registry records, `_key` = escaped `(kind, key)`, value as hex.
//! - `cortex_feed`: append-only event streams. `_key` = escaped stream + `-` + the sequence
//!   number zero-padded to 20 digits, so a second writer of the same number is refused by
//!   the primary index (409, unique constraint) and retries with the next one: numbers
//!   are dense. The audit log is the stream `audit`, and each tenant's own copy of its
//!   events the stream `audit:{tenant id}` (both written in one stream transaction); the change feed is one stream per
//!   tenant (`t:{tenant}`), appended in the same stream transaction as the writes it
//!   reports, together with a head document ([`feed`]); the registry change stream is the
//!   feed of the pseudo-tenant `~registry` ([`records`]). ArangoDB has no change streams in
//!   a cluster, so readers poll `seq > cursor` in order, with backoff.
//! - `cortex_edges`: the edge collection of agent links ([`graph`]). `_from`/`_to` are the
//!   handles of the agents' registry records in `cortex_records` (the vertices), and every
//!   edge carries its `tenant`; neighbours are found through the edge index with AQL.
//!
//! Compare-and-swap: our revision lives in `rev`; a write reads the document, checks
//! `rev` against the expected revision, then replaces it with `If-Match: <_rev>` (or
//! inserts it, refused with 409 when it exists). A 412 or 409 means someone wrote in
//! between: the call starts over from the read, and reports a conflict only if the
//! revision it then finds differs from the expected one. Every document write (`put`,
//! `delete`, `transact`) does this inside one stream transaction (`x-arango-trx-id`) over
//! `cortex_documents` and `cortex_feed` that also appends the change events, aborted on
//! any failure. Records use the same steps: without a transaction for plain kinds, in one
//! for metered and replicated kinds and for fenced writes ([`records`]: usage, the
//! registry change stream, the lease held). Multi-document transactions are ACID on a
//! single server or a OneShard database only.
//!
//! Backups read the four collections in one read-only stream transaction ([`backup`]).

pub mod backup;
pub mod client;
mod feed;
mod graph;
pub mod keys;
mod records;
mod usage;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arangors::collection::Collection;
use arangors::connection::GenericConnection;
use arangors::document::options::{InsertOptions, RemoveOptions, ReplaceOptions};
use arangors::index::{Index, IndexSettings};
use arangors::transaction::{TransactionCollections, TransactionSettings};
use arangors::{AqlQuery, ClientError, Database};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::client::{HttpClient, Timeouts, retry_safe, with_timeouts};
use self::keys::{arango_key, escape, hex, unhex};
use super::{
    ChangeOp, Document, DocumentStore, FeedSignal, Fence, Page, Quota, RecordKind, RecordOp, RecordStore, Result,
    Scope, StoreError, Usage, WriteOp,
};
use crate::config::ArangoConfig;

const DOCUMENTS: &str = "cortex_documents";
const RECORDS: &str = "cortex_records";
const FEED: &str = "cortex_feed";
const EDGES: &str = "cortex_edges";
/// The stream of the audit log in `cortex_feed`.
const AUDIT_STREAM: &str = "audit";
/// How often one call starts over after losing a race before it reports a transient error.
const MAX_ATTEMPTS: usize = 64;
/// Rows per cursor batch for AQL reads.
const BATCH: u32 = 100;
/// Most deletes of one transaction of `record_delete_many` (a batch that loses a race
/// starts over whole, so batches stay small).
const DELETE_BATCH: usize = 128;

// ArangoDB error numbers (https://docs.arangodb.com/stable/develop/error-codes/).
const ERR_CONFLICT: u16 = 1200;
const ERR_NOT_FOUND: u16 = 1202;
const ERR_COLLECTION_NOT_FOUND: u16 = 1203;
const ERR_DUPLICATE_NAME: u16 = 1207;
const ERR_DATABASE_NOT_FOUND: u16 = 1228;

type Db = Database<HttpClient>;
type Coll = Collection<HttpClient>;

/// Documents, records and the audit log in ArangoDB.
#[derive(Clone)]
pub struct ArangoStore {
    db: Db,
    docs: Coll,
    records: Coll,
    feed: Coll,
    edges: Coll,
    /// Wakes this process's waiters at once on its own writes; others' writes are polled.
    signal: Arc<FeedSignal>,
}

impl std::fmt::Debug for ArangoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArangoStore").field("database", &self.db.name()).finish_non_exhaustive()
    }
}

/// Map an arangors error onto ours, kept as its source; transport failures and server
/// overload are transient ([`client::retry_safe`]).
fn backend(e: ClientError) -> StoreError {
    StoreError::Backend { message: format!("arangodb: {e}"), transient: retry_safe(&e), source: Some(Box::new(e)) }
}

fn arango_error(e: &ClientError) -> Option<(u16, u16)> {
    match e {
        ClientError::Arango(a) => Some((a.code(), a.error_num())),
        _ => None,
    }
}

/// A write lost a race (412 precondition failed, 409 conflict or unique constraint, or
/// 404 because the document went away): start over from the read.
fn lost_race(e: &ClientError) -> bool {
    matches!(arango_error(e), Some((412 | 409 | 404, _)))
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(arango_error(e), Some((404, ERR_NOT_FOUND)))
}

fn too_busy(what: &str) -> StoreError {
    StoreError::Backend {
        message: format!("arangodb: {what} lost {MAX_ATTEMPTS} races in a row"),
        transient: true,
        source: None,
    }
}

/// One stored document, as kept in `cortex_documents`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredDoc {
    tenant: String,
    collection: String,
    key: String,
    khex: String,
    value: String,
    rev: u64,
    size: u64,
}

/// One registry record, as kept in `cortex_records`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRecord {
    kind: String,
    key: String,
    khex: String,
    /// Hex of the record's bytes.
    value: String,
    rev: u64,
}

/// One event, as kept in `cortex_feed`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredEvent {
    stream: String,
    seq: u64,
    /// Hex of the event's bytes.
    value: String,
}

fn with_key<T: Serialize>(key: &str, body: &T) -> Result<Value> {
    let mut v = serde_json::to_value(body).map_err(|e| StoreError::Backend {
        message: format!("arangodb: encoding: {e}"),
        transient: false,
        source: None,
    })?;
    if let Value::Object(m) = &mut v {
        m.insert("_key".into(), Value::String(key.to_owned()));
    }
    Ok(v)
}

fn bytes_of(hex_value: &str) -> Result<Vec<u8>> {
    unhex(hex_value).ok_or_else(|| StoreError::Corrupted("arangodb: a stored value is not hex".into()))
}

/// Read a document and its `_rev`; `None` when absent.
async fn read<T: Serialize + DeserializeOwned>(coll: &Coll, key: &str) -> Result<Option<(String, T)>> {
    match coll.document::<T>(key).await {
        Ok(d) => Ok(Some((d.header._rev, d.document))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(backend(e)),
    }
}

/// What one CAS step did.
enum Step<T> {
    Done(T),
    /// Lost a race: read again and retry.
    Retry,
}

/// Write `body` at `key` if the current revision matches `expected`; returns the new
/// revision and what it replaced.
async fn cas_put<T, F>(
    coll: &Coll,
    key: &str,
    expected: Option<u64>,
    rev_of: fn(&T) -> u64,
    make: F,
) -> Result<Step<(u64, Option<T>)>>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce(u64) -> T,
{
    let current = read::<T>(coll, key).await?;
    let now = current.as_ref().map_or(0, |(_, d)| rev_of(d));
    if expected.is_some_and(|want| want != now) {
        return Err(StoreError::Conflict { current: now });
    }
    let next = now + 1;
    let body = with_key(key, &make(next))?;
    let (res, old) = match current {
        None => (coll.create_document(body, InsertOptions::default()).await.map(|_| ()), None),
        Some((rev, old)) => {
            (coll.replace_document(key, body, ReplaceOptions::default(), Some(rev)).await.map(|_| ()), Some(old))
        }
    };
    match res {
        Ok(()) => Ok(Step::Done((next, old))),
        Err(e) if lost_race(&e) => Ok(Step::Retry),
        Err(e) => Err(backend(e)),
    }
}

/// Remove `key` if the current revision matches `expected`; returns what was removed
/// (`None`: it did not exist).
async fn cas_delete<T>(coll: &Coll, key: &str, expected: Option<u64>, rev_of: fn(&T) -> u64) -> Result<Step<Option<T>>>
where
    T: Serialize + DeserializeOwned,
{
    let current = read::<T>(coll, key).await?;
    let now = current.as_ref().map_or(0, |(_, d)| rev_of(d));
    if expected.is_some_and(|want| want != now) {
        return Err(StoreError::Conflict { current: now });
    }
    let Some((rev, old)) = current else { return Ok(Step::Done(None)) };
    match coll.remove_document::<Value>(key, RemoveOptions::default(), Some(rev)).await {
        Ok(_) => Ok(Step::Done(Some(old))),
        Err(e) if lost_race(&e) => Ok(Step::Retry),
        Err(e) => Err(backend(e)),
    }
}

fn doc_rev(d: &StoredDoc) -> u64 {
    d.rev
}
fn record_rev(r: &StoredRecord) -> u64 {
    r.rev
}

fn doc_key(tenant: &str, collection: &str, key: &str) -> String {
    arango_key(&[tenant, collection, key])
}

fn stored_doc(tenant: &str, collection: &str, key: &str, value: &str) -> impl FnOnce(u64) -> StoredDoc {
    let (tenant, collection, key, value) = (tenant.to_owned(), collection.to_owned(), key.to_owned(), value.to_owned());
    move |rev| StoredDoc { khex: hex(key.as_bytes()), size: value.len() as u64, tenant, collection, key, value, rev }
}

/// The `_key` of event `seq` of `stream`.
fn event_key(stream: &str, seq: u64) -> String {
    let mut k = String::new();
    escape(stream, &mut k);
    format!("{k}-{seq:020}")
}

impl ArangoStore {
    /// Connect, create the database and collections when missing (and allowed), and check
    /// that the server answers. Reads the password from `password_file` when set.
    pub async fn connect(cfg: &ArangoConfig) -> Result<Self> {
        let password = match &cfg.password_file {
            Some(p) => read_password(p)?,
            None => String::new(),
        };
        let t = Timeouts {
            connect: Duration::from_millis(cfg.connect_timeout_ms),
            request: Duration::from_millis(cfg.request_timeout_ms),
        };
        with_timeouts(t, Self::connect_inner(cfg, password)).await
    }

    async fn connect_inner(cfg: &ArangoConfig, password: String) -> Result<Self> {
        let conn = GenericConnection::<HttpClient>::establish_basic_auth(&cfg.url, &cfg.username, &password)
            .await
            .map_err(backend)?;
        let db = match conn.db(&cfg.database).await {
            Ok(db) => db,
            Err(e) if matches!(arango_error(&e), Some((404, ERR_DATABASE_NOT_FOUND))) => {
                match conn.create_database(&cfg.database).await {
                    Ok(db) => db,
                    // Created by another node meanwhile.
                    Err(e) if matches!(arango_error(&e), Some((409, _))) => {
                        conn.db(&cfg.database).await.map_err(backend)?
                    }
                    Err(e) => return Err(backend(e)),
                }
            }
            Err(e) => return Err(backend(e)),
        };
        let docs = ensure_collection(&db, DOCUMENTS, false).await?;
        let records = ensure_collection(&db, RECORDS, false).await?;
        let feed = ensure_collection(&db, FEED, false).await?;
        let edges = ensure_collection(&db, EDGES, true).await?;
        ensure_index(&db, DOCUMENTS, "cortex_documents_by_key", &["tenant", "collection", "khex"]).await?;
        ensure_index(&db, RECORDS, "cortex_records_by_key", &["kind", "khex"]).await?;
        ensure_index(&db, FEED, "cortex_feed_by_seq", &["stream", "seq"]).await?;
        Ok(Self { db, docs, records, feed, edges, signal: Arc::default() })
    }

    /// Run an AQL query and collect every batch.
    async fn query<R: DeserializeOwned>(&self, query: &str, vars: Vec<(&str, Value)>) -> Result<Vec<R>> {
        let aql = AqlQuery::builder().query(query).bind_vars(vars.into_iter().collect()).batch_size(BATCH).build();
        self.db.aql_query::<R>(aql).await.map_err(backend)
    }

    /// Apply `ops` atomically with their change events, retrying lost races; then wake
    /// this process's feed waiters.
    async fn write(&self, scope: &Scope, ops: &[WriteOp], what: &str, quota: Quota) -> Result<Vec<Applied>> {
        for _ in 0..MAX_ATTEMPTS {
            if let Step::Done((applied, head)) = self.write_once(scope, ops, quota).await? {
                if let Some(head) = head {
                    self.signal.publish(&scope.tenant, head);
                }
                return Ok(applied);
            }
        }
        Err(too_busy(what))
    }

    /// One attempt of a write: a stream transaction over the documents and the feed,
    /// committed only if every op passes; returns what each op did and the new feed head.
    async fn write_once(
        &self,
        scope: &Scope,
        ops: &[WriteOp],
        quota: Quota,
    ) -> Result<Step<(Vec<Applied>, Option<u64>)>> {
        let settings = TransactionSettings::builder()
            .collections(
                TransactionCollections::builder()
                    .write(vec![DOCUMENTS.to_owned(), FEED.to_owned(), RECORDS.to_owned()])
                    .build(),
            )
            .wait_for_sync(true)
            .build();
        let guard = Pending(Some(self.db.begin_transaction(settings).await.map_err(backend)?));
        let trx = guard.get();
        let coll = self.docs.clone_with_transaction(trx.id().clone()).map_err(backend)?;
        let feed = self.feed.clone_with_transaction(trx.id().clone()).map_err(backend)?;
        let records = self.records.clone_with_transaction(trx.id().clone()).map_err(backend)?;
        let outcome = async {
            let mut meter = self.meter(&records, &scope.tenant).await?;
            let mut applied = Vec::with_capacity(ops.len());
            let mut events = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    WriteOp::Put { collection, key, value, expected } => {
                        let k = doc_key(&scope.tenant, collection, key);
                        let make = stored_doc(&scope.tenant, collection, key, value);
                        let Step::Done((rev, old)) = cas_put(&coll, &k, *expected, doc_rev, make).await? else {
                            return Ok(Step::Retry);
                        };
                        meter.add(value.len() as u64, 0);
                        meter.remove(old.map_or(0, |d| d.size), 0);
                        applied.push(Applied::Put(rev));
                        events.push(feed::Pending { collection, key, op: ChangeOp::Put, revision: rev });
                    }
                    WriteOp::Delete { collection, key, expected } => {
                        let k = doc_key(&scope.tenant, collection, key);
                        let Step::Done(removed) = cas_delete::<StoredDoc>(&coll, &k, *expected, doc_rev).await? else {
                            return Ok(Step::Retry);
                        };
                        applied.push(Applied::Deleted(removed.is_some()));
                        if let Some(old) = removed {
                            meter.remove(old.size, 0);
                            events.push(feed::Pending { collection, key, op: ChangeOp::Delete, revision: old.rev });
                        }
                    }
                }
            }
            let Step::Done(()) = meter.commit(&records, quota).await? else { return Ok(Step::Retry) };
            let Step::Done(head) = feed::append(&feed, scope, &events).await? else { return Ok(Step::Retry) };
            Ok(Step::Done((applied, head)))
        }
        .await;
        match outcome {
            Ok(Step::Done(done)) => {
                let committed = trx.commit().await;
                guard.done();
                match committed {
                    Ok(_) => Ok(Step::Done(done)),
                    Err(e) if lost_race(&e) => Ok(Step::Retry),
                    Err(e) => Err(backend(e)),
                }
            }
            other => {
                // Best effort: an abort that fails leaves the transaction to the server's idle timeout.
                if let Err(e) = trx.abort().await {
                    tracing::warn!(error = %e, "arangodb: aborting a stream transaction failed");
                }
                guard.done();
                other
            }
        }
    }
}

/// The stream of a tenant's own audit log (by tenant id) in `cortex_feed`.
fn tenant_audit_stream(tenant_id: &str) -> String {
    format!("{AUDIT_STREAM}:{tenant_id}")
}

impl ArangoStore {
    /// The last sequence number of an audit stream (0: none).
    async fn audit_last(&self, stream: &str) -> Result<u64> {
        let last: Vec<u64> = self
            .query(
                "FOR e IN cortex_feed FILTER e.stream == @stream SORT e.seq DESC LIMIT 1 RETURN e.seq",
                vec![("stream", json!(stream))],
            )
            .await?;
        Ok(last.first().copied().unwrap_or(0))
    }

    /// Insert an audit event as number `seq` of the platform's log and, with `own`, as
    /// number `own.1` of the stream `own.0`, in one stream transaction; `Retry` when another
    /// writer took either number first (the unique key refuses the second).
    async fn audit_insert(&self, value: &str, seq: u64, own: Option<(&str, u64)>) -> Result<Step<()>> {
        self.in_transaction(&[FEED], |id| async move {
            let feed = self.feed.clone_with_transaction(id).map_err(backend)?;
            for (stream, seq) in std::iter::once((AUDIT_STREAM, seq)).chain(own) {
                let body = with_key(
                    &event_key(stream, seq),
                    &StoredEvent { stream: stream.to_owned(), seq, value: value.to_owned() },
                )?;
                match feed.create_document(body, InsertOptions::default()).await {
                    Ok(_) => {}
                    Err(e) if lost_race(&e) => return Ok(Step::Retry),
                    Err(e) => return Err(backend(e)),
                }
            }
            Ok(Step::Done(()))
        })
        .await
    }

    /// Run `f` with the id of a new stream transaction writing `collections`; commit when
    /// it is `Done`, abort otherwise.
    async fn in_transaction<T, F, Fut>(&self, collections: &[&str], f: F) -> Result<Step<T>>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Step<T>>>,
    {
        let settings = TransactionSettings::builder()
            .collections(
                TransactionCollections::builder().write(collections.iter().map(|c| (*c).to_owned()).collect()).build(),
            )
            .wait_for_sync(true)
            .build();
        let guard = Pending(Some(self.db.begin_transaction(settings).await.map_err(backend)?));
        let trx = guard.get();
        match f(trx.id().clone()).await {
            Ok(Step::Done(done)) => {
                let committed = trx.commit().await;
                guard.done();
                match committed {
                    Ok(_) => Ok(Step::Done(done)),
                    Err(e) if lost_race(&e) => Ok(Step::Retry),
                    Err(e) => Err(backend(e)),
                }
            }
            other => {
                // Best effort: an abort that fails leaves the transaction to the server's idle timeout.
                if let Err(e) = trx.abort().await {
                    tracing::warn!(error = %e, "arangodb: aborting a stream transaction failed");
                }
                guard.done();
                other
            }
        }
    }
}

/// A stream transaction that is aborted if it is dropped before it was committed or
/// aborted: a write whose future is cancelled (a watcher halted when its lease moves, a
/// request whose client went away) must not leave its transaction holding the keys it
/// wrote until the server's idle timeout (`--transaction.streaming-idle-timeout`, 60 s by
/// default), which would refuse every other write of those keys (the tenant's feed head)
/// meanwhile.
struct Pending(Option<arangors::transaction::Transaction<HttpClient>>);

impl Pending {
    /// The transaction (present until [`Pending::done`] or drop).
    fn get(&self) -> &arangors::transaction::Transaction<HttpClient> {
        match &self.0 {
            Some(t) => t,
            None => unreachable!("a pending transaction is present until it is done"),
        }
    }

    /// It was committed or aborted: nothing to do on drop.
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(trx) = self.0.take() else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = trx.abort().await {
                    tracing::debug!(error = %e, "arangodb: aborting an abandoned stream transaction failed");
                }
            });
        }
    }
}

/// What one op of a write did.
enum Applied {
    /// A put, with the new revision.
    Put(u64),
    /// A delete, with whether the document existed.
    Deleted(bool),
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

async fn ensure_collection(db: &Db, name: &str, edge: bool) -> Result<Coll> {
    match db.collection(name).await {
        Ok(c) => return Ok(c),
        Err(e) if matches!(arango_error(&e), Some((404, ERR_COLLECTION_NOT_FOUND))) => {}
        Err(e) => return Err(backend(e)),
    }
    let created = if edge { db.create_edge_collection(name).await } else { db.create_collection(name).await };
    match created {
        Ok(c) => Ok(c),
        Err(e) if matches!(arango_error(&e), Some((409, ERR_DUPLICATE_NAME))) => {
            db.collection(name).await.map_err(backend)
        }
        Err(e) => Err(backend(e)),
    }
}

/// Create a persistent index; creating an identical one again is a no-op in ArangoDB.
async fn ensure_index(db: &Db, collection: &str, name: &str, fields: &[&str]) -> Result<()> {
    let index = Index::builder()
        .name(name)
        .fields(fields.iter().map(|f| (*f).to_owned()).collect())
        .settings(IndexSettings::Persistent { unique: false, sparse: false, deduplicate: false })
        .build();
    db.create_index(collection, &index).await.map(|_| ()).map_err(backend)
}

#[async_trait::async_trait]
impl DocumentStore for ArangoStore {
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>> {
        let k = doc_key(&scope.tenant, collection, key);
        let Some((_, d)) = read::<StoredDoc>(&self.docs, &k).await? else { return Ok(None) };
        if *d.tenant != *scope.tenant || d.collection != collection || d.key != key {
            return Err(StoreError::Corrupted(format!(
                "arangodb: document {k} does not hold the names its key encodes"
            )));
        }
        Ok(Some(Document { key: d.key, value: d.value, revision: d.rev }))
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
        let op = WriteOp::Put { collection: collection.into(), key: key.into(), value: value.into(), expected };
        match self.write(scope, std::slice::from_ref(&op), "put", quota).await?.as_slice() {
            [Applied::Put(rev)] => Ok(*rev),
            _ => Err(StoreError::Backend {
                message: "arangodb: put applied no put".into(),
                transient: false,
                source: None,
            }),
        }
    }

    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        let op = WriteOp::Delete { collection: collection.into(), key: key.into(), expected };
        match self.write(scope, std::slice::from_ref(&op), "delete", Quota::NONE).await?.as_slice() {
            [Applied::Deleted(existed)] => Ok(*existed),
            _ => Err(StoreError::Backend {
                message: "arangodb: delete applied no delete".into(),
                transient: false,
                source: None,
            }),
        }
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
        if limit == 0 {
            return Ok(Page::default());
        }
        #[derive(Deserialize)]
        struct Row {
            key: String,
            value: Option<String>,
            rev: u64,
        }
        // The server keeps a running sum of key and value sizes (WINDOW) and sends a value
        // only while the sum stays within the budget (the first one always): past it, only
        // keys come back, and the page ends there.
        let rows: Vec<Row> = self
            .query(
                "FOR d IN cortex_documents \
                 FILTER d.tenant == @tenant AND d.collection == @collection \
                 AND STARTS_WITH(d.khex, @prefix) AND d.khex > @after \
                 SORT d.khex LIMIT @limit \
                 WINDOW { preceding: \"unbounded\", following: 0 } \
                 AGGREGATE used = SUM(d.size + LENGTH(d.khex) / 2) \
                 RETURN { key: d.key, rev: d.rev, \
                 value: used <= @budget OR used == d.size + LENGTH(d.khex) / 2 ? d.value : null }",
                vec![
                    ("tenant", json!(&*scope.tenant)),
                    ("collection", json!(collection)),
                    ("prefix", json!(hex(prefix.as_bytes()))),
                    ("after", json!(cursor.map(|c| hex(c.as_bytes())).unwrap_or_default())),
                    ("limit", json!(u64::from(limit) + 1)),
                    ("budget", json!(max_bytes)),
                ],
            )
            .await?;
        let mut page = Page::default();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        for row in rows {
            let (true, Some(value)) = (page.documents.len() < limit, row.value) else {
                page.next = page.documents.last().map(|d| d.key.clone());
                break;
            };
            page.documents.push(Document { key: row.key, value, revision: row.rev });
        }
        Ok(page)
    }

    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], quota: Quota) -> Result<Vec<u64>> {
        let applied = self.write(scope, ops, "transact", quota).await?;
        Ok(applied.iter().map(|a| if let Applied::Put(rev) = a { *rev } else { 0 }).collect())
    }
}

#[async_trait::async_trait]
impl RecordStore for ArangoStore {
    async fn snapshot(&self) -> Result<Option<Box<dyn super::backup::StoreSnapshot>>> {
        Ok(Some(Box::new(self.begin_snapshot().await?)))
    }

    async fn record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
        self.apply_records(fence, ops, quota, "record_apply").await
    }

    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        let k = records::record_key(kind, key);
        let Some((_, r)) = read::<StoredRecord>(&self.records, &k).await? else { return Ok(None) };
        Ok(Some((bytes_of(&r.value)?, r.rev)))
    }

    async fn record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        if records::needs_transaction(kind) {
            let op = RecordOp::Put { kind, key: key.to_owned(), value, expected };
            return match self.apply_records(None, std::slice::from_ref(&op), quota, "record_put").await?.as_slice() {
                [rev] => Ok(*rev),
                _ => Err(StoreError::Backend {
                    message: "arangodb: a record put applied no put".into(),
                    transient: false,
                    source: None,
                }),
            };
        }
        let k = records::record_key(kind, key);
        let value = hex(&value);
        for _ in 0..MAX_ATTEMPTS {
            let make = |rev| StoredRecord {
                kind: kind.as_str().to_owned(),
                key: key.to_owned(),
                khex: hex(key.as_bytes()),
                value: value.clone(),
                rev,
            };
            if let Step::Done((rev, _)) = cas_put(&self.records, &k, expected, record_rev, make).await? {
                return Ok(rev);
            }
        }
        Err(too_busy("record_put"))
    }

    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        Ok(self.record_delete_many(kind, &[key.to_owned()]).await? == 1)
    }

    /// Records of a metered or replicated kind go in transactions of at most
    /// [`DELETE_BATCH`] deletes each (their usage and registry events with them); others
    /// one by one, without a transaction.
    async fn record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        let mut n = 0;
        if records::needs_transaction(kind) {
            for chunk in keys.chunks(DELETE_BATCH) {
                let ops: Vec<RecordOp> =
                    chunk.iter().map(|key| RecordOp::Delete { kind, key: key.clone(), expected: None }).collect();
                n += self.apply_records(None, &ops, Quota::NONE, "record_delete").await?.iter().sum::<u64>();
            }
            return Ok(n);
        }
        'keys: for key in keys {
            let k = records::record_key(kind, key);
            for _ in 0..MAX_ATTEMPTS {
                if let Step::Done(removed) = cas_delete::<StoredRecord>(&self.records, &k, None, record_rev).await? {
                    n += u64::from(removed.is_some());
                    continue 'keys;
                }
            }
            return Err(too_busy("record_delete"));
        }
        Ok(n)
    }

    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.record_list_revisions(kind, prefix).await?.into_iter().map(|(k, v, _)| (k, v)).collect())
    }

    async fn record_list_revisions(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>, u64)>> {
        #[derive(Deserialize)]
        struct Row {
            key: String,
            value: String,
            rev: u64,
        }
        let rows: Vec<Row> = self
            .query(
                "FOR r IN cortex_records \
                 FILTER r.kind == @kind AND STARTS_WITH(r.khex, @prefix) \
                 SORT r.khex \
                 RETURN { key: r.key, value: r.value, rev: r.rev }",
                vec![("kind", json!(kind.as_str())), ("prefix", json!(hex(prefix.as_bytes())))],
            )
            .await?;
        rows.into_iter().map(|r| Ok((r.key, bytes_of(&r.value)?, r.rev))).collect()
    }

    async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> Result<(u64, Option<u64>)> {
        let value = hex(&event);
        let own = tenant.map(tenant_audit_stream);
        for _ in 0..MAX_ATTEMPTS {
            let seq = self.audit_last(AUDIT_STREAM).await? + 1;
            let own_seq = match &own {
                Some(stream) => Some((stream.as_str(), self.audit_last(stream).await? + 1)),
                None => None,
            };
            if let Step::Done(()) = self.audit_insert(&value, seq, own_seq).await? {
                return Ok((seq, own_seq.map(|(_, n)| n)));
            }
        }
        Err(too_busy("audit_append"))
    }

    async fn audit_list(&self, tenant: Option<&str>, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct Row {
            seq: u64,
            value: String,
        }
        let stream = tenant.map_or_else(|| AUDIT_STREAM.to_owned(), tenant_audit_stream);
        let rows: Vec<Row> = self
            .query(
                "FOR e IN cortex_feed FILTER e.stream == @stream AND e.seq > @since \
                 SORT e.seq LIMIT @limit RETURN { seq: e.seq, value: e.value }",
                vec![("stream", json!(stream)), ("since", json!(since)), ("limit", json!(limit))],
            )
            .await?;
        rows.into_iter().map(|r| Ok((r.seq, bytes_of(&r.value)?))).collect()
    }

    async fn audit_prune(&self, tenant: Option<&str>, through: u64) -> Result<u64> {
        let stream = tenant.map_or_else(|| AUDIT_STREAM.to_owned(), tenant_audit_stream);
        // Never the newest: appends number on from it.
        let through = through.min(self.audit_last(&stream).await?.saturating_sub(1));
        if through == 0 {
            return Ok(0);
        }
        let n: Vec<u64> = self
            .query(
                "LET removed = (FOR e IN cortex_feed FILTER e.stream == @stream AND e.seq <= @through \
                 REMOVE e IN cortex_feed RETURN 1) RETURN LENGTH(removed)",
                vec![("stream", json!(stream)), ("through", json!(through))],
            )
            .await?;
        Ok(n.first().copied().unwrap_or(0))
    }

    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64> {
        let n: Vec<u64> = self
            .query(
                "LET removed = (FOR d IN cortex_documents FILTER d.tenant == @tenant \
                 REMOVE d IN cortex_documents RETURN 1) RETURN LENGTH(removed)",
                vec![("tenant", json!(tenant))],
            )
            .await?;
        self.purge_feed(tenant).await?;
        self.purge_edges(tenant).await?;
        self.purge_usage(tenant).await?;
        self.signal.publish(tenant, 0);
        Ok(n.first().copied().unwrap_or(0))
    }

    async fn usage(&self, tenant: &str) -> Result<Usage> {
        self.read_usage(tenant).await
    }

    async fn ping(&self) -> Result<()> {
        // `GET /_db/{db}/_api/version`: authenticated, touches no collection, and bounded by
        // the client's connect and request timeouts. An error body does not parse as a
        // version, so any answer but a version is a failure too.
        self.db.arango_version().await.map_err(backend)?;
        Ok(())
    }
}
