//! The cluster under faults: four full host nodes in one process, each with its own HTTP
//! listener and its own fault-injecting wrapper ([`Faulty`]) over one shared store, under
//! counter, message and watch traffic sent through every node with added store latency,
//! while one node is killed, one is paused past its lease TTL, one is partitioned and one
//! loses answers after its writes committed. What a user relies on holds throughout:
//! - no acknowledged increment is lost (the counter is at least the acknowledged count; a
//!   client's retry after a lost answer may count twice);
//! - no acknowledged message is lost (each is delivered at least once);
//! - no watched write is skipped (the watcher's first sight of events follows the feed,
//!   every event of the watched collection included);
//! - one owner per (agent, epoch) at every sample, epochs never go back (on any node, in
//!   the lease records), the watcher's cursor never goes back;
//! - every running agent is owned by one live node, at its lease's epoch, within 10 s of
//!   the last disruption;
//! - no write fenced by a lease is accepted unless it carries the lease's current epoch
//!   (an auditing store under every node's wrapper checks each one); the paused node
//!   learns it lost its leases, and a write at its old epoch is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::api::{AppState, Role};
use cortex_host::registry::Quotas;
use cortex_host::store::{
    ChangeEvent, Direction, Document, DocumentStore, Edge, EmbeddedStore, FaultControls, Faulty, FeedStore, Fence,
    Fenced, GraphStore, Latency, Page, Quota, Rate, RecordKind, RecordOp, RecordStore, Result, Scope, Store,
    StoreError, Usage, WriteOp, lease_epoch,
};
use serde_json::{Value, json};

use crate::cluster::{owners, within};
use crate::messaging::metric;
use crate::server::{DataDir, Server, config, data_dir};

/// Nodes in the cluster.
const N: usize = 4;

/// Every lease write and every fenced write that reached the shared store, checked in
/// commit order (one lock around them: the embedded store applies writes one at a time
/// anyway).
#[derive(Default)]
struct Ledger {
    /// The epoch of each lease record as last written.
    epochs: HashMap<String, u64>,
    /// Fenced writes applied.
    fenced_accepted: u64,
    /// Fenced writes refused with [`StoreError::Fenced`].
    fenced_refused: u64,
    /// What should never have happened.
    violations: Vec<String>,
}

impl Ledger {
    fn lease_written(&mut self, key: &str, value: &[u8]) {
        let epoch = lease_epoch(value);
        let was = self.epochs.insert(key.to_owned(), epoch).unwrap_or(0);
        if epoch < was {
            self.violations.push(format!("lease {key} written back from epoch {was} to {epoch}"));
        }
    }
}

/// The store every node's [`Faulty`] wraps: the shared store, with an audit of the fence.
struct Audit {
    inner: Arc<dyn Store>,
    ledger: tokio::sync::Mutex<Ledger>,
}

impl Audit {
    fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, ledger: tokio::sync::Mutex::new(Ledger::default()) }
    }
}

#[async_trait::async_trait]
impl DocumentStore for Audit {
    async fn get(&self, scope: &Scope, collection: &str, key: &str) -> Result<Option<Document>> {
        self.inner.get(scope, collection, key).await
    }
    async fn put_within(
        &self,
        scope: &Scope,
        collection: &str,
        key: &str,
        value: &str,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        self.inner.put_within(scope, collection, key, value, expected, quota).await
    }
    async fn delete(&self, scope: &Scope, collection: &str, key: &str, expected: Option<u64>) -> Result<bool> {
        self.inner.delete(scope, collection, key, expected).await
    }
    async fn list_bounded(
        &self,
        scope: &Scope,
        collection: &str,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
        max_bytes: usize,
    ) -> Result<Page> {
        self.inner.list_bounded(scope, collection, prefix, limit, cursor, max_bytes).await
    }
    async fn transact_within(&self, scope: &Scope, ops: &[WriteOp], quota: Quota) -> Result<Vec<u64>> {
        self.inner.transact_within(scope, ops, quota).await
    }
}

#[async_trait::async_trait]
impl RecordStore for Audit {
    async fn record_get(&self, kind: RecordKind, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        self.inner.record_get(kind, key).await
    }
    async fn record_put_within(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> Result<u64> {
        if kind != RecordKind::Lease {
            return self.inner.record_put_within(kind, key, value, expected, quota).await;
        }
        let mut ledger = self.ledger.lock().await;
        let out = self.inner.record_put_within(kind, key, value.clone(), expected, quota).await;
        if out.is_ok() {
            ledger.lease_written(key, &value);
        }
        out
    }
    async fn record_delete(&self, kind: RecordKind, key: &str) -> Result<bool> {
        self.inner.record_delete(kind, key).await
    }
    async fn record_delete_many(&self, kind: RecordKind, keys: &[String]) -> Result<u64> {
        self.inner.record_delete_many(kind, keys).await
    }
    async fn record_list(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.record_list(kind, prefix).await
    }
    async fn record_list_revisions(&self, kind: RecordKind, prefix: &str) -> Result<Vec<(String, Vec<u8>, u64)>> {
        self.inner.record_list_revisions(kind, prefix).await
    }
    async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> Result<(u64, Option<u64>)> {
        self.inner.audit_append(event, tenant).await
    }
    async fn audit_list(&self, tenant: Option<&str>, since: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.audit_list(tenant, since, limit).await
    }
    async fn purge_tenant_documents(&self, tenant: &str) -> Result<u64> {
        self.inner.purge_tenant_documents(tenant).await
    }
    async fn usage(&self, tenant: &str) -> Result<Usage> {
        self.inner.usage(tenant).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> Result<Vec<u64>> {
        let leases = ops.iter().any(|op| matches!(op, RecordOp::Put { kind: RecordKind::Lease, .. }));
        if fence.is_none() && !leases {
            return self.inner.record_apply(fence, ops, quota).await;
        }
        let mut ledger = self.ledger.lock().await;
        let out = self.inner.record_apply(fence, ops, quota).await;
        match &out {
            Ok(_) => {
                if let Some(f) = fence {
                    ledger.fenced_accepted += 1;
                    let held = ledger.epochs.get(&f.key).copied();
                    if held != Some(f.epoch) {
                        ledger.violations.push(format!(
                            "a write fenced by {} at epoch {} was accepted while the lease was at {held:?}",
                            f.key, f.epoch
                        ));
                    }
                }
                for op in ops {
                    if let RecordOp::Put { kind: RecordKind::Lease, key, value, .. } = op {
                        ledger.lease_written(key, value);
                    }
                }
            }
            Err(StoreError::Fenced { .. }) => ledger.fenced_refused += 1,
            Err(_) => {}
        }
        out
    }
    async fn stored_bytes(&self, tenant: &str) -> Result<u64> {
        self.inner.stored_bytes(tenant).await
    }
}

#[async_trait::async_trait]
impl FeedStore for Audit {
    async fn feed_since(&self, tenant: &str, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        self.inner.feed_since(tenant, since, limit).await
    }
    async fn feed_head(&self, tenant: &str) -> Result<u64> {
        self.inner.feed_head(tenant).await
    }
    async fn wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        self.inner.wait_for(tenant, after, timeout).await
    }
}

#[async_trait::async_trait]
impl GraphStore for Audit {
    async fn link_within(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        quota: Quota,
    ) -> Result<()> {
        self.inner.link_within(tenant, from, to, kind, attrs, quota).await
    }
    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>> {
        self.inner.edge(tenant, from, to, kind).await
    }
    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        self.inner.unlink(tenant, from, to, kind).await
    }
    async fn neighbours_bounded(
        &self,
        tenant: &str,
        agent: &str,
        kind: Option<&str>,
        direction: Direction,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Edge>> {
        self.inner.neighbours_bounded(tenant, agent, kind, direction, limit, max_bytes).await
    }
    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        self.inner.remove_agent_edges(tenant, agent).await
    }
}

/// The nodes, their faults, and the shared store underneath.
struct Faults {
    /// `None` once killed.
    nodes: Vec<Option<Server>>,
    /// Every node's state, the killed one's too (for the samples).
    states: Vec<Arc<AppState>>,
    controls: Vec<Arc<FaultControls>>,
    /// Set for a killed node: traffic no longer goes to it.
    down: Arc<Vec<AtomicBool>>,
    /// The shared store itself, without faults.
    raw: Arc<dyn Store>,
    audit: Arc<Audit>,
    _dir: DataDir,
}

impl Faults {
    async fn start(n: usize) -> Faults {
        let dir = data_dir();
        let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let audit = Arc::new(Audit::new(raw.clone()));
        let secret = dir.path().join("jwt-hs256.secret");
        let mut nodes = Vec::new();
        let mut controls = Vec::new();
        for _ in 0..n {
            let faulty = Faulty::new(audit.clone() as Arc<dyn Store>);
            controls.push(faulty.controls());
            let node_dir = data_dir();
            let mut cfg = config(node_dir.path());
            cfg.auth.secret_file = Some(secret.clone());
            cfg.cluster.heartbeat_ms = 100;
            cfg.cluster.node_ttl_ms = 1_000;
            cfg.cluster.lease_ttl_ms = 1_000;
            cfg.messaging.idle_poll_ms = 100;
            // A message whose delivery failed under a fault is retried, never parked.
            cfg.messaging.attempts = 1_000;
            cfg.messaging.backoff_ms = 20;
            cfg.messaging.max_backoff_ms = 200;
            nodes.push(Some(Server::start_on(node_dir, cfg, Some(Arc::new(faulty))).await));
        }
        let states = nodes.iter().flatten().map(|s| s.state.clone()).collect();
        let down = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        Faults { nodes, states, controls, down, raw, audit, _dir: dir }
    }

    /// The live nodes with their indices.
    fn live(&self) -> Vec<(usize, &Server)> {
        self.nodes.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s))).collect()
    }

    fn any(&self) -> &Server {
        self.live()[0].1
    }

    /// The node holding `agent`'s lease as the store has it (owner and epoch agree), with
    /// the epoch.
    async fn holder(&self, agent: &str) -> Option<(usize, u64)> {
        let (bytes, _) = self.raw.record_get(RecordKind::Lease, agent).await.unwrap()?;
        let lease: Value = serde_json::from_slice(&bytes).unwrap();
        let epoch = lease["epoch"].as_u64()?;
        self.live().into_iter().find_map(|(i, s)| {
            (s.state.agents.cluster().id() == lease["owner"]
                && s.state.agents.owned().contains(&(agent.to_owned(), epoch)))
            .then_some((i, epoch))
        })
    }

    /// Every agent of `want` held by exactly one live node, the one its lease names, at
    /// the lease's epoch.
    async fn settled(&self, want: &HashSet<String>) -> bool {
        let live = self.live();
        let servers: Vec<&Server> = live.iter().map(|(_, s)| *s).collect();
        let o = owners(&servers);
        if o.keys().cloned().collect::<HashSet<_>>() != *want || o.values().any(|v| v.len() != 1) {
            return false;
        }
        for agent in want {
            if self.holder(agent).await.is_none() {
                return false;
            }
        }
        true
    }

    /// Kill node `i` (its listener and its background work stop, nothing is handed back;
    /// its store is cut off so that nothing left of it writes).
    async fn kill(&mut self, i: usize) {
        self.down[i].store(true, Ordering::SeqCst);
        let s = self.nodes[i].take().unwrap();
        s.crash().await;
        self.controls[i].partition();
    }
}

/// Traffic through every live node, round robin, until stopped.
#[derive(Clone)]
struct Traffic {
    bases: Arc<Vec<String>>,
    down: Arc<Vec<AtomicBool>>,
    token: String,
    stop: Arc<AtomicBool>,
    client: reqwest::Client,
}

impl Traffic {
    /// The `i`-th live node's address, round robin.
    fn base(&self, i: usize) -> &str {
        let n = self.bases.len();
        (0..n).map(|d| (i + d) % n).find(|j| !self.down[*j].load(Ordering::SeqCst)).map_or("", |j| &self.bases[j])
    }

    /// Invoke `agent` through the `i`-th node: the body of a 200, else `None`.
    async fn invoke(&self, i: usize, agent: &str, input: String) -> Option<String> {
        let url = format!("{}/v1/agents/{agent}/invoke", self.base(i));
        let r = self.client.post(url).bearer_auth(&self.token).body(input).send().await.ok()?;
        if r.status() != reqwest::StatusCode::OK {
            return None;
        }
        r.text().await.ok()
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Pace a loop after a refusal (a partitioned node refuses at once).
    async fn refused() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    /// Increment the counter; after a failure, retry once through the next node (the
    /// failed one may have counted). Returns the acknowledged increments.
    fn counter(self, acked: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut i = 0;
            while self.running() {
                i += 1;
                let ok = |b: Option<String>| b.is_some_and(|b| b.parse::<u64>().is_ok());
                if ok(self.invoke(i, "c", String::new()).await) || ok(self.invoke(i + 1, "c", String::new()).await) {
                    acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    Self::refused().await;
                }
            }
        })
    }

    /// `sender` sends `m<i>` to `b`; the bodies whose send was acknowledged.
    fn messages(self, acked: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut i = 0;
            while self.running() {
                i += 1;
                let body = format!("m{i}");
                if self.invoke(i, "sender", format!("send:b:{body}")).await.as_deref() == Some("sent") {
                    acked.lock().unwrap().push(body);
                } else {
                    Self::refused().await;
                }
            }
        })
    }

    /// `writer` puts `orders/k<i>`; the documents whose write was acknowledged.
    fn writes(self, acked: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut i = 0;
            while self.running() {
                i += 1;
                let put = format!(r#"put:orders/k{i}={{"i":{i}}}"#);
                if self.invoke(i, "writer", put).await.is_some_and(|b| b.parse::<u64>().is_ok()) {
                    acked.lock().unwrap().push(format!("orders/k{i}"));
                } else {
                    Self::refused().await;
                }
            }
        })
    }
}

/// Sample, until stopped, every node's leases (`owned()`), the lease records and the
/// watcher's cursor: what breaks "one owner per (agent, epoch)" or goes back.
fn sampler(
    states: Vec<Arc<AppState>>,
    raw: Arc<dyn Store>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut bad = Vec::new();
        let mut samples = 0u64;
        let mut node_epochs: HashMap<(String, usize), u64> = HashMap::new();
        let mut lease_epochs: HashMap<String, u64> = HashMap::new();
        let mut cursor = 0u64;
        while !stop.load(Ordering::SeqCst) {
            samples += 1;
            let mut by_agent: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
            for (i, s) in states.iter().enumerate() {
                for (agent, epoch) in s.agents.owned() {
                    let was = node_epochs.insert((agent.clone(), i), epoch).unwrap_or(0);
                    if epoch < was {
                        bad.push(format!("node {i} holds {agent} at epoch {epoch} after {was}"));
                    }
                    by_agent.entry(agent).or_default().push((i, epoch));
                }
            }
            for (agent, holders) in &by_agent {
                let epochs: HashSet<u64> = holders.iter().map(|(_, e)| *e).collect();
                if epochs.len() != holders.len() {
                    bad.push(format!("{agent} held twice at one epoch: {holders:?}"));
                }
            }
            for (key, bytes, _) in raw.record_list_revisions(RecordKind::Lease, "").await.unwrap() {
                let epoch = lease_epoch(&bytes);
                let was = lease_epochs.insert(key.clone(), epoch).unwrap_or(0);
                if epoch < was {
                    bad.push(format!("the lease of {key} went back from epoch {was} to {epoch}"));
                }
            }
            if let Some((bytes, _)) = raw.record_get(RecordKind::Cursor, "acme/w").await.unwrap() {
                let seq = cursor_seq(&bytes);
                if seq < cursor {
                    bad.push(format!("the watcher's cursor went back from {cursor} to {seq}"));
                }
                cursor = cursor.max(seq);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (samples, bad)
    })
}

/// The position of a cursor record.
fn cursor_seq(bytes: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(bytes).unwrap()["seq"].as_u64().unwrap()
}

/// The watcher plugin's entries (`SEQ:COLL/KEY@REV`) as (seq, doc).
fn seen(text: &str) -> Vec<(u64, String)> {
    let entries: Vec<String> = serde_json::from_str(text).unwrap();
    entries
        .iter()
        .map(|e| {
            let (seq, rest) = e.split_once(':').unwrap();
            let doc = rest.rsplit_once('@').unwrap().0;
            (seq.parse().unwrap(), doc.to_owned())
        })
        .collect()
}

/// Each event's first sight, in the order seen.
fn first_sights(seen: &[(u64, String)]) -> Vec<(u64, String)> {
    let mut got = HashSet::new();
    seen.iter().filter(|(seq, _)| got.insert(*seq)).cloned().collect()
}

/// Every event of `collection` in `tenant`'s feed, in feed order.
async fn feed_of(store: &dyn Store, tenant: &str, collection: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let page = store.feed_since(tenant, since, 1_000).await.unwrap();
        let Some(last) = page.last().map(|e| e.seq) else { return out };
        out.extend(
            page.into_iter()
                .filter(|e| e.collection == collection)
                .map(|e| (e.seq, format!("{}/{}", e.collection, e.key))),
        );
        since = last;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_work_survives_kills_pauses_partitions_and_lost_answers() {
    let mut c = Faults::start(N).await;
    let n0 = c.any();
    let quotas =
        Quotas { invocations_per_second: 100_000, burst: 100_000, concurrent_invocations: 1_000, ..Quotas::default() };
    n0.tenant_with("acme", Some(quotas)).await;
    let dev = n0.token(Some("acme"), Role::Developer);
    let counter = n0.upload(&dev, art::COUNTER).await;
    let messenger = n0.upload(&dev, art::MESSENGER).await;
    let kv = n0.upload(&dev, art::KV).await;
    let watcher = n0.upload(&dev, art::WATCHER).await;
    n0.deploy(&dev, "c", &counter, json!({})).await;
    n0.deploy(&dev, "sender", &messenger, json!({})).await;
    n0.deploy(&dev, "b", &messenger, json!({})).await;
    n0.deploy(&dev, "writer", &kv, json!({})).await;
    n0.deploy_with(&dev, "w", &watcher, json!({"watches": [{"collection": "orders"}]})).await;
    // More leases, so that every node owns some work.
    for i in 0..4 {
        n0.deploy(&dev, &format!("p{i}"), &counter, json!({})).await;
    }
    let want: HashSet<String> =
        ["c", "sender", "b", "writer", "w", "p0", "p1", "p2", "p3"].iter().map(|a| format!("acme/{a}")).collect();
    within(Duration::from_secs(30), "every agent owned once", || c.settled(&want)).await;
    // The watcher's cursor is in place (at the feed head of its start) before any write.
    within(Duration::from_secs(10), "the watcher's cursor", || async {
        c.raw.record_get(RecordKind::Cursor, "acme/w").await.unwrap().is_some()
    })
    .await;
    // Every node has every agent (the deploys reached them through the registry stream).
    for (_, s) in c.live() {
        within(Duration::from_secs(30), "every agent installed on every node", || async {
            want.iter().all(|k| {
                let (t, a) = k.split_once('/').unwrap();
                s.state.agents.get(t, a).is_some()
            })
        })
        .await;
    }

    // Traffic through every node, with store latency on every node.
    for (i, f) in c.controls.iter().enumerate() {
        f.set_plan(cortex_host::store::FaultPlan {
            latency: Some(Latency::range(Duration::from_millis(1), Duration::from_millis(4))),
            seed: i as u64 + 1,
            ..Default::default()
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Traffic {
        bases: Arc::new(c.nodes.iter().flatten().map(|s| s.base.clone()).collect()),
        down: c.down.clone(),
        token: dev.clone(),
        stop: stop.clone(),
        client: reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap(),
    };
    let increments = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let written = Arc::new(Mutex::new(Vec::new()));
    let tasks = vec![
        traffic.clone().counter(increments.clone()),
        traffic.clone().messages(sent.clone()),
        traffic.clone().writes(written.clone()),
    ];
    let sampling = Arc::new(AtomicBool::new(false));
    let samples = sampler(c.states.clone(), c.raw.clone(), sampling.clone());
    let progress = |min: usize| {
        let (increments, sent, written) = (increments.clone(), sent.clone(), written.clone());
        move || {
            let ok = increments.load(Ordering::SeqCst) as usize >= min
                && sent.lock().unwrap().len() >= min
                && written.lock().unwrap().len() >= min;
            async move { ok }
        }
    };
    within(Duration::from_secs(30), "traffic flows", progress(10)).await;

    // 1. Kill the node running `b`'s mailbox: its leases expire and move.
    let (killed, _) = c.holder("acme/b").await.unwrap();
    c.kill(killed).await;
    within(Duration::from_secs(10), "the killed node's work owned again", || c.settled(&want)).await;

    // 2. Pause the store of the node running the watcher, until another node took its
    // lease (past the lease TTL), then resume it.
    let (paused, old_epoch) = c.holder("acme/w").await.unwrap();
    let before = (
        metric(c.nodes[paused].as_ref().unwrap(), r#"cortex_lease_events_total{event="lost"}"#).await,
        metric(c.nodes[paused].as_ref().unwrap(), r#"cortex_lease_events_total{event="expired"}"#).await,
    );
    c.controls[paused].pause();
    within(Duration::from_secs(10), "another node takes the paused node's watcher", || async {
        c.holder("acme/w").await.is_some_and(|(i, e)| i != paused && e > old_epoch)
    })
    .await;
    c.controls[paused].resume();
    let p = c.nodes[paused].as_ref().unwrap();
    // The resumed node learns it lost the lease: it stops the watcher at the old epoch.
    within(Duration::from_secs(10), "the resumed node drops its stale lease", || async {
        !p.state.agents.owned().contains(&("acme/w".to_owned(), old_epoch))
    })
    .await;
    let after = (
        metric(p, r#"cortex_lease_events_total{event="lost"}"#).await,
        metric(p, r#"cortex_lease_events_total{event="expired"}"#).await,
    );
    assert!(after.0 + after.1 > before.0 + before.1, "the paused node counted no lease lost: {before:?} {after:?}");
    // Whatever the resumed node still had in flight, a cursor write at its old epoch (as
    // its watcher would make it) is refused, and moves nothing.
    let cursor = c.raw.record_get(RecordKind::Cursor, "acme/w").await.unwrap().unwrap();
    let stale = Fenced::new(c.audit.clone(), Fence { key: "acme/w".into(), epoch: old_epoch });
    let e = stale.record_put(RecordKind::Cursor, "acme/w", br#"{"seq":0,"updated_ms":0}"#.to_vec(), None).await;
    assert!(matches!(e, Err(StoreError::Fenced { held, .. }) if held > old_epoch), "{e:?}");
    let now = c.raw.record_get(RecordKind::Cursor, "acme/w").await.unwrap().unwrap();
    assert!(now.1 >= cursor.1 && cursor_seq(&now.0) >= cursor_seq(&cursor.0), "the stale write moved the cursor");
    within(Duration::from_secs(10), "settled after the pause", || c.settled(&want)).await;

    // 3. Partition a node (the one running `b`'s mailbox if it is neither the paused one
    // nor the watcher's: the watcher's batches are parked after three failed deliveries),
    // until its work moved elsewhere, then heal.
    let watching = c.holder("acme/w").await.unwrap().0;
    let mailbox = c.holder("acme/b").await.unwrap().0;
    let others: Vec<usize> = c.live().iter().map(|(i, _)| *i).filter(|i| *i != watching).collect();
    let cut = if others.contains(&mailbox) && mailbox != paused {
        mailbox
    } else {
        others.iter().copied().find(|i| *i != paused).unwrap_or(others[0])
    };
    c.controls[cut].partition();
    within(Duration::from_secs(10), "the partitioned node's work owned elsewhere", || async {
        let mut moved = true;
        for k in &want {
            moved &= c.holder(k).await.is_some_and(|(i, _)| i != cut);
        }
        moved
    })
    .await;
    c.controls[cut].heal();
    within(Duration::from_secs(10), "settled after the partition", || c.settled(&want)).await;

    // 4. Answers lost after commit on a node that runs neither the watcher nor `b` (it
    // keeps serving counter traffic: an increment may count without being acknowledged).
    let busy: Vec<usize> =
        [c.holder("acme/w").await.unwrap().0, c.holder("acme/b").await.unwrap().0].into_iter().collect();
    let lossy = c.live().iter().map(|(i, _)| *i).find(|i| !busy.contains(i)).unwrap();
    c.controls[lossy].set_drop_after_commit(Rate::Every(4));
    within(Duration::from_secs(10), "answers lost after commit", || async {
        c.controls[lossy].dropped_after_commit() >= 8
    })
    .await;
    c.controls[lossy].set_drop_after_commit(Rate::Never);

    // The disruptions are over: every running agent is owned by one live node within 10 s.
    within(Duration::from_secs(10), "every agent owned by a live node after the disruptions", || c.settled(&want))
        .await;
    let done = (increments.load(Ordering::SeqCst) as usize, sent.lock().unwrap().len(), written.lock().unwrap().len());
    within(Duration::from_secs(30), "more traffic after the disruptions", progress(done.0.min(done.1).min(done.2) + 5))
        .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    // No acknowledged increment lost (a retried one may have counted twice).
    let acked = increments.load(Ordering::SeqCst);
    for (_, s) in c.live() {
        let value: u64 = s.invoke_ok(&dev, "c", "").await.parse().unwrap();
        assert!(value > acked, "the counter reads {value} after {acked} acknowledged increments");
    }
    let stored = c.raw.get(&Scope::new("acme", "c"), "counters", "default").await.unwrap().unwrap();
    let stored: u64 = stored.value.parse().unwrap();
    assert!(stored >= acked + c.live().len() as u64, "{stored} after {acked} acknowledged increments");

    // No acknowledged message lost: each delivered at least once.
    let sent = sent.lock().unwrap().clone();
    within(Duration::from_secs(20), "every acknowledged message delivered", || async {
        let text = c.any().invoke_ok(&dev, "b", "inbox").await;
        let got: HashSet<String> = serde_json::from_str::<Vec<String>>(&text).unwrap().into_iter().collect();
        sent.iter().all(|m| got.contains(m))
    })
    .await;

    // No watched write skipped: first sights follow the feed, every event of it.
    let written = written.lock().unwrap().clone();
    let feed = feed_of(c.raw.as_ref(), "acme", "orders").await;
    let docs: HashSet<&String> = feed.iter().map(|(_, d)| d).collect();
    assert!(written.iter().all(|d| docs.contains(d)), "an acknowledged write is not in the feed");
    within(Duration::from_secs(20), "every watched write seen", || async {
        first_sights(&seen(&c.any().invoke_ok(&dev, "w", "").await)).len() >= feed.len()
    })
    .await;
    let first = first_sights(&seen(&c.any().invoke_ok(&dev, "w", "").await));
    assert_eq!(first, feed, "the watcher's first sights are not the feed");

    // One owner per (agent, epoch), no epoch or cursor back, no stale fenced write.
    sampling.store(true, Ordering::SeqCst);
    let (n, bad) = samples.await.unwrap();
    assert!(n > 100, "{n} samples");
    assert!(bad.is_empty(), "{bad:#?}");
    let ledger = c.audit.ledger.lock().await;
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert!(ledger.fenced_accepted > 0 && ledger.fenced_refused > 0);
    eprintln!(
        "acknowledged: {acked} increments (counter at {stored}), {} messages, {} watched writes; fenced writes: {} \
         accepted, {} refused; answers lost after commit: {}; ownership samples: {n}",
        sent.len(),
        written.len(),
        ledger.fenced_accepted,
        ledger.fenced_refused,
        c.controls[lossy].dropped_after_commit(),
    );
}
