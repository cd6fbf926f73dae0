//! An agent's log ring: the last lines its invocations wrote, bounded in lines and in bytes.
//!
//! One invocation's log is bounded by its `log_bytes` limit ([`super::logbuf`]); the ring
//! keeps what many invocations wrote, so it needs a bound of its own in bytes too: a
//! thousand lines of 64 KiB would otherwise hold 64 MiB per agent. The oldest lines go
//! first; a single line longer than the whole budget is cut to fit.

use std::collections::VecDeque;

use serde::Serialize;

use super::logbuf::{Logs, truncate};

/// One line of an agent's log ring.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Position in the agent's ring (from 1, increasing).
    pub seq: u64,
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// The invocation that wrote it.
    pub invocation: String,
    /// `stdout`, `stderr` or `log`.
    #[schema(value_type = String)]
    pub stream: &'static str,
    /// Level of a `log` record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// The text.
    pub message: String,
}

/// Bytes a line is charged: its text and the fixed size of a line.
fn cost(invocation: &str, level: Option<&str>, message: &str) -> usize {
    std::mem::size_of::<LogLine>() + invocation.len() + level.map_or(0, str::len) + message.len()
}

/// The last lines of an agent's invocations, at most `max_lines` of them and at most
/// `max_bytes` bytes in all (as counted by [`LogRing::bytes`]).
#[derive(Debug)]
pub struct LogRing {
    lines: VecDeque<LogLine>,
    bytes: usize,
    seq: u64,
    max_lines: usize,
    max_bytes: usize,
}

impl LogRing {
    /// An empty ring.
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self { lines: VecDeque::new(), bytes: 0, seq: 0, max_lines, max_bytes }
    }

    /// Append what one invocation wrote, as lines: stdout, stderr, then its log records.
    pub fn record(&mut self, logs: &Logs, invocation: &str, time_ms: u64) {
        for (stream, bytes) in [("stdout", &logs.stdout), ("stderr", &logs.stderr)] {
            for l in String::from_utf8_lossy(bytes).lines() {
                self.push(time_ms, invocation, stream, None, l);
            }
        }
        for r in &logs.records {
            let fields: Vec<String> = r.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let msg = if fields.is_empty() { r.message.clone() } else { format!("{} {}", r.message, fields.join(" ")) };
            self.push(time_ms, invocation, "log", Some(format!("{:?}", r.level).to_lowercase()), &msg);
        }
    }

    /// Append one line, dropping the oldest ones past either bound.
    pub fn push(&mut self, time_ms: u64, invocation: &str, stream: &'static str, level: Option<String>, text: &str) {
        let fixed = cost(invocation, level.as_deref(), "");
        let message = truncate(text, self.max_bytes.saturating_sub(fixed));
        self.bytes += fixed + message.len();
        self.seq += 1;
        self.lines.push_back(LogLine {
            seq: self.seq,
            time_ms,
            invocation: invocation.to_owned(),
            stream,
            level,
            message,
        });
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            let Some(old) = self.lines.pop_front() else { break };
            self.bytes -= cost(&old.invocation, old.level.as_deref(), &old.message);
        }
    }

    /// Lines after `since`, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<LogLine> {
        // Sequence numbers increase along the ring: skip the older ones without a scan.
        let start = self.lines.partition_point(|l| l.seq <= since);
        self.lines.range(start..).take(limit).cloned().collect()
    }

    /// Lines held.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether the ring holds no line.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Bytes held, as charged against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(stdout: &str) -> Logs {
        Logs { stdout: stdout.as_bytes().to_vec(), ..Logs::default() }
    }

    #[test]
    fn long_lines_are_bounded_in_bytes_not_only_in_lines() {
        let mut ring = LogRing::new(1000, 64 << 10);
        let line = "x".repeat(16 << 10);
        for i in 0..100 {
            ring.record(&logs(&format!("{line}\n")), &format!("inv-{i}"), 1);
            assert!(ring.bytes() <= 64 << 10, "{} bytes after {i} lines", ring.bytes());
        }
        // Three lines of 16 KiB fit with their overhead, a fourth does not: the newest stay.
        assert_eq!(ring.len(), 3);
        let kept = ring.since(0, 10);
        assert_eq!(kept.iter().map(|l| l.invocation.as_str()).collect::<Vec<_>>(), ["inv-97", "inv-98", "inv-99"]);
        assert_eq!(kept.last().map(|l| l.seq), Some(100));
    }

    #[test]
    fn a_line_longer_than_the_budget_is_cut_to_fit() {
        let mut ring = LogRing::new(1000, 4096);
        ring.record(&logs(&"é".repeat(10_000)), "inv", 1);
        assert_eq!(ring.len(), 1);
        assert!(ring.bytes() <= 4096);
        let line = &ring.since(0, 1)[0];
        assert!(line.message.len() < 4096 && line.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_line_bound_still_holds_and_since_pages() {
        let mut ring = LogRing::new(5, 1 << 20);
        for i in 0..12 {
            ring.record(&logs(&format!("line {i}\n")), "inv", 1);
        }
        assert_eq!(ring.len(), 5);
        assert_eq!(ring.since(0, 100).first().map(|l| l.seq), Some(8));
        let after: Vec<u64> = ring.since(9, 2).iter().map(|l| l.seq).collect();
        assert_eq!(after, [10, 11]);
        let total: usize = ring.since(0, 100).iter().map(|l| cost(&l.invocation, None, &l.message)).sum();
        assert_eq!(ring.bytes(), total);
    }
}
