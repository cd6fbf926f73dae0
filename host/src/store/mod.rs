//! Storage behind the host's imports: one async trait, backends beside it.
//!
//! The trait is the only way capabilities reach durable state. Every call carries a
//! [`Scope`] built by the host from the invocation's identity, so a backend keys all data
//! by tenant and a guest can never name another tenant's data.

pub mod arangodb;
pub mod backup;
mod embedded;
mod faults;
mod fenced;
mod instrumented;
pub mod keys;
mod overlay;
mod wrapper;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

pub use arangodb::ArangoStore;
pub use embedded::EmbeddedStore;
pub use embedded::backup::{EmbeddedSnapshot, restore as restore_embedded};
pub use faults::{FaultControls, FaultPlan, FaultStats, Faulty, Latency, Rate};
pub use fenced::Fenced;
pub use instrumented::{CountObserver, Instrumented, Observer};
pub use keys::{KeyLimits, check_collection, check_key};
pub use overlay::Overlay;

/// Result alias for store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Who is asking: the tenant owns the data, the agent is recorded as the writer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The tenant whose data is read or written.
    pub tenant: Arc<str>,
    /// The agent that performs the call.
    pub agent: Arc<str>,
}

impl Scope {
    /// A scope for `tenant` acting as `agent`.
    pub fn new(tenant: impl Into<Arc<str>>, agent: impl Into<Arc<str>>) -> Self {
        Self { tenant: tenant.into(), agent: agent.into() }
    }
}

/// A stored document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Its key within the collection.
    pub key: String,
    /// JSON text.
    pub value: String,
    /// Revision, starting at 1 and bumped by every write.
    pub revision: u64,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Documents in key order.
    pub documents: Vec<Document>,
    /// The key to continue after, when more documents may follow.
    pub next: Option<String>,
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or replace a document.
    Put {
        /// Collection name.
        collection: String,
        /// Document key.
        key: String,
        /// JSON text.
        value: String,
        /// Expected current revision (0: must not exist).
        expected: Option<u64>,
    },
    /// Remove a document.
    Delete {
        /// Collection name.
        collection: String,
        /// Document key.
        key: String,
        /// Expected current revision (0: must not exist).
        expected: Option<u64>,
    },
}

/// What a tenant stores, as counted by the backend in the same transaction as each write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of document values, edges (names and attributes) and queued messages and
    /// dead letters (their stored records).
    pub bytes: u64,
    /// Graph edges.
    pub edges: u64,
}

/// What a tenant may store, checked by the backend inside the write's own transaction
/// (fail closed: a write whose usage cannot be read is not applied). A write that does not
/// grow a count is always allowed, so a tenant over its quota can still delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most bytes (see [`Usage::bytes`]); `None`: unlimited.
    pub bytes: Option<u64>,
    /// Most graph edges; `None`: unlimited.
    pub edges: Option<u64>,
}

impl Quota {
    /// No limit.
    pub const NONE: Quota = Quota { bytes: None, edges: None };

    /// Refuse going from `before` to `after` if that grows a count past its limit.
    pub fn check(&self, before: Usage, after: Usage) -> Result<()> {
        if let Some(max) = self.bytes
            && after.bytes > max
            && after.bytes > before.bytes
        {
            return Err(StoreError::QuotaExceeded(format!(
                "the tenant stores {} bytes; {} more would exceed its storage quota of {max}",
                before.bytes,
                after.bytes - before.bytes
            )));
        }
        if let Some(max) = self.edges
            && after.edges > max
            && after.edges > before.edges
        {
            return Err(StoreError::QuotaExceeded(format!("the tenant has {} edges, its quota", before.edges)));
        }
        Ok(())
    }
}

/// Bytes an edge counts in [`Usage::bytes`]: its names and its attributes.
pub fn edge_size(from: &str, to: &str, kind: &str, attrs: &str) -> u64 {
    (from.len() + to.len() + kind.len() + attrs.len()) as u64
}

/// The tenant of a record key of a [`RecordKind::is_metered`] kind (`tenant/agent/id`).
pub fn record_tenant(key: &str) -> &str {
    key.split_once('/').map_or(key, |(t, _)| t)
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Compare-and-swap failed; `current` is the document's revision now (0: absent).
    #[error("revision conflict: the current revision is {current}")]
    Conflict {
        /// The revision found.
        current: u64,
    },
    /// The backend failed. `transient` says whether retrying the same call may succeed.
    #[error("storage backend failed: {message}")]
    Backend {
        /// What failed, for the log (never shown to a guest verbatim).
        message: String,
        /// Whether a retry is safe and may succeed.
        transient: bool,
        /// The error of the backend's client, when one caused it.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The store's files are damaged or from an incompatible version.
    #[error("storage is corrupted or incompatible: {0}")]
    Corrupted(String),
    /// The write would take the tenant past its storage or edge quota; nothing was written.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A fenced write ([`RecordStore::record_apply`]) whose lease has passed to a later
    /// epoch (or is gone): nothing was written. The former owner of the work must stop.
    #[error("fenced: the lease {key} is at epoch {held}, the write carried epoch {carried}")]
    Fenced {
        /// The lease record's key.
        key: String,
        /// The epoch the lease holds now (0: no lease record).
        held: u64,
        /// The epoch the write carried.
        carried: u64,
    },
    /// Opening the data directory failed.
    #[error("cannot open the data directory {path}: {source}")]
    Open {
        /// The path that could not be opened.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend { transient: true, .. })
    }

    /// A short stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::Backend { .. } => "backend",
            StoreError::Corrupted(_) => "corrupted",
            StoreError::QuotaExceeded(_) => "quota",
            StoreError::Open { .. } => "open",
            StoreError::Fenced { .. } => "fenced",
        }
    }
}

/// Kinds of registry record, each its own key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Tenants, keyed by name.
    Tenant,
    /// Module metadata, keyed by `tenant/digest`.
    Module,
    /// Agents, keyed by `tenant/name`.
    Agent,
    /// API keys, keyed by key id.
    ApiKey,
    /// Change-feed cursors of watching agents, keyed by `tenant/agent`.
    Cursor,
    /// Change batches and messages an agent failed, keyed by `tenant/agent/id`.
    DeadLetter,
    /// Messages waiting in mailboxes, keyed by `tenant/agent/id`.
    Message,
    /// Idempotency keys of delivered messages, keyed by `tenant/agent/k<hash>`.
    Delivered,
    /// What is left of deleted tenants, keyed by name.
    DeletedTenant,
    /// Resource profiles, keyed by `tenant/name`.
    Profile,
    /// Registry credentials of a tenant, keyed by `tenant/host[:port]`.
    RegistryCredential,
    /// Chunks of an agent's persisted log, keyed by `tenant/agent/<first line's number,
    /// 20 digits>` (so they list oldest first): a JSON array of log lines.
    AgentLog,
    /// Leases of per-agent background work (its watcher cursor, its mailbox), keyed by
    /// `work/tenant/agent`: a JSON object with at least `"epoch": <u64>` (see
    /// [`RecordStore::record_apply`]).
    Lease,
    /// Cluster membership: one record per host node, keyed by its node id.
    Node,
    /// Chunks of module bytes, keyed by `<digest>/<chunk number, 8 digits>`.
    ModuleChunk,
    /// Cluster-wide counters kept exact by compare-and-swap (e.g. a tenant's agents),
    /// keyed by `what/tenant`.
    Counter,
    /// Workflow definitions, keyed by `tenant/name/<version, 10 digits>`.
    Workflow,
    /// Workflow runs (`tenant/run/<id>`), the index of active runs (`tenant/active/<id>`)
    /// and the runs' idempotency keys (`tenant/key/<workflow>/<sha-256 hex>`).
    WorkflowRun,
    /// A tenant's secrets, sealed (see [`crate::vault`]), keyed by `tenant/name`. Not
    /// replicated: every node reads the shared store when it reveals one.
    Secret,
}

/// The pseudo-tenant whose change feed is the registry change stream: never a valid
/// tenant name (tenant names are `[a-z0-9-]`), so no tenant can read or purge it.
pub const REGISTRY_FEED: &str = "~registry";

/// A fence for [`RecordStore::record_apply`]: the writes apply only while the lease record
/// (`RecordKind::Lease`, `key`) holds `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// Key of the lease record.
    pub key: String,
    /// The epoch the writer holds the lease at.
    pub epoch: u64,
}

/// One write of [`RecordStore::record_apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordOp {
    /// Write a record (compare-and-swap with `expected`; 0: must not exist).
    Put {
        /// Its kind.
        kind: RecordKind,
        /// Its key.
        key: String,
        /// Its bytes.
        value: Vec<u8>,
        /// Expected current revision.
        expected: Option<u64>,
    },
    /// Delete a record (compare-and-swap with `expected`; absent is not an error without one).
    Delete {
        /// Its kind.
        kind: RecordKind,
        /// Its key.
        key: String,
        /// Expected current revision.
        expected: Option<u64>,
    },
    /// Insert or replace a document of `scope`'s tenant, with its change event, as
    /// [`DocumentStore::put`] without an expected revision: so a record and the document
    /// that shows it in the tenant's change feed change together. Its bytes count in the
    /// tenant's usage, within the write's quota. Its result is the document's new revision.
    PutDocument {
        /// The tenant it belongs to and the writer its change event names.
        scope: Scope,
        /// Collection name.
        collection: String,
        /// Document key.
        key: String,
        /// JSON text.
        value: String,
    },
}

/// The lease epoch in a lease record's JSON bytes (`{"epoch": n, ...}`; 0 when unreadable).
pub fn lease_epoch(value: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        epoch: u64,
    }
    serde_json::from_slice::<E>(value).map_or(0, |e| e.epoch)
}

impl RecordKind {
    /// The stable name of the key space.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Tenant => "tenant",
            RecordKind::Module => "module",
            RecordKind::Agent => "agent",
            RecordKind::ApiKey => "apikey",
            RecordKind::Cursor => "cursor",
            RecordKind::DeadLetter => "deadletter",
            RecordKind::Message => "message",
            RecordKind::Delivered => "delivered",
            RecordKind::DeletedTenant => "deleted-tenant",
            RecordKind::Profile => "profile",
            RecordKind::RegistryCredential => "registry-credential",
            RecordKind::AgentLog => "agent-log",
            RecordKind::Lease => "lease",
            RecordKind::Node => "node",
            RecordKind::ModuleChunk => "module-chunk",
            RecordKind::Counter => "counter",
            RecordKind::Workflow => "workflow",
            RecordKind::WorkflowRun => "workflow-run",
            RecordKind::Secret => "secret",
        }
    }

    /// Undo [`RecordKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Every kind.
    pub const ALL: [RecordKind; 19] = [
        RecordKind::Tenant,
        RecordKind::Module,
        RecordKind::Agent,
        RecordKind::ApiKey,
        RecordKind::Cursor,
        RecordKind::DeadLetter,
        RecordKind::Message,
        RecordKind::Delivered,
        RecordKind::DeletedTenant,
        RecordKind::Profile,
        RecordKind::RegistryCredential,
        RecordKind::AgentLog,
        RecordKind::Lease,
        RecordKind::Node,
        RecordKind::ModuleChunk,
        RecordKind::Counter,
        RecordKind::Workflow,
        RecordKind::WorkflowRun,
        RecordKind::Secret,
    ];

    /// Whether every write of a record of this kind is appended to the registry change
    /// stream ([`REGISTRY_FEED`]) in the same atomic step: what every node keeps a view of
    /// (tenants, modules, agents, keys, profiles, registry credentials).
    pub fn is_replicated(self) -> bool {
        matches!(
            self,
            RecordKind::Tenant
                | RecordKind::DeletedTenant
                | RecordKind::Module
                | RecordKind::Agent
                | RecordKind::ApiKey
                | RecordKind::Profile
                | RecordKind::RegistryCredential
        )
    }

    /// Whether records of this kind hold a tenant's data and count in its [`Usage::bytes`]
    /// (keyed `tenant/...`): queued messages and dead letters.
    pub fn is_metered(self) -> bool {
        matches!(self, RecordKind::Message | RecordKind::DeadLetter)
    }
}

/// Registry records (JSON bytes with a revision) and the audit log.
///
/// Record writes are atomic and durable when they return, with the same compare-and-swap
/// rule as documents (expected revision; 0: must not exist).
#[async_trait::async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Read a record and its revision.
    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>>;
    /// Write a record; returns the new revision.
    async fn record_put(&self, kind: RecordKind, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64> {
        self.record_put_within(kind, key, value, expected, Quota::NONE).await
    }

    /// [`RecordStore::record_put`]; a record of a [`RecordKind::is_metered`] kind counts in
    /// its tenant's usage, checked against `quota` in the same transaction.
    async fn record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64>;
    /// Delete a record; returns whether it existed.
    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool>;

    /// Delete several records of `kind`, in one transaction where the backend has them;
    /// returns how many existed.
    async fn record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        let mut n = 0;
        for k in keys {
            n += u64::from(self.record_delete(kind, k).await?);
        }
        Ok(n)
    }
    /// Records whose key starts with `prefix`, in key order.
    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Records whose key starts with `prefix`, in key order, each with its revision: one
    /// scan where the backend can (restore reads every agent record this way). The default
    /// lists, then reads each record's revision.
    async fn record_list_revisions(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>, u64)>> {
        let mut out = Vec::new();
        for (key, _) in self.record_list(kind, prefix).await? {
            if let Some((value, rev)) = self.record_get(kind, &key).await? {
                out.push((key, value, rev));
            }
        }
        Ok(out)
    }
    /// Append an audit event to the platform's log and, with `tenant` (a tenant id), to that
    /// tenant's own log too, in one atomic step. Returns its sequence number in the
    /// platform's log and in the tenant's: each log numbers from 1, without gaps.
    async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> Result<(u64, Option<u64>)>;
    /// Audit events after `since` of the platform's log (`tenant` `None`) or of one tenant's
    /// own log, oldest first, at most `limit`.
    async fn audit_list(&self, tenant: Option<&str>, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Delete the oldest events of the platform's log (`tenant` `None`) or of one tenant's
    /// own log, those numbered up to `through`, but never the newest (the log numbers on
    /// from it): what is kept stays numbered without gaps. Returns how many were deleted.
    /// The default (a store that cannot) deletes none.
    async fn audit_prune(&self, tenant: Option<&str>, through: u64) -> Result<u64> {
        let _ = (tenant, through);
        Ok(0)
    }
    /// Delete every document of a tenant, its change feed (the sequence starts again at 1)
    /// and its graph edges; returns how many documents there were.
    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64>;
    /// What a tenant stores (see [`Usage`]).
    async fn usage(&self, tenant: &str) -> Result<Usage>;

    /// The cheapest call that proves the backend answers (for `/readyz`): the embedded
    /// store opens a read transaction, ArangoDB answers `GET /_api/version` within the
    /// client's timeouts. Reads no tenant data.
    async fn ping(&self) -> Result<()>;

    /// Apply `ops` in one atomic step, all or none, and only while the lease record
    /// `fence.key` holds `fence.epoch` (read in the same step; otherwise
    /// [`StoreError::Fenced`] and nothing is written). Records of a metered kind count in
    /// their tenant's usage within `quota`; replicated kinds append to the registry stream.
    /// Returns, for each op, the revision after a put, and for a delete 1 if the record
    /// existed, else 0.
    async fn record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>>;

    /// Bytes a tenant stores ([`Usage::bytes`]).
    async fn stored_bytes(&self, tenant: &str) -> Result<u64> {
        Ok(self.usage(tenant).await?.bytes)
    }
    /// A consistent snapshot of the whole store for `cortex backup`, taken now (`None`:
    /// the backend has no such snapshot; the embedded store and ArangoDB have).
    async fn snapshot(&self) -> Result<Option<Box<dyn backup::StoreSnapshot>>> {
        Ok(None)
    }
}

/// Everything the host keeps: documents with their change feed, graph edges and registry
/// records, in one backend.
pub trait Store: DocumentStore + RecordStore + FeedStore + GraphStore {}

impl<T: DocumentStore + RecordStore + FeedStore + GraphStore> Store for T {}

/// Durable documents, scoped by tenant.
///
/// Implementations must make `put`, `delete` and `transact` atomic and durable when they
/// return `Ok`, and must apply compare-and-swap checks inside the same atomic step.
#[async_trait::async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    /// Read one document.
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>>;

    /// Insert or replace a document; returns the new revision.
    async fn put(&self, scope: &Scope, collection: &str, key: &str, value: &str, expected: Option<u64>) -> Result<u64> {
        self.put_within(scope, collection, key, value, expected, Quota::NONE).await
    }

    /// [`DocumentStore::put`] within the tenant's `quota`, checked in the write's transaction.
    async fn put_within(
        &self,
        scope: &Scope,
        collection: &str,
        key: &str,
        value: &str,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64>;

    /// Delete a document; returns whether it existed.
    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool>;

    /// Documents whose key starts with `prefix`, in key order, after `cursor`.
    async fn list(
        &self,
        scope: &Scope,
        collection: &str,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page> {
        self.list_bounded(scope, collection, prefix, limit, cursor, usize::MAX).await
    }

    /// [`DocumentStore::list`], the page also bounded by bytes: it ends (with `next`)
    /// before the document whose key and value would take it past `max_bytes`, except that
    /// a page always holds at least one document. The backend stops reading there.
    async fn list_bounded(
        &self,
        scope: &Scope,
        collection: &str,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
        max_bytes: usize,
    ) -> Result<Page>;

    /// Apply every op or none; returns the revision after each op (0 for deletes).
    async fn transact(&self, scope: &Scope, ops: &[WriteOp]) -> Result<Vec<u64>> {
        self.transact_within(scope, ops, Quota::NONE).await
    }

    /// [`DocumentStore::transact`] within the tenant's `quota`, checked in the transaction.
    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], quota: Quota) -> Result<Vec<u64>>;
}

/// What a change event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// The document was inserted or replaced.
    Put,
    /// The document was removed.
    Delete,
}

impl ChangeOp {
    /// `put` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Put => "put",
            ChangeOp::Delete => "delete",
        }
    }

    /// Undo [`ChangeOp::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(ChangeOp::Put),
            "delete" => Some(ChangeOp::Delete),
            _ => None,
        }
    }
}

/// One document write, as recorded in its tenant's change feed: the one type of a change
/// event in the host (feed, deliveries, dead letters); it becomes the WIT `change-event` only
/// where a guest's `on-change` is called.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChangeEvent {
    /// Position in the tenant's feed: 1, 2, 3... without gaps.
    pub seq: u64,
    /// Collection of the document.
    pub collection: String,
    /// Key of the document.
    pub key: String,
    /// What happened.
    pub op: ChangeOp,
    /// For a put, the new revision; for a delete, the revision that was removed.
    pub revision: u64,
    /// The agent that wrote (the scope's agent; empty in dead letters kept before it was).
    #[serde(default)]
    pub agent: String,
    /// The W3C trace context of the span that made the write, while tracing was on: the
    /// delivery of the event to a watcher is linked to it. Kept in the store only, not part
    /// of the change-feed API (nor of dead letters).
    #[serde(skip)]
    pub trace: Option<crate::telemetry::otel::TraceContext>,
}

/// The change feed: every document write of a tenant, in commit order.
///
/// Each `put`, each `delete` that removed a document and each such op of a `transact`
/// appends one event in the same atomic step as the write: no write without its event,
/// no event without its write. A failed compare-and-swap, a rolled-back `transact` and a
/// `delete` of an absent document append nothing. Sequence numbers are dense per tenant
/// and start at 1 (again after [`RecordStore::purge_tenant_documents`]).
#[async_trait::async_trait]
pub trait FeedStore: Send + Sync + 'static {
    /// Events with `seq > since`, in sequence order, at most `limit`. Never skips a number:
    /// the result is a contiguous run starting at `since + 1` (possibly empty).
    async fn feed_since(&self, tenant: &str, since: u64, limit: usize) -> Result<Vec<ChangeEvent>>;

    /// The last sequence number of the tenant's feed (0: none yet).
    async fn feed_head(&self, tenant: &str) -> Result<u64>;

    /// Wait until the feed head passes `after` or `timeout` elapses; returns the head then
    /// (`> after` when woken by a write). Instant wake-up for writes through this store
    /// value; backends shared between processes also poll with backoff.
    async fn wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64>;
}

/// Which edges of an agent [`GraphStore::neighbours`] follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Edges from the agent.
    Outgoing,
    /// Edges to the agent.
    Incoming,
    /// Both: outgoing first, then incoming (a self-loop is listed once, as outgoing).
    Both,
}

/// A directed, typed edge between two agents of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The source agent.
    pub from: String,
    /// The target agent.
    pub to: String,
    /// The edge's kind; `(from, to, kind)` identifies an edge.
    pub kind: String,
    /// JSON text, kept verbatim.
    pub attrs: String,
}

/// Edges between agents of a tenant. Tenants never share an edge: every key includes the
/// tenant. The store does not check that the agents exist (the registry does).
#[async_trait::async_trait]
pub trait GraphStore: Send + Sync + 'static {
    /// Create the edge `(from, to, kind)` or replace its attributes.
    async fn link(&self, tenant: &str, from: &str, to: &str, kind: &str, attrs: &str) -> Result<()> {
        self.link_within(tenant, from, to, kind, attrs, Quota::NONE).await
    }

    /// [`GraphStore::link`]; the edge counts in the tenant's usage (one edge, and
    /// [`edge_size`] bytes), checked against `quota` in the same transaction.
    async fn link_within(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        quota: Quota,
    ) -> Result<()>;

    /// The edge `(from, to, kind)`, if it exists.
    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>>;

    /// Remove an edge; returns whether it existed.
    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool>;

    /// Edges of `agent` in `direction`, of one `kind` or all, at most `limit`. Each
    /// direction is sorted by `(kind, the other agent)` in byte order.
    async fn neighbours(
        &self,
        tenant: &str,
        agent: &str,
        kind: Option<&str>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Edge>> {
        self.neighbours_bounded(tenant, agent, kind, direction, limit, usize::MAX).await
    }

    /// [`GraphStore::neighbours`], also bounded by bytes: the list ends before the edge
    /// whose [`edge_size`] would take it past `max_bytes` (at least one edge is returned).
    async fn neighbours_bounded(
        &self,
        tenant: &str,
        agent: &str,
        kind: Option<&str>,
        direction: Direction,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Edge>>;

    /// Remove every edge from or to `agent` (when the agent is deleted); returns how many.
    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64>;
}

/// In-process wake-up for [`FeedStore::wait_for`]: writers publish a tenant's new head
/// after their commit; waiters subscribe before they read the head, so no wake-up is lost.
#[derive(Default)]
pub(crate) struct FeedSignal {
    senders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl FeedSignal {
    fn subscribe(&self, tenant: &str) -> watch::Receiver<u64> {
        let mut map = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(tenant) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(tenant.to_owned(), tx);
                rx
            }
        }
    }

    /// How many waiters of `tenant` are subscribed (for tests).
    #[cfg(test)]
    pub(crate) fn waiters(&self, tenant: &str) -> usize {
        let map = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(tenant).map_or(0, watch::Sender::receiver_count)
    }

    /// Tell the tenant's waiters that its feed reached `head` (after the commit).
    pub(crate) fn publish(&self, tenant: &str, head: u64) {
        let mut map = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = map.get(tenant) else { return };
        if tx.receiver_count() == 0 {
            map.remove(tenant);
        } else {
            tx.send_modify(|h| *h = head);
        }
    }

    /// [`FeedStore::wait_for`] on top of `head`: wakes on [`FeedSignal::publish`] and, with
    /// `poll`, also re-reads the head after a backoff from `poll.0` doubling up to `poll.1`.
    pub(crate) async fn wait_for<F, Fut>(
        &self,
        tenant: &str,
        after: u64,
        timeout: Duration,
        poll: Option<(Duration, Duration)>,
        head: F,
    ) -> Result<u64>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.subscribe(tenant);
        let mut backoff = poll.map(|p| p.0);
        loop {
            let now = head().await?;
            if now > after || tokio::time::Instant::now() >= deadline {
                return Ok(now);
            }
            let sleep_until = match backoff {
                Some(b) => deadline.min(tokio::time::Instant::now() + b),
                None => deadline,
            };
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // Cannot happen while we hold a receiver; do not spin if it does.
                        tokio::time::sleep_until(sleep_until).await;
                    }
                }
                () = tokio::time::sleep_until(sleep_until) => {}
            }
            if let (Some(b), Some((_, max))) = (backoff.as_mut(), poll) {
                *b = (*b * 2).min(max);
            }
        }
    }
}
