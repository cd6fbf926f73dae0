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
        // One span per request when tracing is on: method and host, never the path's query,
        // headers or body.
        let span = tracing::info_span!(
            target: "cortex::egress",
            "egress",
            tenant = %self.tenant,
            agent = %self.agent,
            method = %request.method(),
            host = request.uri().host().unwrap_or(""),
        );
        let caller = Caller { tenant: self.tenant.clone(), agent: self.agent.clone(), deadline: self.deadline };
        let service = link.service.clone();
        Box::new(tracing::Instrument::instrument(service.send(link, caller, permit, request, options), span))
    }
}
