//! The cost of OpenTelemetry tracing on HTTP invocations, in one run: the same workload
//! (HTTP invocations of the `messenger` agent reading its inbox document: request span,
//! auth, invocation, one host call) with tracing off, then on with sampling at 0%, 1% and
//! 100%, exporting over OTLP/HTTP to a receiver in this process that discards what it
//! gets; then off again (the baseline is the mean of both off phases, so drift shows).
//!
//! Prints invocations/s per phase and each phase's ratio to the baseline.
//!
//! `cargo bench -p cortex-benches --bench tracing -- [INVOCATIONS] [CONCURRENCY]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cortex_artifacts as art;
#[path = "common/served.rs"]
mod served;

use cortex_host::config::ServerConfig;
use cortex_host::telemetry::otel::{self, TelemetryConfig};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// An OTLP/HTTP receiver that reads each request whole and answers 200 with no body.
async fn discarding_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// `n` invocations, `c` at a time; returns invocations per second.
async fn run(base: &str, token: &str, http: &reqwest::Client, n: usize, c: usize) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c {
        let (base, token, http) = (base.to_owned(), token.to_owned(), http.clone());
        let share = n / c + usize::from(w < n % c);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let r = http
                    .post(format!("{base}/v1/agents/rx/invoke"))
                    .bearer_auth(&token)
                    .body("inbox")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(4000);
    let c: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    otel::init_subscriber();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
        let served = served::serve(cfg, &[]).await;
        let (base, http) = (format!("http://{}", served.addr), reqwest::Client::new());
        let bytes = std::fs::read(art::MESSENGER).unwrap();
        let r =
            http.post(format!("{base}/v1/modules")).bearer_auth(&served.developer).body(bytes).send().await.unwrap();
        let digest = r.json::<serde_json::Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
        let r = http
            .post(format!("{base}/v1/agents"))
            .bearer_auth(&served.developer)
            .json(&json!({ "name": "rx", "module": digest }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let endpoint = discarding_receiver().await;
        println!("== tracing: {n} HTTP invocations ({c} at a time) per phase, 2 cores shared by everything");
        run(&base, &served.developer, &http, n / 4, c).await; // warm-up

        let off1 = run(&base, &served.developer, &http, n, c).await;
        let mut on = Vec::new();
        for ratio in [0.0, 0.01, 1.0] {
            let tcfg =
                TelemetryConfig { endpoint: Some(endpoint.clone()), sampling_ratio: ratio, ..Default::default() };
            assert!(otel::install(&tcfg).unwrap());
            on.push((ratio, run(&base, &served.developer, &http, n, c).await));
            tokio::task::spawn_blocking(otel::shutdown).await.unwrap();
        }
        let off2 = run(&base, &served.developer, &http, n, c).await;
        let base_rate = (off1 + off2) / 2.0;
        println!("  off (before)     {off1:>9.0} invocations/s");
        println!("  off (after)      {off2:>9.0} invocations/s");
        for (ratio, rate) in &on {
            println!(
                "  on, {:>5.1}% kept {rate:>9.0} invocations/s   ratio to off {:.3}x",
                ratio * 100.0,
                rate / base_rate
            );
        }
        println!(
            "  exports: {} ok, {} failed",
            otel::EXPORTS.with_label_values(&["ok"]).get(),
            otel::EXPORTS.with_label_values(&["failed"]).get()
        );
        served.stop().await;
    });
}
