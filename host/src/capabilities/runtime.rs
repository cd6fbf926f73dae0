//! `cortex:agent/runtime`: identity, configuration, time and structured logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bindings::cortex::agent::runtime::{Host, Identity, Level};
use super::{HostState, Interface};
use crate::runtime::logbuf::{self, LogSink};

/// Longest message of one log record, in bytes; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 4096;
/// Most fields of one log record.
const MAX_LOG_FIELDS: usize = 32;

/// What `runtime` answers from: fixed for the whole invocation.
#[derive(Debug, Clone)]
pub struct RuntimeCtx {
    /// Tenant of the invocation.
    pub tenant: Arc<str>,
    /// Agent of the invocation.
    pub agent: Arc<str>,
    /// Id of the invocation.
    pub invocation: crate::runtime::InvocationId,
    /// The agent's configuration.
    pub config: Arc<BTreeMap<String, String>>,
    /// Where log records go.
    pub log: LogSink,
}

impl Host for HostState {
    fn whoami(&mut self) -> wasmtime::Result<Identity> {
        self.calls.charge(Interface::Runtime)?;
        let r = &self.runtime;
        Ok(Identity { tenant: r.tenant.to_string(), agent: r.agent.to_string(), invocation: r.invocation.to_string() })
    }

    fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.calls.charge(Interface::Runtime)?;
        Ok(self.runtime.config.get(&key).cloned())
    }

    fn config_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        self.calls.charge(Interface::Runtime)?;
        Ok(self.runtime.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.calls.charge(Interface::Runtime)?;
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&mut self, level: Level, message: String, mut fields: Vec<(String, String)>) -> wasmtime::Result<()> {
        self.calls.charge(Interface::Runtime)?;
        let level = match level {
            Level::Trace => logbuf::Level::Trace,
            Level::Debug => logbuf::Level::Debug,
            Level::Info => logbuf::Level::Info,
            Level::Warn => logbuf::Level::Warn,
            Level::Error => logbuf::Level::Error,
        };
        fields.truncate(MAX_LOG_FIELDS);
        let message =
            if message.len() > MAX_LOG_MESSAGE { logbuf::truncate(&message, MAX_LOG_MESSAGE) } else { message };
        tracing::debug!(agent = %self.runtime.agent, level = ?level, %message, "agent log");
        self.runtime.log.record(level, &message, fields);
        Ok(())
    }
}
