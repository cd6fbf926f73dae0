//! Backup and restore of the ArangoDB backend (the file: [`crate::store::backup`]).
//!
//! A backup reads Cortex's four collections inside ONE read-only stream transaction
//! (`POST /_api/transaction/begin` with them as `read`, every read carrying
//! `x-arango-trx-id`, aborted at the end: it wrote nothing). What that guarantees:
//! - a single server (RocksDB, the only engine since 3.7) or a OneShard database: the
//!   transaction reads one RocksDB snapshot taken at its begin, so the backup is a
//!   point-in-time copy, as the embedded backup is: every write committed before the
//!   begin is in it, none committed after it;
//! - a cluster with sharded collections: each shard is read from its own snapshot, taken
//!   when the transaction first touches that shard's DB-Server; there is no global
//!   snapshot, so a write spanning shards may be half in the backup. Cortex's documents,
//!   feed and records are then per-shard consistent only: run Cortex on a OneShard
//!   database (as `deploy/` does) for a point-in-time backup, or use ArangoDB's hot backup
//!   (Enterprise) or `arangodump` of a stopped deployment.
//!
//! Each collection is read in pages of [`PAGE`] documents in `_key` order (keyset
//! pagination on the primary index, all within the transaction), so neither Cortex nor
//! the server holds more than a page. A stream transaction idle for longer than the
//! server's `--transaction.streaming-idle-timeout` (60 s) is aborted by the server: a
//! client that stops reading the backup for that long makes it fail, cut short (and the
//! checksum tells).
//!
//! The file is the embedded backup's container with `backend: "arangodb"` in its header,
//! one table per collection, each entry the document's `_key` and its JSON without the
//! server's `_key`, `_id` and `_rev` (edges keep `_from` and `_to`). The records are
//! ArangoDB's documents, not the embedded store's tables: such a file restores into an
//! ArangoDB database ([`restore`]), not into a data directory (and an embedded backup not
//! into ArangoDB).

use std::io::{Read, Write};

use arangors::AqlQuery;
use arangors::transaction::{Transaction, TransactionCollections, TransactionSettings};
use serde_json::{Map, Value, json};

use super::client::HttpClient;
use super::{ArangoStore, DOCUMENTS, EDGES, FEED, RECORDS, backend};
use crate::config::ArangoConfig;
use crate::store::backup::{BackupError, Frame, FrameReader, FrameWriter, SnapshotInfo, StoreSnapshot};
use crate::store::{REGISTRY_FEED, StoreError};

/// Documents read per page, and written per insert while restoring.
pub const PAGE: usize = 1000;

/// The collections a backup holds, in the order it holds them.
const COLLECTIONS: [&str; 4] = [DOCUMENTS, RECORDS, FEED, EDGES];

/// The `backend` of an ArangoDB backup's header.
pub const BACKEND: &str = "arangodb";

/// One page of a collection after `@after`, in `_key` order.
const PAGE_QUERY: &str = "FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @limit RETURN d";

/// Every stream's head document (`head` is set on heads only).
const HEADS_QUERY: &str = "FOR h IN cortex_feed FILTER h.head != null RETURN { head: h.head, seq: h.seq }";

/// One page of documents inserted while restoring.
const INSERT_QUERY: &str = "FOR d IN @docs INSERT d INTO @@collection";

/// Whether `collection` holds any document.
const ANY_QUERY: &str = "FOR d IN @@collection LIMIT 1 RETURN d._key";

/// A read-only stream transaction over Cortex's collections, and where it stands; aborted
/// once written, or when dropped unwritten (it would otherwise hold its snapshot on the
/// server until the idle timeout).
pub struct ArangoSnapshot {
    trx: Option<Transaction<HttpClient>>,
    info: SnapshotInfo,
    /// The runtime the reads run on (the file is written from a blocking thread).
    rt: tokio::runtime::Handle,
}

fn store_err(e: StoreError) -> BackupError {
    BackupError::Store(e)
}

/// Run `query` in the transaction and return its whole (small) result: a page, the heads.
async fn run(trx: &Transaction<HttpClient>, query: &str, vars: Vec<(&str, Value)>) -> Result<Vec<Value>, StoreError> {
    let aql = AqlQuery::builder()
        .query(query)
        .bind_vars(vars.into_iter().collect())
        .batch_size(u32::try_from(PAGE).unwrap_or(u32::MAX))
        .build();
    let mut cursor = trx.aql_query_batch::<Value>(aql).await.map_err(backend)?;
    let mut out = std::mem::take(&mut cursor.result);
    while cursor.more {
        let Some(id) = cursor.id.take() else { break };
        cursor = trx.aql_next_batch::<Value>(&id).await.map_err(backend)?;
        out.append(&mut cursor.result);
    }
    Ok(out)
}

impl ArangoStore {
    /// Begin the backup's read-only stream transaction and read where it stands: every
    /// stream's head (the registry stream's and each tenant's change feed's).
    pub async fn begin_snapshot(&self) -> Result<ArangoSnapshot, StoreError> {
        let settings = TransactionSettings::builder()
            .collections(
                TransactionCollections::builder()
                    .read(COLLECTIONS.iter().map(|c| (*c).to_owned()).collect())
                    .write(Vec::new())
                    .build(),
            )
            .build();
        let created_ms = crate::registry::now_ms();
        let trx = self.db.begin_transaction(settings).await.map_err(backend)?;
        let snap = ArangoSnapshot {
            trx: Some(trx),
            info: SnapshotInfo { backend: BACKEND.into(), created_ms, ..SnapshotInfo::default() },
            rt: tokio::runtime::Handle::current(),
        };
        let heads = match &snap.trx {
            Some(trx) => run(trx, HEADS_QUERY, Vec::new()).await,
            None => Ok(Vec::new()),
        };
        match heads {
            Ok(heads) => {
                let mut snap = snap;
                for h in heads {
                    let (Some(stream), Some(seq)) = (h["head"].as_str(), h["seq"].as_u64()) else { continue };
                    let Some(tenant) = stream.strip_prefix("t:") else { continue };
                    if tenant == REGISTRY_FEED {
                        snap.info.registry_seq = seq;
                    } else {
                        snap.info.feed_heads.insert(tenant.to_owned(), seq);
                    }
                }
                Ok(snap)
            }
            // Dropping `snap` aborts the transaction.
            Err(e) => Err(e),
        }
    }
}

impl ArangoSnapshot {
    /// Write every collection, page by page.
    fn write_all(&self, w: &mut FrameWriter<'_>) -> Result<(), BackupError> {
        let Some(trx) = &self.trx else { return Err(BackupError::Invalid("the snapshot was written already".into())) };
        for coll in COLLECTIONS {
            w.table(coll)?;
            let mut after = String::new();
            loop {
                let vars = vec![("@collection", json!(coll)), ("after", json!(after)), ("limit", json!(PAGE))];
                let rows = self.rt.block_on(run(trx, PAGE_QUERY, vars)).map_err(store_err)?;
                let n = rows.len();
                for row in rows {
                    let Value::Object(mut doc) = row else {
                        return Err(BackupError::Invalid(format!("{coll}: a document is not an object")));
                    };
                    let Some(Value::String(key)) = doc.remove("_key") else {
                        return Err(BackupError::Invalid(format!("{coll}: a document has no _key")));
                    };
                    doc.remove("_id");
                    doc.remove("_rev");
                    let value = serde_json::to_vec(&doc).map_err(|e| BackupError::Invalid(e.to_string()))?;
                    w.entry(key.as_bytes(), &value)?;
                    after = key;
                }
                if n < PAGE {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl StoreSnapshot for ArangoSnapshot {
    fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// Must run outside the runtime's workers (a blocking thread): it blocks on the reads.
    fn write_to(mut self: Box<Self>, out: &mut dyn Write) -> Result<u64, BackupError> {
        let written = FrameWriter::new(out, &self.info).and_then(|mut w| {
            self.write_all(&mut w)?;
            w.finish()
        });
        // Read-only: aborting releases the snapshot at once, committing would do the same.
        if let Some(trx) = self.trx.take()
            && let Err(e) = self.rt.block_on(trx.abort())
        {
            tracing::debug!(error = %e, "arangodb: aborting the backup's transaction failed");
        }
        written
    }
}

impl Drop for ArangoSnapshot {
    fn drop(&mut self) {
        if let Some(trx) = self.trx.take() {
            self.rt.spawn(async move {
                if let Err(e) = trx.abort().await {
                    tracing::debug!(error = %e, "arangodb: aborting an unwritten backup's transaction failed");
                }
            });
        }
    }
}

/// Restore the ArangoDB backup read from `input` into the database `cfg` names (created
/// when missing). A database that holds any of Cortex's documents is refused unless
/// `force` (then Cortex's collections are truncated first). Documents are inserted in
/// pages of [`PAGE`], each page one AQL insert; the checksum is only known at the end, so
/// check the file first ([`crate::store::backup::verify`]): a file damaged past a page
/// leaves the pages before it written. Returns the backup's header.
pub async fn restore(input: impl Read, cfg: &ArangoConfig, force: bool) -> Result<SnapshotInfo, BackupError> {
    let mut r = FrameReader::new(input)?;
    if r.info.backend != BACKEND {
        return Err(BackupError::Invalid(format!(
            "this is a backup of a {:?} store; only ArangoDB backups restore into ArangoDB",
            r.info.backend
        )));
    }
    let store = ArangoStore::connect(cfg).await?;
    for coll in COLLECTIONS {
        let any = store.query::<Value>(ANY_QUERY, vec![("@collection", json!(coll))]).await?;
        if any.is_empty() {
            continue;
        }
        if !force {
            return Err(BackupError::Invalid(format!(
                "the database {:?} is not empty ({coll} holds documents): restore into a new database, \
                 or pass --force to replace Cortex's collections",
                cfg.database
            )));
        }
        let c = store.db.collection(coll).await.map_err(backend)?;
        c.truncate().await.map_err(backend)?;
    }
    let mut table: Option<&'static str> = None;
    let mut page: Vec<Value> = Vec::with_capacity(PAGE);
    loop {
        let frame = r.next_frame()?;
        if (matches!(frame, Frame::Table(_) | Frame::End) || page.len() >= PAGE)
            && let Some(coll) = table
            && !page.is_empty()
        {
            let docs = Value::Array(std::mem::take(&mut page));
            store.query::<Value>(INSERT_QUERY, vec![("@collection", json!(coll)), ("docs", docs)]).await?;
        }
        match frame {
            Frame::Table(name) => {
                let Some(known) = COLLECTIONS.iter().find(|c| **c == name) else {
                    return Err(BackupError::Invalid(format!("unknown collection {name}")));
                };
                table = Some(known);
            }
            Frame::Entry(key, value) => {
                if table.is_none() {
                    return Err(BackupError::Invalid("an entry before any collection".into()));
                }
                let key = String::from_utf8(key).map_err(|_| BackupError::Invalid("a _key is not UTF-8".into()))?;
                let mut doc: Map<String, Value> =
                    serde_json::from_slice(&value).map_err(|e| BackupError::Invalid(format!("{key}: {e}")))?;
                doc.insert("_key".into(), Value::String(key));
                page.push(Value::Object(doc));
            }
            Frame::End => return Ok(r.info),
        }
    }
}
