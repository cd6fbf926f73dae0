//! The reconcilers against an in-memory Kubernetes API (`cortex_operator::testing`, and
//! `tower_test` mock services where the exact request sequence matters) and a fake Cortex
//! API on 127.0.0.1 that can inject errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use cortex_operator::crd::{Agent, CortexCluster, Tenant};
use cortex_operator::testing::FakeKube;
use cortex_operator::{Context, Cortex, Error, FINALIZER, agent, cluster, tenant};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::FakeCortex;

const NS: &str = "apps";
const WASM: &[u8] = b"\0asm\x01\0\0\0 pretend module v1";
const WASM2: &[u8] = b"\0asm\x01\0\0\0 pretend module v2";

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn agent_path(name: &str) -> String {
    format!("/apis/cortex.dev/v1alpha1/namespaces/{NS}/agents/{name}")
}

fn tenant_path(name: &str) -> String {
    format!("/apis/cortex.dev/v1alpha1/namespaces/{NS}/tenants/{name}")
}

fn cm_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/configmaps/{name}")
}

fn b64(b: &[u8]) -> String {
    // ByteString's serde form is standard base64.
    serde_json::to_value(k8s_openapi::ByteString(b.to_vec())).unwrap().as_str().unwrap().to_owned()
}

fn agent_obj(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "cortex.dev/v1alpha1", "kind": "Agent",
        "metadata": { "name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1 },
        "spec": spec,
    })
}

async fn setup() -> (FakeKube, FakeCortex, Arc<Context>) {
    let cortex = FakeCortex::start().await;
    let (kube, client) = FakeKube::new();
    kube.put(
        &cm_path("modules"),
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "modules", "namespace": NS },
                "binaryData": { "v1.wasm": b64(WASM), "v2.wasm": b64(WASM2) } }),
    );
    let ctx = Arc::new(Context::new(client, Some(Cortex::new(&cortex.url, "admin-token").unwrap())));
    (kube, cortex, ctx)
}

fn load_agent(kube: &FakeKube, name: &str) -> Arc<Agent> {
    Arc::new(serde_json::from_value(kube.get(&agent_path(name)).unwrap()).unwrap())
}

fn load_tenant(kube: &FakeKube, name: &str) -> Arc<Tenant> {
    Arc::new(serde_json::from_value(kube.get(&tenant_path(name)).unwrap()).unwrap())
}

/// Reconcile the stored agent `name` once.
async fn reconcile_agent(kube: &FakeKube, ctx: &Arc<Context>, name: &str) -> Result<(), Error> {
    agent::reconcile(load_agent(kube, name), ctx.clone()).await.map(|_| ())
}

fn condition(obj: &Value, type_: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_default()
}

fn reasons(kube: &FakeKube) -> Vec<String> {
    kube.events().iter().map(|e| e["reason"].as_str().unwrap_or_default().to_owned()).collect()
}

fn set_spec(kube: &FakeKube, path: &str, f: impl FnOnce(&mut Value)) {
    let mut o = kube.get(path).unwrap();
    f(&mut o["spec"]);
    let g = o["metadata"]["generation"].as_i64().unwrap();
    o["metadata"]["generation"] = json!(g + 1);
    kube.put(path, o);
}

async fn tenant_acme(cortex: &FakeCortex) {
    let c = Cortex::new(&cortex.url, "t").unwrap();
    c.ok(reqwest::Method::POST, "/v1/tenants", None, Some(json!({ "name": "acme" }))).await.unwrap();
}

fn cm_spec(key: &str, digest: &str) -> Value {
    json!({ "tenant": "acme", "module": { "config_map": { "name": "modules", "key": key }, "sha256": digest },
            "config": { "greeting": "hi" } })
}

#[tokio::test]
async fn an_agent_is_deployed_upgraded_redeployed_and_deleted() {
    let (kube, cortex, ctx) = setup().await;
    tenant_acme(&cortex).await;
    kube.put(&agent_path("greeter"), agent_obj("greeter", cm_spec("v1.wasm", &sha(WASM))));

    // First round: the finalizer goes on, nothing else.
    reconcile_agent(&kube, &ctx, "greeter").await.unwrap();
    assert_eq!(kube.get(&agent_path("greeter")).unwrap()["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(cortex.agent("acme", "greeter").is_none());

    // Second: upload and deploy; status Ready with the generation; an event.
    reconcile_agent(&kube, &ctx, "greeter").await.unwrap();
    let a = cortex.agent("acme", "greeter").expect("deployed");
    assert_eq!(a["module"], sha(WASM));
    assert_eq!(a["config"], json!({ "greeting": "hi" }));
    let obj = kube.get(&agent_path("greeter")).unwrap();
    assert_eq!(condition(&obj, "Ready")["status"], "True", "{obj}");
    assert_eq!(condition(&obj, "Degraded")["status"], "False", "{obj}");
    assert_eq!(obj["status"]["observed_generation"], 1);
    assert_eq!(obj["status"]["module"], sha(WASM));
    assert!(reasons(&kube).contains(&"Deployed".to_owned()), "{:?}", kube.events());

    // Idempotent: again, no write to Cortex, and no status patch either.
    let (calls, kreqs) = (cortex.calls().len(), kube.requests().len());
    reconcile_agent(&kube, &ctx, "greeter").await.unwrap();
    assert_eq!(cortex.writes_since(calls), Vec::<String>::new());
    assert!(kube.requests()[kreqs..].iter().all(|r| r.starts_with("GET")), "{:?}", &kube.requests()[kreqs..]);

    // A new module digest: upgrade (module and config in one call).
    set_spec(&kube, &agent_path("greeter"), |s| {
        s["module"] = json!({ "config_map": { "name": "modules", "key": "v2.wasm" }, "sha256": sha(WASM2) });
    });
    let calls = cortex.calls().len();
    reconcile_agent(&kube, &ctx, "greeter").await.unwrap();
    assert_eq!(cortex.writes_since(calls), vec!["POST /v1/modules", "POST /v1/agents/greeter/upgrade"]);
    assert_eq!(cortex.agent("acme", "greeter").unwrap()["module"], sha(WASM2));
    let obj = kube.get(&agent_path("greeter")).unwrap();
    assert_eq!(obj["status"]["observed_generation"], 2);
    assert!(reasons(&kube).contains(&"Upgraded".to_owned()));

    // A config change alone: upgrade with the same module, no upload.
    set_spec(&kube, &agent_path("greeter"), |s| s["config"] = json!({ "greeting": "hello" }));
    let calls = cortex.calls().len();
    reconcile_agent(&kube, &ctx, "greeter").await.unwrap();
    assert_eq!(cortex.writes_since(calls), vec!["POST /v1/agents/greeter/upgrade"]);
    assert_eq!(cortex.agent("acme", "greeter").unwrap()["config"], json!({ "greeting": "hello" }));

    // Concurrency and subscriptions have no in-place change: delete and deploy again.
    set_spec(&kube, &agent_path("greeter"), |s| {
        s["max_concurrency"] = json!(2);
        s["subscriptions"] = json!(["orders"]);
    });
    let calls = cortex.calls().len();
    reconcile_agent(&kube, &ctx, "greeter").await.unwrap();
    assert_eq!(cortex.writes_since(calls), vec!["DELETE /v1/agents/greeter", "POST /v1/agents"]);
    let a = cortex.agent("acme", "greeter").unwrap();
    assert_eq!((a["max_concurrency"].clone(), a["subscriptions"].clone()), (json!(2), json!(["orders"])));
    assert!(reasons(&kube).contains(&"Redeployed".to_owned()));

    // Deleted: the agent goes from Cortex, then the finalizer, then the object.
    kube.delete(&agent_path("greeter"));
    assert!(kube.get(&agent_path("greeter")).is_some(), "held by the finalizer");
    reconcile_agent(&kube, &ctx, "greeter").await.unwrap();
    assert!(cortex.agent("acme", "greeter").is_none());
    assert!(kube.get(&agent_path("greeter")).is_none(), "finalizer removed, object gone");
    assert!(reasons(&kube).contains(&"Deleted".to_owned()));
}

#[tokio::test]
async fn a_module_whose_digest_differs_is_not_uploaded() {
    let (kube, cortex, ctx) = setup().await;
    tenant_acme(&cortex).await;
    // The spec names v2's digest but points at v1's bytes.
    kube.put(&agent_path("bad"), agent_obj("bad", cm_spec("v1.wasm", &format!("sha256:{}", sha(WASM2)))));
    reconcile_agent(&kube, &ctx, "bad").await.unwrap();
    let err = reconcile_agent(&kube, &ctx, "bad").await.unwrap_err();
    assert!(format!("{err}").contains("sha256"), "{err}");
    assert!(!cortex.calls().iter().any(|c| c == "POST /v1/modules"), "{:?}", cortex.calls());
    let obj = kube.get(&agent_path("bad")).unwrap();
    assert_eq!(condition(&obj, "Ready")["reason"], "DigestMismatch", "{obj}");
    let warning = kube.events().into_iter().find(|e| e["reason"] == "DigestMismatch").expect("a warning event");
    assert_eq!(warning["type"], "Warning");
}

#[tokio::test]
async fn cortex_errors_and_conflicts_are_retried_with_backoff_until_they_pass() {
    let (kube, cortex, ctx) = setup().await;
    tenant_acme(&cortex).await;
    kube.put(&agent_path("w"), agent_obj("w", cm_spec("v1.wasm", &sha(WASM))));
    reconcile_agent(&kube, &ctx, "w").await.unwrap();
    // The deploy meets a conflict (409), then the store is down (503).
    cortex.inject("POST /v1/agents", 409, "agent_exists");
    cortex.inject("POST /v1/agents", 503, "store_unavailable");
    let mut delays = Vec::new();
    for want in [409, 503] {
        let e = reconcile_agent(&kube, &ctx, "w").await.unwrap_err();
        assert!(format!("{e}").contains(&want.to_string()), "{e}");
        let a = load_agent(&kube, "w");
        let action = agent::error_policy(a, &e, ctx.clone());
        delays.push(format!("{action:?}"));
        let obj = kube.get(&agent_path("w")).unwrap();
        assert_eq!(condition(&obj, "Ready")["status"], "False", "{obj}");
    }
    // The backoff doubles: 2 s, then 4 s.
    assert!(delays[0].contains("2s") && delays[1].contains("4s"), "{delays:?}");
    // Then it passes, and the backoff starts afresh.
    reconcile_agent(&kube, &ctx, "w").await.unwrap();
    assert!(cortex.agent("acme", "w").is_some());
    let obj = kube.get(&agent_path("w")).unwrap();
    assert_eq!(condition(&obj, "Ready")["status"], "True", "{obj}");
    assert_eq!(ctx.backoff("Agent/apps/w"), std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn degraded_follows_the_agents_health_and_circuit() {
    let (kube, cortex, ctx) = setup().await;
    tenant_acme(&cortex).await;
    kube.put(&agent_path("h"), agent_obj("h", cm_spec("v1.wasm", &sha(WASM))));
    reconcile_agent(&kube, &ctx, "h").await.unwrap();
    reconcile_agent(&kube, &ctx, "h").await.unwrap();
    cortex.set_agent_field("acme", "h", "health", json!("failing"));
    cortex.set_agent_field("acme", "h", "circuit", json!("open"));
    reconcile_agent(&kube, &ctx, "h").await.unwrap();
    let obj = kube.get(&agent_path("h")).unwrap();
    assert_eq!(condition(&obj, "Degraded")["status"], "True", "{obj}");
    assert!(condition(&obj, "Degraded")["message"].as_str().unwrap().contains("circuit open"), "{obj}");
    assert_eq!(condition(&obj, "Ready")["status"], "False", "{obj}");
    assert_eq!(obj["status"]["circuit"], "open");
}

#[tokio::test]
async fn an_agent_deleted_from_cortex_already_still_loses_its_finalizer() {
    let (kube, cortex, ctx) = setup().await;
    tenant_acme(&cortex).await;
    kube.put(&agent_path("g"), agent_obj("g", cm_spec("v1.wasm", &sha(WASM))));
    reconcile_agent(&kube, &ctx, "g").await.unwrap();
    kube.delete(&agent_path("g"));
    reconcile_agent(&kube, &ctx, "g").await.unwrap();
    assert!(kube.get(&agent_path("g")).is_none());
    // A refusal other than 404 keeps the finalizer (and the object) for a retry.
    kube.put(&agent_path("k"), agent_obj("k", cm_spec("v1.wasm", &sha(WASM))));
    reconcile_agent(&kube, &ctx, "k").await.unwrap();
    reconcile_agent(&kube, &ctx, "k").await.unwrap();
    kube.delete(&agent_path("k"));
    cortex.inject("DELETE /v1/agents/k", 500, "internal");
    assert!(reconcile_agent(&kube, &ctx, "k").await.is_err());
    assert!(kube.get(&agent_path("k")).is_some());
    reconcile_agent(&kube, &ctx, "k").await.unwrap();
    assert!(kube.get(&agent_path("k")).is_none());
    assert!(cortex.agent("acme", "k").is_none());
}

#[tokio::test]
async fn a_tenant_is_created_updated_with_its_profiles_and_deleted() {
    let (kube, cortex, ctx) = setup().await;
    kube.put(
        &tenant_path("acme"),
        json!({ "apiVersion": "cortex.dev/v1alpha1", "kind": "Tenant",
                "metadata": { "name": "acme", "namespace": NS, "uid": "u-acme", "generation": 1 },
                "spec": { "quotas": { "agents": 5 },
                          "profiles": { "small": { "limits": { "fuel": 1000 }, "max_concurrency": 2 } } } }),
    );
    let run = async || tenant::reconcile(load_tenant(&kube, "acme"), ctx.clone()).await.map(|_| ());
    run().await.unwrap(); // finalizer
    run().await.unwrap();
    assert_eq!(cortex.tenant("acme").unwrap()["quotas"]["agents"], 5);
    assert_eq!(cortex.profiles("acme"), vec!["small"]);
    assert_eq!(condition(&kube.get(&tenant_path("acme")).unwrap(), "Ready")["status"], "True");
    // Again: nothing written.
    let calls = cortex.calls().len();
    run().await.unwrap();
    assert_eq!(cortex.writes_since(calls), Vec::<String>::new());
    // Quotas and profiles change: a patch, a new profile, the old one deleted.
    set_spec(&kube, &tenant_path("acme"), |s| {
        s["quotas"]["agents"] = json!(7);
        s["profiles"] = json!({ "big": { "max_concurrency": 8 } });
    });
    let calls = cortex.calls().len();
    run().await.unwrap();
    assert_eq!(
        cortex.writes_since(calls),
        vec!["PATCH /v1/tenants/acme", "PUT /v1/profiles/big", "DELETE /v1/profiles/small"]
    );
    assert_eq!(cortex.tenant("acme").unwrap()["quotas"]["agents"], 7);
    // A conflict creating it (another writer) is an error to retry, shown in the status.
    kube.put(
        &tenant_path("beta"),
        json!({ "apiVersion": "cortex.dev/v1alpha1", "kind": "Tenant",
                "metadata": { "name": "beta", "namespace": NS, "uid": "u-beta", "generation": 1, "finalizers": [FINALIZER] },
                "spec": {} }),
    );
    cortex.inject("POST /v1/tenants", 409, "tenant_name_busy");
    let e = tenant::reconcile(load_tenant(&kube, "beta"), ctx.clone()).await.unwrap_err();
    assert!(format!("{e}").contains("409"), "{e}");
    assert_eq!(condition(&kube.get(&tenant_path("beta")).unwrap(), "Ready")["reason"], "Conflict");
    tenant::reconcile(load_tenant(&kube, "beta"), ctx.clone()).await.unwrap();
    assert!(cortex.tenant("beta").is_some());
    // Deleted: the tenant goes, then the finalizer.
    kube.delete(&tenant_path("acme"));
    run().await.unwrap();
    assert!(cortex.tenant("acme").is_none());
    assert!(kube.get(&tenant_path("acme")).is_none());
}

#[tokio::test]
async fn a_cortex_cluster_scales_its_deployment_through_the_scale_subresource() {
    let (kube, cortex, ctx) = setup().await;
    let dep = format!("/apis/apps/v1/namespaces/{NS}/deployments/cortex");
    kube.put(
        &dep,
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "cortex", "namespace": NS },
                "spec": { "replicas": 2, "selector": {}, "template": { "spec": { "containers": [
                    { "name": "cortex", "image": "cortex:1" } ] } } } }),
    );
    kube.put(
        &format!("/api/v1/namespaces/{NS}/secrets/admin"),
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "admin", "namespace": NS },
                "data": { "token": b64(b"admin-token") } }),
    );
    let path = format!("/apis/cortex.dev/v1alpha1/namespaces/{NS}/cortexclusters/cortex");
    kube.put(
        &path,
        json!({ "apiVersion": "cortex.dev/v1alpha1", "kind": "CortexCluster",
                "metadata": { "name": "cortex", "namespace": NS, "uid": "u-c", "generation": 1 },
                "spec": { "image": "cortex:1", "url": cortex.url, "credentials": { "name": "admin" },
                          "replicas": { "min": 1, "max": 6 },
                          "autoscaling": { "target_load_per_node": 10.0, "cooldown_seconds": 60 } } }),
    );
    let node = |id: &str, in_flight: u64| json!({ "id": id, "live": true, "load": { "in_flight": in_flight, "queued": 0, "mailbox": 0, "wasm_seconds_per_second": 0.0 } });
    cortex.state.lock().unwrap().cluster = json!({ "nodes": [node("a", 20), node("b", 20)] });
    let load = || -> Arc<CortexCluster> { Arc::new(serde_json::from_value(kube.get(&path).unwrap()).unwrap()) };
    let now = 1_000_000_000;
    cluster::scale(&load(), &ctx, now).await.unwrap();
    // 40 in all, 10 per node: 4 replicas, through deployments/scale.
    assert_eq!(kube.get(&dep).unwrap()["spec"]["replicas"], 4);
    assert!(kube.requests().iter().any(|r| r == &format!("PATCH {dep}/scale")), "{:?}", kube.requests());
    assert!(!kube.requests().iter().any(|r| r == &format!("PATCH {dep}")), "the Deployment itself is not rewritten");
    let obj = kube.get(&path).unwrap();
    assert_eq!(obj["status"]["replicas"], 4);
    assert_eq!(obj["status"]["last_scale_ms"], now);
    assert_eq!(condition(&obj, "ImageMatches")["status"], "True");
    assert!(reasons(&kube).contains(&"Scaled".to_owned()));
    // Idle right after: the cool-down holds it.
    cortex.state.lock().unwrap().cluster = json!({ "nodes": [node("a", 0), node("b", 0), node("c", 0), node("d", 0)] });
    cluster::scale(&load(), &ctx, now + 10_000).await.unwrap();
    assert_eq!(kube.get(&dep).unwrap()["spec"]["replicas"], 4);
    assert!(kube.get(&path).unwrap()["status"]["last_decision"].as_str().unwrap().contains("cooling"));
    // After it: down to the minimum.
    cluster::scale(&load(), &ctx, now + 61_000).await.unwrap();
    assert_eq!(kube.get(&dep).unwrap()["spec"]["replicas"], 1);
    // Cortex unreachable: an error, and the replicas are left alone.
    cortex.inject("GET /v1/cluster", 503, "store_unavailable");
    assert!(cluster::scale(&load(), &ctx, now + 200_000).await.is_err());
    assert_eq!(kube.get(&dep).unwrap()["spec"]["replicas"], 1);
    assert_eq!(condition(&kube.get(&path).unwrap(), "Ready")["status"], "False");
}

/// The exact requests of a first reconcile against a `tower_test` mock API server: the
/// finalizer is added by a JSON patch that first tests the list is absent, and a
/// Kubernetes error there (409 Conflict: someone else changed it) is the reconcile's error.
#[tokio::test]
async fn the_finalizer_is_added_with_a_guarded_json_patch_and_a_kube_conflict_fails_the_reconcile() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let ctx = Arc::new(Context::new(client, Some(Cortex::new("http://127.0.0.1:9", "t").unwrap())));
    let obj: Agent = serde_json::from_value(agent_obj("m", cm_spec("v1.wasm", &sha(WASM)))).unwrap();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), Method::PATCH);
        assert_eq!(req.uri().path(), agent_path("m"));
        assert_eq!(req.headers()["content-type"], "application/json-patch+json");
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body[0]["op"], "test");
        assert_eq!(body[1], json!({ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }));
        let status = cortex_operator::testing::status_body(409, "Conflict", "the object has been modified");
        send.send_response(
            Response::builder().status(409).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap(),
        );
    });
    let e = agent::reconcile(Arc::new(obj), ctx).await.unwrap_err();
    server.await.unwrap();
    assert!(format!("{e}").contains("finalizer"), "{e}");
}
