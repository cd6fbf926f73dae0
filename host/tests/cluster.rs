//! Several `cortex serve` processes sharing one store (the `fake-arangodb` stand-in for
//! ArangoDB): what a platform sees through any node, and nodes killed and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_artifacts as art;

use cluster::Cluster;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_through_one_node_is_read_through_another_and_survives_a_kill() {
    let cluster = Cluster::start();
    let n1 = cluster.node("n1").await;
    let mut n2 = cluster.node("n2").await;
    let admin = cluster.token(None, "platform-admin");
    let client = reqwest::Client::new();

    let r = client.post(n1.url("/v1/tenants")).bearer_auth(&admin).json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let get = |node: &cluster::Node| client.get(node.url("/v1/tenants/acme")).bearer_auth(&admin).send();
    let r = get(&n2).await.unwrap();
    assert_eq!(r.status(), 200, "one token and one store on every node");
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "acme");

    let before = n2.pid();
    n2.kill9();
    assert!(get(&n2).await.is_err(), "a killed node answers nothing");
    n2.restart().await;
    assert_ne!(n2.pid(), before);
    let r = get(&n2).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "acme");
    assert_eq!(get(&n1).await.unwrap().status(), 200, "the other node was not disturbed");
}

// ---------------------------------------------------------------------------------------
// Three nodes under traffic while they are killed and stopped.
// ---------------------------------------------------------------------------------------

/// Fast cluster timing: heartbeats every 100 ms, nodes and leases dead after 1 s.
const FAST: [(&str, &str); 4] = [
    ("CORTEX_CFG__CLUSTER__HEARTBEAT_MS", "100"),
    ("CORTEX_CFG__CLUSTER__NODE_TTL_MS", "1000"),
    ("CORTEX_CFG__CLUSTER__LEASE_TTL_MS", "1000"),
    ("CORTEX_CFG__MESSAGING__IDLE_POLL_MS", "100"),
];

/// The bound the README states for a registry change to reach every node.
const BOUND: Duration = Duration::from_secs(1);

/// How long one request of the traffic may take: a request to a stopped node is given up
/// after this (and counted as attempted, not acknowledged).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Longer than the lease TTL (1 s): a stopped owner loses its leases meanwhile.
const STOPPED_FOR: Duration = Duration::from_millis(2_500);

/// `n` nodes `n1`..`nN` of `cluster` with [`FAST`] timing.
async fn fast_nodes(cluster: &Cluster, n: usize) -> Vec<cluster::Node> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(cluster.node_with(&format!("n{i}"), &FAST).await);
    }
    nodes
}

/// Poll `f` until it holds, at most `bound` (panics naming `what`); returns how long it took.
async fn within<F, Fut>(bound: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Status and body of a request, or None when the node did not answer (in time).
async fn answer(rb: reqwest::RequestBuilder) -> Option<(u16, String)> {
    let r = rb.send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Create tenant `acme` (through `base`) with rate quotas the traffic does not reach.
async fn acme(client: &reqwest::Client, base: &str, admin: &str) {
    tenant(client, base, admin, "acme").await;
}

/// Create tenant `name` (through `base`) with rate quotas the traffic does not reach.
async fn tenant(client: &reqwest::Client, base: &str, admin: &str, name: &str) {
    let body = json!({"name": name, "quotas": {"invocations_per_second": 100_000, "burst": 100_000}});
    let r = client.post(format!("{base}/v1/tenants")).bearer_auth(admin).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Upload `module` through `base`; returns its digest.
async fn upload(client: &reqwest::Client, base: &str, token: &str, module: &str) -> String {
    let r = client.post(format!("{base}/v1/modules")).bearer_auth(token).body(std::fs::read(module).unwrap());
    let r = r.send().await.unwrap();
    assert!(r.status() == 201 || r.status() == 200, "upload {module}: {}", r.status());
    r.json::<Value>().await.unwrap()["digest"].as_str().unwrap().to_owned()
}

/// Deploy `spec` through `base`.
async fn deploy(client: &reqwest::Client, base: &str, token: &str, spec: Value) {
    let r = client.post(format!("{base}/v1/agents")).bearer_auth(token).json(&spec).send().await.unwrap();
    assert_eq!(r.status(), 201, "deploy {spec}: {}", r.text().await.unwrap());
}

/// `GET /v1/cluster` through `base`, or None when the node does not answer.
async fn cluster_view(client: &reqwest::Client, base: &str, admin: &str) -> Option<Value> {
    let (status, body) = answer(client.get(format!("{base}/v1/cluster")).bearer_auth(admin)).await?;
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Every lease a cluster view lists (owned or not): agent -> epoch.
fn epochs(view: &Value) -> BTreeMap<String, u64> {
    let owned = view["nodes"].as_array().unwrap().iter().flat_map(|n| n["owned"].as_array().unwrap().iter());
    let unowned = view["unowned"].as_array().unwrap().iter();
    owned.chain(unowned).map(|w| (w["agent"].as_str().unwrap().to_owned(), w["epoch"].as_u64().unwrap())).collect()
}

/// Whether every agent of `agents` is owned by exactly one node, live in `view`, and by no
/// node that is not.
fn each_owned_once_by_a_live_node(view: &Value, agents: &[&str]) -> bool {
    let nodes = view["nodes"].as_array().unwrap();
    let unowned: HashSet<&str> =
        view["unowned"].as_array().unwrap().iter().map(|w| w["agent"].as_str().unwrap()).collect();
    agents.iter().all(|a| {
        let owners: Vec<&Value> =
            nodes.iter().filter(|n| n["owned"].as_array().unwrap().iter().any(|w| w["agent"] == *a)).collect();
        !unowned.contains(a) && owners.len() == 1 && owners[0]["live"] == true
    })
}

/// The node (index into `bases`) that owns `agent` in `view`.
fn owner_of(view: &Value, agent: &str, ids: &[String]) -> Option<usize> {
    let node = view["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["owned"].as_array().unwrap().iter().any(|w| w["agent"] == agent))?;
    ids.iter().position(|id| node["id"] == id.as_str())
}

/// What the traffic has done so far.
#[derive(Default)]
struct Tally {
    /// Counter increments sent, and answered 200.
    increments_sent: AtomicU64,
    increments_acked: AtomicU64,
    /// Watched writes sent (`orders/kN`, N counting from 0), and the keys answered 200 with
    /// their revision, in the order they were acknowledged (one writer: feed order).
    writes_sent: AtomicU64,
    writes_acked: Mutex<Vec<String>>,
    /// Requests that got no answer or not a 200.
    failed: AtomicU64,
    /// What the first failed requests got, for the messages of failed assertions.
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Tally {
    fn fail(&self, base: &str, what: Option<(u16, String)>) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() >= 30 {
            errors.remove(0);
        }
        errors.push(format!("{:?} {base}: {what:?}", Instant::now()));
    }

    fn acked(&self) -> (u64, usize) {
        (self.increments_acked.load(Ordering::SeqCst), self.writes_acked.lock().unwrap().len())
    }
}

/// Wait (bounded) until both kinds of traffic were acknowledged `n` more times than at
/// `from`: the cluster serves while a node is down.
async fn progress(tally: &Tally, from: (u64, usize), n: u64, what: &str) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = tally.acked();
        if now.0 >= from.0 + n && now.1 as u64 >= from.1 as u64 + n {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not {n} more of each within 30 s ({from:?} -> {now:?}); failures: {:?}",
            tally.errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One of the watcher's entries, `SEQ:orders/KEY@REV`: (seq, key).
fn parse_seen(entry: &str) -> (u64, String) {
    let (seq, rest) = entry.split_once(':').unwrap();
    let (doc, _rev) = rest.rsplit_once('@').unwrap();
    (seq.parse().unwrap(), doc.strip_prefix("orders/").unwrap().to_owned())
}

/// Three `cortex serve` processes share one store through the ArangoDB backend. The store
/// is the `fake-arangodb` process: a stand-in for ArangoDB, in memory, speaking the parts
/// of its HTTP API the backend uses (not the real database). A client drives counter
/// increments and watched writes through all three nodes round-robin while one node is
/// killed (SIGKILL) and restarted and another is stopped (SIGSTOP) for longer than the
/// lease TTL: no acknowledged increment is lost, the watcher sees every acknowledged write
/// in feed order (at least once), every agent ends up owned by exactly one live node, and
/// no lease epoch ever goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_lose_no_acknowledged_work_while_nodes_are_killed_and_stopped() {
    let cluster = Cluster::start();
    let mut nodes = fast_nodes(&cluster, 3).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let admin = cluster.token(None, "platform-admin");
    let dev = cluster.token(Some("acme"), "developer");
    let setup = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap();

    // The counter in a tenant of its own: each tenant's writes go through its own feed head.
    let beta = cluster.token(Some("beta"), "developer");
    acme(&setup, &bases[0], &admin).await;
    tenant(&setup, &bases[0], &admin, "beta").await;
    let counter = upload(&setup, &bases[0], &beta, art::COUNTER).await;
    let kv = upload(&setup, &bases[0], &dev, art::KV).await;
    let watcher = upload(&setup, &bases[0], &dev, art::WATCHER).await;
    deploy(&setup, &bases[0], &beta, json!({"name": "c", "module": counter})).await;
    deploy(
        &setup,
        &bases[0],
        &beta,
        json!({"name": "reader", "module": upload(&setup, &bases[0], &beta, art::KV).await}),
    )
    .await;
    deploy(&setup, &bases[0], &dev, json!({"name": "writer", "module": kv})).await;
    deploy(&setup, &bases[0], &dev, json!({"name": "w", "module": watcher, "watches": [{"collection": "orders"}]}))
        .await;
    let agents = ["beta/c", "beta/reader", "acme/w", "acme/writer"];

    // Every node has every agent (a node that has not applied the deploys yet answers
    // 404), and every agent is owned once.
    for base in &bases {
        within(Duration::from_secs(30), "every node invokes every agent", || async {
            let get =
                |a: &str| client.post(format!("{base}/v1/agents/{a}/invoke")).bearer_auth(&dev).body("get:orders/none");
            let w = answer(get("w")).await.is_some_and(|(s, _)| s == 200);
            let k = answer(get("writer")).await.is_some_and(|(s, _)| s == 200);
            let rb = client.post(format!("{base}/v1/agents/reader/invoke")).bearer_auth(&beta).body("get:orders/none");
            let r = answer(rb).await.is_some_and(|(s, _)| s == 200);
            w && k && r
        })
        .await;
    }
    within(Duration::from_secs(30), "every agent owned once by a live node", || async {
        cluster_view(&client, &bases[0], &admin).await.is_some_and(|v| each_owned_once_by_a_live_node(&v, &agents))
    })
    .await;
    let w_epoch_before = epochs(&cluster_view(&setup, &bases[0], &admin).await.unwrap())["acme/w"];
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for base in &bases {
            ids.push(cluster_view(&setup, base, &admin).await.unwrap()["node"].as_str().unwrap().to_owned());
        }
        ids
    };

    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    // Counter increments, round-robin; a node that does not answer is skipped this round.
    tasks.push(tokio::spawn({
        let (tally, client, bases, dev) = (tally.clone(), client.clone(), bases.clone(), beta.clone());
        async move {
            let mut i = 0usize;
            while !tally.stop.load(Ordering::SeqCst) {
                let base = &bases[i % bases.len()];
                i += 1;
                tally.increments_sent.fetch_add(1, Ordering::SeqCst);
                let rb = client.post(format!("{base}/v1/agents/c/invoke")).bearer_auth(&dev);
                match answer(rb).await {
                    Some((200, _)) => {
                        tally.increments_acked.fetch_add(1, Ordering::SeqCst);
                    }
                    other => tally.fail(base, other),
                }
            }
        }
    }));
    // Watched writes of new keys, one at a time, round-robin.
    tasks.push(tokio::spawn({
        let (tally, client, bases, dev) = (tally.clone(), client.clone(), bases.clone(), dev.clone());
        async move {
            let mut i = 0usize;
            while !tally.stop.load(Ordering::SeqCst) {
                let base = &bases[i % bases.len()];
                let n = tally.writes_sent.fetch_add(1, Ordering::SeqCst);
                i += 1;
                let rb = client
                    .post(format!("{base}/v1/agents/writer/invoke"))
                    .bearer_auth(&dev)
                    .body(format!(r#"put:orders/k{n}={{"n":{n}}}"#));
                match answer(rb).await {
                    // The new revision: the write is acknowledged.
                    Some((200, body)) if body.parse::<u64>().is_ok() => {
                        tally.writes_acked.lock().unwrap().push(format!("k{n}"));
                    }
                    other => tally.fail(base, other),
                }
            }
        }
    }));
    // Reads of /v1/cluster through the nodes in turn: no lease's epoch ever goes back.
    let monitor = tokio::spawn({
        let (tally, client, bases, admin) = (tally.clone(), client.clone(), bases.clone(), admin.clone());
        async move {
            let mut highest: BTreeMap<String, u64> = BTreeMap::new();
            let mut reads = 0u64;
            let mut i = 0usize;
            while !tally.stop.load(Ordering::SeqCst) {
                let base = &bases[i % bases.len()];
                i += 1;
                let Some(view) = cluster_view(&client, base, &admin).await else { continue };
                reads += 1;
                for (agent, epoch) in epochs(&view) {
                    let was = highest.entry(agent.clone()).or_insert(epoch);
                    assert!(epoch >= *was, "{agent}: epoch {epoch} read through {base} after {was}: {view}");
                    *was = epoch;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (reads, highest)
        }
    });

    let mut at = progress(&tally, (0, 0), 20, "traffic flows through three nodes").await;

    // SIGKILL the watcher's owner; the others go on serving; it comes back.
    let view = cluster_view(&setup, &bases[0], &admin).await.unwrap();
    let victim = owner_of(&view, "acme/w", &ids).expect("the watcher is owned");
    nodes[victim].kill9();
    at = progress(&tally, at, 20, "traffic flows while a node is killed").await;
    nodes[victim].restart().await;
    at = progress(&tally, at, 20, "traffic flows after the restart").await;

    // SIGSTOP the watcher's owner (now: it may be changing hands) for longer than the
    // lease TTL.
    let owner = Mutex::new(None);
    within(Duration::from_secs(30), "the watcher is owned after the restart", || async {
        let view = cluster_view(&client, &bases[(victim + 1) % 3], &admin).await;
        *owner.lock().unwrap() = view.and_then(|v| owner_of(&v, "acme/w", &ids));
        owner.lock().unwrap().is_some()
    })
    .await;
    let stopped = owner.into_inner().unwrap().unwrap();
    nodes[stopped].sigstop();
    // The deliberate stop: not a synchronisation.
    tokio::time::sleep(STOPPED_FOR).await;
    let during = tally.acked();
    nodes[stopped].sigcont();
    assert!(
        during.0 > at.0 && during.1 > at.1,
        "no traffic was served while a node was stopped: {at:?} -> {during:?}; failures: {:?}",
        tally.errors.lock().unwrap()
    );
    progress(&tally, during, 20, "traffic flows after the stop").await;

    // The disruptions are over: every agent is owned by exactly one live node, in every
    // node's view, within 10 s.
    within(Duration::from_secs(30), "every agent owned once by a live node after the disruptions", || async {
        let mut all = true;
        for base in &bases {
            all &=
                cluster_view(&client, base, &admin).await.is_some_and(|v| each_owned_once_by_a_live_node(&v, &agents));
        }
        all
    })
    .await;

    tally.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let (reads, highest) = monitor.await.unwrap();
    assert!(reads > 0 && agents.iter().all(|a| highest.contains_key(*a)), "{reads} reads: {highest:?}");
    // The watcher's work changed hands at least twice: taken from the killed node, taken
    // from the stopped one.
    let w_epoch = epochs(&cluster_view(&setup, &bases[0], &admin).await.unwrap())["acme/w"];
    assert!(w_epoch >= w_epoch_before + 2, "the watcher's lease went from epoch {w_epoch_before} to {w_epoch}");

    // No acknowledged increment lost, through any node; none counted twice.
    let sent = tally.increments_sent.load(Ordering::SeqCst);
    let acked = tally.increments_acked.load(Ordering::SeqCst);
    for base in &bases {
        let rb = setup.post(format!("{base}/v1/agents/reader/invoke")).bearer_auth(&beta).body("get:counters/default");
        let (status, body) = answer(rb).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let value: u64 = body.parse().unwrap();
        assert!(value >= acked, "lost increments: {value} counted, {acked} acknowledged (through {base})");
        assert!(value <= sent, "more increments than requests: {value} counted, {sent} sent");
    }

    // The watcher saw every acknowledged write (at least once), first in feed order.
    let written = tally.writes_acked.lock().unwrap().clone();
    let mut last = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen: Vec<(u64, String)> = loop {
        let rb = setup.post(format!("{}/v1/agents/w/invoke", bases[0])).bearer_auth(&dev);
        if let Some((200, body)) = answer(rb).await {
            let entries: Vec<String> = serde_json::from_str(&body).unwrap();
            let seen: Vec<(u64, String)> = entries.iter().map(|e| parse_seen(e)).collect();
            let keys: HashSet<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
            if written.iter().all(|k| keys.contains(k.as_str())) {
                break seen;
            }
            last = seen;
        }
        if Instant::now() >= deadline {
            let missing: Vec<&String> = written.iter().filter(|k| !last.iter().any(|(_, s)| s == *k)).collect();
            for base in &bases {
                let rb = setup
                    .post(format!("{base}/v1/agents/writer/invoke"))
                    .bearer_auth(&dev)
                    .body(format!("get:orders/{}", missing[0]));
                eprintln!("get {} via {base}: {:?}", missing[0], answer(rb).await);
            }
            eprintln!("the watcher saw {last:?}");
            for n in &nodes {
                eprintln!("log of {} ({}):", n.name, n.base);
                for line in n.log().lines().filter(|l| !l.contains("INFO") || l.contains("lease") || l.contains("feed"))
                {
                    eprintln!("  {line}");
                }
            }
            panic!("the watcher did not see every acknowledged write within 30 s: missing {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut first: Vec<(u64, String)> = Vec::new();
    let mut known = HashSet::new();
    for (seq, key) in &seen {
        if known.insert(key.clone()) {
            first.push((*seq, key.clone()));
        }
    }
    assert!(first.windows(2).all(|w| w[0].0 < w[1].0), "first sights out of feed order: {first:?}");
    let acked_in_first_order: Vec<&String> = first.iter().map(|(_, k)| k).filter(|k| written.contains(k)).collect();
    assert_eq!(acked_in_first_order, written.iter().collect::<Vec<_>>(), "acknowledged writes seen out of order");
    assert!(
        written.len() >= 60 && acked >= 60,
        "{} writes and {acked} increments acknowledged, {} requests failed",
        written.len(),
        tally.failed.load(Ordering::SeqCst)
    );
}

/// Registry changes across processes (over the `fake-arangodb` stand-in for ArangoDB):
/// an agent deployed through node 1 is invoked through node 3 (once node 3 has compiled
/// the module: the bound, 60 s, is there only to end a broken run, not to time it), and an API key revoked through node 2 is refused on node 1
/// within the stated bound (1 s), though node 1 had it cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_and_a_revocation_through_one_node_hold_on_the_others() {
    let cluster = Cluster::start();
    let nodes = fast_nodes(&cluster, 3).await;
    let admin = cluster.token(None, "platform-admin");
    let dev = cluster.token(Some("acme"), "developer");
    let tenant_admin = cluster.token(Some("acme"), "tenant-admin");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    acme(&client, &nodes[0].base, &admin).await;
    let counter = upload(&client, &nodes[0].base, &dev, art::COUNTER).await;
    deploy(&client, &nodes[0].base, &dev, json!({"name": "c", "module": counter})).await;
    within(Duration::from_secs(60), "the deploy through node 1 is invoked through node 3", || async {
        let rb = client.post(nodes[2].url("/v1/agents/c/invoke")).bearer_auth(&dev);
        answer(rb).await.is_some_and(|(s, _)| s == 200)
    })
    .await;

    let r = client
        .post(nodes[0].url("/v1/keys"))
        .bearer_auth(&tenant_admin)
        .json(&json!({"role": "observer", "name": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key: Value = r.json().await.unwrap();
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let read = |node: &cluster::Node| {
        let rb = client.get(node.url("/v1/agents")).bearer_auth(secret);
        async move { answer(rb).await.unwrap().0 }
    };
    assert_eq!(read(&nodes[0]).await, 200, "the key works (and is cached on node 1)");
    let r = client.delete(nodes[1].url(&format!("/v1/keys/{id}"))).bearer_auth(&tenant_admin).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(read(&nodes[1]).await, 401, "refused at once on the node that revoked it");
    within(BOUND, "the revocation through node 2 reaches node 1", || async { read(&nodes[0]).await == 401 }).await;
}
