//! Registry records: tenants, modules, agents, resource profiles, API keys, change-feed
//! cursors, dead letters and the audit log, as typed JSON over the store's [`RecordStore`](crate::store::RecordStore).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::{ChangeEvent, RecordKind, Store, StoreError};

pub mod module_meta;
pub mod supervision;
pub use self::module_meta::{ModuleFailure, ModuleStatus, ModuleTag};
pub use self::supervision::{Probation, RolledBack, Supervision};

/// Result alias for registry calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a tenant may use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Sustained invocations per second (token bucket refill rate).
    pub invocations_per_second: u32,
    /// Burst size of the token bucket.
    pub burst: u32,
    /// Invocations running at once.
    pub concurrent_invocations: u32,
    /// Agents deployed.
    pub agents: u32,
    /// Bytes of uploaded modules.
    pub module_bytes: u64,
    /// Bytes stored: document values, graph edges (names and attributes), queued messages
    /// and dead letters.
    pub stored_bytes: u64,
    /// Graph edges.
    pub edges: u64,
    /// Highest fuel an agent may be given.
    pub max_fuel: u64,
    /// Highest memory an agent may be given, in bytes.
    pub max_memory_bytes: u64,
    /// Highest timeout an agent may be given, in milliseconds.
    pub max_timeout_ms: u64,
    /// Its share of the node's guest slots against other tenants' when they are all
    /// busy (1..=1000, default 1).
    pub weight: u32,
    /// Sustained outbound requests of its agents per second (also the burst).
    pub egress_requests_per_second: u32,
    /// Request and response body bytes of its agents' outbound requests per UTC day.
    pub egress_bytes_per_day: u64,
    /// Model tokens (prompt and completion) of its agents' metered requests per UTC day.
    pub tokens_per_day: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            invocations_per_second: 200,
            burst: 400,
            concurrent_invocations: 64,
            agents: 100,
            module_bytes: 512 << 20,
            stored_bytes: 1 << 30,
            edges: 100_000,
            max_fuel: 10_000_000_000,
            max_memory_bytes: 512 << 20,
            max_timeout_ms: 60_000,
            weight: 1,
            egress_requests_per_second: 20,
            egress_bytes_per_day: 1 << 30,
            tokens_per_day: 1_000_000,
        }
    }
}

/// Quotas a request names: each one given replaces that quota, the others stay as they
/// are (`PATCH`) or come from the server's `[quotas]` (a new tenant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasPatch {
    /// See [`Quotas::invocations_per_second`].
    pub invocations_per_second: Option<u32>,
    /// See [`Quotas::burst`].
    pub burst: Option<u32>,
    /// See [`Quotas::concurrent_invocations`].
    pub concurrent_invocations: Option<u32>,
    /// See [`Quotas::agents`].
    pub agents: Option<u32>,
    /// See [`Quotas::module_bytes`].
    pub module_bytes: Option<u64>,
    /// See [`Quotas::stored_bytes`].
    pub stored_bytes: Option<u64>,
    /// See [`Quotas::edges`].
    pub edges: Option<u64>,
    /// See [`Quotas::max_fuel`].
    pub max_fuel: Option<u64>,
    /// See [`Quotas::max_memory_bytes`].
    pub max_memory_bytes: Option<u64>,
    /// See [`Quotas::max_timeout_ms`].
    pub max_timeout_ms: Option<u64>,
    /// See [`Quotas::weight`].
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<u32>,
    /// See [`Quotas::egress_requests_per_second`].
    pub egress_requests_per_second: Option<u32>,
    /// See [`Quotas::egress_bytes_per_day`].
    pub egress_bytes_per_day: Option<u64>,
    /// See [`Quotas::tokens_per_day`].
    pub tokens_per_day: Option<u64>,
}

impl QuotasPatch {
    /// `base` with the quotas this names replaced.
    pub fn apply(&self, base: &Quotas) -> Quotas {
        Quotas {
            invocations_per_second: self.invocations_per_second.unwrap_or(base.invocations_per_second),
            burst: self.burst.unwrap_or(base.burst),
            concurrent_invocations: self.concurrent_invocations.unwrap_or(base.concurrent_invocations),
            agents: self.agents.unwrap_or(base.agents),
            module_bytes: self.module_bytes.unwrap_or(base.module_bytes),
            stored_bytes: self.stored_bytes.unwrap_or(base.stored_bytes),
            edges: self.edges.unwrap_or(base.edges),
            max_fuel: self.max_fuel.unwrap_or(base.max_fuel),
            max_memory_bytes: self.max_memory_bytes.unwrap_or(base.max_memory_bytes),
            max_timeout_ms: self.max_timeout_ms.unwrap_or(base.max_timeout_ms),
            weight: self.weight.unwrap_or(base.weight),
            egress_requests_per_second: self.egress_requests_per_second.unwrap_or(base.egress_requests_per_second),
            egress_bytes_per_day: self.egress_bytes_per_day.unwrap_or(base.egress_bytes_per_day),
            tokens_per_day: self.tokens_per_day.unwrap_or(base.tokens_per_day),
        }
    }
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(from = "StoredTenant")]
pub struct Tenant {
    /// Its immutable id, never given to another tenant: a name can be used again after its
    /// tenant was deleted, an id cannot. API keys and audit events are bound to it.
    pub id: String,
    /// Its name, unique among the tenants that exist.
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// Creation time (ms since the epoch). For a name used before, later than the second
    /// the previous tenant of that name was deleted in.
    pub created_ms: u64,
    /// Whether a deleted tenant had this name before: then a token must carry an `iat` in
    /// or after the second of `created_ms`, so that the old tenant's tokens are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused_name: bool,
    /// URL prefixes its agents' egress grants must stay within (`None`: any; set by a
    /// tenant-admin with `PUT /v1/egress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<String>>,
}

impl Tenant {
    /// A new tenant with a fresh id.
    pub fn new(name: String, quotas: Quotas, created_ms: u64) -> std::io::Result<Self> {
        let id = crate::secrets::hex(&crate::secrets::random_bytes::<8>()?);
        Ok(Self { id, name, quotas, created_ms, reused_name: false, egress_allow: None })
    }

    /// Whether credentials issued at `issued_at` (seconds since the epoch, the JWT `iat`)
    /// may act for this tenant: always, unless the name was used by a deleted tenant, whose
    /// tokens are refused (a token without `iat` cannot show it is not one of them).
    pub fn accepts_token_issued_at(&self, issued_at: Option<u64>) -> bool {
        !self.reused_name || issued_at.is_some_and(|iat| iat >= self.created_ms / 1000)
    }
}

/// A tenant record as stored: records written before tenants had ids get one derived from
/// their name and creation time (stable, and different for a later tenant of that name).
#[derive(Deserialize)]
struct StoredTenant {
    #[serde(default)]
    id: String,
    name: String,
    quotas: Quotas,
    created_ms: u64,
    #[serde(default)]
    reused_name: bool,
    #[serde(default)]
    egress_allow: Option<Vec<String>>,
}

impl From<StoredTenant> for Tenant {
    fn from(t: StoredTenant) -> Self {
        let id = if t.id.is_empty() {
            crate::secrets::sha256_hex(format!("{}/{}", t.name, t.created_ms).as_bytes())[..16].to_owned()
        } else {
            t.id
        };
        Self {
            id,
            name: t.name,
            quotas: t.quotas,
            created_ms: t.created_ms,
            reused_name: t.reused_name,
            egress_allow: t.egress_allow,
        }
    }
}

/// What is left of a deleted tenant, keyed by its name: a later tenant of the same name
/// learns from it that the name was used ([`Tenant::reused_name`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedTenant {
    /// The deleted tenant's id.
    pub id: String,
    /// When it was deleted (ms since the epoch).
    pub deleted_ms: u64,
}

/// An uploaded module, as a tenant sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleRecord {
    /// Owner.
    pub tenant: String,
    /// Hex SHA-256 of the bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// `agent` or `tool`.
    pub world: String,
    /// Import names.
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
    /// What the upload told its author (an agent missing an export the host calls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Upload time.
    pub created_ms: u64,
    /// `ready`, `compiling` (a large upload, compiled in the background) or `failed`.
    #[serde(default)]
    pub status: ModuleStatus,
    /// Why it failed (status `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ModuleFailure>,
    /// Its `name:tag`s (each on one module of the tenant at a time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<ModuleTag>,
}

/// Limits an agent is deployed with (each capped by the tenant's quotas).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentLimits {
    /// Fuel per invocation.
    #[schema(minimum = 1)]
    pub fuel: Option<u64>,
    /// Memory in bytes.
    #[schema(minimum = 1)]
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit in milliseconds.
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

impl AgentLimits {
    /// These limits, each one left out taken from `fallback`.
    pub fn or(&self, fallback: &AgentLimits) -> AgentLimits {
        AgentLimits {
            fuel: self.fuel.or(fallback.fuel),
            memory_bytes: self.memory_bytes.or(fallback.memory_bytes),
            timeout_ms: self.timeout_ms.or(fallback.timeout_ms),
        }
    }
}

/// A resource profile: named limits a tenant's admins define, that a deploy names
/// (`"profile": "small"`) to take the limits its spec leaves out. Keyed `tenant/name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProfileRecord {
    /// Owner.
    pub tenant: String,
    /// Name, unique in the tenant.
    pub name: String,
    /// The limits it gives (each at most the tenant's quotas when it was written).
    pub limits: AgentLimits,
    /// The invocations at once it gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// When it was first written (ms since the epoch).
    pub created_ms: u64,
    /// When it was last written.
    pub updated_ms: u64,
}

/// Whether an agent takes invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Taking invocations.
    Running,
    /// Refusing invocations until started.
    Stopped,
}

/// A deployed agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentRecord {
    /// Owner.
    pub tenant: String,
    /// Name, unique in the tenant.
    pub name: String,
    /// Digest of the module it runs.
    pub module: String,
    /// The module before the last upgrade, for rollback.
    pub previous_module: Option<String>,
    /// Configuration passed to `init` and readable through `runtime.config`.
    pub config: BTreeMap<String, String>,
    /// Limits.
    pub limits: AgentLimits,
    /// Invocations running at once.
    pub max_concurrency: u32,
    /// Invocations that may wait for one of those slots (more: 503 `pool_full`).
    #[serde(default = "default_queue")]
    pub queue: u32,
    /// How long an invocation may wait in the queue, in milliseconds (then 503
    /// `queue_timeout`).
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Running or stopped.
    pub status: AgentStatus,
    /// Deploy time.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// What of the tenant's change feed the agent receives through `on-change`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watches: Vec<Watch>,
    /// Topics whose published messages the agent receives through its mailbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<String>,
    /// Its health window and circuit breaker.
    #[serde(default)]
    pub supervision: Supervision,
    /// The probation of its last upgrade, while it lasts (and after: it says what was
    /// asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<Probation>,
    /// The last automatic rollback, until the next upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBack>,
    /// The resource profile its deploy named: its values were copied into `limits` and
    /// `max_concurrency` then (a later change of the profile applies at the next deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The OCI reference its module was pulled from and the manifest digest it resolved to
    /// (a deploy or upgrade from `oci://...`); a restart runs the same module, only an
    /// upgrade resolves a tag again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<crate::oci::OciSource>,
    /// The same for its previous module (rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_oci: Option<crate::oci::OciSource>,
    /// Where it may send HTTP requests (see `crate::egress`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::egress::EgressGrant>,
}

/// Invocations that may wait for a slot of an agent, unless its deploy says otherwise.
pub fn default_queue() -> u32 {
    64
}

/// How long an invocation may wait for a slot of an agent, in milliseconds, unless its
/// deploy says otherwise.
pub fn default_queue_timeout_ms() -> u64 {
    1_000
}

/// A watch: every change of a document of `collection` whose key starts with `prefix`
/// (empty: every key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// The collection watched.
    pub collection: String,
    /// Key prefix; empty for the whole collection.
    #[serde(default)]
    pub prefix: String,
}

impl Watch {
    /// Whether a change of `collection/key` is watched.
    pub fn matches(&self, collection: &str, key: &str) -> bool {
        self.collection == collection && key.starts_with(&self.prefix)
    }
}

/// How far a watching agent has consumed its tenant's change feed: every event up to
/// `seq` was delivered (or parked as a dead letter). Keyed `tenant/agent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    /// The last sequence number handled.
    pub seq: u64,
    /// When it was last moved (ms since the epoch).
    pub updated_ms: u64,
}

/// A message in an agent's mailbox, waiting for delivery to its `handle`. Keyed
/// `tenant/agent/id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageRecord {
    /// Its id within the mailbox: `<ms>-<random>`, or `k<hash>` for a message sent with an
    /// idempotency key (so a repeated key finds the same record).
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// The receiving agent.
    pub agent: String,
    /// The sending agent.
    pub from: String,
    /// The topic it was published to, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// SHA-256 of the idempotency key it was sent with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<String>,
    /// The body, hex-encoded.
    pub body_hex: String,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// Not delivered again before this time (ms since the epoch): the retry backoff.
    pub not_before_ms: u64,
    /// Outcome code of the last failed delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Detail of the last failed delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was sent (ms since the epoch).
    pub created_ms: u64,
    /// Order among the messages this node sent in the same millisecond.
    #[serde(default)]
    pub seq: u64,
    /// The W3C trace context of the span that sent it (tracing on): its delivery is
    /// linked to that span. Absent in records written before, or with tracing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::telemetry::otel::TraceContext>,
}

/// A delivered message that was sent with an idempotency key: a later message with the
/// same key is dropped. Keyed `tenant/agent/k<hash>`; removed after the idempotency window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredRecord {
    /// When it was delivered (ms since the epoch).
    pub delivered_ms: u64,
}

/// What an agent failed to take after its retries: a batch of change events (the cursor
/// moved past it) or a message (removed from the mailbox). Keyed `tenant/agent/id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(from = "StoredLetter")]
pub struct DeadLetter {
    /// Its id within the agent (change batches sort by feed position; messages are
    /// `m-<message id>`).
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// The agent that failed it.
    pub agent: String,
    /// A change batch or a message (`kind` and its own fields, side by side with these).
    #[serde(flatten)]
    pub content: Letter,
    /// Deliveries tried so far (replays included).
    pub attempts: u32,
    /// Outcome code of the last failure (`agent_error`, `trap`, ...).
    pub error_code: String,
    /// Detail of the last failure.
    pub error: String,
    /// When it was parked (ms since the epoch).
    pub created_ms: u64,
    /// When it was last tried.
    pub updated_ms: u64,
}

/// What a dead letter holds: one or the other, never parts of both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Letter {
    /// A batch of change events for `on-change`.
    Changes {
        /// The first feed position the batch covers.
        first_seq: u64,
        /// The last feed position the batch covers.
        last_seq: u64,
        /// The events of the batch that the agent watches, in feed order.
        events: Vec<ChangeEvent>,
    },
    /// A message for `handle`.
    Message {
        /// The message.
        message: Box<MessageRecord>,
    },
}

/// A dead letter as stored, in either format: the present one (`kind` with its variant's
/// fields), or the one before it, where every letter had the batch fields (zero and empty
/// in a message letter), `message` was optional and `kind` missing meant `changes`.
#[derive(Deserialize)]
struct StoredLetter {
    id: String,
    tenant: String,
    agent: String,
    #[serde(default)]
    kind: StoredKind,
    #[serde(default)]
    message: Option<Box<MessageRecord>>,
    #[serde(default)]
    first_seq: u64,
    #[serde(default)]
    last_seq: u64,
    #[serde(default)]
    events: Vec<ChangeEvent>,
    attempts: u32,
    error_code: String,
    error: String,
    created_ms: u64,
    updated_ms: u64,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredKind {
    #[default]
    Changes,
    Message,
}

impl From<StoredLetter> for DeadLetter {
    fn from(l: StoredLetter) -> Self {
        let content = match (l.kind, l.message) {
            (StoredKind::Message, Some(message)) => Letter::Message { message },
            // A message letter without its message never was written; read as the batch it
            // then says it is (empty: a replay delivers nothing and deletes it).
            _ => Letter::Changes { first_seq: l.first_seq, last_seq: l.last_seq, events: l.events },
        };
        Self {
            id: l.id,
            tenant: l.tenant,
            agent: l.agent,
            content,
            attempts: l.attempts,
            error_code: l.error_code,
            error: l.error,
            created_ms: l.created_ms,
            updated_ms: l.updated_ms,
        }
    }
}

/// An API key; the secret itself is never stored, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (part of the key).
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// The owner's id ([`Tenant::id`]): the key acts for that tenant only, never for a later
    /// one of the same name. Empty in keys made before tenants had ids (those are valid
    /// for a tenant created before the key).
    #[serde(default)]
    pub tenant_id: String,
    /// Role the key acts with.
    pub role: String,
    /// A label for people.
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// Creation time.
    pub created_ms: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Position in the log (set on append).
    #[serde(default)]
    pub seq: u64,
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// Who (token subject or key id).
    pub actor: String,
    /// Tenant acted on (empty for platform-wide actions).
    pub tenant: String,
    /// Its id ([`Tenant::id`]), when the tenant existed: the event is in that tenant's own
    /// log too, numbered there from 1 (its `seq` in that log).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
    /// What (`POST /v1/agents`).
    pub action: String,
    /// On what (the request path).
    pub target: String,
    /// HTTP status of the answer (0 for what the host did by itself: `circuit_open`,
    /// `circuit_half_open`, `circuit_closed`, `rollback`).
    pub outcome: u16,
    /// Why, for what the host did by itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Typed access to registry records.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupted(format!("registry record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupted(format!("registry record: {e}")))
}

impl Registry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Read a record with its revision.
    pub async fn get<T: DeserializeOwned>(&self, kind: RecordKind, key: &str) -> Result<Option<(T, u64)>> {
        match self.store.record_get(kind, key).await? {
            Some((bytes, rev)) => Ok(Some((decode(&bytes)?, rev))),
            None => Ok(None),
        }
    }

    /// Write a record (compare-and-swap when `expected` is given; 0: must not exist).
    pub async fn put<T: Serialize>(&self, kind: RecordKind, key: &str, v: &T, expected: Option<u64>) -> Result<u64> {
        self.store.record_put(kind, key, encode(v)?, expected).await
    }

    /// Delete a record.
    pub async fn delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.store.record_delete(kind, key).await
    }

    /// Records whose key starts with `prefix`.
    pub async fn list<T: DeserializeOwned>(&self, kind: RecordKind, prefix: &str) -> Result<Vec<T>> {
        self.store.record_list(kind, prefix).await?.iter().map(|(_, v)| decode(v)).collect()
    }

    /// Records under `prefix` with their keys and revisions, in one read. A record that
    /// does not decode is logged and left out (the others still come back).
    pub async fn list_revisions<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        prefix: &str,
    ) -> Result<Vec<(String, T, u64)>> {
        let rows = self.store.record_list_revisions(kind, prefix).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v, rev)| match decode(&v) {
                Ok(t) => Some((k, t, rev)),
                Err(e) => {
                    tracing::error!(key = %k, error = %e, "unreadable record skipped");
                    None
                }
            })
            .collect())
    }

    /// Append an audit event to the platform's log and, when it names a tenant id, to that
    /// tenant's own log; returns its number in the platform's log.
    pub async fn audit(&self, event: &AuditEvent) -> Result<u64> {
        let own = (!event.tenant_id.is_empty()).then_some(event.tenant_id.as_str());
        Ok(self.store.audit_append(encode(event)?, own).await?.0)
    }

    /// [`Self::audit`] an event of what the host did in `event.tenant`: in that tenant's own
    /// log too when the tenant exists (its id read from its record; if it cannot be read, the
    /// event still goes to the platform's log).
    pub async fn audit_in_tenant(&self, mut event: AuditEvent) -> Result<u64> {
        if let Ok(Some((t, _))) = self.get::<Tenant>(RecordKind::Tenant, &event.tenant).await {
            event.tenant_id = t.id;
        }
        self.audit(&event).await
    }

    /// Audit events after `since`, filtered, at most `limit`: of the platform's log (`tenant_id`
    /// `None`; `seq` numbers every event), or of one tenant's own log (`seq` numbers that
    /// tenant's events only, from 1, so it tells nothing about other tenants).
    pub async fn audit_list(
        &self,
        tenant_id: Option<&str>,
        since: u64,
        limit: usize,
        filter: impl Fn(&AuditEvent) -> bool,
    ) -> Result<Vec<AuditEvent>> {
        let mut out = Vec::new();
        let mut cursor = since;
        loop {
            let batch = self.store.audit_list(tenant_id, cursor, 512).await?;
            let Some((last, _)) = batch.last() else { break };
            cursor = *last;
            for (seq, raw) in &batch {
                let mut e: AuditEvent = decode(raw)?;
                e.seq = *seq;
                if filter(&e) {
                    out.push(e);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Registry {
    /// Delete the audit events older than `cutoff_ms` from the platform's log and from the
    /// own logs of `tenant_ids`: of each log a prefix, up to its first event at or after the
    /// cutoff, and never its newest event, so what is kept stays numbered without gaps.
    /// Returns how many events were deleted.
    pub async fn audit_prune_before(&self, cutoff_ms: u64, tenant_ids: &[String]) -> Result<u64> {
        let mut deleted = 0;
        for log in std::iter::once(None).chain(tenant_ids.iter().map(|t| Some(t.as_str()))) {
            let (mut through, mut cursor) = (0, 0);
            'scan: loop {
                let batch = self.store.audit_list(log, cursor, 512).await?;
                let Some((last, _)) = batch.last() else { break };
                cursor = *last;
                for (seq, raw) in &batch {
                    let e: AuditEvent = decode(raw)?;
                    if e.time_ms >= cutoff_ms {
                        break 'scan;
                    }
                    through = *seq;
                }
            }
            if through > 0 {
                deleted += self.store.audit_prune(log, through).await?;
            }
        }
        Ok(deleted)
    }
}

/// Key of a tenant-scoped record.
pub fn scoped(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_before_tenant_ids_stay_readable() {
        let old = br#"{"name":"acme","quotas":{},"created_ms":1000}"#;
        let t: Tenant = serde_json::from_slice(old).unwrap();
        assert_eq!((t.name.as_str(), t.reused_name, t.id.len()), ("acme", false, 16));
        let again: Tenant = serde_json::from_slice(old).unwrap();
        assert_eq!(t.id, again.id, "a derived id is stable");
        let later: Tenant = serde_json::from_slice(br#"{"name":"acme","quotas":{},"created_ms":2000}"#).unwrap();
        assert_ne!(t.id, later.id, "a later tenant of the name gets another");
        let round: Tenant = serde_json::from_slice(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(round, t);
        let key: ApiKeyRecord = serde_json::from_slice(
            br#"{"id":"k","tenant":"acme","role":"observer","name":"","hash":"h","created_ms":1,"revoked":false}"#,
        )
        .unwrap();
        assert_eq!(key.tenant_id, "");
        let event: AuditEvent = serde_json::from_slice(
            br#"{"seq":0,"time_ms":1,"actor":"a","tenant":"acme","action":"x","target":"/","outcome":200}"#,
        )
        .unwrap();
        assert_eq!(event.tenant_id, "");
    }

    #[test]
    fn a_reused_name_accepts_only_tokens_issued_from_its_creation_on() {
        let mut t = Tenant::new("acme".into(), Quotas::default(), 5_500).unwrap();
        assert!(t.accepts_token_issued_at(None) && t.accepts_token_issued_at(Some(1)), "a first tenant of a name");
        t.reused_name = true;
        assert!(!t.accepts_token_issued_at(None));
        assert!(!t.accepts_token_issued_at(Some(4)));
        assert!(t.accepts_token_issued_at(Some(5)) && t.accepts_token_issued_at(Some(6)));
        assert_ne!(Tenant::new("acme".into(), Quotas::default(), 1).unwrap().id, t.id);
    }

    #[test]
    fn dead_letters_of_the_format_before_the_letter_enum_stay_readable() {
        let common =
            r#""tenant":"t","agent":"a","attempts":3,"error_code":"trap","error":"x","created_ms":1,"updated_ms":2"#;
        let event = r#"{"seq":4,"collection":"c","key":"k","op":"put","revision":1}"#;
        let old_batch =
            format!(r#"{{"id":"b","kind":"changes","first_seq":4,"last_seq":5,"events":[{event}],{common}}}"#);
        let older_batch = format!(r#"{{"id":"b","first_seq":4,"last_seq":5,"events":[{event}],{common}}}"#);
        let message = r#"{"id":"m1","tenant":"t","agent":"a","from":"b","body_hex":"00","attempts":3,"not_before_ms":0,"created_ms":1}"#;
        let old_message = format!(
            r#"{{"id":"m-m1","kind":"message","message":{message},"first_seq":0,"last_seq":0,"events":[],{common}}}"#
        );
        for old in [&old_batch, &older_batch] {
            let l: DeadLetter = serde_json::from_str(old).unwrap();
            let Letter::Changes { first_seq: 4, last_seq: 5, events } = &l.content else { panic!("{l:?}") };
            assert_eq!((events.len(), events[0].key.as_str(), l.attempts), (1, "k", 3));
        }
        let l: DeadLetter = serde_json::from_str(&old_message).unwrap();
        let Letter::Message { message } = &l.content else { panic!("{l:?}") };
        assert_eq!((message.id.as_str(), l.error_code.as_str()), ("m1", "trap"));
        // Written now: `kind` with its variant's fields only; read back the same.
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!((json["kind"].as_str(), json.get("first_seq"), json.get("events")), (Some("message"), None, None));
        assert_eq!(serde_json::from_value::<DeadLetter>(json).unwrap(), l);
        let batch: DeadLetter = serde_json::from_str(&old_batch).unwrap();
        let json = serde_json::to_value(&batch).unwrap();
        assert_eq!(
            (json["kind"].as_str(), json["last_seq"].as_u64(), json.get("message")),
            (Some("changes"), Some(5), None)
        );
        assert_eq!(serde_json::from_value::<DeadLetter>(json).unwrap(), batch);
    }

    #[test]
    fn a_quotas_patch_replaces_only_what_it_names() {
        let base = Quotas { burst: 3, agents: 4, ..Quotas::default() };
        let patch: QuotasPatch = serde_json::from_str(r#"{"agents": 9}"#).unwrap();
        assert_eq!(patch.apply(&base), Quotas { agents: 9, ..base.clone() });
        assert_eq!(QuotasPatch::default().apply(&base), base);
        assert!(serde_json::from_str::<QuotasPatch>(r#"{"agentz": 9}"#).is_err());
    }
}
