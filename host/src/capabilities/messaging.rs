//! `cortex:agent/messaging`: messages between agents of the invocation's tenant.
//!
//! The capability checks what it can without the host (names, sizes) and hands the rest to
//! a [`Messenger`]: the HTTP service implements it with durable mailboxes, synchronous
//! calls and topic subscriptions (see `crate::coordination`). The caller's identity, its
//! call chain and its deadline come from the host, never from the guest, so a guest can
//! only reach agents of its own tenant, and a call can neither outlive its caller nor
//! loop.
//!
//! Without a messenger (`cortex run`, a bare runtime) every call answers `unavailable`.

use std::sync::Arc;
use std::time::Instant;

use super::bindings::cortex::agent::messaging::Host;
use super::{Fault, HostState, Interface};
use crate::names::AgentName;

pub use super::bindings::cortex::agent::messaging::Error as MessagingError;

/// How a messaging call fails: a `messaging.error`, or a trap.
pub type MessagingFault = Fault<MessagingError>;

impl From<MessagingError> for MessagingFault {
    fn from(e: MessagingError) -> Self {
        Fault::Refused(e)
    }
}

/// `name` as the target of a send or call: an agent name (`invalid-argument` if it is not).
fn target(name: &str) -> Result<AgentName, MessagingError> {
    AgentName::parse(name).map_err(|e| MessagingError::InvalidArgument(e.to_string()))
}

/// Whether `topic` is a valid topic name: `[a-z0-9._-]{1,128}`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 128
        && topic.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Who sends: the invocation's tenant and agent, the agents above it in its call chain
/// (outermost first, itself excluded) and when its time runs out.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Tenant of the invocation.
    pub tenant: Arc<str>,
    /// The invoked agent.
    pub agent: Arc<str>,
    /// Agents that called it, outermost first (empty for an invocation from outside).
    pub callers: Arc<[Arc<str>]>,
    /// When the invocation's time is up.
    pub deadline: Instant,
}

impl Caller {
    /// Depth of this invocation: 1 for an invocation from outside.
    pub fn depth(&self) -> usize {
        self.callers.len() + 1
    }

    /// Whether `agent` is this invocation's agent or one of its callers.
    pub fn in_chain(&self, agent: &str) -> bool {
        &*self.agent == agent || self.callers.iter().any(|a| &**a == agent)
    }

    /// The chain a callee of this invocation sees as its callers.
    pub fn chain_for_callee(&self) -> Arc<[Arc<str>]> {
        self.callers.iter().cloned().chain(std::iter::once(self.agent.clone())).collect()
    }
}

/// Where messages go: implemented by the host service.
#[async_trait::async_trait]
pub trait Messenger: Send + Sync + 'static {
    /// Queue `body` durably for `to`'s `handle`; a repeated `idempotency_key` for the same
    /// target is delivered once.
    async fn send(
        &self,
        from: &Caller,
        to: &AgentName,
        body: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> Result<(), MessagingError>;

    /// Run `to`'s `handle(body)` now, within the caller's deadline, and return its reply.
    async fn call(&self, from: &Caller, to: &AgentName, body: Vec<u8>) -> Result<Option<Vec<u8>>, MessagingError>;

    /// Queue `body` for every agent of the tenant subscribed to `topic`.
    async fn publish(&self, from: &Caller, topic: &str, body: Vec<u8>) -> Result<(), MessagingError>;
}

/// How an invocation reaches other agents: the messenger and its callers. (The deadline is
/// not here: it is the invocation's own, see `AgentContext::deadline`, and reaches a callee
/// as [`Caller::deadline`].)
#[derive(Clone)]
pub struct MessagingLink {
    /// The host's messenger.
    pub messenger: Arc<dyn Messenger>,
    /// Agents above the invocation in its call chain, outermost first.
    pub callers: Arc<[Arc<str>]>,
}

impl std::fmt::Debug for MessagingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingLink").field("callers", &self.callers).finish()
    }
}

/// The messaging state of one invocation.
pub struct MessagingCtx {
    pub(crate) messenger: Option<Arc<dyn Messenger>>,
    pub(crate) caller: Caller,
    pub(crate) max_body: usize,
}

type WitResult<T> = Result<T, MessagingFault>;

impl HostState {
    /// The messaging capability of this invocation (built for each call: few agents send).
    fn messaging(&self) -> MessagingCtx {
        let link = self.agent.messaging.as_ref();
        MessagingCtx {
            messenger: link.map(|l| l.messenger.clone()),
            caller: Caller {
                tenant: self.agent.tenant().clone(),
                agent: self.agent.agent().clone(),
                callers: link.map_or_else(|| Arc::from([]), |l| l.callers.clone()),
                deadline: self.deadline,
            },
            max_body: self.max_message,
        }
    }
}

impl MessagingCtx {
    fn messenger(&self) -> Result<&Arc<dyn Messenger>, MessagingError> {
        self.messenger
            .as_ref()
            .ok_or_else(|| MessagingError::Unavailable("messaging is not available in this host".into()))
    }

    fn check_body(&self, body: &[u8]) -> Result<(), MessagingError> {
        if body.len() > self.max_body {
            return Err(MessagingError::TooLarge(format!(
                "the message is {} bytes, over {}",
                body.len(),
                self.max_body
            )));
        }
        Ok(())
    }
}

impl Host for HostState {
    fn convert_error(&mut self, err: MessagingFault) -> wasmtime::Result<MessagingError> {
        err.into_wit()
    }

    async fn send(&mut self, agent: String, body: Vec<u8>, idempotency_key: Option<String>) -> WitResult<()> {
        self.calls.charge(Interface::Messaging)?;
        let span = crate::telemetry::otel::host_call("messaging", "send");
        traced(span, async move {
            let m = self.messaging();
            let to = target(&agent)?;
            m.check_body(&body)?;
            if let Some(k) = &idempotency_key
                && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
            {
                return Err(MessagingError::InvalidArgument(format!(
                    "an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes, not {}",
                    k.len()
                ))
                .into());
            }
            let messenger = m.messenger()?.clone();
            Ok(messenger.send(&m.caller, &to, body, idempotency_key).await?)
        })
        .await
    }

    async fn call(&mut self, agent: String, body: Vec<u8>) -> WitResult<Option<Vec<u8>>> {
        self.calls.charge(Interface::Messaging)?;
        let span = crate::telemetry::otel::host_call("messaging", "call");
        traced(span, async move {
            let m = self.messaging();
            let to = target(&agent)?;
            m.check_body(&body)?;
            let messenger = m.messenger()?.clone();
            Ok(messenger.call(&m.caller, &to, body).await?)
        })
        .await
    }

    async fn publish(&mut self, topic: String, body: Vec<u8>) -> WitResult<()> {
        self.calls.charge(Interface::Messaging)?;
        let span = crate::telemetry::otel::host_call("messaging", "publish");
        traced(span, async move {
            let m = self.messaging();
            if !valid_topic(&topic) {
                return Err(MessagingError::InvalidArgument(format!(
                    "{topic:?} is not a topic name ([a-z0-9._-]{{1,128}})"
                ))
                .into());
            }
            m.check_body(&body)?;
            let messenger = m.messenger()?.clone();
            Ok(messenger.publish(&m.caller, &topic, body).await?)
        })
        .await
    }
}

/// `f` within `span` (a host call's), typed so that `?` in it converts to the WIT result.
fn traced<T, F: Future<Output = WitResult<T>>>(span: tracing::Span, f: F) -> tracing::instrument::Instrumented<F> {
    tracing::Instrument::instrument(f, span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_agent_names_are_checked() {
        assert!(valid_topic("orders.priced"));
        assert!(valid_topic("a-b_c.9"));
        for bad in ["", "Orders", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
        assert!(target("pricing").is_ok_and(|n| &*n == "pricing"));
        for bad in ["../x", "", "_x", "9x", "X"] {
            let Err(MessagingError::InvalidArgument(m)) = target(bad) else { panic!("{bad:?} accepted") };
            assert!(m.contains("[a-z][a-z0-9-]{0,62}"), "{m}");
        }
    }

    #[test]
    fn the_chain_grows_by_the_caller() {
        let c = Caller {
            tenant: "t".into(),
            agent: "b".into(),
            callers: vec![Arc::<str>::from("a")].into(),
            deadline: Instant::now(),
        };
        assert_eq!(c.depth(), 2);
        assert!(c.in_chain("a") && c.in_chain("b") && !c.in_chain("c"));
        let chain = c.chain_for_callee();
        let next: Vec<&str> = chain.iter().map(|s| &**s).collect();
        assert_eq!(next, ["a", "b"]);
    }
}
