//! An agent's log ring: the last lines its invocations wrote, bounded in lines and in bytes.
//!
//! One invocation's log is bounded by its `log_bytes` limit ([`super::logbuf`]); the ring
//! keeps what many invocations wrote, so it needs a bound of its own in bytes too: a
//! thousand lines of 64 KiB would otherwise hold 64 MiB per agent. The oldest lines go
//! first; a single line longer than the whole budget is cut to fit.
//!
//! Structured records keep their fields as fields: a `runtime.log` record's key/value
//! pairs, and the keys of a stdout or stderr line that is a JSON object (its `level` and
//! `msg` or `message` become the line's level and message). Lines the host writes itself
//! (an invocation that failed) are of the `host` stream.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::logbuf::{Logs, truncate};

/// Structured fields of a log line (JSON values by name).
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// A `runtime.log` record.
    Log,
    /// Written by the host about the invocation (how it failed).
    Host,
}

/// One line of an agent's log ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Position in the agent's ring (from 1, increasing).
    pub seq: u64,
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// The invocation that wrote it.
    pub invocation: String,
    /// Where it came from.
    pub stream: LogStream,
    /// Level of a `log` record, of a JSON line that names one, of a `host` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// The text.
    pub message: String,
    /// Structured fields, kept as fields.
    #[schema(value_type = Object)]
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: Fields,
}

impl LogLine {
    /// Bytes the line is charged: its text, its fields as JSON and the fixed size of a line.
    pub fn cost(&self) -> usize {
        fixed_cost(&self.invocation, self.level.as_deref(), &self.fields) + self.message.len()
    }
}

/// Bytes a line is charged besides its message.
fn fixed_cost(invocation: &str, level: Option<&str>, fields: &Fields) -> usize {
    let fields = if fields.is_empty() { 0 } else { serde_json::Value::Object(fields.clone()).to_string().len() };
    std::mem::size_of::<LogLine>() + invocation.len() + level.map_or(0, str::len) + fields
}

/// A stdout or stderr line that is a JSON object: its level, message and other fields.
fn structured(line: &str) -> Option<(Option<String>, String, Fields)> {
    if !line.trim_start().starts_with('{') {
        return None;
    }
    let serde_json::Value::Object(mut fields) = serde_json::from_str(line).ok()? else { return None };
    let mut take = |keys: &[&str]| {
        keys.iter().find_map(|k| match fields.get(*k) {
            Some(serde_json::Value::String(_)) => match fields.remove(*k) {
                Some(serde_json::Value::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        })
    };
    let level = take(&["level", "lvl"]).map(|l| l.to_lowercase());
    let message = take(&["msg", "message"]).unwrap_or_default();
    Some((level, message, fields))
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
        self.record_traced(logs, invocation, time_ms, None);
    }

    /// [`LogRing::record`], each line with the field `trace_id` when the invocation ran in
    /// a trace (OpenTelemetry export on).
    pub fn record_traced(&mut self, logs: &Logs, invocation: &str, time_ms: u64, trace_id: Option<&str>) {
        let traced = |mut fields: Fields| {
            if let Some(t) = trace_id {
                fields.insert("trace_id".into(), serde_json::Value::String(t.to_owned()));
            }
            fields
        };
        for (stream, bytes) in [(LogStream::Stdout, &logs.stdout), (LogStream::Stderr, &logs.stderr)] {
            for l in String::from_utf8_lossy(bytes).lines() {
                match structured(l) {
                    Some((level, message, fields)) => {
                        self.push(time_ms, invocation, stream, level, &message, traced(fields))
                    }
                    None => self.push(time_ms, invocation, stream, None, l, traced(Fields::new())),
                }
            }
        }
        for r in &logs.records {
            let fields =
                traced(r.fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect());
            let level = Some(format!("{:?}", r.level).to_lowercase());
            self.push(time_ms, invocation, LogStream::Log, level, &r.message, fields);
        }
    }

    /// Append one line, dropping the oldest ones past either bound.
    pub fn push(
        &mut self,
        time_ms: u64,
        invocation: &str,
        stream: LogStream,
        level: Option<String>,
        text: &str,
        mut fields: Fields,
    ) {
        let mut fixed = fixed_cost(invocation, level.as_deref(), &fields);
        if fixed > self.max_bytes {
            // Fields that alone do not fit are dropped (a note says so).
            fields = Fields::new();
            fields.insert("fields_dropped".into(), serde_json::Value::Bool(true));
            fixed = fixed_cost(invocation, level.as_deref(), &fields);
        }
        let message = truncate(text, self.max_bytes.saturating_sub(fixed));
        let seq = self.seq + 1;
        self.append(LogLine { seq, time_ms, invocation: invocation.to_owned(), stream, level, message, fields });
    }

    /// Put back lines kept before (a restart), in sequence order; the ring numbers on
    /// after the last of them. Lines at or before the ring's last number are skipped.
    pub fn restore(&mut self, mut lines: Vec<LogLine>) {
        lines.sort_by_key(|l| l.seq);
        for l in lines {
            if l.seq > self.seq {
                self.append(l);
            }
        }
    }

    fn append(&mut self, line: LogLine) {
        self.seq = line.seq;
        self.bytes += line.cost();
        self.lines.push_back(line);
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            let Some(old) = self.lines.pop_front() else { break };
            self.bytes -= old.cost();
        }
    }

    /// Lines after `since`, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<LogLine> {
        // Sequence numbers increase along the ring: skip the older ones without a scan.
        let start = self.lines.partition_point(|l| l.seq <= since);
        self.lines.range(start..).take(limit).cloned().collect()
    }

    /// The number of the last line written (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The number of the oldest line held (the next one when the ring is empty).
    pub fn first_seq(&self) -> u64 {
        self.lines.front().map_or(self.seq + 1, |l| l.seq)
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
        let total: usize = ring.since(0, 100).iter().map(LogLine::cost).sum();
        assert_eq!(ring.bytes(), total);
    }
    #[test]
    fn json_lines_and_log_records_keep_their_fields() {
        let mut ring = LogRing::new(100, 1 << 20);
        let logs = Logs {
            stdout: br#"{"level":"WARN","msg":"slow order","order":42,"tags":["eu"]}
plain text
"#
            .to_vec(),
            records: vec![crate::capabilities::logbuf::LogRecord {
                level: crate::capabilities::logbuf::Level::Info,
                message: "paid".into(),
                fields: vec![("amount".into(), "12".into())],
            }],
            ..Logs::default()
        };
        ring.record(&logs, "inv", 7);
        let lines = ring.since(0, 10);
        assert_eq!(lines.len(), 3);
        assert_eq!((lines[0].level.as_deref(), lines[0].message.as_str()), (Some("warn"), "slow order"));
        assert_eq!(
            serde_json::Value::Object(lines[0].fields.clone()),
            serde_json::json!({"order": 42, "tags": ["eu"]})
        );
        assert_eq!((lines[1].message.as_str(), lines[1].fields.is_empty()), ("plain text", true));
        assert_eq!((lines[2].stream, lines[2].message.as_str()), (LogStream::Log, "paid"));
        assert_eq!(lines[2].fields["amount"], "12");
        let total: usize = lines.iter().map(LogLine::cost).sum();
        assert_eq!(ring.bytes(), total);
    }

    #[test]
    fn restored_lines_keep_their_numbers_and_the_ring_numbers_on() {
        let mut old = LogRing::new(3, 1 << 20);
        for i in 0..5 {
            old.record(&logs(&format!("line {i}\n")), "inv", 1);
        }
        let mut ring = LogRing::new(3, 1 << 20);
        ring.restore(old.since(0, 10));
        assert_eq!((ring.first_seq(), ring.last_seq()), (3, 5));
        ring.record(&logs("next\n"), "inv", 2);
        let seqs: Vec<u64> = ring.since(0, 10).iter().map(|l| l.seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
    }
}
