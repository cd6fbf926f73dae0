//! Durable messaging throughput on one node (embedded store in a temporary directory), in
//! one run:
//!
//! (a) the store's one-at-a-time commit rate: sequential `record_put` of records the size
//!     of a message record (each its own transaction, durable when it returns);
//! (b) durable messages per second through the real send path: `C` concurrent invocations
//!     of the `messenger` agent, each calling `messaging.send` `K` times (`sendn:rx:K`), to
//!     a stopped receiver (so that only sends are measured); every message is committed
//!     before its `send` returns, and all of them are counted in the store afterwards;
//! (c) the same with one sender (`C` = 1), where there is nothing to batch.
//!
//! Prints messages/s and the ratios (b)/(a) and (c)/(a).
//!
//! `cargo bench -p cortex-benches --bench messaging -- [SENDERS] [PER_SENDER] [WRITES]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_artifacts as art;
#[path = "common/served.rs"]
mod served;

use cortex_host::api::AppState;
use cortex_host::config::ServerConfig;
use cortex_host::coordination::mailbox;
use cortex_host::registry::Quotas;
use cortex_host::runtime::{Limits, Outcome};
use cortex_host::store::RecordKind;
use serde_json::json;

async fn deploy(base: &str, token: &str, http: &reqwest::Client, name: &str, wasm: &str, extra: serde_json::Value) {
    let bytes = std::fs::read(wasm).unwrap();
    let r = http.post(format!("{base}/v1/modules")).bearer_auth(token).body(bytes).send().await.unwrap();
    let digest = r.json::<serde_json::Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
    let mut body = json!({ "name": name, "module": digest });
    if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    let r = http.post(format!("{base}/v1/agents")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "deploy {name}: {}", r.text().await.unwrap());
}

/// `senders` concurrent invocations of `tx`, each sending `per_sender` messages to `rx`;
/// returns the time until the last `send` returned.
async fn send_concurrently(state: &Arc<AppState>, senders: usize, per_sender: usize) -> Duration {
    let tx = state.agents.get("demo", "tx").unwrap();
    let q = Quotas::default();
    let limits = Limits { timeout: Duration::from_secs(600), host_calls: 1_000_000, ..Limits::default() };
    let input = format!("sendn:rx:{per_sender}");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (st, d, q, limits, input) = (state.clone(), tx.clone(), q.clone(), limits.clone(), input.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = st.agents.deployed_context(&d, &q);
            let r = st.runtime.invoke(&d.module, &ctx, &limits, input.as_bytes()).await;
            match r.outcome {
                Outcome::Ok { output } => assert_eq!(output.as_deref(), Some(&b"sent"[..])),
                other => panic!("sendn failed: {other}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed()
}

async fn stored(state: &Arc<AppState>) -> usize {
    let prefix = mailbox::mailbox_prefix("demo", "rx");
    state.registry.store().record_list(RecordKind::Message, &prefix).await.unwrap().len()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let senders: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(64);
    let per_sender: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let writes: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
        cfg.messaging.max_pending = 10_000_000;
        let served = served::serve(cfg, &[]).await;
        let state = served.state.clone();
        let (base, http) = (format!("http://{}", served.addr), reqwest::Client::new());
        deploy(&base, &served.developer, &http, "tx", art::MESSENGER, json!({})).await;
        deploy(&base, &served.developer, &http, "rx", art::MESSENGER, json!({ "config": { "quiet": "yes" } })).await;
        let r = http.post(format!("{base}/v1/agents/rx/stop")).bearer_auth(&served.developer).send().await.unwrap();
        assert!(r.status().is_success(), "stop rx: {}", r.status());
        println!("== messaging: embedded store, 2 cores shared by everything");

        // Warm up: load and instantiate the sender.
        send_concurrently(&state, 4, 20).await;
        let mut expected = 80;

        // (a) one-at-a-time commits of message-sized records.
        let msg = mailbox::new_message("demo", "rx", "tx", None, b"m100", None);
        let value = serde_json::to_vec(&msg).unwrap();
        let store = state.registry.store().clone();
        let t = Instant::now();
        for i in 0..writes {
            store.record_put(RecordKind::Message, &format!("demo/bench/{i:08}"), value.clone(), Some(0)).await.unwrap();
        }
        let a = writes as f64 / t.elapsed().as_secs_f64();
        let keys: Vec<String> = (0..writes).map(|i| format!("demo/bench/{i:08}")).collect();
        store.record_delete_many(RecordKind::Message, &keys).await.unwrap();

        // (c) one sender: nothing to batch.
        let lone = (per_sender * 4).min(2000);
        let d = send_concurrently(&state, 1, lone).await;
        expected += lone;
        let c = lone as f64 / d.as_secs_f64();

        // (b) many concurrent senders through the real send path.
        let total = senders * per_sender;
        let d = send_concurrently(&state, senders, per_sender).await;
        expected += total;
        let b = total as f64 / d.as_secs_f64();
        assert_eq!(stored(&state).await, expected, "every acknowledged message is in the store, once");

        println!(
            "  (a) baseline   {a:>9.0} one-at-a-time durable record commits/s ({writes}, {} bytes each)",
            value.len()
        );
        println!("  (b) cortex     {b:>9.0} durable messages/s, {senders} concurrent senders x {per_sender} sends");
        println!("  (c) cortex     {c:>9.0} durable messages/s, one sender x {lone} sends");
        println!("  ratio (b)/(a)  {:.2}x", b / a);
        println!("  ratio (c)/(a)  {:.2}x", c / a);
        drop(served);
    });
}
