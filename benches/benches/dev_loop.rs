//! `cortex dev` save-to-running for a Rust agent (issue 13: under 3 s here), against the
//! bare `cargo build` of the same change measured in the same run.
//!
//! A Rust agent project (the `hello` plugin's code on `guest-sdk`, release profile of the
//! plugins) is made in a temp folder, built once (cold, not measured) and copied. Then, per
//! round: baseline: one edit of the copy's `src/lib.rs` (a new greeting) and `cargo build`
//! alone; dev: the
//! same kind of edit while `cortex dev` watches the project (in-process, against a server in
//! this process), timed from the save until an invocation of the agent answers the new
//! greeting (build + upload + compile + upgrade + the watcher's poll). Prints the medians
//! and their ratio (`== ratios`).
//!
//! Run: `cargo bench -p cortex-benches --bench dev_loop [-- ROUNDS]` (5 by default). Needs
//! the wasm32-wasip2 target and the plugins' crates in the cargo cache (offline build).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/served.rs"]
mod served;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use cortex_host::cli::dev::DevArgs;
use cortex_host::config::ServerConfig;

#[derive(Parser)]
struct Dev {
    #[command(flatten)]
    dev: DevArgs,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

const BUILD: &str = "CARGO_TARGET_DIR=target cargo build --offline --quiet --release --target wasm32-wasip2";

/// The agent's source, greeting with `word`.
fn source(word: &str) -> String {
    let hello = std::fs::read_to_string(repo().join("plugins/hello/src/lib.rs")).unwrap();
    assert!(hello.contains("\"Hello, {name}!\""), "plugins/hello changed its greeting");
    hello.replace("\"Hello, {name}!\"", &format!("\"{word}, {{name}}!\""))
}

fn make_project(dir: &Path) {
    let repo = repo();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let profile = "[profile.release]\nopt-level = 2\nlto = true\ncodegen-units = 1\nstrip = true\npanic = \"abort\"\n";
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"devbench\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\ncortex-agent = {{ path = {:?} }}\n\n[workspace]\n\n{profile}",
            repo.join("guest-sdk").display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(repo.join("plugins/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), source("Hello")).unwrap();
    std::fs::write(
        dir.join("cortex.toml"),
        format!(
            "[agent]\nname = \"devbench\"\nlang = \"rust\"\n\n[build]\ncommand = {BUILD:?}\n\
             output = \"target/wasm32-wasip2/release/devbench.wasm\"\nwatch = [\"src\", \"Cargo.toml\"]\n"
        ),
    )
    .unwrap();
}

fn cargo_build(dir: &Path) -> Duration {
    let t = Instant::now();
    let ok = Command::new("sh").arg("-c").arg(BUILD).current_dir(dir).env_remove("CARGO_TARGET_DIR").status().unwrap();
    assert!(ok.success(), "the project does not build");
    t.elapsed()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn answer(http: &reqwest::Client, base: &str, token: &str) -> Option<String> {
    let r = http.post(format!("{base}/v1/agents/devbench/invoke")).bearer_auth(token).body("x").send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

fn main() {
    let rounds: usize =
        std::env::args().skip(1).find(|a| !a.starts_with("--")).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("devbench");
    make_project(&project);
    println!("== dev_loop: a Rust agent, {rounds} rounds; building it once (cold, not measured)");
    cargo_build(&project);

    // The baseline builds a copy (its target folder included, so warm too), interleaved
    // with the dev rounds: both see the same machine load.
    let copy = dir.path().join("baseline");
    let ok = Command::new("cp").arg("-a").arg(&project).arg(&copy).status().unwrap();
    assert!(ok.success());
    let mut baseline = Vec::new();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dev_times = rt.block_on(async {
        let data = dir.path().join("data");
        let served = served::serve(ServerConfig { data_dir: data, ..ServerConfig::default() }, &[]).await;
        let base = format!("http://{}", served.addr);
        let token = served.developer.clone();
        let args =
            Dev::try_parse_from(["dev", "--project", project.to_str().unwrap(), "--url", &base, "--token", &token])
                .unwrap();
        let dev = tokio::spawn(args.dev.run());
        let http = reqwest::Client::new();
        let wait_for = |want: String| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(300);
                loop {
                    if answer(&http, &base, &token).await.as_deref() == Some(want.as_str()) {
                        return;
                    }
                    assert!(Instant::now() < deadline, "the agent never answered {want:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // The first deploy.
        wait_for("Hello, x!".to_owned()).await;
        let mut times = Vec::new();
        for i in 0..rounds {
            std::fs::write(copy.join("src/lib.rs"), source(&format!("Base{i}"))).unwrap();
            let c = copy.clone();
            baseline.push(tokio::task::spawn_blocking(move || cargo_build(&c)).await.unwrap());
            // Past the watcher's debounce of the previous round.
            tokio::time::sleep(Duration::from_millis(600)).await;
            let t = Instant::now();
            std::fs::write(project.join("src/lib.rs"), source(&format!("Dev{i}"))).unwrap();
            wait_for(format!("Dev{i}, x!")).await;
            times.push(t.elapsed());
        }
        dev.abort();
        times
    });
    let mut dev_times = dev_times;
    let (b, d) = (median(&mut baseline), median(&mut dev_times));
    println!("cargo build of one edit (median):        {:>7.2} s   {baseline:?}", b.as_secs_f64());
    println!("cortex dev save-to-running (median):     {:>7.2} s   {dev_times:?}", d.as_secs_f64());
    println!("== ratios");
    println!("save-to-running / cargo build: {:.2} (goal: save-to-running < 3 s)", d.as_secs_f64() / b.as_secs_f64());
}
