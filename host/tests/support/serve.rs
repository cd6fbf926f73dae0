//! One `cortex serve` process on its own data directory (the embedded store), on a free
//! loopback port: start it, kill it with SIGKILL, start it again on the same data.
//!
//! ```ignore
//! let mut s = Serve::start(&data);
//! s.ready().await;
//! s.kill9();
//! let s = Serve::start(&data);
//! ```

// Each test binary that includes this uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `cortex` binary under test.
pub const CORTEX: &str = env!("CARGO_BIN_EXE_cortex");

/// `cortex` with no CORTEX_* variables from the environment.
pub fn cortex() -> Command {
    let mut c = Command::new(CORTEX);
    for (k, _) in std::env::vars() {
        if k.starts_with("CORTEX") {
            c.env_remove(k);
        }
    }
    c
}

/// How long a process may take to come up (a first start compiles nothing, but the machine
/// may be busy).
pub const STARTUP: Duration = Duration::from_secs(120);

/// How to start `cortex serve` beyond its data directory.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// The loopback port to listen on (0: a free one).
    pub port: u16,
    /// Extra environment (`CORTEX_CFG__SECTION__KEY` overrides).
    pub env: Vec<(String, String)>,
}

/// A running `cortex serve`. Killed on drop.
pub struct Serve {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its port.
    pub port: u16,
    /// Its data directory.
    pub data: PathBuf,
}

impl Serve {
    /// Start `cortex serve` on `data` (its stderr appended to `<data>.stderr`).
    pub fn start(data: &Path) -> Serve {
        Self::start_with(data, &Options::default())
    }

    /// [`Serve::start`] with `opts`.
    pub fn start_with(data: &Path, opts: &Options) -> Serve {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.with_extension("stderr")).unwrap();
        let mut cmd = cortex();
        cmd.arg("serve");
        if let Some(config) = &opts.config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd
            .args(["--listen", &format!("127.0.0.1:{}", opts.port), "--data"])
            .arg(data)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // Read what else it prints, so that its writes never fail on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let addr: Option<std::net::SocketAddr> =
            line.trim().strip_prefix("Cortex is serving on http://").and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: first line {line:?}; log:\n{}", data.display(), log_of(data));
        };
        Serve { child: Some(child), base: format!("http://{addr}"), port: addr.port(), data: data.to_owned() }
    }

    /// The process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process (while running), e.g. to signal it.
    pub fn child(&self) -> Option<&Child> {
        self.child.as_ref()
    }

    /// Take the process out (it is no longer killed on drop), e.g. to wait for its exit.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token minted with the data directory's secret.
    pub fn token(&self, tenant: Option<&str>, role: &str) -> String {
        let mut c = cortex();
        c.arg("token").arg("--data").arg(&self.data).args(["--role", role]);
        if let Some(t) = tenant {
            c.args(["--tenant", t]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Poll `/readyz` (bounded, generously) until it answers 200.
    pub async fn ready(&self) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} ({}) never became ready; log:\n{}",
                self.base,
                self.data.display(),
                log_of(&self.data)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM (a graceful shutdown) and wait for the process to end.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// SIGKILL and reap: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a process on `data` logged so far (its stderr, every start appended).
pub fn log_of(data: &Path) -> String {
    std::fs::read_to_string(data.with_extension("stderr")).unwrap_or_default()
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}
