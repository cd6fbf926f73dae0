//! Fair share under a flood: the p50/p99 latency of a quiet tenant's `hello` alone, under a
//! CPU-bound flood of another tenant and under a host-call flood of it (document reads
//! and writes), same run, as ratios to alone; once with the node's guest cap and fair
//! queues (`[scheduling] guests = 0`: one per core), once with the cap out of the way.
//!
//! `cargo bench -p cortex-benches --bench fairness [-- SECONDS FLOODERS]` (defaults 5 s, 64
//! flooding clients). The quiet tenant has one client sending `hello` back to back; the
//! flooding tenant's clients each keep one invocation in flight (`compute` `cpu:20000`, or
//! `kv` `getn:300` and `put`), every quota and limit out of their reach.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::config::ServerConfig;
use serde_json::json;

#[path = "common/load.rs"]
mod load;
#[path = "common/served.rs"]
mod served;

/// The quiet tenant's p50 and p99.
fn percentiles(run: &load::Run) -> (Duration, Duration) {
    let mut l = run.latencies.clone();
    l.sort();
    let pct =
        |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
    (pct(0.50), pct(0.99))
}

/// Create the flooding tenant with `compute` and `kv` deployed; its developer token.
async fn flood_tenant(s: &served::Served) -> String {
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", s.addr);
    let roomy = json!({ "invocations_per_second": 1_000_000, "burst": 1_000_000, "concurrent_invocations": 10_000 });
    let r = client.post(url("/v1/tenants")).bearer_auth(&s.admin).json(&json!({ "name": "flood", "quotas": roomy }));
    assert_eq!(r.send().await.unwrap().status(), 201);
    let dev = s.mint(Some("flood"), "developer");
    for (name, path) in [("spin", art::COMPUTE), ("kv", art::KV)] {
        let r = client.post(url("/v1/modules")).bearer_auth(&dev).body(std::fs::read(path).unwrap());
        let m: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
        let spec = json!({ "name": name, "module": m["digest"], "max_concurrency": 1000, "queue": 1000,
            "queue_timeout_ms": 60_000, "limits": { "timeout_ms": 60_000 } });
        let r = client.post(url("/v1/agents")).bearer_auth(&dev).json(&spec).send().await.unwrap();
        assert_eq!(r.status(), 201, "deploy {name}");
    }
    dev
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let flooders: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let duration = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        println!(
            "== fairness: quiet tenant's hello (1 client) alone and under {flooders} flooding clients, {seconds} s each"
        );
        for (label, guests) in [("fair queues, guests = cores", 0), ("no guest cap", 1_000_000)] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
            cfg.scheduling.guests = guests;
            let s = served::serve(cfg, &[format!("hello={}", art::HELLO)]).await;
            let flood = flood_tenant(&s).await;
            let quiet = load::request(
                "POST",
                s.addr,
                "/v1/agents/hello/invoke",
                &[format!("authorization: Bearer {}", s.developer)],
                b"quiet",
            );
            let auth = [format!("authorization: Bearer {flood}")];
            let cpu = vec![load::request("POST", s.addr, "/v1/agents/spin/invoke", &auth, b"cpu:20000")];
            let host = vec![
                load::request("POST", s.addr, "/v1/agents/kv/invoke", &auth, b"getn:300:c/k"),
                load::request("POST", s.addr, "/v1/agents/kv/invoke", &auth, b"put:c/k={\"n\":1}"),
            ];
            println!("-- {label} ({} slots)", s.state.tenants.scheduler.slots());
            // Warm-up, then the quiet tenant alone.
            load::hammer(s.addr, quiet.clone(), 1, Duration::from_millis(500)).await;
            let alone = load::hammer(s.addr, quiet.clone(), 1, duration).await;
            alone.report("quiet alone");
            let (a50, a99) = percentiles(&alone);
            for (what, requests) in [("CPU-bound flood", cpu), ("host-call flood", host)] {
                // The flood starts first and ends after the quiet run.
                let mut floods = Vec::new();
                for (i, r) in requests.iter().enumerate() {
                    let n = flooders / requests.len() + usize::from(i < flooders % requests.len());
                    floods.push(tokio::spawn(load::hammer(s.addr, r.clone(), n, duration + Duration::from_secs(2))));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let under = load::hammer(s.addr, quiet.clone(), 1, duration).await;
                under.report(&format!("quiet under {what}"));
                let mut flood_requests = 0;
                for f in floods {
                    flood_requests += f.await.unwrap().requests;
                }
                let (p50, p99) = percentiles(&under);
                println!(
                    "   ratio to alone: p50 {:.2}  p99 {:.2}   (flood served {flood_requests} requests)",
                    p50.as_secs_f64() / a50.as_secs_f64(),
                    p99.as_secs_f64() / a99.as_secs_f64()
                );
            }
            s.stop().await;
        }
    });
}
