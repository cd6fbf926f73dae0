//! Issue 14's cluster numbers, three nodes in this process over one embedded store, each
//! with its own HTTP listener and data dir:
//! - registry propagation: a change (stop or start of an agent) made through node 1 until
//!   node 3 has applied it, p50/p99 over the rounds; the baseline is the same request's own
//!   latency on node 1 (the change in force there, read your writes), measured in the same
//!   rounds;
//! - failover: the node owning a watching agent is killed (stopped at once without handing
//!   anything back, as `kill -9` would leave it), then a document is written through a
//!   surviving node; timed until the watcher, now run by another node, has delivered it.
//!   p50/p99 over the kills (a fresh node joins after each kill, so three nodes stay). The
//!   bound is the lease TTL plus a heartbeat (the configuration is printed); the baseline is
//!   the same write's delivery while no node is killed.
//!
//! Run: `cargo bench -p cortex-benches --bench cluster [-- KILLS]` (20 by default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_host::api::AppState;
use cortex_host::api::auth::Claims;
use cortex_host::config::ServerConfig;
use cortex_host::registry::{Quotas, now_ms};
use cortex_host::store::{EmbeddedStore, Store};
use serde_json::{Value, json};

const HEARTBEAT_MS: u64 = 200;
const TTL_MS: u64 = 1_000;

struct Node {
    state: Arc<AppState>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

async fn node(store: Arc<dyn Store>, secret: &std::path::Path) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig { data_dir: dir.path().to_path_buf(), ..ServerConfig::default() };
    cfg.engine.compile.program = Some(env!("CARGO_BIN_EXE_cortex-bench-compile").into());
    cfg.auth.secret_file = Some(secret.to_path_buf());
    cfg.cluster.heartbeat_ms = HEARTBEAT_MS;
    cfg.cluster.node_ttl_ms = TTL_MS;
    cfg.cluster.lease_ttl_ms = TTL_MS;
    cfg.quotas = Quotas { invocations_per_second: 1_000_000, burst: 1_000_000, ..Quotas::default() };
    let state = cortex_host::server::build_on(cfg, store).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cortex_host::server::serve(state.clone(), listener, async {
        let _ = stopped.await;
    }));
    Node { state, addr, stop: Some(stop), _dir: dir }
}

fn token(state: &AppState, tenant: Option<&str>, role: &str) -> String {
    let c = ServerConfig::default().auth;
    let claims = Claims {
        sub: "bench".into(),
        iss: c.issuer,
        aud: c.audience,
        exp: now_ms() / 1000 + 3600,
        iat: None,
        tenant: tenant.map(str::to_owned),
        role: role.into(),
    };
    state.verifier.mint(&claims).unwrap()
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn post(c: &reqwest::Client, n: &Node, path: &str, tok: &str, body: Value) -> Value {
    let r = c.post(format!("http://{}{path}", n.addr)).bearer_auth(tok).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

async fn invoke(c: &reqwest::Client, n: &Node, agent: &str, tok: &str, input: &str) -> String {
    let r = c
        .post(format!("http://{}/v1/agents/{agent}/invoke", n.addr))
        .bearer_auth(tok)
        .body(input.to_owned())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "invoke {agent}: {}", r.status());
    r.text().await.unwrap()
}

/// Time until the watcher `w` (read through `n`) has seen `key`.
async fn until_seen(c: &reqwest::Client, n: &Node, tok: &str, key: &str, start: Instant) -> Duration {
    loop {
        let seen = invoke(c, n, "w", tok, "").await;
        if seen.contains(key) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{key} not delivered within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kills: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20);
    let shared = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&shared.path().join("store")).unwrap());
    let secret = shared.path().join("jwt.secret");
    std::fs::write(&secret, cortex_host::secrets::hex(&cortex_host::secrets::random_bytes::<32>().unwrap())).unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(store.clone(), &secret).await);
    }
    let c = reqwest::Client::new();
    let admin = token(&nodes[0].state, None, "platform-admin");
    post(&c, &nodes[0], "/v1/tenants", &admin, json!({"name": "acme"})).await;
    let dev = token(&nodes[0].state, Some("acme"), "developer");
    let upload = |path: &'static str| {
        let c = c.clone();
        let (addr, dev) = (nodes[0].addr, dev.clone());
        async move {
            let r = c.post(format!("http://{addr}/v1/modules")).bearer_auth(dev).body(std::fs::read(path).unwrap());
            let v: Value = r.send().await.unwrap().json().await.unwrap();
            v["digest"].as_str().unwrap().to_owned()
        }
    };
    let kv = upload(cortex_artifacts::KV).await;
    let watcher = upload(cortex_artifacts::WATCHER).await;
    post(&c, &nodes[0], "/v1/agents", &dev, json!({"name": "writer", "module": kv})).await;
    post(
        &c,
        &nodes[0],
        "/v1/agents",
        &dev,
        json!({"name": "w", "module": watcher, "watches": [{"collection": "orders"}]}),
    )
    .await;

    // Every node has both agents installed (and their modules compiled) before the rounds:
    // a compile is not propagation.
    for n in &nodes {
        while n.state.agents.get("acme", "writer").is_none() || n.state.agents.get("acme", "w").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Registry propagation.
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let action = if i % 2 == 0 { "stop" } else { "start" };
        let start = Instant::now();
        let v = post(&c, &nodes[0], &format!("/v1/agents/writer/{action}"), &dev, json!({})).await;
        local.push(start.elapsed());
        let want = v["status"].as_str().unwrap().to_owned();
        loop {
            let there = nodes[2].state.agents.get("acme", "writer");
            if there.is_some_and(|d| serde_json::to_value(d.record.status).unwrap() == json!(want)) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        remote.push(start.elapsed());
    }

    // Delivery with every node up (the baseline), then failover.
    let mut steady = Vec::new();
    for i in 0..10 {
        let key = format!("s{i}");
        let start = Instant::now();
        invoke(&c, &nodes[0], "writer", &dev, &format!("put:orders/{key}={{}}")).await;
        steady.push(until_seen(&c, &nodes[0], &dev, &key, start).await);
    }
    let mut failover = Vec::new();
    for i in 0..kills {
        let owner = loop {
            if let Some(i) = nodes.iter().position(|n| n.state.agents.owned().iter().any(|(a, _)| a == "acme/w")) {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut dead = nodes.remove(owner);
        let _ = dead.stop.take().map(|s| s.send(()));
        let start = Instant::now();
        dead.state.agents.crash().await;
        let key = format!("k{i}");
        invoke(&c, &nodes[0], "writer", &dev, &format!("put:orders/{key}={{}}")).await;
        failover.push(until_seen(&c, &nodes[0], &dev, &key, start).await);
        drop(dead);
        nodes.push(node(store.clone(), &secret).await);
    }

    println!("== cluster (3 nodes, one embedded store; heartbeat {HEARTBEAT_MS} ms, node and lease TTL {TTL_MS} ms)");
    println!(
        "registry propagation: p50 {:.2} ms, p99 {:.2} ms (node 1's own answer: p50 {:.2} ms; ratio p50 {:.2})",
        ms(pct(remote.clone(), 0.5)),
        ms(pct(remote.clone(), 0.99)),
        ms(pct(local.clone(), 0.5)),
        ms(pct(remote, 0.5)) / ms(pct(local, 0.5)),
    );
    println!(
        "failover over {kills} kills: p50 {:.0} ms, p99 {:.0} ms (delivery with no kill: p50 {:.1} ms; ratio p50 {:.0})",
        ms(pct(failover.clone(), 0.5)),
        ms(pct(failover.clone(), 0.99)),
        ms(pct(steady.clone(), 0.5)),
        ms(pct(failover, 0.5)) / ms(pct(steady, 0.5)),
    );
}
