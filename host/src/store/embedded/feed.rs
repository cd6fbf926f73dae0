//! The embedded change feed.
//!
//! Table `feed` maps `tenant | seq (u64 BE)` (tenant length-prefixed, so tenants never
//! share a range and a tenant's events sort by number) to the event as JSON; table
//! `feed_heads` keeps each tenant's last number. Both are written in the document write's
//! own transaction ([`FeedTables::append`]), so an event commits exactly with its write.

use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{EmbeddedStore, backend, keys_with_prefix, push_part};
use crate::store::{ChangeEvent, ChangeOp, FeedStore, Result, Scope, StoreError};
use crate::telemetry::otel::TraceContext;

pub(super) const FEED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("feed");
pub(super) const HEADS: TableDefinition<&str, u64> = TableDefinition::new("feed_heads");

/// One event as stored (the sequence number is in the key).
#[derive(Serialize, Deserialize)]
struct Stored {
    c: String,
    k: String,
    o: String,
    r: u64,
    a: String,
    /// The writer's trace context (absent in events stored before it was kept, and while
    /// tracing is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<TraceContext>,
}

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(FEED).map_err(backend)?;
    txn.open_table(HEADS).map_err(backend)?;
    Ok(())
}

fn prefix(tenant: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + tenant.len() + 8);
    push_part(&mut p, tenant.as_bytes());
    p
}

fn event_key(tenant: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(tenant);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The feed tables inside one write transaction.
pub(super) struct FeedTables<'t> {
    events: redb::Table<'t, &'static [u8], &'static [u8]>,
    heads: redb::Table<'t, &'static str, u64>,
    /// The last number appended in this transaction to each tenant's feed, to publish
    /// after the commit.
    pub(super) appended: Vec<(String, u64)>,
    /// The trace context of the write's span, stored with each event appended.
    trace: Option<TraceContext>,
}

impl<'t> FeedTables<'t> {
    /// The feed tables of `txn`, its events appended with `trace` (the writer's).
    pub(super) fn open(txn: &'t redb::WriteTransaction, trace: Option<TraceContext>) -> Result<Self> {
        Ok(Self {
            events: txn.open_table(FEED).map_err(backend)?,
            heads: txn.open_table(HEADS).map_err(backend)?,
            appended: Vec::new(),
            trace,
        })
    }

    /// Append one event to the scope's tenant feed; returns its number.
    pub(super) fn append(
        &mut self,
        scope: &Scope,
        collection: &str,
        key: &str,
        op: ChangeOp,
        revision: u64,
    ) -> Result<u64> {
        let tenant = &*scope.tenant;
        let seq = self.heads.get(tenant).map_err(backend)?.map_or(0, |v| v.value()) + 1;
        let event = Stored {
            c: collection.to_owned(),
            k: key.to_owned(),
            o: op.as_str().to_owned(),
            r: revision,
            a: scope.agent.to_string(),
            t: self.trace.clone(),
        };
        let json = serde_json::to_vec(&event).map_err(|e| StoreError::Backend {
            message: format!("encoding an event: {e}"),
            transient: false,
            source: None,
        })?;
        let previous = self.events.insert(event_key(tenant, seq).as_slice(), json.as_slice()).map_err(backend)?;
        if previous.is_some() {
            return Err(StoreError::Corrupted(format!("feed of {tenant:?} already has event {seq}")));
        }
        drop(previous);
        self.heads.insert(tenant, seq).map_err(backend)?;
        match self.appended.iter_mut().find(|(t, _)| t == tenant) {
            Some((_, last)) => *last = seq,
            None => self.appended.push((tenant.to_owned(), seq)),
        }
        Ok(seq)
    }

    /// Remove a tenant's whole feed; its numbering starts again at 1.
    pub(super) fn purge(&mut self, tenant: &str) -> Result<()> {
        for k in keys_with_prefix(&self.events, &prefix(tenant))? {
            self.events.remove(k.as_slice()).map_err(backend)?;
        }
        self.heads.remove(tenant).map_err(backend)?;
        Ok(())
    }
}

fn decode(tenant: &str, seq: u64, raw: &[u8]) -> Result<ChangeEvent> {
    let bad = || StoreError::Corrupted(format!("event {seq} of {tenant:?} does not decode"));
    let e: Stored = serde_json::from_slice(raw).map_err(|_| bad())?;
    Ok(ChangeEvent {
        seq,
        collection: e.c,
        key: e.k,
        op: ChangeOp::parse(&e.o).ok_or_else(bad)?,
        revision: e.r,
        agent: e.a,
        trace: e.t,
    })
}

impl EmbeddedStore {
    fn head(&self, tenant: &str) -> Result<u64> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(HEADS).map_err(backend)?;
        Ok(table.get(tenant).map_err(backend)?.map_or(0, |v| v.value()))
    }
}

#[async_trait::async_trait]
impl FeedStore for EmbeddedStore {
    async fn feed_since(&self, tenant: &str, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        let Some(first) = since.checked_add(1) else { return Ok(Vec::new()) };
        let (start, end) = (event_key(tenant, first), event_key(tenant, u64::MAX));
        let tenant = tenant.to_owned();
        self.read(move |txn| {
            let table = txn.open_table(FEED).map_err(backend)?;
            let mut out = Vec::new();
            for item in table.range::<&[u8]>(start.as_slice()..=end.as_slice()).map_err(backend)? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item.map_err(backend)?;
                let seq = k.value().last_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b));
                // Written densely in one transaction per write; a hole means damage.
                if seq != first + out.len() as u64 {
                    return Err(StoreError::Corrupted(format!("feed of {tenant:?} skips to {seq}")));
                }
                out.push(decode(&tenant, seq, v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn feed_head(&self, tenant: &str) -> Result<u64> {
        self.head(tenant)
    }

    async fn wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        // One process owns the file: every write publishes, no polling needed.
        self.signal.wait_for(tenant, after, timeout, None, || async { self.head(tenant) }).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::store::DocumentStore;

    #[tokio::test]
    async fn a_subscribed_waiter_wakes_on_the_commit_not_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for("t", 0, Duration::from_secs(60)).await.unwrap() })
        };
        // Not a sleep: yield until the waiter holds its subscription.
        while s.signal.waiters("t") == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        s.put(&Scope::new("t", "a"), "c", "k", "1", None).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // The last waiter gone, the next publish drops the tenant's channel.
        s.put(&Scope::new("t", "a"), "c", "k", "2", None).await.unwrap();
        assert_eq!(s.signal.waiters("t"), 0);
    }

    #[test]
    fn events_stored_before_the_trace_context_was_kept_still_decode() {
        let old = br#"{"c":"orders","k":"o1","o":"put","r":3,"a":"w"}"#;
        let e = decode("t", 7, old).unwrap();
        assert_eq!((e.seq, e.collection.as_str(), e.revision, e.trace), (7, "orders", 3, None));
        let new = br#"{"c":"orders","k":"o1","o":"delete","r":3,"a":"w","t":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"v=1"}}"#;
        let e = decode("t", 8, new).unwrap();
        let t = e.trace.unwrap();
        assert_eq!((t.trace_id(), t.tracestate.as_str()), (Some("0af7651916cd43dd8448eb211c80319c"), "v=1"));
        // The change-feed API does not show it.
        let shown = serde_json::to_value(ChangeEvent { trace: Some(t), ..e }).unwrap();
        assert!(shown.get("trace").is_none(), "{shown}");
    }
}
