//! `cortex secrets ...`: the tenant's secrets (tenant-admins). A value is read from stdin
//! or a file, never from the command line: arguments show in `ps` and shell histories.
//! A child of the client module: it talks through its [`Conn`].

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use zeroize::Zeroizing;

use super::{Conn, Payload};

/// `cortex secrets ...`
#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Store a secret. The value comes from stdin (e.g. `printf %s "$KEY" | cortex secrets
    /// set openai`) or from --from-file, never from an argument (arguments leak into `ps`);
    /// one trailing newline is dropped.
    Set {
        /// The secret's name (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// List the tenant's secrets (names, versions, times; never values).
    List,
    /// Show a secret's metadata (never its value).
    Get {
        /// The secret's name.
        name: String,
    },
    /// Delete a secret.
    Rm {
        /// The secret's name.
        name: String,
    },
}

/// `bytes` as the value: UTF-8, without one trailing newline.
fn value_of(bytes: Zeroizing<Vec<u8>>) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::from_utf8(bytes.to_vec()).context("the secret value is not UTF-8")?);
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// Run `cmd` against the server of `conn`.
pub async fn run(cmd: SecretCmd, conn: Conn) -> anyhow::Result<ExitCode> {
    use reqwest::Method as M;
    let cols = ["name", "version", "updated_ms", "key_id"];
    match cmd {
        SecretCmd::List => conn.call(M::GET, "/v1/secrets", Payload::None, &cols).await,
        SecretCmd::Get { name } => conn.call(M::GET, &format!("/v1/secrets/{name}"), Payload::None, &cols).await,
        SecretCmd::Set { name, from_file } => {
            let mut bytes = Zeroizing::new(Vec::new());
            match from_file {
                Some(path) => {
                    *bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                }
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("reading the value from stdin (end with Ctrl-D)...");
                    }
                    std::io::stdin().read_to_end(&mut bytes).context("reading the value from stdin")?;
                }
            }
            let value = value_of(bytes)?;
            let body = json!({"value": value.as_str()});
            conn.call(M::PUT, &format!("/v1/secrets/{name}"), Payload::Json(body), &cols).await
        }
        SecretCmd::Rm { name } => conn.call(M::DELETE, &format!("/v1/secrets/{name}"), Payload::None, &[]).await,
    }
}
