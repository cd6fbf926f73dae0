//! Who an invocation runs as and what it reaches: built by the host, read by the imports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::MessagingLink;
use crate::store::{self as cstore, Scope};

/// What an agent is and reaches while it is deployed: shared by all its invocations, so
/// that starting one clones a single pointer.
pub struct AgentBase {
    /// Its tenant and name: the scope of every store call it makes.
    pub scope: Scope,
    /// Deploy-time configuration.
    pub config: BTreeMap<String, String>,
    /// Where documents live.
    pub store: Arc<dyn cstore::Store>,
}

/// Who an invocation runs as, and what it can reach. Built by the host, never by a guest.
#[derive(Clone)]
pub struct AgentContext {
    /// The agent, its configuration and its store.
    pub base: Arc<AgentBase>,
    /// Most bytes the tenant may store: documents, edges, queued messages (`None`: no quota).
    pub stored_bytes_quota: Option<u64>,
    /// Most graph edges the tenant may have (`None`: no quota).
    pub edges_quota: Option<u64>,
    /// How the invocation reaches other agents (`None`: messaging answers `unavailable`).
    pub messaging: Option<MessagingLink>,
    /// When this invocation must end at the latest, from outside the agent (its HTTP
    /// request's deadline, its caller's): the agent's own timeout is cut to it. Independent
    /// of messaging: an invocation without a link keeps it.
    pub deadline: Option<Instant>,
    /// Its outbound HTTP: the node's egress service, its grants and its tenant's egress
    /// quotas (`None`: every request is denied).
    pub egress: Option<crate::egress::EgressLink>,
}

impl AgentContext {
    /// Agent `agent` of `tenant` with `config`, its documents in `store`; no storage quota
    /// and no messaging until set.
    pub fn new(tenant: &str, agent: &str, config: BTreeMap<String, String>, store: Arc<dyn cstore::Store>) -> Self {
        Self {
            base: Arc::new(AgentBase { scope: Scope::new(tenant, agent), config, store }),
            stored_bytes_quota: None,
            edges_quota: None,
            messaging: None,
            deadline: None,
            egress: None,
        }
    }

    /// The tenant that owns the agent.
    pub fn tenant(&self) -> &Arc<str> {
        &self.base.scope.tenant
    }

    /// The agent's name.
    pub fn agent(&self) -> &Arc<str> {
        &self.base.scope.agent
    }
}

impl std::fmt::Debug for AgentContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentContext")
            .field("tenant", self.tenant())
            .field("agent", self.agent())
            .finish_non_exhaustive()
    }
}
