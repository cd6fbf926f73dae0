//! Several host nodes, one platform: membership, ownership of background work, and the
//! registry change stream every node follows.
//!
//! - **Membership** ([`Cluster::heartbeat`]): each node keeps a [`NodeRecord`] in the store
//!   and rewrites it every `heartbeat_ms`. A node whose record has not changed for
//!   `node_ttl_ms`, judged on the observer's own monotonic clock, is dead to it.
//! - **Ownership**: the background work of an agent (its change-feed cursor, its mailbox) is
//!   owned by one live node at a time through a [`LeaseRecord`] `{owner, epoch, renewed_ms}`
//!   keyed `tenant/agent`, taken and renewed by compare-and-swap. Owners are spread by
//!   rendezvous hashing ([`rendezvous`]) over the live nodes. A lease is expired for a
//!   contender when its record has not changed for `lease_ttl_ms` on the contender's own
//!   clock; taking it bumps the epoch, and the owner's writes for that work are fenced by
//!   the epoch ([`crate::store::Fenced`]). The lease loop lives with the agents
//!   (`agents/ownership.rs`).
//! - **Registry stream** ([`follow`]): every write of a replicated record (tenants, modules,
//!   agents, keys, profiles, registry credentials) appends an event to the store's
//!   `~registry` feed in the same atomic step; each node applies them (installs, upgrades,
//!   uninstalls agents; forgets cached tenants and keys).

pub mod follow;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::registry::now_ms;
use crate::store::{self, RecordKind, Store, StoreError};

/// `[cluster]`: how this node finds and is found by the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id (`[a-z0-9-]`, at most 63 bytes); empty: the one kept in
    /// `DATA/node-id`, made at the first start.
    pub node_id: String,
    /// The address others reach this node's API at (shown by `GET /v1/cluster`); empty:
    /// the listen address.
    pub advertise: String,
    /// How often the node rewrites its membership record and renews its leases.
    pub heartbeat_ms: u64,
    /// A node whose membership record has not changed for this long is dead to the others.
    pub node_ttl_ms: u64,
    /// A lease whose record has not changed for this long may be taken by another node.
    pub lease_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            advertise: String::new(),
            heartbeat_ms: 1_000,
            node_ttl_ms: 5_000,
            lease_ttl_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    /// Check the durations and the node id.
    pub fn check(&self) -> Result<(), String> {
        if !self.node_id.is_empty() && !valid_node_id(&self.node_id) {
            return Err(format!("cluster.node_id {:?} must match [a-z0-9-]{{1,63}}", self.node_id));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms > 60_000 {
            return Err("cluster.heartbeat_ms must be 1..=60000".into());
        }
        if self.node_ttl_ms < 2 * self.heartbeat_ms || self.lease_ttl_ms < 2 * self.heartbeat_ms {
            return Err("cluster.node_ttl_ms and cluster.lease_ttl_ms must be at least twice heartbeat_ms".into());
        }
        Ok(())
    }
}

/// Whether `id` may name a node.
pub fn valid_node_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A node's load at its last heartbeat: what an autoscaler reads from `GET /v1/cluster`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeLoad {
    /// Invocations running in the node's agent pools.
    pub in_flight: u64,
    /// Invocations waiting for a slot in the node's agent pools.
    pub queued: u64,
    /// Messages waiting in the mailboxes of the agents whose work the node owns.
    pub mailbox: u64,
    /// Seconds spent inside guest invocations (wall time) per second, over the last
    /// heartbeat interval: 1.0 is one core's worth of wasm running all the time.
    pub wasm_seconds_per_second: f64,
}

/// A node's membership record, keyed by its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRecord {
    /// Its id.
    pub id: String,
    /// Where its API is reached.
    pub address: String,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// Its version (`cortex --version`).
    pub version: String,
    /// When it last wrote this record (ms since the epoch, its own clock).
    pub heartbeat_ms: u64,
    /// How many agents' background work it owned then.
    #[serde(default)]
    pub owns: u64,
    /// Its load then (absent in records of older versions: zero).
    #[serde(default)]
    pub load: NodeLoad,
}

/// The lease of an agent's background work, keyed `tenant/agent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseRecord {
    /// The owning node's id; empty: handed back (any node may take it at once).
    pub owner: String,
    /// Bumped by every change of owner; never goes back.
    pub epoch: u64,
    /// When the owner last renewed it (ms since the epoch, the owner's clock; for people:
    /// expiry is judged on each contender's own clock).
    pub renewed_ms: u64,
}

/// What this node knows of another.
#[derive(Debug)]
struct Peer {
    record: NodeRecord,
    /// The record's revision, and when this node first saw it.
    rev: u64,
    since: Instant,
    live: bool,
}

/// This node's place in the cluster.
#[derive(Debug)]
pub struct Cluster {
    id: String,
    address: String,
    started_ms: u64,
    config: ClusterConfig,
    peers: Mutex<HashMap<String, Peer>>,
    /// Leases of other nodes as last seen: revision and when first seen at it.
    seen: Mutex<HashMap<String, (u64, Instant)>>,
    /// The registry stream position applied.
    applied: AtomicU64,
    /// Whether the registry stream was read to its head once since start.
    caught_up: AtomicBool,
    /// Whether the node is leaving (SIGTERM): it takes no lease any more.
    leaving: AtomicBool,
    /// How many leases it holds (for its record).
    owns: AtomicU64,
    /// Set when the node leaves; dropped with the node: ends the registry follower.
    stop: tokio::sync::watch::Sender<bool>,
    /// Microseconds spent inside guest invocations since start.
    wasm_micros: AtomicU64,
    /// The load for the next record, and the wasm time counter at the previous record.
    load: Mutex<(NodeLoad, Option<(u64, Instant)>)>,
}

impl Cluster {
    /// This node, `id` reached at `address`.
    pub fn new(id: String, address: String, config: ClusterConfig) -> Self {
        Self {
            id,
            address,
            started_ms: now_ms(),
            config,
            peers: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            applied: AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            owns: AtomicU64::new(0),
            stop: tokio::sync::watch::Sender::new(false),
            wasm_micros: AtomicU64::new(0),
            load: Mutex::new((NodeLoad::default(), None)),
        }
    }

    /// Count `d` spent inside a guest invocation (for the load in the node's record).
    pub fn add_wasm_time(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.wasm_micros.fetch_add(us, Ordering::Relaxed);
    }

    /// Set the pools' and mailboxes' load for the next record (the wasm time rate is
    /// computed when the record is written).
    pub fn set_load(&self, in_flight: u64, queued: u64, mailbox: u64) {
        let mut l = self.load.lock().unwrap_or_else(PoisonError::into_inner);
        l.0.in_flight = in_flight;
        l.0.queued = queued;
        l.0.mailbox = mailbox;
    }

    /// The load for a record written now: the wasm time rate since the previous one.
    fn load_now(&self) -> NodeLoad {
        let mut l = self.load.lock().unwrap_or_else(PoisonError::into_inner);
        let total = self.wasm_micros.load(Ordering::Relaxed);
        let now = Instant::now();
        if let Some((prev, at)) = l.1 {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                l.0.wasm_seconds_per_second = total.saturating_sub(prev) as f64 / 1e6 / secs;
            }
        }
        l.1 = Some((total, now));
        l.0.clone()
    }

    /// Resolves once the node leaves or is dropped (for its background loops).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// The node id from the configuration, or kept in `dir/node-id` (made at the first start).
    pub fn node_id(config: &ClusterConfig, dir: &std::path::Path) -> std::io::Result<String> {
        if !config.node_id.is_empty() {
            return Ok(config.node_id.clone());
        }
        let path = dir.join("node-id");
        match std::fs::read_to_string(&path) {
            Ok(s) if valid_node_id(s.trim()) => {
                // Kept owner-only like everything in the data dir (an older one may be open).
                crate::fsutil::ensure_private_file(&path)?;
                return Ok(s.trim().to_owned());
            }
            Ok(_) => tracing::warn!(path = %path.display(), "unreadable node id; making a new one"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let id = format!("node-{}", crate::secrets::hex(&crate::secrets::random_bytes::<6>()?));
        crate::secrets::write_private(&path, id.as_bytes())?;
        Ok(id)
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// How often to beat and renew.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_ms)
    }

    /// Lease time-to-live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms)
    }

    /// The ids of the live nodes, this one always among them (unless leaving), sorted.
    pub fn live(&self) -> Vec<String> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<String> = peers.values().filter(|p| p.live).map(|p| p.record.id.clone()).collect();
        if !self.is_leaving() && !ids.contains(&self.id) {
            ids.push(self.id.clone());
        }
        if self.is_leaving() {
            ids.retain(|i| *i != self.id);
        }
        ids.sort();
        ids
    }

    /// Every node this one knows of, with whether it is live.
    pub fn nodes(&self) -> Vec<(NodeRecord, bool)> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(NodeRecord, bool)> = peers.values().map(|p| (p.record.clone(), p.live)).collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    /// Write this node's record and read every node's: returns the live ids.
    pub async fn beat(&self, store: &dyn Store) -> store::Result<Vec<String>> {
        if !self.is_leaving() {
            let me = NodeRecord {
                id: self.id.clone(),
                address: self.address.clone(),
                started_ms: self.started_ms,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                heartbeat_ms: now_ms(),
                owns: self.owns.load(Ordering::Relaxed),
                load: self.load_now(),
            };
            let bytes = serde_json::to_vec(&me).map_err(|e| StoreError::Corrupted(e.to_string()))?;
            store.record_put(RecordKind::Node, &self.id, bytes, None).await?;
        }
        let rows = store.record_list_revisions(RecordKind::Node, "").await?;
        let ttl = Duration::from_millis(self.config.node_ttl_ms);
        let now = Instant::now();
        let wall = now_ms();
        let mut stale = Vec::new();
        {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            let mut present = std::collections::HashSet::new();
            for (key, bytes, rev) in rows {
                let Ok(record) = serde_json::from_slice::<NodeRecord>(&bytes) else {
                    tracing::warn!(node = %key, "unreadable membership record skipped");
                    continue;
                };
                present.insert(key.clone());
                let age_ms = wall.saturating_sub(record.heartbeat_ms);
                match peers.get_mut(&key) {
                    Some(p) if p.rev == rev => {
                        p.live = key == self.id || now.duration_since(p.since) < ttl;
                    }
                    Some(p) => {
                        p.rev = rev;
                        p.since = now;
                        p.record = record;
                        p.live = true;
                    }
                    None => {
                        // First sight: judged by its own clock's heartbeat, once.
                        let live = key == self.id || age_ms < self.config.node_ttl_ms;
                        peers.insert(key.clone(), Peer { record, rev, since: now, live });
                    }
                }
                // Long dead: forget its record (an hour of heartbeats missed).
                if key != self.id && age_ms > self.config.node_ttl_ms.saturating_mul(720) {
                    stale.push(key);
                }
            }
            peers.retain(|k, _| present.contains(k));
        }
        if !stale.is_empty() {
            let _ = store.record_delete_many(RecordKind::Node, &stale).await;
        }
        Ok(self.live())
    }

    /// Whether a lease of another node, at revision `rev`, has not changed for the lease
    /// TTL on this node's clock (the first sight of a revision starts its clock).
    pub fn lease_expired(&self, key: &str, rev: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match seen.get(key) {
            Some((r, since)) if *r == rev => now.duration_since(*since) >= self.lease_ttl(),
            _ => {
                seen.insert(key.to_owned(), (rev, now));
                false
            }
        }
    }

    /// Forget what was seen of leases no longer in the store.
    pub fn forget_leases_except(&self, keep: &std::collections::HashSet<&str>) {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| keep.contains(k.as_str()));
    }

    /// Record how many leases this node holds.
    pub fn set_owned(&self, n: usize) {
        self.owns.store(n as u64, Ordering::Relaxed);
    }

    /// The registry stream position applied so far.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Whether the node has read the registry stream to its head since it started.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    pub(crate) fn set_applied(&self, seq: u64, caught_up: bool) {
        self.applied.store(seq, Ordering::Release);
        if caught_up {
            self.caught_up.store(true, Ordering::Release);
        }
    }

    /// Start leaving: take no more leases, drop out of the live set.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }

    /// Whether the node is leaving.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Remove this node's membership record (at shutdown, after its leases were handed back).
    pub async fn remove(&self, store: &dyn Store) -> store::Result<()> {
        store.record_delete(RecordKind::Node, &self.id).await.map(|_| ())
    }
}

/// The node among `nodes` that owns `key`: the highest hash of (node, key). Every node
/// with the same view picks the same owner, and a node joining or leaving moves only the
/// keys it wins or held.
pub fn rendezvous<'a>(key: &str, nodes: &'a [String]) -> Option<&'a str> {
    nodes
        .iter()
        .max_by_key(|n| {
            use sha2::Digest;
            let h = sha2::Sha256::digest(format!("{n}\u{0}{key}").as_bytes());
            u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_those_of_a_leaving_node() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        let mut per = HashMap::new();
        for i in 0..300 {
            let k = format!("t/agent-{i}");
            let owner = rendezvous(&k, &three).unwrap();
            *per.entry(owner).or_insert(0) += 1;
            if owner != "b" {
                assert_eq!(rendezvous(&k, &two), Some(owner), "{k} moved though its owner stayed");
            }
        }
        assert!(per.values().all(|n| *n > 60), "{per:?}");
        assert_eq!(rendezvous("k", &[]), None);
    }

    #[test]
    fn node_ids_and_durations_are_checked() {
        assert!(valid_node_id("node-1a") && !valid_node_id("Node") && !valid_node_id("") && !valid_node_id("a/b"));
        assert!(ClusterConfig::default().check().is_ok());
        let c = ClusterConfig { lease_ttl_ms: 1_500, ..ClusterConfig::default() };
        assert!(c.check().is_err());
    }
}
