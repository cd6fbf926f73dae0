//! The ArangoDB change feed: one stream per tenant in `cortex_feed`.
//!
//! Each write's stream transaction also writes the stream's head document
//! (`{escaped stream}-head`, `{head, seq}`) and one event document per op
//! (`{escaped stream}-{seq:020}`, see [`event_key`]). Two writers of one tenant collide on
//! the head document (409 write-write conflict or 412 on its `_rev`) and on the event key
//! (409 unique constraint), so the loser's transaction is aborted and retried: numbers are
//! dense and commit in order. Readers still advance only over contiguous numbers.

use std::time::Duration;

use arangors::document::options::{InsertOptions, RemoveOptions, ReplaceOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::keys::escape;
use super::{ArangoStore, Coll, Step, backend, event_key, is_not_found, lost_race, read, with_key};
use crate::store::{ChangeEvent, ChangeOp, FeedStore, Result, Scope, StoreError};
use crate::telemetry::otel::TraceContext;

/// First and longest pause between two polls of the head in [`FeedStore::wait_for`].
const POLL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(250));

/// An event waiting for its number, inside a write's transaction.
pub(super) struct Pending<'a> {
    pub(super) collection: &'a str,
    pub(super) key: &'a str,
    pub(super) op: ChangeOp,
    pub(super) revision: u64,
}

/// The head document of a stream (no `stream` field: event queries never meet it).
#[derive(Serialize, Deserialize)]
struct Head {
    head: String,
    seq: u64,
}

/// One change event as kept in `cortex_feed`.
#[derive(Serialize, Deserialize)]
struct StoredChange {
    stream: String,
    seq: u64,
    tenant: String,
    collection: String,
    key: String,
    op: String,
    rev: u64,
    agent: String,
    /// The writer's trace context (absent in events stored before it was kept, and while
    /// tracing is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<TraceContext>,
}

fn stream(tenant: &str) -> String {
    format!("t:{tenant}")
}

fn head_key(stream: &str) -> String {
    let mut k = String::new();
    escape(stream, &mut k);
    k.push_str("-head");
    k
}

/// Append `events` to the scope's tenant stream through `feed` (bound to the write's
/// transaction); returns the new head (`None` when there was nothing to append).
pub(super) async fn append(feed: &Coll, scope: &Scope, events: &[Pending<'_>]) -> Result<Step<Option<u64>>> {
    if events.is_empty() {
        return Ok(Step::Done(None));
    }
    // The writer's span (a host call, a request) is the current one.
    let trace = TraceContext::current();
    let stream = stream(&scope.tenant);
    let hk = head_key(&stream);
    let current = read::<Head>(feed, &hk).await?;
    let first = current.as_ref().map_or(0, |(_, h)| h.seq) + 1;
    let last = first + events.len() as u64 - 1;
    // The head first: a concurrent writer of this tenant conflicts here, before more work.
    let head = with_key(&hk, &Head { head: stream.clone(), seq: last })?;
    let res = match current {
        None => feed.create_document(head, InsertOptions::default()).await.map(|_| ()),
        Some((rev, _)) => feed.replace_document(&hk, head, ReplaceOptions::default(), Some(rev)).await.map(|_| ()),
    };
    match res {
        Ok(()) => {}
        Err(e) if lost_race(&e) => return Ok(Step::Retry),
        Err(e) => return Err(backend(e)),
    }
    for (seq, e) in (first..).zip(events) {
        let body = StoredChange {
            stream: stream.clone(),
            seq,
            tenant: scope.tenant.to_string(),
            collection: e.collection.to_owned(),
            key: e.key.to_owned(),
            op: e.op.as_str().to_owned(),
            rev: e.revision,
            agent: scope.agent.to_string(),
            trace: trace.clone(),
        };
        match feed.create_document(with_key(&event_key(&stream, seq), &body)?, InsertOptions::default()).await {
            Ok(_) => {}
            // The unique key refused a second event with this number.
            Err(e) if lost_race(&e) => return Ok(Step::Retry),
            Err(e) => return Err(backend(e)),
        }
    }
    Ok(Step::Done(Some(last)))
}

impl ArangoStore {
    async fn head(&self, tenant: &str) -> Result<u64> {
        Ok(read::<Head>(&self.feed, &head_key(&stream(tenant))).await?.map_or(0, |(_, h)| h.seq))
    }

    /// Remove a tenant's stream and its head.
    pub(super) async fn purge_feed(&self, tenant: &str) -> Result<()> {
        let stream = stream(tenant);
        match self.feed.remove_document::<Value>(&head_key(&stream), RemoveOptions::default(), None).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(backend(e)),
        }
        let _: Vec<u64> = self
            .query(
                "LET removed = (FOR e IN cortex_feed FILTER e.stream == @stream \
                 REMOVE e IN cortex_feed RETURN 1) RETURN LENGTH(removed)",
                vec![("stream", json!(stream))],
            )
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl FeedStore for ArangoStore {
    async fn feed_since(&self, tenant: &str, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct Row {
            seq: u64,
            collection: String,
            key: String,
            op: String,
            rev: u64,
            agent: String,
            #[serde(default)]
            trace: Option<TraceContext>,
        }
        let rows: Vec<Row> = self
            .query(
                "FOR e IN cortex_feed FILTER e.stream == @stream AND e.seq > @since SORT e.seq LIMIT @limit \
                 RETURN { seq: e.seq, collection: e.collection, key: e.key, op: e.op, rev: e.rev, agent: e.agent, trace: e.trace }",
                vec![("stream", json!(stream(tenant))), ("since", json!(since)), ("limit", json!(limit))],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (want, row) in (since.saturating_add(1)..).zip(rows) {
            if row.seq != want {
                // Not yet visible (or never written): stop before the hole.
                break;
            }
            let op = ChangeOp::parse(&row.op)
                .ok_or_else(|| StoreError::Corrupted(format!("arangodb: event {} has op {:?}", row.seq, row.op)))?;
            out.push(ChangeEvent {
                seq: row.seq,
                collection: row.collection,
                key: row.key,
                op,
                revision: row.rev,
                agent: row.agent,
                trace: row.trace,
            });
        }
        Ok(out)
    }

    async fn feed_head(&self, tenant: &str) -> Result<u64> {
        self.head(tenant).await
    }

    async fn wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        // Writes through this store wake at once; other processes' writes are polled.
        self.signal.wait_for(tenant, after, timeout, Some(POLL), || self.head(tenant)).await
    }
}
