//! HTTP load over loopback: invocations per second and p50/p99 latency of `hello` with N
//! concurrent clients, beside the same agent invoked in-process with the same concurrency
//! (the ratio is the cost of HTTP, auth, rate limiting, metrics and audit-free routing).
//!
//! `cargo bench -p cortex-benches --bench http_load [-- SECONDS CLIENTS ROUNDS]` (defaults 5 s,
//! 16 clients, 9 interleaved 1 s rounds of Cortex against the bare peer, median ratio).
//!
//! Peers, serving `plugins/http-hello` (a wasi:http proxy component answering 200
//! `Hello, world!`) on 127.0.0.1 and driven with `GET /` by the same load loop:
//! - a tuned bare hyper + wasmtime-wasi-http server, in this process: same wasmtime
//!   configuration as Cortex, one pre-instantiated component, a fresh store per request,
//!   HTTP/1.1 keep-alive, no auth, no metrics, no logs;
//! - `wasmtime serve` (wasmtime-cli 48.0.8) when `wasmtime` is on PATH, serving
//!   `WASMTIME_SERVE_WASM` (default: the same component); installing it takes
//!   `cargo install wasmtime-cli --version 48.0.8 --locked` (about 18 minutes here), so it is
//!   skipped with a message otherwise, and never run in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::config::ServerConfig;
use cortex_host::registry::Quotas;
use cortex_host::runtime::Limits;

#[path = "common/bare.rs"]
mod bare;
#[path = "common/served.rs"]
mod served;

struct Run {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn report(&self, label: &str) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let pct =
            |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
        let rps = self.requests as f64 / self.elapsed.as_secs_f64();
        println!(
            "{label:<28} {rps:>10.0} req/s   p50 {:>8.1} us   p99 {:>8.1} us   ({} requests)",
            pct(0.50).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            self.requests
        );
        rps
    }
}

async fn drive<F, Fut>(clients: usize, duration: Duration, make: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < duration {
                let t = Instant::now();
                assert!(make().await, "a request failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Run { requests: latencies.len() as u64, elapsed: start.elapsed(), latencies }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let clients: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(16);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(9);
    let duration = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
        let served = served::serve(cfg, &[format!("hello={}", art::HELLO)]).await;
        let (state, addr, token) = (served.state.clone(), served.addr, served.developer.clone());

        println!("== http_load: hello, {clients} clients, {seconds} s each, 2 cores shared by clients and server");
        // In-process: the same agent, the same concurrency, no HTTP.
        let d = state.agent("demo", "hello").unwrap();
        let st = state.clone();
        let inproc = drive(clients, duration, move || {
            let (st, d) = (st.clone(), d.clone());
            async move {
                let q = Quotas::default();
                let ctx = st.deployed_context(&d, &q);
                let r = st.runtime.invoke(&d.module, &ctx, &Limits::default(), b"bench").await;
                r.outcome.is_ok()
            }
        })
        .await
        .report("in-process invoke");

        let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
        let url = Arc::new(format!("http://{addr}/v1/agents/hello/invoke"));
        let auth = Arc::new(format!("Bearer {token}"));
        let cortex = move |d: Duration| {
            let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
            drive(clients, d, move || {
                let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
                async move {
                    match client.post(url.as_str()).header("authorization", auth.as_str()).body("bench").send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    }
                }
            })
        };
        let http = cortex(duration).await.report("HTTP over loopback");
        println!("ratio HTTP / in-process throughput: {:.2}", http / inproc);

        let bare_addr = bare::bare_server(art::HTTP_HELLO).await;
        let bare_url = format!("http://{bare_addr}/");
        let bare = drive_get(clients, duration, bare_url.clone()).await.report("bare hyper+wasi-http");
        println!("ratio Cortex HTTP / bare hyper+wasi-http throughput: {:.2}", http / bare);

        // One pass each swings by 10-20% on a shared 2-core machine: interleave short rounds,
        // alternating which goes first, and take the median of the per-round ratios.
        if rounds > 0 {
            let mut ratios = Vec::with_capacity(rounds);
            for r in 0..rounds {
                let round = Duration::from_secs(1);
                let (c, b) = if r % 2 == 0 {
                    let c = cortex(round).await.rate();
                    (c, drive_get(clients, round, bare_url.clone()).await.rate())
                } else {
                    let b = drive_get(clients, round, bare_url.clone()).await.rate();
                    (cortex(round).await.rate(), b)
                };
                ratios.push(c / b);
            }
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "ratio Cortex HTTP / bare over {rounds} interleaved 1 s rounds: median {:.2} (rounds: {})",
                ratios[ratios.len() / 2],
                shown.join(" ")
            );
        }

        match which("wasmtime") {
            Some(bin) => {
                let wasm = std::env::var("WASMTIME_SERVE_WASM").unwrap_or_else(|_| art::HTTP_HELLO.to_owned());
                let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                let mut child = std::process::Command::new(bin)
                    .args(["serve", "--addr", &format!("127.0.0.1:{port}"), &wasm])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let peer_url = format!("http://127.0.0.1:{port}/");
                let client = reqwest::Client::new();
                for _ in 0..600 {
                    if client.get(peer_url.as_str()).send().await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let peer = drive_get(clients, duration, peer_url).await.report("wasmtime serve (peer)");
                println!("ratio Cortex HTTP / wasmtime serve throughput: {:.2}", http / peer);
                let _ = child.kill();
                let _ = child.wait();
            }
            None => println!(
                "peer `wasmtime serve` skipped: put wasmtime-cli 48.0.8 on PATH (cargo install wasmtime-cli \
                 --version 48.0.8 --locked, ~18 min); it serves WASMTIME_SERVE_WASM, by default plugins/http-hello"
            ),
        }
        drop(served);
    });
}

/// `GET url` from `clients` keep-alive clients for `duration`.
async fn drive_get(clients: usize, duration: Duration, url: String) -> Run {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let url = Arc::new(url);
    drive(clients, duration, move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            match client.get(url.as_str()).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(bin)).find(|p| p.is_file())
}
