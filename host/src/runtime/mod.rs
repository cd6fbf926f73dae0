//! The sandbox: one engine per node, one store per invocation, hard limits on each.
//!
//! [`Runtime::load`] admits a component (header, static code bounds, compile in a bounded
//! child process or from the cache, imports, exports) and prepares an `InstancePre`. [`Runtime::invoke`] runs one export in
//! a fresh store with fuel, an epoch deadline, memory/table/instance limits, a host-call
//! budget and a bounded log, and always returns a typed [`Outcome`] with [`Stats`].

mod cache;
pub mod compiler;
mod config;
pub mod deadline;
mod engine;
pub mod host_slice;
mod limiter;
pub mod logring;
pub mod module_cache;
mod outcome;
pub mod validate;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;
use wasmtime::component::{ComponentExportIndex, InstancePre, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

pub use self::cache::{ArtifactCache, engine_fingerprint};
pub use self::compiler::{CompileConfig, child_main};
pub use self::config::{EngineConfig, Limits};
pub use self::engine::{Ticker, build_engine, wasmtime_config};
pub use self::limiter::{LimitExceeded, Limiter};
pub use self::logring::{Fields, LogLine, LogRing, LogStream};
pub use self::module_cache::ModuleCache;
pub use self::outcome::{Outcome, Stats};
pub use self::validate::{CodeBound, Shape, World};

use self::outcome::FailureContext;
use crate::capabilities::logbuf::LogSink;
pub use crate::capabilities::logbuf::{self, LogRecord, Logs};
use crate::capabilities::{self, AgentError, ChangeEvent, HostState};
pub use crate::capabilities::{AgentBase, AgentContext};
pub use crate::ids::InvocationId;

/// Why a component was refused at load. Each variant has a stable [`code`](LoadError::code).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component at all (empty, garbage, core module).
    #[error("not a component: {0}")]
    NotAComponent(String),
    /// A component that does not parse, validate or compile (truncated, malformed).
    #[error("invalid component: {0}")]
    Invalid(String),
    /// An import outside WASI preview 2 and the `cortex:agent` package.
    #[error("unknown import `{name}`: the host provides WASI 0.2 and cortex:agent@0.1 only")]
    UnknownImport {
        /// The import's name.
        name: String,
    },
    /// An import the host knows and refuses on purpose.
    #[error("import `{name}` is not allowed: {reason}")]
    DeniedImport {
        /// The import's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An interface of our package that is defined but not served yet.
    #[error("import `{name}` is not served by this host yet")]
    UnservedImport {
        /// The import's name.
        name: String,
    },
    /// An import whose name is served but whose types do not match the host's.
    #[error("imports do not match the host: {0}")]
    ImportMismatch(String),
    /// A required export is absent.
    #[error(
        "missing export `{name}` (the component exports: {found}); build against world cortex:agent/agent or /tool"
    )]
    MissingExport {
        /// The export's name.
        name: String,
        /// What the component exports instead.
        found: String,
    },
    /// An export with the wrong type.
    #[error("export `{name}` has type {found}, expected {expected}")]
    WrongExportType {
        /// The export's name.
        name: String,
        /// The expected signature.
        expected: String,
        /// The signature found.
        found: String,
    },
    /// Compilation took longer than the configured bound.
    #[error("compilation took longer than {0:?}")]
    CompileTimeout(std::time::Duration),
    /// Compilation needed more memory than the configured bound.
    #[error("compilation needs more than {0} bytes of memory")]
    CompileMemory(u64),
    /// The code exceeds a static bound; nothing was compiled.
    #[error(transparent)]
    CodeBound(#[from] CodeBound),
    /// The host failed (not the component's fault).
    #[error("internal error while loading: {0}")]
    Internal(String),
}

impl LoadError {
    /// The stable code of this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::NotAComponent(_) => "not_a_component",
            LoadError::Invalid(_) => "invalid_component",
            LoadError::UnknownImport { .. } => "unknown_import",
            LoadError::DeniedImport { .. } => "denied_import",
            LoadError::UnservedImport { .. } => "unserved_import",
            LoadError::ImportMismatch(_) => "import_mismatch",
            LoadError::MissingExport { .. } => "missing_export",
            LoadError::WrongExportType { .. } => "wrong_export_type",
            LoadError::CompileTimeout(_) => "compile_timeout",
            LoadError::CompileMemory(_) => "compile_memory",
            LoadError::CodeBound(b) => b.code(),
            LoadError::Internal(_) => "internal",
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the configuration.
    #[error("cannot build the wasmtime engine: {0}")]
    Engine(String),
    /// The artifact cache folder is unusable.
    #[error("cannot open the artifact cache: {0}")]
    Cache(#[source] std::io::Error),
    /// The epoch ticker thread could not start.
    #[error("cannot start the epoch ticker: {0}")]
    Ticker(#[source] std::io::Error),
}

/// An admitted component, ready to instantiate.
pub struct Module {
    /// Hex SHA-256 of the component's bytes.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// World, imports and exports.
    pub shape: Shape,
    /// Whether the compiled code came from the artifact cache.
    pub from_cache: bool,
    /// Size of its compiled artifact (about what its code takes in memory).
    pub compiled_size: usize,
    pre: InstancePre<Sandbox>,
    handle: ComponentExportIndex,
    init: Option<ComponentExportIndex>,
    on_change: Option<ComponentExportIndex>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("digest", &self.digest).field("shape", &self.shape).finish_non_exhaustive()
    }
}

/// Which export to call.
#[derive(Debug, Clone, Copy)]
pub enum Export<'a> {
    /// `handle(input)`.
    Handle(&'a [u8]),
    /// `init(config)`; a no-op success when the component does not export it.
    Init(&'a [(String, String)]),
    /// `on-change(events)`; a no-op success when the component does not export it.
    OnChange(&'a [crate::store::ChangeEvent]),
}

impl Export<'_> {
    /// The export's WIT name: `handle`, `init` or `on-change`.
    pub fn name(&self) -> &'static str {
        match self {
            Export::Handle(_) => "handle",
            Export::Init(_) => "init",
            Export::OnChange(_) => "on-change",
        }
    }
}

/// The result of one invocation.
#[derive(Debug, Clone)]
pub struct Report {
    /// The invocation's id.
    pub id: InvocationId,
    /// How it ended.
    pub outcome: Outcome,
    /// What it consumed.
    pub stats: Stats,
    /// What it wrote to stdout, stderr and its log.
    pub logs: Logs,
}

/// The data of one invocation's wasmtime store: the runtime's resource limiter and the
/// host state its imports read. Each interface is linked through a projection onto
/// `host`, as wasmtime's own WASI crates do.
pub struct Sandbox {
    /// Memory, table and instance limits.
    pub limiter: Limiter,
    /// What the imports reach.
    pub host: HostState,
    /// The guest's host calls, in slices that each end with a yield.
    slices: host_slice::HostCallSlices,
}

impl wasmtime_wasi_http::WasiHttpView for Sandbox {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        self.host.http()
    }
}

impl wasmtime_wasi::WasiView for Sandbox {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiView::ctx(&mut self.host)
    }
}

/// A linker with WASI preview 2 and every served Cortex interface.
pub fn linker(engine: &Engine) -> wasmtime::Result<Arc<Linker<Sandbox>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // Outbound HTTP: linked for every agent; an agent without a grant gets
    // `HTTP-request-denied` for every request (see `crate::egress`).
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    capabilities::add_to_linker(&mut linker, |s: &mut Sandbox| &mut s.host)?;
    Ok(Arc::new(linker))
}

/// The sandbox of one node.
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<Sandbox>>,
    compiler: compiler::Compiler,
    config: EngineConfig,
    _ticker: Ticker,
    /// Told of every component compiled or taken from the artifact cache (see
    /// [`Runtime::observe_loads`]).
    on_load: std::sync::OnceLock<LoadObserver>,
}

/// Called with whether a component came from the artifact cache, and the time spent
/// compiling it (or loading it from the cache).
pub type LoadObserver = Box<dyn Fn(bool, std::time::Duration) + Send + Sync>;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("compiler", &self.compiler)
            .finish_non_exhaustive()
    }
}

/// Fuel handed to guest code at a time. wasmtime keeps a function's running fuel count in a
/// register and writes it back to the store only at calls, returns and when a slice runs
/// out, so a trap or a deadline loses what was burnt since the last write: with slices the
/// fuel reported for any outcome is short by less than one slice (about a millisecond of
/// guest work), where a loop without calls used to report none of its work. Each slice ends
/// with a yield to the executor, like an epoch tick.
pub const FUEL_SLICE: u64 = 1_000_000;

impl Limits {
    /// What the imports of one invocation are held to.
    fn host_limits(&self) -> capabilities::HostLimits {
        capabilities::HostLimits {
            host_calls: self.host_calls,
            keys: self.keys.clone(),
            max_message: usize::try_from(self.message_bytes).unwrap_or(usize::MAX),
            memory_bytes: self.memory_bytes,
        }
    }
}

/// Hex SHA-256 of `bytes`: a module's address.
pub fn digest(bytes: &[u8]) -> String {
    crate::secrets::sha256_hex(bytes)
}

type HandleResult = Result<Option<Vec<u8>>, AgentError>;

impl Runtime {
    /// Start a runtime. With `cache_dir`, compiled components are cached there.
    pub fn new(config: EngineConfig, cache_dir: Option<&Path>) -> Result<Self, RuntimeError> {
        let engine = build_engine(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker = linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let cache = cache_dir.map(|d| ArtifactCache::open(d, &engine)).transpose().map_err(RuntimeError::Cache)?;
        let compiler = compiler::Compiler::new(engine.clone(), config.clone(), cache);
        let ticker = Ticker::start(engine.clone(), config.epoch_tick).map_err(RuntimeError::Ticker)?;
        Ok(Self { engine, linker, compiler, config, _ticker: ticker, on_load: std::sync::OnceLock::new() })
    }

    /// Tell `observe` of every component compiled or taken from the artifact cache from now
    /// on (the metrics; set once, later calls are ignored).
    pub fn observe_loads(&self, observe: LoadObserver) {
        let _ = self.on_load.set(observe);
    }

    /// The node's engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Remove the cached artifact of `digest` (its module was deleted).
    pub fn forget_artifact(&self, digest: &str) {
        self.compiler.forget(digest);
    }

    /// Admit a component: refuse anything that is not an agent this host can serve.
    pub async fn load(&self, bytes: &[u8]) -> Result<Arc<Module>, LoadError> {
        validate::check_header(bytes)?;
        let digest = digest(bytes);
        let started = std::time::Instant::now();
        let mut compiled = self.compiler.compile(&digest, bytes).await?;
        let (component, from_cache, compiled_size) = (&compiled.component, compiled.from_cache, compiled.artifact_len);
        if let Some(observe) = self.on_load.get() {
            observe(from_cache, started.elapsed());
        }
        let shape = validate::check_component(&self.engine, component)?;
        let pre = self.linker.instantiate_pre(component).map_err(|e| LoadError::ImportMismatch(format!("{e:#}")))?;
        let index = |name: &str| component.get_export_index(None, name);
        let handle = index("handle")
            .ok_or_else(|| LoadError::MissingExport { name: "handle".into(), found: shape.exports.join(", ") })?;
        let init = if shape.has_init { index("init") } else { None };
        let on_change = if shape.has_on_change { index("on-change") } else { None };
        // Only an admitted component's artifact is cached: a refused upload leaves nothing.
        self.compiler.keep(&digest, &mut compiled);
        tracing::debug!(digest, from_cache, world = ?shape.world, "component admitted");
        Ok(Arc::new(Module {
            digest,
            size: bytes.len(),
            shape,
            from_cache,
            compiled_size,
            pre,
            handle,
            init,
            on_change,
        }))
    }

    /// Call `handle(input)` once in a fresh sandbox.
    pub async fn invoke(&self, module: &Module, agent: &AgentContext, limits: &Limits, input: &[u8]) -> Report {
        self.call(module, agent, limits, Export::Handle(input)).await
    }

    /// Call one export once in a fresh sandbox.
    pub async fn call(&self, module: &Module, agent: &AgentContext, limits: &Limits, export: Export<'_>) -> Report {
        let id = InvocationId::next();
        let span = tracing::info_span!(
            "invocation",
            tenant = %agent.tenant(),
            agent = %agent.agent(),
            invocation = %id,
            otel.name = %format_args!("invoke {}", agent.agent()),
            cortex.tenant = %agent.tenant(),
            cortex.agent = %agent.agent(),
            cortex.invocation.id = %id,
            cortex.export = export.name(),
            cortex.outcome = tracing::field::Empty,
            cortex.fuel = tracing::field::Empty,
            cortex.memory.peak = tracing::field::Empty,
        );
        let report = self.call_inner(module, agent, limits, export, id).instrument(span.clone()).await;
        if !span.is_disabled() {
            span.record("cortex.outcome", report.outcome.code());
            span.record("cortex.fuel", report.stats.fuel_used);
            span.record("cortex.memory.peak", report.stats.peak_memory);
        }
        report
    }

    async fn call_inner(
        &self,
        module: &Module,
        agent: &AgentContext,
        limits: &Limits,
        export: Export<'_>,
        id: InvocationId,
    ) -> Report {
        let start = Instant::now();
        // The earliest wins: the agent's own limit, or the request's or caller's deadline.
        let timeout = match agent.deadline {
            Some(deadline) => limits.timeout.min(deadline.saturating_duration_since(start)),
            None => limits.timeout,
        };
        let deadline_at = start + timeout;
        let log = LogSink::new(limits.log_bytes);
        let sandbox = Sandbox {
            limiter: Limiter::new(limits.memory_bytes, limits.table_elements, limits.instances),
            host: HostState::new(agent.clone(), id, log.clone(), limits.host_limits(), deadline_at),
            slices: host_slice::HostCallSlices::new(host_slice::HOST_CALL_SLICE),
        };
        let mut store = Store::new(&self.engine, sandbox);
        store.limiter(|s| &mut s.limiter);
        if self.config.fuel_metering
            && let Err(e) = store.set_fuel(limits.fuel).and_then(|()| store.fuel_async_yield_interval(Some(FUEL_SLICE)))
        {
            tracing::error!(error = %e, "cannot set the fuel budget");
        }
        if self.config.epoch_interruption {
            store.epoch_deadline_callback(move |_| {
                // Guest code yields to the executor every tick, so runaway guests cannot
                // starve others on the same worker, and traps once the deadline has passed.
                Ok(if Instant::now() >= deadline_at { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
            });
            store.set_epoch_deadline(1);
            host_slice::install(&mut store);
        }

        let bytes_in = match export {
            Export::Handle(input) => input.len(),
            Export::Init(cfg) => cfg.iter().map(|(k, v)| k.len() + v.len()).sum(),
            Export::OnChange(events) => events.iter().map(|e| e.collection.len() + e.key.len() + 24).sum(),
        };
        let run = async {
            let instance = module.pre.instantiate_async(&mut store).await?;
            match export {
                Export::Handle(input) => {
                    let f = instance.get_typed_func::<(&[u8],), (HandleResult,)>(&mut store, &module.handle)?;
                    Ok(f.call_async(&mut store, (input,)).await?.0)
                }
                Export::Init(cfg) => match &module.init {
                    Some(idx) => {
                        let f = instance
                            .get_typed_func::<(&[(String, String)],), (Result<(), AgentError>,)>(&mut store, idx)?;
                        Ok(f.call_async(&mut store, (cfg,)).await?.0.map(|()| None))
                    }
                    None => Ok(Ok(None)),
                },
                Export::OnChange(events) => match &module.on_change {
                    Some(idx) => {
                        let f =
                            instance.get_typed_func::<(&[ChangeEvent],), (Result<(), AgentError>,)>(&mut store, idx)?;
                        // The WIT edge: the host's events become the guest's here, and only here.
                        let guest: Vec<ChangeEvent> = events.iter().map(ChangeEvent::from).collect();
                        Ok(f.call_async(&mut store, (&guest,)).await?.0.map(|()| None))
                    }
                    None => Ok(Ok(None)),
                },
            }
        };
        // The epoch deadline stops guest code; this bound also stops a guest blocked in a
        // host call (a WASI sleep, a slow store), one tick after the deadline.
        let hard = (deadline_at + self.config.epoch_tick).into();
        let result: Option<wasmtime::Result<HandleResult>> = deadline::within(hard, run).await;
        // One operation can outlast the deadline without a check inside it (a `memory.fill`
        // of the whole memory, a blocking host call): an answer that comes after the
        // deadline is not an answer.
        let late = Instant::now() >= deadline_at;

        let logs = log.snapshot();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut bytes_out = 0u64;
        let outcome = match result {
            None => Outcome::DeadlineExceeded { limit_ms: timeout_ms },
            Some(Ok(Ok(output))) => {
                bytes_out = output.as_ref().map_or(0, |o| o.len() as u64);
                if bytes_out > limits.output_bytes {
                    Outcome::OutputTooLarge { size: bytes_out, limit: limits.output_bytes }
                } else {
                    Outcome::Ok { output }
                }
            }
            Some(Ok(Err(e))) => Outcome::agent_error(e.code, e.message),
            Some(Err(e)) => outcome::classify(
                &e,
                FailureContext {
                    fuel_limit: limits.fuel,
                    timeout,
                    memory_exceeded: store.data().limiter.exceeded.as_ref(),
                    stderr_tail: logs.stderr_tail(),
                },
            ),
        };
        // Whatever the guest answered (a value, its own error, an exit), it answered late.
        let outcome = match outcome {
            Outcome::Ok { .. } | Outcome::AgentError { .. } | Outcome::OutputTooLarge { .. } | Outcome::Exit { .. }
                if late =>
            {
                Outcome::DeadlineExceeded { limit_ms: timeout_ms }
            }
            other => other,
        };
        let fuel_left = if self.config.fuel_metering { store.get_fuel().unwrap_or(0) } else { limits.fuel };
        store.data_mut().host.settle_http();
        let data = store.data();
        let stats = Stats {
            fuel_used: limits.fuel.saturating_sub(fuel_left),
            peak_memory: data.limiter.peak_memory,
            wall_time: start.elapsed(),
            host_calls: data.host.calls.count,
            host_calls_by_interface: data.host.calls.by_interface,
            bytes_in: bytes_in as u64,
            bytes_out,
        };
        match &outcome {
            Outcome::Ok { .. } => tracing::debug!(fuel = stats.fuel_used, "invocation ok"),
            other => tracing::info!(outcome = other.code(), detail = %other, "invocation failed"),
        }
        Report { id, outcome, stats, logs }
    }
}
