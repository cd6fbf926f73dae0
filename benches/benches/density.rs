//! Density: N agents (one module, distinct names and configs) deployed on one node through
//! the HTTP API of a real server (embedded store in a temporary directory), then the node
//! restarted on the same data directory. Reports:
//!
//! 1. resident memory per idle deployed agent: RSS (`VmRSS` of `/proc/self/status`) and live
//!    heap bytes (a counting allocator) after the N deploys, minus the same after the first
//!    1,000 (the marginal cost; the same-run baseline is the process with the module
//!    uploaded and 0 agents);
//! 2. deploys per second over the first 1,000 deploys and over the last 1,000 (scaling);
//! 3. the time to restore them all: a new server on the same data directory (open the store,
//!    restore every agent) against the same start on an empty directory, same run.
//!
//! `cargo bench -p cortex-benches --bench density -- [N] [TOTAL]` (N = 10,000 by default;
//! 100,000 for the second size). With TOTAL > N, the agents `aN..aTOTAL` are then
//! written straight into the store (copies of `a0`'s record, each with its own name and
//! config: what TOTAL HTTP deploys would leave) and the node restarted once more: the
//! restore of TOTAL agents and the memory they hold, without TOTAL deploys over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cortex_artifacts as art;
#[path = "common/served.rs"]
mod served;

use cortex_host::config::ServerConfig;
use serde_json::json;

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments; the counter is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resident set size of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

#[derive(Clone, Copy)]
struct Mem {
    rss: usize,
    heap: usize,
}

fn mem() -> Mem {
    Mem { rss: rss(), heap: LIVE.load(Ordering::Relaxed) }
}

fn per(a: Mem, b: Mem, n: usize) -> (f64, f64) {
    ((b.rss as f64 - a.rss as f64) / n as f64, (b.heap as f64 - a.heap as f64) / n as f64)
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Deploys in flight at once (the deploys of a tenant take its write lock one at a time;
/// more than one in flight keeps that lock busy while the next request is parsed).
const IN_FLIGHT: usize = 4;

/// Deploy agents `from..to`, each `a{i}` with its own config; the time it took.
async fn deploy_range(base: &str, token: &str, digest: &str, from: usize, to: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(from));
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (next, base, token, digest) = (next.clone(), base.to_owned(), token.to_owned(), digest.to_owned());
        workers.spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let body = json!({ "name": format!("a{i}"), "module": digest, "config": { "n": i.to_string() } });
                let r = http.post(format!("{base}/v1/agents")).bearer_auth(&token).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 201, "deploy a{i}: {}", r.text().await.unwrap());
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    t0.elapsed()
}

/// The number of agents the API lists, and one of them invoked.
async fn check(base: &str, token: &str, n: usize) {
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/v1/agents")).bearer_auth(token).send().await.unwrap();
    let listed = r.json::<serde_json::Value>().await.unwrap().as_array().map_or(0, Vec::len);
    assert_eq!(listed, n, "agents listed");
    let last = n - 1;
    let r = http.post(format!("{base}/v1/agents/a{last}/invoke")).bearer_auth(token).body("x").send().await.unwrap();
    assert_eq!(r.status(), 200, "invoke a{last}: {}", r.text().await.unwrap());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let first = 1_000.min(n / 2).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
        println!("== density: {n} agents of one module on one node, embedded store, 2 shared cores");

        let t0 = Instant::now();
        let served = served::serve(cfg.clone(), &[]).await;
        let start_empty = t0.elapsed();
        let base = format!("http://{}", served.addr);
        let token = served.developer.clone();
        let http = reqwest::Client::new();
        let bytes = std::fs::read(art::HELLO).unwrap();
        let r = http.post(format!("{base}/v1/modules")).bearer_auth(&token).body(bytes).send().await.unwrap();
        let digest = r.json::<serde_json::Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
        // The module compiled and loaded once, the client warm: what every agent shares.
        let zero = mem();

        let d_first = deploy_range(&base, &token, &digest, 0, first).await;
        let at_first = mem();
        let mid = n.saturating_sub(first).max(first);
        let d_mid = deploy_range(&base, &token, &digest, first, mid).await;
        let d_last = deploy_range(&base, &token, &digest, mid, n).await;
        // Idle: every mailbox has made its first read and is waiting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at_n = mem();
        check(&base, &token, n).await;

        let rate = |k: usize, d: Duration| k as f64 / d.as_secs_f64();
        let (first_rate, last_rate) = (rate(first, d_first), rate(n - mid, d_last));
        let total = d_first + d_mid + d_last;
        let (rss_marginal, heap_marginal) = per(at_first, at_n, n - first);
        let (rss_all, heap_all) = per(zero, at_n, n);
        println!("memory (0 agents: RSS {:.1} MiB, heap {:.1} MiB):", mib(zero.rss), mib(zero.heap));
        println!(
            "  {first} agents: RSS {:.1} MiB, heap {:.1} MiB; {n} agents: RSS {:.1} MiB, heap {:.1} MiB",
            mib(at_first.rss),
            mib(at_first.heap),
            mib(at_n.rss),
            mib(at_n.heap)
        );
        println!(
            "  per idle agent, agents {first}..{n}: RSS {:.2} KiB, heap {:.2} KiB (goal <= 10 KiB)",
            rss_marginal / 1024.0,
            heap_marginal / 1024.0
        );
        println!(
            "  per idle agent, agents 0..{n}:    RSS {:.2} KiB, heap {:.2} KiB",
            rss_all / 1024.0,
            heap_all / 1024.0
        );
        println!("deploys (HTTP, {IN_FLIGHT} in flight):");
        println!("  first {first}: {first_rate:>7.0} /s");
        println!("  last  {}: {last_rate:>7.0} /s", n - mid);
        println!("  all   {n}: {:>7.0} /s in {:.1} s", rate(n, total), total.as_secs_f64());

        served.stop().await;
        let before_restart = mem();
        let t0 = Instant::now();
        let served = served::serve(cfg.clone(), &[]).await;
        let start_full = t0.elapsed();
        let after_restore = mem();
        let base = format!("http://{}", served.addr);
        check(&base, &served.developer, n).await;
        served.stop().await;
        println!("restart on the same data directory (open the store, restore every agent):");
        println!("  {n} agents: {:>8.3} s  (goal for 100,000: < 10 s)", start_full.as_secs_f64());
        println!("  empty:      {:>8.3} s  (the same start on an empty directory)", start_empty.as_secs_f64());
        println!(
            "  restored state: heap {:+.1} MiB against the state before the restart was built",
            (after_restore.heap as f64 - before_restart.heap as f64) / (1024.0 * 1024.0)
        );
        let total: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(n);
        let restored = if total > n { Some(restore_copies(&cfg, n, total).await) } else { None };
        println!("== ratios");
        println!("  deploys/s, last {} vs first {first}: {:.2}x", n - mid, last_rate / first_rate);
        println!(
            "  RSS per agent vs the 10 KiB goal: {:.2}x; heap per agent vs the goal: {:.2}x",
            rss_marginal / 10240.0,
            heap_marginal / 10240.0
        );
        println!(
            "  restore of {n} vs an empty start: {:.1}x; per agent {:.1} us (100,000 at this rate: {:.1} s)",
            start_full.as_secs_f64() / start_empty.as_secs_f64(),
            (start_full - start_empty.min(start_full)).as_secs_f64() * 1e6 / n as f64,
            (start_full - start_empty.min(start_full)).as_secs_f64() * 100_000.0 / n as f64
        );
        if let Some((start, m)) = restored {
            println!(
                "  restore of {total} (written to the store) vs an empty start: {:.1}x; per agent {:.1} us",
                start.as_secs_f64() / start_empty.as_secs_f64(),
                (start - start_empty.min(start)).as_secs_f64() * 1e6 / total as f64
            );
            let (rss_all, heap_all) = per(zero, m, total);
            println!(
                "  after that restore, per agent against the 0-agent state: RSS {:.2} KiB, heap {:.2} KiB",
                rss_all / 1024.0,
                heap_all / 1024.0
            );
        }
    });
}

/// Write the agent records `a{n}..a{total}` into the stopped node's store (copies of
/// `a0`'s, each with its own name and config), restart the node, check it lists them all;
/// the start's time and the memory once restored.
async fn restore_copies(cfg: &ServerConfig, n: usize, total: usize) -> (Duration, Mem) {
    use cortex_host::store::{EmbeddedStore, RecordKind, RecordStore};
    let t0 = Instant::now();
    {
        let store = Arc::new(EmbeddedStore::open(&cfg.data_dir.join("store")).unwrap());
        let (bytes, _) = store.record_get(RecordKind::Agent, "demo/a0").await.unwrap().unwrap();
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let next = Arc::new(AtomicUsize::new(n));
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, next, mut record) = (store.clone(), next.clone(), record.clone());
            writers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    record["name"] = json!(format!("a{i}"));
                    record["config"] = json!({ "n": i.to_string() });
                    let bytes = serde_json::to_vec(&record).unwrap();
                    store.record_put(RecordKind::Agent, &format!("demo/a{i}"), bytes, Some(0)).await.unwrap();
                }
            });
        }
        while let Some(r) = writers.join_next().await {
            r.unwrap();
        }
    }
    println!("wrote agents {n}..{total} into the store in {:.1} s", t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let served = served::serve(cfg.clone(), &[]).await;
    let start = t0.elapsed();
    let m = mem();
    let base = format!("http://{}", served.addr);
    check(&base, &served.developer, total).await;
    served.stop().await;
    println!("restart with {total} agents: {:>8.3} s", start.as_secs_f64());
    (start, m)
}
