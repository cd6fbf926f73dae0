//! Egress: agents' outbound HTTP through `wasi:http/outgoing-handler`, held to the grants of
//! their deploy spec, to the address rules, to per-request and per-invocation limits and to
//! the tenant's egress quotas and daily token budget.
//!
//! The host implements `wasi:http`'s `send_request` hook ([`hooks::EgressHooks`]): every
//! request is matched against the agent's grants ([`grant`]), its host name resolved through
//! a [`Resolver`] and every address checked ([`addr`]) before the host connects to that
//! checked address itself; the grant's secret is put in its header on the way out (the
//! guest's own value of that header is dropped, and the secret never reaches the guest);
//! response bodies stream through a counter, a size limit, the invocation's deadline and,
//! for metered grants, the token scanner ([`meter`]). Redirects are returned to the guest
//! as they are (the request it makes next is checked like any other), unless the grant says
//! `"redirects": "follow"`: then the host follows them itself, only to targets the same
//! grant allows, resolving and checking the addresses again on every hop.
//!
//! Each request leaves one log record (target `cortex::egress`: tenant, agent, method,
//! host, path without query, status, bytes, duration; never headers or bodies) and metrics.
//! Each denied one also leaves an audit event (`egress_denied`: destination without query,
//! method, reason code), at most `[egress] audit_denials_per_minute` per agent a minute (see
//! [`audit`]).
//!
//! The daily byte and token counts are kept in the store ([`Egress::flush`], every
//! heartbeat): they hold across restarts and add up over the cluster (see `budget`).

pub mod addr;
mod audit;
mod budget;
pub mod grant;
pub mod hooks;
pub mod meter;
mod send;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use self::addr::{Net, Resolver, StaticResolver, SystemResolver};
pub use self::budget::{EgressQuotas, EgressUsage};
pub use self::grant::{EgressGrant, Grant, GrantError, Meter, Prefix, check_grants, parse_allow_list};
pub use self::hooks::EgressHooks;
pub use self::meter::{Usage, UsageScanner};

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    /// The secret store failed (not the agent's fault).
    #[error("the secret store is unavailable: {0}")]
    Unavailable(String),
}

/// A future of [`SecretSource::reveal`].
pub type Reveal<'a> = Pin<Box<dyn Future<Output = Result<Option<Zeroizing<String>>, SecretSourceError>> + Send + 'a>>;

/// Where the egress path gets the value of a tenant's secret. The vault implements it.
pub trait SecretSource: Send + Sync + 'static {
    /// The secret's value, or None when the tenant has no secret of that name.
    fn reveal<'a>(&'a self, tenant: &'a str, name: &'a str) -> Reveal<'a>;
}

/// Secrets held in memory, by tenant and name (benches and embedders without a vault).
#[derive(Default)]
pub struct MemorySecrets(Mutex<HashMap<(String, String), Zeroizing<String>>>);

impl std::fmt::Debug for MemorySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemorySecrets(..)")
    }
}

impl MemorySecrets {
    /// Set `tenant`'s secret `name`.
    pub fn put(&self, tenant: &str, name: &str, value: &str) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.insert((tenant.to_owned(), name.to_owned()), Zeroizing::new(value.to_owned()));
    }
}

impl SecretSource for MemorySecrets {
    fn reveal<'a>(&'a self, tenant: &'a str, name: &'a str) -> Reveal<'a> {
        let found =
            self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&(tenant.to_owned(), name.to_owned())).cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// `[egress]`: the limits of agents' outbound HTTP.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Networks excepted from the private-address rules (`["127.0.0.1/32"]` for a test
    /// server on loopback). Empty by default: no loopback, private, link-local, CGNAT,
    /// multicast or metadata address is reachable.
    pub allow_private: Vec<String>,
    /// Longest connect (DNS, TCP and TLS), in milliseconds; always within the invocation's
    /// deadline.
    pub connect_timeout_ms: u64,
    /// Longest request, from its start to the end of its response body, in milliseconds;
    /// always within the invocation's deadline.
    pub request_timeout_ms: u64,
    /// Largest request body, in bytes.
    pub max_request_bytes: u64,
    /// Largest response body, in bytes.
    pub max_response_bytes: u64,
    /// Most header fields of a request or response.
    pub max_headers: usize,
    /// Largest header section (names and values) of a request or response, in bytes.
    pub max_header_bytes: usize,
    /// Outbound requests one invocation may have open at once.
    pub max_concurrent: usize,
    /// Most redirects the host follows for one request of a grant with
    /// `"redirects": "follow"`; one more fails the request with `loop-detected`.
    pub max_redirects: u32,
    /// A PEM file of CA certificates trusted for https in addition to the webpki roots (a
    /// corporate proxy's CA, a test CA). None by default.
    pub extra_ca_file: Option<std::path::PathBuf>,
    /// Audit events of denied outbound requests per agent per minute; the denials past it
    /// are counted and the count is written in the agent's next denial event (or in a
    /// summary event when the minute is over).
    pub audit_denials_per_minute: u32,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            allow_private: Vec::new(),
            connect_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
            max_request_bytes: 8 << 20,
            max_response_bytes: 32 << 20,
            max_headers: 64,
            max_header_bytes: 32 << 10,
            max_concurrent: 8,
            max_redirects: 5,
            extra_ca_file: None,
            audit_denials_per_minute: 10,
        }
    }
}

/// Why the egress service could not start.
#[derive(Debug, thiserror::Error)]
#[error("[egress]: {0}")]
pub struct EgressConfigError(pub String);

/// The node's egress service: configuration, resolver, secrets, TLS, quotas and metrics.
pub struct Egress {
    config: EgressConfig,
    allow: Vec<Net>,
    resolver: Arc<dyn Resolver>,
    secrets: Arc<dyn SecretSource>,
    tls: tokio_rustls::TlsConnector,
    budget: budget::Budget,
    metrics: EgressMetrics,
    denials: audit::DenialLog,
    backing: std::sync::OnceLock<Backing>,
    /// Whether this node's own counts of today were read back from the store.
    restored: std::sync::atomic::AtomicBool,
}

/// Where the service keeps its counts and writes its audit events.
#[derive(Clone, Debug)]
struct Backing {
    registry: crate::registry::Registry,
    node: String,
}

/// Prefix of the daily egress counter records (`egress/<tenant>/<day>/<node>`).
const COUNTER_PREFIX: &str = "egress/";

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Egress {
    /// A service with `config`, reading secrets from `secrets`, resolving names with the
    /// system's resolver and trusting the webpki roots.
    pub fn new(config: EgressConfig, secrets: Arc<dyn SecretSource>) -> Result<Self, EgressConfigError> {
        let allow = config
            .allow_private
            .iter()
            .map(|s| s.parse::<Net>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EgressConfigError(format!("allow_private: {e}")))?;
        let mut roots = tokio_rustls::rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
        if let Some(path) = &config.extra_ca_file {
            use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
            let pem =
                std::fs::read(path).map_err(|e| EgressConfigError(format!("extra_ca_file {}: {e}", path.display())))?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| EgressConfigError(format!("extra_ca_file {}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| EgressConfigError(format!("extra_ca_file {}: {e}", path.display())))?;
                added += 1;
            }
            if added == 0 {
                return Err(EgressConfigError(format!("extra_ca_file {}: no certificate", path.display())));
            }
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EgressConfigError(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            denials: audit::DenialLog::new(config.audit_denials_per_minute),
            config,
            allow,
            resolver: Arc::new(SystemResolver),
            secrets,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            budget: budget::Budget::default(),
            metrics: EgressMetrics::new(),
            backing: std::sync::OnceLock::new(),
            restored: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Resolve names with `resolver` instead of the system's (tests: DNS rebinding).
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &EgressConfig {
        &self.config
    }

    /// Share the tenants' egress quotas among `n` live nodes (as the invocation quotas):
    /// this node enforces `ceil(quota / n)` of each.
    pub fn set_nodes(&self, n: u32) {
        self.budget.set_nodes(n);
    }

    /// Register the egress metrics in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) {
        self.metrics.register(registry);
    }

    /// What `tenant` and its `agent` used today.
    pub fn usage(&self, tenant: &str, agent: &str) -> EgressUsage {
        self.budget.usage(tenant, agent)
    }

    /// Forget a deleted tenant's egress: this node's counts of it, and its daily counter
    /// records (every node's), so that a later tenant of the name starts with a whole
    /// budget.
    pub async fn forget_tenant(&self, tenant: &str) -> Result<(), crate::store::StoreError> {
        self.budget.forget(tenant);
        let Some(b) = self.backing.get() else { return Ok(()) };
        let kind = crate::store::RecordKind::Counter;
        let store = b.registry.store();
        let prefix = format!("{COUNTER_PREFIX}{tenant}/");
        let keys: Vec<String> = store.record_list(kind, &prefix).await?.into_iter().map(|(k, _)| k).collect();
        if !keys.is_empty() {
            store.record_delete_many(kind, &keys).await?;
        }
        Ok(())
    }

    /// Keep the daily counts in `registry`'s store as node `node`, and write audit events
    /// there (once; later calls change nothing). Without it the counts live in memory and
    /// denials are not audited.
    pub fn attach(&self, registry: crate::registry::Registry, node: &str) {
        let _ = self.backing.set(Backing { registry, node: node.to_owned() });
    }

    /// Audit a denied request of `agent` of `tenant` (within the per-agent bound; in the
    /// background: the request path does not wait for the store).
    fn audit_denial(&self, tenant: &str, agent: &str, method: &str, target: &str, reason: &str) {
        let Some(b) = self.backing.get() else { return };
        let Some(suppressed) = self.denials.admit(tenant, agent, std::time::Instant::now()) else { return };
        let mut detail = format!("reason={reason} method={method}");
        if suppressed > 0 {
            detail.push_str(&format!(" suppressed={suppressed}"));
        }
        let event = denial_event(tenant, agent, "egress_denied", target.to_owned(), detail);
        let registry = b.registry.clone();
        tokio::spawn(async move { write_audit(&registry, event).await });
    }

    /// The periodic flush (every heartbeat): write this node's changed daily counts, read the
    /// other nodes' (the first flush also takes this node's own counts of today back, after
    /// a restart), delete the records of earlier days, and write the summaries of audit
    /// windows that ended with denials left unwritten.
    pub async fn flush(&self) {
        self.flush_with(false).await;
    }

    /// The last flush, at shutdown: as [`Egress::flush`], every audit window ended.
    pub async fn close(&self) {
        self.flush_with(true).await;
    }

    async fn flush_with(&self, all: bool) {
        let Some(b) = self.backing.get() else { return };
        for (tenant, agent, n) in self.denials.drain(std::time::Instant::now(), all) {
            let event = denial_event(
                &tenant,
                &agent,
                "egress_denied_suppressed",
                format!("/v1/agents/{agent}"),
                format!("suppressed={n}"),
            );
            write_audit(&b.registry, event).await;
        }
        if let Err(e) = self.flush_counts(b).await {
            tracing::warn!(target: "cortex::egress", error = %e, "flushing the daily egress counts failed");
        }
    }

    async fn flush_counts(&self, b: &Backing) -> Result<(), crate::store::StoreError> {
        use std::sync::atomic::Ordering;
        let kind = crate::store::RecordKind::Counter;
        let store = b.registry.store();
        let day = budget::today();
        let rows = store.record_list(kind, COUNTER_PREFIX).await?;
        let mut others: HashMap<String, budget::DayCount> = HashMap::new();
        let mut old = Vec::new();
        let first = !self.restored.load(Ordering::Acquire);
        for (key, value) in rows {
            // egress/<tenant>/<day>/<node>
            let mut it = key[COUNTER_PREFIX.len()..].splitn(3, '/');
            let (Some(tenant), Some(d), Some(node)) = (it.next(), it.next(), it.next()) else { continue };
            let Ok(d) = d.parse::<u64>() else { continue };
            if d < day {
                old.push(key.clone());
                continue;
            }
            if d != day {
                continue;
            }
            let Ok(count) = serde_json::from_slice::<budget::DayCount>(&value) else { continue };
            if node == b.node {
                if first {
                    self.budget.restore_own(tenant, &count);
                }
            } else {
                others.entry(tenant.to_owned()).or_default().add(&count);
            }
        }
        self.restored.store(true, Ordering::Release);
        self.budget.set_others(others);
        for (tenant, count) in self.budget.take_dirty(day) {
            let key = format!("{COUNTER_PREFIX}{tenant}/{day}/{}", b.node);
            let value = serde_json::to_vec(&count).unwrap_or_default();
            if let Err(e) = store.record_put(kind, &key, value, None).await {
                self.budget.mark_dirty(&tenant);
                return Err(e);
            }
        }
        if !old.is_empty() {
            store.record_delete_many(kind, &old).await?;
        }
        Ok(())
    }
}

/// An audit event of the host about `agent`'s outbound requests.
fn denial_event(
    tenant: &str,
    agent: &str,
    action: &str,
    target: String,
    detail: String,
) -> crate::registry::AuditEvent {
    crate::registry::AuditEvent {
        seq: 0,
        time_ms: crate::registry::now_ms(),
        actor: format!("agent:{agent}"),
        tenant: tenant.to_owned(),
        tenant_id: String::new(),
        action: action.to_owned(),
        target,
        outcome: 0,
        detail,
    }
}

/// Append `event`, in its tenant's own log too when the tenant exists.
async fn write_audit(registry: &crate::registry::Registry, event: crate::registry::AuditEvent) {
    if let Err(e) = registry.audit_in_tenant(event).await {
        tracing::error!(target: "cortex::egress", error = %e, "cannot append an audit event");
    }
}

/// What an invocation's `wasi:http` reaches: the service, the agent's grants and its
/// tenant's egress quotas.
#[derive(Clone)]
pub struct EgressLink {
    /// The node's service.
    pub service: Arc<Egress>,
    /// The agent's grants (empty: every request is denied).
    pub grants: Arc<[Grant]>,
    /// The tenant's egress quotas.
    pub quotas: EgressQuotas,
    /// The tenant's allow-list as it is now (None: none set): a request, and every hop of a
    /// followed redirect, must be within it as well as within a grant, so that narrowing
    /// the list takes effect for agents deployed before it at once.
    pub allow: Option<Arc<[Prefix]>>,
}

impl std::fmt::Debug for EgressLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressLink").field("grants", &self.grants.len()).finish_non_exhaustive()
    }
}

/// The egress metrics.
#[derive(Clone)]
struct EgressMetrics {
    requests: prometheus::IntCounterVec,
    bytes: prometheus::IntCounterVec,
    tokens: prometheus::IntCounterVec,
}

impl EgressMetrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels)
                .unwrap_or_else(|_| unreachable_metric())
        };
        Self {
            requests: counter(
                "cortex_egress_requests_total",
                "Outbound requests of agents, by tenant, agent, host (\"-\" for requests no grant allows) and status (the HTTP status, or why it failed: denied, address_denied, timeout, quota, ...).",
                &["tenant", "agent", "host", "status"],
            ),
            bytes: counter(
                "cortex_egress_bytes_total",
                "Body bytes of agents' outbound requests, by direction (sent, received).",
                &["tenant", "agent", "direction"],
            ),
            tokens: counter(
                "cortex_egress_tokens_total",
                "Model tokens counted in metered responses, by kind (prompt, completion).",
                &["tenant", "agent", "kind"],
            ),
        }
    }

    fn register(&self, r: &prometheus::Registry) {
        let _ = r.register(Box::new(self.requests.clone()));
        let _ = r.register(Box::new(self.bytes.clone()));
        let _ = r.register(Box::new(self.tokens.clone()));
    }
}

/// The metric definitions above are constants: they cannot fail.
fn unreachable_metric() -> prometheus::IntCounterVec {
    #[allow(clippy::unwrap_used)]
    prometheus::IntCounterVec::new(prometheus::Opts::new("cortex_egress_invalid", "never"), &["x"]).unwrap()
}
