//! Modules, agents, invocations and agent logs: everything scoped to the caller's tenant.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, ApiResult, agent_problem, problem};
use super::state::LogLine;
use super::{
    AppState, Caller, DURATION_HEADER, FUEL_HEADER, INVOCATION_HEADER, JsonBody, OUTCOME_HEADER, PEAK_MEMORY_HEADER,
    Path, Query, RequestDeadline,
};
use crate::agents::{AgentView, AgentsError, DeploySpec, Deployed};
use crate::names::AgentName;
use crate::registry::{AgentStatus, ModuleRecord, Probation, Tenant, now_ms, scoped};
use crate::runtime::{Outcome, World, digest};
use crate::store::{RecordKind, StoreError};

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

/// What the lifecycle refuses, as the API answers it.
impl From<AgentsError> for ApiError {
    fn from(e: AgentsError) -> Self {
        match e {
            AgentsError::Invalid(m) => ApiError::BadRequest(m),
            AgentsError::Refused { code, message } => ApiError::Invalid { code, message },
            AgentsError::NotFound(m) => ApiError::NotFound(m),
            AgentsError::Conflict { code, message } => ApiError::Conflict { code, message },
            AgentsError::OverQuota { code, message, retry_after } => ApiError::TooMany { code, message, retry_after },
            AgentsError::CircuitOpen { message, retry_after } => ApiError::CircuitOpen { message, retry_after },
            AgentsError::PoolFull(m) => ApiError::Busy { code: "pool_full", message: m },
            AgentsError::QueueTimeout(m) => ApiError::Busy { code: "queue_timeout", message: m },
            AgentsError::Init { code, message } => ApiError::Init { code, message },
            AgentsError::Module(e) => ApiError::Module(e),
            AgentsError::Store(e) => e.into(),
            AgentsError::Internal(m) => ApiError::Internal(m),
        }
    }
}

pub async fn upload_module(
    State(st): St,
    p: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    let t = p.scope(&st).await?;
    let limit = st.config.http.module_limit_bytes;
    if super::declared_length(&headers).is_some_and(|n| n > limit as u64) {
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
    let _files = st.agents.modules.files().await;
    st.agents.modules.save_bytes(&d, &bytes)?;
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
        warnings: module.shape.warnings(),
        created_ms: now_ms(),
    };
    st.agents.modules.cache(module);
    match st.registry.put(RecordKind::Module, &scoped(&t.name, &d), &rec, Some(0)).await {
        Ok(_) => Ok((StatusCode::CREATED, Json(rec))),
        // A concurrent upload of the same bytes won: same record, same answer.
        Err(StoreError::Conflict { .. }) => Ok((StatusCode::OK, Json(rec))),
        Err(e) => Err(e.into()),
    }
}

pub async fn list_modules(State(st): St, p: Caller) -> ApiResult<Json<Vec<ModuleRecord>>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.registry.list(RecordKind::Module, &scoped(&t.name, "")).await?))
}

async fn module_of(st: &AppState, t: &Tenant, d: &str) -> ApiResult<ModuleRecord> {
    Ok(st.agents.module_record(&t.name, d).await?)
}

pub async fn get_module(State(st): St, p: Caller, Path(d): Path<String>) -> ApiResult<Json<ModuleRecord>> {
    let t = p.scope(&st).await?;
    Ok(Json(module_of(&st, &t, &d).await?))
}

pub async fn delete_module(State(st): St, p: Caller, Path(d): Path<String>) -> ApiResult<StatusCode> {
    let t = p.scope(&st).await?;
    module_of(&st, &t, &d).await?;
    if st.agents.module_in_use(&t.name, &d) {
        return Err(ApiError::Conflict { code: "module_in_use", message: format!("an agent uses module {d}") });
    }
    // The record, and the bytes, artifact and loaded module unless another tenant's record
    // names the same digest.
    st.agents.modules.delete(&t.name, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deploy(
    State(st): St,
    p: Caller,
    JsonBody(spec): JsonBody<DeploySpec>,
) -> ApiResult<(StatusCode, Json<AgentView>)> {
    let t = p.scope(&st).await?;
    let _quota = st.tenant_write_lock(&t.name).await;
    let d = st.agents.deploy(&t, spec).await?;
    Ok((StatusCode::CREATED, Json(st.agents.view(&d))))
}

pub async fn list_agents(State(st): St, p: Caller) -> ApiResult<Json<Vec<AgentView>>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.agents.of(&t.name).values().map(|d| st.agents.view(d)).collect()))
}

pub(super) async fn deployed(
    st: &AppState,
    p: &Caller,
    name: &AgentName,
) -> ApiResult<(Arc<super::CachedTenant>, Arc<Deployed>)> {
    let t = p.scope(st).await?;
    let d = st.agents.find(&t.name, name)?;
    Ok((t, d))
}

pub async fn get_agent(State(st): St, p: Caller, Path(name): Path<AgentName>) -> ApiResult<Json<AgentView>> {
    let (_, d) = deployed(&st, &p, &name).await?;
    Ok(Json(st.agents.view(&d)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    config: BTreeMap<String, String>,
}

pub async fn update_config(
    State(st): St,
    p: Caller,
    Path(name): Path<AgentName>,
    JsonBody(body): JsonBody<ConfigBody>,
) -> ApiResult<Json<AgentView>> {
    let (t, _) = deployed(&st, &p, &name).await?;
    let d = st.agents.update_config(&t, &name, body.config).await?;
    Ok(Json(st.agents.view(&d)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeBody {
    module: String,
    /// If the new module fails it, the host rolls back by itself.
    #[serde(default)]
    probation: Option<Probation>,
}

pub async fn upgrade(
    State(st): St,
    p: Caller,
    Path(name): Path<AgentName>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> ApiResult<Json<AgentView>> {
    let (t, _) = deployed(&st, &p, &name).await?;
    let d = st.agents.upgrade(&t, &name, body.module, body.probation).await?;
    Ok(Json(st.agents.view(&d)))
}

pub async fn rollback(State(st): St, p: Caller, Path(name): Path<AgentName>) -> ApiResult<Json<AgentView>> {
    let (t, _) = deployed(&st, &p, &name).await?;
    let d = st.agents.rollback(&t, &name).await?;
    Ok(Json(st.agents.view(&d)))
}

async fn set_status(
    st: &Arc<AppState>,
    p: &Caller,
    name: &AgentName,
    status: AgentStatus,
) -> ApiResult<Json<AgentView>> {
    let (t, _) = deployed(st, p, name).await?;
    let d = st.agents.set_status(&t, name, status).await?;
    Ok(Json(st.agents.view(&d)))
}

pub async fn stop(State(st): St, p: Caller, Path(name): Path<AgentName>) -> ApiResult<Json<AgentView>> {
    set_status(&st, &p, &name, AgentStatus::Stopped).await
}

pub async fn start(State(st): St, p: Caller, Path(name): Path<AgentName>) -> ApiResult<Json<AgentView>> {
    set_status(&st, &p, &name, AgentStatus::Running).await
}

pub async fn delete_agent(State(st): St, p: Caller, Path(name): Path<AgentName>) -> ApiResult<StatusCode> {
    let (t, _) = deployed(&st, &p, &name).await?;
    st.agents.delete(&t.name, &name).await?;
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

/// `POST /v1/agents/{name}/invoke`, as routed. [`crate::server`] sends the requests it can
/// to [`super::invoke_direct`] instead, which authenticates with the same
/// [`Caller::authenticate`] and then calls the same [`invoke_request`].
pub async fn invoke(State(st): St, p: Caller, Path(name): Path<AgentName>, req: axum::extract::Request) -> Response {
    // The server sets it on every request; a router served without it (in-process) gets the
    // same bound from the configured request timeout.
    let deadline =
        req.extensions().get::<RequestDeadline>().copied().unwrap_or_else(|| {
            RequestDeadline::after(std::time::Duration::from_millis(st.config.http.request_timeout_ms))
        });
    invoke_request(&st, &p, &name, req, st.config.http.body_limit_bytes, deadline).await
}

/// The invocation of agent `name` that `req` asks `p` for (authenticated for
/// [`Action::Invoke`]): its body read up to `limit` bytes (413 past it) by the `deadline`
/// (408 past it), the invocation ended by the `deadline` too (504 `deadline_exceeded`), the
/// outcome as the response.
pub(super) async fn invoke_request<B>(
    st: &AppState,
    p: &Caller,
    name: &AgentName,
    req: axum::http::Request<B>,
    limit: usize,
    deadline: RequestDeadline,
) -> Response
where
    B: axum::body::HttpBody<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = deadline.bound(super::read_body(body, &parts.headers, limit));
    invoke_core(st, p, name, body, Some(deadline.at)).await.into_response()
}

/// An invocation by `p` (authenticated for [`Action::Invoke`]) of agent `name`: the tenant
/// it acts in, the agent, its rate quota, then the `body` (read only once the rate allows
/// it), the tenant's concurrency quota and the agent's pool; the outcome as the response.
/// The invocation ends by `deadline` (the request's) if that comes before its own timeout.
pub(super) async fn invoke_core(
    st: &AppState,
    p: &Caller,
    name: &AgentName,
    body: impl Future<Output = ApiResult<Bytes>>,
    deadline: Option<std::time::Instant>,
) -> ApiResult<Response> {
    let t = p.scope(st).await?;
    // An agent that does not exist, is stopped or whose breaker is open costs no rate token.
    let d = st.agents.find(&t.name, name)?;
    let ticket = st.agents.admit_invocation(&t, &d)?;
    let input = body.await?;
    let report = st.agents.invoke(&t, &d, ticket, &input, deadline).await?;

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
        // The agent's own failure: the tenant owns the agent, so the detail is theirs to see;
        // an agent's error also as fields, for clients to act on.
        Outcome::AgentError { code, message } => {
            let detail = format!("agent_error: {code}: {message}");
            agent_problem(status, detail, code, message)
        }
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines after this sequence number (default 0: the oldest kept).
    #[serde(default)]
    since: u64,
    /// At most this many lines (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn logs(
    State(st): St,
    p: Caller,
    Path(name): Path<AgentName>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<LogLine>>> {
    let (_, d) = deployed(&st, &p, &name).await?;
    Ok(Json(d.shared.logs(q.since, q.limit.unwrap_or(100).min(1000))))
}
