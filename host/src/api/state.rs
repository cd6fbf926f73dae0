//! Shared state of the API: a short list of handles (configuration, registry, tenants,
//! agents, runtime, metrics, credentials), and the claims and locks that serialize tenant
//! and dead-letter operations on this node. The agents and everything that happens to them
//! live in [`crate::agents`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::auth::Verifier;
use super::error::ApiResult;
pub use crate::agents::CachedTenant;
use crate::agents::tenants::TtlCache;
use crate::agents::{Agents, Tenants};
use crate::config::ServerConfig;
use crate::registry::Registry;
pub use crate::runtime::LogLine;
use crate::runtime::Runtime;
use crate::store::{RecordKind, Store};
use crate::telemetry::Metrics;

/// Everything a handler needs.
pub struct AppState {
    /// Server configuration.
    pub config: Arc<ServerConfig>,
    /// The sandbox.
    pub runtime: Arc<Runtime>,
    /// Registry over the store.
    pub registry: Registry,
    /// Token verification.
    pub verifier: Verifier,
    /// Tenant records (cached) and their rate limiters and concurrency caps.
    pub tenants: Arc<Tenants>,
    /// The deployed agents, their modules, invocations and deliveries.
    pub agents: Arc<Agents>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Workflow definitions and runs, and this node's workflow engines.
    pub workflows: Arc<crate::workflows::Workflows>,
    /// The tenants' secrets (see [`crate::vault`]).
    pub vault: Arc<crate::vault::Vault>,
    tenant_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Dead letters being replayed on this node, by record key.
    replaying: ClaimSet,
    /// Tenant names being created or deleted on this node (see [`AppState::claim_tenant_name`]).
    tenant_names: ClaimSet,
    /// API keys found in the store, by id (revocations on this node forget them at once).
    api_keys: TtlCache<crate::registry::ApiKeyRecord>,
    /// Moved on whenever this node changes a key or a tenant: open streams check again.
    credentials: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Keys held on this node by one holder at a time (dead letters being replayed, tenant
/// names being created or deleted).
#[derive(Default)]
struct ClaimSet(Arc<Mutex<std::collections::HashSet<String>>>);

impl ClaimSet {
    /// Claim `key`; `None` while another holder has it. The claim ends when the guard drops.
    fn claim(&self, key: &str) -> Option<Claim> {
        let fresh = self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_owned());
        fresh.then(|| Claim { set: self.0.clone(), key: key.to_owned() })
    }
}

/// A key held in a [`ClaimSet`] until this is dropped.
pub struct Claim {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

impl AppState {
    /// Build the state; `agents.restore` then brings back deployed agents. The secrets
    /// keys come from `config.secrets` and `CORTEX_SECRETS_KEY` (see [`Self::with_keys`]).
    pub fn new(config: ServerConfig, runtime: Runtime, store: Arc<dyn Store>, verifier: Verifier) -> ApiResult<Self> {
        let env_key = std::env::var(crate::vault::KEY_ENV).ok();
        let keys = crate::vault::Keyring::load(&config.secrets, &config.data_dir, env_key.as_deref())
            .map_err(|e| super::ApiError::Internal(e.to_string()))?;
        Self::with_keys(config, runtime, store, verifier, keys)
    }

    /// [`Self::new`] with the secrets keys given.
    pub fn with_keys(
        config: ServerConfig,
        runtime: Runtime,
        store: Arc<dyn Store>,
        verifier: Verifier,
        keys: crate::vault::Keyring,
    ) -> ApiResult<Self> {
        let config = Arc::new(config);
        let runtime = Arc::new(runtime);
        let metrics = Arc::new(Metrics::new(config.metrics.max_agent_labels));
        let m = metrics.clone();
        runtime.observe_loads(Box::new(move |from_cache, took| m.module_loaded(from_cache, took)));
        let latency = metrics.store_latency();
        let observe: crate::store::Observer =
            Arc::new(move |op, d: Duration| latency.with_label_values(&[op]).observe(d.as_secs_f64()));
        let m = metrics.clone();
        let count: crate::store::CountObserver =
            Arc::new(move |kind, tenant, delta| m.records_changed(kind, tenant, delta));
        let store: Arc<dyn Store> = Arc::new(crate::store::Instrumented::new(store, observe).counting(count));
        let vault = Arc::new(crate::vault::Vault::new(store.clone(), keys, &config.secrets));
        let registry = Registry::new(store);
        let tenants = Arc::new(Tenants::new(registry.clone(), config.scheduling.guests));
        let agents = Arc::new(Agents::new(
            config.clone(),
            runtime.clone(),
            registry.clone(),
            metrics.clone(),
            tenants.clone(),
            vault.clone(),
        )?);
        let workflows = crate::workflows::Workflows::new(registry.clone(), agents.clone(), tenants.clone());
        Ok(Self {
            config,
            runtime,
            registry,
            verifier,
            tenants,
            agents,
            metrics,
            workflows,
            vault,
            tenant_locks: Mutex::new(HashMap::new()),
            replaying: ClaimSet::default(),
            tenant_names: ClaimSet::default(),
            api_keys: TtlCache::default(),
            credentials: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A tenant record and its limiter, from a short-lived cache (see [`crate::agents::tenants::TENANT_TTL`]) or
    /// the registry.
    pub async fn tenant(&self, name: &str) -> ApiResult<Option<Arc<CachedTenant>>> {
        Ok(self.tenants.get(name).await?)
    }

    /// An API key's record, from a short-lived cache (see [`crate::agents::tenants::TENANT_TTL`]) or the registry:
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
    pub fn claim_replay(&self, key: &str) -> Option<Claim> {
        self.replaying.claim(key)
    }

    /// Claim the tenant name `name` while a tenant of that name is created or deleted on this
    /// node; `None` while another creation or deletion of it runs. A deletion keeps the claim
    /// until everything of the old tenant is gone: its clean-up goes by name, so a tenant
    /// created again meanwhile would lose its keys, agents, modules and documents to it.
    pub fn claim_tenant_name(&self, name: &str) -> Option<Claim> {
        self.tenant_names.claim(name)
    }
}
