//! The HTTP API under `/v1`: JSON in and out, errors as problem+json, auth and RBAC on
//! every route but health, metrics and the OpenAPI document.

mod agents;
pub mod audit_export;
pub mod auth;
pub mod backup;
pub mod caller;
mod cluster;
mod deadletters;
mod egress;
pub mod error;
mod events;
mod logs;
mod oci_pull;
pub mod oidc;
mod openapi;
mod profiles;
mod registries;
pub mod request_id;
mod routes;
mod secrets;
pub mod state;
pub mod stream_guard;
pub mod workflows;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tower::{Layer, Service};

pub use self::auth::{Action, Principal, Role};
pub use self::caller::Caller;
pub(crate) use self::caller::bearer;
pub use self::error::{ApiError, ApiResult};
pub use self::openapi::openapi;
pub use self::routes::metrics_token;
pub use self::state::{AppState, CachedTenant};
use crate::names::AgentName;
use crate::registry::{AuditEvent, now_ms};

/// Header a platform-admin uses to act within a tenant.
pub const TENANT_HEADER: &str = "x-cortex-tenant";

// Headers of an invocation's response, as constants: a header name given as a `&str` is
// parsed and copied on every insert.
/// The invocation's outcome code.
pub const OUTCOME_HEADER: HeaderName = HeaderName::from_static("x-cortex-outcome");
/// The invocation id.
pub const INVOCATION_HEADER: HeaderName = HeaderName::from_static("x-cortex-invocation");
/// Fuel the invocation used.
pub const FUEL_HEADER: HeaderName = HeaderName::from_static("x-cortex-fuel");
/// The invocation's wall time, in microseconds.
pub const DURATION_HEADER: HeaderName = HeaderName::from_static("x-cortex-duration-us");
/// The invocation's peak linear memory, in bytes.
pub const PEAK_MEMORY_HEADER: HeaderName = HeaderName::from_static("x-cortex-peak-memory");

/// A JSON body whose rejections are problem+json (400, 413).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge(e.body_text())),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Query parameters whose rejections are problem+json (400 `invalid_query`).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::Invalid { code: "invalid_query", message: e.body_text() }),
        }
    }
}

/// Path parameters whose rejections are problem+json (400 `invalid_path`, e.g. a segment
/// that is not UTF-8 once percent-decoded).
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::Invalid { code: "invalid_path", message: e.body_text() }),
        }
    }
}

/// Refuse unless `p`'s role may do `action`.
pub fn authorize(p: &Principal, action: Action) -> ApiResult<()> {
    if action.allowed(p.role) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("role {} may not {action:?}", p.role.as_str())))
    }
}

/// When a request must be answered by, set by [`crate::server`] on every request
/// (`http.request_timeout_ms` after it began): an invocation ends by then (504
/// `deadline_exceeded`), a body or a credential lookup not done by then is a 408.
#[derive(Clone, Copy, Debug)]
pub struct RequestDeadline {
    /// The instant.
    pub at: std::time::Instant,
    /// The request timeout it was set from, for the 408's message.
    pub timeout: std::time::Duration,
}

impl RequestDeadline {
    /// `http.request_timeout_ms` (`timeout`) from now.
    pub fn after(timeout: std::time::Duration) -> Self {
        Self { at: std::time::Instant::now() + timeout, timeout }
    }

    /// `fut`'s output, or a 408 if the deadline comes first.
    pub async fn bound<T>(self, fut: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
        match crate::runtime::deadline::within(self.at.into(), fut).await {
            Some(out) => out,
            None => Err(ApiError::RequestTimeout(self.timeout)),
        }
    }
}

/// Does the request go to the invocation route (`POST /v1/agents/{name}/invoke`, its name
/// percent-encoded or not)? Such a request bounds itself by its [`RequestDeadline`] (the
/// credentials and the body by a 408, the invocation by its own 504 `deadline_exceeded`):
/// the server puts no second timer around it that could cut the invocation's outcome.
pub fn bounds_itself(method: &Method, path: &str) -> bool {
    *method == Method::POST && path.starts_with("/v1/agents/") && path.ends_with("/invoke")
}

/// The agent name of an invocation the server can run without the router: `POST
/// /v1/agents/{name}/invoke` with a well-formed name (anything else, including a
/// percent-encoded name, takes the router and gets the same answer there).
pub fn invoke_target(method: &Method, path: &str) -> Option<AgentName> {
    if !bounds_itself(method, path) {
        return None;
    }
    AgentName::parse(path.strip_prefix("/v1/agents/")?.strip_suffix("/invoke")?).ok()
}

/// The invocation route without the router, for requests [`invoke_target`] accepts (it gave
/// `agent`): the very same [`Caller::authenticate`] (for [`Action::Invoke`]) and the very
/// same [`agents::invoke_request`] as the route's handler, only without routing, the route
/// guard and the extractors. The body is read only up to `limit` bytes (413 past it); the
/// credentials and the body by the `deadline` (408 past it), the invocation by it too (504
/// `deadline_exceeded`).
pub async fn invoke_direct<B>(
    st: Arc<AppState>,
    req: axum::http::Request<B>,
    agent: AgentName,
    limit: usize,
    deadline: RequestDeadline,
) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    // Answered from caches on the first poll almost always; a slow store (an API key, a
    // tenant not cached yet) is bounded by the request timeout, as on the routed lane.
    match deadline.bound(Caller::authenticate(&st, req.headers(), Some(Action::Invoke))).await {
        Ok(caller) => agents::invoke_request(&st, &caller, &agent, req, limit, deadline).await,
        Err(e) => e.into_response(),
    }
}

/// A whole request body of at most `limit` bytes: refused at once when its declared
/// length is larger, else as soon as more arrives.
pub(super) async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize) -> ApiResult<axum::body::Bytes>
where
    B: axum::body::HttpBody<Data = axum::body::Bytes>,
    B::Error: Into<axum::BoxError>,
{
    use http_body_util::BodyExt;
    let too_large = || ApiError::TooLarge(format!("the request body is larger than {limit} bytes"));
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::BadRequest(format!("cannot read the request body: {e}"))),
    }
}

/// The body length a request's `Content-Length` declares, if it is a number.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

/// Authentication and audit around each `/v1` route, as one layer: the [`Caller`] (401
/// without credentials, 403 for a role or tenant header the route refuses), handed to the
/// handler as its extractor; and an audit
/// event for every mutating call (invocations excepted: they are counted in metrics, not
/// audited).
#[derive(Clone)]
struct Guard(Arc<AppState>);

impl<S> Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { state: self.0.clone(), inner }
    }
}

#[derive(Clone)]
struct Guarded<S> {
    state: Arc<AppState>,
    inner: S,
}

impl<S> Service<Request> for Guarded<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The inner service was polled ready; the clone takes its place for the next call.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(guard(self.state.clone(), req, inner))
    }
}

/// What a route does, for the check made before its handler runs (and so before its body
/// is read or validated): `None` for a method the route does not have (the router answers 405).
/// This table is the one RBAC decision of a routed request (handlers do not check again):
/// a role that may not call a route learns nothing from it, not even the names of its
/// body's fields.
pub fn route_action(method: &Method, route: &str) -> Option<Action> {
    let read = *method == Method::GET || *method == Method::HEAD;
    let m = |want: Method| *method == want;
    Some(match route {
        "/v1/tenants" if read || m(Method::POST) => Action::ManageTenants,
        "/v1/cluster" if read => Action::ManageTenants,
        "/v1/tenants/{tenant}" if read => Action::ReadTenant,
        "/v1/tenants/{tenant}" if m(Method::PATCH) || m(Method::DELETE) => Action::ManageTenants,
        "/v1/keys" if read || m(Method::POST) => Action::ManageKeys,
        "/v1/keys/{id}" if m(Method::DELETE) => Action::ManageKeys,
        "/v1/audit" | "/v1/audit/export" if read => Action::ReadAudit,
        "/v1/profiles" | "/v1/profiles/{name}" if read => Action::ReadProfiles,
        "/v1/profiles/{name}" if m(Method::PUT) || m(Method::DELETE) => Action::ManageProfiles,
        "/v1/registries" if read => Action::ManageRegistries,
        "/v1/registries/{host}" if m(Method::PUT) || m(Method::DELETE) => Action::ManageRegistries,
        "/v1/secrets" | "/v1/secrets/{name}" if read => Action::ManageSecrets,
        "/v1/admin/backup" if read => Action::Backup,
        "/v1/secrets/{name}" if m(Method::PUT) || m(Method::DELETE) => Action::ManageSecrets,
        "/v1/egress" if read || m(Method::PUT) => Action::ManageEgress,
        "/v1/events" | "/v1/events/stream" if read => Action::ReadAgents,
        "/v1/modules" | "/v1/modules/{digest}" | "/v1/modules/{digest}/wasm" if read => Action::ReadModules,
        "/v1/modules" if m(Method::POST) => Action::WriteModules,
        "/v1/modules/{digest}" if m(Method::DELETE) => Action::WriteModules,
        "/v1/modules/{digest}/tags" if m(Method::POST) => Action::WriteModules,
        "/v1/agents" | "/v1/agents/{name}" | "/v1/agents/{name}/deadletters" if read => Action::ReadAgents,
        "/v1/agents" if m(Method::POST) => Action::WriteAgents,
        "/v1/agents/{name}" if m(Method::DELETE) => Action::WriteAgents,
        "/v1/agents/{name}/config" if m(Method::PUT) => Action::WriteAgents,
        "/v1/agents/{name}/upgrade"
        | "/v1/agents/{name}/rollback"
        | "/v1/agents/{name}/stop"
        | "/v1/agents/{name}/start"
        | "/v1/agents/{name}/deadletters/{id}/replay"
            if m(Method::POST) =>
        {
            Action::WriteAgents
        }
        "/v1/agents/{name}/deadletters/{id}" if m(Method::DELETE) => Action::WriteAgents,
        "/v1/agents/{name}/invoke" if m(Method::POST) => Action::Invoke,
        "/v1/agents/{name}/logs" | "/v1/agents/{name}/logs/stream" if read => Action::ReadLogs,
        "/v1/workflows"
        | "/v1/workflows/{name}"
        | "/v1/workflows/{name}/runs"
        | "/v1/workflows/{name}/runs/{id}"
        | "/v1/workflows/{name}/runs/{id}/steps/{step}/output"
            if read =>
        {
            Action::ReadAgents
        }
        "/v1/workflows/{name}" if m(Method::PUT) || m(Method::DELETE) => Action::WriteAgents,
        "/v1/workflows/{name}/runs" if m(Method::POST) => Action::Invoke,
        "/v1/workflows/{name}/runs/{id}/cancel" | "/v1/workflows/{name}/runs/{id}/resolve" if m(Method::POST) => {
            Action::WriteAgents
        }
        _ => return None,
    })
}

/// The most body bytes `route` takes (module uploads have their own limit).
fn body_limit_of(st: &AppState, route: &str) -> usize {
    if route == "/v1/modules" { st.config.http.module_limit_bytes } else { st.config.http.body_limit_bytes }
}

/// What is refused before a route's handler runs, in this order: a role that may not call
/// the route (403), a tenant header naming another tenant than a non-platform-admin's own
/// (403 `foreign_tenant`), both by [`Caller::permit`]; a body declared larger than the route
/// takes (413, before a byte of it is read).
fn refusal(st: &AppState, c: &Caller, req: &Request, route: &str) -> Option<ApiError> {
    if let Err(e) = c.permit(route_action(req.method(), route)) {
        return Some(e);
    }
    let limit = body_limit_of(st, route);
    let declared = declared_length(req.headers());
    if declared.is_some_and(|n| n > limit as u64) {
        return Some(ApiError::TooLarge(format!("the request body is larger than {limit} bytes")));
    }
    None
}

/// The response to a request refused before its handler ran. Its body, unread, is read and
/// dropped first (up to the route's `limit`, by the request's `deadline`): a client still
/// sending it then reads the refusal, where closing the connection under it would give it a
/// broken pipe instead. A body declared over the limit is not waited for: the refusal (413, or
/// the 403 found before it) goes out at once and the connection closes.
async fn refuse(e: ApiError, req: Request, limit: usize, deadline: Option<RequestDeadline>) -> Response {
    use http_body_util::BodyExt;
    let declared = declared_length(req.headers());
    // A body declared over the limit would not be read whole anyway: whatever the refusal
    // (413, or a 403 found first), it goes out at once, as a 413 does.
    if matches!(e, ApiError::TooLarge(_)) || declared.is_some_and(|n| n > limit as u64) {
        let mut resp = e.into_response();
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return resp;
    }
    let drain = async {
        let mut body = req.into_body();
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > limit {
                break;
            }
        }
        Ok(())
    };
    if let Some(d) = deadline {
        // A body that does not come by then is not waited for: the refusal goes out anyway.
        let _ = d.bound(drain).await;
    } else {
        let _: ApiResult<()> = drain.await;
    }
    e.into_response()
}

async fn guard<S>(st: Arc<AppState>, mut req: Request, mut inner: S) -> Result<Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let deadline = req.extensions().get::<RequestDeadline>().copied();
    let identified = Caller::identify(&st, req.headers());
    let identified = match deadline {
        Some(d) => d.bound(identified).await,
        None => identified.await,
    };
    let c = match identified {
        Ok(c) => c,
        Err(e) => return Ok(e.into_response()),
    };
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| req.uri().path(), MatchedPath::as_str);
    let refused = refusal(&st, &c, &req, route);
    // The handler gets its caller, permitted by `refusal`, only for a route whose action the
    // table knows: a handler the table does not cover gets none and answers 401 (fails
    // closed); a method the route does not have never reaches a handler (405).
    let known = route_action(req.method(), route).is_some();
    let limit = body_limit_of(&st, route);
    if !mutating || route.ends_with("/invoke") {
        if let Some(e) = refused {
            return Ok(refuse(e, req, limit, deadline).await);
        }
        if known {
            req.extensions_mut().insert(c);
        }
        return inner.call(req).await;
    }
    let route = route.to_owned();
    let path = req.uri().path().to_owned();
    let action = format!("{} {route}", req.method());
    let p = &c.principal;
    let tenant = match p {
        // The tenant as its handler reads it (percent-decoded): `/v1/tenants/%61cme` is
        // `acme`, and its events go to acme's log.
        p if p.role == Role::PlatformAdmin && route.starts_with("/v1/tenants") => {
            use axum::RequestExt;
            match req.extract_parts::<axum::extract::Path<std::collections::HashMap<String, String>>>().await {
                Ok(axum::extract::Path(mut params)) => params.remove("tenant").unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
        p if p.role == Role::PlatformAdmin => c.named().map(str::to_owned).unwrap_or_default(),
        p => p.tenant.as_deref().unwrap_or_default().to_owned(),
    };
    // The id of the tenant acted on, found before the call (a delete removes it): the event
    // goes to that tenant's own log, never to a later tenant of the same name.
    let tenant_id = match c.own().filter(|t| t.name == tenant) {
        Some(t) => t.id.clone(),
        None if tenant.is_empty() => String::new(),
        None => st.tenant(&tenant).await.ok().flatten().map(|t| t.id.clone()).unwrap_or_default(),
    };
    let actor = p.subject.to_string();
    let resp = match refused {
        Some(e) => refuse(e, req, limit, deadline).await,
        None => {
            if known {
                req.extensions_mut().insert(c);
            }
            inner.call(req).await?
        }
    };
    let event = AuditEvent {
        seq: 0,
        time_ms: now_ms(),
        actor,
        tenant,
        tenant_id,
        action,
        target: path,
        outcome: resp.status().as_u16(),
        detail: String::new(),
    };
    if let Err(e) = st.registry.audit(&event).await {
        tracing::error!(error = %e, "cannot append an audit event");
    }
    Ok(resp)
}

/// The whole API. The default body limit (`http.body_limit_bytes`) is applied outside, by
/// [`crate::server::service`], once per request; module uploads have their own.
pub fn router(state: Arc<AppState>) -> Router {
    let module_limit = state.config.http.module_limit_bytes;
    let metrics_token = Arc::new(routes::metrics_token(&state.config.metrics));
    let authed = Router::new()
        .route("/v1/tenants", post(routes::create_tenant).get(routes::list_tenants))
        .route("/v1/cluster", get(cluster::get))
        .route(
            "/v1/tenants/{tenant}",
            get(routes::get_tenant).patch(routes::update_tenant).delete(routes::delete_tenant),
        )
        .route("/v1/keys", post(routes::create_key).get(routes::list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(routes::revoke_key))
        .route("/v1/audit", get(routes::list_audit))
        .route("/v1/audit/export", get(audit_export::export))
        .route("/v1/profiles", get(profiles::list))
        .route("/v1/profiles/{name}", get(profiles::get).put(profiles::put).delete(profiles::delete))
        .route("/v1/registries", get(registries::list))
        .route("/v1/registries/{host}", put(registries::put).delete(registries::delete))
        .route("/v1/admin/backup", get(backup::backup))
        .route("/v1/secrets", get(secrets::list))
        .route("/v1/secrets/{name}", get(secrets::get).put(secrets::put).delete(secrets::delete))
        .route("/v1/egress", get(egress::get).put(egress::put))
        .route("/v1/events", get(events::list))
        .route("/v1/events/stream", get(events::stream))
        .route(
            "/v1/modules",
            post(agents::upload_module).get(agents::list_modules).layer(DefaultBodyLimit::max(module_limit)),
        )
        .route("/v1/modules/{digest}", get(agents::get_module).delete(agents::delete_module))
        .route("/v1/modules/{digest}/tags", post(agents::tag_module))
        .route("/v1/modules/{digest}/wasm", get(agents::download_module))
        .route("/v1/agents", post(agents::deploy).get(agents::list_agents))
        .route("/v1/agents/{name}", get(agents::get_agent).delete(agents::delete_agent))
        .route("/v1/agents/{name}/config", put(agents::update_config))
        .route("/v1/agents/{name}/upgrade", post(agents::upgrade))
        .route("/v1/agents/{name}/rollback", post(agents::rollback))
        .route("/v1/agents/{name}/stop", post(agents::stop))
        .route("/v1/agents/{name}/start", post(agents::start))
        .route("/v1/agents/{name}/invoke", post(agents::invoke))
        .route("/v1/agents/{name}/logs", get(logs::list))
        .route("/v1/agents/{name}/logs/stream", get(logs::stream))
        .route("/v1/agents/{name}/deadletters", get(deadletters::list))
        .route("/v1/agents/{name}/deadletters/{id}", axum::routing::delete(deadletters::discard))
        .route("/v1/agents/{name}/deadletters/{id}/replay", post(deadletters::replay))
        .route("/v1/workflows", get(workflows::list))
        .route("/v1/workflows/{name}", get(workflows::get).put(workflows::put).delete(workflows::delete))
        .route("/v1/workflows/{name}/runs", get(workflows::runs).post(workflows::start))
        .route("/v1/workflows/{name}/runs/{id}", get(workflows::get_run))
        .route("/v1/workflows/{name}/runs/{id}/cancel", post(workflows::cancel))
        .route("/v1/workflows/{name}/runs/{id}/resolve", post(workflows::resolve))
        .route("/v1/workflows/{name}/runs/{id}/steps/{step}/output", get(workflows::step_output))
        .layer(Guard(state.clone()));
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route(
            "/metrics",
            get(move |State(st): State<Arc<AppState>>, headers: HeaderMap| {
                let token = metrics_token.clone();
                async move { routes::metrics(&st, &headers, &token).await }
            }),
        )
        .route("/v1/openapi.json", get(routes::openapi_doc))
        .merge(authed)
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn(crate::telemetry::http::tag_route))
        .with_state(state)
}
