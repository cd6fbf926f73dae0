//! Modules, agents and invocations: everything scoped to the caller's tenant (agent logs are in
//! `logs.rs`).

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
use super::{
    AppState, Caller, DURATION_HEADER, FUEL_HEADER, INVOCATION_HEADER, JsonBody, OUTCOME_HEADER, PEAK_MEMORY_HEADER,
    Path, Query, RequestDeadline,
};
use crate::agents::{AgentView, AgentsError, DeploySpec, Deployed, Label, Uploaded};
use crate::names::AgentName;
use crate::registry::{AgentStatus, ModuleRecord, ModuleStatus, Probation, scoped};
use crate::runtime::Outcome;
use crate::store::RecordKind;

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
            AgentsError::ModuleBytes(e) => ApiError::Internal(e.to_string()),
            AgentsError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// `POST /v1/modules?name=..&tag=..`: the name and tag an upload may give its module.
#[derive(utoipa::IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

/// The module record as an answer, with its `Location`.
fn module_answer(status: StatusCode, rec: ModuleRecord) -> Response {
    let location = format!("/v1/modules/{}", rec.digest);
    let mut resp = (status, Json(rec)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub async fn upload_module(
    State(st): St,
    p: Caller,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let t = p.scope(&st).await?;
    let limit = st.config.http.module_limit_bytes;
    if super::declared_length(&headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(format!("modules are limited to {limit} bytes")));
    }
    let label = Label::of(q.name, q.tag)?;
    let bytes = body_bytes(body)?;
    let _quota = st.tenant_write_lock(&t.name).await;
    Ok(match st.agents.upload(&t, &bytes, label.as_ref(), &p.subject).await? {
        Uploaded::Created(rec) => module_answer(StatusCode::CREATED, rec),
        Uploaded::Compiling(rec) => module_answer(StatusCode::ACCEPTED, rec),
        Uploaded::Existing(rec) if rec.status == ModuleStatus::Compiling => module_answer(StatusCode::ACCEPTED, rec),
        Uploaded::Existing(rec) => module_answer(StatusCode::OK, rec),
    })
}

/// Keep a pulled component (an `oci://` deploy) as a module of tenant `t`, through the same
/// path as an upload (size limit, quota, validation, warnings); a large one compiles in the
/// background like an upload (the deploy then answers 409 `module_not_ready` until it is
/// ready). The caller holds the tenant's write lock.
async fn store_pulled(st: &AppState, t: &super::CachedTenant, bytes: &[u8], by: &str) -> ApiResult<ModuleRecord> {
    let limit = st.config.http.module_limit_bytes;
    if bytes.len() > limit {
        return Err(ApiError::TooLarge(format!("modules are limited to {limit} bytes")));
    }
    Ok(match st.agents.upload(t, bytes, None, by).await? {
        Uploaded::Created(rec) | Uploaded::Compiling(rec) | Uploaded::Existing(rec) => rec,
    })
}

pub async fn list_modules(State(st): St, p: Caller) -> ApiResult<Json<Vec<ModuleRecord>>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.registry.list(RecordKind::Module, &scoped(&t.name, "")).await?))
}

pub async fn get_module(State(st): St, p: Caller, Path(r): Path<String>) -> ApiResult<Json<ModuleRecord>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.agents.resolve_module(&t.name, &r).await?))
}

/// `GET /v1/modules/{ref}/wasm`: the component's bytes as uploaded (`application/wasm`),
/// e.g. for `cortex push NAME:TAG REF`.
pub async fn download_module(State(st): St, p: Caller, Path(r): Path<String>) -> ApiResult<Response> {
    let t = p.scope(&st).await?;
    let digest = st.agents.resolve_module(&t.name, &r).await?.digest;
    let bytes = st.agents.modules.bytes(&digest).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm"))], bytes).into_response())
}

/// `POST /v1/modules/{ref}/tags`.
#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagBody {
    /// The module name (the name rule).
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    name: String,
    /// The tag (default `latest`).
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    #[serde(default)]
    tag: Option<String>,
}

pub async fn tag_module(
    State(st): St,
    p: Caller,
    Path(r): Path<String>,
    JsonBody(body): JsonBody<TagBody>,
) -> ApiResult<Json<ModuleRecord>> {
    let t = p.scope(&st).await?;
    let label = Label::of(Some(body.name), body.tag)?.ok_or_else(|| ApiError::BadRequest("a name is needed".into()))?;
    let _quota = st.tenant_write_lock(&t.name).await;
    Ok(Json(st.agents.tag_module(&t.name, &r, &label, &p.subject).await?))
}

pub async fn delete_module(State(st): St, p: Caller, Path(r): Path<String>) -> ApiResult<StatusCode> {
    let t = p.scope(&st).await?;
    let d = st.agents.resolve_module(&t.name, &r).await?.digest;
    if st.agents.module_in_use(&t.name, &d) {
        return Err(ApiError::Conflict { code: "module_in_use", message: format!("an agent uses module {d}") });
    }
    // The record, and the bytes, artifact and loaded module unless another tenant's record
    // names the same digest.
    st.agents.modules.delete(&t.name, &d).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `module` as a module digest of tenant `t`: itself, or for an `oci://` reference, the
/// pulled component stored as a module (with its source). The pull runs before `lock` is
/// taken (it may take a while); the store under it. Returns the lock, held.
async fn resolve_module(
    st: &AppState,
    t: &super::CachedTenant,
    module: String,
    by: &str,
) -> ApiResult<(String, Option<crate::oci::OciSource>, tokio::sync::OwnedMutexGuard<()>)> {
    match super::oci_pull::pull(st, &t.name, &module).await? {
        None => Ok((module, None, st.tenant_write_lock(&t.name).await)),
        Some(pulled) => {
            let guard = st.tenant_write_lock(&t.name).await;
            let rec = store_pulled(st, t, &pulled.wasm, by).await?;
            Ok((rec.digest, Some(pulled.source), guard))
        }
    }
}

pub async fn deploy(
    State(st): St,
    p: Caller,
    JsonBody(mut spec): JsonBody<DeploySpec>,
) -> ApiResult<(StatusCode, Json<AgentView>)> {
    let t = p.scope(&st).await?;
    let module = std::mem::take(&mut spec.module);
    let (module, oci, _quota) = resolve_module(&st, &t, module, &p.subject).await?;
    spec.module = module;
    spec.oci = oci;
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
    let d = st.agents.find(&t.name, name).await?;
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
    /// Replaces the configuration in the same step (one `init` sees the new module and it).
    #[serde(default)]
    config: Option<BTreeMap<String, String>>,
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
    let (module, oci, _quota) = resolve_module(&st, &t, body.module, &p.subject).await?;
    let d = st.agents.upgrade(&t, &name, &module, body.config, oci, body.probation).await?;
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
    let d = st.agents.find(&t.name, name).await?;
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
