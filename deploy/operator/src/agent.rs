//! The `Agent` reconciler.
//!
//! Apply: read the agent from Cortex; if it does not run the spec's digest, fetch the
//! module (URL, ConfigMap `binaryData` or Secret), check its sha256 and upload it. Then:
//! - no agent: deploy it (`POST /v1/agents`);
//! - a deploy field changed that the API cannot change in place (limits, profile,
//!   concurrency, queue, watches, subscriptions): delete and deploy again;
//! - the module or config changed: upgrade (`POST /v1/agents/{name}/upgrade` with the
//!   module and the config in one step);
//! - else nothing.
//!
//! Then the status: `Ready` (the agent runs the spec's digest and config, and is not
//! stopped or failing), `Degraded` (its health is `degraded` or `failing`, or its circuit
//! is not closed), `observedGeneration`, the digest, health and circuit. Each change is an
//! Event on the resource; the agent's health is read again every minute.
//!
//! Cleanup (the resource is being deleted): `DELETE /v1/agents/{name}` (a missing agent or
//! tenant is fine), then the finalizer is removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cortex::AgentView;
use crate::crd::{Agent, AgentSpec, AgentStatus, ModuleSource};
use crate::status::{condition, event};
use crate::{Context, Cortex, Error, FINALIZER};

/// How often a settled agent's health is read again.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Reconcile `agent` (the controller's entry point).
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = agent.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &ns);
    let key = crate::object_key(agent.as_ref());
    let out = finalizer(&api, FINALIZER, agent, |ev| async {
        match ev {
            Finalizer::Apply(a) => apply(&a, &ctx).await,
            Finalizer::Cleanup(a) => cleanup(&a, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&key);
    Ok(out)
}

/// The controller's error policy.
pub fn error_policy(agent: Arc<Agent>, e: &Error, ctx: Arc<Context>) -> Action {
    crate::retry_after(agent.as_ref(), e, &ctx)
}

/// The agent's name in Cortex.
pub fn cortex_name(agent: &Agent) -> String {
    agent.spec.name.clone().unwrap_or_else(|| agent.name_any())
}

/// `sha256` of the spec as 64 lowercase hex digits.
pub fn spec_digest(m: &ModuleSource) -> Result<String, Error> {
    let d = m.sha256.strip_prefix("sha256:").unwrap_or(&m.sha256).to_ascii_lowercase();
    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!("module.sha256 {:?} is not 64 hex digits", m.sha256)));
    }
    Ok(d)
}

async fn apply(agent: &Agent, ctx: &Context) -> Result<Action, Error> {
    let ns = agent.namespace().unwrap_or_else(|| "default".into());
    let result = converge(agent, ctx, &ns).await;
    let (view, err) = match result {
        Ok(v) => (v, None),
        Err(e) => (None, Some(e)),
    };
    write_status(agent, ctx, &ns, view.as_ref(), err.as_ref()).await?;
    match err {
        Some(e) => {
            event(ctx, agent, true, e.reason(), "Reconcile", e.to_string()).await;
            Err(e)
        }
        None => Ok(Action::requeue(RESYNC)),
    }
}

/// Make Cortex match the spec; the agent's view afterwards.
async fn converge(agent: &Agent, ctx: &Context, ns: &str) -> Result<Option<AgentView>, Error> {
    let spec = &agent.spec;
    let name = cortex_name(agent);
    let tenant = spec.tenant.as_str();
    let digest = spec_digest(&spec.module)?;
    let cortex = ctx.cortex_for(ns, spec.cluster.as_deref()).await?;
    let current = cortex.agent(tenant, &name).await?;
    if current.as_ref().is_none_or(|c| c.module != digest) {
        let wasm = fetch_module(ctx, ns, &spec.module).await?;
        let actual = hex::encode(Sha256::digest(&wasm));
        if actual != digest {
            return Err(Error::DigestMismatch { expected: digest, actual });
        }
        cortex.upload(tenant, wasm).await?;
    }
    match current {
        None => {
            deploy(&cortex, tenant, &name, spec, &digest).await?;
            event(ctx, agent, false, "Deployed", "Deploy", format!("deployed {tenant}/{name} running {digest}")).await;
        }
        Some(c) if needs_redeploy(spec, &c) => {
            delete(&cortex, tenant, &name).await?;
            deploy(&cortex, tenant, &name, spec, &digest).await?;
            event(
                ctx,
                agent,
                false,
                "Redeployed",
                "Redeploy",
                format!("deployed {tenant}/{name} again: its limits, queue, watches or subscriptions changed"),
            )
            .await;
        }
        Some(c) if c.module != digest || c.config != spec.config => {
            let body = json!({ "module": digest, "config": spec.config });
            cortex.ok(Method::POST, &format!("/v1/agents/{name}/upgrade"), Some(tenant), Some(body)).await?;
            let what = if c.module != digest { format!("to {digest}") } else { "its config".to_owned() };
            event(ctx, agent, false, "Upgraded", "Upgrade", format!("upgraded {tenant}/{name} {what}")).await;
        }
        Some(_) => {}
    }
    cortex.agent(tenant, &name).await
}

/// The deploy body of `spec` (the API's `DeploySpec`).
pub fn deploy_body(name: &str, spec: &AgentSpec, digest: &str) -> Value {
    let mut b = json!({
        "name": name,
        "module": digest,
        "config": spec.config,
        "limits": spec.limits,
        "watches": spec.watches,
        "subscriptions": spec.subscriptions,
    });
    if let Some(o) = b.as_object_mut() {
        if let Some(v) = spec.max_concurrency {
            o.insert("max_concurrency".into(), v.into());
        }
        if let Some(v) = spec.queue {
            o.insert("queue".into(), v.into());
        }
        if let Some(v) = spec.queue_timeout_ms {
            o.insert("queue_timeout_ms".into(), v.into());
        }
        if let Some(p) = &spec.profile {
            o.insert("profile".into(), p.clone().into());
        }
    }
    b
}

async fn deploy(cortex: &Cortex, tenant: &str, name: &str, spec: &AgentSpec, digest: &str) -> Result<(), Error> {
    cortex.ok(Method::POST, "/v1/agents", Some(tenant), Some(deploy_body(name, spec, digest))).await.map(|_| ())
}

/// `DELETE /v1/agents/{name}`; a missing agent (or tenant) is fine.
async fn delete(cortex: &Cortex, tenant: &str, name: &str) -> Result<(), Error> {
    let path = format!("/v1/agents/{name}");
    let a = cortex.call(Method::DELETE, &path, Some(tenant), None, None).await?;
    if a.status.is_success() || a.status == StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(Error::api(&Method::DELETE, &path, &a))
    }
}

/// Whether a field the API has no in-place change for differs. The agent's limits and
/// concurrency are its own filled from its profile, so only those the spec names compare.
pub fn needs_redeploy(spec: &AgentSpec, c: &AgentView) -> bool {
    let l = &spec.limits;
    let differs = |want: Option<u64>, have: Option<u64>| want.is_some() && want != have;
    differs(l.fuel, c.limits.fuel)
        || differs(l.memory_bytes, c.limits.memory_bytes)
        || differs(l.timeout_ms, c.limits.timeout_ms)
        || spec.max_concurrency.is_some_and(|v| v != c.max_concurrency)
        || spec.queue.is_some_and(|v| v != c.queue)
        || spec.queue_timeout_ms.is_some_and(|v| v != c.queue_timeout_ms)
        || spec.profile != c.profile
        || spec.watches != c.watches
        || spec.subscriptions != c.subscriptions
}

/// The module's bytes from its source.
pub async fn fetch_module(ctx: &Context, ns: &str, m: &ModuleSource) -> Result<Vec<u8>, Error> {
    match (&m.url, &m.config_map, &m.secret) {
        (Some(url), None, None) => {
            let resp = ctx.http.get(url).send().await.map_err(|e| Error::Module(format!("GET {url}: {e}")))?;
            if !resp.status().is_success() {
                return Err(Error::Module(format!("GET {url}: {}", resp.status())));
            }
            let b = resp.bytes().await.map_err(|e| Error::Module(format!("GET {url}: {e}")))?;
            Ok(b.to_vec())
        }
        (None, Some(r), None) => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            let cm = api.get(&r.name).await?;
            if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(&r.key)) {
                return Ok(b.0.clone());
            }
            if let Some(s) = cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                return Ok(s.clone().into_bytes());
            }
            Err(Error::Module(format!("ConfigMap {ns}/{} has no key {:?}", r.name, r.key)))
        }
        (None, None, Some(r)) => ctx.secret_value(ns, &r.name, &r.key).await,
        _ => Err(Error::Invalid("module needs exactly one of url, config_map, secret".into())),
    }
}

async fn write_status(
    agent: &Agent,
    ctx: &Context,
    ns: &str,
    view: Option<&AgentView>,
    err: Option<&Error>,
) -> Result<(), Error> {
    let gen_ = agent.metadata.generation;
    let prev = agent.status.clone().unwrap_or_default();
    let mut st = AgentStatus { observed_generation: gen_, ..AgentStatus::default() };
    let ready = match (err, view) {
        (Some(e), _) => condition(&prev.conditions, "Ready", false, e.reason(), e.to_string(), gen_),
        (None, None) => {
            condition(&prev.conditions, "Ready", false, "NotFound", "the agent is not deployed".into(), gen_)
        }
        (None, Some(v)) => {
            let ok = v.status == "running" && v.health != "failing" && v.health != "stopped";
            let msg = format!("{} running {}: {}", cortex_name(agent), v.module, v.health);
            condition(&prev.conditions, "Ready", ok, if ok { "Running" } else { "NotRunning" }, msg, gen_)
        }
    };
    st.conditions.push(ready);
    if let Some(v) = view {
        let degraded =
            v.health == "degraded" || v.health == "failing" || (!v.circuit.is_empty() && v.circuit != "closed");
        let msg = format!("health {}, circuit {}", v.health, v.circuit);
        let reason = if degraded { "Unhealthy" } else { "Healthy" };
        st.conditions.push(condition(&prev.conditions, "Degraded", degraded, reason, msg, gen_));
        st.module = Some(v.module.clone());
        st.health = Some(v.health.clone());
        st.circuit = Some(v.circuit.clone());
    } else if let Some(d) = prev.conditions.iter().find(|c| c.type_ == "Degraded") {
        st.conditions.push(d.clone());
    }
    if agent.status.as_ref() == Some(&st) {
        return Ok(());
    }
    let api: Api<Agent> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({ "status": st });
    api.patch_status(&agent.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn cleanup(agent: &Agent, ctx: &Context) -> Result<Action, Error> {
    let ns = agent.namespace().unwrap_or_else(|| "default".into());
    let name = cortex_name(agent);
    let cortex = ctx.cortex_for(&ns, agent.spec.cluster.as_deref()).await?;
    delete(&cortex, &agent.spec.tenant, &name).await?;
    event(ctx, agent, false, "Deleted", "Delete", format!("deleted {}/{name}", agent.spec.tenant)).await;
    Ok(Action::await_change())
}
