//! `/v1/secrets` and the vault behind it: tenant-admins only, tenants isolated, values
//! write-only (no response, audit event, log line or metric shows one), sealed at rest and
//! bound to their tenant and name, kept across restarts under the same key, refused at
//! start under a key the node lacks, rotation through `previous_key_files`, and one secret
//! store for every node of a cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cortex_host::api::Role;
use cortex_host::store::{EmbeddedStore, RecordKind, Store};
use cortex_host::vault::VaultError;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Server, answer, config, data_dir};

/// Everything the host logs, at every level of its own targets, into a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Install as the process's subscriber (nextest runs each test in its own process).
    fn install() -> Self {
        let c = Captured::default();
        let w = c.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("cortex_host=trace,info"))
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(sub).unwrap();
        c
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A key file holding `byte` 32 times, hex.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, [byte; 32].iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap();
    path
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Responses seen, so that none is left unchecked for a value.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn send(&mut self, r: reqwest::RequestBuilder) -> crate::server::Answer {
        let a = answer(r.send().await.unwrap()).await;
        self.0.push(a.text.clone());
        a
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_write_only_tenant_admin_only_and_tenant_scoped() {
    let logs = Captured::install();
    let s = Server::start_with(|c| {
        c.secrets.max_value_bytes = 64;
        c.secrets.max_per_tenant = 3;
    })
    .await;
    s.tenant("acme").await;
    s.tenant("beta").await;
    let admin = s.token(Some("acme"), Role::TenantAdmin);
    let observer = s.token(Some("acme"), Role::Observer);
    let developer = s.token(Some("acme"), Role::Developer);
    let beta = s.token(Some("beta"), Role::TenantAdmin);
    let platform = s.admin();
    let mut seen = Seen::default();
    // A developer API key (what an agent's CI would hold).
    let k = seen.send(s.req(Method::POST, "/v1/keys", &admin).json(&json!({"role": "developer", "name": "ci"}))).await;
    assert_eq!(k.status, StatusCode::CREATED, "{}", k.text);
    let dev_key = k.body["key"].as_str().unwrap().to_owned();

    let v1 = "sk-first-6c1e0b7e";
    let v2 = "sk-second-93d4a2f1";
    let put = |tok: &str, name: &str, v: &str| {
        s.req(Method::PUT, &format!("/v1/secrets/{name}"), tok).json(&json!({ "value": v }))
    };
    let a = seen.send(put(&admin, "openai", v1)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.body["name"], "openai");
    let a = seen.send(put(&admin, "openai", v2)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["version"], 2);
    assert!(a.body["updated_ms"].as_u64().unwrap() >= a.body["created_ms"].as_u64().unwrap());

    // Roles below tenant-admin may do nothing with secrets.
    for tok in [&observer, &developer, &dev_key] {
        for (m, path) in
            [(Method::GET, "/v1/secrets"), (Method::GET, "/v1/secrets/openai"), (Method::DELETE, "/v1/secrets/openai")]
        {
            let a = seen.send(s.req(m.clone(), path, tok)).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{m} {path}: {}", a.text);
        }
        let a = seen.send(put(tok, "openai", "stolen")).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    }
    // Another tenant sees nothing of acme's, and may not name acme.
    let a = seen.send(s.req(Method::GET, "/v1/secrets", &beta)).await;
    assert_eq!(a.body, json!([]));
    for m in [Method::GET, Method::DELETE] {
        let a = seen.send(s.req(m, "/v1/secrets/openai", &beta)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    }
    let a = seen.send(s.req(Method::GET, "/v1/secrets", &beta).header("x-cortex-tenant", "acme")).await;
    assert_eq!((a.status, a.code.as_str()), (StatusCode::FORBIDDEN, "foreign_tenant"));
    // A platform-admin acts in a tenant with the tenant header.
    let a = seen.send(s.req(Method::GET, "/v1/secrets", &platform).header("x-cortex-tenant", "acme")).await;
    let names: Vec<&str> = a.body.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["openai"]);
    let a = seen.send(s.req(Method::GET, "/v1/secrets/openai", &admin)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["version"], 2);
    assert!(a.body.get("value").is_none(), "{}", a.text);

    // The rules, with stable codes.
    let a = seen.send(put(&admin, ".hidden", "x")).await;
    assert_eq!((a.status, a.code.as_str()), (StatusCode::BAD_REQUEST, "invalid_secret_name"), "{}", a.text);
    let a = seen.send(put(&admin, "empty", "")).await;
    assert_eq!((a.status, a.code.as_str()), (StatusCode::BAD_REQUEST, "empty_secret"));
    let a = seen.send(put(&admin, "big", &"x".repeat(65))).await;
    assert_eq!((a.status, a.code.as_str()), (StatusCode::BAD_REQUEST, "secret_too_large"));
    let a = seen.send(s.req(Method::PUT, "/v1/secrets/x", &admin).json(&json!({"value": "v", "other": 1}))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(seen.send(put(&admin, "two", "2")).await.status, StatusCode::CREATED);
    assert_eq!(seen.send(put(&admin, "three", "3")).await.status, StatusCode::CREATED);
    let a = seen.send(put(&admin, "four", "4")).await;
    assert_eq!((a.status, a.code.as_str()), (StatusCode::CONFLICT, "too_many_secrets"));

    // The host reveals it; nobody else gets it.
    assert_eq!(s.state.vault.reveal("acme", "openai").await.unwrap().unwrap().as_str(), v2);
    assert!(s.state.vault.reveal("beta", "openai").await.unwrap().is_none());

    // The audit log has the name and the action, never a value.
    let audit = seen.send(s.req(Method::GET, "/v1/audit", &admin)).await;
    assert!(
        audit.text.contains("PUT /v1/secrets/{name}") && audit.text.contains("/v1/secrets/openai"),
        "{}",
        audit.text
    );
    seen.send(s.req(Method::GET, "/v1/audit", &platform)).await;
    seen.send(s.client.get(s.url("/metrics"))).await;

    // At rest: the raw record holds no plaintext; moved to another tenant or name, it does
    // not decrypt.
    let store = s.state.registry.store().clone();
    let (raw, _) = store.record_get(RecordKind::Secret, "acme/openai").await.unwrap().unwrap();
    assert!(!contains(&raw, v2) && !contains(&raw, v1));
    store.record_put(RecordKind::Secret, "beta/openai", raw.clone(), None).await.unwrap();
    store.record_put(RecordKind::Secret, "acme/copied", raw, None).await.unwrap();
    assert!(matches!(s.state.vault.reveal("beta", "openai").await, Err(VaultError::Decrypt { .. })));
    assert!(matches!(s.state.vault.reveal("acme", "copied").await, Err(VaultError::Decrypt { .. })));
    store.record_delete(RecordKind::Secret, "beta/openai").await.unwrap();
    store.record_delete(RecordKind::Secret, "acme/copied").await.unwrap();

    let a = seen.send(s.req(Method::DELETE, "/v1/secrets/openai", &admin)).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(seen.send(s.req(Method::DELETE, "/v1/secrets/openai", &admin)).await.status, StatusCode::NOT_FOUND);
    assert!(s.state.vault.reveal("acme", "openai").await.unwrap().is_none());

    // Nothing that came back, and nothing logged, shows either value.
    for body in &seen.0 {
        assert!(!body.contains(v1) && !body.contains(v2), "a response shows a secret: {body}");
    }
    let logged = logs.text();
    assert!(logged.contains("secret stored"), "the capture works: {logged}");
    assert!(!logged.contains(v1) && !logged.contains(v2), "the log shows a secret");

    // Deleting the tenant deletes its secrets.
    let r = s.req(Method::DELETE, "/v1/tenants/acme", &platform).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(store.record_list(RecordKind::Secret, "acme/").await.unwrap().is_empty());

    // Nor do the store's files, once the server is gone.
    let dir = s.stop().await;
    for (path, bytes) in files_under(dir.path()) {
        assert!(!contains(&bytes, v1) && !contains(&bytes, v2), "{} holds a secret in clear", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_survive_a_restart_a_wrong_key_refuses_start_and_keys_rotate() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = key_file(keys.path(), "k1", 1);
    let k2 = key_file(keys.path(), "k2", 2);
    let dir = data_dir();
    let with = |key: &PathBuf, previous: Vec<PathBuf>| {
        let (key, previous) = (key.clone(), previous);
        move |c: &mut cortex_host::config::ServerConfig| {
            c.secrets.key_file = Some(key);
            c.secrets.previous_key_files = previous;
        }
    };
    let s = Server::start_in(dir.clone(), with(&k1, vec![])).await;
    s.tenant("acme").await;
    let admin = s.token(Some("acme"), Role::TenantAdmin);
    let r = s.req(Method::PUT, "/v1/secrets/token", &admin).json(&json!({"value": "v-one"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let first: Value = r.json().await.unwrap();
    let dir = s.stop().await;

    // The same key: still there.
    let s = Server::start_in(dir.clone(), with(&k1, vec![])).await;
    assert_eq!(s.state.vault.reveal("acme", "token").await.unwrap().unwrap().as_str(), "v-one");
    let dir = s.stop().await;

    // Another key alone: the node refuses to start, and says why.
    let mut cfg = config(dir.path());
    with(&k2, vec![])(&mut cfg);
    let err = cortex_host::server::build(cfg).await.expect_err("a node without the key must not start");
    let msg = err.to_string();
    assert!(msg.contains(first["key_id"].as_str().unwrap()) && msg.contains("previous_key_files"), "{msg}");

    // The new key with the old one as previous: opens it, and a write seals with the new one.
    let s = Server::start_in(dir.clone(), with(&k2, vec![k1.clone()])).await;
    assert_eq!(s.state.vault.reveal("acme", "token").await.unwrap().unwrap().as_str(), "v-one");
    let listed = s.get_json(&admin, "/v1/secrets").await;
    assert_eq!(listed[0]["key_id"], first["key_id"]);
    let r = s.req(Method::PUT, "/v1/secrets/token", &admin).json(&json!({"value": "v-two"})).send().await.unwrap();
    let second: Value = r.json().await.unwrap();
    assert_ne!(second["key_id"], first["key_id"]);
    assert_eq!(second["key_id"].as_str().unwrap(), s.state.vault.keys().current_id());
    let dir = s.stop().await;

    // Every secret rewritten: the old key can go.
    let s = Server::start_in(dir.clone(), with(&k2, vec![])).await;
    assert_eq!(s.state.vault.reveal("acme", "token").await.unwrap().unwrap().as_str(), "v-two");
    s.stop().await;

    // No key configured: one is made in the data dir, owner-only, and kept.
    let fresh = Server::start().await;
    let made = fresh.dir.path().join("secrets.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let id = fresh.state.vault.keys().current_id();
    let d = fresh.stop().await;
    let again = Server::start_in(d, |_| {}).await;
    assert_eq!(again.state.vault.keys().current_id(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_put_through_one_node_is_revealed_through_another() {
    let shared = data_dir();
    let key = key_file(shared.path(), "cluster.key", 9);
    let secret = shared.path().join("jwt-hs256.secret");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&shared.path().join("store")).unwrap());
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let dir = data_dir();
        let mut cfg = config(dir.path());
        cfg.auth.secret_file = Some(secret.clone());
        cfg.secrets.key_file = Some(key.clone());
        cfg.cluster.heartbeat_ms = 100;
        nodes.push(Server::start_on(dir, cfg, Some(store.clone())).await);
    }
    nodes[0].tenant("acme").await;
    let admin = nodes[0].token(Some("acme"), Role::TenantAdmin);
    let r = nodes[0]
        .req(Method::PUT, "/v1/secrets/openai", &admin)
        .json(&json!({"value": "sk-cluster"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // At once on the other node: it reads the shared store.
    assert_eq!(nodes[1].state.vault.reveal("acme", "openai").await.unwrap().unwrap().as_str(), "sk-cluster");
    let listed = nodes[1].get_json(&admin, "/v1/secrets").await;
    assert_eq!(listed[0]["name"], "openai");
    let r = nodes[1].req(Method::DELETE, "/v1/secrets/openai", &admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(nodes[0].state.vault.reveal("acme", "openai").await.unwrap().is_none());

    // A node with its own key (none configured: one made in its own data dir) refuses to
    // join a store whose secrets it cannot open.
    let r = nodes[0].req(Method::PUT, "/v1/secrets/kept", &admin).json(&json!({"value": "v"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let dir = data_dir();
    let mut cfg = config(dir.path());
    cfg.auth.secret_file = Some(secret.clone());
    let err =
        cortex_host::server::build_on(cfg, store.clone()).await.expect_err("a node with another key must not start");
    assert!(err.to_string().contains("which this node does not have"), "{err}");
}
