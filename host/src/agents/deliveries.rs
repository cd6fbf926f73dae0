//! Background deliveries: change batches to watching agents and messages from mailboxes,
//! run like invocations of the tenant (its quotas, the agent's pool, counted), and the
//! [`Host`] the coordination tasks deliver through.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Agents;
use crate::coordination::{Delivery, Host};
use crate::runtime::{Export, Outcome};
use crate::store::{ChangeEvent, Store};

impl Agents {
    /// Run `on-change(events)` of a deployed, running agent once, counted like an
    /// invocation (pool, counters, logs, metrics).
    pub async fn deliver_changes(&self, tenant: &str, name: &str, events: &[ChangeEvent]) -> Delivery {
        self.run_background(tenant, name, Export::OnChange(events)).await
    }

    /// Run `handle(body)` of a deployed, running agent once for a message from its
    /// mailbox, counted like an invocation.
    pub async fn deliver_message(&self, tenant: &str, name: &str, body: &[u8]) -> Delivery {
        self.run_background(tenant, name, Export::Handle(body)).await
    }

    async fn run_background(&self, tenant: &str, name: &str, export: Export<'_>) -> Delivery {
        let Some(d) = self.get(tenant, name) else { return Delivery::Gone };
        if !d.is_running() {
            return Delivery::Gone;
        }
        let t = match self.tenants.get(tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => return Delivery::Gone,
            Err(e) => {
                // Not the agent's failure: try again later without using up an attempt.
                tracing::warn!(%tenant, agent = %name, error = %e, "delivery: reading the tenant failed");
                return Delivery::Throttled(Duration::from_millis(200));
            }
        };
        // Deliveries are invocations of the tenant: they count against its rate and
        // concurrency quotas, and wait (without using up a retry) while those are spent.
        // The wait lets the bucket refill for a few deliveries, so that a backlog is not
        // re-read for every single token.
        // An open circuit breaker: wait (no attempt used) until it lets one through.
        let ticket = match self.admit(&d) {
            Ok(ticket) => ticket,
            Err(r) => return Delivery::Throttled(r.retry_after.max(Duration::from_millis(10))),
        };
        let quotas = &t.quotas;
        let refill = Duration::from_millis((8_000 / u64::from(quotas.invocations_per_second.max(1))).clamp(20, 1000));
        if t.limiter.take().is_err() {
            self.metrics.refused(tenant, "rate_limited");
            return Delivery::Throttled(refill);
        }
        let Some(_tenant_slot) = t.limiter.enter() else {
            self.metrics.refused(tenant, "concurrency_quota");
            return Delivery::Throttled(Duration::from_millis(20));
        };
        // Waits in the agent's queue like an HTTP invocation; a full queue or a wait that
        // runs out is tried again later without using up an attempt.
        let Ok(_slot) = d.shared.pool.enter(None).await else { return Delivery::Throttled(Duration::from_millis(50)) };
        // Stopped or replaced while waiting for the slot.
        match self.get(tenant, name) {
            Some(now) if now.is_running() => {}
            _ => return Delivery::Gone,
        }
        let report = self.run(&d, &t, self.no_callers.clone(), None, export, ticket).await;
        let message = report.outcome.to_string();
        match report.outcome {
            Outcome::Ok { .. } => Delivery::Delivered,
            Outcome::AgentError { code, message: m } => {
                Delivery::Failed { code: "agent_error".to_owned(), message, agent: Some((code, m)) }
            }
            other => Delivery::Failed { code: other.code().to_owned(), message, agent: None },
        }
    }
}

#[async_trait::async_trait]
impl Host for Agents {
    fn store(&self) -> Arc<dyn Store> {
        self.registry.store().clone()
    }

    async fn deliver(&self, tenant: &str, agent: &str, events: &[ChangeEvent]) -> Delivery {
        self.deliver_changes(tenant, agent, events).await
    }

    fn count(&self, tenant: &str, what: &'static str) {
        self.metrics.change_batch(tenant, what);
    }

    async fn deliver_message(&self, tenant: &str, agent: &str, body: &[u8]) -> Delivery {
        Agents::deliver_message(self, tenant, agent, body).await
    }

    fn task_restarted(&self, kind: &'static str) {
        self.metrics.task_restarted(kind);
    }

    fn count_message(&self, tenant: &str, agent: &str, what: &'static str) {
        self.metrics.message(tenant, what);
        if let Some(d) = self.get(tenant, agent) {
            let c = match what {
                "delivered" => &d.shared.messages_delivered,
                "retried" => &d.shared.messages_retried,
                "dead_lettered" => &d.shared.messages_dead_lettered,
                _ => return,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}
