//! `cortex deploy NAME PATH.wasm|REF [flags]`: make the agent what the command says, in one
//! step and whatever existed before (apply semantics).
//!
//! 1. The module: a `.wasm` file is hashed here (SHA-256) and uploaded only if the server does
//!    not have those bytes (`GET /v1/modules/{digest}`), labelled `NAME:TAG` (`--tag`,
//!    default `latest`); a reference (digest, unique prefix, `name:tag`) is looked up.
//! 2. While the server compiles it (large uploads answer 202), progress goes to stderr.
//! 3. The agent: deployed if absent; else upgraded (with the new configuration in the same
//!    step) if its module or configuration differ; else nothing (and it says so). Watches,
//!    subscriptions, profile, egress grants and the limits given change only by a
//!    redeploy: the command refuses unless `--replace` (delete, then deploy).
//!
//! Without a module, in a project folder (`cortex.toml`): build it, and take the name and
//! the `[deploy]` table from the manifest (flags add to or override it):
//!
//! ```toml
//! [deploy]
//! config = { greeting = "hi" }
//! watches = ["orders/eu/"]
//! subscriptions = ["news"]
//! profile = "small"
//! max_concurrency = 4
//! limits = { fuel = 1000000, memory = "64MiB", timeout = "5s" }
//!
//! # Outbound HTTP: the deploy spec's `egress` grants, with the same fields (an unknown
//! # key is refused, naming the ones allowed).
//! [[deploy.egress]]
//! url = "https://api.openai.com/v1/"
//! methods = ["POST"]
//! secret = "openai"          # the tenant secret the host puts in `header`
//! header = "authorization"
//! format = "Bearer {}"
//! meter = "openai"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{Conn, Payload, kv};
use super::project::Project;
use super::units::{parse_duration, parse_size};

/// `cortex deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The agent's name (default: the project's `[agent] name`).
    pub name: Option<String>,
    /// A .wasm file, or a module reference: digest, unique digest prefix, name:tag
    /// (default: build the project in this folder).
    pub module: Option<String>,
    /// Tag the uploaded module NAME:TAG (default `latest`).
    #[arg(long)]
    pub tag: Option<String>,
    /// KEY=VALUE configuration (repeatable; over the manifest's).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Watch COLLECTION or COLLECTION/KEY-PREFIX of the change feed (repeatable).
    #[arg(long = "watch", value_name = "COLLECTION[/PREFIX]")]
    pub watch: Vec<String>,
    /// Receive the messages published to TOPIC (repeatable).
    #[arg(long = "subscribe", value_name = "TOPIC")]
    pub subscribe: Vec<String>,
    /// Take the limits and concurrency not given here from this resource profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// Fuel per invocation.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory limit, e.g. 64MiB.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Wall-clock limit per invocation, e.g. 5s.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Invocations running at once.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// If the agent differs in what only a redeploy changes (watches, subscriptions,
    /// profile, limits), delete it and deploy it again.
    #[arg(long)]
    pub replace: bool,
    /// The project folder (used when no module is given).
    #[arg(long, default_value = ".")]
    pub project: PathBuf,
    #[command(flatten)]
    pub conn: Conn,
}

/// `[deploy]` of `cortex.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySection {
    /// Configuration.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// `COLLECTION[/PREFIX]` watched.
    #[serde(default)]
    pub watches: Vec<String>,
    /// Topics.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Resource profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// Invocations at once.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Tag of the uploaded module.
    #[serde(default)]
    pub tag: Option<String>,
    /// `[[deploy.egress]]`: the deploy spec's egress grants.
    #[serde(default)]
    pub egress: Vec<crate::egress::EgressGrant>,
}

/// `[deploy.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Fuel per invocation.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Memory, e.g. `"64MiB"`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Timeout, e.g. `"5s"`.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// Where the module comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A component file.
    File(PathBuf),
    /// A module reference the server resolves.
    Ref(String),
}

/// What the agent should be.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Agent name.
    pub name: String,
    /// Its module.
    pub source: Source,
    /// Tag of an uploaded module.
    pub tag: Option<String>,
    /// Configuration.
    pub config: BTreeMap<String, String>,
    /// Watches, as the deploy spec has them.
    pub watches: Vec<Value>,
    /// Topics.
    pub subscriptions: Vec<String>,
    /// Profile.
    pub profile: Option<String>,
    /// `limits` of the deploy spec (only those given).
    pub limits: serde_json::Map<String, Value>,
    /// Invocations at once.
    pub max_concurrency: Option<u32>,
    /// Egress grants, as the deploy spec has them.
    pub egress: Vec<crate::egress::EgressGrant>,
    /// Delete and deploy again when a redeploy is needed.
    pub replace: bool,
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The agent was deployed.
    Deployed,
    /// Its module (and maybe configuration) changed.
    Upgraded,
    /// Its configuration changed.
    Reconfigured,
    /// Deleted and deployed again.
    Replaced,
    /// It was already so.
    Unchanged,
}

fn watch_json(w: &str) -> Value {
    match w.split_once('/') {
        Some((c, p)) => json!({"collection": c, "prefix": p}),
        None => json!({"collection": w, "prefix": ""}),
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

impl DeployArgs {
    /// What the command asks for, with the project's manifest (built) when no module is given.
    fn desired(&self) -> anyhow::Result<Desired> {
        let (name, source, section) = match &self.module {
            Some(m) => {
                let Some(name) = self.name.clone() else { bail!("usage: cortex deploy NAME PATH.wasm|REF") };
                let path = PathBuf::from(m);
                let source =
                    if path.is_file() || m.ends_with(".wasm") { Source::File(path) } else { Source::Ref(m.clone()) };
                (name, source, DeploySection::default())
            }
            None => {
                let project = Project::find(&self.project)?;
                let section = section_of(&project)?;
                let out = build(&project)?;
                let name = self.name.clone().unwrap_or_else(|| project.manifest.agent.name.clone());
                (name, Source::File(out), section)
            }
        };
        let mut d = desired_from(name, source, section)?;
        self.override_onto(&mut d)?;
        Ok(d)
    }

    /// The flags over `d` (from a manifest).
    pub fn override_onto(&self, d: &mut Desired) -> anyhow::Result<()> {
        if let Value::Object(m) = kv(&self.config)? {
            for (k, v) in m {
                d.config.insert(k, v.as_str().unwrap_or_default().to_owned());
            }
        }
        if !self.watch.is_empty() {
            d.watches = self.watch.iter().map(|w| watch_json(w)).collect();
        }
        if !self.subscribe.is_empty() {
            d.subscriptions = self.subscribe.clone();
        }
        if self.tag.is_some() {
            d.tag = self.tag.clone();
        }
        if self.profile.is_some() {
            d.profile = self.profile.clone();
        }
        if let Some(f) = self.fuel {
            d.limits.insert("fuel".into(), json!(f));
        }
        if let Some(m) = self.memory {
            d.limits.insert("memory_bytes".into(), json!(m));
        }
        if let Some(t) = self.timeout {
            d.limits.insert("timeout_ms".into(), json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)));
        }
        if self.max_concurrency.is_some() {
            d.max_concurrency = self.max_concurrency;
        }
        d.replace = self.replace;
        Ok(())
    }

    /// Run the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let desired = match self.desired() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(2));
            }
        };
        let digest = apply(&self.conn, &desired).await?;
        if self.conn.json {
            let agent = get(&self.conn, &format!("/v1/agents/{}", desired.name)).await?.1;
            println!("{}", serde_json::to_string_pretty(&agent)?);
        } else {
            println!("{} {}", desired.name, digest.0);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The `[deploy]` table of `project`'s manifest.
pub fn section_of(project: &Project) -> anyhow::Result<DeploySection> {
    let Some(table) = &project.manifest.deploy else { return Ok(DeploySection::default()) };
    let path = project.root.join(super::project::MANIFEST);
    let mut table = table.clone();
    // The grants one by one, so that an error says which.
    let egress = table.remove("egress");
    let mut section: DeploySection = table.try_into().with_context(|| format!("{}: [deploy]", path.display()))?;
    match egress {
        None => {}
        Some(toml::Value::Array(grants)) => {
            for (i, grant) in grants.into_iter().enumerate() {
                let grant =
                    grant.try_into().with_context(|| format!("{}: [[deploy.egress]] #{}", path.display(), i + 1))?;
                section.egress.push(grant);
            }
        }
        Some(other) => bail!(
            "{}: [deploy] egress must be a list of grants ([[deploy.egress]] tables), not a {}",
            path.display(),
            other.type_str()
        ),
    }
    Ok(section)
}

/// Build `project` (its output goes to stderr); the component's path.
pub fn build(project: &Project) -> anyhow::Result<PathBuf> {
    eprintln!("building {}: {}", project.manifest.agent.name, project.manifest.build.command);
    Ok(project.build()?)
}

/// What `section` asks for agent `name` running `source`.
pub fn desired_from(name: String, source: Source, section: DeploySection) -> anyhow::Result<Desired> {
    let mut limits = serde_json::Map::new();
    if let Some(f) = section.limits.fuel {
        limits.insert("fuel".into(), json!(f));
    }
    if let Some(m) = &section.limits.memory {
        limits.insert("memory_bytes".into(), json!(parse_size(m).map_err(anyhow::Error::msg)?));
    }
    if let Some(t) = &section.limits.timeout {
        let t = parse_duration(t).map_err(anyhow::Error::msg)?;
        limits.insert("timeout_ms".into(), json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)));
    }
    Ok(Desired {
        name,
        source,
        tag: section.tag,
        config: section.config,
        watches: section.watches.iter().map(|w| watch_json(w)).collect(),
        subscriptions: section.subscriptions,
        profile: section.profile,
        limits,
        max_concurrency: section.max_concurrency,
        egress: section.egress,
        replace: false,
    })
}

/// An answer's status and JSON body.
async fn request(conn: &Conn, method: Method, path: &str, body: Payload) -> anyhow::Result<(StatusCode, Value)> {
    let resp = conn.send(method, path, body).await?;
    let status = resp.status();
    let text = resp.text().await?;
    let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Ok((status, v))
}

/// `GET path`: 200 with its body, or 404 with `Null`; anything else is an error.
async fn get(conn: &Conn, path: &str) -> anyhow::Result<(bool, Value)> {
    match request(conn, Method::GET, path, Payload::None).await? {
        (StatusCode::OK, v) => Ok((true, v)),
        (StatusCode::NOT_FOUND, _) => Ok((false, Value::Null)),
        (s, v) => Err(refused(s, &v)),
    }
}

fn refused(status: StatusCode, v: &Value) -> anyhow::Error {
    anyhow::anyhow!(
        "{} {}: {}",
        status.as_u16(),
        v["code"].as_str().unwrap_or("error"),
        v["detail"].as_str().or(v.as_str()).unwrap_or("")
    )
}

/// `method path` expecting success: its body.
pub(super) async fn expect_ok(conn: &Conn, method: Method, path: &str, body: Payload) -> anyhow::Result<Value> {
    let (s, v) = request(conn, method, path, body).await?;
    if s.is_success() { Ok(v) } else { Err(refused(s, &v)) }
}

/// The digest of the module `d` asks for, on the server and ready: uploaded unless the
/// server has the bytes, then waited for while it compiles (progress on stderr).
pub async fn module(conn: &Conn, d: &Desired) -> anyhow::Result<String> {
    let rec = match &d.source {
        Source::Ref(r) => match get(conn, &format!("/v1/modules/{r}")).await? {
            (true, v) => v,
            (false, _) => bail!("no module {r} on the server"),
        },
        Source::File(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let digest = crate::runtime::digest(&bytes);
            let tag = d.tag.clone().unwrap_or_else(|| crate::agents::module_ref::DEFAULT_TAG.to_owned());
            let tagged = |v: &Value| {
                v["tags"]
                    .as_array()
                    .is_some_and(|ts| ts.iter().any(|t| t["name"] == d.name.as_str() && t["tag"] == tag.as_str()))
            };
            match get(conn, &format!("/v1/modules/{digest}")).await? {
                (true, v) => {
                    eprintln!("module {} is on the server already: upload skipped", short(&digest));
                    if tagged(&v) {
                        v
                    } else {
                        let body = json!({"name": d.name, "tag": tag});
                        expect_ok(conn, Method::POST, &format!("/v1/modules/{digest}/tags"), Payload::Json(body))
                            .await?
                    }
                }
                (false, _) => {
                    eprintln!("uploading {} ({} bytes)", path.display(), bytes.len());
                    let q = format!("/v1/modules?name={}&tag={tag}", d.name);
                    expect_ok(conn, Method::POST, &q, Payload::Bytes(bytes)).await?
                }
            }
        }
    };
    let rec = compiled(conn, rec).await?;
    Ok(rec["digest"].as_str().context("the server's module record has no digest")?.to_owned())
}

/// Module record `rec` once the server has compiled it: polled while its status is
/// `compiling` (progress on stderr); an error if the compile failed.
pub(super) async fn compiled(conn: &Conn, mut rec: Value) -> anyhow::Result<Value> {
    let digest = rec["digest"].as_str().context("the server's module record has no digest")?.to_owned();
    let started = Instant::now();
    let mut said = 0;
    while rec["status"] == "compiling" {
        let secs = started.elapsed().as_secs();
        if secs >= said {
            eprintln!("compiling {}... {secs} s", short(&digest));
            said = secs + 2;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        rec = expect_ok(conn, Method::GET, &format!("/v1/modules/{digest}"), Payload::None).await?;
    }
    if rec["status"] == "failed" {
        bail!(
            "module {} failed to compile: {}: {}",
            short(&digest),
            rec["error"]["code"].as_str().unwrap_or("error"),
            rec["error"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(rec)
}

/// What differs between agent `a` (as the server shows it) and `d`, among what only a
/// redeploy changes.
fn redeploy_needed(a: &Value, d: &Desired) -> Vec<String> {
    let mut diff = Vec::new();
    let watches: Vec<Value> = a["watches"].as_array().cloned().unwrap_or_default();
    if watches != d.watches {
        diff.push("watches".to_owned());
    }
    let subs: Vec<String> = a["subscriptions"]
        .as_array()
        .map(|s| s.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if subs != d.subscriptions {
        diff.push("subscriptions".to_owned());
    }
    if a["profile"].as_str() != d.profile.as_deref() {
        diff.push("profile".to_owned());
    }
    for (k, v) in &d.limits {
        if &a["limits"][k] != v {
            diff.push(format!("limits.{k}"));
        }
    }
    if let Some(c) = d.max_concurrency
        && a["max_concurrency"] != json!(c)
    {
        diff.push("max_concurrency".to_owned());
    }
    // The record keeps the grants as deployed (absent when none).
    let egress = a["egress"].as_array().cloned().unwrap_or_default();
    if serde_json::to_value(&d.egress).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default() != egress {
        diff.push("egress".to_owned());
    }
    diff
}

fn spec(d: &Desired, digest: &str) -> Value {
    let mut s = json!({
        "name": d.name,
        "module": digest,
        "config": d.config,
        "watches": d.watches,
        "subscriptions": d.subscriptions,
        "limits": d.limits,
    });
    if let Some(p) = &d.profile {
        s["profile"] = json!(p);
    }
    if let Some(c) = d.max_concurrency {
        s["max_concurrency"] = json!(c);
    }
    if !d.egress.is_empty() {
        s["egress"] = json!(d.egress);
    }
    s
}

/// Make the agent what `d` says: the module on the server, then the agent deployed,
/// upgraded, reconfigured or left as it is (each said on stderr). The module's digest and
/// what was done.
pub async fn apply(conn: &Conn, d: &Desired) -> anyhow::Result<(String, Applied)> {
    let digest = module(conn, d).await?;
    let path = format!("/v1/agents/{}", d.name);
    let (exists, agent) = get(conn, &path).await?;
    let done = if !exists {
        expect_ok(conn, Method::POST, "/v1/agents", Payload::Json(spec(d, &digest))).await?;
        eprintln!("deployed {} (module {})", d.name, short(&digest));
        Applied::Deployed
    } else {
        let diff = redeploy_needed(&agent, d);
        let config: BTreeMap<String, String> = serde_json::from_value(agent["config"].clone()).unwrap_or_default();
        if !diff.is_empty() {
            if !d.replace {
                bail!(
                    "agent {} differs in {}, which only a redeploy changes: run again with --replace to delete and deploy it",
                    d.name,
                    diff.join(", ")
                );
            }
            expect_ok(conn, Method::DELETE, &path, Payload::None).await?;
            expect_ok(conn, Method::POST, "/v1/agents", Payload::Json(spec(d, &digest))).await?;
            eprintln!("replaced {} ({} changed; module {})", d.name, diff.join(", "), short(&digest));
            Applied::Replaced
        } else if agent["module"].as_str() != Some(digest.as_str()) {
            let body = json!({"module": digest, "config": d.config});
            expect_ok(conn, Method::POST, &format!("{path}/upgrade"), Payload::Json(body)).await?;
            eprintln!("upgraded {} to module {}", d.name, short(&digest));
            Applied::Upgraded
        } else if config != d.config {
            expect_ok(conn, Method::PUT, &format!("{path}/config"), Payload::Json(json!({"config": d.config}))).await?;
            eprintln!("updated the configuration of {}", d.name);
            Applied::Reconfigured
        } else {
            eprintln!("{} is up to date (module {}): nothing to do", d.name, short(&digest));
            Applied::Unchanged
        }
    };
    Ok((digest, done))
}
