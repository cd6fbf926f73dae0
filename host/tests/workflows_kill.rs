//! Workflow runs survive `kill -9` of the server: 20 kills at random points (a seeded RNG;
//! the seed is printed, `WORKFLOW_KILL_SEED` replays it), a restart after each. In the end
//! every run has ended, each non-idempotent step's side effect happened exactly once (a run
//! that needs attention after a kill is resolved by the test: skip if the effect happened,
//! retry if not), each idempotent step's at least once, and no run is stuck.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/serve.rs"]
mod serve;

use std::collections::HashMap;
use std::time::Duration;

use cortex_artifacts as art;
use reqwest::Client;
use serde_json::{Value, json};
use serve::Serve;

const KILLS: usize = 20;
const RUNS_PER_ROUND: usize = 3;
const ITEMS: u64 = 4;

/// xorshift64*: enough for kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

async fn post(c: &Client, s: &Serve, tok: &str, path: &str, body: Value) -> (u16, Value) {
    let r = c.post(s.url(path)).bearer_auth(tok).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The effect counter of `key` (`run.step`), read through the `kv` agent (0: none).
async fn effect(c: &Client, s: &Serve, tok: &str, key: &str) -> u64 {
    let r =
        c.post(s.url("/v1/agents/kv/invoke")).bearer_auth(tok).body(format!("get:effects/{key}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    if text == "none" { 0 } else { text.parse().unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_end_with_exactly_once_effects_across_20_kill_9s() {
    let seed = std::env::var("WORKFLOW_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("WORKFLOW_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut s = Serve::start(&data);
    s.ready().await;
    let admin = s.token(None, "platform-admin");
    let (st, body) = post(&c, &s, &admin, "/v1/tenants", json!({"name": "t"})).await;
    assert_eq!(st, 201, "{body}");
    let tok = s.token(Some("t"), "developer");
    for (name, path) in [("step", art::WORKFLOW_STEP), ("kv", art::KV)] {
        let r = c.post(s.url("/v1/modules")).bearer_auth(&tok).body(std::fs::read(path).unwrap()).send().await.unwrap();
        assert!(r.status().is_success());
        let digest = r.json::<Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
        let (st, body) = post(&c, &s, &tok, "/v1/agents", json!({"name": name, "module": digest})).await;
        assert_eq!(st, 201, "{body}");
    }
    // Non-idempotent: b, c. Idempotent: a, fan (one effect per item), d.
    let def = json!({"steps": [
        {"id": "a", "agent": "step", "idempotent": true, "input": {"op": "effect", "value": "$.input.items"}},
        {"id": "b", "agent": "step", "depends_on": ["a"], "input": {"op": "effect", "value": 1, "spin_ms": 60}},
        {"id": "fan", "agent": "step", "depends_on": ["b"], "idempotent": true, "for_each": "$.steps.a.output",
         "concurrency": 2, "input": {"op": "effect", "value": "$.item", "spin_ms": 20}},
        {"id": "c", "agent": "step", "depends_on": ["fan"],
         "input": {"op": "effect", "value": "$.steps.fan.output", "spin_ms": 60}},
        {"id": "d", "agent": "step", "depends_on": ["c"], "idempotent": true,
         "input": {"op": "add", "values": "$.steps.c.output"}}
    ]});
    let r = c.put(s.url("/v1/workflows/kill")).bearer_auth(&tok).json(&def).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let items: Vec<u64> = (1..=ITEMS).collect();
    let mut runs: Vec<String> = Vec::new();
    for round in 0..KILLS {
        for k in 0..RUNS_PER_ROUND {
            // An idempotency key, so a start whose answer is lost could be sent again.
            let key = format!("r{round}-{k}");
            let (st, run) = post(
                &c,
                &s,
                &tok,
                "/v1/workflows/kill/runs",
                json!({"input": {"items": items}, "idempotency_key": key}),
            )
            .await;
            assert_eq!(st, 201, "{run}");
            runs.push(run["id"].as_str().unwrap().to_owned());
        }
        // A random point while the runs (this round's and earlier ones being resumed) work.
        tokio::time::sleep(Duration::from_millis(rng.next() % 400)).await;
        s.kill9();
        s = Serve::start(&data);
        s.ready().await;
    }

    // Every run ends; one that needs attention is resolved by what its effect shows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut resolved: HashMap<String, usize> = HashMap::new();
    loop {
        let mut open = 0;
        for id in &runs {
            let r = c.get(s.url(&format!("/v1/workflows/kill/runs/{id}"))).bearer_auth(&tok).send().await.unwrap();
            let run: Value = r.json().await.unwrap();
            match run["state"].as_str().unwrap() {
                "succeeded" => {}
                "needs_attention" => {
                    open += 1;
                    for step in run["steps"].as_array().unwrap() {
                        if step["state"] != "needs_attention" {
                            continue;
                        }
                        let sid = step["id"].as_str().unwrap();
                        let done = effect(&c, &s, &tok, &format!("{id}.{sid}")).await;
                        assert!(done <= 1, "run {id}: step {sid} ran {done} times");
                        let action = if done == 1 { "skip" } else { "retry" };
                        let output = if sid == "b" { json!(1) } else { json!(items) };
                        let (st, body) = post(
                            &c,
                            &s,
                            &tok,
                            &format!("/v1/workflows/kill/runs/{id}/resolve"),
                            json!({"step": sid, "action": action, "output": output}),
                        )
                        .await;
                        assert!(st == 200 || st == 409, "{body}");
                        *resolved.entry(action.to_owned()).or_default() += 1;
                    }
                }
                "pending" | "running" => open += 1,
                other => panic!("run {id} ended {other}: {run}"),
            }
        }
        if open == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} runs still open after 300 s (seed {seed})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{} runs, resolved: {resolved:?}", runs.len());
    for id in &runs {
        let r = c.get(s.url(&format!("/v1/workflows/kill/runs/{id}"))).bearer_auth(&tok).send().await.unwrap();
        let run: Value = r.json().await.unwrap();
        assert_eq!(run["output"], json!(ITEMS * (ITEMS + 1) / 2), "run {id}: {run}");
        for step in ["b", "c"] {
            assert_eq!(effect(&c, &s, &tok, &format!("{id}.{step}")).await, 1, "run {id}: step {step} (seed {seed})");
        }
        assert!(effect(&c, &s, &tok, &format!("{id}.a")).await >= 1, "run {id}: step a");
        for n in 0..ITEMS {
            assert!(effect(&c, &s, &tok, &format!("{id}.fan.{n}")).await >= 1, "run {id}: fan.{n}");
        }
    }
}
