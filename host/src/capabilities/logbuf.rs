//! The agent's bounded log: stdout, stderr and `runtime.log` records of one invocation.
//!
//! Everything the guest writes is kept up to a byte budget; the rest is dropped and the
//! log is marked truncated. Writes never fail, so a chatty guest is not broken by it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Serialize;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Severity of a log record, as in the WIT `runtime.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// A failure.
    Error,
}

/// One structured record from `runtime.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// The message.
    pub message: String,
    /// Key/value fields.
    pub fields: Vec<(String, String)>,
}

/// What an invocation wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Logs {
    /// Bytes written to stdout.
    #[serde(serialize_with = "lossy")]
    pub stdout: Vec<u8>,
    /// Bytes written to stderr.
    #[serde(serialize_with = "lossy")]
    pub stderr: Vec<u8>,
    /// Structured records.
    pub records: Vec<LogRecord>,
    /// Whether anything was dropped for being over the budget.
    pub truncated: bool,
}

fn lossy<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

impl Logs {
    /// What stderr says about a failure, shortened: a Rust panic's location and message
    /// when there is one, else the last non-empty line.
    pub fn stderr_tail(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let summary = match lines.iter().rposition(|l| l.contains("panicked at")) {
            Some(i) => lines[i..].iter().take(2).copied().collect::<Vec<_>>().join(" "),
            None => (*lines.last()?).to_owned(),
        };
        Some(summary.chars().take(240).collect())
    }
}

#[derive(Debug)]
struct Inner {
    budget: usize,
    used: usize,
    logs: Logs,
}

impl Inner {
    /// How many of `want` bytes still fit; marks truncation.
    fn admit(&mut self, want: usize) -> usize {
        let n = want.min(self.budget - self.used);
        if n < want {
            self.logs.truncated = true;
        }
        self.used += n;
        n
    }
}

/// A shared handle on one invocation's log.
#[derive(Debug, Clone)]
pub struct LogSink(Arc<Mutex<Inner>>);

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl LogSink {
    /// An empty log with a budget of `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self(Arc::new(Mutex::new(Inner { budget, used: 0, logs: Logs::default() })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A poisoned lock only means another writer panicked mid-append: the data is
        // still a valid (if partial) log.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn append(&self, stream: Stream, bytes: &[u8]) {
        self.with(|inner| {
            let n = inner.admit(bytes.len());
            let buf = match stream {
                Stream::Stdout => &mut inner.logs.stdout,
                Stream::Stderr => &mut inner.logs.stderr,
            };
            buf.extend_from_slice(&bytes[..n]);
        });
    }

    /// Append a structured record, cut to what fits.
    pub fn record(&self, level: Level, message: &str, fields: Vec<(String, String)>) {
        self.with(|inner| {
            let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let n = inner.admit(size);
            if n == 0 {
                return;
            }
            let message = truncate(message, n);
            let fields = if n == size { fields } else { Vec::new() };
            inner.logs.records.push(LogRecord { level, message, fields });
        });
    }

    /// The log so far.
    pub fn snapshot(&self) -> Logs {
        self.with(|inner| inner.logs.clone())
    }

    /// The guest's stdout, as a WASI stream.
    pub fn stdout(&self) -> Pipe {
        Pipe { sink: self.clone(), stream: Stream::Stdout }
    }

    /// The guest's stderr, as a WASI stream.
    pub fn stderr(&self) -> Pipe {
        Pipe { sink: self.clone(), stream: Stream::Stderr }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A WASI output stream into a [`LogSink`].
#[derive(Debug, Clone)]
pub struct Pipe {
    sink: LogSink,
    stream: Stream,
}

#[async_trait::async_trait]
impl OutputStream for Pipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.append(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: bytes over the budget are dropped, not refused.
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for Pipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Pipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.sink.append(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Pipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Pipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_budget_is_dropped_and_marked() {
        let sink = LogSink::new(10);
        sink.append(Stream::Stdout, b"12345678");
        sink.append(Stream::Stderr, b"abcdef");
        sink.record(Level::Info, "zzz", vec![]);
        let logs = sink.snapshot();
        assert_eq!(logs.stdout, b"12345678");
        assert_eq!(logs.stderr, b"ab");
        assert!(logs.records.is_empty());
        assert!(logs.truncated);
    }

    #[test]
    fn stderr_tail_prefers_the_panic_message() {
        let sink = LogSink::new(1000);
        sink.append(
            Stream::Stderr,
            b"x\nthread '<unnamed>' panicked at src/lib.rs:3:5:\nhostile panic\nnote: run with `RUST_BACKTRACE=1`\n",
        );
        assert_eq!(
            sink.snapshot().stderr_tail().as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:3:5: hostile panic")
        );
    }

    #[test]
    fn stderr_tail_is_the_last_non_empty_line() {
        let sink = LogSink::new(1000);
        sink.append(Stream::Stderr, b"first\nsomething failed\n\n");
        assert_eq!(sink.snapshot().stderr_tail().as_deref(), Some("something failed"));
    }
}
