//! `cortex serve`: open the store, restore agents, serve the API, drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::HttpBody;
use axum::extract::DefaultBodyLimit;
use axum::http::header::HeaderName;
use axum::http::{HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;
use tracing::Instrument;

use crate::api::auth::{AuthError, Verifier};
use crate::api::error::ApiError;
use crate::api::{self, AppState};
use crate::config::{ServerConfig, StoreConfig};
use crate::runtime::{Runtime, RuntimeError};
use crate::store::{ArangoStore, EmbeddedStore, Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Auth configuration is wrong.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The secrets key is missing, unreadable, or not the one the store's secrets need.
    #[error(transparent)]
    Secrets(#[from] crate::vault::VaultError),
    /// Agents could not be restored.
    #[error("restoring agents: {0}")]
    Restore(#[from] ApiError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Trace export (`[telemetry]`) could not be turned on.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::otel::OtelError),
}

/// Build the application state for `config` (store, runtime, verifier) and restore agents.
pub async fn build(config: ServerConfig) -> Result<Arc<AppState>, ServeError> {
    crate::fsutil::prepare_data_dir(&config.data_dir)
        .map_err(|source| StoreError::Open { path: config.data_dir.clone(), source })?;
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Embedded {} => Arc::new(EmbeddedStore::open(&config.data_dir.join("store"))?),
        StoreConfig::Arangodb(cfg) => Arc::new(ArangoStore::connect(cfg).await?),
    };
    build_on(config, store).await
}

/// [`build`] over a store opened by the caller (several nodes of one process sharing one
/// store, in tests and benches): `config.store` is not read.
pub async fn build_on(config: ServerConfig, store: Arc<dyn Store>) -> Result<Arc<AppState>, ServeError> {
    crate::fsutil::prepare_data_dir(&config.data_dir)
        .map_err(|source| StoreError::Open { path: config.data_dir.clone(), source })?;
    let runtime = Runtime::new(config.engine.clone(), Some(&config.data_dir.join("cache")))?;
    let verifier = Verifier::new(&config.auth, &config.data_dir)?;
    crate::telemetry::otel::install(&config.telemetry)?;
    // A metrics token that cannot be read stops the start, not only the scrapes.
    api::metrics_token(&config.metrics).map_err(AuthError::Config)?;
    // The registry stream's head before the agents are read: every change after it is
    // applied by the follower, so none made meanwhile by another node is missed.
    let from = store.feed_head(crate::store::REGISTRY_FEED).await?;
    let env_key = std::env::var(crate::vault::KEY_ENV).ok();
    let keys = crate::vault::Keyring::load(&config.secrets, &config.data_dir, env_key.as_deref())?;
    // Secrets this node could not open stop the start, not a later outbound request.
    let check = crate::vault::Vault::new(store.clone(), keys, &config.secrets);
    check.check_keys().await?;
    let state = Arc::new(AppState::with_keys(config, runtime, store, verifier, check.into_keys())?);
    state.verifier.start(&state.metrics.oidc());
    if state.config.audit.retention_days > 0 {
        tokio::spawn(api::audit_export::retention(Arc::downgrade(&state)));
    }
    let n = state.agents.restore().await.map_err(ApiError::from)?;
    tracing::info!(agents = n, node = %state.agents.cluster().id(), "agents restored");
    tokio::spawn(crate::cluster::follow::follow(Arc::downgrade(&state), from));
    state.agents.count_records().await?;
    Ok(state)
}

/// The header carrying a request's id (see [`api::request_id`]).
pub use crate::api::request_id::REQUEST_ID;

/// What every request goes through before and after routing, once (not wrapped around each
/// route, where axum would clone and box it per route level): a span with the method, path and
/// a server-made request id (echoed as `x-request-id`), the default body limit, and the
/// request's deadline ([`api::RequestDeadline`], `http.request_timeout_ms` from its start).
/// Invocations, the hot path, skip the router (see [`api::invoke_direct`]: the same
/// authentication and invocation code as the route, only without routing).
#[derive(Clone)]
pub struct HttpFront {
    state: Arc<AppState>,
    router: axum::Router,
    body_limit: usize,
    timeout: Duration,
    /// The connection this copy serves, when a [`watchdog`] watches it.
    activity: Option<Arc<Activity>>,
    /// `Keep-Alive: timeout=<s>`: how long an idle connection stays open (whole seconds of
    /// `http.header_timeout_ms`, rounded down).
    keep_alive: HeaderValue,
}

/// What a connection has done, for its [`watchdog`]: requests begun and responses ended
/// (a streamed response ends when its body does). Written only by the connection's own
/// task and read once per watchdog tick, so the hot path shares no cache line across cores.
#[derive(Debug)]
struct Activity {
    begun: AtomicU64,
    ended: AtomicU64,
    /// Writes that made progress: a response still going out to a slow reader is activity.
    written: AtomicU64,
    /// Set for the whole server once it shuts down: responses then close their connection.
    closing: Arc<AtomicBool>,
}

impl Activity {
    fn new(closing: Arc<AtomicBool>) -> Self {
        Self { begun: AtomicU64::new(0), ended: AtomicU64::new(0), written: AtomicU64::new(0), closing }
    }

    /// Requests begun, responses ended and writes made so far.
    fn now(&self) -> (u64, u64, u64) {
        (self.begun.load(Ordering::Relaxed), self.ended.load(Ordering::Relaxed), self.written.load(Ordering::Relaxed))
    }

    fn end(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts its response as ended when dropped: with the response for a whole body, with the
/// body for a streamed one.
struct Ended(Arc<Activity>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A connection's socket, counting the writes that make progress for its [`watchdog`].
struct Watched<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    fn wrote(&self, r: &Poll<std::io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.written.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A body that tells `watch` about its end: a streamed response body its connection's
/// watchdog (`Ended`, by being dropped with it), a request body whether it was read to its end
/// (`Arc<AtomicBool>`, set then; from the start if it is empty).
struct Tracked<B, W> {
    body: B,
    watch: W,
}

/// What a [`Tracked`] body tells when it has been read to its end.
trait EndWatch {
    fn ended(&self) {}
}

impl EndWatch for Ended {}

impl EndWatch for Arc<AtomicBool> {
    fn ended(&self) {
        self.store(true, Ordering::Relaxed);
    }
}

impl<B: HttpBody + Unpin, W: EndWatch + Unpin> HttpBody for Tracked<B, W> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || this.body.is_end_stream() {
            this.watch.ended();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body that says whether it was read to its end.
type ReadTo<B> = Tracked<B, Arc<AtomicBool>>;

/// Where [`HttpFront`] sends a request: invocations straight to [`api::invoke_direct`], the
/// rest through the router (with `true` when the front cuts it at the request's deadline).
enum Lane<R, I> {
    Router(R, bool),
    Invoke(I),
}

impl std::fmt::Debug for HttpFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFront").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for HttpFront
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let id = api::request_id::of_request(req.headers());
        // Whether the request's body was read to its end by the time the answer is made.
        let read = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let mut req = req.map(|body| Tracked { body, watch: read.clone() });
        let activity = self.activity.clone();
        if let Some(a) = &activity {
            a.begun.fetch_add(1, Ordering::Relaxed);
        }
        // Ends the request for the watchdog however its future ends (dropped included),
        // unless the response streams on.
        let keep_alive = activity.as_ref().map(|_| self.keep_alive.clone());
        let mut ended = activity.map(Ended);
        // OpenTelemetry: a server span (semantic conventions http.*), child of the caller's
        // `traceparent` if any; its name becomes `{method} {route}` once the route is known.
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = id.to_str().unwrap_or("-"),
            otel.kind = "server",
            http.request.method = %req.method(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::otel::set_remote_parent(&span, req.headers());
        // The span's context, once: the response's headers and the trace id.
        let traceparent = crate::telemetry::otel::TraceHeaders::of(&span);
        let trace_id = traceparent.as_ref().and_then(|h| h.trace_id()).map(str::to_owned);
        if let Some(t) = &trace_id {
            span.record("trace_id", t.as_str());
        }
        let otel_span = span.clone();
        let deadline = api::RequestDeadline::after(self.timeout);
        let (started, method, metrics) = (std::time::Instant::now(), req.method().clone(), self.state.metrics.clone());
        // Where the router says which route it took (none on the fast path).
        let mut route_slot = None;
        let lane = match api::invoke_target(req.method(), req.uri().path()) {
            // Bounded inside by the request's deadline: the credentials and body by a 408, the
            // invocation by its own 504, each timer armed only if it can matter.
            // Boxed where it is made: the invocation's future is large (some 5 KB), and
            // every move of the request future below would copy it whole.
            Some(agent) => {
                Lane::Invoke(Box::pin(api::invoke_direct(self.state.clone(), req, agent, self.body_limit, deadline)))
            }
            None => {
                // The invocation route bounds itself the same way (see
                // [`api::bounds_itself`]); every other route is cut at the deadline.
                let bounded = !api::bounds_itself(req.method(), req.uri().path());
                DefaultBodyLimit::max(self.body_limit).apply(&mut req);
                req.extensions_mut().insert(deadline);
                let slot = crate::telemetry::http::RouteSlot::default();
                req.extensions_mut().insert(slot.clone());
                route_slot = Some(slot);
                let _entered = span.enter();
                Lane::Router(Service::<Request<ReadTo<B>>>::call(&mut self.router, req), bounded)
            }
        };
        let scoped_id = id.clone();
        Box::pin(api::request_id::scope(
            scoped_id,
            crate::telemetry::otel::scope(trace_id, async move {
                let mut resp = match lane {
                    Lane::Invoke(invoked) => invoked.await,
                    Lane::Router(routed, false) => match routed.await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    },
                    Lane::Router(routed, true) => match tokio::time::timeout_at(deadline.at.into(), routed).await {
                        Ok(Ok(resp)) => resp,
                        Ok(Err(never)) => match never {},
                        Err(_) => ApiError::RequestTimeout(deadline.timeout).into_response(),
                    },
                };
                if resp.status().as_u16() >= 400 && !is_problem(&resp) {
                    resp = as_problem(resp).await;
                }
                // By route template, the fast path's as the router's.
                let route = route_slot.as_ref().map_or(crate::telemetry::http::INVOKE_ROUTE, |r| r.label());
                metrics.http_request(&method, route, resp.status().as_u16(), started.elapsed());
                resp.headers_mut().insert(REQUEST_ID, id);
                if let Some(tp) = traceparent {
                    otel_span.record("http.route", route);
                    crate::telemetry::otel::rename(&otel_span, format!("{method} {route}"));
                    otel_span.record("http.response.status_code", resp.status().as_u16());
                    tp.insert_into(resp.headers_mut());
                }
                if !read.load(Ordering::Relaxed) {
                    // Answered before its body was read (refused at once, or not wanted): the
                    // rest of it would be taken for the next request, so hyper closes the
                    // connection after this answer. Say so, or a client may send its next
                    // request on a connection that is closing (and lose it).
                    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                if ended.as_ref().is_some_and(|e| e.0.closing.load(Ordering::Relaxed)) {
                    // Shutting down: the client must not send another request here.
                    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                } else if let Some(v) = keep_alive
                    && !closes(&resp)
                {
                    resp.headers_mut().insert(KEEP_ALIVE, v);
                }
                if resp.body().size_hint().exact().is_none()
                    && let Some(ended) = ended.take()
                {
                    // A stream: the connection is busy until its body ends.
                    resp = resp.map(|body| axum::body::Body::new(Tracked { body, watch: ended }));
                }
                Ok(resp)
            })
            .instrument(span),
        ))
    }
}

/// The `Keep-Alive` header (RFC 9110 leaves it to HTTP/1.1 practice: `timeout=<seconds>`).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Does `resp` close its connection (`Connection: close`, e.g. a 413 sent before the body
/// was read)? It then announces no keep-alive.
fn closes(resp: &Response) -> bool {
    resp.headers().get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// Is `resp` a problem+json already?
fn is_problem(resp: &Response) -> bool {
    resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/problem+json")
}

/// An error response the framework made (a method the route does not have, a body of the
/// wrong media type, ...) as problem+json with a code for its status; its text, if any,
/// becomes the detail, and its other headers (`Allow`, ...) stay.
async fn as_problem(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => parts.status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let problem = crate::api::error::problem(parts.status, crate::api::error::code_of_status(parts.status), text);
    let (new_parts, body) = problem.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, body)
}

/// The whole API as one service: [`api::router`] inside the [`HttpFront`] layers.
pub fn service(state: Arc<AppState>) -> HttpFront {
    let timeout = Duration::from_millis(state.config.http.request_timeout_ms);
    let body_limit = state.config.http.body_limit_bytes;
    // Made once per server and kept (a static value is copied by pointer on every response).
    let hint: &'static str =
        Box::leak(format!("timeout={}", state.config.http.header_timeout_ms / 1000).into_boxed_str());
    let keep_alive = HeaderValue::from_static(hint);
    HttpFront { router: api::router(state.clone()), state, body_limit, timeout, activity: None, keep_alive }
}

/// [`service`] as a router, for in-process callers (`oneshot`).
pub fn app(state: Arc<AppState>) -> axum::Router {
    axum::Router::new().fallback_service(service(state))
}

/// Serve on `listener` until `shutdown` resolves, then drain in-flight requests within
/// the configured grace period. A connection that has no request in progress and no
/// response going out for the header timeout (headers that come too slowly, an idle
/// keep-alive, a reader that stopped) is closed by its [`watchdog`].
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let header_timeout = Duration::from_millis(state.config.http.header_timeout_ms);
    let grace = Duration::from_millis(state.config.http.shutdown_grace_ms);
    let app = service(state.clone());
    let closing = Arc::new(AtomicBool::new(false));
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    // Each watchdog holds a sender; all are gone once every connection has closed.
    let (drained_tx, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    // A connection holds a slot until its watchdog ends; with none free, nothing is accepted.
    let slots = Arc::new(tokio::sync::Semaphore::new(state.config.http.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses on keep-alive connections: without this, Nagle's algorithm and
        // delayed ACKs add tens of milliseconds to some requests.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        // A second handle on the socket, so that it outlives hyper's: see [`linger`].
        let second = second_handle(&stream);
        let activity = Arc::new(Activity::new(closing.clone()));
        let svc = TowerToHyperService::new(HttpFront { activity: Some(activity.clone()), ..app.clone() });
        // No hyper header-read timer: it is armed and cleared around every request a
        // keep-alive connection waits for; the watchdog ticks a few times per timeout instead.
        // Responses are small: one flattened buffer and one send, not a vectored write.
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .writev(false)
            .serve_connection(TokioIo::new(Watched { io: stream, activity: activity.clone() }), svc);
        let served = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            if let Some(sock) = second {
                linger(sock).await;
            }
        });
        let watch = Watch {
            activity,
            limit: header_timeout,
            closing: closing_rx.clone(),
            _drained: drained_tx.clone(),
            _slot: slot,
        };
        tokio::spawn(watchdog(watch, served));
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    closing.store(true, Ordering::Relaxed);
    closing_tx.send_replace(true);
    drop(drained_tx);
    if tokio::time::timeout(grace, drained.recv()).await.is_err() {
        tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
    }
    // Hand the leases back (the other nodes take the work at once), then stop.
    state.agents.hand_back().await;
    state.agents.halt_watchers().await;
    Ok(())
}

/// How long a connection the server has finished with keeps reading what its client still
/// sends, at most (its watchdog may close it sooner: it counts as quiet).
const LINGER: Duration = Duration::from_secs(5);

/// A second handle on `stream`'s socket (a duplicated descriptor): the socket stays open
/// until both are closed. None if the descriptor cannot be duplicated (the connection is then
/// served without [`linger`]).
#[cfg(unix)]
fn second_handle(stream: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    stream.as_fd().try_clone_to_owned().ok().map(std::net::TcpStream::from)
}

#[cfg(not(unix))]
fn second_handle(_: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    None
}

/// Close a connection hyper has finished with (its handle on the socket is closed) without
/// throwing away the last answer. A server that answers before it has read a request's body
/// (a body declared over the limit, a caller refused, an agent that does not exist) and then
/// closes a socket with that body's bytes unread makes the kernel send a reset, and a reset
/// makes the client's kernel discard the answer it has received but not yet read: the client
/// sees "broken pipe" or "connection reset" instead of the 413. So, as web servers' "lingering
/// close" does: end the sending side (the client reads the answer, then end of stream), then
/// read and drop what the client still sends until it closes its side, for [`LINGER`] at most.
/// A client that closed first costs one read.
async fn linger(sock: std::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    if sock.shutdown(std::net::Shutdown::Write).is_err() || sock.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut sock) = tokio::net::TcpStream::from_std(sock) else {
        return;
    };
    let mut scratch = vec![0u8; 16 << 10];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = sock.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// What a connection's [`watchdog`] watches.
struct Watch {
    activity: Arc<Activity>,
    /// How long the connection may go without a request in progress or a response going out.
    limit: Duration,
    /// Turns `true` when the server shuts down.
    closing: tokio::sync::watch::Receiver<bool>,
    /// Dropped when the watchdog ends: the server drains until all are dropped.
    _drained: tokio::sync::mpsc::Sender<()>,
    /// The connection's place among `http.max_connections`.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Watch a connection served by the task `served`, on a task of its own (the connection's
/// task polls nothing but the connection):
/// - once it has had no request in progress and no response bytes going out for `limit`
///   (headers that come too slowly, a keep-alive left idle, a reader that stopped reading),
///   close it. Ticks four times per `limit`, so a quiet connection closes between `limit`
///   and 1.25 `limit` after its last request began or ended or its last write;
/// - once the server shuts down, close it as soon as it is quiet for one short tick: no
///   request in progress and no response going out (responses sent meanwhile carry
///   `connection: close`, so clients send no more).
async fn watchdog(mut w: Watch, mut served: tokio::task::JoinHandle<()>) {
    const TICKS: u32 = 4;
    /// How often a connection is checked for idleness while the server shuts down.
    const DRAIN_TICK: Duration = Duration::from_millis(10);
    let tick = (w.limit / TICKS).max(Duration::from_millis(1));
    let mut draining = *w.closing.borrow();
    let mut ticker = if draining {
        tokio::time::interval(DRAIN_TICK)
    } else {
        tokio::time::interval_at(tokio::time::Instant::now() + tick, tick)
    };
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = (0, 0, 0);
    let mut quiet = 0;
    loop {
        tokio::select! {
            _ = &mut served => return,
            _ = ticker.tick() => {}
            changed = w.closing.changed(), if !draining => {
                // A dropped sender means the server is gone: drain as well.
                if changed.is_err() || *w.closing.borrow() {
                    draining = true;
                    // Its first tick comes at once.
                    ticker = tokio::time::interval(DRAIN_TICK);
                }
                continue;
            }
        }
        let now = w.activity.now();
        if now != seen || now.0 != now.1 {
            seen = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        // Draining, one quiet look is enough; else the whole limit.
        if draining || quiet >= TICKS {
            tracing::debug!(limit = ?w.limit, draining, "closing a quiet connection");
            served.abort();
            return;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Bind `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watchdog over a connection task that never ends by itself, with `limit`.
    fn watched(limit: Duration) -> (Arc<Activity>, tokio::task::JoinHandle<()>, tokio::sync::watch::Sender<bool>) {
        let activity = Arc::new(Activity::new(Arc::new(AtomicBool::new(false))));
        let served = tokio::spawn(std::future::pending::<()>());
        let probe = served.abort_handle();
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        let (drained, _) = tokio::sync::mpsc::channel(1);
        let slot = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let w = Watch { activity: activity.clone(), limit, closing, _drained: drained, _slot: slot };
        let dog = tokio::spawn(watchdog(w, served));
        // The test watches the connection through its abort handle.
        let watcher = tokio::spawn(async move {
            while !probe.is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        drop(dog);
        (activity, watcher, closing_tx)
    }

    /// A response going out: a write makes progress `every` for `during`, and the
    /// connection must stay open throughout.
    async fn keep_writing(
        activity: &Activity,
        closed: &tokio::task::JoinHandle<()>,
        every: Duration,
        during: Duration,
    ) {
        let start = tokio::time::Instant::now();
        while start.elapsed() < during {
            activity.written.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(every).await;
            assert!(!closed.is_finished(), "closed while a response was going out");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_still_going_out_keeps_its_connection_and_a_stall_closes_it() {
        let limit = Duration::from_millis(100);
        let (activity, closed, _closing) = watched(limit);
        // A response being written slowly: a write makes progress every 30 ms for 1 s.
        keep_writing(&activity, &closed, Duration::from_millis(30), Duration::from_secs(1)).await;
        // The reader stops: the connection closes within 1.25 limits (and a tick).
        let stalled = tokio::time::Instant::now();
        closed.await.unwrap();
        let took = stalled.elapsed();
        assert!(took >= limit - Duration::from_millis(30) && took <= limit * 2, "closed after {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_a_response_going_out_finish_and_closes_quiet_connections_at_once() {
        let limit = Duration::from_secs(60);
        let (activity, closed, closing) = watched(limit);
        // A request ends, its response still going out when the server shuts down.
        activity.begun.fetch_add(1, Ordering::Relaxed);
        activity.end();
        tokio::time::sleep(Duration::from_millis(5)).await;
        closing.send_replace(true);
        keep_writing(&activity, &closed, Duration::from_millis(5), Duration::from_millis(500)).await;
        // The last bytes are out: closed within two short ticks, not the minute of `limit`.
        let done = tokio::time::Instant::now();
        closed.await.unwrap();
        assert!(done.elapsed() <= Duration::from_millis(50), "closed after {:?}", done.elapsed());

        // A connection already quiet closes as soon as shutdown begins.
        let (_, closed, closing) = watched(limit);
        tokio::time::sleep(Duration::from_secs(1)).await;
        closing.send_replace(true);
        let start = tokio::time::Instant::now();
        closed.await.unwrap();
        assert!(start.elapsed() <= Duration::from_millis(20), "closed after {:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_keeps_its_connection_however_long() {
        let (activity, closed, _closing) = watched(Duration::from_millis(100));
        activity.begun.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!closed.is_finished(), "closed during a request");
        activity.end();
        closed.await.unwrap();
    }
}
