//! The `Tenant` reconciler.
//!
//! Apply: `GET /v1/tenants/{name}`; a missing tenant is created with the spec's quotas
//! (`POST /v1/tenants`), an existing one whose quotas differ from those the spec names is
//! patched (`PATCH /v1/tenants/{name}`). Then its profiles: each one of the spec missing or
//! different is written (`PUT /v1/profiles/{name}`), each one not in the spec deleted.
//!
//! Cleanup: `DELETE /v1/tenants/{name}`, which deletes the tenant's agents, modules and
//! profiles with it (a missing tenant is fine).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::crd::{ProfileSpec, Tenant, TenantStatus};
use crate::status::{condition, event};
use crate::{Context, Cortex, Error, FINALIZER};

/// How often a settled tenant is compared again.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Reconcile `tenant` (the controller's entry point).
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = tenant.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
    let key = crate::object_key(tenant.as_ref());
    let out = finalizer(&api, FINALIZER, tenant, |ev| async {
        match ev {
            Finalizer::Apply(t) => apply(&t, &ctx).await,
            Finalizer::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&key);
    Ok(out)
}

/// The controller's error policy.
pub fn error_policy(tenant: Arc<Tenant>, e: &Error, ctx: Arc<Context>) -> Action {
    crate::retry_after(tenant.as_ref(), e, &ctx)
}

/// The tenant's name in Cortex.
pub fn cortex_name(t: &Tenant) -> String {
    t.spec.name.clone().unwrap_or_else(|| t.name_any())
}

async fn apply(t: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let ns = t.namespace().unwrap_or_else(|| "default".into());
    let result = converge(t, ctx, &ns).await;
    let gen_ = t.metadata.generation;
    let prev = t.status.clone().unwrap_or_default();
    let ready = match &result {
        Ok(()) => condition(
            &prev.conditions,
            "Ready",
            true,
            "Reconciled",
            format!("tenant {} matches the spec", cortex_name(t)),
            gen_,
        ),
        Err(e) => condition(&prev.conditions, "Ready", false, e.reason(), e.to_string(), gen_),
    };
    let st = TenantStatus { conditions: vec![ready], observed_generation: gen_ };
    if t.status.as_ref() != Some(&st) {
        let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(&t.name_any(), &PatchParams::default(), &Patch::Merge(&json!({ "status": st }))).await?;
    }
    match result {
        Ok(()) => Ok(Action::requeue(RESYNC)),
        Err(e) => {
            event(ctx, t, true, e.reason(), "Reconcile", e.to_string()).await;
            Err(e)
        }
    }
}

async fn converge(t: &Tenant, ctx: &Context, ns: &str) -> Result<(), Error> {
    let name = cortex_name(t);
    let cortex = ctx.cortex_for(ns, t.spec.cluster.as_deref()).await?;
    let path = format!("/v1/tenants/{name}");
    let quotas = serde_json::to_value(&t.spec.quotas).map_err(|e| Error::Invalid(e.to_string()))?;
    let a = cortex.call(Method::GET, &path, None, None, None).await?;
    match a.status {
        StatusCode::NOT_FOUND => {
            cortex.ok(Method::POST, "/v1/tenants", None, Some(json!({ "name": name, "quotas": quotas }))).await?;
            event(ctx, t, false, "Created", "Create", format!("created tenant {name}")).await;
        }
        s if s.is_success() => {
            if !quotas_match(&quotas, &a.body["quotas"]) {
                cortex.ok(Method::PATCH, &path, None, Some(json!({ "quotas": quotas }))).await?;
                event(ctx, t, false, "Updated", "Update", format!("updated the quotas of tenant {name}")).await;
            }
        }
        _ => return Err(Error::api(&Method::GET, &path, &a)),
    }
    sync_profiles(&cortex, &name, &t.spec.profiles).await?;
    Ok(())
}

/// Whether every quota `want` names has that value in `have`.
pub fn quotas_match(want: &Value, have: &Value) -> bool {
    want.as_object().is_none_or(|w| w.iter().all(|(k, v)| have.get(k) == Some(v)))
}

async fn sync_profiles(
    cortex: &Cortex,
    tenant: &str,
    want: &std::collections::BTreeMap<String, ProfileSpec>,
) -> Result<(), Error> {
    let have = cortex.ok(Method::GET, "/v1/profiles", Some(tenant), None).await?;
    let have: Vec<Value> = match have {
        Value::Array(a) => a,
        other => other.get("profiles").and_then(|p| p.as_array()).cloned().unwrap_or_default(),
    };
    for (name, spec) in want {
        let existing = have.iter().find(|p| p["name"] == name.as_str());
        let same = existing.is_some_and(|p| {
            serde_json::from_value::<ProfileSpec>(
                json!({ "limits": p["limits"], "max_concurrency": p["max_concurrency"] }),
            )
            .is_ok_and(|h| h == *spec)
        });
        if !same {
            let body = serde_json::to_value(spec).map_err(|e| Error::Invalid(e.to_string()))?;
            cortex.ok(Method::PUT, &format!("/v1/profiles/{name}"), Some(tenant), Some(body)).await?;
        }
    }
    for p in &have {
        let Some(name) = p["name"].as_str() else { continue };
        if !want.contains_key(name) {
            cortex.ok(Method::DELETE, &format!("/v1/profiles/{name}"), Some(tenant), None).await?;
        }
    }
    Ok(())
}

async fn cleanup(t: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let ns = t.namespace().unwrap_or_else(|| "default".into());
    let name = cortex_name(t);
    let cortex = ctx.cortex_for(&ns, t.spec.cluster.as_deref()).await?;
    let path = format!("/v1/tenants/{name}");
    let a = cortex.call(Method::DELETE, &path, None, None, None).await?;
    if !(a.status.is_success() || a.status == StatusCode::NOT_FOUND) {
        return Err(Error::api(&Method::DELETE, &path, &a));
    }
    event(ctx, t, false, "Deleted", "Delete", format!("deleted tenant {name}")).await;
    Ok(Action::await_change())
}
