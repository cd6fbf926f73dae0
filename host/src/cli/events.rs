//! `cortex events [--since N] [--limit N] [--follow]`: the tenant's change feed, one write
//! per row (`--json`: as the API gives them; with `--follow`, one JSON object per line).

use std::process::ExitCode;

use clap::Args;

use super::client::{Conn, Payload};

const COLUMNS: [&str; 6] = ["seq", "collection", "key", "op", "revision", "agent"];

/// `cortex events ...`
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Events after this sequence number.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// At most this many events (without --follow).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep printing new events as they are written (reconnects after the last one seen).
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    conn: Conn,
}

impl EventsArgs {
    /// Run the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let EventsArgs { since, limit, follow, conn } = self;
        if !follow {
            let path = format!("/v1/events?since={since}&limit={limit}");
            return conn.call(reqwest::Method::GET, &path, Payload::None, &COLUMNS).await;
        }
        if !conn.json {
            println!("{}", COLUMNS.map(str::to_uppercase).join("  "));
        }
        super::sse::follow(&conn, "/v1/events/stream?follow=true", "change", &format!("since={since}"), |e| {
            if conn.json {
                super::sse::out(&e.to_string())
            } else {
                let cells: Vec<String> = COLUMNS.iter().map(|c| super::logs::text(&e[*c])).collect();
                super::sse::out(&cells.join("  "))
            }
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    }
}
