//! The `cortex` binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cortex_host::cli::units::{human_bytes, parse_duration, parse_size};
use cortex_host::runtime::{AgentContext, EngineConfig, Limits, Runtime};
use cortex_host::store::EmbeddedStore;

#[derive(Parser)]
#[command(name = "cortex", version, about = "A multi-tenant WebAssembly host for sandboxed agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load an agent component, invoke its `handle` once, print the output and its stats.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The component (.wasm) to run.
    agent: PathBuf,
    /// Input bytes: literal text, or @FILE to read a file.
    #[arg(long, default_value = "")]
    input: String,
    /// Fuel budget (roughly: wasm instructions).
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory limit, e.g. 64MiB.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Wall-clock limit, e.g. 500ms or 5s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Data directory: documents and the compiled-artifact cache.
    #[arg(long, env = "CORTEX_DATA", default_value = ".cortex")]
    data: PathBuf,
    /// Tenant the invocation runs as.
    #[arg(long, default_value = "local")]
    tenant: String,
    /// Agent configuration entries, KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Do not echo what the agent wrote to stdout, stderr and its log.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORTEX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error[internal]: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match cli.command {
        Command::Run(args) => rt.block_on(run(args)).unwrap_or_else(|e| {
            eprintln!("error[usage]: {e:#}");
            ExitCode::from(2)
        }),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let input = match args.input.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read input file {path}"))?,
        None => args.input.clone().into_bytes(),
    };
    let mut config = BTreeMap::new();
    for entry in &args.config {
        let (k, v) = entry.split_once('=').with_context(|| format!("--config {entry:?} is not KEY=VALUE"))?;
        config.insert(k.to_owned(), v.to_owned());
    }
    let bytes = std::fs::read(&args.agent).with_context(|| format!("cannot read {}", args.agent.display()))?;
    let mut limits = Limits::default();
    if let Some(f) = args.fuel {
        limits.fuel = f;
    }
    if let Some(m) = args.memory {
        limits.memory_bytes = m;
    }
    if let Some(t) = args.timeout {
        limits.timeout = t;
    }

    let runtime = Runtime::new(EngineConfig::default(), Some(&args.data.join("cache")))?;
    let store = EmbeddedStore::open(&args.data.join("store"))?;
    let module = match runtime.load(&bytes).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            return Ok(ExitCode::from(3));
        }
    };
    let agent_name = args.agent.file_stem().map_or_else(|| "agent".to_owned(), |s| s.to_string_lossy().into_owned());
    let agent = AgentContext {
        tenant: args.tenant.as_str().into(),
        agent: agent_name.into(),
        config: Arc::new(config),
        store: Arc::new(store),
    };
    let report = runtime.invoke(&module, &agent, &limits, &input).await;
    if !args.quiet {
        for line in String::from_utf8_lossy(&report.logs.stdout).lines() {
            eprintln!("[stdout] {line}");
        }
        for line in String::from_utf8_lossy(&report.logs.stderr).lines() {
            eprintln!("[stderr] {line}");
        }
        for r in &report.logs.records {
            let fields: Vec<String> = r.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("[log {:?}] {} {}", r.level, r.message, fields.join(" "));
        }
        if report.logs.truncated {
            eprintln!("[log] (truncated: the agent wrote more than {} bytes)", limits.log_bytes);
        }
    }
    let s = &report.stats;
    let stats = format!(
        "fuel={} peak_memory={} wall={:.3}ms host_calls={}",
        s.fuel_used,
        human_bytes(s.peak_memory),
        s.wall_time.as_secs_f64() * 1000.0,
        s.host_calls
    );
    if report.outcome.is_ok() {
        if let Some(out) = report.outcome.output() {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out)?;
            if !out.ends_with(b"\n") {
                stdout.write_all(b"\n")?;
            }
        }
        eprintln!("ok {stats}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error[{}]: {} ({stats})", report.outcome.code(), report.outcome);
        Ok(ExitCode::from(1))
    }
}
