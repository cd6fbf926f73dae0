//! The `cortex` binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cortex_host::api::auth::{Claims, Verifier};
use cortex_host::cli::units::{human_bytes, parse_duration, parse_size};
use cortex_host::config::ServerConfig;
use cortex_host::registry::now_ms;
use cortex_host::runtime::{AgentContext, EngineConfig, Limits, Runtime};
use cortex_host::store::EmbeddedStore;

#[derive(Parser)]
#[command(
    name = "cortex",
    version,
    about = "A multi-tenant WebAssembly host for sandboxed agents",
    after_help = "Your first agent:\n  \
    cortex serve --data .cortex                       # the API on 127.0.0.1:8080; prints how to mint a token\n  \
    cortex tenants create acme --token $(cortex token --data .cortex --role platform-admin)\n  \
    export CORTEX_TOKEN=$(cortex token --data .cortex --tenant acme --role developer)\n  \
    cortex new hello --lang rust                      # or python, ts, js, go, c\n  \
    cd hello && cortex deploy                         # build, upload, deploy (again: upgrade)\n  \
    cortex invoke hello --input @input.json           # add --json for outcome, fuel, duration\n  \
    cortex dev                                        # rebuild and upgrade on every save, logs live\n  \
    cortex logs hello --follow\n\n\
Client commands read CORTEX_URL and CORTEX_TOKEN. Exit codes: 0 ok, 1 the server refused or the agent failed, 2 usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load an agent component, invoke its `handle` once, print the output and its stats.
    Run(RunArgs),
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Mint a development token (HS256, from the data directory's secret).
    Token(TokenArgs),
    /// Make a new agent project from a template shipped in this binary.
    New(NewArgs),
    /// Build the agent project in this folder (or the nearest above it with a cortex.toml);
    /// prints the component's path.
    Build(BuildArgs),
    /// Push a component to an OCI registry; prints REF@sha256:<digest>.
    Push(cortex_host::cli::push::PushArgs),
    /// Talk to a running server (CORTEX_URL, CORTEX_TOKEN).
    #[command(flatten)]
    Client(cortex_host::cli::client::ClientCommand),
    /// Print a shell completion script for `cortex` (e.g. `cortex completions bash >
    /// /etc/bash_completion.d/cortex`, or `source <(cortex completions zsh)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal: compile one component (stdin) into an artifact (stdout) under the limits
    /// the parent host set; run by the host itself, in a child process.
    #[command(name = "__compile", hide = true)]
    Compile,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the config).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (overrides the config).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Deploy NAME=PATH.wasm into the `demo` tenant at start (repeatable).
    #[arg(long = "deploy", value_name = "NAME=PATH")]
    deploy: Vec<String>,
}

#[derive(clap::Args)]
struct NewArgs {
    /// The agent's name (also the folder's, unless --dir).
    name: String,
    /// rust, python, ts, js, go or c.
    #[arg(long)]
    lang: String,
    /// Where to make the project (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The project folder (default: the current one).
    #[arg(long, default_value = ".")]
    path: PathBuf,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Tenant the token acts in (omit for a platform-admin without a tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// observer, developer, tenant-admin or platform-admin.
    #[arg(long, default_value = "developer")]
    role: String,
    /// Subject.
    #[arg(long, default_value = "dev")]
    sub: String,
    /// Lifetime, e.g. 3600s or 60m.
    #[arg(long, value_parser = parse_duration, default_value = "60m")]
    ttl: Duration,
    /// TOML configuration file (for the data dir, issuer and audience).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides the config).
    #[arg(long)]
    data: Option<PathBuf>,
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
    /// Longest the compilation may take, e.g. 30s (default 120s).
    #[arg(long, value_parser = parse_duration)]
    compile_timeout: Option<Duration>,
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
    let cli = Cli::parse();
    // `serve` logs as its `[log]` says (a config that does not load is reported by `serve`
    // itself); every other command as the defaults say.
    let log = match &cli.command {
        Command::Serve(args) => {
            ServerConfig::load(args.config.as_deref(), std::env::vars()).map(|c| c.log).unwrap_or_default()
        }
        _ => cortex_host::config::LogConfig::default(),
    };
    cortex_host::telemetry::logging::init(&log);
    if let Command::Compile = cli.command {
        // No async runtime, no threads of ours: the child only compiles.
        return cortex_host::runtime::child_main();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error[internal]: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = match cli.command {
        Command::Run(args) => rt.block_on(run(args)),
        Command::Serve(args) => rt.block_on(serve(args)),
        Command::Token(args) => token(args),
        Command::New(args) => new_project(args),
        Command::Build(args) => build(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "cortex", &mut script);
            // A closed pipe (`| head`) is not an error.
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        // A client command that fails at run time (the server refused, or cannot be
        // reached) exits 1; 2 is for usage errors (clap's own, and the other commands').
        Command::Push(args) => return exit_1_on_error(rt.block_on(args.run())),
        Command::Client(cmd) => return exit_1_on_error(rt.block_on(cmd.run())),
        Command::Compile => Ok(cortex_host::runtime::child_main()),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

fn new_project(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    match cortex_host::cli::new::create(&dir, &args.lang, &args.name) {
        Ok(files) => {
            println!(
                "Created {} ({}) in {}:",
                args.name,
                cortex_host::cli::new::canonical_lang(&args.lang),
                dir.display()
            );
            for f in files {
                println!("  {}", f.display());
            }
            println!(
                "Next: cd {} && cortex deploy   (builds, uploads and deploys it; `cortex dev` redeploys on every save)",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    use cortex_host::cli::project::Project;
    let built = Project::find(&args.path).and_then(|p| {
        eprintln!("building {} ({}): {}", p.manifest.agent.name, p.manifest.agent.lang, p.manifest.build.command);
        p.build()
    });
    match built {
        Ok(out) => {
            println!("{}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// A client command's (or a push's) exit: a failure at run time (the server or registry
/// refused, or cannot be reached) exits 1; 2 is for usage errors.
fn exit_1_on_error(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}

fn server_config(file: Option<&std::path::Path>, data: Option<PathBuf>) -> anyhow::Result<ServerConfig> {
    let mut cfg = ServerConfig::load(file, std::env::vars())?;
    if let Some(d) = data {
        cfg.data_dir = d;
    }
    Ok(cfg)
}

fn mint(cfg: &ServerConfig, tenant: Option<String>, role: &str, sub: &str, ttl: Duration) -> anyhow::Result<String> {
    let verifier = Verifier::new(&cfg.auth, &cfg.data_dir)?;
    let now = now_ms() / 1000;
    let claims = Claims {
        sub: sub.to_owned(),
        iss: cfg.auth.issuer.clone(),
        aud: cfg.auth.audience.clone(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        tenant,
        role: role.to_owned(),
    };
    Ok(verifier.mint(&claims)?)
}

fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let cfg = server_config(args.config.as_deref(), args.data)?;
    if cortex_host::api::Role::parse(&args.role).is_none() {
        anyhow::bail!("unknown role {:?}: observer, developer, tenant-admin or platform-admin", args.role);
    }
    // A token signed with a secret no server uses would be refused by every call: mint
    // only with the secret a server made (or was given), never a new one.
    if cfg.auth.algorithm == "HS256" {
        let path = cfg.auth.secret_file.clone().unwrap_or_else(|| cfg.data_dir.join("jwt-hs256.secret"));
        if !path.is_file() {
            eprintln!(
                "error[no_secret]: no signing secret at {} (the data dir {} has none): start `cortex serve --data {}` \
                 once (it creates one), or point --data or --config at the server's",
                path.display(),
                cfg.data_dir.display(),
                cfg.data_dir.display(),
            );
            return Ok(ExitCode::from(1));
        }
    }
    println!("{}", mint(&cfg, args.tenant, &args.role, &args.sub, args.ttl)?);
    Ok(ExitCode::SUCCESS)
}

/// Where this server's tokens come from, and how to mint one.
fn token_hint(cfg: &ServerConfig) -> String {
    if cfg.auth.algorithm == "HS256" {
        let path = cfg.auth.secret_file.clone().unwrap_or_else(|| cfg.data_dir.join("jwt-hs256.secret"));
        format!(
            "Tokens are signed with the HS256 secret in {}; mint one with: cortex token --data {} --tenant TENANT --role developer",
            path.display(),
            cfg.data_dir.display()
        )
    } else {
        format!(
            "Tokens are {} JWTs from your issuer {:?} (audience {:?})",
            cfg.auth.algorithm, cfg.auth.issuer, cfg.auth.audience
        )
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = server_config(args.config.as_deref(), args.data)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    let listen = cfg.listen;
    let state = cortex_host::server::build(cfg.clone()).await?;
    let listener = cortex_host::server::bind(listen).await?;
    let addr = listener.local_addr()?;
    if !args.deploy.is_empty() {
        let bootstrap = async {
            let admin = mint(&cfg, None, "platform-admin", "bootstrap", Duration::from_secs(300))?;
            let token = mint(&cfg, Some("demo".into()), "developer", "demo", Duration::from_secs(24 * 3600))?;
            anyhow::Ok((admin, token))
        };
        let (admin, token) = bootstrap.await?;
        let app = cortex_host::server::app(state.clone());
        let names = cortex_host::cli::client::bootstrap_demo(app, &admin, &args.deploy).await?;
        println!("Cortex is serving on http://{addr} with the demo tenant's agents: {}", names.join(", "));
        println!("export CORTEX_URL=http://{addr} CORTEX_TOKEN={token}");
        for n in &names {
            println!(
                "curl -s -X POST -H \"Authorization: Bearer $CORTEX_TOKEN\" --data 'Cortex' $CORTEX_URL/v1/agents/{n}/invoke; echo"
            );
        }
    } else {
        // One write: whoever reads the first line gets the second with it.
        println!("Cortex is serving on http://{addr}\n{}", token_hint(&cfg));
    }
    cortex_host::server::serve(state, listener, cortex_host::server::shutdown_signal()).await?;
    // Export the spans still queued (waits on the exporter: off the async workers).
    let _ = tokio::task::spawn_blocking(cortex_host::telemetry::otel::shutdown).await;
    Ok(ExitCode::SUCCESS)
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

    cortex_host::fsutil::prepare_data_dir(&args.data)
        .with_context(|| format!("cannot prepare the data directory {}", args.data.display()))?;
    let mut engine = EngineConfig::default();
    if let Some(t) = args.compile_timeout {
        engine.compile_timeout = t;
    }
    let runtime = Runtime::new(engine, Some(&args.data.join("cache")))?;
    let store = EmbeddedStore::open(&args.data.join("store"))?;
    let module = match runtime.load(&bytes).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            return Ok(ExitCode::from(3));
        }
    };
    let agent_name = args.agent.file_stem().map_or_else(|| "agent".to_owned(), |s| s.to_string_lossy().into_owned());
    let agent = AgentContext::new(&args.tenant, &agent_name, config, Arc::new(store));
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
