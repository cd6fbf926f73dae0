//! Several full host nodes in one process, each with its own HTTP listener and data dir,
//! sharing one store: a change made through one node is applied by every node within the
//! bound; every running agent's background work is owned by exactly one live node; a node
//! that leaves hands its work over; a former owner's writes are fenced.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::store::{EmbeddedStore, Fence, Fenced, RecordKind, RecordStore, Scope, Store, StoreError};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::server::{Server, config, data_dir};

/// The bound the README states for a change to reach every node.
const BOUND: Duration = Duration::from_secs(1);

/// Where the nodes' shared store lives.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// One embedded store value shared by every node.
    Embedded,
    /// The ArangoDB backend: one client per node against the loopback stand-in.
    FakeArango,
    /// The ArangoDB backend against the real server at `CORTEX_TEST_ARANGODB_URL`.
    RealArango,
}

/// What keeps the shared store alive.
pub(crate) struct Shared {
    _dir: crate::server::DataDir,
    _fake: Option<crate::fake_arango::FakeArango>,
    _arango_dir: Option<tempfile::TempDir>,
}

/// `n` nodes over one store of `backend` (None: the real server is not configured), sharing
/// one token secret, with fast heartbeats.
pub(crate) async fn nodes_on(backend: Backend, n: usize) -> Option<(Vec<Server>, Arc<dyn Store>, Shared)> {
    let shared = data_dir();
    let mut fake = None;
    let mut arango_dir = None;
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    match backend {
        Backend::Embedded => {
            let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&shared.path().join("store")).unwrap());
            stores = vec![store; n + 1];
        }
        Backend::FakeArango => {
            let (f, first, dir) = crate::arangodb::connected().await;
            stores.push(Arc::new(first));
            for _ in 0..n {
                stores.push(Arc::new(crate::arangodb::connect_again(&f, &dir).await));
            }
            fake = Some(f);
            arango_dir = Some(dir);
        }
        Backend::RealArango => {
            let (cfg, dir) = crate::arangodb::real_config()?;
            for _ in 0..=n {
                stores.push(Arc::new(cortex_host::store::ArangoStore::connect(&cfg).await.unwrap()));
            }
            arango_dir = Some(dir);
        }
    }
    let secret = shared.path().join("jwt-hs256.secret");
    let mut out = Vec::new();
    for store in stores.iter().skip(1) {
        let dir = data_dir();
        let mut cfg = config(dir.path());
        cfg.auth.secret_file = Some(secret.clone());
        cfg.cluster.heartbeat_ms = 100;
        cfg.cluster.node_ttl_ms = 1_000;
        cfg.cluster.lease_ttl_ms = 1_000;
        cfg.messaging.idle_poll_ms = 100;
        out.push(Server::start_on(dir, cfg, Some(store.clone())).await);
    }
    Some((out, stores[0].clone(), Shared { _dir: shared, _fake: fake, _arango_dir: arango_dir }))
}

/// Poll `f` until it holds, at most `within`; returns how long it took.
pub(crate) async fn within<F, Fut>(within: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Which node owns each agent, from every node's own view: (agent, epoch) -> node index.
pub(crate) fn owners(nodes: &[&Server]) -> BTreeMap<String, Vec<(usize, u64)>> {
    let mut out: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
    for (i, s) in nodes.iter().enumerate() {
        for (agent, epoch) in s.state.agents.owned() {
            out.entry(agent).or_default().push((i, epoch));
        }
    }
    out
}

async fn change_reaches_every_node(backend: Backend) {
    let Some((n, _store, _shared)) = nodes_on(backend, 3).await else { return };
    let admin = n[0].admin();
    n[0].tenant("acme").await;
    let dev = n[0].token(Some("acme"), Role::Developer);
    let digest = n[0].upload(&dev, art::COUNTER).await;
    n[0].deploy(&dev, "c", &digest, json!({})).await;
    // Deployed through node 1, invoked through node 3 (which compiles the module first:
    // its compile is not part of the bound).
    within(Duration::from_secs(10), "the deploy reaches node 3", || async {
        n[2].invoke(&dev, "c", "").await.0 == StatusCode::OK
    })
    .await;
    // Stopped through node 2: refused through node 1 and node 3.
    let r = n[1].req(Method::POST, "/v1/agents/c/stop", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for i in [0, 2] {
        within(BOUND, "the stop reaches every node", || async { n[i].invoke(&dev, "c", "").await.0 != StatusCode::OK })
            .await;
    }
    // A key made through node 1 and used there; revoked through node 2: refused on node 1.
    let r = n[0].req(Method::POST, "/v1/keys", &n[0].token(Some("acme"), Role::TenantAdmin));
    let key: serde_json::Value =
        r.json(&json!({"role": "observer", "name": "k"})).send().await.unwrap().json().await.unwrap();
    let (id, secret) = (key["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap().to_owned());
    let read = |i: usize| {
        let req = n[i].client.get(n[i].url("/v1/agents")).bearer_auth(secret.clone());
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(read(0).await, StatusCode::OK, "the key works (and is cached on node 1)");
    let r = n[1].req(Method::DELETE, &format!("/v1/keys/{id}"), &n[1].token(Some("acme"), Role::TenantAdmin));
    assert!(r.send().await.unwrap().status().is_success());
    within(BOUND, "the revocation reaches node 1", || async { read(0).await == StatusCode::UNAUTHORIZED }).await;
    // A tenant deleted through node 3 is gone through node 1.
    let r = n[2].req(Method::DELETE, "/v1/tenants/acme", &admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    within(BOUND, "the tenant delete reaches node 1", || async {
        n[0].req(Method::GET, "/v1/agents", &dev).send().await.unwrap().status() != StatusCode::OK
    })
    .await;
    // Every node applied the stream to the same position and answers ready.
    for s in &n {
        let r = s.client.get(s.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

async fn one_owner_and_hand_over(backend: Backend) {
    let Some((mut n, store, _shared)) = nodes_on(backend, 3).await else { return };
    n[0].tenant("acme").await;
    let dev = n[0].token(Some("acme"), Role::Developer);
    let counter = n[0].upload(&dev, art::COUNTER).await;
    let agents: Vec<String> = (0..9).map(|i| format!("a{i}")).collect();
    for a in &agents {
        n[0].deploy(&dev, a, &counter, json!({})).await;
    }
    let want: HashSet<String> = agents.iter().map(|a| format!("acme/{a}")).collect();
    let all: Vec<&Server> = n.iter().collect();
    within(Duration::from_secs(10), "every agent owned by exactly one node", || async {
        let o = owners(&all);
        o.keys().cloned().collect::<HashSet<_>>() == want && o.values().all(|v| v.len() == 1)
    })
    .await;
    // Spread over more than one node (rendezvous hashing over 3 live nodes).
    let spread: HashSet<usize> = owners(&all).values().map(|v| v[0].0).collect();
    assert!(spread.len() >= 2, "{:?}", owners(&all));
    // The cluster view lists the three nodes, live, and what each owns.
    let view = n[1].get_json(&n[1].admin(), "/v1/cluster").await;
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{view}");
    assert!(nodes.iter().all(|x| x["live"] == true), "{view}");
    let listed: usize = nodes.iter().map(|x| x["owned"].as_array().unwrap().len()).sum();
    assert_eq!(listed, 9, "{view}");

    // Node 2 leaves (SIGTERM-like shutdown): it hands back; the others take over at once.
    let before = owners(&all);
    let gone = n.remove(1);
    let gone_id = gone.state.agents.cluster().id().to_owned();
    gone.stop().await;
    let left: Vec<&Server> = n.iter().collect();
    within(Duration::from_secs(10), "the leaving node's agents owned again", || async {
        let o = owners(&left);
        o.keys().cloned().collect::<HashSet<_>>() == want && o.values().all(|v| v.len() == 1)
    })
    .await;
    // Epochs never go back: a moved agent has a higher epoch than before.
    for (agent, now) in owners(&left) {
        let was = before[&agent][0].1;
        assert!(now[0].1 >= was, "{agent}: epoch {was} went back to {}", now[0].1);
    }
    // The work runs: every agent still counts through any node.
    for a in &agents {
        n[1].invoke_ok(&dev, a, "").await;
    }
    // The left node's membership record is gone.
    assert!(store.record_get(RecordKind::Node, &gone_id).await.unwrap().is_none());
}

async fn former_owner_fenced(backend: Backend) {
    let Some((n, store, _shared)) = nodes_on(backend, 2).await else { return };
    n[0].tenant("acme").await;
    let dev = n[0].token(Some("acme"), Role::Developer);
    let watcher = n[0].upload(&dev, art::WATCHER).await;
    n[0].deploy_with(&dev, "w", &watcher, json!({"watches": [{"collection": "orders"}]})).await;
    let all: Vec<&Server> = n.iter().collect();
    within(Duration::from_secs(10), "the watcher is owned", || async { owners(&all).len() == 1 }).await;
    let (owner, epoch) = owners(&all)["acme/w"][0];
    // Another node takes the lease (epoch + 1), as after the owner paused past its TTL.
    // (Compare-and-swap, as a node does: the owner may renew in between.)
    loop {
        let (bytes, rev) = store.record_get(RecordKind::Lease, "acme/w").await.unwrap().unwrap();
        let mut lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(lease["epoch"], json!(epoch), "{lease}");
        lease["owner"] = json!("someone-else");
        lease["epoch"] = json!(epoch + 1);
        match store.record_put(RecordKind::Lease, "acme/w", serde_json::to_vec(&lease).unwrap(), Some(rev)).await {
            Ok(_) => break,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    // A write fenced by the old epoch is refused, and nothing is written.
    let old = Fenced::new(store.clone(), Fence { key: "acme/w".into(), epoch });
    let e = old.record_put(RecordKind::Cursor, "acme/w", b"{\"seq\":0,\"updated_ms\":0}".to_vec(), None).await;
    assert!(matches!(e, Err(StoreError::Fenced { held, .. }) if held == epoch + 1), "{e:?}");
    // The former owner notices at its next heartbeat and stops the work.
    within(Duration::from_secs(5), "the former owner stops", || async {
        !n[owner].state.agents.is_watching("acme", "w") || owners(&all)["acme/w"].iter().all(|(_, e)| *e > epoch)
    })
    .await;
    // "someone-else" never renews: its lease expires and a live node takes it, one epoch on.
    within(Duration::from_secs(10), "a live node owns it again", || async {
        owners(&all).get("acme/w").is_some_and(|o| o.len() == 1 && o[0].1 >= epoch + 2)
    })
    .await;
}

/// A node that dies without handing anything back (its membership record goes stale, its
/// leases are never renewed): a live node takes each of its leases once it expired, one
/// epoch on, and runs the work. (The lease loop reads only its own leases at most
/// heartbeats: the takeover must not depend on that.)
async fn expired_lease_taken_over(backend: Backend) {
    let Some((n, store, _shared)) = nodes_on(backend, 2).await else { return };
    n[0].tenant("acme").await;
    let dev = n[0].token(Some("acme"), Role::Developer);
    let watcher = n[0].upload(&dev, art::WATCHER).await;
    n[0].deploy_with(&dev, "w", &watcher, json!({"watches": [{"collection": "orders"}]})).await;
    let all: Vec<&Server> = n.iter().collect();
    within(Duration::from_secs(10), "the watcher is owned", || async { owners(&all).len() == 1 }).await;
    let (owner, epoch) = owners(&all)["acme/w"][0];
    let other = 1 - owner;
    // The owner crashes: its lease stays in the store, held by it at `epoch`, unrenewed.
    n[owner].state.agents.crash().await;
    let (bytes, _) = store.record_get(RecordKind::Lease, "acme/w").await.unwrap().unwrap();
    let lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(lease["owner"], json!(n[owner].state.agents.cluster().id()), "not handed back: {lease}");
    within(Duration::from_secs(20), "the other node takes the expired lease", || async {
        n[other].state.agents.owned() == [("acme/w".to_owned(), epoch + 1)]
    })
    .await;
    within(Duration::from_secs(10), "and runs the watcher", || async {
        n[other].state.agents.is_watching("acme", "w")
    })
    .await;
    let (bytes, _) = store.record_get(RecordKind::Lease, "acme/w").await.unwrap().unwrap();
    let lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(lease["owner"], json!(n[other].state.agents.cluster().id()), "{lease}");
}

/// A busy node's load (invocations running and queued, wasm time per second) is in its
/// membership record, and so in `GET /v1/cluster` answered by another node: what the
/// operator's autoscaler reads.
async fn load_seen_from_another_node(backend: Backend) {
    let Some((n, store, _shared)) = nodes_on(backend, 2).await else { return };
    let roomy = cortex_host::registry::Quotas {
        invocations_per_second: 100_000,
        burst: 100_000,
        concurrent_invocations: 1000,
        ..cortex_host::registry::Quotas::default()
    };
    n[0].tenant_with("acme", Some(roomy.clone())).await;
    let dev = n[0].token(Some("acme"), Role::Developer);
    let hostile = n[0].upload(&dev, art::HOSTILE).await;
    // The held invocation ends when the test releases it: every limit that could end it
    // first (wall clock, fuel, its wait in the queue) is set at the tenant's highest.
    let limits = json!({ "timeout_ms": roomy.max_timeout_ms, "fuel": roomy.max_fuel });
    let spec = json!({ "max_concurrency": 1, "queue": 2, "queue_timeout_ms": roomy.max_timeout_ms, "limits": limits });
    n[0].deploy_with(&dev, "busy", &hostile, spec).await;
    let busy_id = n[0].state.agents.cluster().id().to_owned();
    let load_of = |view: &serde_json::Value, id: &str| {
        view["nodes"].as_array().unwrap().iter().find(|x| x["id"] == id).map(|x| x["load"].clone()).unwrap_or_default()
    };
    // One invocation runs on node 1 (held until the test writes `hostile/release`) and
    // another waits in its queue.
    let invoke = |input: &str| {
        let rb = n[0].req(Method::POST, "/v1/agents/busy/invoke", &dev).body(input.to_owned());
        tokio::spawn(async move {
            let r = rb.send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        })
    };
    let blocker = invoke("wait:release");
    let admin = n[1].admin();
    within(Duration::from_secs(30), "node 2 sees node 1 running one", || async {
        let view = n[1].get_json(&admin, "/v1/cluster").await;
        load_of(&view, &busy_id)["in_flight"] == 1
    })
    .await;
    let queued = invoke("echo:waited");
    within(Duration::from_secs(30), "node 2 sees node 1 busy", || async {
        let view = n[1].get_json(&admin, "/v1/cluster").await;
        let load = load_of(&view, &busy_id);
        load["in_flight"] == 1 && load["queued"] == 1
    })
    .await;
    // The other node is idle.
    let view = n[1].get_json(&admin, "/v1/cluster").await;
    let other = n[1].state.agents.cluster().id().to_owned();
    assert_eq!(load_of(&view, &other)["in_flight"], 0, "{view}");
    // Released: both complete.
    let scope = Scope::new("acme", "cluster-test");
    store.put(&scope, "hostile", "release", "true", None).await.unwrap();
    let (status, body) = blocker.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "released"));
    let (status, body) = queued.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "waited"));
    // The held invocation's wasm time shows as a rate in a record written after it; then
    // the node is idle again.
    within(Duration::from_secs(10), "the wasm time rate shows", || async {
        let view = n[1].get_json(&admin, "/v1/cluster").await;
        load_of(&view, &busy_id)["wasm_seconds_per_second"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    within(Duration::from_secs(10), "node 1 idle again", || async {
        let view = n[1].get_json(&admin, "/v1/cluster").await;
        let load = load_of(&view, &busy_id);
        load["in_flight"] == 0 && load["queued"] == 0 && load["wasm_seconds_per_second"] == 0.0
    })
    .await;
}

macro_rules! on_every_backend {
    ($($case:ident => $test:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() { super::$case(super::Backend::Embedded).await })*
        }
        mod fake_arango {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() { super::$case(super::Backend::FakeArango).await })*
        }
        /// Against the real server when `CORTEX_TEST_ARANGODB_URL` is set (else they pass
        /// without running, as the store contract's real cases do).
        mod real_arangodb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() { super::$case(super::Backend::RealArango).await })*
        }
    };
}

on_every_backend! {
    change_reaches_every_node => a_change_through_one_node_reaches_every_node_within_the_bound,
    one_owner_and_hand_over => every_agent_has_one_owner_and_a_leaving_node_hands_its_work_over,
    former_owner_fenced => a_former_owner_cannot_write_once_another_took_the_lease,
    load_seen_from_another_node => a_busy_nodes_load_shows_in_the_cluster_view_of_another_node,
    expired_lease_taken_over => a_live_node_takes_over_the_expired_leases_of_a_node_that_died,
}
