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

pub mod addr;
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
pub use self::grant::{EgressGrant, Grant, GrantError, Meter, check_grants, parse_allow_list};
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
}

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
            config,
            allow,
            resolver: Arc::new(SystemResolver),
            secrets,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            budget: budget::Budget::default(),
            metrics: EgressMetrics::new(),
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
