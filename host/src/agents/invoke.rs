//! The one invoke core: the limits and sandbox context of a deployed agent, and the run of
//! one of its exports, counted. HTTP invocations ([`Agents::invoke`]), agent-to-agent calls
//! and background deliveries all end in `Agents::run`.
//!
//! An invocation's deadline is an argument: the earliest of its HTTP request's deadline,
//! its caller's, and its own timeout (applied by the runtime) wins. It does not depend on
//! messaging.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Agents;
use super::deployed::Deployed;
use super::error::{AgentsError, AgentsResult};
use super::health::Ticket;
use super::pool::Refused;
use super::tenants::CachedTenant;
use crate::capabilities::MessagingLink;
use crate::registry::{AgentRecord, Quotas};
use crate::runtime::{AgentContext, Export, Limits, Module, Report};

impl Agents {
    /// The effective limits of an agent: server defaults, lowered by the agent's own limits
    /// and capped by its tenant's quotas.
    pub fn limits_for(&self, record: &AgentRecord, q: &Quotas) -> Limits {
        let mut l = self.config.limits.clone();
        l.fuel = record.limits.fuel.unwrap_or(l.fuel).min(q.max_fuel);
        l.memory_bytes = record.limits.memory_bytes.unwrap_or(l.memory_bytes).min(q.max_memory_bytes);
        let timeout_ms = record.limits.timeout_ms.map_or(l.timeout, Duration::from_millis);
        l.timeout = timeout_ms.min(Duration::from_millis(q.max_timeout_ms));
        l
    }

    /// The sandbox context of an agent, without messaging: for `init` (which may fail and
    /// be undone, so it cannot reach other agents) and as the prepared base of a deployed
    /// agent's context.
    pub fn context(&self, record: &AgentRecord, q: &Quotas) -> AgentContext {
        AgentContext {
            stored_bytes_quota: Some(q.stored_bytes),
            edges_quota: Some(q.edges),
            egress: Some(self.egress_link(record, q)),
            ..AgentContext::new(&record.tenant, &record.name, record.config.clone(), self.registry.store().clone())
        }
    }

    /// The egress of `record`: its grants (as checked at deploy; one that no longer
    /// parses is left out) through the node's service, with its tenant's quotas.
    fn egress_link(&self, record: &AgentRecord, q: &Quotas) -> crate::egress::EgressLink {
        let grants: Vec<crate::egress::Grant> = record.egress.iter().filter_map(|g| g.parse().ok()).collect();
        crate::egress::EgressLink {
            service: self.egress(),
            grants: grants.into(),
            quotas: crate::egress::EgressQuotas::of(q),
            allow: None,
        }
    }

    /// The sandbox context of a deployed agent invoked from outside: its prepared parts,
    /// no allocation.
    pub fn deployed_context(&self, d: &Deployed, q: &Quotas) -> AgentContext {
        self.deployed_context_until(d, q, None)
    }

    /// [`Self::deployed_context`] for an invocation that must end by `deadline` (its
    /// request's, if any), whatever its own timeout; the agents it calls end by then too.
    pub fn deployed_context_until(&self, d: &Deployed, q: &Quotas, deadline: Option<Instant>) -> AgentContext {
        self.deployed_context_with(d, q, self.no_callers.clone(), deadline)
    }

    /// The context of a deployed agent called by `callers` (outermost first), within
    /// `deadline`.
    pub(super) fn deployed_context_with(
        &self,
        d: &Deployed,
        q: &Quotas,
        callers: Arc<[Arc<str>]>,
        deadline: Option<Instant>,
    ) -> AgentContext {
        let mut c = d.base.clone();
        c.stored_bytes_quota = Some(q.stored_bytes);
        c.edges_quota = Some(q.edges);
        c.messaging = self.mesh.get().map(|m| MessagingLink { messenger: m.clone(), callers });
        c.deadline = deadline;
        if let Some(link) = c.egress.as_mut().filter(|l| !l.grants.is_empty()) {
            link.quotas = crate::egress::EgressQuotas::of(q);
            link.service = self.egress();
        }
        c
    }

    /// Run `export` of deployed agent `d` of tenant `t` once, by `deadline` at the latest,
    /// as called by `callers`, through its circuit breaker's `ticket`; counted like every
    /// invocation. It waits for one of the node's guest slots in its tenant's queue; a call
    /// from another agent runs on its caller's slot.
    pub(super) async fn run(
        &self,
        d: &Deployed,
        t: &CachedTenant,
        callers: Arc<[Arc<str>]>,
        deadline: Option<Instant>,
        export: Export<'_>,
        ticket: Ticket<'_>,
    ) -> Report {
        self.run_with(d, t, callers, deadline, export, ticket, &[]).await
    }

    /// [`Self::run`] with `extra` configuration entries the agent reads with `config` for
    /// this invocation only (a workflow step's run id, step id and attempt).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_with(
        &self,
        d: &Deployed,
        t: &CachedTenant,
        callers: Arc<[Arc<str>]>,
        deadline: Option<Instant>,
        export: Export<'_>,
        ticket: Ticket<'_>,
        extra: &[(&str, String)],
    ) -> Report {
        let q = &t.quotas;
        let nested = !callers.is_empty();
        let mut ctx = self.deployed_context_with(d, q, callers, deadline);
        if let Some(link) = ctx.egress.as_mut() {
            link.allow = t.allow_list.clone();
        }
        if !extra.is_empty() {
            let mut config = ctx.base.config.clone();
            for (k, v) in extra {
                config.insert((*k).to_owned(), v.clone());
            }
            ctx.base = Arc::new(crate::runtime::AgentBase {
                scope: ctx.base.scope.clone(),
                config,
                store: ctx.base.store.clone(),
            });
        }
        let limits = self.limits_for(&d.record, q);
        let call = self.runtime.call(&d.module, &ctx, &limits, export);
        let report =
            if nested { call.await } else { self.tenants.scheduler.run(&t.lane, deadline, limits.timeout, call).await };
        self.account(d, &report, export);
        self.settle(d, ticket, &report);
        report
    }

    /// Admit an invocation from outside of `d` (of tenant `t`), before its input is read:
    /// the agent runs (409 `agent_stopped`), its circuit breaker lets it through
    /// (`circuit_open` at once while open) and the tenant's rate quota has a token
    /// (`rate_limited`). A refused invocation spends nothing: a stopped agent or an open
    /// breaker takes no rate token. The ticket goes to [`Self::invoke`]; dropped, it gives
    /// a half-open breaker's probe back.
    pub fn admit_invocation<'d>(&self, t: &CachedTenant, d: &'d Deployed) -> AgentsResult<Ticket<'d>> {
        let name = &d.record.name;
        if !d.is_running() {
            return Err(AgentsError::Conflict { code: "agent_stopped", message: format!("agent {name:?} is stopped") });
        }
        let ticket = self.admit(d).map_err(|r| AgentsError::CircuitOpen {
            message: format!(
                "the circuit breaker of agent {name:?} is open after its failures; retry in {} ms",
                r.retry_after.as_millis()
            ),
            retry_after: u64::try_from(r.retry_after.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1),
        })?;
        t.limiter.take().map_err(|retry_after| {
            self.metrics.refused(&t.name, "rate_limited");
            AgentsError::OverQuota {
                code: "rate_limited",
                message: format!("over {} invocations per second", t.quotas.invocations_per_second),
                retry_after,
            }
        })?;
        Ok(ticket)
    }

    /// An invocation from outside of `d` (of tenant `t`), admitted by
    /// [`Self::admit_invocation`] (`ticket`), with `input`: the tenant's concurrency quota
    /// and a slot of the agent's pool (waiting in its queue if need be), then
    /// `handle(input)`, ending by `deadline` (the request's) if that comes before the
    /// agent's own timeout.
    pub async fn invoke(
        &self,
        t: &CachedTenant,
        d: &Deployed,
        ticket: Ticket<'_>,
        input: &[u8],
        deadline: Option<Instant>,
    ) -> AgentsResult<Report> {
        self.invoke_with(t, d, ticket, input, deadline, &[]).await
    }

    /// [`Self::invoke`] with `extra` configuration entries for this invocation only (see
    /// [`Self::run_with`]): how a workflow step tells its agent its run id, step id and
    /// attempt.
    pub async fn invoke_with(
        &self,
        t: &CachedTenant,
        d: &Deployed,
        ticket: Ticket<'_>,
        input: &[u8],
        deadline: Option<Instant>,
        extra: &[(&str, String)],
    ) -> AgentsResult<Report> {
        let name = &d.record.name;
        let Some(_tenant_slot) = t.limiter.enter() else {
            self.metrics.refused(&t.name, "concurrency_quota");
            return Err(AgentsError::OverQuota {
                code: "concurrency_quota",
                message: format!("over {} concurrent invocations", t.quotas.concurrent_invocations),
                retry_after: 1,
            });
        };
        let _slot = d.shared.pool.enter(deadline).await.map_err(|refused| match refused {
            Refused::Full => AgentsError::PoolFull(format!(
                "agent {name:?} runs {} invocations and {} more wait",
                d.record.max_concurrency, d.record.queue
            )),
            Refused::Timeout => AgentsError::QueueTimeout(format!(
                "agent {name:?} had no free slot within {} ms (or the request's deadline)",
                d.record.queue_timeout_ms
            )),
        })?;
        Ok(self.run_with(d, t, self.no_callers.clone(), deadline, Export::Handle(input), ticket, extra).await)
    }

    /// Count an invocation of `export` of `d`: counters, logs, metrics.
    pub fn account(&self, d: &Deployed, report: &Report, export: Export<'_>) {
        d.shared.invocations.fetch_add(1, Ordering::Relaxed);
        if !report.outcome.is_ok() {
            d.shared.failures.fetch_add(1, Ordering::Relaxed);
        }
        d.shared.record_invocation(report, export);
        self.metrics.invocation_of(&d.metrics, report);
        self.cluster.add_wasm_time(report.stats.wall_time);
    }

    /// Run `init` with `record`'s config on `module`; an error if it does not succeed.
    ///
    /// What `init` wrote goes to the agent's log ring when the agent is deployed (a config
    /// change, an upgrade); on a first deploy the caller records the returned report once
    /// the agent is installed.
    pub async fn run_init(&self, module: &Module, record: &AgentRecord, q: &Quotas) -> AgentsResult<Report> {
        let config: Vec<(String, String)> = record.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let limits = self.limits_for(record, q);
        // Without messaging: its calls answer `unavailable`. Its document and graph writes
        // are buffered (at most its memory limit of them) and committed only if it succeeds.
        let mut ctx = self.context(record, q);
        let max_buffered = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
        let overlay =
            Arc::new(crate::store::Overlay::new(ctx.base.store.clone(), ctx.base.scope.clone(), max_buffered));
        ctx.base = Arc::new(crate::runtime::AgentBase {
            scope: ctx.base.scope.clone(),
            config: ctx.base.config.clone(),
            store: overlay.clone(),
        });
        let report = self.runtime.call(module, &ctx, &limits, Export::Init(&config)).await;
        if let Some(d) = self.get(&record.tenant, &record.name) {
            d.shared.record_logs(&report);
        }
        if let Some(other) = Some(&report.outcome).filter(|o| !o.is_ok()) {
            return Err(AgentsError::Init { code: other.code().to_owned(), message: format!("init failed: {other}") });
        }
        let quota = crate::store::Quota { bytes: ctx.stored_bytes_quota, edges: ctx.edges_quota };
        match overlay.commit(quota).await {
            Ok(()) => Ok(report),
            Err(crate::store::StoreError::QuotaExceeded(m)) => {
                Err(AgentsError::Init { code: "quota_exceeded".into(), message: format!("init's writes: {m}") })
            }
            Err(crate::store::StoreError::Conflict { .. }) => Err(AgentsError::Init {
                code: "conflict".into(),
                message: "init's writes: a document init read was changed meanwhile; nothing was written".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
