//! The lifecycle layer: the agents deployed on this node and everything that happens to
//! them. It owns the deployed agents ([`deployed`]), the modules they run ([`modules`]),
//! their deploy, config change, upgrade, rollback, stop, start and delete ([`lifecycle`]),
//! the resource profiles a deploy may name ([`profiles`]),
//! install, uninstall and restore at start ([`install`]), their logs kept in the store
//! ([`logbook`]), the one invoke core that HTTP
//! invocations, agent-to-agent calls and background deliveries share ([`invoke`]), those
//! deliveries ([`deliveries`]) and the messenger the `messaging` import calls
//! ([`messenger`]). The API above it authenticates, authorizes and maps [`AgentsError`] to
//! its responses.

pub mod deliveries;
pub mod deployed;
pub mod error;
mod gauges;
mod grant;
pub mod health;
pub mod install;
pub mod invoke;
pub mod lifecycle;
pub mod logbook;
pub mod messenger;
pub mod module_ref;
pub mod modules;
pub mod ownership;
pub mod pool;
pub mod profiles;
pub mod quota;
pub mod scheduler;
mod supervise;
pub mod tenants;
pub mod upload;
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock, Weak};

pub use self::deployed::{Deployed, Shared};
pub use self::error::{AgentsError, AgentsResult};
pub use self::lifecycle::DeploySpec;
pub use self::modules::Modules;
pub use self::profiles::ProfileSpec;
pub use self::tenants::{CachedTenant, Tenants};
pub use self::upload::{Label, Uploaded};
pub use self::view::AgentView;
use crate::capabilities::Messenger;
use crate::config::ServerConfig;
use crate::coordination::group_commit::{GroupCommit, GroupCommitSettings};
use crate::coordination::{DispatchSettings, Mailbox, MailboxSettings, Watcher};
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::telemetry::Metrics;

/// The agents of this node; shared by the API, the coordination tasks and the messenger.
pub struct Agents {
    config: Arc<ServerConfig>,
    runtime: Arc<Runtime>,
    registry: Registry,
    metrics: Arc<Metrics>,
    tenants: Arc<Tenants>,
    /// Uploaded modules, on disk and loaded.
    pub modules: Modules,
    deployed: deployed::DeployedMap,
    watchers: Mutex<HashMap<String, Watcher>>,
    dispatch: DispatchSettings,
    mailboxes: Mutex<HashMap<String, Mailbox>>,
    /// The mailbox sweep (see `install.rs`), started by [`Agents::restore`].
    sweep: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Messages waiting per agent, running or stopped (counted from the store once).
    pending: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    mailbox_settings: MailboxSettings,
    /// Writes the messages of concurrent senders in one transaction (group commit).
    message_writer: GroupCommit,
    mesh: OnceLock<Arc<dyn Messenger>>,
    no_callers: Arc<[Arc<str>]>,
    /// Itself, for what it starts in the background (an automatic rollback).
    this: OnceLock<Weak<Agents>>,
    /// Where the agents' logs are kept across restarts.
    logbook: Arc<logbook::LogBook>,
    /// This node in the cluster: membership, lease timing, registry stream position.
    cluster: Arc<crate::cluster::Cluster>,
    /// The leases of agents' background work this node holds, by `tenant/agent`.
    held: Mutex<HashMap<String, ownership::Held>>,
    /// When the lease loop last read every lease (see `ownership.rs`).
    lease_scan: Mutex<ownership::Scan>,
    /// The lease loop (see `ownership.rs`), started by [`Agents::restore`].
    owner_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Other per-tenant background work leased by the same loop (the workflow engine).
    work: OnceLock<Weak<dyn ownership::LeasedWork>>,
    /// Agents' outbound HTTP (replaced by [`Agents::set_egress`]).
    egress: std::sync::RwLock<Arc<crate::egress::Egress>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents").finish_non_exhaustive()
    }
}

impl Agents {
    /// No agent deployed yet (see [`Agents::restore`]); modules kept under
    /// `DATA/modules`.
    pub fn new(
        config: Arc<ServerConfig>,
        runtime: Arc<Runtime>,
        registry: Registry,
        metrics: Arc<Metrics>,
        tenants: Arc<Tenants>,
        secrets: Arc<dyn crate::egress::SecretSource>,
    ) -> AgentsResult<Self> {
        let modules = Modules::new(
            config.data_dir.join("modules"),
            config.engine.module_cache_bytes,
            runtime.clone(),
            registry.clone(),
        )?;
        let mailbox_settings = config.messaging.mailbox();
        let logbook = Arc::new(logbook::LogBook::new(registry.store().clone()));
        let id = crate::cluster::Cluster::node_id(&config.cluster, &config.data_dir)
            .map_err(|e| AgentsError::Internal(format!("cannot keep the node id in the data directory: {e}")))?;
        let address = if config.cluster.advertise.is_empty() {
            config.listen.to_string()
        } else {
            config.cluster.advertise.clone()
        };
        let cluster = Arc::new(crate::cluster::Cluster::new(id, address, config.cluster.clone()));
        let message_writer = GroupCommit::new(registry.store().clone(), GroupCommitSettings::default());
        let egress = crate::egress::Egress::new(config.egress.clone(), secrets)
            .map_err(|e| AgentsError::Invalid(e.to_string()))?;
        egress.register(metrics.prometheus());
        egress.attach(registry.clone(), cluster.id());
        Ok(Self {
            egress: std::sync::RwLock::new(Arc::new(egress)),
            config,
            runtime,
            registry,
            metrics,
            tenants,
            modules,
            deployed: deployed::DeployedMap::default(),
            watchers: Mutex::new(HashMap::new()),
            dispatch: DispatchSettings::default(),
            mailboxes: Mutex::new(HashMap::new()),
            sweep: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            mailbox_settings,
            message_writer,
            mesh: OnceLock::new(),
            no_callers: Arc::from([]),
            this: OnceLock::new(),
            logbook,
            cluster,
            held: Mutex::new(HashMap::new()),
            lease_scan: Mutex::default(),
            owner_task: Mutex::new(None),
            work: OnceLock::new(),
        })
    }

    /// The node's egress service.
    pub fn egress(&self) -> Arc<crate::egress::Egress> {
        self.egress.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Send agents' outbound requests through `egress` from now on (another secret source
    /// or resolver); its metrics are registered with the node's, its counts and audit
    /// events kept in the node's store.
    pub fn set_egress(&self, egress: Arc<crate::egress::Egress>) {
        egress.register(self.metrics.prometheus());
        egress.attach(self.registry.clone(), self.cluster.id());
        *self.egress.write().unwrap_or_else(std::sync::PoisonError::into_inner) = egress;
    }

    /// A deployed agent.
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Deployed>> {
        self.deployed.get(tenant, name)
    }

    /// A deployed agent, or `not_found`. One this node has not installed yet (a deploy
    /// through another node whose registry change is still on its way) is read from the
    /// store and installed first: any node answers for any agent at once.
    pub async fn find(self: &Arc<Self>, tenant: &str, name: &str) -> AgentsResult<Arc<Deployed>> {
        if let Some(d) = self.get(tenant, name) {
            return Ok(d);
        }
        self.refresh(tenant, name).await?;
        self.get(tenant, name).ok_or_else(|| AgentsError::NotFound(format!("agent {name:?} not found")))
    }

    /// Agents of a tenant, by name.
    pub fn of(&self, tenant: &str) -> std::collections::BTreeMap<String, Arc<Deployed>> {
        self.deployed.of(tenant)
    }

    /// Whether any agent of `tenant` runs `digest` (or keeps it to roll back to); used
    /// before deleting a module.
    pub fn module_in_use(&self, tenant: &str, digest: &str) -> bool {
        self.deployed.uses_module(tenant, digest)
    }
}
