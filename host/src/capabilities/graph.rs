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
use super::{DocumentsCtx, HostState, Interface};
use crate::registry::scoped;
use crate::store::{self, Direction, RecordKind, StoreError};

/// Deepest traversal.
pub const MAX_DEPTH: u32 = 8;

type WitResult<T> = wasmtime::Result<Result<T, wit::Error>>;

fn direction(d: wit::Direction) -> Direction {
    match d {
        wit::Direction::Outgoing => Direction::Outgoing,
        wit::Direction::Incoming => Direction::Incoming,
        wit::Direction::Both => Direction::Both,
    }
}

fn check_name(what: &str, name: &str) -> Result<(), wit::Error> {
    if super::is_name(name) {
        Ok(())
    } else {
        Err(wit::Error::InvalidArgument(format!("{what} {name:?} must match [a-z0-9_-]{{1,63}}")))
    }
}

/// An agent of the invocation's tenant must exist. The invoking agent itself always does,
/// even during the `init` of its first deploy (before its record is written), so an agent
/// can link itself to others from `init`.
async fn known_agent(cx: DocumentsCtx<'_>, name: &str) -> Result<Result<(), wit::Error>, StoreError> {
    if let Err(e) = check_name("agent", name) {
        return Ok(Err(e));
    }
    if name == &*cx.scope.agent {
        return Ok(Ok(()));
    }
    match cx.store.record_get(RecordKind::Agent, &scoped(&cx.scope.tenant, name)).await? {
        Some(_) => Ok(Ok(())),
        None => Ok(Err(wit::Error::UnknownAgent(format!("no agent {name:?} in this tenant")))),
    }
}

impl HostState {
    fn graph_answer<T>(&self, r: store::Result<T>) -> WitResult<T> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(StoreError::QuotaExceeded(m)) => Ok(Err(wit::Error::TooLarge(m))),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "transient graph store failure");
                Ok(Err(wit::Error::Unavailable("storage is temporarily unavailable; retry later".into())))
            }
            Err(e) => {
                tracing::error!(error = %e, "graph store failure");
                Err(wasmtime::Error::new(e))
            }
        }
    }
}

macro_rules! check {
    ($self:ident, $e:expr) => {
        match $e {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => return $self.graph_answer(Err(e)),
        }
    };
}

impl Host for HostState {
    async fn link(&mut self, from: String, to: String, kind: String, attributes: String) -> WitResult<()> {
        self.calls.charge(Interface::Graph)?;
        if let Err(e) = check_name("kind", &kind) {
            return Ok(Err(e));
        }
        let max = self.keys.max_value_bytes;
        if attributes.len() > max {
            return Ok(Err(wit::Error::TooLarge(format!("attributes are {} bytes, over {max}", attributes.len()))));
        }
        if let Err(e) = super::json::check(&attributes) {
            return Ok(Err(wit::Error::InvalidArgument(format!("attributes: {e}"))));
        }
        check!(self, known_agent(self.documents(), &from).await);
        check!(self, known_agent(self.documents(), &to).await);
        let cx = self.documents();
        let r = cx.store.link_within(&cx.scope.tenant, &from, &to, &kind, &attributes, cx.quota).await;
        self.graph_answer(r)
    }

    async fn unlink(&mut self, from: String, to: String, kind: String) -> WitResult<bool> {
        self.calls.charge(Interface::Graph)?;
        for (what, n) in [("agent", &from), ("agent", &to), ("kind", &kind)] {
            if let Err(e) = check_name(what, n) {
                return Ok(Err(e));
            }
        }
        let cx = self.documents();
        let r = cx.store.unlink(&cx.scope.tenant, &from, &to, &kind).await;
        self.graph_answer(r)
    }

    async fn neighbours(
        &mut self,
        agent: String,
        kind: Option<String>,
        dir: wit::Direction,
        limit: u32,
    ) -> WitResult<Vec<wit::Edge>> {
        self.calls.charge(Interface::Graph)?;
        if let Err(e) =
            check_name("agent", &agent).and_then(|()| kind.as_deref().map_or(Ok(()), |k| check_name("kind", k)))
        {
            return Ok(Err(e));
        }
        let budget = self.page_budget();
        let cx = self.documents();
        let limit = limit.min(cx.limits.max_list) as usize;
        let r =
            cx.store.neighbours_bounded(&cx.scope.tenant, &agent, kind.as_deref(), direction(dir), limit, budget).await;
        self.graph_answer(r.map(|edges| {
            edges.into_iter().map(|e| wit::Edge { from: e.from, to: e.to, kind: e.kind, attributes: e.attrs }).collect()
        }))
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
        if let Err(e) =
            check_name("agent", &start).and_then(|()| kind.as_deref().map_or(Ok(()), |k| check_name("kind", k)))
        {
            return Ok(Err(e));
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
            let hop =
                cx.store.neighbours_bounded(&cx.scope.tenant, &agent, kind.as_deref(), direction(dir), limit, budget);
            let edges = match hop.await {
                Ok(e) => e,
                Err(e) => return self.graph_answer(Err(e)),
            };
            for e in edges {
                let next = if e.from == agent { e.to } else { e.from };
                if found.len() < limit && seen.insert(next.clone()) {
                    found.push(next.clone());
                    queue.push_back((next, d + 1));
                }
            }
        }
        Ok(Ok(found))
    }
}
