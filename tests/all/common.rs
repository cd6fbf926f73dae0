//! Shared set-up: a real runtime, a real on-disk store in a temp dir, real built plugins.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cortex_host::runtime::{AgentContext, EngineConfig, Limits, Module, Report, Runtime};
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
    EngineConfig { epoch_tick: TICK, max_instances: 160, ..EngineConfig::default() }
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
