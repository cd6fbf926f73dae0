//! Storage behind the host's imports: one async trait, backends beside it.
//!
//! The trait is the only way capabilities reach durable state. Every call carries a
//! [`Scope`] built by the host from the invocation's identity, so a backend keys all data
//! by tenant and a guest can never name another tenant's data.

pub mod arangodb;
mod embedded;
mod instrumented;
pub mod keys;

use std::sync::Arc;

pub use arangodb::ArangoStore;
pub use embedded::EmbeddedStore;
pub use instrumented::{Instrumented, Observer};
pub use keys::{KeyLimits, check_collection, check_key};

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
    },
    /// The store's files are damaged or from an incompatible version.
    #[error("storage is corrupted or incompatible: {0}")]
    Corrupted(String),
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
            StoreError::Open { .. } => "open",
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
}

impl RecordKind {
    /// The stable name of the key space.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Tenant => "tenant",
            RecordKind::Module => "module",
            RecordKind::Agent => "agent",
            RecordKind::ApiKey => "apikey",
        }
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
    async fn record_put(&self, kind: RecordKind, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64>;
    /// Delete a record; returns whether it existed.
    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool>;
    /// Records whose key starts with `prefix`, in key order.
    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Append an audit event; returns its sequence number (from 1, without gaps).
    async fn audit_append(&self, event: Vec<u8>) -> Result<u64>;
    /// Audit events after `since`, oldest first, at most `limit`.
    async fn audit_list(&self, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Delete every document of a tenant; returns how many there were.
    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64>;
    /// Bytes of document values a tenant stores.
    async fn stored_bytes(&self, tenant: &str) -> Result<u64>;
}

/// Everything the host keeps: documents and registry records, in one backend.
pub trait Store: DocumentStore + RecordStore {}

impl<T: DocumentStore + RecordStore> Store for T {}

/// Durable documents, scoped by tenant.
///
/// Implementations must make `put`, `delete` and `transact` atomic and durable when they
/// return `Ok`, and must apply compare-and-swap checks inside the same atomic step.
#[async_trait::async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    /// Read one document.
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>>;

    /// Insert or replace a document; returns the new revision.
    async fn put(&self, scope: &Scope, collection: &str, key: &str, value: &str, expected: Option<u64>) -> Result<u64>;

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
    ) -> Result<Page>;

    /// Apply every op or none; returns the revision after each op (0 for deletes).
    async fn transact(&self, scope: &Scope, ops: &[WriteOp]) -> Result<Vec<u64>>;
}
