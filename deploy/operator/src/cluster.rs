//! The `CortexCluster` reconciler: reads the nodes' load from Cortex (`GET /v1/cluster`),
//! decides ([`crate::autoscale::decide`]) and sets the host Deployment's replicas through
//! its `scale` subresource (never by rewriting the Deployment, which the manifests own).
//! It also reports whether the Deployment runs the spec's image (`ImageMatches`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::autoscale::{Decision, NodeLoad, decide};
use crate::crd::{CortexCluster, CortexClusterStatus};
use crate::status::{condition, event, now_ms};
use crate::{Context, Cortex, Error};

/// The Cortex API of cluster `c`: its URL (or the Deployment's Service) and the
/// platform-admin token from its credentials Secret.
pub async fn cortex_of(ctx: &Context, c: &CortexCluster) -> Result<Cortex, Error> {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let url = c.spec.url.clone().unwrap_or_else(|| format!("http://{}.{ns}.svc:8080", deployment_name(c)));
    let cred = &c.spec.credentials;
    let token = ctx.secret_value(&ns, &cred.name, cred.key.as_deref().unwrap_or("token")).await?;
    let token = String::from_utf8(token).map_err(|_| Error::Invalid("the credentials token is not UTF-8".into()))?;
    Cortex::new(&url, &token)
}

/// The host Deployment's name.
pub fn deployment_name(c: &CortexCluster) -> String {
    c.spec.deployment.clone().unwrap_or_else(|| c.name_any())
}

/// Reconcile `c` (the controller's entry point).
pub async fn reconcile(c: Arc<CortexCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = crate::object_key(c.as_ref());
    let out = scale(&c, &ctx, now_ms()).await?;
    ctx.succeeded(&key);
    Ok(out)
}

/// The controller's error policy.
pub fn error_policy(c: Arc<CortexCluster>, e: &Error, ctx: Arc<Context>) -> Action {
    crate::retry_after(c.as_ref(), e, &ctx)
}

/// One autoscaling round at `now` (ms since the epoch).
pub async fn scale(c: &CortexCluster, ctx: &Context, now: u64) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let gen_ = c.metadata.generation;
    let prev = c.status.clone().unwrap_or_default();
    let interval = Duration::from_secs(c.spec.autoscaling.as_ref().map_or(30, |p| p.interval_seconds.max(1)));
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let dep = deployment_name(c);
    let current = deployments.get_scale(&dep).await?.spec.and_then(|s| s.replicas).unwrap_or(0);
    let image = deployments
        .get(&dep)
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.first().and_then(|c| c.image.clone()))
        .unwrap_or_default();
    let mut st = CortexClusterStatus { observed_generation: gen_, replicas: Some(current), ..prev.clone() };
    let same = image == c.spec.image;
    st.conditions = vec![condition(
        &prev.conditions,
        "ImageMatches",
        same,
        if same { "Matches" } else { "Differs" },
        format!("the Deployment runs {image:?}, the spec names {:?}", c.spec.image),
        gen_,
    )];
    let nodes = match cortex_of(ctx, c).await {
        Ok(cx) => cx.cluster().await,
        Err(e) => Err(e),
    };
    let loads: Vec<NodeLoad> = match &nodes {
        Ok(n) => n
            .iter()
            .map(|n| NodeLoad {
                live: n.live,
                in_flight: n.load.in_flight,
                queued: n.load.queued,
                mailbox: n.load.mailbox,
                wasm_seconds_per_second: n.load.wasm_seconds_per_second,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    match &nodes {
        Ok(_) => st.conditions.push(condition(
            &prev.conditions,
            "Ready",
            true,
            "LoadRead",
            "read the nodes' load".into(),
            gen_,
        )),
        Err(e) => st.conditions.push(condition(&prev.conditions, "Ready", false, e.reason(), e.to_string(), gen_)),
    }
    if let Some(p) = &c.spec.autoscaling {
        st.live_nodes = Some(loads.iter().filter(|n| n.live).count() as u32);
        st.load = Some(loads.iter().filter(|n| n.live).map(|n| n.figure(p)).sum());
    }
    // Without the load, only the bounds are enforced.
    let policy = if nodes.is_ok() { c.spec.autoscaling.as_ref() } else { None };
    let decision = decide(&c.spec.replicas, policy, &loads, current, prev.last_scale_ms, now);
    st.last_decision = Some(decision.reason().to_owned());
    if let Decision::Scale { to, reason } = &decision {
        let patch = json!({ "spec": { "replicas": to } });
        deployments.patch_scale(&dep, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        st.replicas = Some(*to);
        st.last_scale_ms = Some(now);
        event(ctx, c, false, "Scaled", "Scale", format!("{dep}: {current} -> {to} replicas ({reason})")).await;
    }
    if c.status.as_ref() != Some(&st) {
        let api: Api<CortexCluster> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(&c.name_any(), &PatchParams::default(), &Patch::Merge(&json!({ "status": st }))).await?;
    }
    match nodes {
        Ok(_) => Ok(Action::requeue(interval)),
        Err(e) => Err(e),
    }
}
