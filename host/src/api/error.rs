//! API errors as RFC 9457 problem+json with a stable `code`.
//!
//! What a client sees is sanitised: a 5xx body says only that the server failed and gives
//! the request id to quote; the detail goes to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::runtime::LoadError;
use crate::store::StoreError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a part of the request is malformed, with its own code (`invalid_query`,
    /// `invalid_path`, ...).
    #[error("{message}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
    },
    /// 401: no or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 401: the credentials are of an earlier tenant of the same name (deleted since).
    #[error("{0}")]
    CredentialsPredateTenant(String),
    /// 401: the token's signing key is not among its issuer's keys (fetched again at most
    /// once per interval).
    #[error("{0}")]
    UnknownSigningKey(String),
    /// 403: authenticated, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 403: the tenant header names another tenant than the credentials' own (only a
    /// platform-admin may act in another tenant).
    #[error("{0}")]
    ForeignTenant(String),
    /// 404: no such object (also for other tenants' objects).
    #[error("{0}")]
    NotFound(String),
    /// 404: no such route.
    #[error("no such route")]
    NoRoute,
    /// 408: the request took longer than the request timeout.
    #[error("the request took longer than {} ms", .0.as_millis())]
    RequestTimeout(std::time::Duration),
    /// 409: conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
    },
    /// 413: body too large.
    #[error("{0}")]
    TooLarge(String),
    /// 422: the module was refused at load.
    #[error("{0}")]
    Module(#[from] LoadError),
    /// 422: the agent's `init` refused the configuration.
    #[error("{message}")]
    Init {
        /// The outcome code of the init call.
        code: String,
        /// Detail.
        message: String,
    },
    /// 429: over a rate or quota.
    #[error("{message}")]
    TooMany {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// 503: the agent's circuit breaker is open; nothing ran.
    #[error("{message}")]
    CircuitOpen {
        /// Detail.
        message: String,
        /// Seconds until a retry may be let through.
        retry_after: u64,
    },
    /// 503 with `Retry-After: 1`: the agent is busy (`pool_full`: its queue is full;
    /// `queue_timeout`: the wait in its queue ran out).
    #[error("{message}")]
    Busy {
        /// Stable code.
        code: &'static str,
        /// Detail.
        message: String,
    },
    /// A deploy's or upgrade's `oci://` module could not be pulled (400, 403, 404, 413,
    /// 422 or 502, by [`crate::oci::OciError::status`]).
    #[error("{0}")]
    Oci(#[from] crate::oci::OciError),
    /// 500: the server failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => {
                ApiError::Conflict { code: "concurrent_update", message: "the object changed meanwhile; retry".into() }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A name that breaks the rule, given in a body (a path is refused by its extractor).
impl From<crate::names::NameError> for ApiError {
    fn from(e: crate::names::NameError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// The problem+json body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Detail for people.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// An agent's own error code, for an invocation that ended `agent_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_code: Option<String>,
    /// An agent's own error message, for an invocation that ended `agent_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_message: Option<String>,
    /// The id of the request, as in its `x-request-id` response header: quote it when
    /// reporting a problem (the server's log has it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The OpenTelemetry trace id of the request (32 hex digits), when tracing is on:
    /// find the request's spans by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl ApiError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, String) {
        let (s, c): (StatusCode, &str) = match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::CredentialsPredateTenant(_) => (StatusCode::UNAUTHORIZED, "credentials_predate_tenant"),
            ApiError::UnknownSigningKey(_) => (StatusCode::UNAUTHORIZED, "unknown_signing_key"),
            ApiError::ForeignTenant(_) => (StatusCode::FORBIDDEN, "foreign_tenant"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Module(e) => match e {
                LoadError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                other => (StatusCode::UNPROCESSABLE_ENTITY, other.code()),
            },
            ApiError::Init { code, .. } => return (StatusCode::UNPROCESSABLE_ENTITY, format!("init_{code}")),
            ApiError::TooMany { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            ApiError::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit_open"),
            ApiError::Busy { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::Oci(e) => (StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY), e.code()),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        (s, c.to_owned())
    }
}

/// A problem+json response.
pub fn problem(status: StatusCode, code: &str, detail: String) -> Response {
    problem_response(problem_body(status, code, detail))
}

/// The problem of an invocation that ended `agent_error`: the agent's own `code` and
/// `message` as fields (`agent_code`, `agent_message`) beside the detail.
pub fn agent_problem(status: StatusCode, detail: String, agent_code: String, agent_message: String) -> Response {
    let mut body = problem_body(status, "agent_error", detail);
    body.agent_code = Some(agent_code);
    body.agent_message = Some(agent_message);
    problem_response(body)
}

fn problem_body(status: StatusCode, code: &str, detail: String) -> Problem {
    Problem {
        kind: format!("https://cortex.dev/problems/{code}"),
        title: status.canonical_reason().unwrap_or("error").to_owned(),
        status: status.as_u16(),
        detail,
        code: code.to_owned(),
        agent_code: None,
        agent_message: None,
        request_id: super::request_id::current(),
        trace_id: crate::telemetry::otel::current_trace_id(),
    }
}

fn problem_response(body: Problem) -> Response {
    let status = StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // A registry's failure (502) is the registry's, not this server's: its detail is shown.
        let shown = status == StatusCode::SERVICE_UNAVAILABLE || matches!(self, ApiError::Oci(_));
        let detail = if status.is_server_error() && !shown {
            tracing::error!(error = %self, "request failed");
            "the server failed to handle this request; the error is in its log".to_owned()
        } else {
            self.to_string()
        };
        let mut resp = problem(status, &code, detail);
        if let ApiError::TooMany { retry_after, .. } | ApiError::CircuitOpen { retry_after, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let ApiError::Busy { .. } = &self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// The code of a refusal the framework made rather than a handler (a method a route does
/// not have, a body of the wrong media type, ...), by its status.
pub fn code_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "no_route",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "too_many_requests",
        431 => "headers_too_large",
        501 => "not_implemented",
        503 => "unavailable",
        s if s < 500 => "client_error",
        _ => "internal",
    }
}
