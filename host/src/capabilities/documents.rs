//! `cortex:agent/documents`: JSON documents with revisions, scoped to the invocation's tenant.
//!
//! Names, sizes and JSON validity ([`super::json`]) are checked here, before the store is
//! touched; the storage quota is checked by the store inside the write's own transaction
//! (a usage it cannot read refuses the write). Store conflicts, quota refusals and
//! transient failures become WIT errors; a store that is broken for good traps the
//! invocation (the guest cannot fix it) and is logged for the operator.
//!
//! What the host reads for the guest is bounded in bytes as well as in count: a `list`
//! page ends early (with a cursor) before the document that would pass the invocation's
//! page budget ([`HostState::page_budget`]).

use std::sync::Arc;

use super::bindings::cortex::agent::documents::{self as wit, Host};
use super::{HostState, Interface};
use crate::store::{self, KeyLimits, Quota, Scope, Store, StoreError, WriteOp};

/// What the documents capability needs, borrowed from the invocation's state: the store,
/// the caller's scope and the size limits.
#[derive(Clone, Copy)]
pub struct DocumentsCtx<'a> {
    pub(crate) store: &'a Arc<dyn Store>,
    pub(crate) scope: &'a Scope,
    pub(crate) limits: &'a KeyLimits,
    pub(crate) quota: Quota,
}

impl std::fmt::Debug for DocumentsCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentsCtx").field("scope", self.scope).finish_non_exhaustive()
    }
}

impl HostState {
    /// The documents capability of this invocation.
    pub(crate) fn documents(&self) -> DocumentsCtx<'_> {
        let base = &*self.agent.base;
        DocumentsCtx {
            store: &base.store,
            scope: &base.scope,
            limits: &self.keys,
            quota: Quota { bytes: self.agent.stored_bytes_quota, edges: self.agent.edges_quota },
        }
    }

    /// Most bytes of keys and values the host reads for one `list` or `neighbours` call:
    /// the configured page cap, and at most an eighth of the guest's memory limit.
    pub(crate) fn page_budget(&self) -> usize {
        let eighth = usize::try_from(self.limiter.memory_limit() / 8).unwrap_or(usize::MAX);
        self.keys.max_page_bytes.min(eighth).max(1)
    }
}

type WitResult<T> = wasmtime::Result<Result<T, wit::Error>>;

fn name_error(e: store::keys::NameError) -> wit::Error {
    if e.is_size() { wit::Error::TooLarge(e.to_string()) } else { wit::Error::InvalidKey(e.to_string()) }
}

impl DocumentsCtx<'_> {
    fn check_name(&self, collection: &str, key: &str) -> Result<(), wit::Error> {
        store::check_collection(collection, self.limits).map_err(name_error)?;
        store::check_key(key, self.limits).map_err(name_error)
    }

    fn check_value(&self, value: &str) -> Result<(), wit::Error> {
        if value.len() > self.limits.max_value_bytes {
            return Err(wit::Error::TooLarge(format!(
                "value is {} bytes, over the limit of {}",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        super::json::check(value).map_err(|e| wit::Error::InvalidValue(e.to_string()))
    }

    fn check_op(&self, op: &wit::Op) -> Result<WriteOp, wit::Error> {
        Ok(match op {
            wit::Op::Put(p) => {
                self.check_name(&p.collection, &p.key)?;
                self.check_value(&p.value)?;
                WriteOp::Put {
                    collection: p.collection.clone(),
                    key: p.key.clone(),
                    value: p.value.clone(),
                    expected: p.expected,
                }
            }
            wit::Op::Delete(d) => {
                self.check_name(&d.collection, &d.key)?;
                WriteOp::Delete { collection: d.collection.clone(), key: d.key.clone(), expected: d.expected }
            }
        })
    }

    /// Map a store result to what the guest sees.
    fn answer<T>(&self, r: store::Result<T>) -> WitResult<T> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(StoreError::Conflict { current }) => Ok(Err(wit::Error::Conflict(current))),
            Err(StoreError::QuotaExceeded(m)) => Ok(Err(wit::Error::QuotaExceeded(m))),
            Err(e) if e.is_transient() => {
                tracing::warn!(tenant = %self.scope.tenant, error = %e, "transient store failure");
                Ok(Err(wit::Error::Unavailable("storage is temporarily unavailable; retry later".into())))
            }
            Err(e) => {
                tracing::error!(tenant = %self.scope.tenant, error = %e, "store failure");
                Err(wasmtime::Error::new(e))
            }
        }
    }
}

fn to_wit(d: store::Document) -> wit::Document {
    wit::Document { key: d.key, value: d.value, revision: d.revision }
}

macro_rules! check {
    ($e:expr) => {
        if let Err(e) = $e {
            return Ok(Err(e));
        }
    };
}

impl Host for HostState {
    async fn get(&mut self, collection: String, key: String) -> WitResult<Option<wit::Document>> {
        self.calls.charge(Interface::Documents)?;
        let cx = self.documents();
        check!(cx.check_name(&collection, &key));
        let r = cx.store.get(cx.scope, &collection, &key).await;
        cx.answer(r.map(|d| d.map(to_wit)))
    }

    async fn put(&mut self, collection: String, key: String, value: String, expected: Option<u64>) -> WitResult<u64> {
        self.calls.charge(Interface::Documents)?;
        let cx = self.documents();
        check!(cx.check_name(&collection, &key));
        check!(cx.check_value(&value));
        let r = cx.store.put_within(cx.scope, &collection, &key, &value, expected, cx.quota).await;
        cx.answer(r)
    }

    async fn delete(&mut self, collection: String, key: String, expected: Option<u64>) -> WitResult<bool> {
        self.calls.charge(Interface::Documents)?;
        let cx = self.documents();
        check!(cx.check_name(&collection, &key));
        let r = cx.store.delete(cx.scope, &collection, &key, expected).await;
        cx.answer(r)
    }

    async fn list(
        &mut self,
        collection: String,
        prefix: String,
        limit: u32,
        cursor: Option<String>,
    ) -> WitResult<wit::Page> {
        self.calls.charge(Interface::Documents)?;
        let budget = self.page_budget();
        let cx = self.documents();
        check!(store::check_collection(&collection, cx.limits).map_err(name_error));
        check!(store::keys::check_prefix(&prefix, cx.limits).map_err(name_error));
        if let Some(c) = &cursor {
            check!(store::check_key(c, cx.limits).map_err(name_error));
        }
        let limit = limit.min(cx.limits.max_list);
        let r = cx.store.list_bounded(cx.scope, &collection, &prefix, limit, cursor.as_deref(), budget).await;
        cx.answer(r.map(|p| wit::Page { documents: p.documents.into_iter().map(to_wit).collect(), next: p.next }))
    }

    async fn transact(&mut self, ops: Vec<wit::Op>) -> WitResult<Vec<u64>> {
        self.calls.charge(Interface::Documents)?;
        let cx = self.documents();
        if ops.len() > cx.limits.max_transact_ops {
            return Ok(Err(wit::Error::TooLarge(format!(
                "{} ops in one transaction, over the limit of {}",
                ops.len(),
                cx.limits.max_transact_ops
            ))));
        }
        let mut checked = Vec::with_capacity(ops.len());
        for op in &ops {
            match cx.check_op(op) {
                Ok(op) => checked.push(op),
                Err(e) => return Ok(Err(e)),
            }
        }
        let r = cx.store.transact_within(cx.scope, &checked, cx.quota).await;
        cx.answer(r)
    }
}
