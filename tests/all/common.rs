//! Shared set-up: a real runtime, a real on-disk store in a temp dir, real built plugins.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cortex_host::runtime::{AgentContext, CompileConfig, EngineConfig, Limits, Module, Report, Runtime};
use cortex_host::store::EmbeddedStore;

/// Epoch tick used by tests: coarse enough that "deadline plus two ticks" absorbs the
/// scheduling noise of a loaded 2-core machine.
pub const TICK: Duration = Duration::from_millis(100);

pub struct Sandbox {
    pub runtime: Runtime,
    pub store: Arc<EmbeddedStore>,
    /// Holds the runtime's cache and the store; deleted when the sandbox is dropped.
    #[allow(dead_code)]
    pub dir: tempfile::TempDir,
}

pub fn engine_config() -> EngineConfig {
    EngineConfig { epoch_tick: TICK, max_instances: 160, compile: compile_config(), ..EngineConfig::default() }
}

/// The default compile bounds, with this crate's compile child (a test binary cannot be one).
pub fn compile_config() -> CompileConfig {
    CompileConfig { program: Some(env!("CARGO_BIN_EXE_cortex-compile").into()), ..CompileConfig::default() }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(engine_config(), Some(&dir.path().join("cache"))).unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        Self { runtime, store, dir }
    }

    pub async fn load(&self, path: &str) -> Arc<Module> {
        let bytes = std::fs::read(path).unwrap();
        match self.runtime.load(&bytes).await {
            Ok(m) => m,
            Err(e) => panic!("loading {path} failed: {e}"),
        }
    }

    pub fn agent(&self, tenant: &str, name: &str) -> AgentContext {
        self.agent_with_config(tenant, name, BTreeMap::new())
    }

    pub fn agent_with_config(&self, tenant: &str, name: &str, config: BTreeMap<String, String>) -> AgentContext {
        AgentContext::new(tenant, name, config, self.store.clone())
    }

    pub async fn invoke(&self, module: &Module, input: &str, limits: &Limits) -> Report {
        self.runtime.invoke(module, &self.agent("t1", "a1"), limits, input.as_bytes()).await
    }
}

/// Default test limits: generous time, so that only the limit under test fires.
pub fn limits() -> Limits {
    Limits { timeout: Duration::from_secs(10), ..Limits::default() }
}

/// The output of a successful report as text, or a panic naming the outcome.
pub fn text(report: &Report) -> String {
    match report.outcome.output() {
        Some(out) if report.outcome.is_ok() => String::from_utf8_lossy(out).into_owned(),
        _ if report.outcome.is_ok() => String::new(),
        _ => panic!("expected ok, got {} (stderr: {})", report.outcome, String::from_utf8_lossy(&report.logs.stderr)),
    }
}

/// The processes whose parent is this one: the compile children of this test's runtimes
/// (nextest runs each test in a process of its own).
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// Run `work` while watching for child processes; returns its result and the pids seen.
pub async fn watching_children<T>(work: impl std::future::Future<Output = T>) -> (T, Vec<u32>) {
    tokio::pin!(work);
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            r = &mut work => return (r, seen),
            () = tokio::time::sleep(Duration::from_millis(5)) => {
                for pid in children() {
                    if !seen.contains(&pid) {
                        seen.push(pid);
                    }
                }
            }
        }
    }
}

/// The children seen are gone (killed and reaped) and no other child exists.
pub fn assert_children_gone(seen: &[u32]) {
    assert!(!seen.is_empty(), "the compile never ran in a child process");
    for pid in seen {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "compile child {pid} still exists");
    }
    assert_eq!(children(), Vec::<u32>::new(), "a child process is left");
}
