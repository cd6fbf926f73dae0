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

/// A running `cortex serve`. Killed on drop.
pub struct Serve {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its data directory.
    pub data: PathBuf,
}

impl Serve {
    /// Start `cortex serve` on `data` (its stderr appended to `<data>.stderr`).
    pub fn start(data: &Path) -> Serve {
        Self::start_with_env(data, &[])
    }

    /// [`Serve::start`] with these environment variables (`CORTEX_CFG__...` settings).
    pub fn start_with_env(data: &Path, env: &[(&str, &str)]) -> Serve {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.with_extension("stderr")).unwrap();
        let mut child = cortex()
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
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
        let Some(addr) = line.trim().strip_prefix("Cortex is serving on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "first line {line:?}; log:\n{}",
                std::fs::read_to_string(data.with_extension("stderr")).unwrap_or_default()
            );
        };
        Serve { child: Some(child), base: format!("http://{addr}"), data: data.to_owned() }
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} never became ready", self.base);
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

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}
