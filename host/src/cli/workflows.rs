//! `cortex workflows ...` (definitions) and `cortex runs ...` (runs, with a live `--watch`
//! view that prints each transition and exits 0 once the run succeeded, 1 once it ended
//! otherwise or needs attention).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Conn, Payload, refusal};

/// `cortex workflows ...`
#[derive(Debug, Args)]
pub struct WorkflowsArgs {
    #[command(subcommand)]
    cmd: WorkflowCmd,
    #[command(flatten)]
    conn: Conn,
}

/// What to do with workflow definitions.
#[derive(Debug, Subcommand)]
pub enum WorkflowCmd {
    /// List the workflows (latest version of each).
    List,
    /// Show a workflow (latest version, or --version).
    Get {
        /// Workflow name.
        name: String,
        /// A version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Store a new version from a JSON file (validated by the server).
    Put {
        /// Workflow name.
        name: String,
        /// The definition: a JSON file, or - for stdin.
        #[arg(long, short)]
        file: String,
    },
    /// Delete every version (runs go on).
    Delete {
        /// Workflow name.
        name: String,
    },
}

/// `cortex runs ...`
#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    cmd: RunCmd,
    #[command(flatten)]
    conn: Conn,
}

/// What to do with runs.
#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Start a run.
    Start {
        /// Workflow name.
        workflow: String,
        /// The input: JSON text, @FILE, or @- for stdin.
        #[arg(long, default_value = "null")]
        input: String,
        /// Starting again with the same key gives the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// List a workflow's runs, newest first.
    List {
        /// Workflow name.
        workflow: String,
        /// Only runs in this state (pending, running, succeeded, failed, compensating,
        /// compensated, cancelled, needs_attention).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show a run and its steps.
    Get {
        /// Workflow name.
        workflow: String,
        /// Run id.
        id: String,
        /// Follow the run until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Cancel a run.
    Cancel {
        /// Workflow name.
        workflow: String,
        /// Run id.
        id: String,
    },
    /// Resolve a run in needs_attention: retry or skip its stuck step.
    Resolve {
        /// Workflow name.
        workflow: String,
        /// Run id.
        id: String,
        /// The step.
        #[arg(long)]
        step: String,
        /// `retry` or `skip`.
        #[arg(long)]
        action: String,
        /// For `skip`: the step's output (JSON).
        #[arg(long)]
        output: Option<String>,
    },
}

fn read_input(input: &str) -> anyhow::Result<Vec<u8>> {
    Ok(match input.strip_prefix('@') {
        Some("-") => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("cannot read stdin")?;
            b
        }
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {p}"))?,
        None => input.as_bytes().to_vec(),
    })
}

const RUN_COLUMNS: &[&str] = &["id", "state", "version", "created_ms", "finished_ms", "error"];

impl WorkflowsArgs {
    /// Run the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        use reqwest::Method as M;
        let WorkflowsArgs { cmd, conn } = self;
        match cmd {
            WorkflowCmd::List => {
                conn.call(M::GET, "/v1/workflows", Payload::None, &["name", "version", "created_ms"]).await
            }
            WorkflowCmd::Get { name, version } => {
                let q = version.map_or(String::new(), |v| format!("?version={v}"));
                conn.call(M::GET, &format!("/v1/workflows/{name}{q}"), Payload::None, &[]).await
            }
            WorkflowCmd::Put { name, file } => {
                let bytes = read_input(&if file == "-" { "@-".to_owned() } else { format!("@{file}") })?;
                let def: Value = serde_json::from_slice(&bytes).context("the definition is not JSON")?;
                conn.call(M::PUT, &format!("/v1/workflows/{name}"), Payload::Json(def), &["name", "version"]).await
            }
            WorkflowCmd::Delete { name } => {
                conn.call(M::DELETE, &format!("/v1/workflows/{name}"), Payload::None, &[]).await
            }
        }
    }
}

impl RunsArgs {
    /// Run the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        use reqwest::Method as M;
        let RunsArgs { cmd, conn } = self;
        match cmd {
            RunCmd::Start { workflow, input, idempotency_key, watch } => {
                let input: Value = serde_json::from_slice(&read_input(&input)?).context("the input is not JSON")?;
                let mut body = json!({ "input": input });
                if let Some(k) = idempotency_key {
                    body["idempotency_key"] = Value::String(k);
                }
                let path = format!("/v1/workflows/{workflow}/runs");
                if !watch {
                    return conn.call(M::POST, &path, Payload::Json(body), RUN_COLUMNS).await;
                }
                let resp = conn.send(M::POST, &path, Payload::Json(body)).await?;
                let status = resp.status();
                let text = resp.text().await?;
                if !status.is_success() {
                    return Err(refusal(status, &text));
                }
                let run: Value = serde_json::from_str(&text)?;
                let id = run["id"].as_str().unwrap_or_default().to_owned();
                println!("run {id} started");
                watch_run(&conn, &workflow, &id).await
            }
            RunCmd::List { workflow, state, limit } => {
                let mut q = format!("?limit={limit}");
                if let Some(s) = state {
                    q.push_str(&format!("&state={s}"));
                }
                conn.call(M::GET, &format!("/v1/workflows/{workflow}/runs{q}"), Payload::None, RUN_COLUMNS).await
            }
            RunCmd::Get { workflow, id, watch } => {
                if watch {
                    return watch_run(&conn, &workflow, &id).await;
                }
                let path = format!("/v1/workflows/{workflow}/runs/{id}");
                if conn.json {
                    return conn.call(M::GET, &path, Payload::None, &[]).await;
                }
                let run = get_run(&conn, &workflow, &id).await?;
                print_run(&run);
                Ok(ExitCode::SUCCESS)
            }
            RunCmd::Cancel { workflow, id } => {
                conn.call(M::POST, &format!("/v1/workflows/{workflow}/runs/{id}/cancel"), Payload::None, RUN_COLUMNS)
                    .await
            }
            RunCmd::Resolve { workflow, id, step, action, output } => {
                let mut body = json!({ "step": step, "action": action });
                if let Some(o) = output {
                    body["output"] = serde_json::from_str(&o).context("--output is not JSON")?;
                }
                let path = format!("/v1/workflows/{workflow}/runs/{id}/resolve");
                conn.call(M::POST, &path, Payload::Json(body), RUN_COLUMNS).await
            }
        }
    }
}

async fn get_run(conn: &Conn, workflow: &str, id: &str) -> anyhow::Result<Value> {
    let resp = conn.send(reqwest::Method::GET, &format!("/v1/workflows/{workflow}/runs/{id}"), Payload::None).await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        return Err(refusal(status, &text));
    }
    Ok(serde_json::from_str(&text)?)
}

fn print_run(run: &Value) {
    println!(
        "run {}  workflow {} v{}  {}",
        run["id"].as_str().unwrap_or(""),
        run["workflow"].as_str().unwrap_or(""),
        run["version"],
        run["state"].as_str().unwrap_or("")
    );
    if let Some(e) = run["error"].as_str() {
        println!("error: {e}");
    }
    super::client::print_table(
        &run["steps"],
        &["id", "state", "attempts", "calls", "outcome", "started_ms", "finished_ms"],
    );
    if let Some(o) = run.get("output").filter(|o| !o.is_null()) {
        println!("output: {o}");
    }
}

/// Print each transition of the run (its state, each step's state and attempts) until it
/// ends or needs attention.
async fn watch_run(conn: &Conn, workflow: &str, id: &str) -> anyhow::Result<ExitCode> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut state = String::new();
    loop {
        let run = get_run(conn, workflow, id).await?;
        for s in run["steps"].as_array().into_iter().flatten() {
            let sid = s["id"].as_str().unwrap_or_default().to_owned();
            let now = format!("{} (attempts {})", s["state"].as_str().unwrap_or(""), s["attempts"]);
            if seen.get(&sid) != Some(&now) {
                let outcome = s["outcome"].as_str().map_or(String::new(), |o| format!(" [{o}]"));
                println!("  step {sid}: {now}{outcome}");
                seen.insert(sid, now);
            }
        }
        let current = run["state"].as_str().unwrap_or_default().to_owned();
        if current != state {
            println!("run {id}: {current}");
            state = current;
        }
        match state.as_str() {
            "succeeded" => {
                println!("output: {}", run["output"]);
                return Ok(ExitCode::SUCCESS);
            }
            "failed" | "compensated" | "cancelled" | "needs_attention" => {
                if let Some(e) = run["error"].as_str() {
                    println!("error: {e}");
                }
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
