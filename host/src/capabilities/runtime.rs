//! `cortex:agent/runtime`: identity, configuration, time and structured logs.

use super::bindings::cortex::agent::runtime::{Host, Identity, Level};
use super::logbuf;
use super::{HostState, Interface};

/// Longest message of one log record, in bytes; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 4096;
/// Most fields of one log record.
const MAX_LOG_FIELDS: usize = 32;

impl Host for HostState {
    fn whoami(&mut self) -> wasmtime::Result<Identity> {
        self.calls.charge(Interface::Runtime)?;
        Ok(Identity {
            tenant: self.agent.tenant().to_string(),
            agent: self.agent.agent().to_string(),
            invocation: self.invocation.to_string(),
        })
    }

    fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.calls.charge(Interface::Runtime)?;
        Ok(self.agent.base.config.get(&key).cloned())
    }

    fn config_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        self.calls.charge(Interface::Runtime)?;
        Ok(self.agent.base.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
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
        tracing::debug!(agent = %self.agent.agent(), level = ?level, %message, "agent log");
        self.log.record(level, &message, fields);
        Ok(())
    }
}
