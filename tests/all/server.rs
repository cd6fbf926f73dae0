//! A real Cortex server on 127.0.0.1:0, in-process, with a real HTTP client: helpers for
//! the API tests (`api`, `api_security`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cortex_host::api::auth::Claims;
use cortex_host::api::{AppState, Role};
use cortex_host::config::ServerConfig;
use cortex_host::registry::{Quotas, now_ms};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A temp data dir shared by successive servers (restart tests).
pub type DataDir = Arc<tempfile::TempDir>;

pub fn data_dir() -> DataDir {
    Arc::new(tempfile::tempdir().unwrap())
}

/// The configuration tests start from: a temp data dir, the test engine, a short grace.
pub fn config(dir: &Path) -> ServerConfig {
    let mut cfg =
        ServerConfig { data_dir: dir.to_path_buf(), engine: crate::common::engine_config(), ..ServerConfig::default() };
    cfg.http.shutdown_grace_ms = 2_000;
    cfg
}

pub struct Server {
    pub state: Arc<AppState>,
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: DataDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// A server with the default test configuration in a fresh data dir.
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// A server in a fresh data dir, configuration tweaked by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        Self::start_in(data_dir(), tweak).await
    }

    /// A server on `dir` (which may hold a previous server's data).
    pub async fn start_in(dir: DataDir, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        Self::start_config(dir, cfg).await
    }

    pub async fn start_config(dir: DataDir, cfg: ServerConfig) -> Server {
        Self::start_on(dir, cfg, None).await
    }

    /// A server on `cfg`, over `store` when given (nodes of one cluster sharing a store).
    pub async fn start_on(
        dir: DataDir,
        cfg: ServerConfig,
        store: Option<Arc<dyn cortex_host::store::Store>>,
    ) -> Server {
        // The client keeps an idle connection for less than the server does (as a client
        // honouring `Keep-Alive: timeout=` would): never sends on one the server is closing.
        let idle = Duration::from_millis(cfg.http.header_timeout_ms / 2);
        let built = match store {
            Some(store) => cortex_host::server::build_on(cfg, store).await,
            None => cortex_host::server::build(cfg).await,
        };
        let state = match built {
            Ok(s) => s,
            Err(e) => panic!("server build failed: {e}"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cortex_host::server::serve(state.clone(), listener, async {
            let _ = rx.await;
        }));
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(20)).pool_idle_timeout(idle).build().unwrap();
        Server { state, addr, base: format!("http://{addr}"), client, dir, shutdown: Some(tx), task: Some(task) }
    }

    /// Stop serving, wait for the drain, and release the store (so that another server can
    /// open the same data dir). Returns the data dir.
    pub async fn stop(mut self) -> DataDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("drain within 10 s").unwrap().unwrap();
        }
        drop(std::mem::replace(&mut self.client, reqwest::Client::new()));
        // Connection tasks may still hold the router (and so the state) for a moment after
        // the drain: wait, bounded, until this is the last reference.
        for _ in 0..500 {
            if Arc::strong_count(&self.state) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(Arc::strong_count(&self.state), 1, "the server state is still referenced after shutdown");
        self.dir.clone()
    }

    /// Die the way a killed process does: the node's background work stops without
    /// handing anything back (its leases expire, its membership record goes stale) and its
    /// listener stops accepting. Requests already on a connection may still finish; a
    /// caller must not send more to it. Returns the node's state (kept alive by nothing
    /// else once its connections close).
    pub async fn crash(mut self) -> Arc<AppState> {
        self.state.agents.crash().await;
        if let Some(task) = self.task.take() {
            // Aborted, not shut down: a shutdown would hand the leases back.
            task.abort();
            let _ = task.await;
        }
        // The serving task is gone: dropping the sender starts no shutdown.
        self.shutdown.take();
        self.state.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token for `role`, in `tenant` (None: a platform-admin without a tenant).
    pub fn token(&self, tenant: Option<&str>, role: Role) -> String {
        self.state.verifier.mint(&claims(tenant, role)).unwrap()
    }

    pub fn admin(&self) -> String {
        self.token(None, Role::PlatformAdmin)
    }

    /// A request with a bearer token.
    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(token)
    }

    /// Create a tenant (as platform-admin) with the server's default quotas.
    pub async fn tenant(&self, name: &str) {
        self.tenant_with(name, None).await;
    }

    /// Create a tenant (as [`Self::tenant`]) and mint a developer token of it.
    pub async fn developer_in(&self, name: &str) -> String {
        self.tenant(name).await;
        self.token(Some(name), Role::Developer)
    }

    pub async fn tenant_with(&self, name: &str, quotas: Option<Quotas>) {
        let mut body = json!({ "name": name });
        if let Some(q) = quotas {
            body["quotas"] = serde_json::to_value(q).unwrap();
        }
        let r = self.req(Method::POST, "/v1/tenants", &self.admin()).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "create tenant {name}: {}", r.text().await.unwrap());
    }

    /// Upload a module file with `token`; returns its digest.
    pub async fn upload(&self, token: &str, path: &str) -> String {
        let r = self.req(Method::POST, "/v1/modules", token).body(std::fs::read(path).unwrap()).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "upload {path}: {status} {body}");
        body["digest"].as_str().unwrap().to_owned()
    }

    /// Deploy `name` running `digest` with `config`; panics unless 201.
    pub async fn deploy(&self, token: &str, name: &str, digest: &str, config: Value) -> Value {
        self.deploy_with(token, name, digest, json!({ "config": config })).await
    }

    /// Deploy `name` running `digest`, with the other fields of the deploy spec from `spec`
    /// (`config`, `watches`, `subscriptions`, `limits`, ...); panics unless 201.
    pub async fn deploy_with(&self, token: &str, name: &str, digest: &str, spec: Value) -> Value {
        let mut body = json!({ "name": name, "module": digest });
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), spec) {
            b.extend(extra);
        }
        let r = self.req(Method::POST, "/v1/agents", token).json(&body).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "deploy {name}: {body}");
        body
    }

    /// Invoke `agent` with `input`: status and body text.
    pub async fn invoke(&self, token: &str, agent: &str, input: &str) -> (StatusCode, String) {
        let r = self
            .req(Method::POST, &format!("/v1/agents/{agent}/invoke"), token)
            .body(input.to_owned())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Invoke and expect 200: the output text.
    pub async fn invoke_ok(&self, token: &str, agent: &str, input: &str) -> String {
        let (s, body) = self.invoke(token, agent, input).await;
        assert_eq!(s, StatusCode::OK, "invoke {agent} {input:?}: {body}");
        body
    }

    /// Module `digest` once its status is no longer `compiling` (a large upload compiles in
    /// the background), waiting at most `within`.
    pub async fn module_settled(&self, token: &str, digest: &str, within: std::time::Duration) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let m = self.get_json(token, &format!("/v1/modules/{digest}")).await;
            if m["status"] != "compiling" {
                return m;
            }
            assert!(std::time::Instant::now() < deadline, "module {digest} still compiling: {m}");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// GET `path` as JSON, expecting 200.
    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let r = self.req(Method::GET, path, token).send().await.unwrap();
        let s = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(s, StatusCode::OK, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The raw response to `request` (`METHOD /path`) with `token`, whose headers announce
    /// ten bytes of body that never come (bounded wait).
    pub async fn unsent_body(&self, request: &str, token: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head =
            format!("{request} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 10\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut resp = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut resp)).await.unwrap().unwrap();
        String::from_utf8_lossy(&resp[..n]).into_owned()
    }

    /// The dead letters of agent `name` once there are exactly `n` (bounded wait).
    pub async fn dead_letters_until(&self, token: &str, name: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.get_json(token, &format!("/v1/agents/{name}/deadletters")).await;
            let list = list.as_array().unwrap().clone();
            if list.len() == n {
                return list;
            }
            assert!(std::time::Instant::now() < deadline, "{name} has {} dead letters, not {n}: {list:?}", list.len());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Valid claims for `role` in `tenant`, one hour of life.
pub fn claims(tenant: Option<&str>, role: Role) -> Claims {
    let now = now_ms() / 1000;
    Claims {
        sub: format!("test-{}", role.as_str()),
        iss: "cortex".into(),
        aud: "cortex-api".into(),
        exp: now + 3600,
        iat: Some(now),
        tenant: tenant.map(str::to_owned),
        role: role.as_str().into(),
    }
}

/// A response as (status, problem code or "", body JSON or Null, Retry-After).
pub struct Answer {
    pub status: StatusCode,
    pub code: String,
    pub body: Value,
    pub text: String,
    pub content_type: String,
    pub retry_after: Option<String>,
}

pub async fn answer(r: Response) -> Answer {
    let status = r.status();
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = body.get("code").and_then(Value::as_str).unwrap_or_default().to_owned();
    Answer { status, code, body, text, content_type, retry_after }
}

/// Run `openssl` with `args`; panics if it fails.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out =
        std::process::Command::new("openssl").args(args).output().expect("the openssl CLI is needed for RS256 tests");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// An RSA keypair in `dir`: (private PEM path, public PEM path).
pub fn rsa_keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("rsa-private.pem");
    let public = dir.join("rsa-public.pem");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private.to_str().unwrap()]);
    openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    (private, public)
}

/// The RSA modulus of a private key, big-endian bytes.
pub fn rsa_modulus(private: &Path) -> Vec<u8> {
    let out = openssl(&["rsa", "-in", private.to_str().unwrap(), "-noout", "-modulus"]);
    let text = String::from_utf8(out).unwrap();
    let hex = text.trim().strip_prefix("Modulus=").unwrap();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// Base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
