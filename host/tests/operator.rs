//! The Kubernetes operator (`deploy/operator`) against a real `cortex serve` process: a
//! `Tenant` and an `Agent` served by the operator's in-memory Kubernetes API become a real
//! tenant and a deployed, invokable agent; a changed module upgrades it; deleting the
//! resource deletes the agent and lets the resource go. The module comes from a URL served
//! by the test on 127.0.0.1, then from a ConfigMap, each with its sha256.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cortex_artifacts as art;
use cortex_operator::crd::{Agent, Tenant};
use cortex_operator::testing::FakeKube;
use cortex_operator::{Context, Cortex, FINALIZER, agent, tenant};
use serde_json::{Value, json};

#[path = "support/serve.rs"]
mod serve;
use serve::Serve;

const NS: &str = "apps";

/// Serve `bytes` at `http://127.0.0.1:PORT/module.wasm`.
async fn serve_file(bytes: Vec<u8>) -> String {
    let app = axum::Router::new().route("/module.wasm", axum::routing::get(move || async move { bytes.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/module.wasm", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn sha(bytes: &[u8]) -> String {
    cortex_host::runtime::digest(bytes)
}

fn path(kind: &str, name: &str) -> String {
    format!("/apis/cortex.dev/v1alpha1/namespaces/{NS}/{kind}/{name}")
}

async fn reconcile_agent(kube: &FakeKube, ctx: &Arc<Context>) {
    let a: Agent = serde_json::from_value(kube.get(&path("agents", "greeter")).unwrap()).unwrap();
    agent::reconcile(Arc::new(a), ctx.clone()).await.unwrap();
}

/// Reconcile until the agent reports Ready (a module compiles in the background after its
/// upload: a deploy may be refused until it is done, and is retried).
async fn until_ready(kube: &FakeKube, ctx: &Arc<Context>, generation: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let a: Agent = serde_json::from_value(kube.get(&path("agents", "greeter")).unwrap()).unwrap();
        let r = agent::reconcile(Arc::new(a), ctx.clone()).await;
        let obj = kube.get(&path("agents", "greeter")).unwrap();
        let ready = obj["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if r.is_ok() && ready && obj["status"]["observed_generation"] == generation {
            return obj;
        }
        assert!(std::time::Instant::now() < deadline, "not ready: {r:?} {obj}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn invoke(http: &reqwest::Client, s: &Serve, token: &str, input: &str) -> (u16, String) {
    let r = http
        .post(format!("{}/v1/agents/greeter/invoke", s.base))
        .bearer_auth(token)
        .body(input.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_resource_becomes_an_invokable_agent_is_upgraded_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"));
    let http = reqwest::Client::new();
    s.ready().await;
    let admin = s.token(None, "platform-admin");
    let (kube, client) = FakeKube::new();
    let ctx = Arc::new(Context::new(client, Some(Cortex::new(&s.base, &admin).unwrap())));

    // The tenant, as a resource.
    kube.put(
        &path("tenants", "acme"),
        json!({ "apiVersion": "cortex.dev/v1alpha1", "kind": "Tenant",
                "metadata": { "name": "acme", "namespace": NS, "uid": "u-t", "generation": 1 },
                "spec": { "quotas": { "agents": 10 }, "profiles": { "small": { "max_concurrency": 2 } } } }),
    );
    for _ in 0..2 {
        let t: Tenant = serde_json::from_value(kube.get(&path("tenants", "acme")).unwrap()).unwrap();
        tenant::reconcile(Arc::new(t), ctx.clone()).await.unwrap();
    }
    let t: Value =
        http.get(format!("{}/v1/tenants/acme", s.base)).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(t["quotas"]["agents"], 10, "{t}");

    // The agent, its module (hello) from a URL.
    let hello = std::fs::read(art::HELLO).unwrap();
    let url = serve_file(hello.clone()).await;
    kube.put(
        &path("agents", "greeter"),
        json!({ "apiVersion": "cortex.dev/v1alpha1", "kind": "Agent",
                "metadata": { "name": "greeter", "namespace": NS, "uid": "u-a", "generation": 1 },
                "spec": { "tenant": "acme", "module": { "url": url, "sha256": sha(&hello) },
                          "profile": "small", "config": { "k": "v" } } }),
    );
    reconcile_agent(&kube, &ctx).await; // the finalizer
    assert_eq!(kube.get(&path("agents", "greeter")).unwrap()["metadata"]["finalizers"], json!([FINALIZER]));
    let obj = until_ready(&kube, &ctx, 1).await;
    assert_eq!(obj["status"]["module"], sha(&hello));
    let dev = s.token(Some("acme"), "developer");
    assert_eq!(invoke(&http, &s, &dev, "k8s").await, (200, "Hello, k8s!".to_owned()));

    // A changed spec (another module, from a ConfigMap now) upgrades it.
    let compute = std::fs::read(art::COMPUTE).unwrap();
    let bytes = serde_json::to_value(k8s_openapi::ByteString(compute.clone())).unwrap();
    kube.put(
        &format!("/api/v1/namespaces/{NS}/configmaps/modules"),
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "modules", "namespace": NS },
                "binaryData": { "compute.wasm": bytes } }),
    );
    let mut o = kube.get(&path("agents", "greeter")).unwrap();
    o["spec"]["module"] =
        json!({ "config_map": { "name": "modules", "key": "compute.wasm" }, "sha256": sha(&compute) });
    o["metadata"]["generation"] = json!(2);
    kube.put(&path("agents", "greeter"), o);
    let obj = until_ready(&kube, &ctx, 2).await;
    assert_eq!(obj["status"]["module"], sha(&compute));
    let (status, body) = invoke(&http, &s, &dev, "cpu:10").await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(invoke(&http, &s, &dev, "k8s").await.0, 200, "hello no longer answers");
    let view: Value =
        http.get(format!("{}/v1/agents/greeter", s.base)).bearer_auth(&dev).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["module"], sha(&compute), "{view}");
    assert_eq!(view["previous_module"], sha(&hello), "an upgrade, not a new deploy: {view}");

    // Deleted (deletionTimestamp, finalizer present): the agent goes, then the finalizer.
    kube.delete(&path("agents", "greeter"));
    assert!(kube.get(&path("agents", "greeter")).is_some());
    reconcile_agent(&kube, &ctx).await;
    assert!(kube.get(&path("agents", "greeter")).is_none(), "finalizer removed");
    let r = http.get(format!("{}/v1/agents/greeter", s.base)).bearer_auth(&dev).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(invoke(&http, &s, &dev, "cpu:1").await.0, 404);
}
