//! Server configuration: typed TOML, unknown keys refused, environment overrides.
//!
//! Any key can be overridden from the environment as `CORTEX_CFG__SECTION__KEY=value`
//! (the value is read as TOML, or as a string when it is not valid TOML), e.g.
//! `CORTEX_CFG__HTTP__BODY_LIMIT_BYTES=2097152`. `CORTEX_LISTEN` and `CORTEX_DATA` are
//! shortcuts for `listen` and `data_dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::registry::Quotas;
use crate::runtime::{EngineConfig, Limits};

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or wrong types.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything `cortex serve` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory: store, modules, compiled artifacts, secrets.
    pub data_dir: PathBuf,
    /// HTTP limits and timeouts.
    pub http: HttpConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// The wasmtime engine.
    pub engine: EngineConfig,
    /// Default limits of an agent's invocations (tenant quotas cap them).
    pub limits: Limits,
    /// Quotas of a new tenant unless its creation says otherwise.
    pub quotas: Quotas,
    /// Metrics.
    pub metrics: MetricsConfig,
    /// Where documents and registry records live.
    pub store: StoreConfig,
    /// Messages between agents.
    pub messaging: MessagingConfig,
    /// Guests running at once on this node and their fair share.
    pub scheduling: SchedulingConfig,
    /// Module uploads.
    pub modules: ModulesConfig,
    /// Deploys from OCI registries (`"module": "oci://..."`).
    pub oci: OciConfig,
    /// Several nodes on one store: membership and leases.
    pub cluster: crate::cluster::ClusterConfig,
    /// The host's own logs.
    pub log: LogConfig,
    /// The audit log's retention.
    pub audit: AuditConfig,
    /// The tenants' secret store: its key and limits.
    pub secrets: crate::vault::SecretsConfig,
    /// Agents' outbound HTTP: address exceptions, timeouts and size limits.
    pub egress: crate::egress::EgressConfig,
    /// OpenTelemetry trace export (off unless `telemetry.endpoint` is set).
    pub telemetry: crate::telemetry::otel::TelemetryConfig,
}

/// `[audit]`: how long the audit log keeps events.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this many days are deleted in the background, oldest first (0:
    /// kept forever). The newest event of each log is always kept.
    pub retention_days: u64,
    /// How often the background pruning runs, in milliseconds.
    pub prune_interval_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { retention_days: 0, prune_interval_ms: 3_600_000 }
    }
}

/// `[log]`: the host's own logs (on stderr).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (for people) or `json` (one object a line, for log shippers).
    pub format: LogFormat,
    /// A filter directive (`info`, `warn,cortex_host::api=debug`); `RUST_LOG` (or
    /// `CORTEX_LOG`) overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "warn".into() }
    }
}

/// The format of the host's logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// `[modules]`: how uploads are compiled.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    /// An upload larger than this many bytes answers 202 at once with the module in status
    /// `compiling` and compiles in the background; smaller ones compile before the answer.
    pub async_compile_bytes: usize,
}

impl Default for ModulesConfig {
    fn default() -> Self {
        Self { async_compile_bytes: 1 << 20 }
    }
}

/// `[oci]`: the registries tenants may deploy from. None by default: a server reaches no
/// registry until its operator lists one (a deploy names the host the server connects to).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciConfig {
    /// Registries (`host` or `host:port`, as in references) pulled from over https.
    pub allowed_registries: Vec<String>,
    /// Registries pulled from over plain http (trusted networks, tests); allowed too.
    pub insecure_registries: Vec<String>,
    /// Largest manifest read, in bytes (the component is limited by
    /// `http.module_limit_bytes`, as an upload is).
    pub max_manifest_bytes: u64,
    /// Connecting to a registry gives up after this, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Each request to a registry (with its body) gives up after this, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for OciConfig {
    fn default() -> Self {
        Self {
            allowed_registries: Vec::new(),
            insecure_registries: Vec::new(),
            max_manifest_bytes: 256 << 10,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
        }
    }
}

/// `[scheduling]`: how many guests run at once on this node; the others wait in per-tenant
/// queues served in weighted fair order (see [`crate::agents::scheduler`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// Guests running at once; 0: one per core.
    pub guests: u32,
}

/// The storage backend: `[store] type = "embedded"` (default) or `"arangodb"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A redb file in the data directory. A struct variant (with no fields), so that
    /// `deny_unknown_fields` refuses a misspelled key under `[store]`: a unit variant of an
    /// internally tagged enum would accept and ignore it.
    Embedded {},
    /// An ArangoDB server or cluster.
    Arangodb(ArangoConfig),
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Embedded {}
    }
}

/// Connection to ArangoDB.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArangoConfig {
    /// Base URL, e.g. `http://127.0.0.1:8529`.
    pub url: String,
    /// Database name (created if missing when the user may).
    #[serde(default = "default_arango_db")]
    pub database: String,
    /// User name.
    #[serde(default = "default_arango_user")]
    pub username: String,
    /// File holding the password (never the password itself in config).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Connect timeout in milliseconds.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Request timeout in milliseconds.
    #[serde(default = "default_request_ms")]
    pub request_timeout_ms: u64,
}

fn default_arango_db() -> String {
    "cortex".into()
}
fn default_arango_user() -> String {
    "root".into()
}
fn default_connect_ms() -> u64 {
    2_000
}
fn default_request_ms() -> u64 {
    10_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(".cortex"),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            engine: EngineConfig::default(),
            limits: Limits::default(),
            quotas: Quotas::default(),
            metrics: MetricsConfig::default(),
            store: StoreConfig::default(),
            messaging: MessagingConfig::default(),
            scheduling: SchedulingConfig::default(),
            modules: ModulesConfig::default(),
            oci: OciConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            log: LogConfig::default(),
            audit: AuditConfig::default(),
            secrets: crate::vault::SecretsConfig::default(),
            egress: crate::egress::EgressConfig::default(),
            telemetry: crate::telemetry::otel::TelemetryConfig::default(),
        }
    }
}

/// HTTP limits and timeouts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest JSON or invocation body, in bytes.
    pub body_limit_bytes: usize,
    /// Largest module upload, in bytes.
    pub module_limit_bytes: usize,
    /// How long a connection may go without a request in progress or a response going
    /// out: a client that sends its headers too slowly, a keep-alive connection left idle,
    /// or a reader that stopped reading is closed after this (checked four times per
    /// period, so within 1.25 times it).
    pub header_timeout_ms: u64,
    /// Time a whole request may take, body read included; an invocation ends by then
    /// (504 `deadline_exceeded`) even if its own timeout is longer.
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Lines of log kept per agent (in memory and in the store).
    pub log_ring_lines: usize,
    /// Bytes of log kept per agent (text and fields plus about 120 bytes a line); the oldest
    /// lines go first, a longer single line is cut.
    pub log_ring_bytes: usize,
    /// Connections served at once; past it the server accepts no more until one closes
    /// (they wait in the listen backlog).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1 << 20,
            module_limit_bytes: 64 << 20,
            header_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            log_ring_lines: 1000,
            log_ring_bytes: 1 << 20,
            max_connections: 10_000,
        }
    }
}

/// Token verification. Exactly one algorithm is accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `HS256` (development; a secret is created in the data dir on first start),
    /// `RS256`, `ES256` or `EdDSA` (public keys from `public_key_file` or `jwks_file`).
    pub algorithm: String,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// HS256 secret file (default: `<data_dir>/jwt-hs256.secret`).
    pub secret_file: Option<PathBuf>,
    /// PEM public key for RS256/ES256/EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// JWKS file; tokens must then carry a `kid` found in it.
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp`, in seconds.
    pub leeway_seconds: u64,
    /// OpenID Connect issuers (`[[auth.oidc]]`), beside the keys above: a token whose `iss`
    /// is one of them is verified with that issuer's published keys.
    pub oidc: Vec<OidcIssuerConfig>,
}

/// `[[auth.oidc]]`: one OpenID Connect issuer whose tokens Cortex accepts, and how its
/// claims map to a Cortex principal.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcIssuerConfig {
    /// The issuer URL: tokens must carry it as `iss`, and its discovery document is at
    /// `<issuer>/.well-known/openid-configuration` (https, or http on a loopback address).
    pub issuer: String,
    /// Required `aud` (a string, or an array holding it).
    pub audience: String,
    /// Signature algorithms accepted (of `RS256`, `RS384`, `RS512`, `PS256`, `PS384`,
    /// `PS512`, `ES256`, `ES384`, `EdDSA`).
    pub algorithms: Vec<String>,
    /// The claim naming the caller (a top-level claim, or a dotted path into nested
    /// objects such as `realm_access.roles`; a claim whose whole name has dots, like an
    /// Auth0 namespaced claim, is found first).
    pub subject_claim: String,
    /// The claim holding the tenant, if any.
    pub tenant_claim: Option<String>,
    /// The claim holding a Cortex role name (a string, or an array: the strongest known
    /// role in it counts), if any.
    pub role_claim: Option<String>,
    /// The claim holding the caller's groups (or app roles), mapped by `groups`.
    pub groups_claim: Option<String>,
    /// Groups to roles and tenants: the strongest role of the caller's mapped groups wins.
    pub groups: Vec<OidcGroupMapping>,
    /// How often the keys are fetched again in the background, in milliseconds.
    pub refresh_interval_ms: u64,
    /// At most one fetch of the keys this often for tokens of an unknown `kid`, and the
    /// retry delay after a failed fetch, in milliseconds.
    pub min_refresh_interval_ms: u64,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Timeout of one request to the issuer, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for OidcIssuerConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            subject_claim: "sub".into(),
            tenant_claim: None,
            role_claim: None,
            groups_claim: None,
            groups: Vec::new(),
            refresh_interval_ms: 300_000,
            min_refresh_interval_ms: 10_000,
            leeway_seconds: 60,
            request_timeout_ms: 5_000,
        }
    }
}

/// `[[auth.oidc.groups]]`: members of `group` get `role`, in `tenant` when given (else in
/// the tenant of the issuer's `tenant_claim`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcGroupMapping {
    /// The group (a value of the `groups_claim`).
    pub group: String,
    /// The Cortex role its members get.
    pub role: String,
    /// The tenant its members act in.
    #[serde(default)]
    pub tenant: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            issuer: "cortex".into(),
            audience: "cortex-api".into(),
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            leeway_seconds: 30,
            oidc: Vec::new(),
        }
    }
}

/// Metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Distinct agent label values before the rest fold into `other`.
    pub max_agent_labels: usize,
    /// A file holding the bearer token `/metrics` then requires (its labels name every
    /// tenant and agent); unset, `/metrics` is open.
    pub token_file: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { max_agent_labels: 200, token_file: None }
    }
}

/// Messages between agents: call depth, mailbox retries and bounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingConfig {
    /// Deepest chain of `call`s (the invocation from outside counts as 1).
    pub max_call_depth: u32,
    /// Deliveries of a message before it becomes a dead letter.
    pub attempts: u32,
    /// Wait before the first retry of a failed delivery (ms); doubled for each further one.
    pub backoff_ms: u64,
    /// Longest wait between retries (ms).
    pub max_backoff_ms: u64,
    /// How often the node's mailbox sweep reads every mailbox, to start the delivery of
    /// messages written by another node (ms).
    pub idle_poll_ms: u64,
    /// How long a delivered idempotency key is remembered (s).
    pub idempotency_window_s: u64,
    /// Messages one mailbox may hold before sends to it are refused.
    pub max_pending: usize,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        let d = crate::coordination::MailboxSettings::default();
        Self {
            max_call_depth: 8,
            attempts: d.attempts,
            backoff_ms: d.backoff.as_millis() as u64,
            max_backoff_ms: d.max_backoff.as_millis() as u64,
            idle_poll_ms: d.idle_poll.as_millis() as u64,
            idempotency_window_s: d.idempotency_window.as_secs(),
            max_pending: d.max_pending,
        }
    }
}

impl MessagingConfig {
    /// The mailbox settings these values make.
    pub fn mailbox(&self) -> crate::coordination::MailboxSettings {
        use std::time::Duration;
        crate::coordination::MailboxSettings {
            attempts: self.attempts.max(1),
            backoff: Duration::from_millis(self.backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms.max(self.backoff_ms)),
            idle_poll: Duration::from_millis(self.idle_poll_ms.max(10)),
            idempotency_window: Duration::from_secs(self.idempotency_window_s),
            max_pending: self.max_pending.max(1),
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

impl ServerConfig {
    /// Read `file` (if any), then apply overrides from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (k, v) in env {
            let path: Vec<String> = match k.as_str() {
                "CORTEX_LISTEN" => vec!["listen".into()],
                "CORTEX_DATA" => vec!["data_dir".into()],
                _ => match k.strip_prefix("CORTEX_CFG__") {
                    Some(rest) => rest.split("__").map(str::to_ascii_lowercase).collect(),
                    None => continue,
                },
            };
            let value = if path.len() == 1 && (path[0] == "listen" || path[0] == "data_dir") {
                toml::Value::String(v)
            } else {
                parse_value(&v)
            };
            set_path(&mut table, &path, value);
        }
        let config: Self =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.cluster.check().map_err(ConfigError::Invalid)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\n[http]\nbody_limit = 3\n").unwrap();
        let e = ServerConfig::load(Some(&f), []).unwrap_err();
        assert!(e.to_string().contains("body_limit"), "{e}");
    }

    #[test]
    fn a_misspelled_store_key_is_refused_on_every_backend() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[store]\ntype = \"embedded\"\n").unwrap();
        let c = ServerConfig::load(Some(&f), []).unwrap();
        assert!(matches!(c.store, StoreConfig::Embedded {}));
        std::fs::write(&f, "[store]\ntype = \"embedded\"\npasword_file = \"x\"\n").unwrap();
        let e = ServerConfig::load(Some(&f), []).unwrap_err();
        assert!(e.to_string().contains("pasword_file"), "{e}");
        let env = [("CORTEX_CFG__STORE__URL".to_owned(), "http://x".to_owned())];
        assert!(ServerConfig::load(None, env).is_err(), "an arangodb key under the embedded store loads");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[http]\nbody_limit_bytes = 3\n").unwrap();
        let env = [
            ("CORTEX_CFG__HTTP__BODY_LIMIT_BYTES".to_owned(), "7".to_owned()),
            ("CORTEX_CFG__AUTH__ISSUER".to_owned(), "me".to_owned()),
            ("CORTEX_LISTEN".to_owned(), "127.0.0.1:9999".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = ServerConfig::load(Some(&f), env).unwrap();
        assert_eq!(c.http.body_limit_bytes, 7);
        assert_eq!(c.auth.issuer, "me");
        assert_eq!(c.listen.port(), 9999);
        let bad = [("CORTEX_CFG__NOPE".to_owned(), "1".to_owned())];
        assert!(ServerConfig::load(None, bad).is_err());
    }
}
