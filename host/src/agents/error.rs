//! What a lifecycle operation can refuse, typed; the API maps it to its problem responses
//! in one `From`.

use crate::runtime::LoadError;
use crate::store::StoreError;

/// A lifecycle operation that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// The request names something malformed (a limit over the quota, a bad watch).
    #[error("{0}")]
    Invalid(String),
    /// The request is refused for a reason with its own stable code (`invalid_profile`,
    /// `over_quota`, `unknown_profile`).
    #[error("{message}")]
    Refused {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
    },
    /// No such agent or module in the tenant.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with the agent's current state (`already_exists`, `agent_stopped`, ...).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
    },
    /// Over a tenant quota or rate (`agent_quota`, `rate_limited`, `concurrency_quota`).
    #[error("{message}")]
    OverQuota {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The agent's circuit breaker is open: nothing ran.
    #[error("{message}")]
    CircuitOpen {
        /// Detail.
        message: String,
        /// Seconds until a retry may be let through (rounded up).
        retry_after: u64,
    },
    /// The agent's pool and its queue are full.
    #[error("{0}")]
    PoolFull(String),
    /// The wait in the agent's queue ran out (its `queue_timeout_ms` or the deadline).
    #[error("{0}")]
    QueueTimeout(String),
    /// The agent's `init` refused its configuration.
    #[error("{message}")]
    Init {
        /// The outcome code of the init call.
        code: String,
        /// Detail.
        message: String,
    },
    /// The module was refused at load.
    #[error(transparent)]
    Module(#[from] LoadError),
    /// A module's bytes could not be read from the store (missing or altered chunks).
    #[error(transparent)]
    ModuleBytes(#[from] super::modules::ModuleBytesError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host failed (a module file that cannot be written or read).
    #[error("{0}")]
    Internal(String),
}

/// A lifecycle result.
pub type AgentsResult<T> = Result<T, AgentsError>;
