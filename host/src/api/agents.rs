//! Modules, agents, invocations and agent logs: everything scoped to the caller's tenant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::{Action, Principal};
use super::error::{ApiError, ApiResult, problem};
use super::state::{Deployed, LogLine};
use super::{
    AppState, DURATION_HEADER, FUEL_HEADER, INVOCATION_HEADER, JsonBody, OUTCOME_HEADER, PEAK_MEMORY_HEADER, Path,
    Query, TENANT_HEADER, authorize, check_name, tenant_scope, tenant_scope_known,
};
use crate::coordination;
use crate::registry::{AgentLimits, AgentRecord, AgentStatus, ModuleRecord, Tenant, Watch, now_ms, scoped};
use crate::runtime::{Module, Outcome, World, digest};
use crate::store::{RecordKind, StoreError, check_collection, keys::check_prefix};

type St = State<Arc<AppState>>;

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(e.body_text())
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })
}

fn too_many(st: &AppState, tenant: &str, code: &'static str, message: String, retry_after: u64) -> ApiError {
    st.metrics.refused(tenant, code);
    ApiError::TooMany { code, message, retry_after }
}

pub async fn upload_module(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    authorize(&p, Action::WriteModules)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    let limit = st.config.http.module_limit_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(format!("modules are limited to {limit} bytes")));
    }
    let bytes = body_bytes(body)?;
    let d = digest(&bytes);
    let _quota = st.tenant_write_lock(&t.name).await;
    if let Some((existing, _)) = st.registry.get::<ModuleRecord>(RecordKind::Module, &scoped(&t.name, &d)).await? {
        return Ok((StatusCode::OK, Json(existing)));
    }
    let used: u64 =
        st.registry.list::<ModuleRecord>(RecordKind::Module, &scoped(&t.name, "")).await?.iter().map(|m| m.size).sum();
    if used + bytes.len() as u64 > t.quotas.module_bytes {
        return Err(too_many(
            &st,
            &t.name,
            "module_quota",
            format!(
                "modules would take {} bytes, over the quota of {}",
                used + bytes.len() as u64,
                t.quotas.module_bytes
            ),
            60,
        ));
    }
    let module = st.runtime.load(&bytes).await?;
    // From the bytes to the record, a concurrent delete of the same digest (by another
    // tenant) cannot free the files this record is about to name.
    let _files = st.module_files().await;
    st.save_module_bytes(&d, &bytes)?;
    let rec = ModuleRecord {
        tenant: t.name.clone(),
        digest: d.clone(),
        size: bytes.len() as u64,
        world: match module.shape.world {
            World::Agent => "agent".into(),
            World::Tool => "tool".into(),
        },
        imports: module.shape.imports.clone(),
        exports: module.shape.exports.clone(),
        created_ms: now_ms(),
    };
    st.cache_module(module);
    match st.registry.put(RecordKind::Module, &scoped(&t.name, &d), &rec, Some(0)).await {
        Ok(_) => Ok((StatusCode::CREATED, Json(rec))),
        // A concurrent upload of the same bytes won: same record, same answer.
        Err(StoreError::Conflict { .. }) => Ok((StatusCode::OK, Json(rec))),
        Err(e) => Err(e.into()),
    }
}

pub async fn list_modules(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<ModuleRecord>>> {
    authorize(&p, Action::ReadModules)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    Ok(Json(st.registry.list(RecordKind::Module, &scoped(&t.name, "")).await?))
}

async fn module_of(st: &AppState, t: &Tenant, d: &str) -> ApiResult<ModuleRecord> {
    st.registry
        .get::<ModuleRecord>(RecordKind::Module, &scoped(&t.name, d))
        .await?
        .map(|(m, _)| m)
        .ok_or_else(|| ApiError::NotFound(format!("module {d:?} not found")))
}

pub async fn get_module(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(d): Path<String>,
) -> ApiResult<Json<ModuleRecord>> {
    authorize(&p, Action::ReadModules)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    Ok(Json(module_of(&st, &t, &d).await?))
}

pub async fn delete_module(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(d): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&p, Action::WriteModules)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    module_of(&st, &t, &d).await?;
    if st.module_in_use(&t.name, &d) {
        return Err(ApiError::Conflict { code: "module_in_use", message: format!("an agent uses module {d}") });
    }
    // The record, and the bytes, artifact and loaded module unless another tenant's record
    // names the same digest.
    st.delete_module(&t.name, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An agent as the API shows it.
#[derive(Serialize)]
pub struct AgentView {
    #[serde(flatten)]
    record: AgentRecord,
    invocations: u64,
    failures: u64,
    running_now: usize,
    messages: MessageCounters,
}

/// What an agent's mailbox did (since this node started).
#[derive(Serialize)]
struct MessageCounters {
    delivered: u64,
    retried: u64,
    dead_lettered: u64,
    /// Waiting in its mailbox (as last counted, plus those sent since).
    pending: usize,
}

fn view(st: &AppState, d: &Deployed) -> AgentView {
    let s = &d.shared;
    AgentView {
        record: d.record.clone(),
        invocations: s.invocations.load(Ordering::Relaxed),
        failures: s.failures.load(Ordering::Relaxed),
        running_now: (d.record.max_concurrency.max(1) as usize).saturating_sub(s.pool.available_permits()),
        messages: MessageCounters {
            delivered: s.messages_delivered.load(Ordering::Relaxed),
            retried: s.messages_retried.load(Ordering::Relaxed),
            dead_lettered: s.messages_dead_lettered.load(Ordering::Relaxed),
            pending: st.mailbox_pending(&d.record.tenant, &d.record.name).unwrap_or(0),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    name: String,
    module: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    limits: AgentLimits,
    #[serde(default = "default_concurrency")]
    max_concurrency: u32,
    #[serde(default)]
    watches: Vec<Watch>,
    #[serde(default)]
    subscriptions: Vec<String>,
}

/// Most watches one agent may have.
const MAX_WATCHES: usize = 32;
/// Most topics one agent may subscribe to.
const MAX_SUBSCRIPTIONS: usize = 32;

fn check_subscriptions(topics: &[String]) -> ApiResult<()> {
    if topics.len() > MAX_SUBSCRIPTIONS {
        return Err(ApiError::BadRequest(format!("at most {MAX_SUBSCRIPTIONS} subscriptions per agent")));
    }
    for (i, t) in topics.iter().enumerate() {
        if !crate::capabilities::messaging::valid_topic(t) {
            return Err(ApiError::BadRequest(format!(
                "subscriptions[{i}]: {t:?} is not a topic name ([a-z0-9._-]{{1,128}})"
            )));
        }
        if topics[..i].contains(t) {
            return Err(ApiError::BadRequest(format!("subscriptions[{i}]: {t:?} is listed twice")));
        }
    }
    Ok(())
}

fn check_watches(st: &AppState, watches: &[Watch], module: &Module) -> ApiResult<()> {
    if watches.is_empty() {
        return Ok(());
    }
    if watches.len() > MAX_WATCHES {
        return Err(ApiError::BadRequest(format!("at most {MAX_WATCHES} watches per agent")));
    }
    let limits = &st.config.limits.keys;
    for (i, w) in watches.iter().enumerate() {
        check_collection(&w.collection, limits)
            .map_err(|e| ApiError::BadRequest(format!("watches[{i}].collection: {e}")))?;
        check_prefix(&w.prefix, limits).map_err(|e| ApiError::BadRequest(format!("watches[{i}].prefix: {e}")))?;
    }
    watcher_module(module)
}

/// A watching agent needs a module that exports `on-change`.
fn watcher_module(module: &Module) -> ApiResult<()> {
    if module.shape.has_on_change {
        Ok(())
    } else {
        Err(ApiError::BadRequest("an agent with watches needs a module that exports on-change".into()))
    }
}

fn default_concurrency() -> u32 {
    16
}

fn check_limits(l: &AgentLimits, t: &Tenant) -> ApiResult<()> {
    let over = |what: &str, v: u64, max: u64| {
        Err(ApiError::BadRequest(format!("limits.{what} = {v} is over the tenant's quota of {max}")))
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

pub async fn deploy(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Deploy>,
) -> ApiResult<(StatusCode, Json<AgentView>)> {
    authorize(&p, Action::WriteAgents)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    check_name("agent", &body.name)?;
    check_limits(&body.limits, &t)?;
    check_subscriptions(&body.subscriptions)?;
    if body.max_concurrency == 0 || body.max_concurrency > st.config.engine.max_instances {
        return Err(ApiError::BadRequest(format!("max_concurrency must be 1..={}", st.config.engine.max_instances)));
    }
    let _quota = st.tenant_write_lock(&t.name).await;
    let key = scoped(&t.name, &body.name);
    if st.registry.get::<AgentRecord>(RecordKind::Agent, &key).await?.is_some() {
        return Err(ApiError::Conflict { code: "already_exists", message: format!("agent {:?} exists", body.name) });
    }
    let count = st.registry.store().record_list(RecordKind::Agent, &scoped(&t.name, "")).await?.len();
    if count >= t.quotas.agents as usize {
        return Err(too_many(&st, &t.name, "agent_quota", format!("the tenant has {count} agents, its quota"), 60));
    }
    module_of(&st, &t, &body.module).await?;
    let module = st.module(&body.module).await?;
    check_watches(&st, &body.watches, &module)?;
    let now = now_ms();
    let rec = AgentRecord {
        tenant: t.name.clone(),
        name: body.name,
        module: body.module,
        previous_module: None,
        config: body.config,
        limits: body.limits,
        max_concurrency: body.max_concurrency,
        status: AgentStatus::Running,
        created_ms: now,
        updated_ms: now,
        watches: body.watches,
        subscriptions: body.subscriptions,
    };
    let init = match st.run_init(&module, &rec, &t.quotas).await {
        Ok(report) => report,
        Err(e) => {
            // `init` may have linked the new agent in the graph before it failed: the agent
            // is not deployed, so neither are its edges.
            st.registry.store().remove_agent_edges(&t.name, &rec.name).await?;
            return Err(e);
        }
    };
    // Whatever a former agent of this name left (a delivery that finished after its
    // delete) is not the new agent's.
    coordination::forget(&st.registry, &t.name, &rec.name).await?;
    if !rec.watches.is_empty() {
        // Before the agent record: a watching agent always has its cursor.
        coordination::start_cursor(&st.registry, &t.name, &rec.name).await?;
    }
    let rev = match st.registry.put(RecordKind::Agent, &key, &rec, Some(0)).await {
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::Conflict { code: "already_exists", message: format!("agent {:?} exists", rec.name) });
        }
        other => other?,
    };
    let d = st.install(rec, rev, module);
    d.shared.record_logs(&init);
    Ok((StatusCode::CREATED, Json(view(&st, &d))))
}

pub async fn list_agents(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<AgentView>>> {
    authorize(&p, Action::ReadAgents)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    Ok(Json(st.agents_of(&t.name).values().map(|d| view(&st, d)).collect()))
}

pub(super) async fn deployed(
    st: &AppState,
    p: &Principal,
    headers: &HeaderMap,
    name: &str,
    action: Action,
) -> ApiResult<(Arc<super::CachedTenant>, Arc<Deployed>)> {
    authorize(p, action)?;
    let t = tenant_scope(st, p, headers).await?;
    let d = st.agent(&t.name, name).ok_or_else(|| ApiError::NotFound(format!("agent {name:?} not found")))?;
    Ok((t, d))
}

pub async fn get_agent(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AgentView>> {
    let (_, d) = deployed(&st, &p, &headers, &name, Action::ReadAgents).await?;
    Ok(Json(view(&st, &d)))
}

/// Persist a changed record (compare-and-swap on the revision the change started from)
/// and install it.
async fn commit(
    st: &Arc<AppState>,
    d: &Deployed,
    mut rec: AgentRecord,
    module: Arc<crate::runtime::Module>,
) -> ApiResult<Arc<Deployed>> {
    rec.updated_ms = now_ms();
    let rev = st.registry.put(RecordKind::Agent, &scoped(&rec.tenant, &rec.name), &rec, Some(d.revision)).await?;
    Ok(st.install(rec, rev, module))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    config: BTreeMap<String, String>,
}

pub async fn update_config(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ConfigBody>,
) -> ApiResult<Json<AgentView>> {
    let (t, d) = deployed(&st, &p, &headers, &name, Action::WriteAgents).await?;
    let mut rec = d.record.clone();
    rec.config = body.config;
    // `init` sees the new config first; if it refuses, the old config stays in force.
    st.run_init(&d.module, &rec, &t.quotas).await?;
    Ok(Json(view(&st, commit(&st, &d, rec, d.module.clone()).await?.as_ref())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeBody {
    module: String,
}

pub async fn upgrade(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> ApiResult<Json<AgentView>> {
    let (t, d) = deployed(&st, &p, &headers, &name, Action::WriteAgents).await?;
    module_of(&st, &t, &body.module).await?;
    let module = st.module(&body.module).await?;
    if !d.record.watches.is_empty() {
        watcher_module(&module)?;
    }
    let mut rec = d.record.clone();
    rec.previous_module = Some(rec.module.clone());
    rec.module = body.module;
    st.run_init(&module, &rec, &t.quotas).await?;
    Ok(Json(view(&st, commit(&st, &d, rec, module).await?.as_ref())))
}

pub async fn rollback(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AgentView>> {
    let (t, d) = deployed(&st, &p, &headers, &name, Action::WriteAgents).await?;
    let mut rec = d.record.clone();
    let Some(prev) = rec.previous_module.take() else {
        return Err(ApiError::Conflict { code: "no_previous_module", message: "the agent was never upgraded".into() });
    };
    let module = st.module(&prev).await?;
    rec.previous_module = Some(std::mem::replace(&mut rec.module, prev));
    st.run_init(&module, &rec, &t.quotas).await?;
    Ok(Json(view(&st, commit(&st, &d, rec, module).await?.as_ref())))
}

async fn set_status(
    st: &Arc<AppState>,
    p: &Principal,
    headers: &HeaderMap,
    name: &str,
    status: AgentStatus,
) -> ApiResult<Json<AgentView>> {
    let (_, d) = deployed(st, p, headers, name, Action::WriteAgents).await?;
    let mut rec = d.record.clone();
    rec.status = status;
    Ok(Json(view(st, commit(st, &d, rec, d.module.clone()).await?.as_ref())))
}

pub async fn stop(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AgentView>> {
    set_status(&st, &p, &headers, &name, AgentStatus::Stopped).await
}

pub async fn start(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<AgentView>> {
    set_status(&st, &p, &headers, &name, AgentStatus::Running).await
}

pub async fn delete_agent(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let (t, _) = deployed(&st, &p, &headers, &name, Action::WriteAgents).await?;
    st.registry.delete(RecordKind::Agent, &scoped(&t.name, &name)).await?;
    st.uninstall(&t.name, &name).await;
    coordination::forget(&st.registry, &t.name, &name).await?;
    // Its edges go with it (graph import).
    st.registry.store().remove_agent_edges(&t.name, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn outcome_status(o: &Outcome) -> StatusCode {
    match o {
        Outcome::Ok { output: Some(_) } => StatusCode::OK,
        Outcome::Ok { output: None } => StatusCode::NO_CONTENT,
        Outcome::Trap { .. } => StatusCode::BAD_GATEWAY,
        Outcome::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// `POST /v1/agents/{name}/invoke` through the router. [`crate::server`] sends the requests
/// it can to [`super::invoke_direct`] instead; both read the body with [`super::read_body`]
/// and end in [`invoke_core`].
pub async fn invoke(
    State(st): St,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let body = super::read_body(body, &parts.headers, st.config.http.body_limit_bytes);
    invoke_core(&st, &p, None, parts.headers.get(TENANT_HEADER), &name, body, None).await
}

/// An invocation by `p` of agent `name`: RBAC, the tenant (`named` by a platform-admin; `own`
/// is `p`'s own tenant record if the caller has just read it), the agent, its rate quota, then
/// the `body` (read only once the rate allows it), the tenant's concurrency quota and
/// the agent's pool; the outcome as the response. The invocation ends by `deadline` (the
/// request's) if that comes before its own timeout.
pub(super) async fn invoke_core(
    st: &AppState,
    p: &Principal,
    own: Option<Arc<super::CachedTenant>>,
    named: Option<&HeaderValue>,
    name: &str,
    body: impl Future<Output = ApiResult<Bytes>>,
    deadline: Option<std::time::Instant>,
) -> ApiResult<Response> {
    authorize(p, Action::Invoke)?;
    let t = tenant_scope_known(st, p, named, own).await?;
    // An agent that does not exist costs no rate token.
    let d = st.agent(&t.name, name).ok_or_else(|| ApiError::NotFound(format!("agent {name:?} not found")))?;
    t.limiter.take().map_err(|retry| {
        too_many(
            st,
            &t.name,
            "rate_limited",
            format!("over {} invocations per second", t.quotas.invocations_per_second),
            retry,
        )
    })?;
    let input = body.await?;
    if !AppState::is_running(&d) {
        return Err(ApiError::Conflict { code: "agent_stopped", message: format!("agent {name:?} is stopped") });
    }
    let _tenant_slot = t.limiter.enter().ok_or_else(|| {
        too_many(
            st,
            &t.name,
            "concurrency_quota",
            format!("over {} concurrent invocations", t.quotas.concurrent_invocations),
            1,
        )
    })?;
    let _slot = d.shared.pool.clone().try_acquire_owned().map_err(|_| {
        ApiError::PoolFull(format!("agent {name:?} already runs {} invocations", d.record.max_concurrency))
    })?;
    let ctx = st.deployed_context_until(&d, &t.quotas, deadline);
    let report = st.runtime.invoke(&d.module, &ctx, &st.limits_for(&d.record, &t.quotas), &input).await;
    st.account(&d, &report);

    let status = outcome_status(&report.outcome);
    let code = report.outcome.code();
    let mut resp = match report.outcome {
        Outcome::Ok { output: Some(out) } => {
            // Sized once for every header this response gets (content type and length, the
            // five below, the request id), rather than grown twice.
            let mut resp = Response::new(axum::body::Body::from(out));
            *resp.headers_mut() = HeaderMap::with_capacity(8);
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            resp
        }
        Outcome::Ok { output: None } => StatusCode::NO_CONTENT.into_response(),
        // The agent's own failure: the tenant owns the agent, so the detail is theirs to see.
        other => problem(status, other.code(), other.to_string()),
    };
    let h = resp.headers_mut();
    let s = &report.stats;
    h.insert(OUTCOME_HEADER, HeaderValue::from_static(code));
    if let Some(v) = header_value_of(report.id) {
        h.insert(INVOCATION_HEADER, v);
    }
    h.insert(FUEL_HEADER, HeaderValue::from(s.fuel_used));
    h.insert(DURATION_HEADER, HeaderValue::from(u64::try_from(s.wall_time.as_micros()).unwrap_or(u64::MAX)));
    h.insert(PEAK_MEMORY_HEADER, HeaderValue::from(s.peak_memory));
    Ok(resp)
}

/// `v` as a header value, formatted on the stack; `None` past 64 bytes or for bytes a header
/// cannot hold.
fn header_value_of(v: impl std::fmt::Display) -> Option<HeaderValue> {
    struct Buf([u8; 64], usize);
    impl std::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.1 + s.len();
            self.0.get_mut(self.1..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
    let mut buf = Buf([0; 64], 0);
    std::fmt::write(&mut buf, format_args!("{v}")).ok()?;
    HeaderValue::from_bytes(&buf.0[..buf.1]).ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn logs(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<LogLine>>> {
    let (_, d) = deployed(&st, &p, &headers, &name, Action::ReadLogs).await?;
    Ok(Json(d.shared.logs(q.since, q.limit.unwrap_or(100).min(1000))))
}
