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
