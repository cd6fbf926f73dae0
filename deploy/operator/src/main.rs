//! `cortex-operator`: runs the `CortexCluster`, `Tenant` and `Agent` controllers.
//!
//! Resources that name no `cluster` use `--cortex-url` with the platform-admin token read
//! from `--cortex-token-file` (or `CORTEX_TOKEN`). The Kubernetes connection is the
//! in-cluster service account (or `KUBECONFIG`).

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use cortex_operator::crd::{Agent, CortexCluster, Tenant};
use cortex_operator::{Context, Cortex, agent, cluster, tenant};
use futures_util::StreamExt;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "cortex-operator", version, about = "Kubernetes operator for Cortex")]
struct Args {
    /// The Cortex API for resources that name no CortexCluster.
    #[arg(long, env = "CORTEX_URL")]
    cortex_url: Option<String>,
    /// A file holding a platform-admin token (a mounted Secret key).
    #[arg(long, env = "CORTEX_TOKEN_FILE")]
    cortex_token_file: Option<std::path::PathBuf>,
    /// Watch this namespace only (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    }
}

/// Log one reconcile's result (failures are logged by the error policy too).
async fn logged<T: std::fmt::Debug, E: std::fmt::Display>(what: &'static str, r: Result<T, E>) {
    match r {
        Ok(obj) => tracing::debug!(%what, ?obj, "reconciled"),
        Err(e) => tracing::debug!(%what, error = %e, "reconcile failed"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let token = match (&args.cortex_token_file, std::env::var("CORTEX_TOKEN")) {
        (Some(f), _) => Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?),
        (None, Ok(t)) => Some(t),
        (None, Err(_)) => None,
    };
    let default_cortex = match (&args.cortex_url, token) {
        (Some(url), Some(token)) => Some(Cortex::new(url, &token)?),
        (Some(_), None) => anyhow::bail!("--cortex-url needs --cortex-token-file or CORTEX_TOKEN"),
        (None, _) => None,
    };
    let client = Client::try_default().await.context("connecting to Kubernetes")?;
    let ctx = Arc::new(Context::new(client.clone(), default_cortex));
    let ns = args.namespace.as_deref();
    tracing::info!(namespace = ns.unwrap_or("*"), "cortex-operator starting");
    let clusters = Controller::new(api::<CortexCluster>(&client, ns), watcher::Config::default())
        .shutdown_on_signal()
        .run(cluster::reconcile, cluster::error_policy, ctx.clone())
        .for_each(|r| logged("CortexCluster", r));
    let tenants = Controller::new(api::<Tenant>(&client, ns), watcher::Config::default())
        .shutdown_on_signal()
        .run(tenant::reconcile, tenant::error_policy, ctx.clone())
        .for_each(|r| logged("Tenant", r));
    let agents = Controller::new(api::<Agent>(&client, ns), watcher::Config::default())
        .shutdown_on_signal()
        .run(agent::reconcile, agent::error_policy, ctx.clone())
        .for_each(|r| logged("Agent", r));
    futures_util::future::join3(clusters, tenants, agents).await;
    tracing::info!("cortex-operator stopped");
    Ok(())
}
