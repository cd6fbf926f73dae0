//! A small client of the Cortex HTTP API: the calls the reconcilers make, as a
//! platform-admin acting in a tenant through the `x-cortex-tenant` header.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// The header naming the tenant a platform-admin acts in.
pub const TENANT_HEADER: &str = "x-cortex-tenant";

/// Where a Cortex API is and the platform-admin token to call it with.
#[derive(Clone, Debug)]
pub struct Cortex {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// An agent as `GET /v1/agents/{name}` shows it (the fields the operator reads).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AgentView {
    /// The module digest it runs.
    pub module: String,
    /// Its configuration.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// Its limits (its own and its profile's).
    #[serde(default)]
    pub limits: crate::crd::LimitsSpec,
    /// Invocations at once.
    #[serde(default)]
    pub max_concurrency: u32,
    /// Queue length.
    #[serde(default)]
    pub queue: u32,
    /// Queue timeout.
    #[serde(default)]
    pub queue_timeout_ms: u64,
    /// Watches.
    #[serde(default)]
    pub watches: Vec<crate::crd::WatchSpec>,
    /// Topics.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Its profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// `running` or `stopped`.
    #[serde(default)]
    pub status: String,
    /// `healthy`, `degraded`, `failing`, `stopped`.
    #[serde(default)]
    pub health: String,
    /// `closed`, `open`, `half_open`.
    #[serde(default)]
    pub circuit: String,
}

/// A node's load as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// Whether the answering node counts it live.
    #[serde(default)]
    pub live: bool,
    /// Its load at its last heartbeat.
    #[serde(default)]
    pub load: NodeLoadView,
}

/// The `load` object of a node record.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodeLoadView {
    /// Invocations running.
    #[serde(default)]
    pub in_flight: u64,
    /// Invocations waiting for a slot.
    #[serde(default)]
    pub queued: u64,
    /// Messages waiting in mailboxes.
    #[serde(default)]
    pub mailbox: u64,
    /// Seconds inside guest invocations per second.
    #[serde(default)]
    pub wasm_seconds_per_second: f64,
}

#[derive(Deserialize)]
struct ClusterView {
    #[serde(default)]
    nodes: Vec<ClusterNode>,
}

/// What an API answered: its status and body.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

impl Cortex {
    /// A client of the API at `base` (e.g. `http://cortex.cortex.svc:8080`).
    pub fn new(base: &str, token: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Cortex(format!("http client: {e}")))?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), token: token.trim().to_owned(), http })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call; a transport failure is [`Error::Cortex`], every status is an [`Answer`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        tenant: Option<&str>,
        body: Option<Value>,
        bytes: Option<Vec<u8>>,
    ) -> Result<Answer, Error> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(t) = tenant {
            req = req.header(TENANT_HEADER, t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        } else if let Some(b) = bytes {
            req = req.header("content-type", "application/wasm").body(b);
        }
        let resp = req.send().await.map_err(|e| Error::Cortex(format!("{method} {path}: {e}")))?;
        let status = resp.status();
        let text =
            resp.bytes().await.map_err(|e| Error::Cortex(format!("{method} {path}: reading the answer: {e}")))?;
        let body = serde_json::from_slice(&text).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// A call that must succeed (2xx); else [`Error::Api`] with the problem's code.
    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        tenant: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let a = self.call(method.clone(), path, tenant, body, None).await?;
        if a.status.is_success() { Ok(a.body) } else { Err(Error::api(&method, path, &a)) }
    }

    /// `GET /v1/agents/{name}` in `tenant`: `None` when there is no such agent (or tenant).
    pub async fn agent(&self, tenant: &str, name: &str) -> Result<Option<AgentView>, Error> {
        let path = format!("/v1/agents/{name}");
        let a = self.call(Method::GET, &path, Some(tenant), None, None).await?;
        match a.status {
            s if s.is_success() => serde_json::from_value(a.body)
                .map(Some)
                .map_err(|e| Error::Cortex(format!("GET {path}: unexpected answer: {e}"))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Error::api(&Method::GET, &path, &a)),
        }
    }

    /// Upload a module's bytes to `tenant` (an existing one is fine).
    pub async fn upload(&self, tenant: &str, wasm: Vec<u8>) -> Result<(), Error> {
        let a = self.call(Method::POST, "/v1/modules", Some(tenant), None, Some(wasm)).await?;
        if a.status.is_success() { Ok(()) } else { Err(Error::api(&Method::POST, "/v1/modules", &a)) }
    }

    /// The nodes of the cluster and their load.
    pub async fn cluster(&self) -> Result<Vec<ClusterNode>, Error> {
        let v = self.ok(Method::GET, "/v1/cluster", None, None).await?;
        let view: ClusterView =
            serde_json::from_value(v).map_err(|e| Error::Cortex(format!("GET /v1/cluster: unexpected answer: {e}")))?;
        Ok(view.nodes)
    }
}
