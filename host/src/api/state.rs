//! Shared state of the API: the runtime, the registry, deployed agents and their pools,
//! per-agent log rings, rate limiters, metrics.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::auth::Verifier;
use super::error::{ApiError, ApiResult};
use super::quota::Limiters;
use crate::capabilities::{AgentError, Caller, ChangeEvent, MessagingError, MessagingLink, Messenger};
use crate::config::ServerConfig;
use crate::coordination::{self, Delivery, DispatchSettings, Host, Mailbox, MailboxSettings, Watcher, mailbox};
use crate::registry::{AgentRecord, AgentStatus, Quotas, Registry, Tenant, now_ms};
pub use crate::runtime::LogLine;
use crate::runtime::{
    AgentContext, Export, Limits, LogRing, Module, ModuleCache, Outcome, Report, Runtime, module_cache,
};
use crate::store::{RecordKind, Store};
use crate::telemetry::Metrics;

/// What stays with an agent across config changes and upgrades.
#[derive(Debug)]
pub struct Shared {
    /// Invocations running at once.
    pub pool: Arc<Semaphore>,
    /// Invocations so far.
    pub invocations: AtomicU64,
    /// Invocations that did not end `ok`.
    pub failures: AtomicU64,
    /// Messages delivered from its mailbox.
    pub messages_delivered: AtomicU64,
    /// Failed message deliveries that will be tried again.
    pub messages_retried: AtomicU64,
    /// Messages parked as dead letters after their retries.
    pub messages_dead_lettered: AtomicU64,
    logs: Mutex<LogRing>,
}

impl Shared {
    fn new(max_concurrency: u32, ring_lines: usize, ring_bytes: usize) -> Self {
        Self {
            pool: Arc::new(Semaphore::new(max_concurrency.max(1) as usize)),
            invocations: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            messages_retried: AtomicU64::new(0),
            messages_dead_lettered: AtomicU64::new(0),
            logs: Mutex::new(LogRing::new(ring_lines, ring_bytes)),
        }
    }

    /// Append what an invocation wrote.
    pub fn record_logs(&self, report: &Report) {
        let l = &report.logs;
        if l.stdout.is_empty() && l.stderr.is_empty() && l.records.is_empty() {
            return;
        }
        let invocation = report.id.to_string();
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).record(l, &invocation, now_ms());
    }

    /// Lines after `since`, at most `limit`.
    pub fn logs(&self, since: u64, limit: usize) -> Vec<LogLine> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).since(since, limit)
    }
}

/// A deployed agent: its record, its loaded module, its shared counters.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The record as stored, and its revision.
    pub record: AgentRecord,
    /// Revision of the record in the store.
    pub revision: u64,
    /// The loaded module.
    pub module: Arc<Module>,
    /// Pool, counters, logs.
    pub shared: Arc<Shared>,
    /// The parts of its sandbox context that do not change between invocations.
    base: AgentContext,
    /// Its metric handles.
    metrics: crate::telemetry::AgentMetrics,
}

/// Everything a handler needs.
pub struct AppState {
    /// Server configuration.
    pub config: ServerConfig,
    /// The sandbox.
    pub runtime: Runtime,
    /// Registry over the store.
    pub registry: Registry,
    /// Token verification.
    pub verifier: Verifier,
    /// Rate limiters and concurrency caps.
    pub limiters: Limiters,
    /// Prometheus metrics.
    pub metrics: Metrics,
    modules_dir: PathBuf,
    modules: ModuleCache,
    /// Held while module files are written or freed (see [`AppState::delete_module`]).
    module_files: tokio::sync::Mutex<()>,
    agents: RwLock<HashMap<String, Arc<Deployed>>>,
    watchers: Mutex<HashMap<String, Watcher>>,
    dispatch: DispatchSettings,
    mailboxes: Mutex<HashMap<String, Mailbox>>,
    /// Messages waiting per agent, running or stopped (counted from the store once).
    pending: Mutex<HashMap<String, Arc<std::sync::atomic::AtomicUsize>>>,
    mailbox_settings: MailboxSettings,
    mesh: std::sync::OnceLock<Arc<dyn Messenger>>,
    no_callers: Arc<[Arc<str>]>,
    tenant_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Dead letters being replayed on this node, by record key.
    replaying: Mutex<std::collections::HashSet<String>>,
    /// Tenant names being created or deleted on this node (see [`AppState::claim_tenant_name`]).
    tenant_names: Mutex<std::collections::HashSet<String>>,
    tenants: TtlCache<CachedTenant>,
    /// API keys found in the store, by id (revocations on this node forget them at once).
    api_keys: TtlCache<crate::registry::ApiKeyRecord>,
    /// Moved on whenever this node changes a key or a tenant: open streams check again.
    credentials: tokio::sync::watch::Sender<u64>,
}

/// How long a cached tenant record is trusted: bounds how long another node's change
/// (quotas, deletion) takes to be seen here.
const TENANT_TTL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

fn key(tenant: &str, name: &str) -> String {
    // On every invocation: concatenated, not formatted.
    let mut k = String::with_capacity(tenant.len() + 1 + name.len());
    k.push_str(tenant);
    k.push('/');
    k.push_str(name);
    k
}

/// Records read from the registry, trusted for [`TENANT_TTL`]: bounds how long a change
/// made by another node takes to be seen here. A change made on this node forgets the
/// record at once, and a read that started before that change does not put back what it
/// read (each forget moves the generation on).
struct TtlCache<V> {
    entries: RwLock<HashMap<String, (Arc<V>, std::time::Instant)>>,
    generation: AtomicU64,
}

impl<V> Default for TtlCache<V> {
    fn default() -> Self {
        Self { entries: RwLock::default(), generation: AtomicU64::new(0) }
    }
}

impl<V> TtlCache<V> {
    /// The record of `key`, if read less than [`TENANT_TTL`] ago.
    fn fresh(&self, key: &str) -> Option<Arc<V>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|(_, at)| at.elapsed() < TENANT_TTL).map(|(v, _)| v.clone())
    }

    /// Taken before reading the registry, for [`Self::remember`].
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keep what a read that began at generation `seen` found (`None`: nothing, which is not
    /// remembered), unless something was forgotten since.
    fn remember(&self, key: &str, found: Option<Arc<V>>, seen: u64) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        match found {
            Some(v) if self.generation.load(Ordering::Acquire) == seen => {
                entries.insert(key.to_owned(), (v, std::time::Instant::now()));
            }
            _ => {
                entries.remove(key);
            }
        }
    }

    fn forget(&self, key: &str) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.remove(key);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A dead letter being replayed (see [`AppState::claim_replay`]).
pub struct ReplayClaim {
    state: Arc<AppState>,
    key: String,
}

impl Drop for ReplayClaim {
    fn drop(&mut self) {
        self.state.replaying.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

/// A tenant name being created or deleted (see [`AppState::claim_tenant_name`]).
pub struct NameClaim {
    state: Arc<AppState>,
    name: String,
}

impl Drop for NameClaim {
    fn drop(&mut self) {
        self.state.tenant_names.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.name);
    }
}

/// A tenant's record as this node caches it, with the limiter of its current quotas.
#[derive(Debug)]
pub struct CachedTenant {
    /// The record.
    pub record: Tenant,
    /// Its rate bucket and concurrency count.
    pub limiter: Arc<crate::api::quota::TenantLimiter>,
}

impl std::ops::Deref for CachedTenant {
    type Target = Tenant;

    fn deref(&self) -> &Tenant {
        &self.record
    }
}

impl AppState {
    /// Build the state; `restore` then brings back deployed agents.
    pub fn new(config: ServerConfig, runtime: Runtime, store: Arc<dyn Store>, verifier: Verifier) -> ApiResult<Self> {
        let modules_dir = config.data_dir.join("modules");
        crate::fsutil::private_dir(&modules_dir).map_err(|e| ApiError::Internal(format!("modules dir: {e}")))?;
        let metrics = Metrics::new(config.metrics.max_agent_labels);
        let latency = metrics.store_latency();
        let observe: crate::store::Observer =
            Arc::new(move |op, d: Duration| latency.with_label_values(&[op]).observe(d.as_secs_f64()));
        let store: Arc<dyn Store> = Arc::new(crate::store::Instrumented::new(store, observe));
        let mailbox_settings = config.messaging.mailbox();
        let modules = ModuleCache::new(config.engine.module_cache_bytes);
        Ok(Self {
            config,
            runtime,
            registry: Registry::new(store),
            verifier,
            limiters: Limiters::default(),
            metrics,
            modules_dir,
            modules,
            module_files: tokio::sync::Mutex::new(()),
            agents: RwLock::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            dispatch: DispatchSettings::default(),
            mailboxes: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            mailbox_settings,
            mesh: std::sync::OnceLock::new(),
            no_callers: Arc::from([]),
            tenant_locks: Mutex::new(HashMap::new()),
            replaying: Mutex::default(),
            tenant_names: Mutex::default(),
            tenants: TtlCache::default(),
            api_keys: TtlCache::default(),
            credentials: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A tenant record and its limiter, from a short-lived cache (see [`TENANT_TTL`]) or
    /// the registry.
    pub async fn tenant(&self, name: &str) -> ApiResult<Option<Arc<CachedTenant>>> {
        if let Some(t) = self.tenants.fresh(name) {
            return Ok(Some(t));
        }
        let seen = self.tenants.generation();
        let found = self.registry.get::<Tenant>(RecordKind::Tenant, name).await?.map(|(record, _)| {
            // The limiter for the quotas just read: a new one if they changed.
            let limiter = self.limiters.of(name, &record.quotas);
            Arc::new(CachedTenant { record, limiter })
        });
        self.tenants.remember(name, found.clone(), seen);
        Ok(found)
    }

    /// An API key's record, from a short-lived cache (see [`TENANT_TTL`]) or the registry:
    /// a key in use costs no store read per request.
    pub async fn api_key(&self, id: &str) -> ApiResult<Option<Arc<crate::registry::ApiKeyRecord>>> {
        if let Some(k) = self.api_keys.fresh(id) {
            return Ok(Some(k));
        }
        let seen = self.api_keys.generation();
        let found =
            self.registry.get::<crate::registry::ApiKeyRecord>(RecordKind::ApiKey, id).await?.map(|(k, _)| Arc::new(k));
        self.api_keys.remember(id, found.clone(), seen);
        Ok(found)
    }

    /// Forget a cached API key (after this node revoked or deleted it).
    pub fn forget_api_key(&self, id: &str) {
        self.api_keys.forget(id);
        self.credentials.send_modify(|n| *n += 1);
    }

    /// Forget a cached tenant record (after this node changed or deleted it).
    pub fn forget_tenant(&self, name: &str) {
        self.tenants.forget(name);
        self.credentials.send_modify(|n| *n += 1);
    }

    /// Changes when this node revokes a key or changes or deletes a tenant (see
    /// [`crate::api::stream_guard`]).
    pub fn credential_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.credentials.subscribe()
    }

    /// Held while a tenant's quota is checked and what it counts is written, so that
    /// concurrent requests cannot both pass the check.
    pub async fn tenant_write_lock(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .tenant_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Claim the dead letter under `key` for one replay on this node; `None` while another
    /// replay of it runs. The claim ends when the guard is dropped.
    pub fn claim_replay(self: &Arc<Self>, key: &str) -> Option<ReplayClaim> {
        let fresh = self.replaying.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_owned());
        fresh.then(|| ReplayClaim { state: self.clone(), key: key.to_owned() })
    }

    /// Claim the tenant name `name` while a tenant of that name is created or deleted on this
    /// node; `None` while another creation or deletion of it runs. A deletion keeps the claim
    /// until everything of the old tenant is gone: its clean-up goes by name, so a tenant
    /// created again meanwhile would lose its keys, agents, modules and documents to it.
    pub fn claim_tenant_name(self: &Arc<Self>, name: &str) -> Option<NameClaim> {
        let fresh = self.tenant_names.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned());
        fresh.then(|| NameClaim { state: self.clone(), name: name.to_owned() })
    }

    fn module_path(&self, digest: &str) -> PathBuf {
        self.modules_dir.join(format!("{digest}.wasm"))
    }

    /// Held by an upload from saving its bytes until its record is written, and by a delete
    /// from removing the record until the files are freed: a delete never frees the files of
    /// a record being written.
    pub async fn module_files(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.module_files.lock().await
    }

    /// Keep an uploaded module's bytes (durably, before its record is written).
    pub fn save_module_bytes(&self, digest: &str, bytes: &[u8]) -> ApiResult<()> {
        let path = self.module_path(digest);
        if path.exists() {
            return Ok(());
        }
        let tmp = self.modules_dir.join(format!("{digest}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = crate::fsutil::create_private(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| ApiError::Internal(format!("saving module {digest}: {e}")))
    }

    /// Remember a loaded module (in the LRU of `[engine] module_cache_bytes`).
    pub fn cache_module(&self, module: Arc<Module>) {
        self.modules.insert(&module.digest.clone(), module.clone(), module_cache::weight(&module));
    }

    /// Whether the loaded module for `digest` is in memory (deployed agents hold their own).
    pub fn module_cached(&self, digest: &str) -> bool {
        self.modules.contains(digest)
    }

    /// Delete `tenant`'s module `digest` and free what no other record uses.
    ///
    /// Modules are per-tenant records, but their bytes (`DATA/modules/<digest>.wasm`), the
    /// compiled artifact and the loaded module are shared by digest: two tenants uploading
    /// the same component share them, and each counts its size in its own `module_bytes`.
    /// So the files and the loaded module go when the last record naming the digest goes
    /// (checked under [`Self::module_files`], which uploads hold until their record exists).
    pub async fn delete_module(&self, tenant: &str, digest: &str) -> ApiResult<()> {
        let _files = self.module_files().await;
        self.registry.delete(RecordKind::Module, &crate::registry::scoped(tenant, digest)).await?;
        let records = self.registry.store().record_list(RecordKind::Module, "").await?;
        if records.iter().any(|(k, _)| k.rsplit_once('/').is_some_and(|(_, d)| d == digest)) {
            return Ok(());
        }
        self.modules.remove(digest);
        self.runtime.forget_artifact(digest);
        match std::fs::remove_file(self.module_path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(digest, error = %e, "cannot remove a deleted module's bytes");
            }
            _ => {}
        }
        Ok(())
    }

    /// The loaded module for `digest` (from memory, else from disk through the artifact cache).
    pub async fn module(&self, digest: &str) -> ApiResult<Arc<Module>> {
        if let Some(m) = self.modules.get(digest) {
            return Ok(m);
        }
        let bytes = std::fs::read(self.module_path(digest))
            .map_err(|e| ApiError::Internal(format!("module {digest} is registered but unreadable: {e}")))?;
        let m = self.runtime.load(&bytes).await?;
        self.cache_module(m.clone());
        Ok(m)
    }

    /// The effective limits of an agent: server defaults, lowered by the agent's own limits
    /// and capped by its tenant's quotas.
    pub fn limits_for(&self, record: &AgentRecord, q: &Quotas) -> Limits {
        let mut l = self.config.limits.clone();
        l.fuel = record.limits.fuel.unwrap_or(l.fuel).min(q.max_fuel);
        l.memory_bytes = record.limits.memory_bytes.unwrap_or(l.memory_bytes).min(q.max_memory_bytes);
        let timeout_ms = record.limits.timeout_ms.map_or(l.timeout, Duration::from_millis);
        l.timeout = timeout_ms.min(Duration::from_millis(q.max_timeout_ms));
        l
    }

    /// The sandbox context of an agent, without messaging: for `init` (which may fail and
    /// be undone, so it cannot reach other agents) and as the prepared base of a deployed
    /// agent's context.
    pub fn context(&self, record: &AgentRecord, q: &Quotas) -> AgentContext {
        AgentContext {
            stored_bytes_quota: Some(q.stored_bytes),
            edges_quota: Some(q.edges),
            ..AgentContext::new(&record.tenant, &record.name, record.config.clone(), self.registry.store().clone())
        }
    }

    /// The sandbox context of a deployed agent invoked from outside: its prepared parts,
    /// no allocation.
    pub fn deployed_context(&self, d: &Deployed, q: &Quotas) -> AgentContext {
        self.deployed_context_until(d, q, None)
    }

    /// [`Self::deployed_context`] for an invocation that must end by `deadline` (its
    /// request's, if any), whatever its own timeout; the agents it calls end by then too.
    pub fn deployed_context_until(
        &self,
        d: &Deployed,
        q: &Quotas,
        deadline: Option<std::time::Instant>,
    ) -> AgentContext {
        self.deployed_context_with(d, q, self.no_callers.clone(), deadline)
    }

    /// The context of a deployed agent called by `callers` (outermost first), within
    /// `deadline`.
    fn deployed_context_with(
        &self,
        d: &Deployed,
        q: &Quotas,
        callers: Arc<[Arc<str>]>,
        deadline: Option<std::time::Instant>,
    ) -> AgentContext {
        let mut c = d.base.clone();
        c.stored_bytes_quota = Some(q.stored_bytes);
        c.edges_quota = Some(q.edges);
        c.messaging = self.mesh.get().map(|m| MessagingLink { messenger: m.clone(), callers, deadline });
        c
    }

    /// Run `init` with `record`'s config on `module`; an error if it does not succeed.
    ///
    /// What `init` wrote goes to the agent's log ring when the agent is deployed (a config
    /// change, an upgrade); on a first deploy the caller records the returned report once
    /// the agent is installed.
    pub async fn run_init(&self, module: &Module, record: &AgentRecord, q: &Quotas) -> ApiResult<Report> {
        let config: Vec<(String, String)> = record.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let limits = self.limits_for(record, q);
        // Without messaging: its calls answer `unavailable`. Its document and graph writes
        // are buffered (at most its memory limit of them) and committed only if it succeeds.
        let mut ctx = self.context(record, q);
        let max_buffered = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
        let overlay =
            Arc::new(crate::store::Overlay::new(ctx.base.store.clone(), ctx.base.scope.clone(), max_buffered));
        ctx.base = Arc::new(crate::runtime::AgentBase {
            scope: ctx.base.scope.clone(),
            config: ctx.base.config.clone(),
            store: overlay.clone(),
        });
        let report = self.runtime.call(module, &ctx, &limits, Export::Init(&config)).await;
        if let Some(d) = self.agent(&record.tenant, &record.name) {
            d.shared.record_logs(&report);
        }
        if let Some(other) = Some(&report.outcome).filter(|o| !o.is_ok()) {
            return Err(ApiError::Init { code: other.code().to_owned(), message: format!("init failed: {other}") });
        }
        let quota = crate::store::Quota { bytes: ctx.stored_bytes_quota, edges: ctx.edges_quota };
        match overlay.commit(quota).await {
            Ok(()) => Ok(report),
            Err(crate::store::StoreError::QuotaExceeded(m)) => {
                Err(ApiError::Init { code: "quota_exceeded".into(), message: format!("init's writes: {m}") })
            }
            Err(crate::store::StoreError::Conflict { .. }) => Err(ApiError::Init {
                code: "conflict".into(),
                message: "init's writes: a document init read was changed meanwhile; nothing was written".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// A deployed agent.
    pub fn agent(&self, tenant: &str, name: &str) -> Option<Arc<Deployed>> {
        // On every invocation: the key is put together on the stack when it fits.
        let mut buf = [0u8; 160];
        let len = tenant.len() + 1 + name.len();
        let agents = self.agents.read().unwrap_or_else(PoisonError::into_inner);
        match buf.get_mut(..len) {
            Some(k) => {
                k[..tenant.len()].copy_from_slice(tenant.as_bytes());
                k[tenant.len()] = b'/';
                k[tenant.len() + 1..].copy_from_slice(name.as_bytes());
                std::str::from_utf8(k).ok().and_then(|k| agents.get(k)).cloned()
            }
            None => agents.get(&key(tenant, name)).cloned(),
        }
    }

    /// Install (or replace) a deployed agent, keeping its pool, counters and logs; start
    /// its change-feed dispatcher when it runs and watches, stop it otherwise.
    pub fn install(self: &Arc<Self>, record: AgentRecord, revision: u64, module: Arc<Module>) -> Arc<Deployed> {
        self.mesh.get_or_init(|| Arc::new(Mesh(Arc::downgrade(self))));
        let d = {
            let mut map = self.agents.write().unwrap_or_else(PoisonError::into_inner);
            let k = key(&record.tenant, &record.name);
            let shared = match map.get(&k) {
                Some(old) => old.shared.clone(),
                None => Arc::new(Shared::new(
                    record.max_concurrency,
                    self.config.http.log_ring_lines,
                    self.config.http.log_ring_bytes,
                )),
            };
            let base = self.context(&record, &Quotas::default());
            let metrics = self.metrics.agent(&record.tenant, &record.name);
            let d = Arc::new(Deployed { record, revision, module, shared, base, metrics });
            map.insert(k, d.clone());
            d
        };
        self.sync_watcher(&d.record);
        self.sync_mailbox(&d.record);
        d
    }

    /// Start or stop the mailbox of an agent to match its record: running agents take
    /// their messages, stopped ones keep them until started.
    fn sync_mailbox(self: &Arc<Self>, record: &AgentRecord) {
        let k = key(&record.tenant, &record.name);
        let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
        if record.status != AgentStatus::Running {
            boxes.remove(&k);
            return;
        }
        if boxes.contains_key(&k) {
            return;
        }
        let host: std::sync::Weak<dyn Host> = Arc::downgrade(self) as std::sync::Weak<dyn Host>;
        let m = coordination::spawn_mailbox(
            host,
            record.tenant.clone(),
            record.name.clone(),
            // At most half the agent's instances (rounded up), so that calls and HTTP
            // invocations still find one while a backlog drains.
            (record.max_concurrency.max(1) as usize).div_ceil(2),
            self.mailbox_settings.clone(),
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).entry(k.clone()).or_default().clone(),
        );
        boxes.insert(k, m);
    }

    /// Start, keep or stop the dispatcher of an agent to match its record.
    fn sync_watcher(self: &Arc<Self>, record: &AgentRecord) {
        let k = key(&record.tenant, &record.name);
        let wanted = record.status == AgentStatus::Running && !record.watches.is_empty();
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if wanted && watchers.get(&k).is_some_and(|w| w.watches == record.watches) {
            return;
        }
        // Dropping a watcher asks its task to stop.
        watchers.remove(&k);
        if wanted {
            let host: std::sync::Weak<dyn Host> = Arc::downgrade(self) as std::sync::Weak<dyn Host>;
            let w = coordination::spawn(
                host,
                record.tenant.clone(),
                record.name.clone(),
                record.watches.clone(),
                self.dispatch.clone(),
            );
            watchers.insert(k, w);
        }
    }

    /// Forget a deployed agent (and stop its dispatcher).
    ///
    /// Waits until the agent's mailbox task is gone, so that no delivery in flight writes
    /// after the caller forgets the agent's records.
    pub async fn uninstall(&self, tenant: &str, name: &str) {
        self.agents.write().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        let mailbox = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        if let Some(m) = mailbox {
            m.halt().await;
        }
    }

    /// Whether the change-feed dispatcher of an agent is running.
    pub fn is_watching(&self, tenant: &str, name: &str) -> bool {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&key(tenant, name))
    }

    /// Stop every change-feed dispatcher at once and wait until they are gone, the way a
    /// crash would: batches in flight are abandoned without moving their cursors (they are
    /// delivered again after a restart). For shutdown, and for tests that reopen the data
    /// directory in the same process.
    pub async fn halt_watchers(&self) {
        let all: Vec<Watcher> =
            self.watchers.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, w)| w).collect();
        for w in all {
            w.halt().await;
        }
        let all: Vec<Mailbox> =
            self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, m)| m).collect();
        for m in all {
            m.halt().await;
        }
    }

    /// Run `on-change(events)` of a deployed, running agent once, counted like an
    /// invocation (pool, counters, logs, metrics).
    pub async fn deliver_changes(&self, tenant: &str, name: &str, events: &[ChangeEvent]) -> Delivery {
        self.run_background(tenant, name, Export::OnChange(events)).await
    }

    /// Run `handle(body)` of a deployed, running agent once for a message from its
    /// mailbox, counted like an invocation.
    pub async fn deliver_message(&self, tenant: &str, name: &str, body: &[u8]) -> Delivery {
        self.run_background(tenant, name, Export::Handle(body)).await
    }

    async fn run_background(&self, tenant: &str, name: &str, export: Export<'_>) -> Delivery {
        let Some(d) = self.agent(tenant, name) else { return Delivery::Gone };
        if !Self::is_running(&d) {
            return Delivery::Gone;
        }
        let t = match self.tenant(tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => return Delivery::Gone,
            Err(e) => {
                // Not the agent's failure: try again later without using up an attempt.
                tracing::warn!(%tenant, agent = %name, error = %e, "delivery: reading the tenant failed");
                return Delivery::Throttled(Duration::from_millis(200));
            }
        };
        // Deliveries are invocations of the tenant: they count against its rate and
        // concurrency quotas, and wait (without using up a retry) while those are spent.
        // The wait lets the bucket refill for a few deliveries, so that a backlog is not
        // re-read for every single token.
        let quotas = &t.quotas;
        let refill = Duration::from_millis((8_000 / u64::from(quotas.invocations_per_second.max(1))).clamp(20, 1000));
        if t.limiter.take().is_err() {
            self.metrics.refused(tenant, "rate_limited");
            return Delivery::Throttled(refill);
        }
        let Some(_tenant_slot) = t.limiter.enter() else {
            self.metrics.refused(tenant, "concurrency_quota");
            return Delivery::Throttled(Duration::from_millis(20));
        };
        let Ok(_slot) = d.shared.pool.clone().acquire_owned().await else { return Delivery::Gone };
        // Stopped or replaced while waiting for the slot.
        match self.agent(tenant, name) {
            Some(now) if Self::is_running(&now) => {}
            _ => return Delivery::Gone,
        }
        let report = self
            .runtime
            .call(&d.module, &self.deployed_context(&d, quotas), &self.limits_for(&d.record, quotas), export)
            .await;
        self.account(&d, &report);
        match report.outcome {
            Outcome::Ok { .. } => Delivery::Delivered,
            other => Delivery::Failed { code: other.code().to_owned(), message: other.to_string() },
        }
    }

    /// Count an invocation of `d`: counters, logs, metrics.
    pub fn account(&self, d: &Deployed, report: &Report) {
        d.shared.invocations.fetch_add(1, Ordering::Relaxed);
        if !report.outcome.is_ok() {
            d.shared.failures.fetch_add(1, Ordering::Relaxed);
        }
        d.shared.record_logs(report);
        self.metrics.invocation_of(&d.metrics, report);
    }

    /// Messages waiting in an agent's mailbox (as its mailbox last counted them, plus those
    /// sent since).
    pub fn mailbox_pending(&self, tenant: &str, name: &str) -> Option<usize> {
        let counters = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        counters.get(&key(tenant, name)).map(|c| c.load(Ordering::Relaxed))
    }

    /// Queue `msg` in its mailbox and wake the mailbox.
    async fn post(&self, msg: &crate::registry::MessageRecord) -> Result<(), MessagingError> {
        let k = key(&msg.tenant, &msg.agent);
        let unavailable = |e: crate::store::StoreError| {
            tracing::warn!(tenant = %msg.tenant, agent = %msg.agent, error = %e, "cannot queue a message");
            MessagingError::Unavailable("storage is temporarily unavailable; retry later".into())
        };
        // Queued messages count in the tenant's stored bytes (checked in the write).
        let quota = match self.tenant(&msg.tenant).await {
            Ok(Some(t)) => crate::store::Quota { bytes: Some(t.quotas.stored_bytes), edges: None },
            Ok(None) => return Err(MessagingError::UnknownAgent(format!("no agent {:?} in this tenant", msg.agent))),
            Err(e) => {
                tracing::warn!(tenant = %msg.tenant, error = %e, "cannot read the tenant to queue a message");
                return Err(MessagingError::Unavailable("storage is temporarily unavailable; retry later".into()));
            }
        };
        let known = self.pending.lock().unwrap_or_else(PoisonError::into_inner).get(&k).cloned();
        let counter = match known {
            Some(c) => c,
            None => {
                // First message this node sends there (a stopped agent, or a fresh start):
                // count what waits in the store once.
                let prefix = mailbox::mailbox_prefix(&msg.tenant, &msg.agent);
                let n =
                    self.registry.store().record_list(RecordKind::Message, &prefix).await.map_err(unavailable)?.len();
                let mut counters = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let c = counters.entry(k.clone()).or_default();
                c.fetch_max(n, Ordering::Relaxed);
                c.clone()
            }
        };
        let max = self.mailbox_settings.max_pending;
        // Reserve the place first, so that concurrent senders cannot all pass the check.
        if counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_err() {
            return Err(MessagingError::Unavailable(format!(
                "the mailbox of {:?} is full ({max} messages); retry later",
                msg.agent
            )));
        }
        let fresh = match mailbox::enqueue(self.registry.store().as_ref(), msg, quota).await {
            Ok(fresh) => fresh,
            Err(crate::store::StoreError::QuotaExceeded(m)) => {
                counter.fetch_sub(1, Ordering::Relaxed);
                return Err(MessagingError::TooLarge(m));
            }
            Err(e) => {
                counter.fetch_sub(1, Ordering::Relaxed);
                return Err(unavailable(e));
            }
        };
        if fresh {
            self.metrics.message(&msg.tenant, "sent");
            if let Some(m) = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).get(&k) {
                m.wake();
            }
        } else {
            // The waiting copy holds the place already.
            counter.fetch_sub(1, Ordering::Relaxed);
            self.metrics.message(&msg.tenant, "deduplicated");
        }
        Ok(())
    }

    /// `messaging.call`: run `to`'s `handle(body)` within the caller's deadline.
    async fn call_agent(&self, from: &Caller, to: &str, body: &[u8]) -> Result<Option<Vec<u8>>, MessagingError> {
        if from.in_chain(to) {
            return Err(MessagingError::DepthExceeded);
        }
        if from.depth() >= self.config.messaging.max_call_depth as usize {
            return Err(MessagingError::DepthExceeded);
        }
        let d = self
            .agent(&from.tenant, to)
            .ok_or_else(|| MessagingError::UnknownAgent(format!("no agent {to:?} in this tenant")))?;
        if !Self::is_running(&d) {
            return Err(MessagingError::Unavailable(format!("agent {to:?} is stopped")));
        }
        let t = match self.tenant(&from.tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(MessagingError::UnknownAgent(format!("no agent {to:?} in this tenant"))),
            Err(e) => {
                tracing::warn!(tenant = %from.tenant, error = %e, "call: reading the tenant failed");
                return Err(MessagingError::Unavailable("storage is temporarily unavailable; retry later".into()));
            }
        };
        if std::time::Instant::now() >= from.deadline {
            return Err(MessagingError::DeadlineExceeded);
        }
        let quotas = &t.quotas;
        if t.limiter.take().is_err() {
            self.metrics.refused(&from.tenant, "rate_limited");
            return Err(MessagingError::Unavailable(format!(
                "over the tenant's {} invocations per second; retry later",
                quotas.invocations_per_second
            )));
        }
        let Some(_tenant_slot) = t.limiter.enter() else {
            self.metrics.refused(&from.tenant, "concurrency_quota");
            return Err(MessagingError::Unavailable(format!(
                "over the tenant's {} concurrent invocations; retry later",
                quotas.concurrent_invocations
            )));
        };
        let slot = tokio::time::timeout_at(from.deadline.into(), d.shared.pool.clone().acquire_owned()).await;
        let Ok(Ok(_slot)) = slot else { return Err(MessagingError::DeadlineExceeded) };
        let ctx = self.deployed_context_with(&d, quotas, from.chain_for_callee(), Some(from.deadline));
        let report =
            self.runtime.call(&d.module, &ctx, &self.limits_for(&d.record, quotas), Export::Handle(body)).await;
        self.account(&d, &report);
        match report.outcome {
            Outcome::Ok { output } => Ok(output),
            Outcome::AgentError { code, message } => Err(MessagingError::Agent(AgentError { code, message })),
            Outcome::DeadlineExceeded { .. } => Err(MessagingError::DeadlineExceeded),
            other => {
                Err(MessagingError::Agent(AgentError { code: other.code().to_owned(), message: other.to_string() }))
            }
        }
    }

    /// Whether any agent (of any tenant) runs `digest`; used before deleting a module.
    pub fn module_in_use(&self, tenant: &str, digest: &str) -> bool {
        self.agents.read().unwrap_or_else(PoisonError::into_inner).values().any(|d| {
            d.record.tenant == tenant
                && (d.record.module == digest || d.record.previous_module.as_deref() == Some(digest))
        })
    }

    /// Bring back every agent in the registry (after a restart), with the dispatchers of
    /// the watching ones.
    pub async fn restore(self: &Arc<Self>) -> ApiResult<usize> {
        let records = self.registry.store().record_list(RecordKind::Agent, "").await?;
        let mut n = 0;
        for (k, _) in records {
            let Some((record, rev)) = self.registry.get::<AgentRecord>(RecordKind::Agent, &k).await? else { continue };
            match self.module(&record.module).await {
                Ok(m) => {
                    self.install(record, rev, m);
                    n += 1;
                }
                Err(e) => tracing::error!(agent = %k, error = %e, "cannot restore agent"),
            }
        }
        Ok(n)
    }

    /// Agents of a tenant, by name.
    pub fn agents_of(&self, tenant: &str) -> BTreeMap<String, Arc<Deployed>> {
        self.agents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|d| d.record.tenant == tenant)
            .map(|d| (d.record.name.clone(), d.clone()))
            .collect()
    }

    /// Status of an agent as the API shows it.
    pub fn is_running(d: &Deployed) -> bool {
        d.record.status == AgentStatus::Running
    }
}

#[async_trait::async_trait]
impl Host for AppState {
    fn store(&self) -> Arc<dyn Store> {
        self.registry.store().clone()
    }

    async fn deliver(&self, tenant: &str, agent: &str, events: &[ChangeEvent]) -> Delivery {
        self.deliver_changes(tenant, agent, events).await
    }

    fn count(&self, tenant: &str, what: &'static str) {
        self.metrics.change_batch(tenant, what);
    }

    async fn deliver_message(&self, tenant: &str, agent: &str, body: &[u8]) -> Delivery {
        AppState::deliver_message(self, tenant, agent, body).await
    }

    fn count_message(&self, tenant: &str, agent: &str, what: &'static str) {
        self.metrics.message(tenant, what);
        if let Some(d) = self.agent(tenant, agent) {
            let c = match what {
                "delivered" => &d.shared.messages_delivered,
                "retried" => &d.shared.messages_retried,
                "dead_lettered" => &d.shared.messages_dead_lettered,
                _ => return,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The messenger invocations get: the state, held weakly so that it can be dropped.
struct Mesh(std::sync::Weak<AppState>);

impl Mesh {
    fn state(&self) -> Result<Arc<AppState>, MessagingError> {
        self.0.upgrade().ok_or_else(|| MessagingError::Unavailable("the host is shutting down".into()))
    }
}

#[async_trait::async_trait]
impl Messenger for Mesh {
    async fn send(
        &self,
        from: &Caller,
        to: &str,
        body: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> Result<(), MessagingError> {
        let st = self.state()?;
        if st.agent(&from.tenant, to).is_none() {
            return Err(MessagingError::UnknownAgent(format!("no agent {to:?} in this tenant")));
        }
        let msg = mailbox::new_message(&from.tenant, to, &from.agent, None, &body, idempotency_key.as_deref());
        st.post(&msg).await
    }

    async fn call(&self, from: &Caller, to: &str, body: Vec<u8>) -> Result<Option<Vec<u8>>, MessagingError> {
        self.state()?.call_agent(from, to, &body).await
    }

    async fn publish(&self, from: &Caller, topic: &str, body: Vec<u8>) -> Result<(), MessagingError> {
        let st = self.state()?;
        let subscribers: Vec<String> = st
            .agents_of(&from.tenant)
            .into_values()
            .filter(|d| d.record.subscriptions.iter().any(|t| t == topic))
            .map(|d| d.record.name.clone())
            .collect();
        // Every subscriber gets its copy even if another's mailbox refuses it; the first
        // refusal is reported.
        let mut first_error = None;
        for to in subscribers {
            let msg = mailbox::new_message(&from.tenant, &to, &from.agent, Some(topic), &body, None);
            if let Err(e) = st.post(&msg).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_older_than_a_forget_is_not_remembered() {
        let c = TtlCache::<u32>::default();
        c.remember("k", Some(Arc::new(1)), c.generation());
        assert_eq!(c.fresh("k").as_deref(), Some(&1));
        // A read starts, the record changes and is forgotten, then the read ends.
        let seen = c.generation();
        c.forget("k");
        c.remember("k", Some(Arc::new(1)), seen);
        assert_eq!(c.fresh("k"), None, "the stale record came back");
        // A read that starts after the change is remembered; nothing found is not.
        c.remember("k", Some(Arc::new(2)), c.generation());
        assert_eq!(c.fresh("k").as_deref(), Some(&2));
        c.remember("k", None, c.generation());
        assert_eq!(c.fresh("k"), None);
    }
}
