//! A fixed number of HTTP requests through Cortex's server (or the bare hyper +
//! wasmtime-wasi-http peer of `http_load`), driven by a minimal raw-TCP keep-alive client,
//! for instruction-level profiles under callgrind:
//!
//! ```text
//! cargo bench -p cortex-benches --bench http_profile --no-run
//! valgrind --tool=callgrind target/release/deps/http_profile-* cortex 2000 2
//! ```
//!
//! Arguments: `cortex|bare REQUESTS CONNECTIONS` (defaults `cortex 2000 2`). Run it twice with
//! different REQUESTS and divide the difference of the totals by the difference of the
//! requests for a per-request cost free of start-up. The data directory
//! (`HTTP_PROFILE_DIR`, default `$TMPDIR/cortex-http-profile`) is kept between runs so that
//! compiled components come from the artifact cache instead of being compiled under valgrind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cortex_artifacts as art;
use cortex_host::config::ServerConfig;
use cortex_host::runtime::EngineConfig;
use wasmtime::component::Component;

#[path = "common/bare.rs"]
mod bare;
#[path = "common/load.rs"]
mod load;
#[path = "common/served.rs"]
mod served;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mode = args.first().cloned().unwrap_or_else(|| "cortex".into());
    let requests: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let conns: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
    let dir = std::env::var_os("HTTP_PROFILE_DIR")
        .map_or_else(|| std::env::temp_dir().join("cortex-http-profile"), std::path::PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (addr, request) = match mode.as_str() {
            "cortex" => cortex(&dir).await,
            "bare" => {
                let engine = bare::bare_engine(&engine_config());
                let cached =
                    dir.join(format!("http-hello-{}.cwasm", cortex_host::runtime::engine_fingerprint(&engine)));
                // SAFETY: the file was written just below by `Component::serialize` of an
                // engine with the same compatibility hash (it is in the file name).
                let component = match unsafe { Component::deserialize_file(&engine, &cached) } {
                    Ok(c) => c,
                    Err(_) => {
                        let c = Component::from_file(&engine, art::HTTP_HELLO).unwrap();
                        std::fs::write(&cached, c.serialize().unwrap()).unwrap();
                        c
                    }
                };
                let addr = bare::serve_component(&engine, &component).await;
                (addr, format!("GET / HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes())
            }
            other => panic!("unknown mode {other:?}: cortex or bare"),
        };
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..conns {
            let n = requests / conns + usize::from(i < requests % conns);
            let request = request.clone();
            tasks.push(tokio::spawn(async move { load::keep_alive(addr, &request, n).await }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed();
        println!("{mode}: {requests} requests over {conns} connections in {elapsed:?}");
    });
}

/// The default engine configuration with a pool small enough for valgrind, which cannot
/// reserve the default pool's terabytes of address space (`HTTP_PROFILE_INSTANCES`,
/// default 4, sets its size).
fn engine_config() -> EngineConfig {
    let instances = std::env::var("HTTP_PROFILE_INSTANCES").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    EngineConfig { max_instances: instances, ..EngineConfig::default() }
}

/// Start Cortex in this process with `hello` deployed in `demo`; its address and the raw
/// invoke request with a developer token.
async fn cortex(dir: &std::path::Path) -> (std::net::SocketAddr, Vec<u8>) {
    let mut cfg = ServerConfig { data_dir: dir.to_owned(), ..ServerConfig::default() };
    cfg.engine = engine_config();
    // Served for the whole run (a profile ends with the process).
    let served = std::mem::ManuallyDrop::new(served::serve(cfg, &[]).await);
    let (addr, token) = (served.addr, served.developer.clone());
    // `hello` with a pool that fits the small engine (idempotent: 409 once deployed).
    let client = reqwest::Client::new();
    let digest = client
        .post(format!("http://{addr}/v1/modules"))
        .bearer_auth(&token)
        .header("content-type", "application/wasm")
        .body(std::fs::read(art::HELLO).unwrap())
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let deployed = client
        .post(format!("http://{addr}/v1/agents"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "hello", "module": digest, "max_concurrency": 4}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(deployed.as_u16() == 201 || deployed.as_u16() == 409, "deploying hello: {deployed}");
    let request = format!(
        "POST /v1/agents/hello/invoke HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-length: 5\r\n\r\nbench"
    );
    (addr, request.into_bytes())
}
