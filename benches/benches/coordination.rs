//! Coordination benchmarks over a real server (embedded store in a temporary directory):
//!
//! 1. change-feed latency: a document write, until the watching agent's `on-change` has run
//!    and committed its own write (p50, p99), one write at a time; beside it the same-run
//!    baseline of the work the path cannot avoid: the write, then the same agent's
//!    `on-change` called in-process;
//! 2. messages per second through `send`: one invocation sends N messages to a receiver
//!    that takes them (no writes), until all N are delivered; beside it two same-run
//!    baselines: N durable registry writes one after another (the floor of a durable
//!    mailbox: every message is committed before `send` returns), and N in-process
//!    invocations of the receiver at the same concurrency.
//!
//! `cargo bench -p cortex-benches --bench coordination -- [WRITES] [MESSAGES]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cortex_artifacts as art;
#[path = "common/served.rs"]
mod served;

use cortex_host::api::AppState;
use cortex_host::config::ServerConfig;
use cortex_host::registry::Quotas;
use cortex_host::runtime::{Export, Limits};
use cortex_host::store::{ChangeEvent, ChangeOp, RecordKind, Scope};
use serde_json::json;

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn deploy(&self, name: &str, wasm: &str, spec: serde_json::Value) {
        let bytes = std::fs::read(wasm).unwrap();
        let r = self
            .http
            .post(format!("{}/v1/modules", self.base))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let digest = r.json::<serde_json::Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
        let mut body = json!({ "name": name, "module": digest });
        if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), spec) {
            b.extend(extra);
        }
        let r = self
            .http
            .post(format!("{}/v1/agents", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "deploy {name}: {}", r.text().await.unwrap());
    }

    async fn invoke(&self, name: &str, input: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/agents/{name}/invoke", self.base))
            .bearer_auth(&self.token)
            .body(input.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn change_feed(state: &Arc<AppState>, api: &Api, writes: usize) {
    api.deploy("w", art::WATCHER, json!({ "watches": [{ "collection": "orders" }] })).await;
    let store = state.registry.store().clone();
    let scope = Scope::new("demo", "bench");
    // Warm up: the first delivery loads and instantiates the agent.
    let mut latencies = Vec::with_capacity(writes);
    for i in 0..writes + 10 {
        let head = store.feed_head("demo").await.unwrap();
        let t0 = Instant::now();
        store.put(&scope, "orders", &format!("o{i}"), "{}", None).await.unwrap();
        // Done when the watcher's own write (to `seen`) is in the feed.
        let mut after = head;
        'wait: loop {
            store.wait_for("demo", after, Duration::from_secs(10)).await.unwrap();
            for e in store.feed_since("demo", after, 100).await.unwrap() {
                after = e.seq;
                if e.collection == "seen" {
                    break 'wait;
                }
            }
        }
        if i >= 10 {
            latencies.push(t0.elapsed());
        }
    }
    latencies.sort();

    // Baseline: the unavoidable work, the write and then the same agent's `on-change` for
    // it, called in-process (it makes the same write of its own).
    let d = state.agents.get("demo", "w").unwrap();
    let q = Quotas::default();
    let mut base = Vec::with_capacity(writes);
    for i in 0..writes {
        let t0 = Instant::now();
        let key = format!("b{i}");
        let revision = store.put(&scope, "base", &key, "{}", None).await.unwrap();
        let event = ChangeEvent {
            seq: 0,
            collection: "base".into(),
            key,
            op: ChangeOp::Put,
            revision,
            agent: "w".into(),
            trace: None,
        };
        let ctx = state.agents.deployed_context(&d, &q);
        let r = state.runtime.call(&d.module, &ctx, &Limits::default(), Export::OnChange(&[event])).await;
        assert!(r.outcome.is_ok());
        base.push(t0.elapsed());
    }
    base.sort();
    let (p50, p99, b50, b99) = (pct(&latencies, 0.5), pct(&latencies, 0.99), pct(&base, 0.5), pct(&base, 0.99));
    println!("change feed, write -> on-change done ({writes} writes, one at a time):");
    println!("  cortex   p50 {:>7.3} ms  p99 {:>7.3} ms", ms(p50), ms(p99));
    println!(
        "  baseline p50 {:>7.3} ms  p99 {:>7.3} ms  (the write + its on-change called in-process)",
        ms(b50),
        ms(b99)
    );
    println!("  ratio    p50 {:.2}x  p99 {:.2}x", ms(p50) / ms(b50), ms(p99) / ms(b99));
}

async fn messages(state: &Arc<AppState>, api: &Api, n: usize) {
    api.deploy("tx", art::MESSENGER, json!({})).await;
    api.deploy("rx", art::MESSENGER, json!({ "config": { "quiet": "yes" }, "max_concurrency": 16 })).await;
    let rx = state.agents.get("demo", "rx").unwrap();
    let delivered = || rx.shared.messages_delivered.load(Ordering::Relaxed) as usize;
    // Warm up.
    assert_eq!(api.invoke("tx", "sendn:rx:50").await, "sent");
    while delivered() < 50 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = delivered();
    let t0 = Instant::now();
    let mut sent = 0;
    let mut send_time = Duration::ZERO;
    while sent < n {
        let batch = (n - sent).min(1000);
        let t = Instant::now();
        assert_eq!(api.invoke("tx", &format!("sendn:rx:{batch}")).await, "sent");
        send_time += t.elapsed();
        sent += batch;
    }
    while delivered() < before + n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t0.elapsed();

    // Baseline: the same number of in-process invocations of the receiver, 16 at a time.
    let q = Quotas::default();
    let t1 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (st, d) = (state.clone(), rx.clone());
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let ctx = st.agents.deployed_context(&d, &q);
            for _ in (w..n).step_by(16) {
                let r = st.runtime.invoke(&d.module, &ctx, &Limits::default(), b"m").await;
                assert!(r.outcome.is_ok());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let base = t1.elapsed();
    // Baseline: N durable writes of a record the size of a message record, one at a time.
    let store = state.registry.store().clone();
    let value = vec![b'x'; 200];
    let t2 = Instant::now();
    for i in 0..n {
        store.record_put(RecordKind::Message, &format!("demo/bench/{i}"), value.clone(), None).await.unwrap();
    }
    let writes = t2.elapsed();
    for i in 0..n {
        store.record_delete(RecordKind::Message, &format!("demo/bench/{i}")).await.unwrap();
    }
    let rate = n as f64 / elapsed.as_secs_f64();
    let base_rate = n as f64 / base.as_secs_f64();
    let write_rate = n as f64 / writes.as_secs_f64();
    println!("messages through send ({n} messages, one sender, receiver concurrency 16):");
    println!(
        "  cortex   {rate:>9.0} messages/s delivered  (sending alone: {:.0}/s)",
        n as f64 / send_time.as_secs_f64()
    );
    println!("  baseline {write_rate:>9.0} durable record writes/s, one at a time");
    println!("  baseline {base_rate:>9.0} invocations/s of the receiver in-process, no mailbox");
    println!("  ratio    {:.2}x durable writes, {:.3}x in-process invocations", rate / write_rate, rate / base_rate);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let writes: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(300);
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
        cfg.messaging.max_pending = 1_000_000;
        let served = served::serve(cfg, &[]).await;
        let (state, addr) = (served.state.clone(), served.addr);
        let api = Api { base: format!("http://{addr}"), token: served.developer.clone(), http: reqwest::Client::new() };
        println!("== coordination: embedded store, 2 cores shared by everything");
        change_feed(&state, &api, writes).await;
        messages(&state, &api, n).await;
        drop(served);
    });
}
