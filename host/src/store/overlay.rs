//! An overlay for `init`: its document and graph writes are buffered in memory, its reads
//! see them, and they reach the store only if `init` succeeds, all documents in one
//! transaction ([`Overlay::commit`]). A failed `init` leaves nothing: no document, no
//! change event, no edge.
//!
//! A document `init` writes several times is committed once, with its last value (one
//! change event, revision one above the one `init` started from); the revisions `init`
//! saw in between are not kept. The commit expects the revisions `init` read: a document
//! another writer changed meanwhile fails the commit with a conflict. What `init` may
//! buffer is bounded (`max_bytes` of values and attributes): past it a write answers
//! `quota-exceeded`. Everything else (records, the feed) goes straight to the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::wrapper::{Wrapper, WrapsFeed, WrapsRecords};
use super::{
    Direction, Document, DocumentStore, Edge, GraphStore, Page, Quota, Result, Scope, Store, StoreError, WriteOp,
};

/// A document as `init` left it.
#[derive(Clone, Debug)]
struct Pending {
    /// The revision in the store when `init` first touched it (0: absent).
    base: u64,
    /// Its value and revision now (`None`: deleted).
    now: Option<(String, u64)>,
}

#[derive(Clone, Default)]
struct Buffer {
    docs: BTreeMap<(String, String), Pending>,
    /// `(from, to, kind)` to the attributes linked, or `None` for an unlink.
    edges: BTreeMap<(String, String, String), Option<String>>,
    bytes: usize,
}

/// The buffered writes of one `init` over a store.
pub struct Overlay {
    inner: Arc<dyn Store>,
    scope: Scope,
    max_bytes: usize,
    buffer: Mutex<Buffer>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("scope", &self.scope).finish_non_exhaustive()
    }
}

impl Overlay {
    /// Buffer the writes of `scope`'s `init` over `inner`, at most `max_bytes` of them.
    pub fn new(inner: Arc<dyn Store>, scope: Scope, max_bytes: usize) -> Self {
        Self { inner, scope, max_bytes, buffer: Mutex::default() }
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write what `init` left to the store: its documents in one transaction (change
    /// events included) within `quota`, then its links and unlinks.
    pub async fn commit(&self, quota: Quota) -> Result<()> {
        let buffer = std::mem::take(&mut *self.buffer());
        let ops: Vec<WriteOp> = buffer
            .docs
            .into_iter()
            .filter_map(|((collection, key), p)| match p.now {
                Some((value, _)) => Some(WriteOp::Put { collection, key, value, expected: Some(p.base) }),
                None if p.base != 0 => Some(WriteOp::Delete { collection, key, expected: Some(p.base) }),
                None => None,
            })
            .collect();
        if !ops.is_empty() {
            self.inner.transact_within(&self.scope, &ops, quota).await?;
        }
        let tenant = &*self.scope.tenant;
        for ((from, to, kind), attrs) in buffer.edges {
            match attrs {
                Some(a) => self.inner.link_within(tenant, &from, &to, &kind, &a, quota).await?,
                None => {
                    self.inner.unlink(tenant, &from, &to, &kind).await?;
                }
            }
        }
        Ok(())
    }

    /// The document as `init` sees it: buffered, else from the store. Returns the pending
    /// state to update.
    async fn current(&self, scope: &Scope, collection: &str, key: &str) -> Result<Pending> {
        let k = (collection.to_owned(), key.to_owned());
        if let Some(p) = self.buffer().docs.get(&k) {
            return Ok(p.clone());
        }
        let d = self.inner.get(scope, collection, key).await?;
        Ok(Pending { base: d.as_ref().map_or(0, |d| d.revision), now: d.map(|d| (d.value, d.revision)) })
    }

    fn apply(buffer: &mut Buffer, max: usize, k: (String, String), p: Pending) -> Result<()> {
        let old = buffer.docs.get(&k).and_then(|p| p.now.as_ref()).map_or(0, |(v, _)| v.len());
        let new = p.now.as_ref().map_or(0, |(v, _)| v.len());
        let bytes = buffer.bytes.saturating_sub(old).saturating_add(new);
        if bytes > max {
            return Err(StoreError::QuotaExceeded(format!(
                "init holds its writes until it succeeds, at most {max} bytes of them"
            )));
        }
        buffer.bytes = bytes;
        buffer.docs.insert(k, p);
        Ok(())
    }

    /// Apply one op to `buffer` (the store already read into `p`); returns its revision.
    fn step(buffer: &mut Buffer, max: usize, op: &WriteOp, mut p: Pending) -> Result<u64> {
        let current = p.now.as_ref().map_or(0, |(_, r)| *r);
        let (collection, key, expected) = match op {
            WriteOp::Put { collection, key, expected, .. } | WriteOp::Delete { collection, key, expected } => {
                (collection, key, *expected)
            }
        };
        if expected.is_some_and(|want| want != current) {
            return Err(StoreError::Conflict { current });
        }
        let rev = match op {
            WriteOp::Put { value, .. } => {
                p.now = Some((value.clone(), current + 1));
                current + 1
            }
            WriteOp::Delete { .. } => {
                p.now = None;
                0
            }
        };
        Self::apply(buffer, max, (collection.clone(), key.clone()), p)?;
        Ok(rev)
    }

    async fn pending_for(&self, scope: &Scope, ops: &[WriteOp]) -> Result<Vec<Pending>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let (WriteOp::Put { collection, key, .. } | WriteOp::Delete { collection, key, .. }) = op;
            out.push(self.current(scope, collection, key).await?);
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl DocumentStore for Overlay {
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>> {
        let p = self.current(scope, collection, key).await?;
        Ok(p.now.map(|(value, revision)| Document { key: key.to_owned(), value, revision }))
    }

    async fn put_within(
        &self,
        scope: &Scope,
        collection: &str,
        key: &str,
        value: &str,
        expected: Option<u64>,
        _quota: Quota,
    ) -> Result<u64> {
        let op = WriteOp::Put { collection: collection.into(), key: key.into(), value: value.into(), expected };
        Ok(self.transact_within(scope, std::slice::from_ref(&op), Quota::NONE).await?.first().copied().unwrap_or(0))
    }

    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        let p = self.current(scope, collection, key).await?;
        let existed = p.now.is_some();
        let op = WriteOp::Delete { collection: collection.into(), key: key.into(), expected };
        let mut buffer = self.buffer();
        Self::step(&mut buffer, self.max_bytes, &op, p)?;
        Ok(existed)
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
        let base = self.inner.list_bounded(scope, collection, prefix, limit, cursor, max_bytes).await?;
        let mut merged: BTreeMap<String, Document> = base.documents.into_iter().map(|d| (d.key.clone(), d)).collect();
        {
            let buffer = self.buffer();
            for ((c, k), p) in &buffer.docs {
                let after_cursor = cursor.is_none_or(|cur| k.as_str() > cur);
                // Past the store's page, the next page will show it.
                let within = base.next.as_deref().is_none_or(|last| k.as_str() <= last);
                if c != collection || !k.starts_with(prefix) || !after_cursor || !within {
                    continue;
                }
                match &p.now {
                    Some((value, revision)) => {
                        merged.insert(k.clone(), Document { key: k.clone(), value: value.clone(), revision: *revision })
                    }
                    None => merged.remove(k),
                };
            }
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut page = Page { documents: Vec::new(), next: base.next };
        let mut bytes = 0usize;
        for (_, d) in merged {
            let size = d.key.len() + d.value.len();
            if page.documents.len() == limit || (!page.documents.is_empty() && bytes + size > max_bytes) {
                page.next = page.documents.last().map(|d: &Document| d.key.clone());
                break;
            }
            bytes += size;
            page.documents.push(d);
        }
        Ok(page)
    }

    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], _quota: Quota) -> Result<Vec<u64>> {
        let read = self.pending_for(scope, ops).await?;
        let mut buffer = self.buffer();
        // All or nothing: work on a copy, keep it only if every op passes.
        let mut trial = buffer.clone();
        let mut revisions = Vec::with_capacity(ops.len());
        for (op, p) in ops.iter().zip(read) {
            let (WriteOp::Put { collection, key, .. } | WriteOp::Delete { collection, key, .. }) = op;
            // An earlier op of this batch may have touched the same document.
            let p = trial.docs.get(&(collection.clone(), key.clone())).cloned().unwrap_or(p);
            revisions.push(Self::step(&mut trial, self.max_bytes, op, p)?);
        }
        *buffer = trial;
        Ok(revisions)
    }
}

#[async_trait::async_trait]
impl GraphStore for Overlay {
    async fn link_within(
        &self,
        _tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        _quota: Quota,
    ) -> Result<()> {
        let mut buffer = self.buffer();
        let k = (from.to_owned(), to.to_owned(), kind.to_owned());
        let old = buffer.edges.get(&k).and_then(|a| a.as_ref()).map_or(0, String::len);
        let bytes = buffer.bytes.saturating_sub(old).saturating_add(attrs.len());
        if bytes > self.max_bytes {
            return Err(StoreError::QuotaExceeded(format!(
                "init holds its writes until it succeeds, at most {} bytes of them",
                self.max_bytes
            )));
        }
        buffer.bytes = bytes;
        buffer.edges.insert(k, Some(attrs.to_owned()));
        Ok(())
    }

    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        let k = (from.to_owned(), to.to_owned(), kind.to_owned());
        let buffered = self.buffer().edges.get(&k).map(Option::is_some);
        let existed = match buffered {
            Some(linked) => linked,
            None => self.inner.edge(tenant, from, to, kind).await?.is_some(),
        };
        self.buffer().edges.insert(k, None);
        Ok(existed)
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
        let base = self.inner.neighbours_bounded(tenant, agent, kind, direction, limit, max_bytes).await?;
        let buffer = self.buffer().edges.clone();
        let touched = |e: &Edge| buffer.contains_key(&(e.from.clone(), e.to.clone(), e.kind.clone()));
        let mut edges: Vec<Edge> = base.into_iter().filter(|e| !touched(e)).collect();
        for ((from, to, k), attrs) in &buffer {
            let Some(attrs) = attrs else { continue };
            let out = from == agent && matches!(direction, Direction::Outgoing | Direction::Both);
            let inc = to == agent
                && matches!(direction, Direction::Incoming | Direction::Both)
                && !(direction == Direction::Both && from == to);
            if (out || inc) && kind.is_none_or(|want| want == k) {
                edges.push(Edge { from: from.clone(), to: to.clone(), kind: k.clone(), attrs: attrs.clone() });
            }
        }
        // Outgoing first, then incoming, each by (kind, the other agent).
        edges.sort_by(|a, b| {
            let key = |e: &Edge| {
                let outgoing = e.from == agent && direction != Direction::Incoming;
                (!outgoing, e.kind.clone(), if outgoing { e.to.clone() } else { e.from.clone() })
            };
            key(a).cmp(&key(b))
        });
        edges.truncate(limit);
        Ok(edges)
    }

    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>> {
        let k = (from.to_owned(), to.to_owned(), kind.to_owned());
        let buffered = self.buffer().edges.get(&k).cloned();
        match buffered {
            Some(attrs) => Ok(attrs.map(|attrs| Edge { from: k.0, to: k.1, kind: k.2, attrs })),
            None => self.inner.edge(tenant, from, to, kind).await,
        }
    }

    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        self.inner.remove_agent_edges(tenant, agent).await
    }
}

impl Wrapper for Overlay {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }
}

// Records and the feed go straight to the store.
impl WrapsRecords for Overlay {}
impl WrapsFeed for Overlay {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn setup() -> (tempfile::TempDir, Arc<dyn Store>, Overlay, Scope) {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let scope = Scope::new("t", "init");
        let overlay = Overlay::new(inner.clone(), scope.clone(), 1 << 20);
        (dir, inner, overlay, scope)
    }

    fn keys(p: &Page) -> Vec<&str> {
        p.documents.iter().map(|d| d.key.as_str()).collect()
    }

    #[tokio::test]
    async fn reads_see_buffered_writes_and_the_store_sees_nothing_until_commit() {
        let (_dir, inner, o, s) = setup();
        inner.put(&s, "c", "b", "1", None).await.unwrap();
        inner.put(&s, "c", "d", "1", None).await.unwrap();
        assert_eq!(o.put(&s, "c", "a", "\"new\"", Some(0)).await.unwrap(), 1);
        assert_eq!(o.put(&s, "c", "b", "2", Some(1)).await.unwrap(), 2);
        assert!(matches!(o.put(&s, "c", "b", "3", Some(1)).await, Err(StoreError::Conflict { current: 2 })));
        assert!(o.delete(&s, "c", "d", None).await.unwrap());
        assert_eq!(o.get(&s, "c", "b").await.unwrap().map(|d| d.value), Some("2".into()));
        assert_eq!(keys(&o.list(&s, "c", "", 10, None).await.unwrap()), ["a", "b"]);
        let p = o.list(&s, "c", "", 1, None).await.unwrap();
        assert_eq!((keys(&p), p.next.as_deref()), (vec!["a"], Some("a")));
        // Nothing reached the store.
        assert_eq!(inner.get(&s, "c", "a").await.unwrap(), None);
        assert_eq!(inner.feed_head("t").await.unwrap(), 2);

        o.commit(Quota::NONE).await.unwrap();
        assert_eq!(keys(&inner.list(&s, "c", "", 10, None).await.unwrap()), ["a", "b"]);
        // One transaction: one event per document touched.
        assert_eq!(inner.feed_head("t").await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_refused_transaction_buffers_nothing_and_the_buffer_is_bounded() {
        let (_dir, inner, o, s) = setup();
        let put =
            |k: &str, v: &str, e| WriteOp::Put { collection: "c".into(), key: k.into(), value: v.into(), expected: e };
        let bad = [put("x", "1", None), put("y", "1", Some(4))];
        assert!(matches!(o.transact(&s, &bad).await, Err(StoreError::Conflict { current: 0 })));
        assert_eq!(o.get(&s, "c", "x").await.unwrap(), None);
        let big = format!("\"{}\"", "v".repeat(1 << 20));
        assert!(matches!(o.put(&s, "c", "big", &big, None).await, Err(StoreError::QuotaExceeded(_))));
        // A document another writer changed meanwhile fails the commit; nothing is written.
        o.put(&s, "c", "k", "1", Some(0)).await.unwrap();
        o.put(&s, "c", "j", "1", Some(0)).await.unwrap();
        inner.put(&s, "c", "k", "9", None).await.unwrap();
        assert!(matches!(o.commit(Quota::NONE).await, Err(StoreError::Conflict { .. })));
        assert_eq!(inner.get(&s, "c", "j").await.unwrap(), None);
    }

    #[tokio::test]
    async fn links_are_buffered_and_merged_into_neighbours() {
        let (_dir, inner, o, _s) = setup();
        inner.link("t", "a", "b", "k", "{}").await.unwrap();
        inner.link("t", "a", "c", "k", "{}").await.unwrap();
        o.link("t", "a", "d", "k", "[1]").await.unwrap();
        assert!(o.unlink("t", "a", "b", "k").await.unwrap());
        assert!(!o.unlink("t", "a", "z", "k").await.unwrap());
        let n = o.neighbours("t", "a", None, Direction::Outgoing, 10).await.unwrap();
        assert_eq!(n.iter().map(|e| e.to.as_str()).collect::<Vec<_>>(), ["c", "d"]);
        assert_eq!(inner.neighbours("t", "a", None, Direction::Outgoing, 10).await.unwrap().len(), 2);
        o.commit(Quota::NONE).await.unwrap();
        let n = inner.neighbours("t", "a", None, Direction::Outgoing, 10).await.unwrap();
        assert_eq!(n.iter().map(|e| e.to.as_str()).collect::<Vec<_>>(), ["c", "d"]);
    }
}
