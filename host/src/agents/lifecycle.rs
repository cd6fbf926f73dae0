//! Deploy, config change, upgrade, rollback, stop, start and delete: each checks what it is
//! asked, runs the agent's `init` where the configuration or module changes, writes the
//! record (compare-and-swap) and installs the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Agents;
use super::deployed::Deployed;
use super::error::{AgentsError, AgentsResult};
use super::tenants::CachedTenant;
use crate::coordination;
use crate::names::AgentName;
use crate::registry::{
    AgentLimits, AgentRecord, AgentStatus, Probation, ProfileRecord, RolledBack, Supervision, Tenant, Watch, now_ms,
    scoped,
};
use crate::runtime::Module;
use crate::store::{Quota, RecordKind, RecordOp, StoreError, check_collection, keys::check_prefix};

/// What a deploy asks for (the body of `POST /v1/agents`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// The agent's name (checked when the spec is parsed).
    pub name: AgentName,
    /// One of the tenant's modules: a digest, a unique digest prefix, `name:tag` or `name`
    /// (see [`super::module_ref`]); the agent records the digest it names now.
    pub module: String,
    /// Its configuration, given to `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Its own limits, at most the tenant's quotas; those it leaves out come from its
    /// profile, if it names one.
    #[serde(default)]
    pub limits: AgentLimits,
    /// Invocations at once: from its profile when left out, else 16.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_concurrency: Option<u32>,
    /// Invocations that may wait for a slot.
    #[serde(default = "crate::registry::default_queue")]
    #[schema(maximum = 10_000)]
    pub queue: u32,
    /// How long one may wait, in milliseconds.
    #[serde(default = "crate::registry::default_queue_timeout_ms")]
    #[schema(maximum = 60_000)]
    pub queue_timeout_ms: u64,
    /// Change feeds it takes.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub watches: Vec<Watch>,
    /// Topics it takes.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub subscriptions: Vec<String>,
    /// Its health window and circuit breaker (defaults in [`Supervision`]).
    #[serde(default)]
    pub supervision: Supervision,
    /// The tenant's resource profile whose values fill the limits and concurrency it
    /// leaves out (copied into the agent's record).
    #[serde(default)]
    pub profile: Option<String>,
    /// Where it may send HTTP requests: scheme, host, port and path prefix, methods, and
    /// the tenant secret to put in a header (see "Calling out" in the README).
    #[serde(default)]
    #[schema(max_items = 32)]
    pub egress: Vec<crate::egress::EgressGrant>,
    /// Where `module` was pulled from, when the deploy named an `oci://` reference (set by
    /// the API once it pulled it, never by the body).
    #[serde(skip)]
    pub oci: Option<crate::oci::OciSource>,
}

/// Invocations at once of an agent whose spec and profile say nothing of it.
const DEFAULT_CONCURRENCY: u32 = 16;

/// The limits and concurrency of `spec`, each left out taken from `profile` (`None`: the
/// concurrency is given by neither).
fn with_profile(spec: &DeploySpec, profile: Option<&ProfileRecord>) -> (AgentLimits, Option<u32>) {
    match profile {
        Some(p) => (spec.limits.or(&p.limits), spec.max_concurrency.or(p.max_concurrency)),
        None => (spec.limits.clone(), spec.max_concurrency),
    }
}

/// The concurrency an agent gets: the one its spec or profile gives, which may not exceed
/// the tenant's `concurrent_invocations` quota (400), else the default, lowered to that
/// quota (as every limit is capped by the tenant's quotas).
fn concurrency_within(given: Option<u32>, t: &Tenant) -> AgentsResult<u32> {
    let quota = t.quotas.concurrent_invocations;
    match given {
        Some(v) if v > quota => Err(AgentsError::Invalid(format!(
            "max_concurrency = {v} is over the tenant's quota of {quota} concurrent invocations"
        ))),
        Some(v) => Ok(v),
        None => Ok(DEFAULT_CONCURRENCY.min(quota.max(1))),
    }
}

/// Longest queue of an agent.
pub const MAX_QUEUE: u32 = 10_000;
/// Longest wait in an agent's queue, in milliseconds.
pub const MAX_QUEUE_TIMEOUT_MS: u64 = 60_000;

fn check_queue(spec: &DeploySpec) -> AgentsResult<()> {
    if spec.queue > MAX_QUEUE {
        return Err(AgentsError::Invalid(format!("queue must be 0..={MAX_QUEUE}")));
    }
    if spec.queue_timeout_ms > MAX_QUEUE_TIMEOUT_MS {
        return Err(AgentsError::Invalid(format!("queue_timeout_ms must be 0..={MAX_QUEUE_TIMEOUT_MS}")));
    }
    Ok(())
}

/// Most watches one agent may have.
const MAX_WATCHES: usize = 32;
/// Most topics one agent may subscribe to.
const MAX_SUBSCRIPTIONS: usize = 32;

fn check_subscriptions(topics: &[String]) -> AgentsResult<()> {
    if topics.len() > MAX_SUBSCRIPTIONS {
        return Err(AgentsError::Invalid(format!("at most {MAX_SUBSCRIPTIONS} subscriptions per agent")));
    }
    for (i, t) in topics.iter().enumerate() {
        if !crate::capabilities::messaging::valid_topic(t) {
            return Err(AgentsError::Invalid(format!(
                "subscriptions[{i}]: {t:?} is not a topic name ([a-z0-9._-]{{1,128}})"
            )));
        }
        if topics[..i].contains(t) {
            return Err(AgentsError::Invalid(format!("subscriptions[{i}]: {t:?} is listed twice")));
        }
    }
    Ok(())
}

/// A watching agent needs a module that exports `on-change`.
fn watcher_module(module: &Module) -> AgentsResult<()> {
    if module.shape.has_on_change {
        Ok(())
    } else {
        Err(AgentsError::Invalid("an agent with watches needs a module that exports on-change".into()))
    }
}

fn check_limits(l: &AgentLimits, t: &Tenant) -> AgentsResult<()> {
    let over = |what: &str, v: u64, max: u64| {
        Err(AgentsError::Invalid(format!("limits.{what} = {v} is over the tenant's quota of {max}")))
    };
    let q = &t.quotas;
    if let Some(v) = l.fuel.filter(|v| *v > q.max_fuel) {
        return over("fuel", v, q.max_fuel);
    }
    if let Some(v) = l.memory_bytes.filter(|v| *v > q.max_memory_bytes) {
        return over("memory_bytes", v, q.max_memory_bytes);
    }
    if let Some(v) = l.timeout_ms.filter(|v| *v > q.max_timeout_ms) {
        return over("timeout_ms", v, q.max_timeout_ms);
    }
    Ok(())
}

impl Agents {
    /// Most watches one agent may have, and their collections and prefixes well-formed.
    fn check_watches(&self, watches: &[Watch], module: &Module) -> AgentsResult<()> {
        if watches.is_empty() {
            return Ok(());
        }
        if watches.len() > MAX_WATCHES {
            return Err(AgentsError::Invalid(format!("at most {MAX_WATCHES} watches per agent")));
        }
        let limits = &self.config.limits.keys;
        for (i, w) in watches.iter().enumerate() {
            check_collection(&w.collection, limits)
                .map_err(|e| AgentsError::Invalid(format!("watches[{i}].collection: {e}")))?;
            check_prefix(&w.prefix, limits).map_err(|e| AgentsError::Invalid(format!("watches[{i}].prefix: {e}")))?;
        }
        watcher_module(module)
    }

    /// Deploy `spec` in tenant `t`: its profile's values where it leaves them out, checks,
    /// the tenant's agent quota, `init`, then the record (with the tenant's agent counter, in
    /// one atomic step: the quota is exact across the nodes sharing the store) and the
    /// installed agent. The caller holds the tenant's write lock (on this node).
    pub async fn deploy(self: &Arc<Self>, t: &CachedTenant, spec: DeploySpec) -> AgentsResult<Arc<Deployed>> {
        let profile = match &spec.profile {
            Some(name) => Some(self.resolve_profile(&t.name, name).await?),
            None => None,
        };
        let (limits, max_concurrency) = with_profile(&spec, profile.as_ref());
        check_limits(&limits, t)?;
        let max_concurrency = concurrency_within(max_concurrency, t)?;
        check_subscriptions(&spec.subscriptions)?;
        crate::egress::check_grants(&spec.egress, t.egress_allow.as_deref())
            .map_err(|e| AgentsError::Invalid(e.to_string()))?;
        spec.supervision.check().map_err(AgentsError::Invalid)?;
        check_queue(&spec)?;
        if max_concurrency == 0 || max_concurrency > self.config.engine.max_instances {
            return Err(AgentsError::Invalid(format!(
                "max_concurrency must be 1..={}",
                self.config.engine.max_instances
            )));
        }
        let key = scoped(&t.name, &spec.name);
        if self.registry.get::<AgentRecord>(RecordKind::Agent, &key).await?.is_some() {
            return Err(AgentsError::Conflict {
                code: "already_exists",
                message: format!("agent {:?} exists", spec.name),
            });
        }
        // Refused early, before `init`; the count is checked again when the record is written.
        let (count, _) = self.agent_count(&t.name).await?;
        self.within_agent_quota(t, count)?;
        let digest = self.ready_module(&t.name, &spec.module).await?.digest;
        let module = self.modules.load(&digest).await?;
        self.check_watches(&spec.watches, &module)?;
        let now = now_ms();
        let rec = AgentRecord {
            tenant: t.name.clone(),
            name: spec.name.into_string(),
            module: digest,
            previous_module: None,
            config: spec.config,
            limits,
            max_concurrency,
            queue: spec.queue,
            queue_timeout_ms: spec.queue_timeout_ms,
            status: AgentStatus::Running,
            created_ms: now,
            updated_ms: now,
            watches: spec.watches,
            subscriptions: spec.subscriptions,
            supervision: spec.supervision,
            probation: None,
            rolled_back: None,
            profile: spec.profile,
            oci: spec.oci,
            previous_oci: None,
            egress: spec.egress,
        };
        let init = match self.run_init(&module, &rec, &t.quotas).await {
            Ok(report) => report,
            Err(e) => {
                // `init` may have linked the new agent in the graph before it failed: the agent
                // is not deployed, so neither are its edges.
                self.registry.store().remove_agent_edges(&t.name, &rec.name).await?;
                return Err(e);
            }
        };
        // Whatever a former agent of this name left (a delivery that finished after its
        // delete) is not the new agent's.
        coordination::forget(&self.registry, &t.name, &rec.name).await?;
        if !rec.watches.is_empty() {
            // Before the agent record: a watching agent always has its cursor.
            coordination::start_cursor(&self.registry, &t.name, &rec.name).await?;
        }
        let rev = match self.put_counted(t, &key, &rec).await {
            Err(e @ AgentsError::OverQuota { .. }) => {
                // Another node took the last slot meanwhile: undo what this deploy wrote.
                self.registry.store().remove_agent_edges(&t.name, &rec.name).await?;
                if !rec.watches.is_empty() {
                    self.registry.delete(RecordKind::Cursor, &key).await?;
                }
                return Err(e);
            }
            other => other?,
        };
        let d = self.install(rec, rev, module);
        d.shared.record_logs(&init);
        // Its background work starts at once where it belongs (here, for a single node).
        self.claim(&d.record.tenant, &d.record.name).await;
        Ok(d)
    }

    /// Persist a changed record (compare-and-swap on the revision the change started from)
    /// and install it.
    async fn commit(
        self: &Arc<Self>,
        d: &Deployed,
        mut rec: AgentRecord,
        module: Arc<Module>,
    ) -> AgentsResult<Arc<Deployed>> {
        rec.updated_ms = now_ms();
        let rev = self.registry.put(RecordKind::Agent, &scoped(&rec.tenant, &rec.name), &rec, Some(d.revision)).await?;
        Ok(self.install(rec, rev, module))
    }

    /// Give agent `name` of `t` a new configuration: `init` sees it first; if it refuses,
    /// the old config stays in force.
    pub async fn update_config(
        self: &Arc<Self>,
        t: &CachedTenant,
        name: &str,
        config: BTreeMap<String, String>,
    ) -> AgentsResult<Arc<Deployed>> {
        let d = self.find(&t.name, name).await?;
        let mut rec = d.record.clone();
        rec.config = config;
        self.run_init(&d.module, &rec, &t.quotas).await?;
        self.commit(&d, rec, d.module.clone()).await
    }

    /// Run agent `name` of `t` on the module `reference` names (and with `config` in place
    /// of its configuration, if given: one `init` sees both), keeping the current module to
    /// roll back to (`oci`: where it was pulled from, if it was); on `probation`, the host rolls back by itself if the new module fails it.
    pub async fn upgrade(
        self: &Arc<Self>,
        t: &CachedTenant,
        name: &str,
        reference: &str,
        config: Option<BTreeMap<String, String>>,
        oci: Option<crate::oci::OciSource>,
        probation: Option<Probation>,
    ) -> AgentsResult<Arc<Deployed>> {
        let d = self.find(&t.name, name).await?;
        if let Some(p) = &probation {
            p.check().map_err(AgentsError::Invalid)?;
        }
        let digest = self.ready_module(&t.name, reference).await?.digest;
        let module = self.modules.load(&digest).await?;
        if !d.record.watches.is_empty() {
            watcher_module(&module)?;
        }
        let mut rec = d.record.clone();
        rec.previous_module = Some(rec.module.clone());
        rec.module = digest;
        if let Some(c) = config {
            rec.config = c;
        }
        rec.previous_oci = std::mem::replace(&mut rec.oci, oci);
        rec.probation = probation.map(|p| Probation { until_ms: now_ms().saturating_add(p.window_ms), ..p });
        rec.rolled_back = None;
        self.run_init(&module, &rec, &t.quotas).await?;
        let d = self.commit(&d, rec, module).await?;
        self.restart(&d);
        Ok(d)
    }

    /// Run agent `name` of `t` on its previous module again (the current one becomes the
    /// previous).
    pub async fn rollback(self: &Arc<Self>, t: &CachedTenant, name: &str) -> AgentsResult<Arc<Deployed>> {
        self.roll_back(t, name, None).await
    }

    /// [`Self::rollback`]; with `failed`, the rollback of the module that failed its
    /// probation, recorded with its note, and only while the agent still runs that module.
    pub(super) async fn roll_back(
        self: &Arc<Self>,
        t: &CachedTenant,
        name: &str,
        failed: Option<RolledBack>,
    ) -> AgentsResult<Arc<Deployed>> {
        let d = self.find(&t.name, name).await?;
        let mut rec = d.record.clone();
        if let Some(f) = failed.as_ref().filter(|f| f.from_module != rec.module) {
            return Err(AgentsError::Conflict {
                code: "module_changed",
                message: format!("the agent no longer runs {}", f.from_module),
            });
        }
        let Some(prev) = rec.previous_module.take() else {
            return Err(AgentsError::Conflict {
                code: "no_previous_module",
                message: "the agent was never upgraded".into(),
            });
        };
        let module = self.modules.load(&prev).await?;
        rec.previous_module = Some(std::mem::replace(&mut rec.module, prev));
        std::mem::swap(&mut rec.oci, &mut rec.previous_oci);
        rec.probation = None;
        rec.rolled_back = failed.map(|f| RolledBack { to_module: rec.module.clone(), ..f });
        self.run_init(&module, &rec, &t.quotas).await?;
        let d = self.commit(&d, rec, module).await?;
        self.restart(&d);
        Ok(d)
    }

    /// Stop or start agent `name` of `t`.
    pub async fn set_status(
        self: &Arc<Self>,
        t: &CachedTenant,
        name: &str,
        status: AgentStatus,
    ) -> AgentsResult<Arc<Deployed>> {
        let d = self.find(&t.name, name).await?;
        let mut rec = d.record.clone();
        rec.status = status;
        let d = self.commit(&d, rec, d.module.clone()).await?;
        self.metrics.agent_health(&d.metrics, self.health_of(&d).gauge());
        self.claim(&d.record.tenant, &d.record.name).await;
        Ok(d)
    }

    /// Delete agent `name` of `tenant`: its record, the running agent, what coordination
    /// keeps for it and its graph edges.
    pub async fn delete(self: &Arc<Self>, tenant: &str, name: &str) -> AgentsResult<()> {
        self.find(tenant, name).await?;
        self.delete_counted(tenant, &scoped(tenant, name)).await?;
        self.uninstall(tenant, name).await;
        coordination::forget(&self.registry, tenant, name).await?;
        // Its edges go with it (graph import).
        self.registry.store().remove_agent_edges(tenant, name).await?;
        Ok(())
    }
}

/// Key of the [`RecordKind::Counter`] record that counts a tenant's agents.
pub(crate) fn agent_counter_key(tenant: &str) -> String {
    format!("agents/{tenant}")
}

/// The value of a tenant's agent counter.
#[derive(Debug, Serialize, Deserialize)]
struct AgentCount {
    /// Agent records of the tenant.
    agents: u64,
}

/// Most compare-and-swap rounds of one deploy or delete against the agent counter: each
/// lost round is another writer's success, so this is only reached under a storm of them.
const COUNTER_ROUNDS: usize = 1000;

fn counter_value(agents: u64) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&AgentCount { agents }).map_err(|e| StoreError::Corrupted(format!("agent counter: {e}")))
}

// The agent quota, exact across the nodes of a cluster: every agent record is written and
// deleted in one atomic step with the tenant's counter (`agents/<tenant>`, compare-and-swap
// on its revision), so two nodes deploying at once cannot both take the last slot.
impl Agents {
    /// The tenant's agents and the counter's revision (0: no counter yet, the count then
    /// comes from its agent records: data written before the counter existed).
    async fn agent_count(&self, tenant: &str) -> AgentsResult<(u64, u64)> {
        let store = self.registry.store();
        if let Some((bytes, rev)) = store.record_get(RecordKind::Counter, &agent_counter_key(tenant)).await? {
            let c: AgentCount = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupted(format!("agent counter of {tenant}: {e}")))?;
            return Ok((c.agents, rev));
        }
        let records = store.record_list(RecordKind::Agent, &scoped(tenant, "")).await?;
        Ok((records.len() as u64, 0))
    }

    /// Refuse a deploy in `t` when it has `count` agents, its quota.
    fn within_agent_quota(&self, t: &CachedTenant, count: u64) -> AgentsResult<()> {
        if count >= u64::from(t.quotas.agents) {
            self.metrics.refused(&t.name, "agent_quota");
            return Err(AgentsError::OverQuota {
                code: "agent_quota",
                message: format!("the tenant has {count} agents, its quota"),
                retry_after: 60,
            });
        }
        Ok(())
    }

    /// Write the new agent record `rec` (under `key`, which must not exist) and the tenant's
    /// incremented agent counter in one atomic step, within the quota; returns the record's
    /// revision.
    async fn put_counted(&self, t: &CachedTenant, key: &str, rec: &AgentRecord) -> AgentsResult<u64> {
        let store = self.registry.store();
        let value = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupted(format!("agent record: {e}")))?;
        for _ in 0..COUNTER_ROUNDS {
            let (count, rev) = self.agent_count(&t.name).await?;
            self.within_agent_quota(t, count)?;
            let ops = [
                RecordOp::Put {
                    kind: RecordKind::Counter,
                    key: agent_counter_key(&t.name),
                    value: counter_value(count + 1)?,
                    expected: Some(rev),
                },
                RecordOp::Put { kind: RecordKind::Agent, key: key.to_owned(), value: value.clone(), expected: Some(0) },
            ];
            match store.record_apply(None, &ops, Quota::NONE).await {
                Ok(revs) => {
                    return revs.get(1).copied().ok_or_else(|| {
                        AgentsError::Internal("the store answered a write of two records with fewer revisions".into())
                    });
                }
                Err(StoreError::Conflict { .. }) => {
                    if store.record_get(RecordKind::Agent, key).await?.is_some() {
                        return Err(AgentsError::Conflict {
                            code: "already_exists",
                            message: format!("agent {:?} exists", rec.name),
                        });
                    }
                    // The counter moved (another deploy or delete): count again.
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict { current: 0 }.into())
    }

    /// Delete the agent record under `key` and decrement the tenant's agent counter in one
    /// atomic step (nothing when the record is already gone).
    async fn delete_counted(&self, tenant: &str, key: &str) -> AgentsResult<()> {
        let store = self.registry.store();
        for _ in 0..COUNTER_ROUNDS {
            let Some((_, agent_rev)) = store.record_get(RecordKind::Agent, key).await? else {
                return Ok(());
            };
            let (count, rev) = self.agent_count(tenant).await?;
            let ops = [
                RecordOp::Put {
                    kind: RecordKind::Counter,
                    key: agent_counter_key(tenant),
                    // A counter initialised from the records counts this one.
                    value: counter_value(count.saturating_sub(1))?,
                    expected: Some(rev),
                },
                RecordOp::Delete { kind: RecordKind::Agent, key: key.to_owned(), expected: Some(agent_rev) },
            ];
            match store.record_apply(None, &ops, Quota::NONE).await {
                Ok(_) => return Ok(()),
                // The counter or the record moved: read both again.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict { current: 0 }.into())
    }
}
