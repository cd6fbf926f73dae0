//! Following a server-sent-events stream of the API from the command line: events as
//! they come, and a reconnection after the last id when the connection drops.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::client::{Conn, Payload, refusal};

/// One event of a stream.
#[derive(Debug, Default)]
pub struct SseEvent {
    /// Its `id`, if any.
    pub id: Option<String>,
    /// Its `event` name (`message` when none).
    pub event: String,
    /// Its `data` lines, joined.
    pub data: String,
}

/// Split the complete events off the front of `buf` (events end with a blank line).
fn parse_events(buf: &mut String) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut ev = SseEvent { event: "message".into(), ..SseEvent::default() };
        let mut data = Vec::new();
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => ev.id = Some(value.to_owned()),
                "event" => ev.event = value.to_owned(),
                "data" => data.push(value),
                // Comments (keep-alives) and unknown fields.
                _ => {}
            }
        }
        if !data.is_empty() {
            ev.data = data.join("\n");
            out.push(ev);
        }
    }
    out
}

/// How long to wait before connecting again after the stream dropped.
const RECONNECT: Duration = Duration::from_secs(1);

/// Print one line to stdout, flushed (a follower's reader sees it at once).
pub fn out(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

/// Follow the stream at `path` (which ends with a query; `start` is added to it, e.g.
/// `since=0`, and after a reconnection `since` = the last id seen):
/// `on_event` gets each `data` (as JSON) of the events named `kind`; when it fails (stdout
/// was closed: `| head`) the command ends without an error. An `end` event (the
/// server ended the stream: credentials lapsed, the agent was deleted) is an error with its
/// problem; a dropped connection is opened again after the last id seen.
pub async fn follow(
    conn: &Conn,
    path: &str,
    kind: &str,
    start: &str,
    mut on_event: impl FnMut(&Value) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut after: Option<u64> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let query = after.map_or_else(|| start.to_owned(), |a| format!("since={a}"));
        let resp = conn.send(reqwest::Method::GET, &format!("{path}{sep}{query}"), Payload::None).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(refusal(status, &resp.text().await.unwrap_or_default()));
        }
        let mut resp = resp;
        let mut buf = String::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("the stream dropped ({e}); reconnecting");
                    break;
                }
            };
            buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
            for ev in parse_events(&mut buf) {
                if ev.event == "end" {
                    let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    anyhow::bail!(
                        "the stream ended: {} {}: {}",
                        v["status"],
                        v["code"].as_str().unwrap_or("error"),
                        v["detail"].as_str().unwrap_or("")
                    );
                }
                if ev.event != kind {
                    continue;
                }
                if let Some(id) = ev.id.as_deref().and_then(|i| i.parse().ok()) {
                    after = Some(id);
                }
                let v: Value = serde_json::from_str(&ev.data).context("an event that is not JSON")?;
                if on_event(&v).is_err() {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_on_blank_lines_and_keep_alives_skipped() {
        let mut buf = String::from(":\n\nid: 4\nevent: log\ndata: {\"a\":1}\n\nid: 5\nevent: lo");
        let evs = parse_events(&mut buf);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].id.as_deref(), evs[0].event.as_str(), evs[0].data.as_str()),
            (Some("4"), "log", "{\"a\":1}")
        );
        assert_eq!(buf, "id: 5\nevent: lo", "an incomplete event waits for the rest");
    }
}
