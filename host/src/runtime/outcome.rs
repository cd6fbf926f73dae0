//! Typed outcomes of an invocation, and how a wasmtime error maps onto them.

use std::time::Duration;

use serde::Serialize;
use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::I32Exit;

use super::limiter::LimitExceeded;
use crate::capabilities::HostCallLimit;

/// How an invocation ended. Every variant leaves the host up and the next invocation working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `handle` returned a value (or nothing).
    Ok {
        /// The bytes returned, if any.
        #[serde(skip)]
        output: Option<Vec<u8>>,
    },
    /// `handle` returned the agent's own error value.
    AgentError {
        /// The agent's stable code.
        code: String,
        /// The agent's message.
        message: String,
    },
    /// The guest trapped.
    Trap {
        /// Short stable name of the trap (`unreachable`, `stack_overflow`, ...).
        kind: String,
        /// What happened, with the last line the guest printed to stderr when there is one.
        message: String,
        /// A short wasm backtrace, innermost frame first.
        backtrace: Vec<String>,
    },
    /// The fuel budget ran out.
    FuelExhausted {
        /// The budget.
        limit: u64,
    },
    /// Linear memory or a table would have grown past its limit.
    MemoryLimit {
        /// What was refused.
        message: String,
    },
    /// The wall-clock deadline passed.
    DeadlineExceeded {
        /// The deadline, in milliseconds.
        limit_ms: u64,
    },
    /// `handle` returned more bytes than allowed.
    OutputTooLarge {
        /// Bytes returned.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The guest made more host calls than allowed.
    HostCallLimit {
        /// The limit.
        limit: u64,
    },
    /// The guest called WASI `exit` with a failure (`exit(0)` is `ok`, without output).
    Exit {
        /// The exit code: 1 for WASI 0.2's `exit(err)`, which is what `std::process::exit`
        /// with any non-zero code becomes in guests built for `wasm32-wasip2`.
        code: i32,
    },
}

/// Most bytes of an agent error's `code`, and of its `message`, that the host keeps and
/// echoes (in the 422 body, logs, dead letters, a caller's `agent(...)` error).
pub const MAX_AGENT_ERROR_BYTES: usize = 4096;

impl Outcome {
    /// The agent's own error, its code and message each cut to [`MAX_AGENT_ERROR_BYTES`]
    /// (a cut one ends with a note saying how long it was).
    pub fn agent_error(code: String, message: String) -> Outcome {
        Outcome::AgentError { code: cap_agent_text(code), message: cap_agent_text(message) }
    }

    /// The stable code of this outcome, as used in errors, metrics and the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::AgentError { .. } => "agent_error",
            Outcome::Trap { .. } => "trap",
            Outcome::FuelExhausted { .. } => "fuel_exhausted",
            Outcome::MemoryLimit { .. } => "memory_limit",
            Outcome::DeadlineExceeded { .. } => "deadline_exceeded",
            Outcome::OutputTooLarge { .. } => "output_too_large",
            Outcome::HostCallLimit { .. } => "host_call_limit",
            Outcome::Exit { .. } => "exit",
        }
    }

    /// Whether the invocation succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }

    /// The output of a successful invocation.
    pub fn output(&self) -> Option<&[u8]> {
        match self {
            Outcome::Ok { output } => output.as_deref(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code();
        match self {
            Outcome::Ok { output } => {
                write!(f, "{code}: {} bytes", output.as_ref().map_or(0, Vec::len))
            }
            Outcome::AgentError { code: c, message } => write!(f, "{code}: {c}: {message}"),
            Outcome::Trap { kind, message, backtrace } => {
                write!(f, "{code}: {kind}: {message}")?;
                if let Some(top) = backtrace.first() {
                    write!(f, " (at {top})")?;
                }
                Ok(())
            }
            Outcome::FuelExhausted { limit } => write!(f, "{code}: used all {limit} units of fuel"),
            Outcome::MemoryLimit { message } => write!(f, "{code}: {message}"),
            Outcome::DeadlineExceeded { limit_ms } => write!(f, "{code}: ran longer than {limit_ms} ms"),
            Outcome::OutputTooLarge { size, limit } => {
                write!(f, "{code}: returned {size} bytes, over the limit of {limit}")
            }
            Outcome::HostCallLimit { limit } => write!(f, "{code}: made more than {limit} host calls"),
            Outcome::Exit { code: status } => write!(f, "{code}: the agent exited with code {status}"),
        }
    }
}

fn cap_agent_text(text: String) -> String {
    if text.len() <= MAX_AGENT_ERROR_BYTES {
        return text;
    }
    let mut end = MAX_AGENT_ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (truncated: {} bytes)", &text[..end], text.len())
}

/// What one invocation consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Fuel burned.
    pub fuel_used: u64,
    /// Highest total linear memory, in bytes.
    pub peak_memory: u64,
    /// Wall time from sandbox creation to the end of the call.
    #[serde(serialize_with = "micros")]
    pub wall_time: Duration,
    /// Calls to Cortex imports.
    pub host_calls: u64,
    /// Calls per interface, indexed by `capabilities::Interface`.
    pub host_calls_by_interface: [u64; 5],
    /// Bytes passed in.
    pub bytes_in: u64,
    /// Bytes returned.
    pub bytes_out: u64,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Fields of the sandbox needed to classify a failure.
pub(crate) struct FailureContext<'a> {
    pub fuel_limit: u64,
    pub timeout: Duration,
    pub memory_exceeded: Option<&'a LimitExceeded>,
    pub stderr_tail: Option<String>,
}

const BACKTRACE_FRAMES: usize = 8;

fn trap_kind(trap: Trap) -> &'static str {
    match trap {
        Trap::StackOverflow => "stack_overflow",
        Trap::MemoryOutOfBounds => "memory_out_of_bounds",
        Trap::HeapMisaligned => "heap_misaligned",
        Trap::TableOutOfBounds => "table_out_of_bounds",
        Trap::IndirectCallToNull => "indirect_call_to_null",
        Trap::BadSignature => "bad_signature",
        Trap::IntegerOverflow => "integer_overflow",
        Trap::IntegerDivisionByZero => "integer_division_by_zero",
        Trap::BadConversionToInteger => "bad_conversion_to_integer",
        Trap::UnreachableCodeReached => "unreachable",
        Trap::Interrupt => "interrupt",
        Trap::OutOfFuel => "out_of_fuel",
        _ => "other",
    }
}

fn backtrace_of(err: &wasmtime::Error) -> Vec<String> {
    let Some(bt) = err.downcast_ref::<WasmBacktrace>() else { return Vec::new() };
    bt.frames()
        .iter()
        .take(BACKTRACE_FRAMES)
        .map(|frame| {
            let module = frame.module().name().unwrap_or("<module>");
            match frame.func_name() {
                Some(name) => format!("{module}!{name}"),
                None => format!("{module}!<func {}>", frame.func_index()),
            }
        })
        .collect()
}

/// Map an error out of instantiation or a call to its typed outcome.
pub(crate) fn classify(err: &wasmtime::Error, cx: FailureContext<'_>) -> Outcome {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Outcome::Ok { output: None },
            code => Outcome::Exit { code },
        };
    }
    if let Some(limit) = err.downcast_ref::<HostCallLimit>() {
        return Outcome::HostCallLimit { limit: limit.0 };
    }
    if let Some(e) = err.downcast_ref::<LimitExceeded>().or(cx.memory_exceeded) {
        return Outcome::MemoryLimit { message: e.to_string() };
    }
    let timeout_ms = u64::try_from(cx.timeout.as_millis()).unwrap_or(u64::MAX);
    let (kind, message) = match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return Outcome::FuelExhausted { limit: cx.fuel_limit },
        Some(Trap::Interrupt) => return Outcome::DeadlineExceeded { limit_ms: timeout_ms },
        Some(trap) => (trap_kind(*trap).to_owned(), trap.to_string()),
        None => ("host".to_owned(), format!("{err:#}")),
    };
    let message = match cx.stderr_tail {
        Some(tail) => format!("{message}; stderr: {tail}"),
        None => message,
    };
    Outcome::Trap { kind, message, backtrace: backtrace_of(err) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_errors_are_cut_to_the_cap_on_a_char_boundary() {
        let Outcome::AgentError { code, message } = Outcome::agent_error("c".into(), "é".repeat(10_000)) else {
            unreachable!()
        };
        assert_eq!(code, "c");
        assert!(message.len() < MAX_AGENT_ERROR_BYTES + 64, "{}", message.len());
        assert!(message.ends_with("... (truncated: 20000 bytes)"), "{}", &message[message.len() - 40..]);
    }
}
