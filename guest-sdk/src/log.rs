//! Structured logs, appended to the agent's bounded log by the host.
//!
//! ```no_run
//! use cortex_agent::log;
//!
//! log::info("started");
//! log::log_with(log::Level::Warn, "slow store", &[("collection", "orders"), ("ms", "812")]);
//! ```
//!
//! Messages and fields beyond the host's size limits are truncated, never refused.

pub use crate::bindings::agent::cortex::agent::runtime::Level;

use crate::bindings::agent::cortex::agent::runtime;

/// Logs `message` at `level` with no fields.
pub fn log(level: Level, message: &str) {
    runtime::log(level, message, &[]);
}

/// Logs `message` at `level` with key-value `fields`.
pub fn log_with(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    runtime::log(level, message, &fields);
}

/// Logs `message` at level `trace`.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs `message` at level `debug`.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs `message` at level `info`.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs `message` at level `warn`.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs `message` at level `error`.
pub fn error(message: &str) {
    log(Level::Error, message);
}
