//! The Cortex operator: custom resources for Cortex on Kubernetes, reconciled into the
//! Cortex API and the host Deployment's scale.
//!
//! - [`crd`]: `CortexCluster`, `Tenant` and `Agent` (group `cortex.dev`, `v1alpha1`).
//! - [`tenant`]: a `Tenant` becomes a Cortex tenant with its quotas and profiles.
//! - [`agent`]: an `Agent`'s module is fetched (URL, ConfigMap or Secret), checked against
//!   its sha256, uploaded, and the agent deployed, upgraded, redeployed or deleted.
//! - [`cluster`]: a `CortexCluster`'s host Deployment is scaled through its `scale`
//!   subresource by the decision of [`autoscale::decide`] on the load Cortex reports.
//!
//! Every reconcile is level-based and idempotent: it reads what Cortex has and makes only
//! the calls that close the gap; a failure is retried with a per-object exponential
//! backoff ([`Context::backoff`]). `Tenant` and `Agent` carry a finalizer
//! ([`FINALIZER`]) so that deleting the resource deletes what it made in Cortex.
//! [`testing`] is an in-memory Kubernetes API for tests.

#![deny(missing_docs)]

pub mod agent;
pub mod autoscale;
pub mod cluster;
pub mod cortex;
pub mod crd;
pub mod status;
pub mod tenant;
pub mod testing;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};

pub use cortex::Cortex;

/// The finalizer the operator puts on `Tenant` and `Agent` resources.
pub const FINALIZER: &str = "cortex.dev/cleanup";

/// The field manager and event reporter name.
pub const MANAGER: &str = "cortex-operator";

/// What a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The Cortex API could not be reached or answered something unreadable.
    #[error("cortex: {0}")]
    Cortex(String),
    /// The Cortex API refused a call.
    #[error("cortex answered {status} to {call}: {code}: {detail}")]
    Api {
        /// `METHOD path`.
        call: String,
        /// The HTTP status.
        status: u16,
        /// The problem's `code`.
        code: String,
        /// The problem's `detail`.
        detail: String,
    },
    /// The module could not be fetched.
    #[error("module: {0}")]
    Module(String),
    /// The module's bytes do not hash to the digest the spec names.
    #[error("the module's sha256 is {actual}, the spec names {expected}")]
    DigestMismatch {
        /// The spec's digest.
        expected: String,
        /// The bytes' digest.
        actual: String,
    },
    /// The resource's spec cannot be acted on.
    #[error("invalid spec: {0}")]
    Invalid(String),
    /// Adding or removing the finalizer, or the reconcile inside it, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The error for a Cortex answer that is not a success.
    pub fn api(method: &reqwest::Method, path: &str, a: &cortex::Answer) -> Self {
        let text = |k: &str| a.body.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        Error::Api {
            call: format!("{method} {path}"),
            status: a.status.as_u16(),
            code: text("code"),
            detail: text("detail"),
        }
    }

    /// A CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesError",
            Error::Cortex(_) => "CortexUnreachable",
            Error::Api { status: 409, .. } => "Conflict",
            Error::Api { .. } => "CortexRefused",
            Error::Module(_) => "ModuleUnavailable",
            Error::DigestMismatch { .. } => "DigestMismatch",
            Error::Invalid(_) => "InvalidSpec",
            Error::Finalizer(_) => "FinalizerFailed",
        }
    }
}

/// What the reconcilers share.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The Cortex API of resources that name no `CortexCluster`.
    pub default_cortex: Option<Cortex>,
    /// Publishes Kubernetes Events on the resources.
    pub recorder: Recorder,
    /// Fetches modules from URLs.
    pub http: reqwest::Client,
    /// Consecutive failures per object (`kind/namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("default_cortex", &self.default_cortex).finish_non_exhaustive()
    }
}

/// The first retry's delay.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// The longest delay between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

impl Context {
    /// A context over `client`, with `default_cortex` for resources naming no cluster.
    pub fn new(client: kube::Client, default_cortex: Option<Cortex>) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            default_cortex,
            http: reqwest::Client::new(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The Cortex API of a resource in `namespace` naming `cluster` (or none).
    pub async fn cortex_for(&self, namespace: &str, cluster: Option<&str>) -> Result<Cortex, Error> {
        let Some(name) = cluster else {
            return self.default_cortex.clone().ok_or_else(|| {
                Error::Invalid("the resource names no `cluster` and the operator has no --cortex-url".into())
            });
        };
        let api: Api<crd::CortexCluster> = Api::namespaced(self.client.clone(), namespace);
        let c = api.get(name).await?;
        cluster::cortex_of(self, &c).await
    }

    /// The value of key `key` of Secret `name` in `namespace`.
    pub async fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let s = api.get(name).await?;
        if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
            return Ok(v.0.clone());
        }
        if let Some(v) = s.string_data.as_ref().and_then(|d| d.get(key)) {
            return Ok(v.clone().into_bytes());
        }
        Err(Error::Invalid(format!("Secret {namespace}/{name} has no key {key:?}")))
    }

    /// The delay before retrying `object` after its latest failure: 2 s, doubling with
    /// each consecutive failure, at most 5 minutes.
    pub fn backoff(&self, object: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = f.entry(object.to_owned()).or_insert(0);
        let delay = BACKOFF_BASE.saturating_mul(1u32 << (*n).min(16)).min(BACKOFF_MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// `object` reconciled: its next failure starts the backoff afresh.
    pub fn succeeded(&self, object: &str) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(object);
    }
}

/// The controllers' error policy: log, and retry after the object's backoff.
pub fn retry_after<K: kube::Resource>(obj: &K, e: &Error, ctx: &Context) -> Action
where
    K::DynamicType: Default,
{
    let key = object_key(obj);
    tracing::warn!(object = %key, error = %e, "reconcile failed");
    Action::requeue(ctx.backoff(&key))
}

/// `kind/namespace/name` of `obj`.
pub fn object_key<K: kube::Resource>(obj: &K) -> String
where
    K::DynamicType: Default,
{
    let meta = obj.meta();
    format!(
        "{}/{}/{}",
        K::kind(&K::DynamicType::default()),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}
