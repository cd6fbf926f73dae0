//! Clusters of real processes for tests: a `fake-arangodb` process (the tests' stand-in for
//! ArangoDB, from the `cortex-tests` crate) and `cortex serve` nodes on loopback ports that
//! share it as their store, with one HS256 secret so one token works on every node.
//!
//! ```ignore
//! let cluster = Cluster::start();
//! let mut n1 = cluster.node("n1").await;        // ready: /readyz answered 200
//! let admin = cluster.token(None, "platform-admin");
//! n1.sigstop(); n1.sigcont(); n1.kill9(); n1.restart().await;   // same port, same data dir
//! ```
//!
//! The fake's binary: `CORTEX_FAKE_ARANGODB` when set, else `fake-arangodb` beside the
//! `cortex` binary under test. A test run that includes `cortex-tests` builds it there
//! (`cargo nextest run --workspace`, or `-p cortex-host -p cortex-tests`); otherwise build
//! it once with `cargo build --profile test -p cortex-tests --bin fake-arangodb` (a helper
//! that finds none fails saying so). A binary found there is used as is: after changing
//! `tests/all/fake_arango.rs`, build it again.
//!
//! The nodes are started (address line, readiness, output drained) by `serve.rs`.

// Each test binary that includes this uses a part of it.
#![allow(dead_code)]

#[path = "serve.rs"]
mod serve;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub use serve::{CORTEX, Serve};

/// The fake's basic-auth credentials (see `tests/all/fake_arango.rs`).
pub const FAKE_USER: &str = "root";
/// The fake's password.
pub const FAKE_PASSWORD: &str = "fake-secret";

/// How long a process may take to come up or go down.
const STARTUP: Duration = serve::STARTUP;

/// The path of the `fake-arangodb` binary (see the module docs).
pub fn fake_arangodb_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CORTEX_FAKE_ARANGODB") {
            return PathBuf::from(p);
        }
        let dir = Path::new(CORTEX).parent().expect("the cortex binary is in a directory");
        let bin = dir.join("fake-arangodb");
        // Not built here: a cold build of its crate takes longer than a test may run.
        assert!(
            bin.is_file(),
            "no {}: build it with `cargo build --profile test -p cortex-tests --bin fake-arangodb`, or run these \
             tests with `-p cortex-tests` too (or the workspace's), or set CORTEX_FAKE_ARANGODB",
            bin.display()
        );
        bin
    })
    .clone()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {}", child.id());
}

/// Read the rest of `out` and throw it away, so a chatty child never blocks on a full pipe.
fn drain(mut out: impl Read + Send + 'static) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
}

/// A running `fake-arangodb` process: a stand-in for ArangoDB, in memory (its data is gone
/// when it dies). Killed on drop.
pub struct FakeArangodb {
    child: Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl FakeArangodb {
    /// Start one on a free loopback port and wait for its address.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`FakeArangodb::start`] with extra arguments (`--trx-idle-timeout-ms MS`).
    pub fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(fake_arangodb_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-arangodb");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        drain(out);
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("fake-arangodb's first line: {line:?}"))
            .to_owned();
        Self { child, url: format!("http://{addr}") }
    }

    /// Stop it (SIGSTOP): connections hang, as with a stalled database.
    pub fn sigstop(&self) {
        signal(&self.child, "-STOP");
    }

    /// Let it go on (SIGCONT).
    pub fn sigcont(&self) {
        signal(&self.child, "-CONT");
    }

    /// Kill it (SIGKILL) and reap it; its data is lost.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeArangodb {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How long the cluster's fake lets a stream transaction sit idle before aborting it, as
/// ArangoDB's `--transaction.streaming-idle-timeout` does (60 s by default there): a node
/// killed or stopped in the middle of a write leaves its transaction open, and until it is
/// aborted every other write of that tenant conflicts on the keys it wrote (the tenant's
/// feed head). A cluster on ArangoDB wants that timeout short for the same reason.
pub const TRX_IDLE_TIMEOUT_MS: u64 = 1_000;

/// A fake ArangoDB and the configuration every node of the cluster shares: the store at
/// the fake (aborting transactions idle for [`TRX_IDLE_TIMEOUT_MS`]), one HS256 secret.
pub struct Cluster {
    /// The shared store.
    pub fake: FakeArangodb,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cluster {
    /// Start the fake and write the shared configuration.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeArangodb::start_with(&["--trx-idle-timeout-ms", &TRX_IDLE_TIMEOUT_MS.to_string()]);
        let secret = dir.path().join("jwt-hs256.secret");
        // 64 hex characters: what `cortex serve` itself would create.
        std::fs::write(&secret, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
        let password = dir.path().join("arango-password");
        std::fs::write(&password, FAKE_PASSWORD).unwrap();
        let config = dir.path().join("cortex.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nsecret_file = {secret:?}\n\n[store]\ntype = \"arangodb\"\nurl = {url:?}\n\
                 database = \"cortex\"\nusername = {user:?}\npassword_file = {password:?}\n\
                 connect_timeout_ms = 1000\nrequest_timeout_ms = 5000\n\n[http]\nshutdown_grace_ms = 2000\n",
                url = fake.url,
                user = FAKE_USER,
            ),
        )
        .unwrap();
        Self { fake, dir, config }
    }

    /// The shared configuration file (`cortex serve --config`).
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// A directory for the cluster's files (node data dirs live under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Start node `name` (data dir `<cluster>/<name>`, a free port) and wait until ready.
    pub async fn node(&self, name: &str) -> Node {
        self.node_with(name, &[]).await
    }

    /// [`Cluster::node`] with extra environment (`CORTEX_CFG__SECTION__KEY` overrides).
    pub async fn node_with(&self, name: &str, env: &[(&str, &str)]) -> Node {
        let mut node = Node {
            name: name.to_owned(),
            data: self.dir.path().join(name),
            opts: serve::Options {
                config: Some(self.config.clone()),
                port: 0,
                env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            },
            port: 0,
            base: String::new(),
            serve: None,
        };
        node.spawn();
        node.ready().await;
        node
    }

    /// A token valid on every node (`cortex token` with the shared secret).
    pub fn token(&self, tenant: Option<&str>, role: &str) -> String {
        let mut cmd = serve::cortex();
        cmd.arg("token").arg("--config").arg(&self.config).args(["--role", role]);
        if let Some(t) = tenant {
            cmd.args(["--tenant", t]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "cortex token: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// One `cortex serve` process of a [`Cluster`]. Killed on drop.
pub struct Node {
    /// Its name (and its data dir's).
    pub name: String,
    /// Its data directory.
    pub data: PathBuf,
    opts: serve::Options,
    /// Its port (0 before the first start; kept across restarts).
    pub port: u16,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub base: String,
    serve: Option<Serve>,
}

impl Node {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Where the node's stderr (its log) goes, every start appended.
    pub fn log_path(&self) -> PathBuf {
        self.data.with_extension("stderr")
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        serve::log_of(&self.data)
    }

    /// The process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.serve.as_ref().and_then(Serve::pid)
    }

    fn child(&self) -> &Child {
        self.serve.as_ref().and_then(Serve::child).expect("node is running")
    }

    fn spawn(&mut self) {
        assert!(self.serve.is_none(), "node {} is running", self.name);
        // The same port on a restart.
        self.opts.port = self.port;
        let serve = Serve::start_with(&self.data, &self.opts);
        self.port = serve.port;
        self.base = serve.base.clone();
        self.serve = Some(serve);
    }

    /// Poll `/readyz` until it answers 200 (bounded; panics with the node's log).
    pub async fn ready(&self) {
        self.serve.as_ref().expect("node is running").ready().await;
    }

    /// Kill the process (SIGKILL) and reap it: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            serve.kill9();
        }
    }

    /// Stop the process (SIGSTOP): it holds its connections and answers nothing.
    pub fn sigstop(&self) {
        signal(self.child(), "-STOP");
    }

    /// Let a stopped process go on (SIGCONT).
    pub fn sigcont(&self) {
        signal(self.child(), "-CONT");
    }

    /// Send SIGTERM and wait (bounded) for the process to exit; returns its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.serve.take().and_then(|mut s| s.take_child()).expect("node is running");
        signal(&child, "-TERM");
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(tokio::time::Instant::now() < deadline, "node {} did not exit on SIGTERM", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kill the process if it runs, start it again on the same port with the same data dir
    /// and configuration, and wait until it is ready.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.ready().await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}
