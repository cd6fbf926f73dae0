//! The embedded backend: one redb file in the data directory, zero set-up.
//!
//! Layout: table `documents` maps `tenant | collection | key` (each part length-prefixed, so
//! no tenant's key range can overlap another's) to `revision (u64 BE) ++ JSON text`.
//! Every write transaction commits with immediate durability (fsync) before it returns.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Document, DocumentStore, Page, Result, Scope, StoreError, WriteOp};

const DOCUMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("documents");

/// Documents in a redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
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
        redb::Error::UpgradeRequired(v) => {
            StoreError::Corrupted(format!("file format {v} needs an upgrade"))
        }
        redb::Error::DatabaseAlreadyOpen => StoreError::Backend {
            message: "the database is open in another process".into(),
            transient: true,
        },
        other => StoreError::Backend { message: other.to_string(), transient: false },
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
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::Open { path: dir.to_owned(), source })?;
        let db = Database::create(dir.join("documents.redb")).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(DOCUMENTS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Run a write transaction on a blocking thread: commits fsync, which must not stall
    /// the async workers.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(backend)?;
            let out = {
                let mut table = txn.open_table(DOCUMENTS).map_err(backend)?;
                f(&mut table)?
            };
            // On error above, `txn` is dropped here: redb aborts it, nothing is applied.
            txn.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend { message: format!("write task failed: {e}"), transient: true })?
    }
}

fn check_expected(table: &redb::Table<&[u8], &[u8]>, key: &[u8], expected: Option<u64>) -> Result<u64> {
    let current = match table.get(key).map_err(backend)? {
        Some(raw) => revision_of(raw.value())?,
        None => 0,
    };
    match expected {
        Some(want) if want != current => Err(StoreError::Conflict { current }),
        _ => Ok(current),
    }
}

fn apply_put(table: &mut redb::Table<&[u8], &[u8]>, key: &[u8], value: &str, expected: Option<u64>) -> Result<u64> {
    let current = check_expected(table, key, expected)?;
    let next = current + 1;
    table.insert(key, encode(next, value).as_slice()).map_err(backend)?;
    Ok(next)
}

fn apply_delete(table: &mut redb::Table<&[u8], &[u8]>, key: &[u8], expected: Option<u64>) -> Result<bool> {
    let current = check_expected(table, key, expected)?;
    if current == 0 {
        return Ok(false);
    }
    table.remove(key).map_err(backend)?;
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

    async fn put(&self, scope: &Scope, collection: &str, key: &str, value: &str, expected: Option<u64>) -> Result<u64> {
        let k = doc_key(scope, collection, key);
        let value = value.to_owned();
        self.write(move |t| apply_put(t, &k, &value, expected)).await
    }

    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        let k = doc_key(scope, collection, key);
        self.write(move |t| apply_delete(t, &k, expected)).await
    }

    async fn list(
        &self,
        scope: &Scope,
        collection: &str,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
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
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(DOCUMENTS).map_err(backend)?;
        let range = table
            .range::<&[u8]>((start.as_ref().map(Vec::as_slice), Bound::Unbounded))
            .map_err(backend)?;
        let mut page = Page::default();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        for item in range {
            let (k, v) = item.map_err(backend)?;
            let k = k.value();
            if !k.starts_with(&want) {
                break;
            }
            if page.documents.len() == limit {
                page.next = page.documents.last().map(|d| d.key.clone());
                break;
            }
            let key = String::from_utf8_lossy(&k[base.len()..]).into_owned();
            page.documents.push(decode(key, v.value())?);
        }
        Ok(page)
    }

    async fn transact(&self, scope: &Scope, ops: &[WriteOp]) -> Result<Vec<u64>> {
        let tenant = scope.clone();
        let ops = ops.to_vec();
        self.write(move |t| {
            let mut revisions = Vec::with_capacity(ops.len());
            for op in &ops {
                let rev = match op {
                    WriteOp::Put { collection, key, value, expected } => {
                        apply_put(t, &doc_key(&tenant, collection, key), value, *expected)?
                    }
                    WriteOp::Delete { collection, key, expected } => {
                        apply_delete(t, &doc_key(&tenant, collection, key), *expected)?;
                        0
                    }
                };
                revisions.push(rev);
            }
            Ok(revisions)
        })
        .await
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
        let good = [put("y", Some(0)), put("x", Some(1)), WriteOp::Delete { collection: "c".into(), key: "y".into(), expected: Some(1) }];
        assert_eq!(s.transact(&a, &good).await.unwrap(), vec![1, 2, 0]);
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
