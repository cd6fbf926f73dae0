//! The `cortex` client commands: talk to a server at `CORTEX_URL` with `CORTEX_TOKEN`.
//! Tables for people by default, `--json` for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use axum::body::Body;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tower::ServiceExt;

#[path = "registries.rs"]
mod registries;
pub use registries::RegistryCmd;
/// `cortex backup` and `cortex restore`.
#[path = "backup.rs"]
pub mod backup;
#[path = "secrets.rs"]
mod secrets;
pub use secrets::SecretCmd;

/// Client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Tenants (platform-admin).
    Tenants {
        #[command(subcommand)]
        cmd: TenantCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Modules of your tenant.
    Modules {
        #[command(subcommand)]
        cmd: ModuleCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Agents of your tenant.
    Agents {
        #[command(subcommand)]
        cmd: AgentCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Invoke an agent; the output goes to stdout.
    Invoke {
        /// Agent name.
        name: String,
        /// Input: text, @FILE, or @- for stdin.
        #[arg(long, default_value = "")]
        input: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Read an agent's log (--follow to keep reading).
    Logs(super::logs::LogsArgs),
    /// Read the tenant's change feed (--follow to keep reading).
    Events(super::events::EventsArgs),
    /// An agent's dead letters: list, replay or discard them.
    Deadletters(super::deadletters::DeadLettersArgs),
    /// Workflow definitions of your tenant: list, get, put, delete.
    Workflows(super::workflows::WorkflowsArgs),
    /// Workflow runs: start, list, get, cancel, resolve (`--watch` follows one live).
    Runs(super::workflows::RunsArgs),
    /// Read the audit log.
    Audit {
        /// Events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        conn: Conn,
    },
    /// API keys of your tenant.
    Keys {
        #[command(subcommand)]
        cmd: KeyCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Resource profiles of your tenant (tenant-admins write them).
    Profiles {
        #[command(subcommand)]
        cmd: ProfileCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Upload (unless the server has it), wait for the compile, then deploy, upgrade or
    /// reconfigure the agent so that it is what the command says (run it again: nothing to do).
    Deploy(super::deploy::DeployArgs),
    /// In a project folder: build, deploy, then rebuild and upgrade on every save while
    /// printing the agent's log.
    Dev(super::dev::DevArgs),
    /// Your tenant's credentials for OCI registries (tenant-admins).
    Registries {
        #[command(subcommand)]
        cmd: RegistryCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Back up a running node's whole store to FILE (platform-admin), from one consistent
    /// snapshot, without stopping it.
    Backup {
        /// The file to write.
        #[arg(long, required_unless_present = "to_dir", conflicts_with = "to_dir")]
        to: Option<PathBuf>,
        /// Write `cortex-<UTC time>.bak` into this directory instead (e.g. from a CronJob).
        #[arg(long)]
        to_dir: Option<PathBuf>,
        /// With --to-dir: once the new backup is whole, delete all but the newest N
        /// `cortex-*.bak` files of the directory.
        #[arg(long, requires = "to_dir", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// Read the token from this file (e.g. a mounted Secret) instead of --token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Rebuild a data directory (an embedded backup, offline) or an ArangoDB database (an
    /// ArangoDB backup) from a backup; checks the file's checksum first.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to make (refused when it has anything in it, unless --force).
        #[arg(long, required_unless_present = "arango", conflicts_with = "arango")]
        data: Option<PathBuf>,
        /// Restore into this ArangoDB server instead (base URL, e.g. http://127.0.0.1:8529).
        #[arg(long)]
        arango: Option<String>,
        /// The ArangoDB database to restore into (created when missing).
        #[arg(long, default_value = "cortex")]
        database: String,
        /// The ArangoDB user.
        #[arg(long, default_value = "root")]
        username: String,
        /// A file holding the ArangoDB user's password.
        #[arg(long, requires = "arango")]
        password_file: Option<PathBuf>,
        /// Replace the store of a data directory that has one, or Cortex's collections of a
        /// database that holds documents.
        #[arg(long)]
        force: bool,
    },
    /// Your tenant's secrets (tenant-admins): values go in from stdin or a file, never
    /// come back.
    Secrets {
        #[command(subcommand)]
        cmd: SecretCmd,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where the server is and how to talk to it.
#[derive(Debug, Args)]
pub struct Conn {
    /// Server URL.
    #[arg(long, env = "CORTEX_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub(crate) url: String,
    /// Bearer token or API key.
    #[arg(long, env = "CORTEX_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Act within this tenant (platform-admins).
    #[arg(long, global = true)]
    pub(crate) tenant: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// `cortex tenants ...`
#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// List tenants.
    List,
    /// Create a tenant.
    Create {
        /// Name.
        name: String,
    },
    /// Show a tenant.
    Get {
        /// Name.
        name: String,
    },
    /// Delete a tenant and everything it owns.
    Delete {
        /// Name.
        name: String,
    },
    /// Change the quotas named, keep the others.
    Update {
        /// Name.
        name: String,
        /// KEY=VALUE, e.g. agents=20, stored_bytes=1GiB, max_timeout_ms=30s (repeatable).
        #[arg(long = "quota", value_name = "KEY=VALUE")]
        quota: Vec<String>,
    },
}

/// `cortex modules ...`
#[derive(Debug, Subcommand)]
pub enum ModuleCmd {
    /// List modules.
    List,
    /// Upload a .wasm component.
    Upload {
        /// Path.
        path: std::path::PathBuf,
        /// Name it (refer to it as NAME:TAG).
        #[arg(long)]
        name: Option<String>,
        /// Tag it (default `latest`; moved from the module that had it).
        #[arg(long, requires = "name")]
        tag: Option<String>,
        /// Answer at once, while a large module still compiles on the server (by default
        /// the command waits until it is ready, with progress on stderr).
        #[arg(long)]
        no_wait: bool,
    },
    /// Show a module.
    Get {
        /// Digest, unique digest prefix, or NAME:TAG.
        digest: String,
    },
    /// Delete a module.
    Delete {
        /// Digest, unique digest prefix, or NAME:TAG.
        digest: String,
    },
    /// Download a module's component as uploaded (to stdout unless -o).
    Download {
        /// Digest, unique digest prefix, or NAME:TAG.
        reference: String,
        /// Write it to this file.
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
}

/// `cortex agents ...`
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// List agents.
    List,
    /// Deploy an agent.
    Deploy {
        /// Name.
        name: String,
        /// Module digest.
        #[arg(long)]
        module: String,
        /// KEY=VALUE configuration (repeatable).
        #[arg(long = "config")]
        config: Vec<String>,
        /// Invocations running at once (default: the profile's, else 16).
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// Watch COLLECTION or COLLECTION/KEY-PREFIX of the change feed (repeatable).
        #[arg(long = "watch", value_name = "COLLECTION[/PREFIX]")]
        watch: Vec<String>,
        /// Receive the messages published to TOPIC (repeatable).
        #[arg(long = "subscribe", value_name = "TOPIC")]
        subscribe: Vec<String>,
        /// Take the limits and concurrency not given here from this resource profile.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Show an agent.
    Get {
        /// Name.
        name: String,
    },
    /// Replace an agent's configuration (runs init).
    Config {
        /// Name.
        name: String,
        /// KEY=VALUE (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Run another module.
    Upgrade {
        /// Name.
        name: String,
        /// Module digest.
        #[arg(long)]
        module: String,
        /// On probation for this long (e.g. `10m`): if more than `--probation-ratio` of its
        /// invocations fail meanwhile, the host rolls back by itself.
        #[arg(long, value_parser = super::units::parse_duration)]
        probation: Option<std::time::Duration>,
        /// Share of failures that fails the probation.
        #[arg(long, default_value_t = 0.5, requires = "probation")]
        probation_ratio: f64,
        /// Invocations the probation needs before it judges.
        #[arg(long, default_value_t = 5, requires = "probation")]
        probation_min: u32,
    },
    /// Go back to the previous module.
    Rollback {
        /// Name.
        name: String,
    },
    /// Stop taking invocations.
    Stop {
        /// Name.
        name: String,
    },
    /// Take invocations again.
    Start {
        /// Name.
        name: String,
    },
    /// Delete an agent.
    Delete {
        /// Name.
        name: String,
    },
}

/// `cortex keys ...`
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// List keys.
    List,
    /// Create a key (shown once).
    Create {
        /// Role of the key.
        #[arg(long, default_value = "developer")]
        role: String,
        /// A label.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke a key.
    Revoke {
        /// Key id.
        id: String,
    },
}

/// `cortex profiles ...`
#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// List profiles.
    List,
    /// Show a profile.
    Get {
        /// Name.
        name: String,
    },
    /// Create or replace a profile (the values left out are not set by it).
    Put {
        /// Name.
        name: String,
        /// Fuel per invocation.
        #[arg(long)]
        fuel: Option<u64>,
        /// Memory, e.g. 64MiB.
        #[arg(long, value_parser = super::units::parse_size)]
        memory: Option<u64>,
        /// Wall-clock limit, e.g. 500ms or 5s.
        #[arg(long, value_parser = super::units::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Invocations running at once.
        #[arg(long)]
        max_concurrency: Option<u32>,
    },
    /// Delete a profile no agent was deployed with.
    Delete {
        /// Name.
        name: String,
    },
}

pub(crate) fn kv(entries: &[String]) -> anyhow::Result<Value> {
    let mut map = serde_json::Map::new();
    for e in entries {
        let (k, v) = e.split_once('=').with_context(|| format!("{e:?} is not KEY=VALUE"))?;
        map.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(Value::Object(map))
}

pub(crate) enum Payload {
    /// No body.
    None,
    /// A JSON body.
    Json(Value),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl Conn {
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Payload,
    ) -> anyhow::Result<reqwest::Response> {
        let client = reqwest::Client::new();
        let mut req = client.request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(t) = &self.tenant {
            req = req.header(crate::api::TENANT_HEADER, t);
        }
        req = match body {
            Payload::None => req,
            Payload::Json(v) => req.json(&v),
            Payload::Bytes(b) => req.body(b),
        };
        req.send().await.with_context(|| format!("cannot reach {}", self.url))
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Payload,
        columns: &[&str],
    ) -> anyhow::Result<ExitCode> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(refusal(status, &text));
        }
        if text.is_empty() {
            println!("ok");
            return Ok(ExitCode::SUCCESS);
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if self.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_table(&v, columns);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The bytes of the module `reference` names (digest, unique digest prefix, `name:tag` or
/// `name`), as uploaded: `GET /v1/modules/{ref}/wasm`.
pub(crate) async fn module_bytes(conn: &Conn, reference: &str) -> anyhow::Result<Vec<u8>> {
    if reference.is_empty() || reference.contains(['/', '?', '#', '%']) {
        bail!("{reference:?} is not a module reference (a digest, a digest prefix, NAME:TAG or NAME)");
    }
    let resp = conn.send(reqwest::Method::GET, &format!("/v1/modules/{reference}/wasm"), Payload::None).await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(refusal(status, &text)).with_context(|| format!("cannot download module {reference}"));
    }
    Ok(resp.bytes().await.with_context(|| format!("cannot download module {reference}"))?.to_vec())
}

/// The error of a response the server refused: its status, code and detail.
pub(super) fn refusal(status: reqwest::StatusCode, text: &str) -> anyhow::Error {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| json!({"detail": text}));
    anyhow::anyhow!(
        "{} {}: {}",
        status.as_u16(),
        v["code"].as_str().unwrap_or("error"),
        v["detail"].as_str().unwrap_or("")
    )
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // An automatic rollback shows why.
        Value::Object(o) if o.contains_key("reason") => cell(&o["reason"]),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(super) fn print_table(v: &Value, columns: &[&str]) {
    let rows: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let cols: Vec<String> = if columns.is_empty() {
        rows.first().and_then(|r| r.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default()
    } else {
        columns.iter().map(|c| (*c).to_owned()).collect()
    };
    let table: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|c| cell(&r[c.as_str()])).collect()).collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| table.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
    for r in table {
        println!("{}", line(r));
    }
}

impl ClientCommand {
    /// Run the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        use reqwest::Method as M;
        match self {
            ClientCommand::Tenants { cmd, conn } => match cmd {
                TenantCmd::List => conn.call(M::GET, "/v1/tenants", Payload::None, &["name", "created_ms"]).await,
                TenantCmd::Create { name } => {
                    conn.call(M::POST, "/v1/tenants", Payload::Json(json!({"name": name})), &["name"]).await
                }
                TenantCmd::Get { name } => conn.call(M::GET, &format!("/v1/tenants/{name}"), Payload::None, &[]).await,
                TenantCmd::Delete { name } => {
                    conn.call(M::DELETE, &format!("/v1/tenants/{name}"), Payload::None, &[]).await
                }
                TenantCmd::Update { name, quota } => {
                    let body = Payload::Json(super::tenants::quota_patch(&quota)?);
                    conn.call(M::PATCH, &format!("/v1/tenants/{name}"), body, &[]).await
                }
            },
            ClientCommand::Modules { cmd, conn } => {
                let cols = ["digest", "size", "world", "status"];
                match cmd {
                    ModuleCmd::List => conn.call(M::GET, "/v1/modules", Payload::None, &cols).await,
                    ModuleCmd::Upload { path, name, tag, no_wait } => {
                        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                        let query = match (name, tag) {
                            (Some(n), Some(t)) => format!("?name={n}&tag={t}"),
                            (Some(n), None) => format!("?name={n}"),
                            _ => String::new(),
                        };
                        let path = format!("/v1/modules{query}");
                        if no_wait {
                            return conn.call(M::POST, &path, Payload::Bytes(bytes), &cols).await;
                        }
                        let rec = super::deploy::expect_ok(&conn, M::POST, &path, Payload::Bytes(bytes)).await?;
                        let rec = super::deploy::compiled(&conn, rec).await?;
                        if conn.json {
                            println!("{}", serde_json::to_string_pretty(&rec)?);
                        } else {
                            print_table(&rec, &cols);
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    ModuleCmd::Get { digest } => {
                        conn.call(M::GET, &format!("/v1/modules/{digest}"), Payload::None, &[]).await
                    }
                    ModuleCmd::Delete { digest } => {
                        conn.call(M::DELETE, &format!("/v1/modules/{digest}"), Payload::None, &[]).await
                    }
                    ModuleCmd::Download { reference, output } => {
                        let bytes = module_bytes(&conn, &reference).await?;
                        match output {
                            Some(path) => {
                                std::fs::write(&path, &bytes)
                                    .with_context(|| format!("cannot write {}", path.display()))?;
                                eprintln!("{} bytes written to {}", bytes.len(), path.display());
                            }
                            None => {
                                use std::io::{IsTerminal, Write};
                                let mut out = std::io::stdout().lock();
                                if out.is_terminal() {
                                    bail!("a component is binary: give -o FILE or redirect stdout");
                                }
                                out.write_all(&bytes).and_then(|()| out.flush()).context("cannot write to stdout")?;
                            }
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                }
            }
            ClientCommand::Agents { cmd, conn } => {
                let cols = ["name", "status", "health", "circuit", "module", "invocations", "failures", "rolled_back"];
                let path = |n: &str, rest: &str| format!("/v1/agents/{n}{rest}");
                match cmd {
                    AgentCmd::List => conn.call(M::GET, "/v1/agents", Payload::None, &cols).await,
                    AgentCmd::Deploy { name, module, config, max_concurrency, watch, subscribe, profile } => {
                        let watches: Vec<_> = watch
                            .iter()
                            .map(|w| match w.split_once('/') {
                                Some((c, p)) => json!({"collection": c, "prefix": p}),
                                None => json!({"collection": w}),
                            })
                            .collect();
                        let body = json!({"name": name, "module": module, "config": kv(&config)?,
                            "max_concurrency": max_concurrency, "watches": watches, "subscriptions": subscribe,
                            "profile": profile});
                        conn.call(M::POST, "/v1/agents", Payload::Json(body), &cols).await
                    }
                    AgentCmd::Get { name } => conn.call(M::GET, &path(&name, ""), Payload::None, &[]).await,
                    AgentCmd::Config { name, set } => {
                        conn.call(M::PUT, &path(&name, "/config"), Payload::Json(json!({"config": kv(&set)?})), &cols)
                            .await
                    }
                    AgentCmd::Upgrade { name, module, probation, probation_ratio, probation_min } => {
                        let mut body = json!({"module": module});
                        if let Some(window) = probation {
                            body["probation"] = json!({"window_ms": u64::try_from(window.as_millis()).unwrap_or(u64::MAX), "failure_ratio": probation_ratio,
                                "min_invocations": probation_min});
                        }
                        conn.call(M::POST, &path(&name, "/upgrade"), Payload::Json(body), &cols).await
                    }
                    AgentCmd::Rollback { name } => {
                        conn.call(M::POST, &path(&name, "/rollback"), Payload::None, &cols).await
                    }
                    AgentCmd::Stop { name } => conn.call(M::POST, &path(&name, "/stop"), Payload::None, &cols).await,
                    AgentCmd::Start { name } => conn.call(M::POST, &path(&name, "/start"), Payload::None, &cols).await,
                    AgentCmd::Delete { name } => conn.call(M::DELETE, &path(&name, ""), Payload::None, &[]).await,
                }
            }
            ClientCommand::Invoke { name, input, conn } => {
                let body = match input.strip_prefix('@') {
                    Some("-") => {
                        let mut b = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("cannot read stdin")?;
                        b
                    }
                    Some(p) => std::fs::read(p).with_context(|| format!("cannot read {p}"))?,
                    None => input.into_bytes(),
                };
                let resp = conn.send(M::POST, &format!("/v1/agents/{name}/invoke"), Payload::Bytes(body)).await?;
                let status = resp.status();
                let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let outcome = header("x-cortex-outcome").unwrap_or_default();
                let stats = InvocationStats {
                    fuel: header("x-cortex-fuel").and_then(|v| v.parse().ok()),
                    duration_us: header("x-cortex-duration-us").and_then(|v| v.parse().ok()),
                    peak_memory: header("x-cortex-peak-memory").and_then(|v| v.parse().ok()),
                    invocation: header("x-cortex-invocation"),
                };
                let bytes = resp.bytes().await?;
                let code = if status.is_success() { ExitCode::SUCCESS } else { ExitCode::from(1) };
                if conn.json {
                    println!("{}", serde_json::to_string_pretty(&invocation_json(status, &outcome, &stats, &bytes))?);
                } else if status.is_success() {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                    println!();
                } else {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    eprintln!(
                        "error[{}]: {}",
                        v["code"].as_str().unwrap_or(&outcome),
                        v["detail"].as_str().unwrap_or("")
                    );
                }
                Ok(code)
            }
            ClientCommand::Logs(args) => args.run().await,
            ClientCommand::Events(args) => args.run().await,
            ClientCommand::Deadletters(args) => args.run().await,
            ClientCommand::Workflows(args) => args.run().await,
            ClientCommand::Runs(args) => args.run().await,
            ClientCommand::Audit { since, limit, conn } => {
                let path = format!("/v1/audit?since={since}&limit={limit}");
                conn.call(M::GET, &path, Payload::None, &["seq", "actor", "tenant", "action", "outcome"]).await
            }
            ClientCommand::Keys { cmd, conn } => match cmd {
                KeyCmd::List => conn.call(M::GET, "/v1/keys", Payload::None, &["id", "name", "role", "revoked"]).await,
                KeyCmd::Create { role, name } => {
                    conn.call(
                        M::POST,
                        "/v1/keys",
                        Payload::Json(json!({"role": role, "name": name})),
                        &["id", "role", "key"],
                    )
                    .await
                }
                KeyCmd::Revoke { id } => conn.call(M::DELETE, &format!("/v1/keys/{id}"), Payload::None, &[]).await,
            },
            ClientCommand::Deploy(args) => args.run().await,
            ClientCommand::Dev(args) => args.run().await,
            ClientCommand::Profiles { cmd, conn } => {
                let cols = ["name", "limits", "max_concurrency"];
                let path = |n: &str| format!("/v1/profiles/{n}");
                match cmd {
                    ProfileCmd::List => conn.call(M::GET, "/v1/profiles", Payload::None, &cols).await,
                    ProfileCmd::Get { name } => conn.call(M::GET, &path(&name), Payload::None, &[]).await,
                    ProfileCmd::Put { name, fuel, memory, timeout, max_concurrency } => {
                        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
                        let body = json!({"limits": {"fuel": fuel, "memory_bytes": memory, "timeout_ms": timeout_ms},
                            "max_concurrency": max_concurrency});
                        conn.call(M::PUT, &path(&name), Payload::Json(body), &cols).await
                    }
                    ProfileCmd::Delete { name } => conn.call(M::DELETE, &path(&name), Payload::None, &[]).await,
                }
            }
            ClientCommand::Registries { cmd, conn } => registries::run(cmd, conn).await,
            ClientCommand::Secrets { cmd, conn } => secrets::run(cmd, conn).await,
            ClientCommand::Backup { to, to_dir, keep, token_file, mut conn } => {
                if let Some(f) = token_file {
                    let t = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
                    conn.token = Some(t.trim().to_owned());
                }
                match (to, to_dir) {
                    (Some(to), _) => backup::backup(&to, &conn).await,
                    (None, Some(dir)) => backup::backup_rotating(&dir, keep, &conn).await,
                    (None, None) => anyhow::bail!("backup needs --to FILE or --to-dir DIR"),
                }
            }
            ClientCommand::Restore { from, data, arango, database, username, password_file, force } => {
                match (data, arango) {
                    (Some(data), _) => backup::restore(&from, &data, force),
                    (None, Some(url)) => {
                        let cfg = crate::config::ArangoConfig {
                            url,
                            database,
                            username,
                            password_file,
                            connect_timeout_ms: 5_000,
                            request_timeout_ms: 120_000,
                        };
                        backup::restore_arango(&from, &cfg, force).await
                    }
                    (None, None) => anyhow::bail!("restore needs --data DIR or --arango URL"),
                }
            }
        }
    }
}

async fn oneshot(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    body: Body,
    ct: &str,
) -> anyhow::Result<(u16, Value)> {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header(crate::api::TENANT_HEADER, "demo")
        .header("content-type", ct)
        .body(body)?;
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// Create the `demo` tenant and deploy `NAME=PATH` components into it (idempotent).
pub async fn bootstrap_demo(app: axum::Router, admin_token: &str, deploys: &[String]) -> anyhow::Result<Vec<String>> {
    let (s, v) = oneshot(
        &app,
        "POST",
        "/v1/tenants",
        admin_token,
        Body::from(json!({"name": "demo"}).to_string()),
        "application/json",
    )
    .await?;
    if s != 201 && s != 409 {
        bail!("creating the demo tenant: {s} {v}");
    }
    let mut names = Vec::new();
    for d in deploys {
        let (name, path) = d.split_once('=').with_context(|| format!("--deploy {d:?} is not NAME=PATH"))?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        let (s, m) = oneshot(&app, "POST", "/v1/modules", admin_token, Body::from(bytes), "application/wasm").await?;
        if s != 201 && s != 200 {
            bail!("uploading {path}: {s} {m}");
        }
        let body = json!({"name": name, "module": m["digest"]});
        let (s, v) =
            oneshot(&app, "POST", "/v1/agents", admin_token, Body::from(body.to_string()), "application/json").await?;
        if s != 201 && s != 409 {
            bail!("deploying {name}: {s} {v}");
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// What an invocation's response headers say of it.
struct InvocationStats {
    fuel: Option<u64>,
    duration_us: Option<u64>,
    peak_memory: Option<u64>,
    invocation: Option<String>,
}

/// `cortex invoke --json`: the status, outcome, stats and output (as text when it is UTF-8,
/// else as hex in `output_hex`) or the problem the server answered.
fn invocation_json(status: reqwest::StatusCode, outcome: &str, s: &InvocationStats, body: &[u8]) -> Value {
    let mut v = json!({
        "status": status.as_u16(),
        "outcome": outcome,
        "fuel": s.fuel,
        "duration_us": s.duration_us,
        "peak_memory": s.peak_memory,
        "invocation": s.invocation,
    });
    if status.is_success() {
        match std::str::from_utf8(body) {
            Ok(text) => v["output"] = json!(text),
            Err(_) => v["output_hex"] = json!(crate::secrets::hex(body)),
        }
    } else {
        v["problem"] = serde_json::from_slice(body).unwrap_or(Value::Null);
    }
    v
}
