//! `cortex deadletters NAME [list | replay ID | discard ID]`: the change batches and
//! messages an agent failed after its retries.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::client::{Conn, Payload};

/// `cortex deadletters ...`
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// Agent name.
    name: String,
    #[command(subcommand)]
    cmd: Option<DeadLetterCmd>,
    #[command(flatten)]
    conn: Conn,
}

/// What to do with the agent's dead letters (default: list them).
#[derive(Debug, Subcommand)]
pub enum DeadLetterCmd {
    /// List them: id, kind, attempts, the last error.
    List,
    /// Deliver one again (deleted once it succeeds; exit 1 if it fails again).
    Replay {
        /// Dead letter id.
        id: String,
    },
    /// Delete one without delivering it.
    Discard {
        /// Dead letter id.
        id: String,
    },
}

impl DeadLettersArgs {
    /// Run the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        use reqwest::Method as M;
        let DeadLettersArgs { name, cmd, conn } = self;
        let base = format!("/v1/agents/{name}/deadletters");
        match cmd.unwrap_or(DeadLetterCmd::List) {
            DeadLetterCmd::List => {
                let cols = ["id", "kind", "attempts", "error_code", "error", "updated_ms"];
                conn.call(M::GET, &base, Payload::None, &cols).await
            }
            DeadLetterCmd::Replay { id } => {
                conn.call(M::POST, &format!("{base}/{id}/replay"), Payload::None, &["id", "outcome"]).await
            }
            DeadLetterCmd::Discard { id } => conn.call(M::DELETE, &format!("{base}/{id}"), Payload::None, &[]).await,
        }
    }
}
