//! The real `cortex` binary: `run` exit codes and messages, `serve` on port 0, draining on
//! SIGTERM, and durability of acknowledged writes across SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cortex_artifacts as art;
use serde_json::{Value, json};

#[path = "process/guides_go_c.rs"]
mod guides_go_c;

const BIN: &str = env!("CARGO_BIN_EXE_cortex");

// `cortex push` and `oci://` deploys against a real registry (outside `tests/`' top level,
// so not a test binary of its own).
#[path = "support/oci.rs"]
mod oci;

/// `cortex ARGS` with no CORTEX_* variables from the environment.
fn cortex(args: &[&str]) -> Command {
    let mut c = without_cortex_env(Command::new(BIN));
    c.args(args);
    c
}

/// `c` with no CORTEX_* variables from the environment.
fn without_cortex_env(mut c: Command) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("CORTEX") {
            c.env_remove(k);
        }
    }
    c
}

fn run(args: &[&str]) -> Output {
    cortex(args).output().unwrap()
}

#[test]
fn run_prints_the_output_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["run", art::HELLO, "--input", "x", "--data", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, x!\n");
    assert!(stderr.contains("ok fuel="), "{stderr}");
}

#[test]
fn token_refuses_to_mint_without_a_servers_secret_and_names_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nowhere");
    let out = cortex(&["token", "--data", data.to_str().unwrap(), "--role", "platform-admin"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "no token printed");
    assert!(stderr.contains("error[no_secret]") && stderr.contains(data.to_str().unwrap()), "{stderr}");
    assert!(!data.join("jwt-hs256.secret").exists(), "no secret created");
}

/// Fuel no loop burns before its deadline, however fast the machine: a deadline test must
/// not end by fuel (the default, 2e9 units, lasts under 200 ms on a fast machine).
const UNLIMITED_FUEL: &str = "1000000000000000";

/// The `fuel=N` of a `cortex run` stats line.
fn fuel_of(stderr: &str) -> u64 {
    let n = stderr.split("fuel=").nth(1).and_then(|rest| rest.split(' ').next());
    n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no fuel=N in {stderr}"))
}

#[test]
fn run_of_a_looping_agent_exits_1_with_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out =
        run(&["run", art::HOSTILE, "--input", "loop", "--timeout", "200ms", "--fuel", UNLIMITED_FUEL, "--data", data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error[deadline_exceeded]"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn run_reports_the_fuel_burnt_before_the_deadline() {
    // `bulk-memory l` burns 64 MiB units of fuel (one a byte of 64 `memory.fill`s), then
    // loops without a call: the stats line used to report only what came before the loop.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out =
        run(&["run", art::BULK_MEMORY, "--input", "l", "--timeout", "300ms", "--fuel", UNLIMITED_FUEL, "--data", data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error[deadline_exceeded]"), "{stderr}");
    assert!(fuel_of(&stderr) >= 64 << 20, "{stderr}");
}

#[test]
fn run_of_an_agent_that_exits_0_is_ok_and_a_failed_exit_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = run(&["run", art::HOSTILE, "--input", "exit:0", "--data", data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("[stdout] exiting") && stderr.contains("ok fuel="), "{stderr}");
    assert!(out.stdout.is_empty());
    let out = run(&["run", art::HOSTILE, "--input", "exit:3", "--data", data]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error[exit]: exit: the agent exited with code 1"), "{stderr}");
}

#[test]
fn run_of_a_core_module_exits_3_with_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = run(&["run", core.to_str().unwrap(), "--data", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("error[not_a_component]"), "{stderr}");
}

#[test]
fn run_of_a_compile_bomb_exits_3_with_compile_timeout() {
    // Within every static bound, but far beyond 300 ms to compile: `cortex run` answers
    // the timeout and exits (it used to print it and hang on the compile thread).
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.wasm");
    std::fs::write(&bomb, art::bombs::quadratic(4_000, 10_000)).unwrap();
    let data = dir.path().join("data");
    let mut child = cortex(&["run", bomb.to_str().unwrap(), "--compile-timeout", "300ms"])
        .args(["--data", data.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A guard against the old hang, not a timing assertion: the bound is minutes away.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            child.kill().unwrap();
            panic!("cortex run did not exit after the compile timeout");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("error[compile_timeout]"), "{stderr}");
}

/// A `cortex serve` child process on 127.0.0.1:0.
struct Serve {
    child: Child,
    base: String,
    data: String,
    /// The line after the address: where tokens come from.
    tokens: String,
}

impl Serve {
    fn start(data: &Path) -> Serve {
        Self::start_umask(data, None)
    }

    /// [`Serve::start`] with the process umask set to `umask` (octal) first.
    fn start_umask(data: &Path, umask: Option<&str>) -> Serve {
        Self::start_env(data, umask, &[])
    }

    /// [`Serve::start_env`] with `&str` pairs.
    fn start_opts(data: &Path, umask: Option<&str>, env: &[(&str, &str)]) -> Serve {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self::start_env(data, umask, &env)
    }

    /// [`Serve::start_umask`] with the environment variables `env` set too (configuration
    /// as `CORTEX_CFG__SECTION__KEY`).
    fn start_env(data: &Path, umask: Option<&str>, env: &[(String, String)]) -> Serve {
        let data = data.to_str().unwrap().to_owned();
        let log = std::fs::File::create(format!("{data}.stderr")).unwrap();
        let args = ["serve", "--listen", "127.0.0.1:0", "--data", &data];
        let mut command = match umask {
            None => cortex(&args),
            Some(mask) => {
                // The shell sets the umask, then becomes the binary (`$0`) with the args.
                let script = format!("umask {mask} && exec \"$0\" \"$@\"");
                let mut sh = without_cortex_env(Command::new("sh"));
                sh.args(["-c", &script, BIN]).args(args);
                sh
            }
        };
        let mut child = command
            .env("CORTEX_CFG__HTTP__SHUTDOWN_GRACE_MS", "10000")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let mut tokens = String::new();
        out.read_line(&mut tokens).unwrap();
        // Kept open for the server's life: a write to a closed pipe would fail.
        child.stdout = Some(out.into_inner());
        let addr = line
            .trim()
            .strip_prefix("Cortex is serving on http://")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; stderr: {}",
                    std::fs::read_to_string(format!("{data}.stderr")).unwrap_or_default()
                )
            })
            .to_owned();
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        assert_ne!(addr.port(), 0, "port 0 must be replaced by the real port");
        Serve { child, base: format!("http://{addr}"), data, tokens }
    }

    fn token(&self, tenant: Option<&str>, role: &str) -> String {
        let mut args = vec!["token", "--data", &self.data, "--role", role];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
        }
        let out = run(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Poll /readyz (bounded) until it answers 200.
    async fn ready(&self, client: &reqwest::Client) {
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} never became ready", self.base);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    /// Wait (bounded) for the process to exit.
    async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(tokio::time::Instant::now() < deadline, "the server did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Create tenant `t`, upload `module`, deploy it as `name`; returns a developer token.
async fn deploy(s: &Serve, client: &reqwest::Client, module: &str, name: &str) -> String {
    let admin = s.token(None, "platform-admin");
    let r = client
        .post(format!("{}/v1/tenants", s.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let dev = s.token(Some("t"), "developer");
    let r = client
        .post(format!("{}/v1/modules", s.base))
        .bearer_auth(&dev)
        .body(std::fs::read(module).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let digest = r.json::<Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
    let r = client
        .post(format!("{}/v1/agents", s.base))
        .bearer_auth(&dev)
        .json(&json!({"name": name, "module": digest}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    dev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_in_flight_requests_on_sigterm_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    s.ready(&client).await;
    let dev = deploy(&s, &client, art::HOSTILE, "h").await;

    let slow = {
        let rb = client.post(format!("{}/v1/agents/h/invoke", s.base)).bearer_auth(&dev).body("sleep:1500");
        tokio::spawn(async move {
            let r = rb.send().await.unwrap();
            let connection = r.headers().get("connection").map(|v| v.to_str().unwrap().to_owned());
            (r.status(), connection, r.text().await.unwrap())
        })
    };
    // Wait (bounded) until the invocation is running.
    let mut running = false;
    for _ in 0..250 {
        let a: Value =
            client.get(format!("{}/v1/agents/h", s.base)).bearer_auth(&dev).send().await.unwrap().json().await.unwrap();
        if a["running_now"] == 1 {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running, "the slow invocation never started");

    s.signal("-TERM");
    let (status, connection, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slept"), "the in-flight request was not drained");
    assert_eq!(connection.as_deref(), Some("close"), "a response during shutdown must close its connection");
    // The client's idle keep-alive connections (from the polling above) do not hold the
    // drain: the server exits well within its 10 s grace period.
    assert_eq!(s.exit_code(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_increments_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Serve::start(&data);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    s.ready(&client).await;
    let dev = deploy(&s, &client, art::COUNTER, "c").await;

    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    const KILL_AFTER: u64 = 40;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (sent, acked, enough) = (sent.clone(), acked.clone(), enough.clone());
        let url = format!("{}/v1/agents/c/invoke", s.base);
        let (client, dev) = (client.clone(), dev.clone());
        tasks.push(tokio::spawn(async move {
            // At most 10 000 requests each: the loop ends when the server dies.
            for _ in 0..10_000 {
                sent.fetch_add(1, Ordering::SeqCst);
                match client.post(&url).bearer_auth(&dev).body("hits").send().await {
                    Ok(r) if r.status() == 200 => {
                        // Acknowledged only once the whole answer is read.
                        if r.text().await.is_ok() && acked.fetch_add(1, Ordering::SeqCst) + 1 >= KILL_AFTER {
                            enough.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(20), enough.notified()).await.expect("40 increments within 20 s");
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t).await.expect("clients stop when the server dies").unwrap();
    }
    let (sent, acked) = (sent.load(Ordering::SeqCst), acked.load(Ordering::SeqCst));
    assert!(acked >= KILL_AFTER);
    drop(s);

    let s = Serve::start(&data);
    // It says where its tokens come from and how to mint one.
    let secret = Path::new(&s.data).join("jwt-hs256.secret");
    assert!(s.tokens.contains(secret.to_str().unwrap()) && s.tokens.contains("cortex token --data"), "{}", s.tokens);
    s.ready(&client).await;
    let r = client.post(format!("{}/v1/agents/c/invoke", s.base)).bearer_auth(&dev).body("hits").send().await.unwrap();
    assert_eq!(r.status(), 200, "the agent is back after the restart");
    let next: u64 = r.text().await.unwrap().parse().unwrap();
    let stored = next - 1;
    assert!(stored >= acked, "lost acknowledged increments: {stored} stored, {acked} acknowledged");
    assert!(stored <= sent, "more increments than requests: {stored} stored, {sent} sent");
}

async fn upload_and_deploy(s: &Serve, client: &reqwest::Client, dev: &str, module: &str, spec: Value) {
    let r = client.post(format!("{}/v1/modules", s.base)).bearer_auth(dev).body(std::fs::read(module).unwrap());
    let r = r.send().await.unwrap();
    assert!(r.status() == 201 || r.status() == 200);
    let digest = r.json::<Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
    let mut body = spec;
    body["module"] = json!(digest);
    let r = client.post(format!("{}/v1/agents", s.base)).bearer_auth(dev).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn invoke_json(s: &Serve, client: &reqwest::Client, dev: &str, agent: &str, input: &str) -> Option<Value> {
    let r = client.post(format!("{}/v1/agents/{agent}/invoke", s.base)).bearer_auth(dev).body(input.to_owned());
    let r = r.send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    serde_json::from_str(&r.text().await.ok()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_and_change_events_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Serve::start(&data);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    s.ready(&client).await;
    // The receiver records every message in `inbox/rx`; the watcher records every change of
    // the `inbox` collection it is given.
    let dev = deploy(&s, &client, art::MESSENGER, "tx").await;
    upload_and_deploy(&s, &client, &dev, art::MESSENGER, json!({"name": "rx", "max_concurrency": 1})).await;
    let watch = json!({"name": "w", "watches": [{"collection": "inbox"}]});
    upload_and_deploy(&s, &client, &dev, art::WATCHER, watch).await;

    const KILL_AFTER: usize = 30;
    let mut acked = Vec::new();
    for i in 0..10_000 {
        let r = client
            .post(format!("{}/v1/agents/tx/invoke", s.base))
            .bearer_auth(&dev)
            .body(format!("send:rx:m{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "sent");
        acked.push(format!("m{i}"));
        if acked.len() >= KILL_AFTER {
            break;
        }
    }
    // Killed with deliveries and change batches in flight.
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    drop(s);

    let s = Serve::start(&data);
    s.ready(&client).await;
    // Every acknowledged message arrives (at least once), and the watcher sees every
    // revision of the inbox: no change event is skipped across the crash.
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..1500 {
        let inbox: Vec<String> = match invoke_json(&s, &client, &dev, "rx", "inbox").await {
            Some(v) => serde_json::from_value(v).unwrap(),
            None => Vec::new(),
        };
        let seen: Vec<String> = match invoke_json(&s, &client, &dev, "w", "").await {
            Some(v) => serde_json::from_value(v).unwrap(),
            None => Vec::new(),
        };
        let all_in = acked.iter().all(|m| inbox.contains(m));
        let revision = inbox.len();
        let caught_up = seen.iter().any(|e| e.ends_with(&format!("inbox/rx@{revision}")));
        if all_in && caught_up {
            for rev in 1..=revision {
                assert!(
                    seen.iter().any(|e| e.ends_with(&format!("inbox/rx@{rev}"))),
                    "the watcher never saw revision {rev}: {seen:?}"
                );
            }
            return;
        }
        last = (inbox, seen);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not delivered after the restart: inbox {:?}, watcher {:?}", last.0, last.1);
}

/// `cortex ARGS` against a server, as a user with `token` would type it.
fn client(s: &Serve, token: &str, args: &[&str]) -> Output {
    cortex(args).env("CORTEX_URL", &s.base).env("CORTEX_TOKEN", token).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_drive_the_whole_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"));
    s.ready(&reqwest::Client::new()).await;
    let admin = s.token(None, "platform-admin");
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = ok(client(&s, &admin, &["tenants", "create", "acme"]));
    assert!(table.lines().next().unwrap().starts_with("NAME"), "tables for people: {table}");
    let dev = s.token(Some("acme"), "developer");

    let up: Value = serde_json::from_str(&ok(client(&s, &dev, &["modules", "upload", art::HELLO, "--json"]))).unwrap();
    let digest = up["digest"].as_str().unwrap().to_owned();
    ok(client(&s, &dev, &["agents", "deploy", "greeter", "--module", &digest, "--config", "k=v"]));
    assert_eq!(ok(client(&s, &dev, &["invoke", "greeter", "--input", "cli"])), "Hello, cli!\n");

    let agents: Value = serde_json::from_str(&ok(client(&s, &dev, &["agents", "list", "--json"]))).unwrap();
    assert_eq!(agents[0]["name"], "greeter");
    assert_eq!(agents[0]["invocations"], 1);
    assert_eq!(agents[0]["config"]["k"], "v");

    // Watches and subscriptions from the command line.
    let up: Value =
        serde_json::from_str(&ok(client(&s, &dev, &["modules", "upload", art::WATCHER, "--json"]))).unwrap();
    let w = up["digest"].as_str().unwrap().to_owned();
    let args =
        ["agents", "deploy", "w", "--module", &w, "--watch", "orders/eu/", "--watch", "users", "--subscribe", "news"];
    ok(client(&s, &dev, &args));
    let got: Value = serde_json::from_str(&ok(client(&s, &dev, &["agents", "get", "w", "--json"]))).unwrap();
    assert_eq!(
        got["watches"],
        serde_json::json!([{"collection": "orders", "prefix": "eu/"}, {"collection": "users", "prefix": ""}])
    );
    assert_eq!(got["subscriptions"], serde_json::json!(["news"]));
    ok(client(&s, &dev, &["agents", "delete", "w"]));

    // An upgrade on probation that fails it: the host rolls back, and the table says why.
    let up: Value =
        serde_json::from_str(&ok(client(&s, &dev, &["modules", "upload", art::HOSTILE, "--json"]))).unwrap();
    let h = up["digest"].as_str().unwrap().to_owned();
    let args = ["agents", "upgrade", "greeter", "--module", &h, "--probation", "10m", "--probation-min", "2"];
    ok(client(&s, &dev, &args));
    for _ in 0..2 {
        let trapped = client(&s, &dev, &["invoke", "greeter", "--input", "trap"]);
        assert_eq!(trapped.status.code(), Some(1), "{}", String::from_utf8_lossy(&trapped.stderr));
    }
    let mut shown = String::new();
    for _ in 0..1500 {
        shown = ok(client(&s, &dev, &["agents", "list"]));
        if shown.contains("probation failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let header = shown.lines().next().unwrap();
    assert!(header.contains("HEALTH") && header.contains("CIRCUIT") && header.contains("ROLLED_BACK"), "{shown}");
    assert!(shown.contains("probation failed: 2 of 2 invocations failed"), "{shown}");
    assert_eq!(ok(client(&s, &dev, &["invoke", "greeter", "--input", "cli"])), "Hello, cli!\n", "rolled back");
    // --json: status, outcome, stats and output; or the problem, with exit 1.
    let v: Value =
        serde_json::from_str(&ok(client(&s, &dev, &["invoke", "greeter", "--input", "js", "--json"]))).unwrap();
    assert_eq!((&v["status"], &v["outcome"], &v["output"]), (&json!(200), &json!("ok"), &json!("Hello, js!")), "{v}");
    assert!(v["fuel"].as_u64().unwrap() > 0 && v["duration_us"].is_u64() && v["invocation"].is_string(), "{v}");
    let missing = client(&s, &dev, &["invoke", "nobody", "--json"]);
    assert_eq!(missing.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!((&v["status"], &v["problem"]["code"]), (&json!(404), &json!("not_found")), "{v}");
    // --input @- reads stdin.
    let mut piped = cortex(&["invoke", "greeter", "--input", "@-"])
        .env("CORTEX_URL", &s.base)
        .env("CORTEX_TOKEN", &dev)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut piped.stdin.take().unwrap(), b"stdin").unwrap();
    let out = piped.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, stdin!\n");

    ok(client(&s, &dev, &["agents", "stop", "greeter"]));
    let stopped = client(&s, &dev, &["invoke", "greeter"]);
    assert_eq!(stopped.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("agent_stopped"));

    // A usage error exits 2, before any request.
    let usage = client(&s, &dev, &["agents", "list", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2), "{}", String::from_utf8_lossy(&usage.stderr));
    // A developer may not read the audit log: a clear error and exit 1.
    let denied = client(&s, &dev, &["audit"]);
    assert_eq!(denied.status.code(), Some(1), "a refusal by the server exits 1");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"), "{}", String::from_utf8_lossy(&denied.stderr));
    let audit: Value = serde_json::from_str(&ok(client(&s, &admin, &["audit", "--json", "--tenant", "acme"]))).unwrap();
    let events = audit.as_array().unwrap();
    assert!(events.iter().any(|e| e["action"] == "POST /v1/agents"), "{audit}");
    assert!(events.iter().all(|e| e["tenant"] == "acme"), "--tenant filters the audit log: {audit}");

    ok(client(&s, &dev, &["agents", "delete", "greeter"]));
    let agents: Value = serde_json::from_str(&ok(client(&s, &dev, &["agents", "list", "--json"]))).unwrap();
    assert_eq!(agents, json!([]));
}

/// Every entry under `dir` with its permission bits.
fn modes(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

fn assert_owner_only(data: &Path) {
    let all = modes(data);
    let names: Vec<String> = all.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["documents.redb", "jwt-hs256.secret", "cache.key"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with(".wasm")), "no module in {names:?}");
    assert!(names.iter().any(|n| n.ends_with(".cwasm")), "no compiled artifact in {names:?}");
    let open: Vec<_> =
        all.iter().filter(|(_, m)| m & 0o077 != 0).map(|(p, m)| format!("{} {m:o}", p.display())).collect();
    assert!(open.is_empty(), "readable by group or others: {open:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_everything_in_it_are_owner_only_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    {
        // With no umask at all, everything would be created world-writable.
        let s = Serve::start_umask(&data, Some("000"));
        s.ready(&client).await;
        let dev = deploy(&s, &client, art::HELLO, "hello").await;
        let r =
            client.post(format!("{}/v1/agents/hello/invoke", s.base)).bearer_auth(&dev).body("x").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_owner_only(&data);
    }
    // A data dir an older version left readable (umask 022) is made owner-only at start.
    use std::os::unix::fs::PermissionsExt;
    for (p, _) in modes(&data) {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let s = Serve::start(&data);
    s.ready(&client).await;
    assert_owner_only(&data);
}

/// `cortex ARGS` in folder `dir` against a server, as a user with `token`.
fn client_in(s: &Serve, token: &str, dir: &Path, args: &[&str]) -> Output {
    cortex(args).current_dir(dir).env("CORTEX_URL", &s.base).env("CORTEX_TOKEN", token).output().unwrap()
}

/// Exit code, stdout and stderr of `out`.
fn parts(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server with tenant `acme` and a developer token of it.
async fn serve_acme(dir: &Path, env: &[(&str, &str)]) -> (Serve, String, String) {
    let s = Serve::start_opts(&dir.join("data"), None, env);
    s.ready(&reqwest::Client::new()).await;
    let admin = s.token(None, "platform-admin");
    let out = client(&s, &admin, &["tenants", "create", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dev = s.token(Some("acme"), "developer");
    (s, admin, dev)
}

fn agent_json(s: &Serve, dev: &str, name: &str) -> Value {
    let out = client(s, dev, &["agents", "get", name, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn digest_of(path: &str) -> String {
    cortex_host::runtime::digest(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_uploads_only_new_bytes_and_makes_the_agent_what_the_command_says() {
    let dir = tempfile::tempdir().unwrap();
    let (s, admin, dev) = serve_acme(dir.path(), &[]).await;
    let here = dir.path();

    // First deploy: upload, deploy.
    let (code, stdout, stderr) =
        parts(&client_in(&s, &dev, here, &["deploy", "greeter", art::HELLO, "--config", "k=v"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("uploading") && stderr.contains("deployed greeter"), "{stderr}");
    assert_eq!(stdout.trim(), format!("greeter {}", digest_of(art::HELLO)));
    assert_eq!(parts(&client(&s, &dev, &["invoke", "greeter", "--input", "x"])).1, "Hello, x!\n");

    // The same command again: no upload, nothing to do.
    let (code, _, stderr) = parts(&client_in(&s, &dev, here, &["deploy", "greeter", art::HELLO, "--config", "k=v"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("upload skipped") && stderr.contains("up to date"), "{stderr}");
    assert!(!stderr.contains("uploading"), "{stderr}");
    let audit: Value =
        serde_json::from_slice(&client(&s, &admin, &["audit", "--json", "--tenant", "acme", "--limit", "1000"]).stdout)
            .unwrap();
    let uploads = audit.as_array().unwrap().iter().filter(|e| e["action"] == "POST /v1/modules").count();
    assert_eq!(uploads, 1, "the bytes went up once: {audit}");

    // Another module: an upgrade (same config).
    let (code, _, stderr) = parts(&client_in(&s, &dev, here, &["deploy", "greeter", art::COMPUTE, "--config", "k=v"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("upgraded greeter"), "{stderr}");
    let a = agent_json(&s, &dev, "greeter");
    assert_eq!((a["module"].as_str().unwrap(), &a["config"]), (digest_of(art::COMPUTE).as_str(), &json!({"k": "v"})));
    // Another config: a config update, the module kept.
    let (code, _, stderr) = parts(&client_in(&s, &dev, here, &["deploy", "greeter", art::COMPUTE, "--config", "k=w"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("updated the configuration"), "{stderr}");
    assert_eq!(agent_json(&s, &dev, "greeter")["config"], json!({"k": "w"}));
    // Both at once: one upgrade carries the new config; by a module reference this time.
    let (code, _, stderr) =
        parts(&client_in(&s, &dev, here, &["deploy", "greeter", "greeter:latest", "--config", "k=z"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("updated the configuration"), "greeter:latest is the COMPUTE upload: {stderr}");
    let hello = digest_of(art::HELLO);
    let (code, _, stderr) = parts(&client_in(&s, &dev, here, &["deploy", "greeter", &hello[..10]]));
    assert_eq!(code, Some(0), "{stderr}");
    let a = agent_json(&s, &dev, "greeter");
    assert_eq!((a["module"].as_str().unwrap(), &a["config"]), (hello.as_str(), &json!({})), "{stderr}");

    // What only a redeploy changes is refused without --replace (exit 1), done with it.
    let (code, _, stderr) = parts(&client_in(
        &s,
        &dev,
        here,
        &["deploy", "greeter", art::HELLO, "--subscribe", "news", "--fuel", "5000000"],
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("subscriptions") && stderr.contains("limits.fuel") && stderr.contains("--replace"),
        "{stderr}"
    );
    let args =
        ["deploy", "greeter", art::HELLO, "--subscribe", "news", "--fuel", "5000000", "--timeout", "2s", "--replace"];
    let (code, _, stderr) = parts(&client_in(&s, &dev, here, &args));
    assert_eq!(code, Some(0), "{stderr}");
    let a = agent_json(&s, &dev, "greeter");
    assert_eq!(
        (&a["subscriptions"], &a["limits"]["fuel"], &a["limits"]["timeout_ms"]),
        (&json!(["news"]), &json!(5_000_000), &json!(2000))
    );

    // Usage: no module and no project here exits 2; an unknown reference exits 1.
    assert_eq!(client_in(&s, &dev, here, &["deploy", "x"]).status.code(), Some(2));
    assert_eq!(client_in(&s, &dev, here, &["deploy", "x", "nothing:v9"]).status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_large_module_prints_progress_while_the_server_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, dev) = serve_acme(dir.path(), &[("CORTEX_CFG__MODULES__ASYNC_COMPILE_BYTES", "1000")]).await;
    let (code, _, stderr) = parts(&client_in(&s, &dev, dir.path(), &["deploy", "big", art::HELLO]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("compiling ") && stderr.contains("deployed big"), "{stderr}");
    assert_eq!(parts(&client(&s, &dev, &["invoke", "big", "--input", "y"])).1, "Hello, y!\n");
}

/// A project whose build copies the component named in `which.txt` over its output.
fn copy_project(dir: &Path, component: &str) {
    std::fs::write(
        dir.join("cortex.toml"),
        "[agent]\nname = \"devagent\"\nlang = \"rust\"\n\n[build]\n\
         command = \"mkdir -p out && cp \\\"$(cat which.txt)\\\" out/agent.wasm\"\noutput = \"out/agent.wasm\"\n\n\
         [deploy]\nconfig = { mode = \"dev\" }\n",
    )
    .unwrap();
    std::fs::write(dir.join("which.txt"), component).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_in_a_project_builds_it_and_dev_upgrades_on_every_save() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, dev) = serve_acme(dir.path(), &[]).await;
    let project = dir.path().join("proj");
    std::fs::create_dir(&project).unwrap();
    copy_project(&project, art::HELLO);

    // `cortex deploy` with no module: build, then the manifest's name and [deploy].
    let (code, _, stderr) = parts(&client_in(&s, &dev, &project, &["deploy"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("building devagent") && stderr.contains("deployed devagent"), "{stderr}");
    assert_eq!(agent_json(&s, &dev, "devagent")["config"], json!({"mode": "dev"}));

    // `cortex dev`: a save of which.txt rebuilds and upgrades.
    let log = std::fs::File::create(dir.path().join("dev.stderr")).unwrap();
    let agent_log = std::fs::File::create(dir.path().join("dev.stdout")).unwrap();
    let mut child = cortex(&["dev"])
        .current_dir(&project)
        .env("CORTEX_URL", &s.base)
        .env("CORTEX_TOKEN", &dev)
        .stdout(agent_log)
        .stderr(log)
        .spawn()
        .unwrap();
    let dev_log = || std::fs::read_to_string(dir.path().join("dev.stderr")).unwrap_or_default();
    let until = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let what = what.to_owned();
        async move {
            while !dev_log().contains(&what) {
                assert!(std::time::Instant::now() < deadline, "no {what:?} from cortex dev: {}", dev_log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until("watching").await;
    assert!(dev_log().contains("up to date"), "the first cycle finds nothing to do: {}", dev_log());
    std::fs::write(project.join("which.txt"), art::COMPUTE).unwrap();
    until("upgraded devagent").await;
    until("running").await;
    assert_eq!(agent_json(&s, &dev, "devagent")["module"], digest_of(art::COMPUTE).as_str());
    let (code, out, _) = parts(&client(&s, &dev, &["invoke", "devagent", "--input", "cpu:1"]));
    assert_eq!(code, Some(0));
    assert!(!out.starts_with("Hello") && !out.trim().is_empty(), "the new module answers: {out}");
    // The agent's log lines come out live.
    std::fs::write(project.join("which.txt"), art::HOSTILE).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while agent_json(&s, &dev, "devagent")["module"] != digest_of(art::HOSTILE).as_str() {
        assert!(std::time::Instant::now() < deadline, "not upgraded to hostile: {}", dev_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client(&s, &dev, &["invoke", "devagent", "--input", "exit:0"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let printed = || std::fs::read_to_string(dir.path().join("dev.stdout")).unwrap_or_default();
    while !printed().contains("[devagent stdout] exiting") {
        assert!(std::time::Instant::now() < deadline, "no agent log from cortex dev: {:?} {}", printed(), dev_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken build is reported and the watch goes on.
    std::fs::write(project.join("which.txt"), "/nonexistent.wasm").unwrap();
    until("fix it and save again").await;
    std::fs::write(project.join("which.txt"), art::HELLO).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while agent_json(&s, &dev, "devagent")["module"] != digest_of(art::HELLO).as_str() {
        assert!(std::time::Instant::now() < deadline, "not upgraded back: {}", dev_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ctrl-C ends it cleanly.
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "cortex dev did not stop: {}", dev_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", dev_log());
    assert!(dev_log().contains("stopped watching"), "{}", dev_log());
}

/// A project whose `[deploy]` holds an egress grant of `key = value` lines (`grant`).
fn egress_project(dir: &Path, grant: &str) {
    std::fs::write(
        dir.join("cortex.toml"),
        format!(
            "[agent]\nname = \"caller\"\nlang = \"rust\"\n\n[build]\n\
             command = \"mkdir -p out && cp {} out/agent.wasm\"\noutput = \"out/agent.wasm\"\n\n\
             [deploy]\nconfig = {{ model = \"m\" }}\n\n[[deploy.egress]]\n{grant}\n",
            art::HELLO
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_sends_the_manifests_egress_grants_and_refuses_a_misspelled_key() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, dev) = serve_acme(dir.path(), &[]).await;
    let project = dir.path().join("proj");
    std::fs::create_dir(&project).unwrap();
    let grant = "url = \"https://api.openai.com/v1/\"\nmethods = [\"POST\"]\nsecret = \"openai\"\n\
                 header = \"authorization\"\nformat = \"Bearer {}\"\nmeter = \"openai\"";
    egress_project(&project, grant);
    let (code, _, stderr) = parts(&client_in(&s, &dev, &project, &["deploy"]));
    assert_eq!(code, Some(0), "{stderr}");
    let agent = agent_json(&s, &dev, "caller");
    assert_eq!(
        agent["egress"],
        json!([{ "url": "https://api.openai.com/v1/", "methods": ["POST"], "secret": "openai",
                 "header": "authorization", "format": "Bearer {}", "meter": "openai" }]),
        "{agent}"
    );
    // The same manifest again: nothing to do (the grants compare equal).
    let (code, _, stderr) = parts(&client_in(&s, &dev, &project, &["deploy"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("up to date"), "{stderr}");
    // Another grant changes only by a redeploy.
    egress_project(&project, "url = \"https://api.openai.com/v2/\"");
    let (code, _, stderr) = parts(&client_in(&s, &dev, &project, &["deploy"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("egress") && stderr.contains("--replace"), "{stderr}");
    let (code, _, stderr) = parts(&client_in(&s, &dev, &project, &["deploy", "--replace"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(agent_json(&s, &dev, "caller")["egress"][0]["url"], "https://api.openai.com/v2/");

    // A misspelled key: refused before anything is built or sent, naming the key, the
    // table and the keys allowed.
    egress_project(&project, "url = \"https://api.openai.com/v3/\"\nsecrets = \"openai\"");
    let (code, _, stderr) = parts(&client_in(&s, &dev, &project, &["deploy", "--replace"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cortex.toml") && stderr.contains("egress"), "{stderr}");
    assert!(stderr.contains("unknown field `secrets`") && stderr.contains("`secret`"), "{stderr}");
    assert!(!stderr.contains("building"), "{stderr}");
    assert_eq!(agent_json(&s, &dev, "caller")["egress"][0]["url"], "https://api.openai.com/v2/");
}

/// A `cortex ... --follow` child whose stdout lines arrive on a channel.
struct Follower {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(s: &Serve, token: &str, args: &[&str]) -> Follower {
        let mut child = cortex(args)
            .env("CORTEX_URL", &s.base)
            .env("CORTEX_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The first line (parsed as JSON) for which `pred` holds (bounded wait).
    fn until(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).expect("the follower printed no matching line in time");
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && pred(&v)
            {
                return v;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `cortex ARGS --json` (bounded) until `pred` holds on its output.
async fn poll_json(s: &Serve, token: &str, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..1500 {
        let out = client(s, token, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        last = serde_json::from_slice(&out.stdout).unwrap();
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{args:?} never matched: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_follows_logs_and_events_manages_dead_letters_and_quotas_and_logs_survive_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Serve::start(&data);
    s.ready(&reqwest::Client::new()).await;
    let admin = s.token(None, "platform-admin");
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json_of = |out: Output| -> Value { serde_json::from_str(&ok(out)).unwrap() };

    // tenants update: the named quotas change, the others stay.
    ok(client(&s, &admin, &["tenants", "create", "acme"]));
    let before = json_of(client(&s, &admin, &["tenants", "get", "acme", "--json"]));
    let args = ["tenants", "update", "acme", "--quota", "agents=7", "--quota", "max_timeout_ms=2s", "--json"];
    let after = json_of(client(&s, &admin, &args));
    assert_eq!((&after["quotas"]["agents"], &after["quotas"]["max_timeout_ms"]), (&json!(7), &json!(2000)));
    for (k, v) in before["quotas"].as_object().unwrap() {
        if k != "agents" && k != "max_timeout_ms" {
            assert_eq!(&after["quotas"][k], v, "{k} was kept");
        }
    }
    let bad = client(&s, &admin, &["tenants", "update", "acme", "--quota", "no_such_quota=1"]);
    assert_eq!(bad.status.code(), Some(1), "{}", String::from_utf8_lossy(&bad.stderr));
    let usage = client(&s, &admin, &["tenants", "update", "acme", "--quota", "agents"]);
    assert_ne!(usage.status.code(), Some(0));

    let dev = s.token(Some("acme"), "developer");
    let up = json_of(client(&s, &dev, &["modules", "upload", art::KV, "--json"]));
    let kv = up["digest"].as_str().unwrap().to_owned();
    ok(client(&s, &dev, &["agents", "deploy", "kv", "--module", &kv]));
    let up = json_of(client(&s, &dev, &["modules", "upload", art::WATCHER, "--json"]));
    let w = up["digest"].as_str().unwrap().to_owned();
    ok(client(&s, &dev, &["agents", "deploy", "w", "--module", &w, "--watch", "orders", "--config", "fail=yes"]));

    // logs --follow prints a line written after it started, with its fields.
    let logs = Follower::start(&s, &dev, &["logs", "kv", "--follow", "--json"]);
    let events = Follower::start(&s, &dev, &["events", "--follow", "--json"]);
    let said = json_of(client(&s, &dev, &["invoke", "kv", "--input", r#"say:{"msg":"hello","n":1}"#, "--json"]));
    let line = logs.until(|l| l["message"] == "hello");
    assert_eq!((&line["invocation"], &line["fields"]), (&said["invocation"], &json!({"n": 1})), "{line}");
    // The table: number, UTC time, invocation, stream, level, message with its fields.
    let table = ok(client(&s, &dev, &["logs", "kv"]));
    let header = table.lines().next().unwrap();
    for col in ["SEQ", "TIME", "INVOCATION", "STREAM", "LEVEL", "MESSAGE"] {
        assert!(header.contains(col), "{table}");
    }
    let row = table.lines().find(|l| l.contains("hello")).unwrap_or_else(|| panic!("{table}"));
    let invocation = said["invocation"].as_str().unwrap();
    assert!(row.contains(invocation) && row.contains("stdout") && row.contains("hello n=1"), "{row}");
    assert!(row.split_whitespace().nth(1).is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{row}");
    // A failed invocation: the host's line, level error, with the invocation and the code.
    let failed = client(&s, &dev, &["invoke", "kv", "--input", "fail:2", "--json"]);
    assert_eq!(failed.status.code(), Some(1));
    let failed: Value = serde_json::from_slice(&failed.stdout).unwrap();
    let host = logs.until(|l| l["stream"] == "host");
    assert_eq!((&host["invocation"], &host["level"]), (&failed["invocation"], &json!("error")));
    let table = ok(client(&s, &dev, &["logs", "kv"]));
    assert!(
        table.lines().any(|l| l.contains("host") && l.contains("error") && l.contains("code=agent_error")),
        "{table}"
    );
    // By default the last 100 lines; --tail N the last N; --since N the ones after N.
    let last = json_of(client(&s, &dev, &["logs", "kv", "--tail", "1", "--json"]));
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["stream"], "host");
    let first_seq = host["seq"].as_u64().unwrap() - 1;
    let after = json_of(client(&s, &dev, &["logs", "kv", "--since", &first_seq.to_string(), "--json"]));
    assert_eq!(after[0]["seq"].as_u64(), Some(first_seq + 1));
    let both = client(&s, &dev, &["logs", "kv", "--since", "1", "--tail", "1"]);
    assert_eq!(both.status.code(), Some(2), "--since and --tail conflict");

    // events: the list and the follower see the write.
    ok(client(&s, &dev, &["invoke", "kv", "--input", r#"put:orders/o1={"n":1}"#]));
    let e = events.until(|e| e["key"] == "o1");
    assert_eq!((&e["collection"], &e["op"], &e["agent"]), (&json!("orders"), &json!("put"), &json!("kv")));
    let listed = json_of(client(&s, &dev, &["events", "--since", "0", "--json"]));
    assert!(listed.as_array().unwrap().iter().any(|e| e["key"] == "o1"), "{listed}");
    assert!(ok(client(&s, &dev, &["events"])).lines().next().unwrap().starts_with("SEQ"));

    // deadletters: list, a replay that fails again (exit 1), discard, a replay that succeeds.
    let letters = poll_json(&s, &dev, &["deadletters", "w", "--json"], |v| v.as_array().unwrap().len() == 1).await;
    let first = letters[0]["id"].as_str().unwrap().to_owned();
    ok(client(&s, &dev, &["invoke", "kv", "--input", r#"put:orders/o2={"n":2}"#]));
    let letters =
        poll_json(&s, &dev, &["deadletters", "w", "list", "--json"], |v| v.as_array().unwrap().len() == 2).await;
    let second =
        letters.as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).find(|i| *i != first).unwrap().to_owned();
    let replay = client(&s, &dev, &["deadletters", "w", "replay", &first]);
    assert_eq!(replay.status.code(), Some(1), "{}", String::from_utf8_lossy(&replay.stdout));
    assert!(
        String::from_utf8_lossy(&replay.stderr).contains("agent_error"),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    ok(client(&s, &dev, &["deadletters", "w", "discard", &first]));
    ok(client(&s, &dev, &["agents", "config", "w", "--set", "fail=no"]));
    let replayed = json_of(client(&s, &dev, &["deadletters", "w", "replay", &second, "--json"]));
    assert_eq!(replayed["outcome"], "ok");
    assert_eq!(json_of(client(&s, &dev, &["deadletters", "w", "--json"])), json!([]));
    let missing = client(&s, &dev, &["deadletters", "w", "discard", &first]);
    assert_eq!(missing.status.code(), Some(1));
    // The failed on-change batches left host lines in the watcher's log.
    let wlog = json_of(client(&s, &dev, &["logs", "w", "--json"]));
    assert!(
        wlog.as_array().unwrap().iter().any(|l| l["stream"] == "host" && l["fields"]["export"] == "on-change"),
        "{wlog}"
    );
    drop(logs);
    drop(events);

    // A clean shutdown (SIGTERM) and a start on the same data: the logs are all there.
    let kept = json_of(client(&s, &dev, &["logs", "kv", "--json"]));
    s.signal("-TERM");
    assert_eq!(s.exit_code(Duration::from_secs(30)).await, Some(0));
    let s = Serve::start(&data);
    s.ready(&reqwest::Client::new()).await;
    let dev = s.token(Some("acme"), "developer");
    assert_eq!(json_of(client(&s, &dev, &["logs", "kv", "--json"])), kept);

    // completions: a script for each shell clap knows; an unknown shell is a usage error.
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(run(&["completions", shell]));
        assert!(script.contains("deadletters") && script.contains("completions"), "{shell}");
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}

/// `[log] format = "json"`: every line the host writes on stderr is one JSON object with
/// timestamp, level, target and message, and a line logged while answering a request
/// carries the request's span and its id as `trace_id`. `RUST_LOG` overrides `[log] level`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_the_request_id_as_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Serve::start_opts(
        &data,
        None,
        &[("CORTEX_CFG__LOG__FORMAT", "json"), ("CORTEX_CFG__LOG__LEVEL", "error"), ("RUST_LOG", "info")],
    );
    let client = reqwest::Client::new();
    s.ready(&client).await;
    let r = client
        .get(format!("{}/v1/agents", s.base))
        .bearer_auth("not-a-token")
        .header("x-request-id", "json-log-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let stderr = format!("{}.stderr", data.display());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
            .collect();
        for l in &lines {
            for key in ["timestamp", "level", "target", "message"] {
                assert!(l[key].is_string(), "{key} missing in {l}");
            }
        }
        if let Some(l) = lines.iter().find(|l| l["message"] == "refused credentials") {
            break l.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no `refused credentials` line in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused["level"], "INFO", "RUST_LOG=info overrides [log] level = error: {refused}");
    assert_eq!(refused["trace_id"], "json-log-1", "{refused}");
    assert!(refused["fields"]["reason"].is_string(), "{refused}");
    let spans = refused["spans"].as_array().unwrap();
    assert_eq!(spans[0]["name"], "request", "{refused}");
    assert_eq!(spans[0]["path"], "/v1/agents", "{refused}");
    let ts = refused["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == "2026-01-01T00:00:00.000Z".len(), "{ts}");
}
