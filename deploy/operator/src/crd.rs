//! The custom resources (group `cortex.dev`, version `v1alpha1`, all namespaced):
//! [`CortexCluster`], [`Tenant`] and [`Agent`]. Their specs use the Cortex API's own field
//! names (snake_case), so a deploy body or a quota patch reads the same in both places.
//! `crdgen` prints the CustomResourceDefinitions made from these types.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the resources.
pub const GROUP: &str = "cortex.dev";

/// A condition of a resource's status (the Kubernetes convention's fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Degraded`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word saying why.
    #[serde(default)]
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` it was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in its `data` (default `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

// ---------------------------------------------------------------------------------------
// CortexCluster

/// A Cortex deployment the operator scales and talks to: the host Deployment (made by the
/// manifests, not by the operator), how to reach its API, and the autoscaling policy.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cortex.dev",
    version = "v1alpha1",
    kind = "CortexCluster",
    namespaced,
    status = "CortexClusterStatus",
    shortname = "cxc",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Load","type":"number","jsonPath":".status.load"}"#
)]
pub struct CortexClusterSpec {
    /// The host image the Deployment should run (checked against the Deployment: a
    /// mismatch shows as the `ImageMatches` condition; the operator does not rewrite it).
    pub image: String,
    /// The host Deployment's name (default: this resource's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The Cortex API's base URL (default: `http://<deployment>.<namespace>.svc:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The Secret key holding a platform-admin token for the Cortex API.
    pub credentials: SecretKeyRef,
    /// Bounds of the host Deployment's replicas.
    pub replicas: ReplicaBounds,
    /// The store the nodes share (documentation of the deployment; the nodes read it from
    /// their config).
    #[serde(default)]
    pub store: StoreSpec,
    /// How the operator scales the nodes; absent: it keeps the replicas within the bounds
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingPolicy>,
}

/// Bounds of the host Deployment's replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplicaBounds {
    /// Fewest.
    #[schemars(range(min = 1))]
    pub min: i32,
    /// Most.
    #[schemars(range(min = 1))]
    pub max: i32,
}

/// The store the nodes share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StoreSpec {
    /// `embedded` (one node, a volume) or `arangodb` (several nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The ArangoDB URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The ArangoDB database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The Secret key holding the ArangoDB password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,
}

/// When to add and remove host nodes (see [`crate::autoscale::decide`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AutoscalingPolicy {
    /// The load one node should carry: invocations running or waiting, plus a share of
    /// the mailbox backlog (see `mailbox_weight`).
    pub target_load_per_node: f64,
    /// Scale up when the load per live node is above `target × scale_up_ratio` (default 1.2).
    #[serde(default = "default_up")]
    pub scale_up_ratio: f64,
    /// Scale down when it is below `target × scale_down_ratio` (default 0.5).
    #[serde(default = "default_down")]
    pub scale_down_ratio: f64,
    /// How much one waiting mailbox message counts (default 0.1).
    #[serde(default = "default_mailbox_weight")]
    pub mailbox_weight: f64,
    /// No change within this many seconds of the previous one (default 120).
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u64,
    /// How often the load is read, in seconds (default 15).
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
}

fn default_up() -> f64 {
    1.2
}
fn default_down() -> f64 {
    0.5
}
fn default_mailbox_weight() -> f64 {
    0.1
}
fn default_cooldown() -> u64 {
    120
}
fn default_interval() -> u64 {
    15
}

/// What the operator saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CortexClusterStatus {
    /// The Deployment's replicas as last set or read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Live nodes in the last `GET /v1/cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_nodes: Option<u32>,
    /// The cluster's load then (summed over the live nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// When the operator last changed the replicas (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_ms: Option<u64>,
    /// Why the last decision was what it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,
    /// `Ready` (the API answered), `ImageMatches`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation these reflect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// Tenant

/// A Cortex tenant, its quotas and its resource profiles.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cortex.dev",
    version = "v1alpha1",
    kind = "Tenant",
    namespaced,
    status = "TenantStatus",
    shortname = "ctenant",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
pub struct TenantSpec {
    /// The CortexCluster (same namespace) the tenant lives on (default: the operator's own
    /// `--cortex-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The tenant's name in Cortex (default: this resource's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Quotas, as `POST /v1/tenants` takes them: each one given replaces the server's
    /// default.
    #[serde(default)]
    pub quotas: QuotasSpec,
    /// Resource profiles by name, as `PUT /v1/profiles/{name}` takes them. Profiles of
    /// the tenant not listed here are deleted.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileSpec>,
}

/// A tenant's quotas (each optional: left out, the server's `[quotas]` value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuotasSpec {
    /// Sustained invocations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocations_per_second: Option<u32>,
    /// Burst size of the token bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Invocations running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_invocations: Option<u32>,
    /// Agents deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<u32>,
    /// Bytes of uploaded modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_bytes: Option<u64>,
    /// Bytes stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// Graph edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<u64>,
    /// Highest fuel an agent may be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fuel: Option<u64>,
    /// Highest memory an agent may be given, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    /// Highest timeout an agent may be given, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_ms: Option<u64>,
    /// Share of the node's guest slots against other tenants' (1..=1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Fuel, memory and timeout of an agent (each optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LimitsSpec {
    /// Fuel per invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A resource profile, as `PUT /v1/profiles/{name}` takes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileSpec {
    /// Fuel, memory and timeout.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Invocations at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// What the operator saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantStatus {
    /// `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation these reflect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// Agent

/// A Cortex agent: its module (fetched, checked against its digest, uploaded), its deploy
/// spec and its config.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cortex.dev",
    version = "v1alpha1",
    kind = "Agent",
    namespaced,
    status = "AgentStatus",
    shortname = "cagent",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.health"}"#
)]
pub struct AgentSpec {
    /// The CortexCluster (same namespace) to deploy on (default: the operator's own
    /// `--cortex-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The Cortex tenant.
    pub tenant: String,
    /// The agent's name in Cortex (default: this resource's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the `.wasm` comes from, and its digest.
    pub module: ModuleSource,
    /// Its configuration, given to `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Its own limits; those left out come from its profile.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// The tenant's resource profile filling the limits and concurrency left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Invocations at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Invocations that may wait for a slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// How long one may wait, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    /// Change feeds it takes.
    #[serde(default)]
    pub watches: Vec<WatchSpec>,
    /// Topics it takes.
    #[serde(default)]
    pub subscriptions: Vec<String>,
}

/// Where an agent's module comes from: exactly one of `url`, `config_map`, `secret`; the
/// bytes must hash to `sha256` before they are uploaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModuleSource {
    /// An `http(s)` URL of the `.wasm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A ConfigMap key (in `binaryData`) holding the `.wasm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyRef>,
    /// A Secret key holding the `.wasm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeyRef>,
    /// The SHA-256 of the bytes, lowercase hex (a `sha256:` prefix is allowed): also the
    /// module's digest in Cortex.
    pub sha256: String,
}

/// A key of a ConfigMap or Secret in the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyRef {
    /// The object's name.
    pub name: String,
    /// The key.
    pub key: String,
}

/// A watch: every change of a document of `collection` whose key starts with `prefix`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WatchSpec {
    /// The collection watched.
    pub collection: String,
    /// Key prefix; empty for the whole collection.
    #[serde(default)]
    pub prefix: String,
}

/// What the operator saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentStatus {
    /// `Ready` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation these reflect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The module digest the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// `healthy`, `degraded`, `failing` or `stopped` (from the agent's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Its circuit breaker: `closed`, `open` or `half_open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
}

/// The CustomResourceDefinitions, each with the file name it is kept under in
/// `deploy/crds/`, as YAML.
pub fn crds() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt;
    Ok(vec![
        ("cortexclusters.cortex.dev.yaml", serde_yaml::to_string(&CortexCluster::crd())?),
        ("tenants.cortex.dev.yaml", serde_yaml::to_string(&Tenant::crd())?),
        ("agents.cortex.dev.yaml", serde_yaml::to_string(&Agent::crd())?),
    ])
}

/// `deploy/crds/kustomization.yaml`: the three files.
pub fn kustomization() -> String {
    let mut s = String::from("# Generated by `cargo run -p cortex-operator --bin crdgen -- deploy/crds`.\n");
    s.push_str("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n");
    for f in ["cortexclusters.cortex.dev.yaml", "tenants.cortex.dev.yaml", "agents.cortex.dev.yaml"] {
        s.push_str(&format!("  - {f}\n"));
    }
    s
}
