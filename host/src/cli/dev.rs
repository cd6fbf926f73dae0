//! `cortex dev`: in a project folder, build and deploy (as `cortex deploy` does), then watch
//! the project's files, and on every save rebuild and upgrade the agent, printing its log
//! lines as they come (stdout) and what it does (stderr). Ctrl-C (or SIGTERM) ends it; the
//! agent stays deployed.
//!
//! Files are watched by polling their modification times and sizes (every `--poll`, 200 ms
//! by default): no platform watcher, no dependency, the same behaviour on every file system
//! (network and container mounts included), and a scan of a source folder costs well under
//! a millisecond. A change is acted on once a scan sees nothing new (debounce: an editor's
//! several writes make one rebuild).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::client::{Conn, Payload};
use super::deploy::{self, Applied, DeployArgs, Desired, Source};
use super::project::Project;
use super::units::parse_duration;

/// `cortex dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// How often the files are checked for changes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub poll: Duration,
    /// Deploy flags over the manifest's `[deploy]` (the module comes from the build).
    #[command(flatten)]
    pub deploy: DeployArgs,
}

/// Folders never watched (build products, dependencies, version control).
const SKIPPED: &[&str] = &["target", "node_modules", ".git", ".cortex", "__pycache__", "build", "dist", "out"];

/// Modification time and size of every watched file.
type Snapshot = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

/// What `cortex dev` watches in `project`: the manifest's `[build] watch` list, else the
/// whole folder but [`SKIPPED`] folders and the build's output.
pub fn snapshot(project: &Project) -> Snapshot {
    let mut snap = Snapshot::new();
    let output = project.output();
    let roots: Vec<PathBuf> = if project.manifest.build.watch.is_empty() {
        vec![project.root.clone()]
    } else {
        project.manifest.build.watch.iter().map(|w| project.root.join(w)).collect()
    };
    for r in roots {
        walk(&r, &output, &mut snap, 0);
    }
    snap
}

fn walk(path: &Path, output: &Path, snap: &mut Snapshot, depth: usize) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.is_dir() {
        let skipped = depth > 0 && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| SKIPPED.contains(&n));
        if skipped || depth > 32 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(path) else { return };
        for e in entries.flatten() {
            walk(&e.path(), output, snap, depth + 1);
        }
    } else if path != output {
        snap.insert(path.to_path_buf(), (meta.modified().ok(), meta.len()));
    }
}

impl DevArgs {
    /// Run until Ctrl-C or SIGTERM.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let project = match Project::find(&self.deploy.project) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        let section = deploy::section_of(&project)?;
        let name = self.deploy.name.clone().unwrap_or_else(|| project.manifest.agent.name.clone());
        let mut desired = deploy::desired_from(name, Source::File(project.output()), section)?;
        self.deploy.override_onto(&mut desired)?;
        let stop = stop_signal();
        tokio::pin!(stop);
        let conn = &self.deploy.conn;
        let mut since = last_log_seq(conn, &desired.name).await;
        let mut seen = snapshot(&project);
        let mut running = cycle(&project, conn, &desired, Instant::now()).await;
        eprintln!("watching {} for changes (Ctrl-C to stop)", project.root.display());
        let mut changed_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(self.poll) => {}
            }
            if running {
                since = print_logs(conn, &desired.name, since).await;
            }
            let now = snapshot(&project);
            if now != seen {
                // Wait for one quiet scan before acting.
                seen = now;
                changed_at.get_or_insert_with(Instant::now);
                continue;
            }
            if let Some(at) = changed_at.take() {
                // `seen` stays what was built: a save during the build makes the next cycle
                // (and so does a build that rewrites a watched file, once: its next build
                // leaves it as it is).
                running = cycle(&project, conn, &desired, at).await || running;
            }
        }
        eprintln!("stopped watching; {} stays deployed", desired.name);
        Ok(ExitCode::SUCCESS)
    }
}

/// Build and apply, saying how long from the save (`since`) to the agent running it; whether
/// the agent runs.
async fn cycle(project: &Project, conn: &Conn, desired: &Desired, since: Instant) -> bool {
    let p = project.clone();
    let built = tokio::task::spawn_blocking(move || deploy::build(&p)).await;
    match built {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e:#} (fix it and save again)");
            return false;
        }
        Err(e) => {
            eprintln!("error: the build task failed: {e}");
            return false;
        }
    }
    match deploy::apply(conn, desired).await {
        Ok((_, done)) => {
            let what = match done {
                Applied::Unchanged => "unchanged",
                _ => "running",
            };
            eprintln!("{} {what} {:.1} s after the save", desired.name, since.elapsed().as_secs_f64());
            true
        }
        Err(e) => {
            eprintln!("error: {e:#} (fix it and save again)");
            false
        }
    }
}

/// The sequence number of the agent's last log line (0 if none or no agent): older lines
/// are not printed again.
async fn last_log_seq(conn: &Conn, name: &str) -> u64 {
    let lines = logs(conn, name, 0, 1000).await.unwrap_or_default();
    lines.iter().filter_map(|l| l["seq"].as_u64()).max().unwrap_or(0)
}

async fn logs(conn: &Conn, name: &str, since: u64, limit: usize) -> Option<Vec<Value>> {
    let path = format!("/v1/agents/{name}/logs?since={since}&limit={limit}");
    let resp = conn.send(Method::GET, &path, Payload::None).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json::<Vec<Value>>().await.ok()
}

/// Print the lines after `since`; the new `since`.
async fn print_logs(conn: &Conn, name: &str, mut since: u64) -> u64 {
    for l in logs(conn, name, since, 1000).await.unwrap_or_default() {
        let level = l["level"].as_str().map(|v| format!(" {v}")).unwrap_or_default();
        println!("[{name} {}{level}] {}", l["stream"].as_str().unwrap_or("log"), l["message"].as_str().unwrap_or(""));
        since = since.max(l["seq"].as_u64().unwrap_or(since));
    }
    since
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
