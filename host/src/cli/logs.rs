//! `cortex logs NAME [--tail N | --since N] [--follow]`: an agent's log (by default its
//! last 100 lines), one line per row: its number, time (UTC), invocation, stream, level, message and fields (`k=v`).
//! `--json` prints the lines as the API gives them (with `--follow`, one JSON object per
//! line of output).

use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use super::client::{Conn, Payload};

/// `cortex logs ...`
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Agent name.
    name: String,
    /// The last this many lines (then, with --follow, the new ones).
    #[arg(long, default_value_t = 100, conflicts_with = "since")]
    tail: u64,
    /// The lines after this number instead (at most --limit of them without --follow).
    #[arg(long)]
    since: Option<u64>,
    /// At most this many lines with --since (without --follow).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep printing new lines as the agent writes them (reconnects after the last line
    /// seen if the connection drops).
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc(ms: u64) -> String {
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = crate::civil::from_days(i64::try_from(days).unwrap_or(i64::MAX / 2));
    let (h, m, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// A field's value as text: strings bare, anything else as JSON.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One line as a row of text.
fn row(l: &Value) -> String {
    let mut message = text(&l["message"]);
    if let Some(fields) = l["fields"].as_object() {
        for (k, v) in fields {
            message.push_str(&format!(" {k}={}", text(v)));
        }
    }
    format!(
        "{:>6}  {}  {:<24}  {:<6}  {:<5}  {}",
        l["seq"].as_u64().unwrap_or(0),
        utc(l["time_ms"].as_u64().unwrap_or(0)),
        l["invocation"].as_str().unwrap_or("-"),
        l["stream"].as_str().unwrap_or("-"),
        l["level"].as_str().unwrap_or("-"),
        message.trim_start()
    )
}

const HEADER: &str = "   SEQ  TIME                      INVOCATION                STREAM  LEVEL  MESSAGE";

impl LogsArgs {
    /// Run the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let LogsArgs { name, tail, since, limit, follow, conn } = self;
        let start = match since {
            Some(since) => format!("since={since}&limit={limit}"),
            None => format!("tail={tail}&limit={}", tail.min(1000)),
        };
        if follow {
            if !conn.json {
                println!("{HEADER}");
            }
            let path = format!("/v1/agents/{name}/logs/stream?follow=true");
            super::sse::follow(&conn, &path, "log", &start, |l| {
                super::sse::out(&if conn.json { l.to_string() } else { row(l) })
            })
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
        let path = format!("/v1/agents/{name}/logs?{start}");
        if conn.json {
            return conn.call(reqwest::Method::GET, &path, Payload::None, &[]).await;
        }
        let resp = conn.send(reqwest::Method::GET, &path, Payload::None).await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            return Err(super::client::refusal(status, &body));
        }
        let lines: Vec<Value> = serde_json::from_str(&body)?;
        println!("{HEADER}");
        for l in &lines {
            println!("{}", row(l));
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_796_617_215_001), "2026-12-07T04:20:15.001Z");
        assert_eq!(utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
