//! `fake-arangodb`: a STAND-IN FOR ArangoDB, FOR TESTS ONLY. It is the tests' loopback fake
//! of ArangoDB's HTTP API (`tests/all/fake_arango.rs`, included here unchanged) run as a
//! process of its own, so that several `cortex serve` processes can share one "ArangoDB" in
//! cluster tests. It keeps everything in memory, implements only the endpoints the
//! `arangodb` store calls, and is no database: never point anything but a test at it.
//!
//! Usage: `fake-arangodb [--port PORT] [--trx-idle-timeout-ms MS]`. It listens on 127.0.0.1 (PORT, or a free port when
//! omitted), prints `listening on 127.0.0.1:PORT` as its first line on stdout, and runs
//! until killed (SIGTERM, SIGINT or SIGKILL). Basic auth: user `root`, password
//! `fake-secret`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::{TcpListener, TcpStream};

// The module is shared with the integration tests, which use more of it than this binary.
#[allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
#[path = "../../all/fake_arango.rs"]
mod fake_arango;

const HELP: &str = "\
fake-arangodb: a stand-in for ArangoDB's HTTP API, FOR TESTS ONLY (in memory, a subset of
the endpoints, no durability). Not a database.

Usage: fake-arangodb [--port PORT] [--trx-idle-timeout-ms MS]

Options:
  --port PORT                listen on 127.0.0.1:PORT (default: a free port)
  --trx-idle-timeout-ms MS   abort a stream transaction no request named for MS ms, as
                             ArangoDB's --transaction.streaming-idle-timeout does
                             (default: never)
  -h, --help                 print this help

Prints `listening on 127.0.0.1:PORT` as its first line on stdout, then runs until killed.
Basic auth: user `root`, password `fake-secret`.
";

fn main() -> ExitCode {
    let mut port: Option<u16> = None;
    let mut idle: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = Some(p),
                None => return usage("--port needs a port number"),
            },
            "--trx-idle-timeout-ms" => match args.next().and_then(|p| p.parse().ok()) {
                Some(ms) => idle = Some(ms),
                None => return usage("--trx-idle-timeout-ms needs a number of milliseconds"),
            },
            other => match other.strip_prefix("--port=").map(str::parse) {
                Some(Ok(p)) => port = Some(p),
                _ => return usage(&format!("unknown argument {other:?}")),
            },
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fake-arangodb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(port, idle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-arangodb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("fake-arangodb: {msg}\n\n{HELP}");
    ExitCode::from(2)
}

async fn serve(port: Option<u16>, idle_ms: Option<u64>) -> std::io::Result<()> {
    let fake = fake_arango::FakeArango::start().await;
    fake.state.lock().map_err(|_| std::io::Error::other("the fake's state is poisoned"))?.trx_idle_timeout =
        idle_ms.map(std::time::Duration::from_millis);
    let fake_addr: SocketAddr = fake
        .url
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| std::io::Error::other(format!("the fake's url {}: {e}", fake.url)))?;
    let addr = match port {
        None => fake_addr,
        Some(port) => {
            // The module binds a free port itself; a chosen port forwards to it.
            let listener = TcpListener::bind(("127.0.0.1", port)).await?;
            let addr = listener.local_addr()?;
            tokio::spawn(forward(listener, fake_addr));
            addr
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    eprintln!("fake-arangodb: a stand-in for ArangoDB, for tests only, on http://{addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(fake);
    Ok(())
}

/// Accept on `listener` and pipe each connection to `to`.
async fn forward(listener: TcpListener, to: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
