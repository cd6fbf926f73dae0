//! Host imports: the per-invocation host state, and one module per WIT interface.
//!
//! The state holds the tenant and agent identity of the invocation. Capabilities read it
//! from here and pass it to the store themselves: the guest never names its tenant, so
//! isolation holds by construction. Every Cortex import is counted against the
//! invocation's host-call budget; a spent budget is a trap ([`HostCallLimit`]), while a
//! refused request (bad key, conflict, too large) is a typed WIT error the guest handles.

pub mod documents;
pub mod graph;
pub mod json;
pub mod messaging;
pub mod runtime;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::runtime::logbuf::LogSink;
use crate::runtime::{AgentContext, InvocationId, Limiter};
use crate::store::KeyLimits;

pub use self::documents::DocumentsCtx;
pub use self::messaging::{Caller, MessagingCtx, MessagingError, MessagingLink, Messenger};

/// Host bindings generated from `wit/`, in one place.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agent",
        imports: {
            "cortex:agent/documents": async | trappable,
            "cortex:agent/graph": async | trappable,
            "cortex:agent/messaging": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

pub use bindings::cortex::agent::types::{AgentError, ChangeEvent, ChangeOp};

/// Whether `name` is a name the imports accept for an agent or an edge kind:
/// `[a-z0-9_-]{1,63}` (so that it cannot reach outside its key space).
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// The trap raised when an invocation exceeds its host-call budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("host call limit of {0} reached")]
pub struct HostCallLimit(pub u64);

/// The served interfaces whose calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// `cortex:agent/documents`.
    Documents = 0,
    /// `cortex:agent/runtime`.
    Runtime = 1,
    /// `cortex:agent/graph`.
    Graph = 2,
    /// `cortex:agent/messaging`.
    Messaging = 3,
}

impl Interface {
    /// Every counted interface, in index order.
    pub const ALL: [Interface; 4] = [Interface::Documents, Interface::Runtime, Interface::Graph, Interface::Messaging];

    /// The interface's name (a metric label).
    pub fn name(self) -> &'static str {
        match self {
            Interface::Documents => "documents",
            Interface::Runtime => "runtime",
            Interface::Graph => "graph",
            Interface::Messaging => "messaging",
        }
    }
}

/// Counts Cortex imports against a budget.
#[derive(Debug, Clone, Copy)]
pub struct HostCalls {
    /// Calls made so far.
    pub count: u64,
    /// Calls per interface, indexed by [`Interface`].
    pub by_interface: [u64; 4],
    limit: u64,
}

impl HostCalls {
    /// A budget of `limit` calls.
    pub fn new(limit: u64) -> Self {
        Self { count: 0, by_interface: [0; 4], limit }
    }

    /// Count one call to `iface`; a trap once the budget is spent.
    pub fn charge(&mut self, iface: Interface) -> wasmtime::Result<()> {
        if self.count >= self.limit {
            return Err(wasmtime::Error::new(HostCallLimit(self.limit)));
        }
        self.count += 1;
        self.by_interface[iface as usize] += 1;
        Ok(())
    }
}

/// Everything one invocation's imports can reach.
pub struct HostState {
    /// Built on the first WASI call (see [`sandbox_wasi`]): many agents make none.
    pub(crate) wasi: Option<WasiCtx>,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) calls: HostCalls,
    /// Who runs, and what it reaches: its capabilities read it from here.
    pub(crate) agent: AgentContext,
    pub(crate) invocation: InvocationId,
    /// Where stdout, stderr and log records go.
    pub(crate) log: LogSink,
    pub(crate) keys: KeyLimits,
    /// When the invocation's time is up: the agents it calls end by then too.
    pub(crate) deadline: Instant,
    /// Largest message body the agent may send.
    pub(crate) max_message: usize,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let log = &self.log;
        WasiCtxView { ctx: self.wasi.get_or_insert_with(|| sandbox_wasi(log)), table: &mut self.table }
    }
}

/// The WASI an agent sees: stdout and stderr into its log, no network, no files, no
/// environment, no arguments (the builder's defaults grant none of those).
fn sandbox_wasi(log: &crate::runtime::logbuf::LogSink) -> WasiCtx {
    wasmtime_wasi::WasiCtxBuilder::new()
        .stdout(log.stdout())
        .stderr(log.stderr())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Interfaces of the `cortex:agent` package the host serves today.
pub const SERVED_INTERFACES: &[&str] = &["types", "runtime", "documents", "graph", "messaging"];

/// Interfaces defined by the WIT package but not served yet.
pub const UNSERVED_INTERFACES: &[&str] = &[];

/// A linker with WASI preview 2 and every served Cortex interface.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Arc<Linker<HostState>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::cortex::agent::documents::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    bindings::cortex::agent::runtime::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    bindings::cortex::agent::graph::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    bindings::cortex::agent::messaging::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(Arc::new(linker))
}

// `types` has no functions, but bindgen still generates a host trait for it.
impl bindings::cortex::agent::types::Host for HostState {}
