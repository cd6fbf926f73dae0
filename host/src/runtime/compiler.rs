//! Compilation of uploads in a child process that can be capped and stopped.
//!
//! Compiling a component is the one thing an upload makes the host do that no fuel or epoch
//! bounds: a few hundred KB of code can take Cranelift to gigabytes of memory (one huge
//! function, thousands of locals across many blocks) or to minutes of CPU (time grows with
//! the square of one function's size). So admission does two things:
//!
//! 1. cheap static pre-checks on the bytes ([`validate::check_code`]): function body size,
//!    locals per function, total code size and number of functions, each against a limit in
//!    `[engine.compile]`, refusing the obvious bombs before anything is compiled;
//! 2. the compilation itself runs in a child process of the host's own binary
//!    (`cortex __compile`): it reads the component on stdin, builds the same engine from
//!    the same [`EngineConfig`] (passed as JSON in its environment), limits its own address
//!    space (`RLIMIT_AS`, `memory_bytes`) and CPU time (`RLIMIT_CPU`, derived from
//!    `compile_timeout`), and writes the serialized artifact on stdout. The parent kills it
//!    at `compile_timeout` and waits for it, so a refusal stops the work: no thread, CPU or
//!    memory of the compile outlives the answer. A child whose parent dies is killed too
//!    (`PR_SET_PDEATHSIG`), and its CPU limit bounds it in any case.
//!
//! Trust: `Component::deserialize` is unsafe on bytes wasmtime did not produce. The parent
//! deserializes only (a) what the artifact cache returns, which are files the cache wrote
//! itself (HMAC-checked, see [`super::cache`]), and (b) what its own compile child wrote on
//! a pipe only the two of them hold: the child is this host's own binary (or the program
//! configured in its place by the operator), running wasmtime's `precompile_component` on an
//! engine of the same configuration; the guest's bytes are only ever its input. Wasmtime
//! checks the artifact's header and engine compatibility on `deserialize` as well, so a
//! mismatched child is refused, not run.
//!
//! Only artifacts of components that passed admission are written to the cache (see
//! [`Compiled::artifact`]): a refused upload leaves nothing behind.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::component::Component;
use wasmtime::{Engine, InstanceAllocationStrategy};

use super::cache::ArtifactCache;
use super::{EngineConfig, LoadError, validate, wasmtime_config};

/// The subcommand of the host's binary that compiles one component (hidden from `--help`).
pub const SUBCOMMAND: &str = "__compile";
/// The environment variable carrying the compile request to the child.
const REQUEST_ENV: &str = "CORTEX_COMPILE_REQUEST";
/// The child's exit code when the component does not compile (its error is on stderr).
const EXIT_INVALID: u8 = 65;
/// The child's exit code when it cannot start (bad request, limits refused).
const EXIT_SETUP: u8 = 70;
/// Most bytes of the child's stderr kept for the error message.
const STDERR_KEEP: u64 = 16 << 10;

/// `[engine.compile]`: bounds of compiling an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileConfig {
    /// The program run as `PROGRAM __compile` to compile an upload; unset: this host's own
    /// executable. Only a build of Cortex (or a binary calling [`child_main`]) will do.
    pub program: Option<PathBuf>,
    /// Address space of the compile child (`RLIMIT_AS`), in bytes.
    pub memory_bytes: u64,
    /// Compilations running at once on this node; more wait for a slot.
    pub concurrency: usize,
    /// Largest body of one function, in bytes.
    pub max_function_bytes: u64,
    /// Most locals one function may declare.
    pub max_function_locals: u64,
    /// Most bytes of code (all function bodies of all core modules).
    pub max_code_bytes: u64,
    /// Most functions with a body (all core modules).
    pub max_functions: u64,
}

impl Default for CompileConfig {
    fn default() -> Self {
        Self {
            program: None,
            memory_bytes: 3 << 30,
            concurrency: 2,
            max_function_bytes: 2 << 20,
            max_function_locals: 10_000,
            max_code_bytes: 48 << 20,
            max_functions: 200_000,
        }
    }
}

/// What the parent asks of the child.
#[derive(Serialize, Deserialize)]
struct Request {
    engine: EngineConfig,
    memory_bytes: u64,
    cpu_seconds: u64,
}

/// A compiled component, and the artifact to cache once it has been admitted.
pub struct Compiled {
    /// The component, ready for admission's checks.
    pub component: Component,
    /// Whether it came from the artifact cache.
    pub from_cache: bool,
    /// Size of the serialized artifact (about the size of its code in memory).
    pub artifact_len: usize,
    /// The fresh artifact, for [`Compiler::keep`]; `None` when it came from the cache.
    pub artifact: Option<Vec<u8>>,
}

/// Compiles uploads out of process, within bounds, through the artifact cache.
pub struct Compiler {
    engine: Engine,
    config: EngineConfig,
    program: PathBuf,
    cache: Option<ArtifactCache>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler").field("program", &self.program).field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl Compiler {
    /// A compiler for `engine` (built from `config`), caching in `cache`.
    pub fn new(engine: Engine, config: EngineConfig, cache: Option<ArtifactCache>) -> Self {
        // `/proc/self/exe` is exec'd by the forked child, so it names this very binary even
        // after an upgrade replaced the file on disk.
        let program = config.compile.program.clone().unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        let slots = Arc::new(tokio::sync::Semaphore::new(config.compile.concurrency.max(1)));
        Self { engine, config, program, cache, slots }
    }

    /// The compiled component for `bytes` (digest `digest`): from the cache, else checked
    /// statically and compiled in a bounded child process.
    pub async fn compile(&self, digest: &str, bytes: &[u8]) -> Result<Compiled, LoadError> {
        if let Some(cached) = self.cache.as_ref().and_then(|c| c.read(digest)) {
            // SAFETY: `read` returns only bytes this cache wrote itself (HMAC-verified under
            // a key private to this data directory), which came from our own compile child on
            // an engine with the same compatibility hash (the folder is keyed by it).
            match unsafe { Component::deserialize(&self.engine, &cached) } {
                Ok(component) => {
                    return Ok(Compiled { component, from_cache: true, artifact_len: cached.len(), artifact: None });
                }
                Err(e) => tracing::warn!(digest, error = %e, "cached artifact unusable; recompiling"),
            }
        }
        validate::check_code(bytes, &self.config.compile)?;
        let artifact = self.compile_in_child(bytes).await?;
        // SAFETY: the bytes come from our own compile child over its stdout pipe (see the
        // module's documentation); wasmtime checks their header and engine compatibility.
        let component = unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| LoadError::Internal(format!("the compile child's artifact does not load: {e:#}")))?;
        Ok(Compiled { component, from_cache: false, artifact_len: artifact.len(), artifact: Some(artifact) })
    }

    /// Cache the artifact of an admitted component.
    pub fn keep(&self, digest: &str, compiled: &mut Compiled) {
        if let (Some(cache), Some(artifact)) = (&self.cache, compiled.artifact.take())
            && let Err(e) = cache.write(digest, &artifact)
        {
            tracing::warn!(digest, error = %e, "cannot write the compiled artifact to the cache");
        }
    }

    /// Remove the cached artifact of `digest` (its module was deleted).
    pub fn forget(&self, digest: &str) {
        if let Some(cache) = &self.cache
            && let Err(e) = cache.remove(digest)
        {
            tracing::warn!(digest, error = %e, "cannot remove a cached artifact");
        }
    }

    fn cpu_seconds(&self) -> u64 {
        // Parallel compilation uses every core; the wall-clock timeout is the bound that
        // answers the client, this one only stops a child that outlives its parent.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        (self.config.compile_timeout.as_secs_f64() * cores).ceil() as u64 + 1
    }

    async fn compile_in_child(&self, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        // A program that is not a Cortex build ignores `__compile`, runs as itself and may
        // compile in a child of its own: a fork bomb. Inside a compile child, never spawn.
        if std::env::var_os(REQUEST_ENV).is_some() {
            return Err(LoadError::Internal(format!(
                "{} did not run `{SUBCOMMAND}`: [engine.compile] program must be a build of Cortex",
                self.program.display()
            )));
        }
        let _slot = self.slots.acquire().await.map_err(|_| LoadError::Internal("the compiler is shut down".into()))?;
        let limit = self.config.compile_timeout;
        let memory = self.config.compile.memory_bytes;
        let request = Request { engine: self.config.clone(), memory_bytes: memory, cpu_seconds: self.cpu_seconds() };
        let request = serde_json::to_string(&request).map_err(|e| LoadError::Internal(format!("{e}")))?;
        let mut child = tokio::process::Command::new(&self.program)
            .arg(SUBCOMMAND)
            .env_clear()
            .env(REQUEST_ENV, request)
            // Fewer malloc arenas: each reserves 64 MiB of the address space under the limit.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A dropped upload (client gone, request timeout) kills its compile too.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LoadError::Internal(format!("cannot start the compiler {}: {e}", self.program.display())))?;
        let pid = child.id();
        tracing::debug!(pid, size = bytes.len(), "compiling in a child process");
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(LoadError::Internal("the compile child has no pipes".into()));
        };
        let exchange = async {
            let feed = async {
                // A child that dies early closes its stdin: its exit status tells why.
                let _ = stdin.write_all(bytes).await;
                drop(stdin);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (mut stdout, mut stderr) = (stdout.take(memory), stderr.take(STDERR_KEEP));
            let read_out = stdout.read_to_end(&mut out);
            let read_err = stderr.read_to_end(&mut err);
            let ((), r1, r2) = tokio::join!(feed, read_out, read_err);
            r1.and(r2)?;
            let status = child.wait().await?;
            std::io::Result::Ok((status, out, err))
        };
        let result = tokio::time::timeout(limit, exchange).await;
        let (status, out, err) = match result {
            Err(_) => {
                // Kill and reap before answering: nothing of this compile outlives the refusal.
                if let Err(e) = child.kill().await {
                    tracing::warn!(pid, error = %e, "cannot kill the compile child");
                }
                tracing::info!(pid, ?limit, "compilation stopped at its time bound");
                return Err(LoadError::CompileTimeout(limit));
            }
            Ok(Err(e)) => {
                let _ = child.kill().await;
                return Err(LoadError::Internal(format!("talking to the compile child: {e}")));
            }
            Ok(Ok(done)) => done,
        };
        let stderr = String::from_utf8_lossy(&err);
        let stderr = stderr.trim();
        if status.success() {
            return Ok(out);
        }
        Err(classify(status, stderr, limit, memory))
    }
}

/// Why a compile child failed, from its exit status and what it wrote to stderr.
fn classify(status: std::process::ExitStatus, stderr: &str, limit: Duration, memory: u64) -> LoadError {
    use std::os::unix::process::ExitStatusExt;
    // Out of address space shows as a failed allocation (Rust aborts), an mmap or thread
    // creation error (ENOMEM, EAGAIN) wherever it happened, or a crash while unwinding.
    let out_of_memory = ["memory allocation of", "out of memory", "os error 12", "os error 11", "Cannot allocate"]
        .iter()
        .any(|m| stderr.contains(m));
    let signal = status.signal();
    if signal == Some(rustix::process::Signal::XCPU.as_raw()) || signal == Some(rustix::process::Signal::KILL.as_raw())
    {
        return LoadError::CompileTimeout(limit);
    }
    if out_of_memory
        || signal == Some(rustix::process::Signal::ABORT.as_raw())
        || signal == Some(rustix::process::Signal::SEGV.as_raw())
    {
        return LoadError::CompileMemory(memory);
    }
    match status.code() {
        Some(code) if code == i32::from(EXIT_INVALID) => LoadError::Invalid(stderr.to_owned()),
        _ => LoadError::Internal(format!("the compile child failed ({status}): {stderr}")),
    }
}

/// The body of `cortex __compile`: read a component on stdin, compile it within the limits
/// the parent set in the environment, write the serialized artifact on stdout.
pub fn child_main() -> ExitCode {
    use std::io::{Read, Write};
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("compile child: {what}: {e}");
        ExitCode::from(EXIT_SETUP)
    };
    let request = match std::env::var(REQUEST_ENV)
        .map_err(|e| e.to_string())
        .and_then(|r| serde_json::from_str::<Request>(&r).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return setup("no valid request in the environment", &e),
    };
    if let Err(e) = limit_self(&request) {
        return setup("cannot set its limits", &e);
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        return setup("cannot read the component", &e);
    }
    let engine = match child_engine(&request.engine) {
        Ok(e) => e,
        Err(e) => return setup("cannot build the engine", &format!("{e:#}")),
    };
    match engine.precompile_component(&bytes) {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&artifact).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => setup("cannot write the artifact", &e),
            }
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// The engine the child compiles with: the node's configuration, allocating instances on
/// demand (the pooling allocator's reservation would not fit under the memory limit, and the
/// allocation strategy is not part of an artifact's compatibility).
fn child_engine(cfg: &EngineConfig) -> wasmtime::Result<Engine> {
    let mut config = wasmtime_config(cfg);
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&config)
}

fn limit_self(request: &Request) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, Signal, set_parent_process_death_signal, setrlimit};
    set_parent_process_death_signal(Some(Signal::KILL))?;
    let mem = Some(request.memory_bytes);
    setrlimit(Resource::As, Rlimit { current: mem, maximum: mem })?;
    let cpu = request.cpu_seconds.max(1);
    // The soft limit sends SIGXCPU; the hard one, a second later, SIGKILL.
    setrlimit(Resource::Cpu, Rlimit { current: Some(cpu), maximum: Some(cpu + 1) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_engine_makes_artifacts_the_node_engine_accepts() {
        let cfg = EngineConfig { max_instances: 4, ..EngineConfig::default() };
        let node = super::super::build_engine(&cfg).unwrap();
        let child = child_engine(&cfg).unwrap();
        use std::hash::{DefaultHasher, Hash, Hasher};
        let hash = |e: &Engine| {
            let mut h = DefaultHasher::new();
            e.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&node), hash(&child));
        let component =
            wat::parse_str("(component (core module (func (export \"f\") (result i32) i32.const 7)))").unwrap();
        let artifact = child.precompile_component(&component).unwrap();
        // SAFETY: produced just above by wasmtime.
        unsafe { Component::deserialize(&node, &artifact) }.unwrap();
    }
}
