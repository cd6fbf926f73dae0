//! Module bytes live in the store: two nodes (each its own data dir, runtime and compiled
//! artifacts) over one store. A module uploaded on one node is deployed and run on the
//! other, which compiles it from the store's chunks; altered or missing chunks refuse the
//! load with a typed error and nothing runs; a data dir from before (bytes as files only)
//! copies them to the store at start; the chunks go with the last module record naming
//! their digest.

use std::sync::Arc;
use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::agents::AgentsError;
use cortex_host::agents::modules::{ModuleBytesError, chunk_key};
use cortex_host::api::auth::Verifier;
use cortex_host::api::{AppState, Role};
use cortex_host::config::ServerConfig;
use cortex_host::registry::{ModuleRecord, ModuleStatus, scoped};
use cortex_host::runtime::Runtime;
use cortex_host::store::{EmbeddedStore, RecordKind, RecordStore, Store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::server::{Answer, DataDir, Server, answer, claims, data_dir};

/// A second node: its own data dir, runtime, verifier and agents, over a store it is given.
struct Node {
    state: Arc<AppState>,
    base: String,
    client: reqwest::Client,
    dir: DataDir,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Node {
    async fn start(store: Arc<dyn Store>, tweak: impl FnOnce(&mut ServerConfig)) -> Node {
        let dir = data_dir();
        let mut cfg = crate::server::config(dir.path());
        tweak(&mut cfg);
        let runtime = Runtime::new(cfg.engine.clone(), Some(&cfg.data_dir.join("cache"))).unwrap();
        let verifier = Verifier::new(&cfg.auth, &cfg.data_dir).unwrap();
        let state = Arc::new(AppState::new(cfg, runtime, store, verifier).unwrap());
        state.agents.restore().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(cortex_host::server::serve(state.clone(), listener, async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        Node { state, base: format!("http://{addr}"), client, dir, shutdown: Some(tx) }
    }

    fn developer(&self, tenant: &str) -> String {
        self.state.verifier.mint(&claims(Some(tenant), Role::Developer)).unwrap()
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Answer {
        let mut r = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        answer(r.send().await.unwrap()).await
    }

    async fn deploy(&self, token: &str, name: &str, module: &str) -> Answer {
        self.call(Method::POST, "/v1/agents", token, Some(json!({"name": name, "module": module}))).await
    }

    async fn invoke(&self, token: &str, agent: &str, input: &str) -> (StatusCode, String) {
        let r = self
            .client
            .post(format!("{}/v1/agents/{agent}/invoke", self.base))
            .bearer_auth(token)
            .body(input.to_owned())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

/// The store a server runs on, for a second node to share.
fn store_of(s: &Server) -> Arc<dyn Store> {
    s.state.registry.store().clone()
}

/// The chunk records of `digest`.
async fn chunks(store: &Arc<dyn Store>, digest: &str) -> Vec<(String, Vec<u8>)> {
    store.record_list(RecordKind::ModuleChunk, &format!("{digest}/")).await.unwrap()
}

async fn upload(s: &Server, token: &str, path: &str, query: &str) -> Answer {
    let bytes = std::fs::read(path).unwrap();
    answer(s.req(Method::POST, &format!("/v1/modules{query}"), token).body(bytes).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_uploaded_on_one_node_runs_on_another_that_compiles_it_from_the_store() {
    let a = Server::start().await;
    let dev_a = a.developer_in("acme").await;
    let up = upload(&a, &dev_a, art::HELLO, "?name=hello").await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
    let digest = up.body["digest"].as_str().unwrap().to_owned();
    let store = store_of(&a);
    assert!(!chunks(&store, &digest).await.is_empty(), "the upload stored the bytes as chunks");

    // B has an empty data dir: no module file, no compiled artifact.
    let b = Node::start(store.clone(), |_| {}).await;
    let local = b.dir.path().join("modules").join(format!("{digest}.wasm"));
    assert!(!local.exists());
    let dev_b = b.developer("acme");
    let d = b.deploy(&dev_b, "h", "hello:latest").await;
    assert_eq!(d.status, StatusCode::CREATED, "{}", d.text);
    assert_eq!(b.invoke(&dev_b, "h", "node b").await, (StatusCode::OK, "Hello, node b!".to_owned()));
    assert_eq!(std::fs::read(&local).unwrap(), std::fs::read(art::HELLO).unwrap(), "B kept a local copy");

    // A large upload compiling in the background on A; then a module left `compiling` (a
    // node stopped mid-compile) is compiled by a node that starts with an empty data dir.
    let a2 = Server::start_in(data_dir(), |c| c.modules.async_compile_bytes = 1000).await;
    let dev_a2 = a2.developer_in("acme").await;
    let up = upload(&a2, &dev_a2, art::COUNTER, "?name=counter").await;
    assert_eq!(up.status, StatusCode::ACCEPTED, "{}", up.text);
    let counter = up.body["digest"].as_str().unwrap().to_owned();
    assert_eq!(a2.module_settled(&dev_a2, &counter, Duration::from_secs(60)).await["status"], "ready");
    let key = scoped("acme", &counter);
    let (mut rec, rev) = a2.state.registry.get::<ModuleRecord>(RecordKind::Module, &key).await.unwrap().unwrap();
    rec.status = ModuleStatus::Compiling;
    rec.exports.clear();
    a2.state.registry.put(RecordKind::Module, &key, &rec, Some(rev)).await.unwrap();
    let c = Node::start(store_of(&a2), |_| {}).await;
    let dev_c = c.developer("acme");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = c.call(Method::GET, &format!("/v1/modules/{counter}"), &dev_c, None).await;
        if m.body["status"] != "compiling" {
            assert_eq!(m.body["status"], "ready", "{}", m.text);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still compiling: {}", m.text);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(c.deploy(&dev_c, "n", "counter").await.status, StatusCode::CREATED);
    assert_eq!(c.invoke(&dev_c, "n", "k").await, (StatusCode::OK, "1".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_or_missing_chunks_refuse_the_load_with_a_typed_error_and_nothing_runs() {
    let a = Server::start().await;
    let dev_a = a.developer_in("acme").await;
    let digest = a.upload(&dev_a, art::HELLO).await;
    let store = store_of(&a);
    let b = Node::start(store.clone(), |_| {}).await;
    let dev_b = b.developer("acme");

    // One bit of the stored bytes flipped, straight through the store.
    let (key, mut value) = chunks(&store, &digest).await.remove(0);
    assert_eq!(key, chunk_key(&digest, 0));
    let last = value.len() - 1;
    value[last] ^= 1;
    store.record_put(RecordKind::ModuleChunk, &key, value, None).await.unwrap();

    let d = b.deploy(&dev_b, "h", &digest).await;
    assert_eq!((d.status, d.code.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "internal"), "{}", d.text);
    match b.state.agents.modules.load(&digest).await {
        Err(AgentsError::ModuleBytes(ModuleBytesError::DigestMismatch { digest: d, .. })) => assert_eq!(d, digest),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!b.dir.path().join("modules").join(format!("{digest}.wasm")).exists(), "no copy of bad bytes");
    assert_eq!(b.call(Method::GET, "/v1/agents/h", &dev_b, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(b.invoke(&dev_b, "h", "x").await.0, StatusCode::NOT_FOUND, "nothing runs");

    // The chunk gone altogether.
    store.record_delete(RecordKind::ModuleChunk, &key).await.unwrap();
    match b.state.agents.modules.load(&digest).await {
        Err(AgentsError::ModuleBytes(ModuleBytesError::Absent { .. })) => {}
        other => panic!("expected absent bytes, got {other:?}"),
    }

    // Uploading the same bytes again (another tenant) writes the chunks again: B loads.
    let dev_beta = a.developer_in("beta").await;
    assert_eq!(a.upload(&dev_beta, art::HELLO).await, digest);
    assert_eq!(b.deploy(&dev_b, "h", &digest).await.status, StatusCode::CREATED);
    assert_eq!(b.invoke(&dev_b, "h", "again").await, (StatusCode::OK, "Hello, again!".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_with_module_files_only_copies_them_to_the_store_at_start() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "h", &digest, json!({})).await;
    let dir = s.stop().await;
    // What an older host left: the module record and its file, no chunk in the store.
    {
        let store = EmbeddedStore::open(&dir.path().join("store")).unwrap();
        let keys: Vec<String> = store
            .record_list(RecordKind::ModuleChunk, &format!("{digest}/"))
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!keys.is_empty());
        store.record_delete_many(RecordKind::ModuleChunk, &keys).await.unwrap();
        assert!(store.record_list(RecordKind::ModuleChunk, "").await.unwrap().is_empty());
    }
    assert!(dir.path().join("modules").join(format!("{digest}.wasm")).exists());

    // The upgraded node keeps working, and has written the chunks from its file.
    let s = Server::start_in(dir, |_| {}).await;
    assert_eq!(s.invoke_ok(&dev, "h", "upgraded").await, "Hello, upgraded!");
    let store = store_of(&s);
    assert!(!chunks(&store, &digest).await.is_empty(), "the migration stored the bytes");
    // So a second node with an empty data dir can run it.
    let b = Node::start(store, |_| {}).await;
    let dev_b = b.developer("acme");
    assert_eq!(b.deploy(&dev_b, "h2", &digest).await.status, StatusCode::CREATED);
    assert_eq!(b.invoke(&dev_b, "h2", "b").await, (StatusCode::OK, "Hello, b!".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chunks_go_with_the_last_module_record_naming_their_digest() {
    let a = Server::start().await;
    let acme = a.developer_in("acme").await;
    let beta = a.developer_in("beta").await;
    let digest = a.upload(&acme, art::HELLO).await;
    assert_eq!(a.upload(&beta, art::HELLO).await, digest, "same bytes, same digest");
    let store = store_of(&a);
    let stored = chunks(&store, &digest).await;
    assert!(!stored.is_empty());

    // beta deletes its module: acme's still names the digest, the chunks stay.
    let del = a.req(Method::DELETE, &format!("/v1/modules/{digest}"), &beta).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert_eq!(chunks(&store, &digest).await, stored);
    let b = Node::start(store.clone(), |_| {}).await;
    assert!(b.state.agents.modules.load(&digest).await.is_ok(), "another node still loads it");
    let b_copy = b.dir.path().join("modules").join(format!("{digest}.wasm"));
    assert!(b_copy.exists());
    assert!(!b.state.agents.modules.forget_if_unused(&digest).await.unwrap(), "still used: B keeps it");

    // acme deletes the last one: the chunks and A's local copy go.
    let del = a.req(Method::DELETE, &format!("/v1/modules/{digest}"), &acme).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert!(chunks(&store, &digest).await.is_empty(), "no chunk left");
    assert!(!a.dir.path().join("modules").join(format!("{digest}.wasm")).exists());
    // B, told of the delete, drops its own copy.
    assert!(b.state.agents.modules.forget_if_unused(&digest).await.unwrap());
    assert!(!b_copy.exists() && !b.state.agents.modules.is_cached(&digest));
    // An upload of the same bytes stores them again.
    assert_eq!(a.upload(&acme, art::HELLO).await, digest);
    assert_eq!(chunks(&store, &digest).await, stored);
}
