//! Host imports: the per-invocation host state, and one module per WIT interface.
//!
//! The state holds the tenant and agent identity of the invocation. Capabilities read it
//! from here and pass it to the store themselves: the guest never names its tenant, so
//! isolation holds by construction. Every Cortex import is counted against the
//! invocation's host-call budget; a spent budget is a trap ([`HostCallLimit`]), while a
//! refused request (bad key, conflict, too large) is a typed WIT error the guest handles.

mod context;
pub mod documents;
mod fault;
pub mod graph;
pub mod json;
pub mod logbuf;
pub mod messaging;
pub mod runtime;

use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::logbuf::LogSink;
use crate::ids::InvocationId;
use crate::store::KeyLimits;

pub use self::context::{AgentBase, AgentContext};
pub use self::documents::{DocumentsCtx, DocumentsFault};
pub use self::fault::Fault;
pub use self::graph::GraphFault;
pub use self::messaging::MessagingFault;
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
        trappable_error_type: {
            "cortex:agent/documents.error" => crate::capabilities::DocumentsFault,
            "cortex:agent/graph.error" => crate::capabilities::GraphFault,
            "cortex:agent/messaging.error" => crate::capabilities::MessagingFault,
        },
    });
}

pub use bindings::cortex::agent::types::{AgentError, ChangeEvent, ChangeOp};

/// The WIT edge of change events: the host's one type ([`crate::store::ChangeEvent`]) as a
/// guest's `on-change` takes it (the runtime converts where it calls the guest).
impl From<&crate::store::ChangeEvent> for ChangeEvent {
    fn from(e: &crate::store::ChangeEvent) -> Self {
        Self {
            seq: e.seq,
            collection: e.collection.clone(),
            key: e.key.clone(),
            op: match e.op {
                crate::store::ChangeOp::Put => ChangeOp::Put,
                crate::store::ChangeOp::Delete => ChangeOp::Delete,
            },
            revision: e.revision,
        }
    }
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
    /// `wasi:http/outgoing-handler`: outbound requests.
    Http = 4,
}

impl Interface {
    /// Every counted interface, in index order.
    pub const ALL: [Interface; 5] =
        [Interface::Documents, Interface::Runtime, Interface::Graph, Interface::Messaging, Interface::Http];

    /// The interface's name (a metric label).
    pub fn name(self) -> &'static str {
        match self {
            Interface::Documents => "documents",
            Interface::Runtime => "runtime",
            Interface::Graph => "graph",
            Interface::Messaging => "messaging",
            Interface::Http => "http",
        }
    }
}

/// Counts Cortex imports against a budget.
#[derive(Debug, Clone, Copy)]
pub struct HostCalls {
    /// Calls made so far.
    pub count: u64,
    /// Calls per interface, indexed by [`Interface`].
    pub by_interface: [u64; 5],
    limit: u64,
}

impl HostCalls {
    /// A budget of `limit` calls.
    pub fn new(limit: u64) -> Self {
        Self { count: 0, by_interface: [0; 5], limit }
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

    /// Calls the budget has left.
    pub fn left(&self) -> u64 {
        self.limit.saturating_sub(self.count)
    }
}

/// Everything one invocation's imports can reach. The runtime keeps it beside its own
/// limiter in the store's data and links the imports through a projection onto it
/// ([`add_to_linker`]).
pub struct HostState {
    /// Built on the first WASI call (see [`sandbox_wasi`]): many agents make none.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    /// Host calls made so far, against the budget.
    pub calls: HostCalls,
    /// Who runs, and what it reaches: its capabilities read it from here.
    agent: AgentContext,
    invocation: InvocationId,
    /// Where stdout, stderr and log records go.
    log: LogSink,
    keys: KeyLimits,
    /// When the invocation's time is up: the agents it calls end by then too.
    deadline: Instant,
    /// Largest message body the agent may send.
    max_message: usize,
    /// The invocation's memory limit, in bytes (what the host reads for the guest is
    /// bounded by it).
    memory_bytes: u64,
    /// `wasi:http`'s own state.
    http: wasmtime_wasi_http::WasiHttpCtx,
    /// Where outgoing requests go.
    egress: crate::egress::EgressHooks,
}

/// What the imports of one invocation are held to.
#[derive(Debug, Clone)]
pub struct HostLimits {
    /// Calls to Cortex imports.
    pub host_calls: u64,
    /// Key, value, list and page sizes.
    pub keys: KeyLimits,
    /// Largest message body the agent may send.
    pub max_message: usize,
    /// The invocation's memory limit, in bytes.
    pub memory_bytes: u64,
}

impl HostState {
    /// The state of invocation `invocation` of `agent`, writing its log to `log`, held to
    /// `limits` and ending at `deadline`.
    pub fn new(
        agent: AgentContext,
        invocation: InvocationId,
        log: LogSink,
        limits: HostLimits,
        deadline: Instant,
    ) -> Self {
        let egress = crate::egress::EgressHooks::new(
            agent.egress.clone(),
            agent.tenant().clone(),
            agent.agent().clone(),
            deadline,
        );
        let mut http = wasmtime_wasi_http::WasiHttpCtx::new();
        http.set_field_size_limit(32 << 10);
        Self {
            wasi: None,
            http,
            egress,
            table: ResourceTable::new(),
            calls: HostCalls::new(limits.host_calls),
            agent,
            invocation,
            log,
            keys: limits.keys,
            deadline,
            max_message: limits.max_message,
            memory_bytes: limits.memory_bytes,
        }
    }
}

impl HostState {
    /// Count the outbound requests sent since the last call as host calls.
    pub fn settle_http(&mut self) {
        let sent = std::mem::take(&mut self.egress.sent);
        self.calls.count += sent;
        self.calls.by_interface[Interface::Http as usize] += sent;
    }

    /// The `wasi:http` view of this invocation (its requests go through its egress hooks).
    pub fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        self.settle_http();
        self.egress.calls_left = self.calls.left();
        wasmtime_wasi_http::WasiHttpCtxView { hooks: &mut self.egress, table: &mut self.table, ctx: &mut self.http }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let log = &self.log;
        WasiCtxView { ctx: self.wasi.get_or_insert_with(|| sandbox_wasi(log)), table: &mut self.table }
    }
}

/// The WASI an agent sees: stdout and stderr into its log, no network, no files, no
/// environment, no arguments (the builder's defaults grant none of those).
fn sandbox_wasi(log: &LogSink) -> WasiCtx {
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

/// Link every served Cortex interface into `linker`, each reaching the host state through
/// `host` (a projection of the store's data, as in wasmtime's WASI crates).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    host: fn(&mut T) -> &mut HostState,
) -> wasmtime::Result<()> {
    bindings::cortex::agent::documents::add_to_linker::<_, HasSelf<HostState>>(linker, host)?;
    bindings::cortex::agent::runtime::add_to_linker::<_, HasSelf<HostState>>(linker, host)?;
    bindings::cortex::agent::graph::add_to_linker::<_, HasSelf<HostState>>(linker, host)?;
    bindings::cortex::agent::messaging::add_to_linker::<_, HasSelf<HostState>>(linker, host)?;
    Ok(())
}

// `types` has no functions, but bindgen still generates a host trait for it.
impl bindings::cortex::agent::types::Host for HostState {}
