//! Supervision on the invoke path: every invocation, call and delivery passes the agent's
//! circuit breaker ([`health`](super::health)) before it waits for a slot, and settles it
//! with its outcome; what changes is published (metrics, audit), and an upgrade that fails
//! its probation is rolled back by the host.

use std::sync::Arc;
use std::time::Instant;

use super::Agents;
use super::deployed::Deployed;
use super::health::{Circuit, HealthState, Refused, Settled, Ticket, Transition, Verdict};
use crate::registry::{AgentStatus, AuditEvent, RolledBack, now_ms};
use crate::runtime::Report;

impl Agents {
    /// Pass `d`'s circuit breaker now, or the time until it lets an invocation through.
    pub(super) fn admit<'d>(&self, d: &'d Deployed) -> Result<Ticket<'d>, Refused> {
        let (ticket, transition) = d.shared.health.admit(Instant::now());
        if let Some(t) = transition {
            self.publish(d, Settled { transition: Some(t), health: None, probation_failed: None });
        }
        ticket
    }

    /// Settle `ticket` with the outcome of `report`.
    pub(super) fn settle(&self, d: &Deployed, ticket: Ticket<'_>, report: &Report) {
        let r = &d.record;
        let verdict = Verdict::of(&report.outcome);
        let settled = ticket.settle(&r.supervision, r.probation.as_ref(), verdict, Instant::now(), now_ms());
        if settled != Settled::default() {
            self.publish(d, settled);
        }
    }

    /// A new module runs in `d`: a fresh window and a closed breaker, published.
    pub(super) fn restart(&self, d: &Deployed) {
        let (circuit, health) = d.shared.health.reset();
        if health != HealthState::Healthy && d.record.status == AgentStatus::Running {
            self.metrics.agent_health(&d.metrics, HealthState::Healthy.gauge());
        }
        if circuit != Circuit::Closed {
            self.metrics.circuit_transition(&d.metrics, Circuit::Closed.name(), Circuit::Closed.gauge());
            let detail = format!("closed: a new module runs (was {})", circuit.name());
            self.audit_host(&d.record.tenant, &d.record.name, "circuit_closed", detail);
        }
    }

    /// Metrics, audit and, for a failed probation, the rollback.
    fn publish(&self, d: &Deployed, s: Settled) {
        let (tenant, name) = (&d.record.tenant, &d.record.name);
        if let Some(h) = s.health {
            self.metrics.agent_health(&d.metrics, h.gauge());
        }
        if let Some(Transition { from, to, open_for }) = s.transition {
            self.metrics.circuit_transition(&d.metrics, to.name(), to.gauge());
            let detail = match to {
                Circuit::Open => format!("opened for {} ms (was {})", open_for.as_millis(), from.name()),
                Circuit::HalfOpen => "half-open: one probe goes through".to_owned(),
                Circuit::Closed => "closed: the probe succeeded".to_owned(),
            };
            tracing::info!(%tenant, agent = %name, circuit = to.name(), "{detail}");
            self.audit_host(tenant, name, &format!("circuit_{}", to.name()), detail);
        }
        if let Some((failures, n)) = s.probation_failed
            && let Some(me) = self.this.get().and_then(std::sync::Weak::upgrade)
        {
            let reason = format!(
                "probation failed: {failures} of {n} invocations failed, over the ratio of {}",
                d.record.probation.as_ref().map_or(0.0, |p| p.failure_ratio)
            );
            let (tenant, name, module) = (tenant.clone(), name.clone(), d.record.module.clone());
            tokio::spawn(async move { me.roll_back_failed(&tenant, &name, &module, reason).await });
        }
    }

    /// Roll `tenant/name` back from `module`, which failed its probation, if it still runs it.
    async fn roll_back_failed(self: Arc<Self>, tenant: &str, name: &str, module: &str, reason: String) {
        let t = match self.tenants.get(tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(%tenant, agent = %name, error = %e, "automatic rollback: reading the tenant failed");
                return;
            }
        };
        let note = RolledBack {
            at_ms: now_ms(),
            from_module: module.to_owned(),
            to_module: String::new(),
            reason: reason.clone(),
        };
        match self.roll_back(&t, name, Some(note)).await {
            Ok(d) => {
                let to = &d.record.module;
                tracing::warn!(%tenant, agent = %name, from = %module, %to, "{reason}; rolled back");
                self.audit_host(tenant, name, "rollback", format!("{reason}; rolled back from {module} to {to}"));
            }
            Err(e) => tracing::error!(%tenant, agent = %name, error = %e, "automatic rollback failed"),
        }
    }

    /// The health an agent shows: stopped, or what its window and breaker say.
    pub fn health_of(&self, d: &Deployed) -> HealthState {
        match d.record.status {
            AgentStatus::Stopped => HealthState::Stopped,
            AgentStatus::Running => d.shared.health.state(),
        }
    }

    /// Append an audit event for what the host did to `tenant/name` by itself (in the
    /// background: the invoke path does not wait for the store).
    fn audit_host(&self, tenant: &str, name: &str, action: &str, detail: String) {
        let (tenants, registry) = (self.tenants.clone(), self.registry.clone());
        let mut event = AuditEvent {
            seq: 0,
            time_ms: now_ms(),
            actor: "host".into(),
            tenant: tenant.to_owned(),
            tenant_id: String::new(),
            action: action.to_owned(),
            target: format!("/v1/agents/{name}"),
            outcome: 0,
            detail,
        };
        tokio::spawn(async move {
            if let Ok(Some(t)) = tenants.get(&event.tenant).await {
                event.tenant_id = t.id.clone();
            }
            if let Err(e) = registry.audit(&event).await {
                tracing::error!(error = %e, "cannot append an audit event");
            }
        });
    }
}
