//! The agent as the API shows it (`GET /v1/agents/{name}` and every answer about one
//! agent): its record, counters, mailbox, health and circuit breaker.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::Agents;
use super::deployed::Deployed;
use super::health::{HealthState, HealthView};
use crate::registry::{AgentRecord, now_ms};

/// An agent as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    /// Its record (flattened).
    #[serde(flatten)]
    pub record: AgentRecord,
    /// Invocations so far (since this node started).
    pub invocations: u64,
    /// Those that did not end `ok`.
    pub failures: u64,
    /// Invocations running now.
    pub running_now: usize,
    /// Invocations waiting in its queue now.
    pub queued_now: usize,
    /// What its mailbox did.
    pub messages: MessageCounters,
    /// `healthy`, `degraded`, `failing` or `stopped`.
    pub health: HealthState,
    /// Its circuit breaker and window (flattened).
    #[serde(flatten)]
    pub supervision_state: HealthView,
    /// What it and its tenant used of egress today, on this node (agents with grants).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_usage: Option<crate::egress::EgressUsage>,
}

/// What an agent's mailbox did (since this node started).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageCounters {
    /// Messages delivered.
    pub delivered: u64,
    /// Failed deliveries that will be tried again.
    pub retried: u64,
    /// Messages parked as dead letters.
    pub dead_lettered: u64,
    /// Waiting in its mailbox (as last counted, plus those sent since).
    pub pending: usize,
}

impl Agents {
    /// The view of deployed agent `d`.
    pub fn view(&self, d: &Deployed) -> AgentView {
        let s = &d.shared;
        let probation = d.record.probation.as_ref().is_some_and(|p| now_ms() < p.until_ms);
        AgentView {
            record: d.record.clone(),
            invocations: s.invocations.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            running_now: s.pool.running() as usize,
            queued_now: s.pool.waiting() as usize,
            messages: MessageCounters {
                delivered: s.messages_delivered.load(Ordering::Relaxed),
                retried: s.messages_retried.load(Ordering::Relaxed),
                dead_lettered: s.messages_dead_lettered.load(Ordering::Relaxed),
                pending: self.mailbox_pending(&d.record.tenant, &d.record.name).unwrap_or(0),
            },
            health: self.health_of(d),
            supervision_state: s.health.view(Instant::now(), probation),
            egress_usage: (!d.record.egress.is_empty()).then(|| self.egress().usage(&d.record.tenant, &d.record.name)),
        }
    }
}
