//! Workflows: definitions (`/v1/workflows`) and their runs (`/v1/workflows/{name}/runs`).
//! See [`crate::workflows`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::{AppState, Caller, Path, Query};
use crate::names::AgentName;
use crate::workflows::run::{CompensationRun, StepRun};
use crate::workflows::{Run, RunState, WorkflowError, WorkflowRecord};

type St = State<Arc<AppState>>;

/// Most bytes of a step's output shown inline in a run; the whole output is at its own
/// route.
pub const INLINE_OUTPUT_BYTES: usize = 4096;

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Invalid(i) => ApiError::Invalid { code: i.code, message: i.message },
            WorkflowError::NotFound(m) => ApiError::NotFound(m),
            WorkflowError::Conflict(m) => ApiError::Conflict { code: "run_state", message: m },
            WorkflowError::Store(s) => s.into(),
        }
    }
}

/// A step of a run as shown: its state, attempts, timings, outcome and output (bounded).
#[derive(Serialize, utoipa::ToSchema)]
pub struct StepView {
    /// The step id.
    pub id: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`, `cancelled`, `needs_attention`.
    pub state: crate::workflows::StepState,
    /// Attempts started (summed over a `for_each`'s calls).
    pub attempts: u32,
    /// Calls (1, or one per `for_each` element).
    pub calls: usize,
    /// When it started (ms since the epoch; 0: not yet).
    pub started_ms: u64,
    /// When it finished (0: not yet).
    pub finished_ms: u64,
    /// The last outcome code (`ok`, `agent_error`, `timeout`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The last failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its output, if at most [`INLINE_OUTPUT_BYTES`] of JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// Whether the output was left out for its size.
    pub output_truncated: bool,
    /// Where the whole output is.
    pub output_url: String,
}

/// A run as shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunView {
    /// Its id.
    pub id: String,
    /// The workflow.
    pub workflow: String,
    /// Its version.
    pub version: u64,
    /// `pending`, `running`, `succeeded`, `failed`, `compensating`, `compensated`,
    /// `cancelled`, `needs_attention`.
    pub state: RunState,
    /// The input.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The output, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// Why it failed, was cancelled or needs attention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Times (ms since the epoch).
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// End (0: not yet).
    pub finished_ms: u64,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// Its steps.
    pub steps: Vec<StepView>,
    /// Its compensations, in the order they run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compensations: Vec<CompensationRun>,
}

fn step_view(run: &Run, s: &StepRun) -> StepView {
    let last = s.calls.iter().rev().find(|c| c.outcome.is_some());
    let shown = s.output.as_ref().filter(|o| serde_json::to_vec(o).map_or(0, |b| b.len()) <= INLINE_OUTPUT_BYTES);
    StepView {
        id: s.id.clone(),
        state: s.state,
        attempts: s.calls.iter().map(|c| c.attempts).sum(),
        calls: s.calls.len(),
        started_ms: s.started_ms,
        finished_ms: s.finished_ms,
        outcome: s.outcome.clone().or_else(|| last.and_then(|c| c.outcome.clone())),
        message: last.and_then(|c| c.message.clone()),
        output: shown.cloned(),
        output_truncated: s.output.is_some() && shown.is_none(),
        output_url: format!("/v1/workflows/{}/runs/{}/steps/{}/output", run.workflow, run.id, s.id),
    }
}

/// The view of `run`.
pub fn view(run: &Run) -> RunView {
    RunView {
        id: run.id.clone(),
        workflow: run.workflow.clone(),
        version: run.version,
        state: run.state,
        input: run.input.clone(),
        output: run.output.clone(),
        error: run.error.clone(),
        idempotency_key: run.idempotency_key.clone(),
        created_ms: run.created_ms,
        updated_ms: run.updated_ms,
        finished_ms: run.finished_ms,
        cancel_requested: run.cancel_requested,
        steps: run.steps.iter().map(|s| step_view(run, s)).collect(),
        compensations: run.compensations.clone(),
    }
}

/// `PUT /v1/workflows/{name}`: store a new version (200 with the same version when the
/// definition did not change).
pub async fn put(
    State(st): St,
    p: Caller,
    Path(name): Path<AgentName>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let t = p.scope(&st).await?;
    let before = st.workflows.get(&t.name, &name, None).await.ok().map(|r| r.version);
    let rec = st.workflows.put(&t.name, &name, &body).await?;
    let status = if before == Some(rec.version) { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(rec)).into_response())
}

/// `?version=` of a definition read.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A version (default: the latest).
    pub version: Option<u64>,
}

/// `GET /v1/workflows/{name}`.
pub async fn get(
    State(st): St,
    p: Caller,
    Path(name): Path<AgentName>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<WorkflowRecord>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.workflows.get(&t.name, &name, q.version).await?))
}

/// `GET /v1/workflows`: the latest version of each.
pub async fn list(State(st): St, p: Caller) -> ApiResult<Json<Vec<WorkflowRecord>>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.workflows.list(&t.name).await?))
}

/// `DELETE /v1/workflows/{name}`: every version (runs go on).
pub async fn delete(State(st): St, p: Caller, Path(name): Path<AgentName>) -> ApiResult<StatusCode> {
    let t = p.scope(&st).await?;
    if st.workflows.delete(&t.name, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("workflow {:?} not found", name.as_str())))
    }
}

/// The body of `POST /v1/workflows/{name}/runs`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The run's input (`$.input`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// Starting again with the same key returns the run started first (1 to 256 bytes).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub idempotency_key: Option<String>,
}

/// `POST /v1/workflows/{name}/runs`: 201 with a new run, 200 with the run of the same
/// idempotency key.
pub async fn start(
    State(st): St,
    p: Caller,
    Path(name): Path<AgentName>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let t = p.scope(&st).await?;
    let req: StartRun = if body.is_empty() {
        StartRun { input: Value::Null, idempotency_key: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid run request: {e}")))?
    };
    if req.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 256) {
        return Err(ApiError::BadRequest("idempotency_key must be 1 to 256 bytes".into()));
    }
    let (run, new) = st.workflows.start(&t.name, &name, req.input, req.idempotency_key, &p.principal.subject).await?;
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(&run))).into_response())
}

/// Filters of a run listing.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// `GET /v1/workflows/{name}/runs`: newest first.
pub async fn runs(
    State(st): St,
    p: Caller,
    Path(name): Path<AgentName>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Vec<RunView>>> {
    let t = p.scope(&st).await?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let runs = st.workflows.runs(&t.name, Some(&name), q.state, limit).await?;
    Ok(Json(runs.iter().map(view).collect()))
}

/// The run `id` of workflow `name` (404 for a run of another workflow).
async fn find(st: &AppState, p: &Caller, name: &str, id: &str) -> ApiResult<(String, Run)> {
    let t = p.scope(st).await?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::NotFound(format!("run {id:?} not found")));
    }
    let run = st.workflows.run(&t.name, id).await?;
    if run.workflow != name {
        return Err(ApiError::NotFound(format!("run {id:?} not found")));
    }
    Ok((t.name.clone(), run))
}

/// `GET /v1/workflows/{name}/runs/{id}`.
pub async fn get_run(
    State(st): St,
    p: Caller,
    Path((name, id)): Path<(AgentName, String)>,
) -> ApiResult<Json<RunView>> {
    let (_, run) = find(&st, &p, &name, &id).await?;
    Ok(Json(view(&run)))
}

/// `GET /v1/workflows/{name}/runs/{id}/steps/{step}/output`: the whole output.
pub async fn step_output(
    State(st): St,
    p: Caller,
    Path((name, id, step)): Path<(AgentName, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, run) = find(&st, &p, &name, &id).await?;
    let s = run.steps.iter().find(|s| s.id == step).ok_or_else(|| ApiError::NotFound(format!("no step {step:?}")))?;
    Ok(Json(s.output.clone().unwrap_or(Value::Null)))
}

/// `POST /v1/workflows/{name}/runs/{id}/cancel`: 202; the run ends once its running calls
/// return (409 `run_state` if it has ended).
pub async fn cancel(State(st): St, p: Caller, Path((name, id)): Path<(AgentName, String)>) -> ApiResult<Response> {
    let (tenant, _) = find(&st, &p, &name, &id).await?;
    let run = st.workflows.cancel(&tenant, &id, &p.principal.subject).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&run))).into_response())
}

/// The body of `POST /v1/workflows/{name}/runs/{id}/resolve`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// The step that needs attention.
    pub step: String,
    /// `retry`: run it again; `skip`: take it as done, with `output`.
    pub action: ResolveAction,
    /// The output a skipped step gets (default `null`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
}

/// What to do with a step that needs attention.
#[derive(Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResolveAction {
    /// Run it again.
    Retry,
    /// Take it as done.
    Skip,
}

/// `POST /v1/workflows/{name}/runs/{id}/resolve`: a run in `needs_attention` goes on.
pub async fn resolve(
    State(st): St,
    p: Caller,
    Path((name, id)): Path<(AgentName, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RunView>> {
    let (tenant, _) = find(&st, &p, &name, &id).await?;
    let req: Resolve =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid resolution: {e}")))?;
    let retry = matches!(req.action, ResolveAction::Retry);
    let run = st.workflows.resolve(&tenant, &id, &req.step, retry, req.output, &p.principal.subject).await?;
    Ok(Json(view(&run)))
}
