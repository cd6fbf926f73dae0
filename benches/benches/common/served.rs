//! A Cortex server in the bench's own process: quotas high enough never to refuse a bench,
//! the `demo` tenant with the given agents deployed, and tokens for it.

use std::net::SocketAddr;
use std::sync::Arc;

use cortex_host::api::AppState;
use cortex_host::api::auth::Claims;
use cortex_host::config::ServerConfig;
use cortex_host::registry::{Quotas, now_ms};

/// A running server.
// Each bench uses part of it.
#[allow(dead_code)]
pub struct Served {
    pub state: Arc<AppState>,
    pub addr: SocketAddr,
    /// A developer token of the `demo` tenant.
    pub developer: String,
    /// A platform-admin token.
    pub admin: String,
    /// Issuer and audience of its tokens.
    claims: (String, String),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

// Each bench uses part of it.
#[allow(dead_code)]
impl Served {
    /// A token of `role` in `tenant` (none: platform-wide).
    pub fn mint(&self, tenant: Option<&str>, role: &str) -> String {
        mint(&self.state, &self.claims, tenant, role)
    }

    /// Stop the server as `cortex serve` would, halt its background tasks and wait until
    /// nothing else holds its state, so that its data directory can be opened again.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.state.agents.halt_watchers().await;
        // Connection tasks may hold the router for a moment after the drain.
        for _ in 0..1000 {
            if Arc::strong_count(&self.state) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(Arc::strong_count(&self.state), 1, "the server state is still referenced after shutdown");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A token of `role` in `tenant`, signed by `state`'s verifier for `(issuer, audience)`.
fn mint(state: &AppState, claims: &(String, String), tenant: Option<&str>, role: &str) -> String {
    let claims = Claims {
        sub: "bench".into(),
        iss: claims.0.clone(),
        aud: claims.1.clone(),
        exp: now_ms() / 1000 + 3600,
        iat: None,
        tenant: tenant.map(str::to_owned),
        role: role.into(),
    };
    state.verifier.mint(&claims).unwrap()
}

/// Serve `cfg` (its quotas raised out of the way) on 127.0.0.1, with the `demo` tenant and
/// `deploys` (`NAME=PATH`) deployed in it.
// Each bench uses `serve` or `serve_on`.
#[allow(dead_code)]
pub async fn serve(cfg: ServerConfig, deploys: &[String]) -> Served {
    serve_on(cfg, None, deploys).await
}

// Each bench uses `serve` or `serve_on`.
#[allow(dead_code)]
/// [`serve`] over `store` if given (e.g. a wrapped store), else the one `cfg` names.
pub async fn serve_on(
    mut cfg: ServerConfig,
    store: Option<std::sync::Arc<dyn cortex_host::store::Store>>,
    deploys: &[String],
) -> Served {
    // A bench harness cannot be its own compile child: this crate's `cortex-bench-compile` is.
    cfg.engine.compile.program = Some(env!("CARGO_BIN_EXE_cortex-bench-compile").into());
    cfg.quotas = Quotas {
        invocations_per_second: 1_000_000,
        burst: 1_000_000,
        concurrent_invocations: 10_000,
        agents: u32::MAX,
        ..Quotas::default()
    };
    let state = match store {
        Some(store) => cortex_host::server::build_on(cfg.clone(), store).await.unwrap(),
        None => cortex_host::server::build(cfg.clone()).await.unwrap(),
    };
    let claims = (cfg.auth.issuer.clone(), cfg.auth.audience.clone());
    let token = |tenant: Option<&str>, role: &str| mint(&state, &claims, tenant, role);
    let admin = token(None, "platform-admin");
    let app = cortex_host::server::app(state.clone());
    cortex_host::cli::client::bootstrap_demo(app, &admin, deploys).await.unwrap();
    let developer = token(Some("demo"), "developer");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cortex_host::server::serve(state.clone(), listener, async {
        let _ = stopped.await;
    }));
    Served { state, addr, developer, admin, claims, stop: Some(stop), task: Some(task) }
}
