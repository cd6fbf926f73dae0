//! Workflow scheduling overhead on one node (embedded store in a temporary directory), in
//! one run, every workflow measurement interleaved with its baseline:
//!
//! (a) a chain of `N` no-op steps (`workflow-step` `echo`, each depending on the one
//!     before), from `Workflows::start` until the run has ended, against the same `N`
//!     invocations made directly, one after the other, through the same invoke core the
//!     engine uses (`Agents::admit_invocation` + `invoke_with`, with the same workflow
//!     config keys). `RUNS` rounds; per round the overhead per step is (run - direct) / N.
//! (b) a fan-out: one `for_each` step over `N` elements (`concurrency` 10), against the
//!     same `N` invocations made directly with at most 10 at once.
//! (c) runs/s of a 5-step chain, `CONCURRENT` runs started at once, against the same
//!     `5 x CONCURRENT` direct invocations (5 in a row per simulated run, `CONCURRENT` at
//!     once).
//!
//! The store is wrapped in [`Instrumented`], which counts every write the node makes
//! (`record_apply`, `put`, `audit_append`, ...) and the time spent in it, so the report
//! separates the durable writes' own cost (writes per step x their measured time) from
//! the scheduling overhead beyond them. The goal: under 1 ms per step beyond the
//! durable writes.
//!
//! `cargo bench -p cortex-benches --bench workflows -- [N] [RUNS] [CONCURRENT]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_artifacts as art;
#[path = "common/served.rs"]
mod served;

use cortex_host::api::AppState;
use cortex_host::config::ServerConfig;
use cortex_host::runtime::Outcome;
use cortex_host::store::{EmbeddedStore, Instrumented, RecordKind, Store};
use serde_json::{Value, json};

/// The operations that write (everything else the store does is a read).
const WRITES: &[&str] = &[
    "audit_append",
    "delete",
    "put",
    "record_apply",
    "record_delete",
    "record_delete_many",
    "record_put",
    "transact",
    "link",
    "unlink",
];

/// Write operations seen: count and total time, by operation.
#[derive(Default)]
struct WriteLog(Mutex<BTreeMap<&'static str, (u64, Duration)>>);

impl WriteLog {
    fn take(&self) -> BTreeMap<&'static str, (u64, Duration)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Totals of a set of writes: (count, time).
fn totals(w: &BTreeMap<&'static str, (u64, Duration)>) -> (u64, Duration) {
    w.values().fold((0, Duration::ZERO), |(n, t), (c, d)| (n + c, t + *d))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

async fn put_workflow(state: &Arc<AppState>, name: &str, def: &Value) {
    state.workflows.put("demo", name, def.to_string().as_bytes()).await.unwrap();
}

/// Until no run of `demo` is active (woken by the change feed, which every transition
/// writes to).
async fn until_idle(state: &Arc<AppState>) {
    let store = state.registry.store().clone();
    loop {
        let head = store.feed_head("demo").await.unwrap();
        if store.record_list(RecordKind::WorkflowRun, "demo/active/").await.unwrap().is_empty() {
            return;
        }
        store.wait_for("demo", head, Duration::from_millis(200)).await.unwrap();
    }
}

/// Start one run of each of `inputs` at once; the time until every run has ended. Every
/// run must succeed.
async fn run_workflows(state: &Arc<AppState>, name: &str, inputs: &[Value]) -> Duration {
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for input in inputs {
        let (run, _) = state.workflows.start("demo", name, input.clone(), None, "bench").await.unwrap();
        ids.push(run.id);
    }
    until_idle(state).await;
    let took = t0.elapsed();
    for id in ids {
        let run = state.workflows.run("demo", &id).await.unwrap();
        assert_eq!(run.state.as_str(), "succeeded", "run {id}: {:?}", run.error);
    }
    took
}

/// One direct invocation of agent `step`, as the engine makes it.
async fn invoke_direct(state: &AppState, step: &str) {
    let t = state.tenants.get("demo").await.unwrap().unwrap();
    let d = state.agents.find("demo", "step").await.unwrap();
    let ticket = state.agents.admit_invocation(&t, &d).unwrap();
    let extra = [
        ("cortex.workflow.run", "direct".to_owned()),
        ("cortex.workflow.step", step.to_owned()),
        ("cortex.workflow.attempt", "1".to_owned()),
    ];
    let input = json!({"op": "echo", "value": 1}).to_string();
    let r = state.agents.invoke_with(&t, &d, ticket, input.as_bytes(), None, &extra).await.unwrap();
    assert!(matches!(r.outcome, Outcome::Ok { .. }), "direct invocation: {}", r.outcome);
}

/// `lanes` concurrent lanes, each making `per_lane` direct invocations in a row, at most
/// `lanes` at once.
async fn direct(state: &Arc<AppState>, lanes: usize, per_lane: usize) -> Duration {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for l in 0..lanes {
        let st = state.clone();
        tasks.spawn(async move {
            for i in 0..per_lane {
                invoke_direct(&st, &format!("s{l}.{i}")).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    t0.elapsed()
}

/// `n` invocations with at most `cap` at once (the fan-out's baseline).
async fn direct_capped(state: &Arc<AppState>, n: usize, cap: usize) -> Duration {
    let per = n / cap;
    let rest = n % cap;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for l in 0..cap.min(n) {
        let st = state.clone();
        let count = per + usize::from(l < rest);
        tasks.spawn(async move {
            for i in 0..count {
                invoke_direct(&st, &format!("fan.{l}.{i}")).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    t0.elapsed()
}

fn chain(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "agent": "step", "input": {"op": "echo", "value": 1}});
            if i > 0 {
                s["depends_on"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({ "steps": steps })
}

/// One round's numbers: workflow time, baseline time, writes and their time.
struct Round {
    wf: Duration,
    direct: Duration,
    writes: u64,
    write_time: Duration,
}

struct Summary {
    per_step_overhead_us: Vec<f64>,
    per_step_beyond_writes_us: Vec<f64>,
    writes_per_step: f64,
    write_us: f64,
    wf_per_step_us: f64,
    direct_per_step_us: f64,
}

fn summarize(rounds: &[Round], n: usize) -> Summary {
    let nf = n as f64;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let overhead: Vec<f64> = rounds.iter().map(|r| (us(r.wf) - us(r.direct)) / nf).collect();
    let beyond: Vec<f64> = rounds.iter().map(|r| (us(r.wf) - us(r.direct) - us(r.write_time)) / nf).collect();
    let writes: u64 = rounds.iter().map(|r| r.writes).sum();
    let wtime: f64 = rounds.iter().map(|r| us(r.write_time)).sum();
    let rn = rounds.len() as f64;
    Summary {
        per_step_overhead_us: sorted(overhead),
        per_step_beyond_writes_us: sorted(beyond),
        writes_per_step: writes as f64 / (rn * nf),
        write_us: if writes == 0 { 0.0 } else { wtime / writes as f64 },
        wf_per_step_us: rounds.iter().map(|r| us(r.wf)).sum::<f64>() / (rn * nf),
        direct_per_step_us: rounds.iter().map(|r| us(r.direct)).sum::<f64>() / (rn * nf),
    }
}

fn report(label: &str, s: &Summary) {
    let o = &s.per_step_overhead_us;
    let b = &s.per_step_beyond_writes_us;
    println!("  {label}");
    println!(
        "    per step: workflow {:.0} us, direct {:.0} us (ratio {:.2})",
        s.wf_per_step_us,
        s.direct_per_step_us,
        s.wf_per_step_us / s.direct_per_step_us
    );
    println!("    overhead per step (run - direct) / N: p50 {:.0} us, p99 {:.0} us", pct(o, 0.5), pct(o, 0.99));
    println!(
        "    durable writes: {:.2} per step x {:.0} us each = {:.0} us per step",
        s.writes_per_step,
        s.write_us,
        s.writes_per_step * s.write_us
    );
    println!(
        "    overhead beyond the writes' time: p50 {:.0} us, p99 {:.0} us per step (goal < 1000 us)",
        pct(b, 0.5),
        pct(b, 0.99)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let concurrent: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
        cortex_host::fsutil::prepare_data_dir(&cfg.data_dir).unwrap();
        let log = Arc::new(WriteLog::default());
        let seen = log.clone();
        let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let store: Arc<dyn Store> = Arc::new(Instrumented::new(
            embedded,
            Arc::new(move |op, took| {
                if WRITES.contains(&op) {
                    let mut m = seen.0.lock().unwrap();
                    let e = m.entry(op).or_default();
                    e.0 += 1;
                    e.1 += took;
                }
            }),
        ));
        let served = served::serve_on(cfg, Some(store), &[format!("step={}", art::WORKFLOW_STEP)]).await;
        let state = served.state.clone();
        println!("== workflows: embedded store, one node, 2 cores shared by everything");

        put_workflow(&state, "chain", &chain(n)).await;
        put_workflow(&state, "five", &chain(5)).await;
        let fan = json!({"steps": [{"id": "fan", "agent": "step", "for_each": "$.input.items", "concurrency": 10,
            "input": {"op": "echo", "value": "$.item"}}]});
        put_workflow(&state, "fan", &fan).await;
        let items: Vec<usize> = (0..n).collect();
        let fan_input = json!({ "items": items });

        // Warm up: the engine's lease, the agent's instances.
        run_workflows(&state, "chain", &[json!({})]).await;
        run_workflows(&state, "fan", std::slice::from_ref(&fan_input)).await;
        direct(&state, 10, n).await;
        log.take();

        let mut chain_rounds = Vec::new();
        let mut fan_rounds = Vec::new();
        let mut direct_writes = 0;
        for _ in 0..rounds {
            let d = direct(&state, 1, n).await;
            direct_writes += totals(&log.take()).0;
            let wf = run_workflows(&state, "chain", &[json!({})]).await;
            let (writes, write_time) = totals(&log.take());
            chain_rounds.push(Round { wf, direct: d, writes, write_time });

            let d = direct_capped(&state, n, 10).await;
            direct_writes += totals(&log.take()).0;
            let wf = run_workflows(&state, "fan", std::slice::from_ref(&fan_input)).await;
            let (writes, write_time) = totals(&log.take());
            fan_rounds.push(Round { wf, direct: d, writes, write_time });
        }
        let mut by_op = BTreeMap::new();

        // Runs/s of a 5-step chain, `concurrent` at once, against the same invocations.
        let inputs = vec![json!({}); concurrent];
        let mut wf_rates = Vec::new();
        let mut direct_rates = Vec::new();
        for _ in 0..3 {
            let d = direct(&state, concurrent, 5).await;
            direct_rates.push(concurrent as f64 / d.as_secs_f64());
            log.take();
            let wf = run_workflows(&state, "five", &inputs).await;
            for (op, (c, _)) in log.take() {
                *by_op.entry(op).or_insert(0u64) += c;
            }
            wf_rates.push(concurrent as f64 / wf.as_secs_f64());
        }

        println!("  N = {n} no-op steps, {rounds} rounds, each interleaved with its direct baseline");
        println!("  direct invocations wrote {direct_writes} times in all (the baseline makes no durable writes)");
        report(&format!("(a) chain of {n}"), &summarize(&chain_rounds, n));
        report(&format!("(b) fan-out of {n}, concurrency 10"), &summarize(&fan_rounds, n));
        let wf_rates = sorted(wf_rates);
        let direct_rates = sorted(direct_rates);
        println!("  (c) 5-step chain, {concurrent} runs at once (median of 3)");
        println!(
            "    workflow {:.0} runs/s, direct 5 invocations in a row {:.0} /s: ratio {:.3}",
            pct(&wf_rates, 0.5),
            pct(&direct_rates, 0.5),
            pct(&wf_rates, 0.5) / pct(&direct_rates, 0.5)
        );
        let per_run: Vec<String> =
            by_op.iter().map(|(op, c)| format!("{op} {:.1}", *c as f64 / (3 * concurrent) as f64)).collect();
        println!("    writes per 5-step run: {}", per_run.join(", "));
        drop(served);
    });
}
