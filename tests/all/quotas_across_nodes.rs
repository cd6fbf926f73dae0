//! Quotas across the nodes of a cluster (issue #14): two servers over one store keep a
//! tenant's agent quota exact (deploys race on a counter record), and a store written before
//! the counter existed, or a tenant deleted and made again, counts right.

use std::sync::Arc;
use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::api::auth::Verifier;
use cortex_host::api::{AppState, Role};
use cortex_host::registry::Quotas;
use cortex_host::runtime::Runtime;
use cortex_host::store::{EmbeddedStore, RecordKind, Store};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::oneshot;

use crate::server::{Answer, Server, answer, claims, config, data_dir};

/// One node: its own state (agents, limiters, caches) and HTTP server, over a shared store.
struct Node {
    state: Arc<AppState>,
    base: String,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl Node {
    async fn start(dir: &std::path::Path, store: Arc<dyn Store>) -> Node {
        let cfg = config(dir);
        let runtime = Runtime::new(cfg.engine.clone(), Some(&dir.join("cache"))).unwrap();
        let verifier = Verifier::new(&cfg.auth, dir).unwrap();
        let state = Arc::new(AppState::new(cfg, runtime, store, verifier).unwrap());
        state.agents.restore().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(cortex_host::server::serve(state.clone(), listener, async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Node { state, base, client, _shutdown: tx }
    }

    fn token(&self, tenant: Option<&str>, role: Role) -> String {
        self.state.verifier.mint(&claims(tenant, role)).unwrap()
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<serde_json::Value>) -> Answer {
        let mut r = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        answer(r.send().await.unwrap()).await
    }

    async fn deploy(&self, token: &str, name: &str, module: &str) -> Answer {
        self.call(Method::POST, "/v1/agents", token, Some(json!({"name": name, "module": module}))).await
    }
}

fn agents_quota(n: u32) -> serde_json::Value {
    serde_json::to_value(Quotas { agents: n, ..Quotas::default() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deploying_at_once_keep_the_agent_quota_exact() {
    let dir = data_dir();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
    // Same data dir (the module files and the token secret), one store, two sets of agents.
    let a = Node::start(dir.path(), store.clone()).await;
    let b = Node::start(dir.path(), store.clone()).await;
    let admin = a.token(None, Role::PlatformAdmin);
    let r = a.call(Method::POST, "/v1/tenants", &admin, Some(json!({"name": "acme", "quotas": agents_quota(3)}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let dev = a.token(Some("acme"), Role::Developer);
    let up = answer(
        a.client
            .post(format!("{}/v1/modules?name=hello", a.base))
            .bearer_auth(&dev)
            .body(std::fs::read(art::HELLO).unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);

    // Eight deploys at once, four on each node: three slots in all.
    let mut deploys = tokio::task::JoinSet::new();
    for i in 0..8usize {
        let (base, client, dev) =
            (if i.is_multiple_of(2) { &a } else { &b }.base.clone(), a.client.clone(), dev.clone());
        deploys.spawn(async move {
            let body = json!({"name": format!("agent-{i}"), "module": "hello"});
            let r = client.post(format!("{base}/v1/agents")).bearer_auth(dev).json(&body).send().await.unwrap();
            (i, answer(r).await)
        });
    }
    let mut answers = deploys.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    let created: Vec<usize> =
        answers.iter().filter(|(_, r)| r.status == StatusCode::CREATED).map(|(i, _)| *i).collect();
    assert_eq!(created.len(), 3, "{:?}", answers.iter().map(|(i, r)| (i, &r.text)).collect::<Vec<_>>());
    for (i, r) in answers.iter().filter(|(_, r)| r.status != StatusCode::CREATED) {
        assert_eq!(
            (r.status, r.code.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, "agent_quota"),
            "agent-{i}: {}",
            r.text
        );
    }
    let records = store.record_list(RecordKind::Agent, "acme/").await.unwrap();
    assert_eq!(records.len(), 3, "three agent records");

    // Full on both nodes; a delete on one frees one slot on the other.
    for node in [&a, &b] {
        let r = node.deploy(&dev, "one-more", "hello").await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "agent_quota"), "{}", r.text);
    }
    let first = created[0];
    let owner = if first.is_multiple_of(2) { &a } else { &b };
    let other = if first.is_multiple_of(2) { &b } else { &a };
    let r = owner.call(Method::DELETE, &format!("/v1/agents/agent-{first}"), &dev, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = other.deploy(&dev, "one-more", "hello").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = owner.deploy(&dev, "two-more", "hello").await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "agent_quota"), "{}", r.text);
}

/// The tenant's agent counter, as stored.
async fn counter(s: &Server, tenant: &str) -> Option<u64> {
    let store = s.state.registry.store();
    let (bytes, _) = store.record_get(RecordKind::Counter, &format!("agents/{tenant}")).await.unwrap()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["agents"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_agent_counter_is_counted_from_the_records_and_goes_with_its_tenant() {
    let s = Server::start().await;
    s.tenant_with("acme", Some(Quotas { agents: 3, ..Quotas::default() })).await;
    let dev = s.token(Some("acme"), Role::Developer);
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "a", &hello, json!({})).await;
    s.deploy(&dev, "b", &hello, json!({})).await;
    assert_eq!(counter(&s, "acme").await, Some(2));

    // A data dir from before the counter: the two records count.
    s.state.registry.store().record_delete(RecordKind::Counter, "agents/acme").await.unwrap();
    s.deploy(&dev, "c", &hello, json!({})).await;
    assert_eq!(counter(&s, "acme").await, Some(3));
    let r = answer(
        s.req(Method::POST, "/v1/agents", &dev).json(&json!({"name": "d", "module": hello})).send().await.unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "agent_quota"), "{}", r.text);
    // A delete without a counter counts the records too (the deleted one among them).
    s.state.registry.store().record_delete(RecordKind::Counter, "agents/acme").await.unwrap();
    let r = answer(s.req(Method::DELETE, "/v1/agents/a", &dev).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(counter(&s, "acme").await, Some(2));

    // The tenant's deletion takes its counter; a new tenant of the name starts from zero.
    let r = answer(s.req(Method::DELETE, "/v1/tenants/acme", &s.admin()).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(counter(&s, "acme").await, None);
    s.tenant_with("acme", Some(Quotas { agents: 3, ..Quotas::default() })).await;
    let dev = s.token(Some("acme"), Role::Developer);
    let hello = s.upload(&dev, art::HELLO).await;
    for name in ["x", "y", "z"] {
        s.deploy(&dev, name, &hello, json!({})).await;
    }
    assert_eq!(counter(&s, "acme").await, Some(3));
}
