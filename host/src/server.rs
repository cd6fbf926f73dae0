//! `cortex serve`: open the store, restore agents, serve the API, drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

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
}

/// Build the application state for `config` (store, runtime, verifier) and restore agents.
pub async fn build(config: ServerConfig) -> Result<Arc<AppState>, ServeError> {
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Embedded => Arc::new(EmbeddedStore::open(&config.data_dir.join("store"))?),
        StoreConfig::Arangodb(cfg) => Arc::new(ArangoStore::connect(cfg).await?),
    };
    let runtime = Runtime::new(config.engine.clone(), Some(&config.data_dir.join("cache")))?;
    let verifier = Verifier::new(&config.auth, &config.data_dir)?;
    let state = Arc::new(AppState::new(config, runtime, store, verifier)?);
    let n = state.restore().await?;
    tracing::info!(agents = n, "agents restored");
    Ok(state)
}

async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => crate::api::error::problem(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A span per request (method, path, a server-made request id, echoed as `x-request-id`).
async fn trace_request(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{:x}-{id:x}", std::process::id());
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id);
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The router with server-wide layers (request timeout, request spans).
pub fn app(state: Arc<AppState>) -> axum::Router {
    let limit = Duration::from_millis(state.config.http.request_timeout_ms);
    api::router(state)
        .layer(middleware::from_fn_with_state(limit, request_timeout))
        .layer(middleware::from_fn(trace_request))
}

/// Serve on `listener` until `shutdown` resolves, then drain in-flight requests within
/// the configured grace period.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let header_timeout = Duration::from_millis(state.config.http.header_timeout_ms);
    let grace = Duration::from_millis(state.config.http.shutdown_grace_ms);
    let app = app(state.clone());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let svc = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
    }
    state.halt_watchers().await;
    Ok(())
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
