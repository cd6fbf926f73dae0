//! The cost of the egress path per outbound request, against the host making the same
//! request itself, in one run.
//!
//! A loopback HTTP/1.1 server answers every request with `200 ok` and closes the
//! connection. (a) Baseline: the host sends `N` GETs to it one after the other, each on a
//! new connection (hyper's client, as the egress path uses). (b) One invocation of the
//! `egress-client` agent sends the same `N` GETs through `wasi:http` and the egress path
//! (grant match, address check, connect to the checked address, counted and limited
//! bodies, metrics and log record), each on a new connection. Prints the time per request
//! of each and the ratio (b)/(a).
//!
//! `cargo bench -p cortex-benches --bench egress -- [N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::egress::{Egress, EgressConfig, EgressGrant, EgressLink, EgressQuotas, MemorySecrets};
use cortex_host::runtime::{AgentContext, EngineConfig, Limits, Outcome, Runtime};
use cortex_host::store::EmbeddedStore;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server answering `200 ok` to every request, one per connection.
async fn server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    addr
}

/// One GET from the host on a new connection.
async fn direct(addr: std::net::SocketAddr) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/api/ping").header("host", addr.to_string()).body(String::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

fn main() {
    let n: usize = std::env::args().skip(1).find(|a| !a.starts_with("--")).and_then(|s| s.parse().ok()).unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let addr = server().await;
        let dir = tempfile::tempdir().unwrap();
        // Room for the compile on a loaded machine (the default bound is 120 s).
        // A bench harness cannot be its own compile child: this crate's `cortex-bench-compile` is.
        let compile = cortex_host::runtime::CompileConfig {
            program: Some(env!("CARGO_BIN_EXE_cortex-bench-compile").into()),
            ..Default::default()
        };
        let engine = EngineConfig { compile_timeout: Duration::from_secs(900), compile, ..EngineConfig::default() };
        let runtime = Runtime::new(engine, None).unwrap();
        let module = runtime.load(&std::fs::read(art::EGRESS_CLIENT).unwrap()).await.unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let config = EgressConfig { allow_private: vec!["127.0.0.1/32".into()], ..EgressConfig::default() };
        let egress = Arc::new(Egress::new(config, Arc::new(MemorySecrets::default())).unwrap());
        let grant = EgressGrant {
            url: format!("http://{addr}/api/"),
            methods: vec!["GET".into()],
            secret: None,
            header: None,
            format: None,
            meter: None,
            redirects: None,
        };
        let mut agent = AgentContext::new("bench", "egress", Default::default(), store);
        agent.egress = Some(EgressLink {
            service: egress,
            grants: vec![grant.parse().unwrap()].into(),
            quotas: EgressQuotas { requests_per_second: u32::MAX, bytes_per_day: u64::MAX, tokens_per_day: u64::MAX },
            allow: None,
        });
        let limits = Limits { timeout: Duration::from_secs(600), host_calls: 1_000_000, ..Limits::default() };
        let input = serde_json::json!({ "url": format!("http://{addr}/api/ping"), "repeat": n }).to_string();

        // Warm up both paths.
        for _ in 0..20 {
            direct(addr).await;
        }
        let warm = serde_json::json!({ "url": format!("http://{addr}/api/ping"), "repeat": 20 }).to_string();
        let _ = runtime.invoke(&module, &agent, &limits, warm.as_bytes()).await;

        let mut best_direct = Duration::MAX;
        let mut best_egress = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..n {
                direct(addr).await;
            }
            best_direct = best_direct.min(t.elapsed());
            let t = Instant::now();
            let r = runtime.invoke(&module, &agent, &limits, input.as_bytes()).await;
            best_egress = best_egress.min(t.elapsed());
            match r.outcome {
                Outcome::Ok { output } => {
                    let out = String::from_utf8(output.unwrap_or_default()).unwrap();
                    assert!(out.contains("\"status\":200"), "{out}");
                }
                other => panic!("egress invocation failed: {other}"),
            }
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!("egress: {n} GETs to a loopback server, each on a new connection (best of 3)");
        println!("  host direct (hyper):        {:8.1} us/request", per(best_direct));
        println!("  agent through egress path:  {:8.1} us/request", per(best_egress));
        println!("  ratio egress/direct:        {:8.2}", best_egress.as_secs_f64() / best_direct.as_secs_f64());
    });
}
