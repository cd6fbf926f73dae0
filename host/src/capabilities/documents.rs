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
use super::fault::UNAVAILABLE;
use super::{Fault, HostState, Interface};
use crate::store::{self, KeyLimits, Quota, Scope, Store, StoreError, WriteOp};

/// How a documents call fails: a `documents.error`, or a trap.
pub type DocumentsFault = Fault<wit::Error>;

impl From<wit::Error> for DocumentsFault {
    fn from(e: wit::Error) -> Self {
        Fault::Refused(e)
    }
}

impl From<store::keys::NameError> for DocumentsFault {
    fn from(e: store::keys::NameError) -> Self {
        Fault::Refused(name_error(e))
    }
}

/// What the guest sees of a store failure: a conflict, a spent quota or a transient failure
/// is its `error`; a store broken for good traps the invocation (the guest cannot fix it)
/// and is logged for the operator.
impl From<StoreError> for DocumentsFault {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { current } => Fault::Refused(wit::Error::Conflict(current)),
            StoreError::QuotaExceeded(m) => Fault::Refused(wit::Error::QuotaExceeded(m)),
            e if e.is_transient() => {
                tracing::warn!(error = %e, "transient store failure");
                Fault::Refused(wit::Error::Unavailable(UNAVAILABLE.into()))
            }
            e => {
                tracing::error!(error = %e, "store failure");
                Fault::Trap(wasmtime::Error::new(e))
            }
        }
    }
}

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
        let eighth = usize::try_from(self.memory_bytes / 8).unwrap_or(usize::MAX);
        self.keys.max_page_bytes.min(eighth).max(1)
    }
}

type WitResult<T> = Result<T, DocumentsFault>;

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
}

fn to_wit(d: store::Document) -> wit::Document {
    wit::Document { key: d.key, value: d.value, revision: d.revision }
}

impl Host for HostState {
    fn convert_error(&mut self, err: DocumentsFault) -> wasmtime::Result<wit::Error> {
        err.into_wit()
    }

    async fn get(&mut self, collection: String, key: String) -> WitResult<Option<wit::Document>> {
        self.calls.charge(Interface::Documents)?;
        let span = crate::telemetry::otel::host_call("documents", "get");
        traced(span, async move {
            let cx = self.documents();
            cx.check_name(&collection, &key)?;
            Ok(cx.store.get(cx.scope, &collection, &key).await?.map(to_wit))
        })
        .await
    }

    async fn put(&mut self, collection: String, key: String, value: String, expected: Option<u64>) -> WitResult<u64> {
        self.calls.charge(Interface::Documents)?;
        let span = crate::telemetry::otel::host_call("documents", "put");
        traced(span, async move {
            let cx = self.documents();
            cx.check_name(&collection, &key)?;
            cx.check_value(&value)?;
            Ok(cx.store.put_within(cx.scope, &collection, &key, &value, expected, cx.quota).await?)
        })
        .await
    }

    async fn delete(&mut self, collection: String, key: String, expected: Option<u64>) -> WitResult<bool> {
        self.calls.charge(Interface::Documents)?;
        let span = crate::telemetry::otel::host_call("documents", "delete");
        traced(span, async move {
            let cx = self.documents();
            cx.check_name(&collection, &key)?;
            Ok(cx.store.delete(cx.scope, &collection, &key, expected).await?)
        })
        .await
    }

    async fn list(
        &mut self,
        collection: String,
        prefix: String,
        limit: u32,
        cursor: Option<String>,
    ) -> WitResult<wit::Page> {
        self.calls.charge(Interface::Documents)?;
        let span = crate::telemetry::otel::host_call("documents", "list");
        traced(span, async move {
            let budget = self.page_budget();
            let cx = self.documents();
            store::check_collection(&collection, cx.limits)?;
            store::keys::check_prefix(&prefix, cx.limits)?;
            if let Some(c) = &cursor {
                store::check_key(c, cx.limits)?;
            }
            let limit = limit.min(cx.limits.max_list);
            let p = cx.store.list_bounded(cx.scope, &collection, &prefix, limit, cursor.as_deref(), budget).await?;
            Ok(wit::Page { documents: p.documents.into_iter().map(to_wit).collect(), next: p.next })
        })
        .await
    }

    async fn transact(&mut self, ops: Vec<wit::Op>) -> WitResult<Vec<u64>> {
        self.calls.charge(Interface::Documents)?;
        let span = crate::telemetry::otel::host_call("documents", "transact");
        traced(span, async move {
            let cx = self.documents();
            if ops.len() > cx.limits.max_transact_ops {
                return Err(wit::Error::TooLarge(format!(
                    "{} ops in one transaction, over the limit of {}",
                    ops.len(),
                    cx.limits.max_transact_ops
                ))
                .into());
            }
            let checked = ops.iter().map(|op| cx.check_op(op)).collect::<Result<Vec<_>, _>>()?;
            Ok(cx.store.transact_within(cx.scope, &checked, cx.quota).await?)
        })
        .await
    }
}

/// `f` within `span` (a host call's), typed so that `?` in it converts to the WIT result.
fn traced<T, F: Future<Output = WitResult<T>>>(span: tracing::Span, f: F) -> tracing::instrument::Instrumented<F> {
    tracing::Instrument::instrument(f, span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit_of(e: StoreError) -> Option<wit::Error> {
        DocumentsFault::from(e).into_wit().ok()
    }

    #[test]
    fn store_errors_map_to_the_same_wit_errors_as_before() {
        assert!(matches!(wit_of(StoreError::Conflict { current: 7 }), Some(wit::Error::Conflict(7))));
        assert!(matches!(
            wit_of(StoreError::QuotaExceeded("full".into())),
            Some(wit::Error::QuotaExceeded(m)) if m == "full"
        ));
        assert!(matches!(
            wit_of(StoreError::Backend { message: "down".into(), transient: true, source: None }),
            Some(wit::Error::Unavailable(m)) if m == UNAVAILABLE
        ));
        // A store broken for good traps the invocation.
        assert!(wit_of(StoreError::Backend { message: "down".into(), transient: false, source: None }).is_none());
        assert!(wit_of(StoreError::Corrupted("bad".into())).is_none());
    }
}
