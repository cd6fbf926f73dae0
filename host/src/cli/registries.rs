//! `cortex registries ...`: the tenant's credentials for OCI registries (tenant-admins),
//! used by its `oci://` deploys. A child of the client module: it talks through its [`Conn`].

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::{Conn, Payload};

/// `cortex registries ...`
#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// List the registries the tenant has credentials for (never the passwords).
    List,
    /// Store the tenant's credentials for a registry (the password from
    /// CORTEX_REGISTRY_PASSWORD or --password-stdin).
    Put {
        /// The registry, `host[:port]`.
        host: String,
        /// User name.
        #[arg(long, env = "CORTEX_REGISTRY_USERNAME")]
        username: String,
        /// Read the password from stdin (one line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete the tenant's credentials for a registry.
    Delete {
        /// The registry, `host[:port]`.
        host: String,
    },
}

/// Run `cmd` against the server of `conn`.
pub async fn run(cmd: RegistryCmd, conn: Conn) -> anyhow::Result<ExitCode> {
    use reqwest::Method as M;
    let cols = ["registry", "username", "updated_ms"];
    match cmd {
        RegistryCmd::List => conn.call(M::GET, "/v1/registries", Payload::None, &cols).await,
        RegistryCmd::Put { host, username, password_stdin } => {
            let Some(password) = crate::cli::push::registry_password(password_stdin)? else {
                eprintln!("error: give the password in CORTEX_REGISTRY_PASSWORD or with --password-stdin");
                return Ok(ExitCode::from(2));
            };
            let body = json!({"username": username, "password": password});
            conn.call(M::PUT, &format!("/v1/registries/{host}"), Payload::Json(body), &cols).await
        }
        RegistryCmd::Delete { host } => {
            conn.call(M::DELETE, &format!("/v1/registries/{host}"), Payload::None, &[]).await
        }
    }
}
