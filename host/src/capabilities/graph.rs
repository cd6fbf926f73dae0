//! `cortex:agent/graph`: relations between agents of the invocation's tenant.
//!
//! Both ends of a link must be agents deployed in the tenant; names are checked before
//! the store is touched; attributes must be JSON every reader accepts ([`super::json`])
//! within the value size limit. An edge counts in the tenant's stored bytes and against
//! its edge quota, both checked by the store in the link's own transaction (a refusal is
//! `too-large`). `neighbours` answers at most `limit` edges and at most the invocation's
//! page budget in bytes ([`HostState::page_budget`]; the first edge always). Traversal is
//! breadth first, bounded by depth (at most [`MAX_DEPTH`]) and by a result limit.

use std::collections::{BTreeSet, VecDeque};

use super::bindings::cortex::agent::graph::{self as wit, Host};
use super::fault::UNAVAILABLE;
use super::{DocumentsCtx, Fault, HostState, Interface};
use crate::names::AgentName;
use crate::registry::scoped;
use crate::store::{Direction, RecordKind, StoreError};

/// Deepest traversal.
pub const MAX_DEPTH: u32 = 8;

/// How a graph call fails: a `graph.error`, or a trap.
pub type GraphFault = Fault<wit::Error>;

impl From<wit::Error> for GraphFault {
    fn from(e: wit::Error) -> Self {
        Fault::Refused(e)
    }
}

/// What the guest sees of a store failure: a spent quota is `too-large`, a transient
/// failure `unavailable`; a store broken for good traps the invocation and is logged.
impl From<StoreError> for GraphFault {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QuotaExceeded(m) => Fault::Refused(wit::Error::TooLarge(m)),
            e if e.is_transient() => {
                tracing::warn!(error = %e, "transient graph store failure");
                Fault::Refused(wit::Error::Unavailable(UNAVAILABLE.into()))
            }
            e => {
                tracing::error!(error = %e, "graph store failure");
                Fault::Trap(wasmtime::Error::new(e))
            }
        }
    }
}

type WitResult<T> = Result<T, GraphFault>;

fn direction(d: wit::Direction) -> Direction {
    match d {
        wit::Direction::Outgoing => Direction::Outgoing,
        wit::Direction::Incoming => Direction::Incoming,
        wit::Direction::Both => Direction::Both,
    }
}

/// `name` as an end of a link: an agent name (`invalid-argument` if it is not).
fn agent(name: &str) -> Result<AgentName, wit::Error> {
    AgentName::parse(name).map_err(|e| wit::Error::InvalidArgument(e.to_string()))
}

/// A relation kind: `[a-z0-9_-]{1,63}` (so that it cannot reach outside its key space).
fn check_kind(kind: &str) -> Result<(), wit::Error> {
    let ok = !kind.is_empty()
        && kind.len() <= 63
        && kind.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
    if ok { Ok(()) } else { Err(wit::Error::InvalidArgument(format!("kind {kind:?} must match [a-z0-9_-]{{1,63}}"))) }
}

/// An agent of the invocation's tenant must exist. The invoking agent itself always does,
/// even during the `init` of its first deploy (before its record is written), so an agent
/// can link itself to others from `init`.
async fn known_agent(cx: DocumentsCtx<'_>, name: &AgentName) -> Result<(), GraphFault> {
    if **name == *cx.scope.agent {
        return Ok(());
    }
    match cx.store.record_get(RecordKind::Agent, &scoped(&cx.scope.tenant, name)).await? {
        Some(_) => Ok(()),
        None => Err(wit::Error::UnknownAgent(format!("no agent {name:?} in this tenant")).into()),
    }
}

impl Host for HostState {
    fn convert_error(&mut self, err: GraphFault) -> wasmtime::Result<wit::Error> {
        err.into_wit()
    }

    async fn link(&mut self, from: String, to: String, kind: String, attributes: String) -> WitResult<()> {
        self.calls.charge(Interface::Graph)?;
        let span = crate::telemetry::otel::host_call("graph", "link");
        traced(span, async move {
            check_kind(&kind)?;
            let (from, to) = (agent(&from)?, agent(&to)?);
            let max = self.keys.max_value_bytes;
            if attributes.len() > max {
                return Err(
                    wit::Error::TooLarge(format!("attributes are {} bytes, over {max}", attributes.len())).into()
                );
            }
            super::json::check(&attributes).map_err(|e| wit::Error::InvalidArgument(format!("attributes: {e}")))?;
            known_agent(self.documents(), &from).await?;
            known_agent(self.documents(), &to).await?;
            let cx = self.documents();
            Ok(cx.store.link_within(&cx.scope.tenant, &from, &to, &kind, &attributes, cx.quota).await?)
        })
        .await
    }

    async fn unlink(&mut self, from: String, to: String, kind: String) -> WitResult<bool> {
        self.calls.charge(Interface::Graph)?;
        let span = crate::telemetry::otel::host_call("graph", "unlink");
        traced(span, async move {
            let (from, to) = (agent(&from)?, agent(&to)?);
            check_kind(&kind)?;
            let cx = self.documents();
            Ok(cx.store.unlink(&cx.scope.tenant, &from, &to, &kind).await?)
        })
        .await
    }

    async fn neighbours(
        &mut self,
        agent: String,
        kind: Option<String>,
        dir: wit::Direction,
        limit: u32,
    ) -> WitResult<Vec<wit::Edge>> {
        self.calls.charge(Interface::Graph)?;
        let span = crate::telemetry::otel::host_call("graph", "neighbours");
        traced(span, async move {
            let agent = self::agent(&agent)?;
            if let Some(k) = &kind {
                check_kind(k)?;
            }
            let budget = self.page_budget();
            let cx = self.documents();
            let limit = limit.min(cx.limits.max_list) as usize;
            let edges = cx
                .store
                .neighbours_bounded(&cx.scope.tenant, &agent, kind.as_deref(), direction(dir), limit, budget)
                .await?;
            Ok(edges
                .into_iter()
                .map(|e| wit::Edge { from: e.from, to: e.to, kind: e.kind, attributes: e.attrs })
                .collect())
        })
        .await
    }

    async fn traverse(
        &mut self,
        start: String,
        kind: Option<String>,
        dir: wit::Direction,
        max_depth: u32,
        limit: u32,
    ) -> WitResult<Vec<String>> {
        self.calls.charge(Interface::Graph)?;
        let span = crate::telemetry::otel::host_call("graph", "traverse");
        traced(span, async move {
            agent(&start)?;
            if let Some(k) = &kind {
                check_kind(k)?;
            }
            let limit = limit.min(self.keys.max_list) as usize;
            let depth = max_depth.min(MAX_DEPTH);
            let mut seen = BTreeSet::from([start.clone()]);
            let mut found = Vec::new();
            let mut queue = VecDeque::from([(start, 0u32)]);
            while let Some((agent, d)) = queue.pop_front() {
                if d >= depth || found.len() >= limit {
                    continue;
                }
                // Each hop is a store read: it counts against the host-call budget.
                self.calls.charge(Interface::Graph)?;
                let budget = self.page_budget();
                let cx = self.documents();
                let edges = cx
                    .store
                    .neighbours_bounded(&cx.scope.tenant, &agent, kind.as_deref(), direction(dir), limit, budget)
                    .await?;
                for e in edges {
                    let next = if e.from == agent { e.to } else { e.from };
                    if found.len() < limit && seen.insert(next.clone()) {
                        found.push(next.clone());
                        queue.push_back((next, d + 1));
                    }
                }
            }
            Ok(found)
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
        GraphFault::from(e).into_wit().ok()
    }

    #[test]
    fn store_errors_map_to_the_same_wit_errors_as_before() {
        assert!(
            matches!(wit_of(StoreError::QuotaExceeded("full".into())), Some(wit::Error::TooLarge(m)) if m == "full")
        );
        assert!(matches!(
            wit_of(StoreError::Backend { message: "down".into(), transient: true, source: None }),
            Some(wit::Error::Unavailable(m)) if m == UNAVAILABLE
        ));
        // A store broken for good, and a conflict (the graph has no revisions), trap.
        assert!(wit_of(StoreError::Backend { message: "down".into(), transient: false, source: None }).is_none());
        assert!(wit_of(StoreError::Corrupted("bad".into())).is_none());
        assert!(wit_of(StoreError::Conflict { current: 1 }).is_none());
    }
}
