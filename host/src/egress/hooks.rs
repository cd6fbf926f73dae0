//! The `wasi:http` hooks of one invocation: every outgoing request goes through
//! [`EgressHooks::send_request`], which counts it as a host call, holds it to the
//! invocation's cap on concurrent requests and hands it to the node's [`super::Egress`].
//! An invocation without an egress link (no service: `cortex run`) has every request
//! denied with `HTTP-request-denied`, as one whose agent has no grant.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::EgressLink;
use super::send::Caller;

/// The `wasi:http` hooks of one invocation.
pub struct EgressHooks {
    link: Option<EgressLink>,
    tenant: Arc<str>,
    agent: Arc<str>,
    deadline: Instant,
    concurrent: Arc<Semaphore>,
    /// Host calls the invocation has left (set before each use by the host state).
    pub calls_left: u64,
    /// Requests sent since the host state last counted them.
    pub sent: u64,
}

impl std::fmt::Debug for EgressHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressHooks").field("sent", &self.sent).finish_non_exhaustive()
    }
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn std::future::Future<Output = Result<(), Error>> + Send>),
                Error,
            >,
        > + Send,
>;

impl EgressHooks {
    /// The hooks of an invocation of `agent` of `tenant` through `link`, ending at `deadline`.
    pub fn new(link: Option<EgressLink>, tenant: Arc<str>, agent: Arc<str>, deadline: Instant) -> Self {
        let max = link.as_ref().map_or(1, |l| l.service.config.max_concurrent.max(1));
        Self { link, tenant, agent, deadline, concurrent: Arc::new(Semaphore::new(max)), calls_left: 0, sent: 0 }
    }
}

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        if self.calls_left == 0 {
            return Box::new(async { Err(Error::InternalError(Some("host call limit reached".into()))) });
        }
        self.calls_left -= 1;
        self.sent += 1;
        let Some(link) = self.link.clone() else {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        let Ok(permit) = self.concurrent.clone().try_acquire_owned() else {
            tracing::info!(target: "cortex::egress", tenant = %self.tenant, agent = %self.agent, "too many outbound requests at once");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        };
        // One span per request, an OpenTelemetry HTTP client span when tracing is on:
        // method, server address and port, scheme and path, the response status; never the
        // query (`url.full` is left out for it), headers or body.
        let mut request = request;
        let uri = request.uri();
        let method = match crate::telemetry::http::method_label(request.method()) {
            "other" => "_OTHER",
            m => m,
        };
        let port = uri.port_u16().or(super::grant::Scheme::of(uri).map(super::grant::Scheme::default_port));
        let span = tracing::info_span!(
            target: "cortex::egress",
            "egress",
            tenant = %self.tenant,
            agent = %self.agent,
            method = %request.method(),
            host = uri.host().unwrap_or(""),
            otel.name = if method == "_OTHER" { "HTTP" } else { method },
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            server.address = uri.host().unwrap_or(""),
            server.port = port.unwrap_or(0),
            url.scheme = uri.scheme_str().unwrap_or(""),
            url.path = uri.path(),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            cortex.tenant = %self.tenant,
            cortex.agent = %self.agent,
        );
        crate::telemetry::otel::inject_into_egress(&span, request.headers_mut());
        let caller = Caller { tenant: self.tenant.clone(), agent: self.agent.clone(), deadline: self.deadline };
        let service = link.service.clone();
        let sent = service.send(link, caller, permit, request, options);
        let outcome = span.clone();
        Box::new(tracing::Instrument::instrument(
            async move {
                let r = sent.await;
                match &r {
                    Ok((resp, _)) => {
                        let status = resp.status().as_u16();
                        outcome.record("http.response.status_code", status);
                        if status >= 400 {
                            outcome.record("error.type", crate::telemetry::http::status_label(status));
                            outcome.record("otel.status_code", "error");
                        }
                    }
                    Err(e) => {
                        outcome.record("error.type", super::send::status_of(e));
                        outcome.record("otel.status_code", "error");
                    }
                }
                r
            },
            span,
        ))
    }
}
