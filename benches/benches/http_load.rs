//! HTTP load over loopback: invocations per second and p50/p99 latency of `hello` with N
//! concurrent clients, beside the same agent invoked in-process with the same concurrency
//! (the ratio is the cost of HTTP, auth, rate limiting, metrics and audit-free routing).
//!
//! `cargo bench -p cortex-benches --bench http_load [-- SECONDS CLIENTS ROUNDS]` (defaults 5 s,
//! 16 clients, 9 interleaved 1 s rounds of Cortex against each peer, median ratios).
//!
//! Every server is driven by the same load tool (`common/load.rs`: keep-alive HTTP/1.1
//! clients sending one prebuilt request, like `wrk`); Cortex gets `POST
//! /v1/agents/hello/invoke` with a developer token and a 5-byte body, and the same request
//! with the name percent-encoded (`h%65llo`), which the router serves instead of the
//! server's invocation fast path (the ratio of the two is the router's cost). Peers, serving
//! `plugins/http-hello` (a wasi:http proxy component answering 200 `Hello, world!`) on
//! 127.0.0.1, get `GET /`:
//! - a tuned bare hyper + wasmtime-wasi-http server, in this process: same wasmtime
//!   configuration as Cortex, one pre-instantiated component, a fresh store per request,
//!   HTTP/1.1 keep-alive, no auth, no metrics, no logs;
//! - `wasmtime serve -S cli` (wasmtime-cli 48.0.8, its default settings otherwise; `-S cli`
//!   because Rust's std imports wasi:cli) when `wasmtime` is on PATH, serving
//!   `WASMTIME_SERVE_WASM` (default: the same component); installing it takes
//!   `cargo install wasmtime-cli --version 48.0.8 --locked` (about 18 minutes here), so it is
//!   skipped with a message otherwise, and never run in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::config::ServerConfig;
use cortex_host::registry::Quotas;
use cortex_host::runtime::Limits;

#[path = "common/bare.rs"]
mod bare;
#[path = "common/load.rs"]
mod load;
#[path = "common/served.rs"]
mod served;

/// The first targets are Cortex's two lanes (fast path, routed); the peers follow.
const CORTEX: usize = 2;

/// A server under load: its name, address and the request it gets.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    request: Arc<[u8]>,
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
        let state = served.state.clone();

        println!("== http_load: hello, {clients} clients, {seconds} s each, 2 cores shared by clients and servers");
        // In-process: the same agent, the same concurrency, no HTTP.
        let d = state.agents.get("demo", "hello").unwrap();
        let st = state.clone();
        let inproc = load::drive(clients, duration, move || {
            let (st, d) = (st.clone(), d.clone());
            async move {
                let q = Quotas::default();
                let ctx = st.agents.deployed_context(&d, &q);
                let r = st.runtime.invoke(&d.module, &ctx, &Limits::default(), b"bench").await;
                r.outcome.is_ok()
            }
        })
        .await
        .report("in-process invoke");

        let auth = format!("authorization: Bearer {}", served.developer);
        let mut targets = vec![
            Target {
                name: "Cortex HTTP",
                addr: served.addr,
                request: load::request(
                    "POST",
                    served.addr,
                    "/v1/agents/hello/invoke",
                    std::slice::from_ref(&auth),
                    b"bench",
                ),
            },
            // The same invocation with its name percent-encoded: the server's fast path does not
            // take it, the router does (the same authentication and invocation code after it).
            Target {
                name: "Cortex HTTP routed",
                addr: served.addr,
                request: load::request("POST", served.addr, "/v1/agents/h%65llo/invoke", &[auth], b"bench"),
            },
        ];
        let bare_addr = bare::bare_server(art::HTTP_HELLO).await;
        targets.push(Target { name: "bare hyper+wasi-http", addr: bare_addr, request: get(bare_addr) });
        let mut child = None;
        match which("wasmtime") {
            Some(bin) => {
                let wasm = std::env::var("WASMTIME_SERVE_WASM").unwrap_or_else(|_| art::HTTP_HELLO.to_owned());
                let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                child = Some(
                    std::process::Command::new(bin)
                        .args(["serve", "-S", "cli", "--addr", &addr.to_string(), &wasm])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap(),
                );
                let mut up = false;
                for _ in 0..600 {
                    if tokio::net::TcpStream::connect(addr).await.is_ok() {
                        up = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(up, "wasmtime serve did not start listening on {addr}");
                targets.push(Target { name: "wasmtime serve", addr, request: get(addr) });
            }
            None => println!(
                "peer `wasmtime serve` skipped: put wasmtime-cli 48.0.8 on PATH (cargo install wasmtime-cli \
                 --version 48.0.8 --locked, ~18 min); it serves WASMTIME_SERVE_WASM, by default plugins/http-hello"
            ),
        }

        let mut rates = Vec::new();
        for t in &targets {
            rates.push(load::hammer(t.addr, t.request.clone(), clients, duration).await.report(t.name));
        }
        println!("ratio Cortex HTTP / in-process throughput: {:.2}", rates[0] / inproc);
        for (c, c_rate) in targets.iter().zip(&rates).take(CORTEX) {
            for (t, rate) in targets.iter().zip(&rates).skip(CORTEX) {
                println!("ratio {} / {}: {:.2}", c.name, t.name, c_rate / rate);
            }
        }
        println!("ratio Cortex HTTP / Cortex HTTP routed: {:.2}", rates[0] / rates[1]);

        // One pass each swings by 10-20% on a shared 2-core machine: interleave short rounds,
        // rotating which goes first, and take the median of each per-round ratio.
        if rounds > 0 {
            // (numerator, denominator): each Cortex lane against each peer, and the two lanes.
            let mut pairs: Vec<(usize, usize)> =
                (0..CORTEX).flat_map(|c| (CORTEX..targets.len()).map(move |p| (c, p))).collect();
            pairs.push((0, 1));
            let mut ratios = vec![Vec::with_capacity(rounds); pairs.len()];
            for r in 0..rounds {
                let mut round = vec![0.0; targets.len()];
                for k in 0..targets.len() {
                    let i = (r + k) % targets.len();
                    let t = &targets[i];
                    round[i] = load::hammer(t.addr, t.request.clone(), clients, Duration::from_secs(1)).await.rate();
                }
                for (&(a, b), rs) in pairs.iter().zip(&mut ratios) {
                    rs.push(round[a] / round[b]);
                }
            }
            for (&(a, b), mut rs) in pairs.iter().zip(ratios) {
                let shown: Vec<String> = rs.iter().map(|r| format!("{r:.2}")).collect();
                rs.sort_by(f64::total_cmp);
                println!(
                    "ratio {} / {} over {rounds} interleaved 1 s rounds: median {:.2} (rounds: {})",
                    targets[a].name,
                    targets[b].name,
                    rs[rs.len() / 2],
                    shown.join(" ")
                );
            }
        }
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(served);
    });
}

fn get(addr: SocketAddr) -> Arc<[u8]> {
    load::request("GET", addr, "/", &[], b"")
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(bin)).find(|p| p.is_file())
}
