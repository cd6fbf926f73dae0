//! The messenger the `messaging` import calls: durable sends into mailboxes, topic
//! publication, and synchronous calls within the caller's deadline.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use super::Agents;
use super::deployed::key;
use super::pool::Refused;
use crate::capabilities::{AgentError, Caller, MessagingError, Messenger};
use crate::coordination::mailbox;
use crate::names::AgentName;
use crate::runtime::{Export, Outcome};
use crate::store::RecordKind;

impl Agents {
    /// Messages waiting in an agent's mailbox (as its mailbox last counted them, plus those
    /// sent since).
    pub fn mailbox_pending(&self, tenant: &str, name: &str) -> Option<usize> {
        let counters = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        counters.get(&key(tenant, name)).map(|c| c.load(Ordering::Relaxed))
    }

    /// Queue `msg` in its mailbox and wake the mailbox.
    async fn post(self: &Arc<Self>, msg: &crate::registry::MessageRecord) -> Result<(), MessagingError> {
        let k = key(&msg.tenant, &msg.agent);
        let unavailable = |e: crate::store::StoreError| {
            tracing::warn!(tenant = %msg.tenant, agent = %msg.agent, error = %e, "cannot queue a message");
            MessagingError::Unavailable("storage is temporarily unavailable; retry later".into())
        };
        // Queued messages count in the tenant's stored bytes (checked in the write).
        let quota = match self.tenants.get(&msg.tenant).await {
            Ok(Some(t)) => crate::store::Quota { bytes: Some(t.quotas.stored_bytes), edges: None },
            Ok(None) => return Err(MessagingError::UnknownAgent(format!("no agent {:?} in this tenant", msg.agent))),
            Err(e) => {
                tracing::warn!(tenant = %msg.tenant, error = %e, "cannot read the tenant to queue a message");
                return Err(MessagingError::Unavailable("storage is temporarily unavailable; retry later".into()));
            }
        };
        let known = self.pending.lock().unwrap_or_else(PoisonError::into_inner).get(&k).cloned();
        let counter = match known {
            Some(c) => c,
            None => {
                // First message this node sends there (a stopped agent, or a fresh start):
                // count what waits in the store once.
                let prefix = mailbox::mailbox_prefix(&msg.tenant, &msg.agent);
                let n =
                    self.registry.store().record_list(RecordKind::Message, &prefix).await.map_err(unavailable)?.len();
                let mut counters = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let c = counters.entry(k.clone()).or_default();
                c.fetch_max(n, Ordering::Relaxed);
                c.clone()
            }
        };
        let max = self.mailbox_settings.max_pending;
        // Reserve the place first, so that concurrent senders cannot all pass the check.
        if counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_err() {
            return Err(MessagingError::Unavailable(format!(
                "the mailbox of {:?} is full ({max} messages); retry later",
                msg.agent
            )));
        }
        // Written with the messages of concurrent senders, in one transaction.
        let fresh = match mailbox::enqueue_grouped(&self.message_writer, msg, quota).await {
            Ok(fresh) => fresh,
            Err(crate::store::StoreError::QuotaExceeded(m)) => {
                counter.fetch_sub(1, Ordering::Relaxed);
                return Err(MessagingError::TooLarge(m));
            }
            Err(e) => {
                counter.fetch_sub(1, Ordering::Relaxed);
                return Err(unavailable(e));
            }
        };
        if fresh {
            self.metrics.message(&msg.tenant, "sent");
            self.wake_mailbox(&msg.tenant, &msg.agent);
        } else {
            // The waiting copy holds the place already.
            counter.fetch_sub(1, Ordering::Relaxed);
            self.metrics.message(&msg.tenant, "deduplicated");
        }
        Ok(())
    }

    /// `messaging.call`: run `to`'s `handle(body)` within the caller's deadline.
    async fn call_agent(&self, from: &Caller, to: &str, body: &[u8]) -> Result<Option<Vec<u8>>, MessagingError> {
        if from.in_chain(to) {
            return Err(MessagingError::DepthExceeded);
        }
        if from.depth() >= self.config.messaging.max_call_depth as usize {
            return Err(MessagingError::DepthExceeded);
        }
        let d = self
            .get(&from.tenant, to)
            .ok_or_else(|| MessagingError::UnknownAgent(format!("no agent {to:?} in this tenant")))?;
        if !d.is_running() {
            return Err(MessagingError::Unavailable(format!("agent {to:?} is stopped")));
        }
        let t = match self.tenants.get(&from.tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(MessagingError::UnknownAgent(format!("no agent {to:?} in this tenant"))),
            Err(e) => {
                tracing::warn!(tenant = %from.tenant, error = %e, "call: reading the tenant failed");
                return Err(MessagingError::Unavailable("storage is temporarily unavailable; retry later".into()));
            }
        };
        if std::time::Instant::now() >= from.deadline {
            return Err(MessagingError::DeadlineExceeded);
        }
        let ticket = self.admit(&d).map_err(|r| {
            MessagingError::Unavailable(format!(
                "circuit_open: the circuit breaker of agent {to:?} is open after its failures; retry in {} ms",
                r.retry_after.as_millis()
            ))
        })?;
        let quotas = &t.quotas;
        if t.limiter.take().is_err() {
            self.metrics.refused(&from.tenant, "rate_limited");
            return Err(MessagingError::Unavailable(format!(
                "over the tenant's {} invocations per second; retry later",
                quotas.invocations_per_second
            )));
        }
        let Some(_tenant_slot) = t.limiter.enter() else {
            self.metrics.refused(&from.tenant, "concurrency_quota");
            return Err(MessagingError::Unavailable(format!(
                "over the tenant's {} concurrent invocations; retry later",
                quotas.concurrent_invocations
            )));
        };
        let _slot = match d.shared.pool.enter(Some(from.deadline)).await {
            Ok(slot) => slot,
            Err(Refused::Full) => {
                return Err(MessagingError::Unavailable(format!(
                    "agent {to:?} is busy (its queue is full); retry later"
                )));
            }
            Err(Refused::Timeout) if std::time::Instant::now() >= from.deadline => {
                return Err(MessagingError::DeadlineExceeded);
            }
            Err(Refused::Timeout) => {
                return Err(MessagingError::Unavailable(format!(
                    "agent {to:?} is busy (no free slot in time); retry later"
                )));
            }
        };
        // The callee ends by its caller's deadline at the latest.
        let report = self.run(&d, &t, from.chain_for_callee(), Some(from.deadline), Export::Handle(body), ticket).await;
        match report.outcome {
            Outcome::Ok { output } => Ok(output),
            Outcome::AgentError { code, message } => Err(MessagingError::Agent(AgentError { code, message })),
            Outcome::DeadlineExceeded { .. } => Err(MessagingError::DeadlineExceeded),
            other => {
                Err(MessagingError::Agent(AgentError { code: other.code().to_owned(), message: other.to_string() }))
            }
        }
    }
}

/// The messenger invocations get: the agents, held weakly so that they can be dropped.
pub(super) struct Mesh(pub(super) Weak<Agents>);

impl Mesh {
    fn agents(&self) -> Result<Arc<Agents>, MessagingError> {
        self.0.upgrade().ok_or_else(|| MessagingError::Unavailable("the host is shutting down".into()))
    }
}

#[async_trait::async_trait]
impl Messenger for Mesh {
    async fn send(
        &self,
        from: &Caller,
        to: &AgentName,
        body: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> Result<(), MessagingError> {
        let agents = self.agents()?;
        if agents.get(&from.tenant, to).is_none() {
            return Err(MessagingError::UnknownAgent(format!("no agent {to:?} in this tenant")));
        }
        let msg = mailbox::new_message(&from.tenant, to, &from.agent, None, &body, idempotency_key.as_deref());
        agents.post(&msg).await
    }

    async fn call(&self, from: &Caller, to: &AgentName, body: Vec<u8>) -> Result<Option<Vec<u8>>, MessagingError> {
        self.agents()?.call_agent(from, to, &body).await
    }

    async fn publish(&self, from: &Caller, topic: &str, body: Vec<u8>) -> Result<(), MessagingError> {
        let agents = self.agents()?;
        let subscribers: Vec<String> = agents
            .of(&from.tenant)
            .into_values()
            .filter(|d| d.record.subscriptions.iter().any(|t| t == topic))
            .map(|d| d.record.name.clone())
            .collect();
        // Every subscriber gets its copy even if another's mailbox refuses it; the first
        // refusal is reported.
        let mut first_error = None;
        for to in subscribers {
            let msg = mailbox::new_message(&from.tenant, &to, &from.agent, Some(topic), &body, None);
            if let Err(e) = agents.post(&msg).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
