//! The workflow engine: definitions and runs in the store, and the per-tenant driver that
//! runs them on the node holding the tenant's workflow lease.
//!
//! A run is driven by one task. Before it starts calls it persists them as `running`
//! with their attempt numbers; when a call ends it persists its output (or its failure).
//! Every write is fenced by the tenant's lease, so a former owner cannot overwrite a run
//! another node took over. A run task that restarts (another node, a restart) first
//! [`Run::recover`]s: calls started but not finished run again only if idempotent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;
use tokio::sync::{Notify, watch};

use super::def::{Definition, Invalid};
use super::run::{Run, RunState};
use crate::agents::ownership::LeasedWork;
use crate::agents::{Agents, AgentsError, Tenants};
use crate::registry::{AuditEvent, Registry, now_ms};
use crate::runtime::Outcome;
use crate::store::{Fence, Fenced, Quota, RecordKind, RecordOp, RecordStore, Scope, Store, StoreError};

/// Why a workflow call failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The definition is invalid.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such workflow, run or step.
    #[error("{0}")]
    NotFound(String),
    /// The run is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One stored version of a workflow.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowRecord {
    /// Its name.
    pub name: String,
    /// Its version: 1, 2, ...
    pub version: u64,
    /// When it was stored (ms since the epoch).
    pub created_ms: u64,
    /// The definition.
    pub definition: Definition,
}

fn def_prefix(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}/")
}
fn run_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/run/{id}")
}
fn active_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/active/{id}")
}
fn idem_key(tenant: &str, workflow: &str, key: &str) -> String {
    let h = sha2::Sha256::digest(key.as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("{tenant}/key/{workflow}/{hex}")
}

fn new_run_id() -> String {
    let mut r = [0u8; 6];
    let _ = getrandom::fill(&mut r);
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("{:013}-{hex}", now_ms())
}

/// A tenant's running engine on this node.
struct Engine {
    notify: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The workflows of every tenant: definitions, runs and the engines this node runs.
pub struct Workflows {
    registry: Registry,
    agents: Arc<Agents>,
    tenants: Arc<Tenants>,
    engines: Mutex<HashMap<String, Engine>>,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows").finish_non_exhaustive()
    }
}

impl Workflows {
    /// Over `registry`, invoking through `agents`; registers itself with the agents' lease
    /// loop.
    pub fn new(registry: Registry, agents: Arc<Agents>, tenants: Arc<Tenants>) -> Arc<Self> {
        let w = Arc::new(Self { registry, agents: agents.clone(), tenants, engines: Mutex::new(HashMap::new()) });
        let weak: std::sync::Weak<dyn LeasedWork> = Arc::downgrade(&(w.clone() as Arc<dyn LeasedWork>));
        agents.set_leased_work(weak);
        w
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.registry.store()
    }

    /// Store a new version of workflow `name` of `tenant` after validating it (its agents
    /// must exist). The same definition as the latest version stores nothing and returns it.
    pub async fn put(self: &Arc<Self>, tenant: &str, name: &str, body: &[u8]) -> Result<WorkflowRecord, WorkflowError> {
        let def = Definition::parse(body)?;
        let known: std::collections::HashSet<String> = {
            let mut set = std::collections::HashSet::new();
            for a in def.agents() {
                if self.agents.find(tenant, a).await.is_ok() {
                    set.insert(a.to_owned());
                }
            }
            set
        };
        def.validate(|a| known.contains(a))?;
        loop {
            let latest = self.latest(tenant, name).await?;
            if let Some((rec, _)) = &latest
                && rec.definition == def
            {
                return Ok(rec.clone());
            }
            let version = latest.map_or(1, |(r, _)| r.version + 1);
            let rec = WorkflowRecord { name: name.to_owned(), version, created_ms: now_ms(), definition: def.clone() };
            let key = format!("{}{version:010}", def_prefix(tenant, name));
            match self.registry.put(RecordKind::Workflow, &key, &rec, Some(0)).await {
                Ok(_) => return Ok(rec),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn latest(&self, tenant: &str, name: &str) -> Result<Option<(WorkflowRecord, u64)>, WorkflowError> {
        let rows =
            self.registry.list_revisions::<WorkflowRecord>(RecordKind::Workflow, &def_prefix(tenant, name)).await?;
        Ok(rows.into_iter().last().map(|(_, r, rev)| (r, rev)))
    }

    /// Version `version` (latest: `None`) of workflow `name`.
    pub async fn get(&self, tenant: &str, name: &str, version: Option<u64>) -> Result<WorkflowRecord, WorkflowError> {
        let found = match version {
            None => self.latest(tenant, name).await?.map(|(r, _)| r),
            Some(v) => self
                .registry
                .get::<WorkflowRecord>(RecordKind::Workflow, &format!("{}{v:010}", def_prefix(tenant, name)))
                .await?
                .map(|(r, _)| r),
        };
        found.ok_or_else(|| WorkflowError::NotFound(format!("workflow {name:?} not found")))
    }

    /// The latest version of every workflow of `tenant`, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<WorkflowRecord>, WorkflowError> {
        let rows = self.registry.list::<WorkflowRecord>(RecordKind::Workflow, &format!("{tenant}/")).await?;
        let mut out: Vec<WorkflowRecord> = Vec::new();
        for r in rows {
            match out.last_mut() {
                Some(last) if last.name == r.name => *last = r,
                _ => out.push(r),
            }
        }
        Ok(out)
    }

    /// Delete every version of workflow `name` (its runs stay and finish).
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<bool, WorkflowError> {
        let keys: Vec<String> = self
            .store()
            .record_list(RecordKind::Workflow, &def_prefix(tenant, name))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if keys.is_empty() {
            return Ok(false);
        }
        self.store().record_delete_many(RecordKind::Workflow, &keys).await?;
        Ok(true)
    }

    /// Start a run of the latest version of `name` with `input`; with `idempotency_key`,
    /// the run started with that key before if there is one. Returns the run and whether it
    /// is new.
    pub async fn start(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        input: Value,
        idempotency_key: Option<String>,
        actor: &str,
    ) -> Result<(Run, bool), WorkflowError> {
        let ikey = idempotency_key.as_deref().map(|k| idem_key(tenant, name, k));
        if let Some(k) = &ikey
            && let Some(run) = self.run_of_key(tenant, k).await?
        {
            return Ok((run, false));
        }
        let wf = self.get(tenant, name, None).await?;
        let mut run = Run::new(new_run_id(), tenant, name, wf.version, wf.definition, input);
        run.idempotency_key = idempotency_key;
        run.trace = crate::telemetry::otel::TraceContext::current();
        let bytes = serde_json::to_vec(&run).map_err(|e| WorkflowError::Conflict(e.to_string()))?;
        let mut ops = vec![
            RecordOp::Put {
                kind: RecordKind::WorkflowRun,
                key: run_key(tenant, &run.id),
                value: bytes,
                expected: Some(0),
            },
            RecordOp::Put {
                kind: RecordKind::WorkflowRun,
                key: active_key(tenant, &run.id),
                value: b"{}".to_vec(),
                expected: None,
            },
        ];
        if let Some(k) = &ikey {
            let v = serde_json::to_vec(&serde_json::json!({ "run": run.id })).unwrap_or_default();
            ops.push(RecordOp::Put { kind: RecordKind::WorkflowRun, key: k.clone(), value: v, expected: Some(0) });
        }
        ops.push(summary(&run));
        match self.store().record_apply(None, &ops, Quota::NONE).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) if ikey.is_some() => {
                let k = ikey.as_deref().unwrap_or_default();
                if let Some(run) = self.run_of_key(tenant, k).await? {
                    return Ok((run, false));
                }
                return Err(WorkflowError::Conflict("the idempotency key is being used; retry".into()));
            }
            Err(e) => return Err(e.into()),
        }
        audit(&self.registry, &run, actor, "workflow_run_started").await;
        self.wake(tenant).await;
        Ok((run, true))
    }

    async fn run_of_key(&self, tenant: &str, key: &str) -> Result<Option<Run>, WorkflowError> {
        #[derive(Deserialize)]
        struct K {
            run: String,
        }
        let Some((k, _)) = self.registry.get::<K>(RecordKind::WorkflowRun, key).await? else { return Ok(None) };
        Ok(self.run(tenant, &k.run).await.ok())
    }

    /// Make sure the tenant's engine runs somewhere and, if here, looks for work now.
    async fn wake(self: &Arc<Self>, tenant: &str) {
        let k = super::lease_key(tenant);
        let exists = matches!(self.store().record_get(RecordKind::Lease, &k).await, Ok(Some(_)));
        if !exists {
            let rec = crate::cluster::LeaseRecord { owner: String::new(), epoch: 0, renewed_ms: now_ms() };
            let bytes = serde_json::to_vec(&rec).unwrap_or_default();
            let _ = self.store().record_put(RecordKind::Lease, &k, bytes, Some(0)).await;
        }
        self.agents.claim_work(&k).await;
        if let Some(e) = self.engines.lock().unwrap_or_else(PoisonError::into_inner).get(tenant) {
            e.notify.notify_one();
        }
    }

    /// Run `id` of `tenant`.
    pub async fn run(&self, tenant: &str, id: &str) -> Result<Run, WorkflowError> {
        self.run_rev(tenant, id).await.map(|(r, _)| r)
    }

    async fn run_rev(&self, tenant: &str, id: &str) -> Result<(Run, u64), WorkflowError> {
        self.registry
            .get::<Run>(RecordKind::WorkflowRun, &run_key(tenant, id))
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("run {id:?} not found")))
    }

    /// Runs of `tenant`, newest first, of workflow `workflow` and in `state` if given, at
    /// most `limit`.
    pub async fn runs(
        &self,
        tenant: &str,
        workflow: Option<&str>,
        state: Option<RunState>,
        limit: usize,
    ) -> Result<Vec<Run>, WorkflowError> {
        let mut rows = self.registry.list::<Run>(RecordKind::WorkflowRun, &format!("{tenant}/run/")).await?;
        rows.reverse();
        Ok(rows
            .into_iter()
            .filter(|r| workflow.is_none_or(|w| r.workflow == w) && state.is_none_or(|s| r.state == s))
            .take(limit)
            .collect())
    }

    /// Change run `id` with `f` (compare-and-swap, retried on a conflict), then wake the
    /// engine.
    async fn update(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        actor: &str,
        action: &str,
        f: impl Fn(&mut Run) -> Result<(), WorkflowError>,
    ) -> Result<Run, WorkflowError> {
        loop {
            let (mut run, rev) = self.run_rev(tenant, id).await?;
            let before = run.state;
            f(&mut run)?;
            run.updated_ms = now_ms();
            let bytes = serde_json::to_vec(&run).map_err(|e| WorkflowError::Conflict(e.to_string()))?;
            let mut ops = vec![RecordOp::Put {
                kind: RecordKind::WorkflowRun,
                key: run_key(tenant, id),
                value: bytes,
                expected: Some(rev),
            }];
            let active = active_key(tenant, id);
            ops.push(if run.state.is_active() {
                RecordOp::Put { kind: RecordKind::WorkflowRun, key: active, value: b"{}".to_vec(), expected: None }
            } else {
                RecordOp::Delete { kind: RecordKind::WorkflowRun, key: active, expected: None }
            });
            ops.push(summary(&run));
            match self.store().record_apply(None, &ops, Quota::NONE).await {
                Ok(_) => {
                    if before != run.state {
                        audit(&self.registry, &run, actor, action).await;
                    }
                    self.wake(tenant).await;
                    return Ok(run);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Cancel run `id`: the engine ends it once its running calls return. A run that needs
    /// attention is cancelled at once.
    pub async fn cancel(self: &Arc<Self>, tenant: &str, id: &str, actor: &str) -> Result<Run, WorkflowError> {
        self.update(tenant, id, actor, "workflow_run_cancelled", |run| {
            if run.state.is_terminal() {
                return Err(WorkflowError::Conflict(format!("the run has ended ({})", run.state.as_str())));
            }
            run.cancel_requested = true;
            if run.state == RunState::NeedsAttention {
                // Nothing runs: end it here (plan cancels at once with nothing in flight).
                run.state = RunState::Running;
                let _ = run.plan(now_ms(), 0);
            }
            Ok(())
        })
        .await
    }

    /// Resolve run `id` that needs attention: retry its stuck step, or skip it (taking
    /// `output` as its output).
    pub async fn resolve(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        step: &str,
        retry: bool,
        output: Option<Value>,
        actor: &str,
    ) -> Result<Run, WorkflowError> {
        self.update(tenant, id, actor, "workflow_run_resolved", |run| {
            run.resolve(step, retry, output.clone(), now_ms()).map_err(WorkflowError::Conflict)
        })
        .await
    }

    /// Remove everything of a deleted tenant: its definitions, its runs (the engine stops
    /// where it runs: its lease record is gone, so the lease loop hands it back).
    pub async fn forget_tenant(&self, tenant: &str) -> Result<(), WorkflowError> {
        let prefix = format!("{tenant}/");
        for kind in [RecordKind::Workflow, RecordKind::WorkflowRun] {
            let keys: Vec<String> =
                self.store().record_list(kind, &prefix).await?.into_iter().map(|(k, _)| k).collect();
            for chunk in keys.chunks(256) {
                self.store().record_delete_many(kind, chunk).await?;
            }
        }
        self.store().record_delete(RecordKind::Lease, &super::lease_key(tenant)).await?;
        Ok(())
    }

    /// The tenants whose engine runs on this node.
    pub fn engines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.engines.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        v.sort();
        v
    }
}

/// The write of the run's summary document (so the transition is in the tenant's change
/// feed): one op of the transition's `record_apply`, so the run record and the document
/// that shows it change together, in one durable write.
fn summary(run: &Run) -> RecordOp {
    let steps: serde_json::Map<String, Value> =
        run.steps.iter().map(|s| (s.id.clone(), Value::String(step_state(s.state).to_owned()))).collect();
    let doc = serde_json::json!({
        "workflow": run.workflow, "version": run.version, "state": run.state.as_str(),
        "updated_ms": run.updated_ms, "steps": steps,
    });
    RecordOp::PutDocument {
        scope: Scope::new(run.tenant.as_str(), "~workflows"),
        collection: super::FEED_COLLECTION.to_owned(),
        key: run.id.clone(),
        value: doc.to_string(),
    }
}

fn step_state(s: super::StepState) -> &'static str {
    use super::StepState as S;
    match s {
        S::Pending => "pending",
        S::Running => "running",
        S::Succeeded => "succeeded",
        S::Failed => "failed",
        S::Skipped => "skipped",
        S::Cancelled => "cancelled",
        S::NeedsAttention => "needs_attention",
    }
}

async fn audit(registry: &Registry, run: &Run, actor: &str, action: &str) {
    let event = AuditEvent {
        seq: 0,
        time_ms: now_ms(),
        actor: actor.to_owned(),
        tenant: run.tenant.clone(),
        tenant_id: String::new(),
        action: action.to_owned(),
        target: format!("/v1/workflows/{}/runs/{}", run.workflow, run.id),
        outcome: 0,
        detail: format!("run {}", run.state.as_str()),
    };
    if let Err(e) = registry.audit_in_tenant(event).await {
        tracing::warn!(run = %run.id, error = %e, "auditing a run transition failed");
    }
}

#[async_trait::async_trait]
impl LeasedWork for Workflows {
    fn is_work(&self, key: &str) -> bool {
        key.ends_with("/~workflows")
    }

    fn start(&self, key: &str, fence: Fence) {
        let Some((tenant, _)) = key.split_once('/') else { return };
        let mut engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        if engines.get(tenant).is_some_and(|e| !e.task.is_finished()) {
            return;
        }
        let notify = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let driver = Driver {
            tenant: tenant.to_owned(),
            store: Arc::new(Fenced::new(self.store().clone(), fence)),
            registry: self.registry.clone(),
            agents: self.agents.clone(),
            tenants: self.tenants.clone(),
        };
        let task = tokio::spawn(driver.drive(notify.clone(), stop_rx));
        tracing::info!(tenant, "workflow engine started");
        engines.insert(tenant.to_owned(), Engine { notify, stop, task });
    }

    async fn stop(&self, key: &str) {
        let Some((tenant, _)) = key.split_once('/') else { return };
        let engine = self.engines.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
        if let Some(e) = engine {
            let _ = e.stop.send(true);
            let abort = e.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), e.task).await.is_err() {
                abort.abort();
            }
            tracing::info!(tenant, "workflow engine stopped");
        }
    }

    async fn stop_all(&self) {
        let all: Vec<Engine> =
            self.engines.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, e)| e).collect();
        for e in all {
            e.task.abort();
            let _ = e.task.await;
        }
    }
}

/// A tenant's engine: finds its active runs and drives each in a task of its own.
#[derive(Clone)]
struct Driver {
    tenant: String,
    store: Arc<Fenced>,
    registry: Registry,
    agents: Arc<Agents>,
    tenants: Arc<Tenants>,
}

/// How often an engine looks for runs started or changed through other nodes.
const POLL: Duration = Duration::from_millis(250);

impl Driver {
    async fn drive(self, notify: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            if *stop.borrow() {
                break;
            }
            tasks.retain(|_, t| !t.is_finished());
            match self.store.record_list(RecordKind::WorkflowRun, &format!("{}/active/", self.tenant)).await {
                Ok(rows) => {
                    for (k, _) in rows {
                        let Some(id) = k.rsplit('/').next() else { continue };
                        if !tasks.contains_key(id) {
                            let me = self.clone();
                            let id = id.to_owned();
                            let stop = stop.clone();
                            tasks.insert(id.clone(), tokio::spawn(async move { me.drive_run(id, stop).await }));
                        }
                    }
                }
                Err(e) => tracing::warn!(tenant = %self.tenant, error = %e, "listing active runs failed"),
            }
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
        // Let the runs persist what their running calls return, then end.
        for (_, t) in tasks {
            let _ = t.await;
        }
    }

    /// Persist `run` (CAS on `rev`), merging a cancel request written meanwhile; `false`
    /// when the lease is lost (the task must end).
    async fn persist(&self, run: &mut Run, rev: &mut u64, actor_action: Option<&str>) -> bool {
        loop {
            run.updated_ms = now_ms();
            let Ok(bytes) = serde_json::to_vec(&*run) else { return false };
            let mut ops = vec![RecordOp::Put {
                kind: RecordKind::WorkflowRun,
                key: run_key(&self.tenant, &run.id),
                value: bytes,
                expected: Some(*rev),
            }];
            if !run.state.is_active() {
                ops.push(RecordOp::Delete {
                    kind: RecordKind::WorkflowRun,
                    key: active_key(&self.tenant, &run.id),
                    expected: None,
                });
            }
            ops.push(summary(run));
            match self.store.record_apply(None, &ops, Quota::NONE).await {
                Ok(revs) => {
                    *rev = revs.first().copied().unwrap_or(*rev);
                    if let Some(action) = actor_action {
                        audit(&self.registry, run, "workflow-engine", action).await;
                    }
                    return true;
                }
                Err(StoreError::Conflict { .. }) => {
                    match self.registry.get::<Run>(RecordKind::WorkflowRun, &run_key(&self.tenant, &run.id)).await {
                        Ok(Some((stored, r))) => {
                            *rev = r;
                            if stored.cancel_requested {
                                run.cancel_requested = true;
                            }
                            if stored.state.is_terminal() {
                                *run = stored;
                                return false;
                            }
                        }
                        Ok(None) => return false,
                        Err(e) => {
                            tracing::warn!(run = %run.id, error = %e, "reading a run failed");
                            tokio::time::sleep(POLL).await;
                        }
                    }
                }
                Err(StoreError::Fenced { .. }) => return false,
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "persisting a run failed; retrying");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn drive_run(self, id: String, mut stop: watch::Receiver<bool>) {
        let (mut run, mut rev) =
            match self.registry.get::<Run>(RecordKind::WorkflowRun, &run_key(&self.tenant, &id)).await {
                Ok(Some(found)) => found,
                Ok(None) => {
                    // An index entry without its run: drop it.
                    let _ = self.store.record_delete(RecordKind::WorkflowRun, &active_key(&self.tenant, &id)).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "reading a run failed");
                    return;
                }
            };
        if !run.state.is_active() {
            let _ = self.store.record_delete(RecordKind::WorkflowRun, &active_key(&self.tenant, &id)).await;
            return;
        }
        if run.recover() {
            let action = (run.state == RunState::NeedsAttention).then_some("workflow_run_needs_attention");
            if !self.persist(&mut run, &mut rev, action).await || !run.state.is_active() {
                return;
            }
        }
        let mut inflight = FuturesUnordered::new();
        let mut stopping = false;
        loop {
            if *stop.borrow() {
                stopping = true;
            }
            let mut wake = None;
            if !stopping {
                let before = run.clone();
                let (start, w) = run.plan(now_ms(), inflight.len());
                wake = w;
                if run != before {
                    let action = (run.state != before.state).then(|| format!("workflow_run_{}", run.state.as_str()));
                    if !self.persist(&mut run, &mut rev, action.as_deref()).await {
                        return;
                    }
                }
                for slot in start {
                    let Some(spec) = run.call_of(slot) else { continue };
                    let me = self.clone();
                    let run_id = run.id.clone();
                    let span = crate::telemetry::otel::workflow_step_span(&run, &spec.step, spec.attempt, &spec.agent);
                    inflight.push(tracing::Instrument::instrument(
                        async move { (slot, me.call(&run_id, spec).await) },
                        span,
                    ));
                }
            }
            if inflight.is_empty() && (stopping || !run.state.is_active()) {
                return;
            }
            let sleep_for = wake.map_or(Duration::from_secs(1), |w| Duration::from_millis(w.saturating_sub(now_ms())));
            tokio::select! {
                Some((slot, result)) = inflight.next(), if !inflight.is_empty() => {
                    let before = run.state;
                    run.finish_call(slot, result, now_ms());
                    let action = (run.state != before).then(|| format!("workflow_run_{}", run.state.as_str()));
                    if !self.persist(&mut run, &mut rev, action.as_deref()).await {
                        return;
                    }
                }
                () = tokio::time::sleep(sleep_for) => {
                    // A cancel written through another node.
                    if let Ok(Some((stored, _))) =
                        self.registry.get::<Run>(RecordKind::WorkflowRun, &run_key(&self.tenant, &run.id)).await
                        && stored.cancel_requested
                    {
                        run.cancel_requested = true;
                    }
                }
                _ = stop.changed(), if !stopping => { stopping = true; }
            }
        }
    }

    /// One call of a step: through the same invoke core as HTTP. An open circuit breaker,
    /// a full pool or a quota delays it; anything else the agent did is its result.
    async fn call(&self, run_id: &str, spec: super::run::CallSpec) -> Result<Value, (String, String)> {
        let delay = Duration::from_millis(100);
        let input = serde_json::to_vec(&spec.input).unwrap_or_default();
        let extra = [
            (super::CONFIG_RUN, run_id.to_owned()),
            (super::CONFIG_STEP, spec.step.clone()),
            (super::CONFIG_ATTEMPT, spec.attempt.to_string()),
        ];
        loop {
            let t = match self.tenants.get(&self.tenant).await {
                Ok(Some(t)) => t,
                Ok(None) => return Err(("tenant_gone".into(), "the tenant was deleted".into())),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the tenant failed");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let d = match self.agents.find(&self.tenant, &spec.agent).await {
                Ok(d) => d,
                Err(AgentsError::NotFound(m)) => return Err(("unknown_agent".into(), m)),
                Err(e) => return Err(("internal".into(), e.to_string())),
            };
            let ticket = match self.agents.admit_invocation(&t, &d) {
                Ok(ticket) => ticket,
                Err(AgentsError::CircuitOpen { .. } | AgentsError::OverQuota { .. }) => {
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(AgentsError::Conflict { code, message }) => return Err((code.to_owned(), message)),
                Err(e) => return Err(("internal".into(), e.to_string())),
            };
            let deadline = spec.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
            match self.agents.invoke_with(&t, &d, ticket, &input, deadline, &extra).await {
                Ok(report) => {
                    return match report.outcome {
                        Outcome::Ok { output: None } => Ok(Value::Null),
                        Outcome::Ok { output: Some(bytes) } => Ok(serde_json::from_slice(&bytes)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))),
                        other => Err((other.code().to_owned(), other.to_string())),
                    };
                }
                Err(AgentsError::OverQuota { .. } | AgentsError::PoolFull(_) | AgentsError::QueueTimeout(_)) => {
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(("internal".into(), e.to_string())),
            }
        }
    }
}
