//! `cortex push SOURCE REF`: push a component to an OCI registry as a Wasm OCI artifact
//! (the layout `wash` and `wkg` use), and print the reference pinned to its digest, ready
//! for a deploy's `"module": "oci://..."`. SOURCE is a .wasm file, or a module on the
//! server (`NAME:TAG`, a digest or a unique digest prefix; downloaded from `CORTEX_URL`
//! with `CORTEX_TOKEN`, like the client commands) when no file has that name.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::client::{Conn, module_bytes};
use crate::oci::{Client, Credentials, Policy, Reference};

/// `cortex push` arguments.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The component to push: a .wasm file, or a module on the server (NAME:TAG, NAME,
    /// digest or unique digest prefix) when no such file exists.
    source: PathBuf,
    /// Where: `[oci://]host[:port]/namespace/name:tag`.
    reference: String,
    /// Server URL (for a module on the server).
    #[arg(long, env = "CORTEX_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token or API key (for a module on the server).
    #[arg(long, env = "CORTEX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Act within this tenant (platform-admins; for a module on the server).
    #[arg(long)]
    tenant: Option<String>,
    /// Registry user name (the password from CORTEX_REGISTRY_PASSWORD or --password-stdin).
    #[arg(long, env = "CORTEX_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Read the registry password from stdin (one line).
    #[arg(long)]
    password_stdin: bool,
    /// Talk plain http to the registry (taken without it for 127.0.0.1 and localhost only).
    #[arg(long)]
    insecure: bool,
}

/// The registry password: from stdin if asked, else from CORTEX_REGISTRY_PASSWORD.
pub(crate) fn registry_password(from_stdin: bool) -> anyhow::Result<Option<String>> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the password from stdin")?;
        return Ok(Some(s.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(std::env::var("CORTEX_REGISTRY_PASSWORD").ok())
}

/// The artifact's creation time: `SOURCE_DATE_EPOCH` (seconds) if set, for reproducible
/// pushes (same component, same digest), else now.
fn created_ms() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or_else(crate::registry::now_ms, |s| s.saturating_mul(1000))
}

impl PushArgs {
    /// The component's bytes: the file SOURCE, else the module SOURCE names on the server.
    async fn component(&self) -> anyhow::Result<Vec<u8>> {
        let shown = self.source.display();
        if self.source.exists() {
            return std::fs::read(&self.source).with_context(|| format!("cannot read {shown}"));
        }
        let looks_like_a_file = self.source.extension().is_some_and(|e| e == "wasm")
            || self.source.components().count() > 1
            || self.source.to_str().is_none();
        if looks_like_a_file {
            bail!("cannot read {shown}: no such file");
        }
        let reference = self.source.to_string_lossy();
        let conn = Conn { url: self.url.clone(), token: self.token.clone(), tenant: self.tenant.clone(), json: false };
        module_bytes(&conn, &reference)
            .await
            .with_context(|| format!("{shown} is no file, nor a module on the server at {}", self.url))
    }

    /// Push; prints `REF@sha256:...`. A registry that refuses or cannot be reached is an
    /// error (exit 1); bad arguments exit 2.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let r = match Reference::parse(&self.reference) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error[{}]: {e}", e.code());
                return Ok(ExitCode::from(2));
            }
        };
        let credentials = match (self.username.clone(), registry_password(self.password_stdin)?) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            (Some(_), None) => {
                eprintln!("error: --username needs a password (CORTEX_REGISTRY_PASSWORD or --password-stdin)");
                return Ok(ExitCode::from(2));
            }
            (None, Some(_)) => {
                eprintln!("error: a registry password needs --username (or CORTEX_REGISTRY_USERNAME)");
                return Ok(ExitCode::from(2));
            }
        };
        let wasm = self.component().await?;
        if !wasm.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly file", self.source.display());
        }
        let plain = self.insecure || r.is_loopback();
        let policy = Policy {
            plain_http: plain,
            may_follow: Arc::new(move |u| u.scheme() == "https" || (plain && u.scheme() == "http")),
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 0,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
        };
        let mut client = Client::new(&r, credentials, policy, true)?;
        let digest = client
            .push(&r, &wasm, created_ms())
            .await
            .map_err(|e| anyhow::anyhow!("[{}] {e}", e.code()))
            .with_context(|| format!("cannot push to {r}"))?;
        let shown = self.reference.split_once('@').map_or(self.reference.as_str(), |(r, _)| r);
        println!("{shown}@{digest}");
        Ok(ExitCode::SUCCESS)
    }
}
