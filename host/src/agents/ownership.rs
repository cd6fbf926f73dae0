//! Which node runs each agent's background work (its change-feed watcher, its mailbox):
//! the lease loop. Every heartbeat the node rewrites its membership record and, for each
//! running agent it knows:
//! - it renews the leases it holds and should hold (one compare-and-swap transaction for
//!   all of them, from the revisions it keeps in memory: a lease written by anyone else
//!   meanwhile fails it, and is lost);
//! - it hands back (owner emptied, same epoch) a lease rendezvous hashing now gives to
//!   another live node, after stopping the work;
//! - it takes (epoch + 1) a lease it should hold that is missing, handed back, or expired
//!   on its own clock (reading just those leases);
//! - it stops the work of a lease it lost (another epoch in the store, or not renewed
//!   within the TTL on its own clock).
//!
//! So a heartbeat reads and writes only this node's leases, whatever the number of agents.
//! Every lease is read in a full round: the first, one whenever the live nodes change,
//! and otherwise one per lease TTL. A full round also finds leased work other than
//! agents' (a dead node's workflow engines) and checks each held lease against the store.
//!
//! The work runs on a store fenced by the lease ([`crate::store::Fenced`]): a former owner
//! that wakes up after another took the lease cannot move a cursor, remove a message or
//! park a dead letter.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use super::Agents;
use super::deployed::key;
use super::error::AgentsResult;
use crate::cluster::{LeaseRecord, rendezvous};
use crate::coordination::{self, Host};
use crate::registry::{AgentRecord, now_ms, scoped};
use crate::store::{Fence, Quota, RecordKind, RecordOp, StoreError};

/// A lease this node holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    epoch: u64,
    rev: u64,
    renewed: Instant,
}

/// When the lease loop last read every lease, and the live nodes it saw then.
#[derive(Debug, Default)]
pub(super) struct Scan {
    at: Option<Instant>,
    live: Vec<String>,
}

/// The epoch and expected revision to take a lease at once with, when it is free: missing
/// (epoch 1), handed back, or held by `me` (a former run of this node).
fn free(found: Option<(&LeaseRecord, u64)>, me: &str) -> Option<(u64, u64)> {
    match found {
        None => Some((1, 0)),
        Some((l, rev)) if l.owner.is_empty() || l.owner == me => Some((l.epoch + 1, rev)),
        Some(_) => None,
    }
}

/// Background work other than an agent's that the lease loop places on one node, keyed like
/// a lease (`tenant/~name`: `~` is never in an agent's name): e.g. a tenant's workflow
/// engine. A key is wanted while its lease record exists (the work writes it, with an
/// empty owner, when it first has something to do).
#[async_trait::async_trait]
pub trait LeasedWork: Send + Sync {
    /// Whether `key` names work of this kind.
    fn is_work(&self, key: &str) -> bool;
    /// Start the work of `key` under `fence` (nothing if it runs already).
    fn start(&self, key: &str, fence: Fence);
    /// Stop the work of `key` and wait until it stopped.
    async fn stop(&self, key: &str);
    /// Stop every piece of work at once, as a crash would.
    async fn stop_all(&self);
}

fn encode(l: &LeaseRecord) -> Vec<u8> {
    serde_json::to_vec(l).unwrap_or_default()
}

impl Agents {
    /// This node's place in the cluster.
    pub fn cluster(&self) -> &Arc<crate::cluster::Cluster> {
        &self.cluster
    }

    /// Place `work` under the lease loop (once).
    pub fn set_leased_work(&self, work: std::sync::Weak<dyn LeasedWork>) {
        let _ = self.work.set(work);
    }

    fn leased_work(&self) -> Option<Arc<dyn LeasedWork>> {
        self.work.get().and_then(std::sync::Weak::upgrade)
    }

    fn is_leased_work(&self, k: &str) -> bool {
        self.leased_work().is_some_and(|w| w.is_work(k))
    }

    /// Take the lease of leased work `k` now if this node should own it and it is free, or
    /// start the work if this node holds it already: new work starts at once instead of at
    /// the next round of the lease loop.
    pub async fn claim_work(self: &Arc<Self>, k: &str) {
        if self.fence_of(k).is_some() {
            self.ensure_work(k);
            return;
        }
        if self.cluster.is_leaving() || rendezvous(k, &self.cluster.live()) != Some(self.cluster.id()) {
            return;
        }
        let found = match self.registry.store().record_get(RecordKind::Lease, k).await {
            Ok(Some((bytes, rev))) => match serde_json::from_slice::<LeaseRecord>(&bytes) {
                Ok(l) => Some((l, rev)),
                Err(_) => return,
            },
            Ok(None) => None,
            Err(_) => return,
        };
        if let Some((epoch, expected)) = free(found.as_ref().map(|(l, rev)| (l, *rev)), self.cluster.id()) {
            self.take(k, epoch, expected).await;
        }
    }

    /// The fence of the agent's work when this node owns it.
    pub(super) fn fence_of(&self, k: &str) -> Option<Fence> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(k).map(|h| Fence { key: k.to_owned(), epoch: h.epoch })
    }

    /// The agents whose work this node owns, as `tenant/agent`, with their epochs.
    pub fn owned(&self) -> Vec<(String, u64)> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<(String, u64)> = held.iter().map(|(k, h)| (k.clone(), h.epoch)).collect();
        v.sort();
        v
    }

    /// Bring agent `tenant/name` in line with its record in the store (a change another
    /// node made, from the registry stream): install, reinstall or remove it here.
    pub async fn refresh(self: &Arc<Self>, tenant: &str, name: &str) -> AgentsResult<()> {
        match self.registry.get::<AgentRecord>(RecordKind::Agent, &scoped(tenant, name)).await? {
            None => {
                if self.get(tenant, name).is_some() {
                    self.uninstall(tenant, name).await;
                    // Handed back, not left to expire: a new agent of the name starts at once.
                    self.release(&key(tenant, name)).await;
                }
            }
            Some((rec, rev)) => {
                let current = self.get(tenant, name);
                if current.as_ref().is_some_and(|d| d.revision >= rev) {
                    return Ok(());
                }
                let (module, changed) = match &current {
                    Some(d) if d.record.module == rec.module => (d.module.clone(), false),
                    _ => (self.modules.load(&rec.module).await?, current.is_some()),
                };
                // Read again: a newer record installed meanwhile is not replaced by this one.
                if self.get(tenant, name).is_some_and(|d| d.revision >= rev) {
                    return Ok(());
                }
                let d = self.install(rec, rev, module);
                if changed {
                    d.shared.health.reset();
                }
                self.claim(tenant, name).await;
            }
        }
        Ok(())
    }

    /// Take the lease of `tenant/name` now if this node should own it and it is free
    /// (missing or handed back): a deploy or start on this node starts its work at once.
    pub(super) async fn claim(self: &Arc<Self>, tenant: &str, name: &str) {
        let k = key(tenant, name);
        if self.fence_of(&k).is_some() {
            self.ensure_work(&k);
            return;
        }
        if !self.get(tenant, name).is_some_and(|d| d.is_running()) || self.cluster.is_leaving() {
            return;
        }
        let live = self.cluster.live();
        if rendezvous(&k, &live) != Some(self.cluster.id()) {
            return;
        }
        let store = self.registry.store().clone();
        let found = match store.record_get(RecordKind::Lease, &k).await {
            Ok(f) => f,
            Err(_) => return,
        };
        let lease = match found {
            None => None,
            Some((bytes, rev)) => match serde_json::from_slice::<LeaseRecord>(&bytes) {
                Ok(l) => Some((l, rev)),
                Err(_) => return,
            },
        };
        if let Some((epoch, expected)) = free(lease.as_ref().map(|(l, rev)| (l, *rev)), self.cluster.id()) {
            self.take(&k, epoch, expected).await;
        }
    }

    /// Write the lease of `k` as ours at `epoch` (compare-and-swap on `expected`) and
    /// start the work.
    async fn take(self: &Arc<Self>, k: &str, epoch: u64, expected: u64) {
        let rec = LeaseRecord { owner: self.cluster.id().to_owned(), epoch, renewed_ms: now_ms() };
        match self.registry.store().record_put(RecordKind::Lease, k, encode(&rec), Some(expected)).await {
            Ok(rev) => {
                tracing::info!(agent = %k, epoch, node = %self.cluster.id(), "lease taken");
                self.held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(k.to_owned(), Held { epoch, rev, renewed: Instant::now() });
                self.metrics.lease_event("taken");
                self.ensure_work(k);
                if !self.is_leased_work(k)
                    && let Some((tenant, name)) = k.split_once('/')
                {
                    self.wake_mailbox(tenant, name);
                }
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => tracing::warn!(agent = %k, error = %e, "taking a lease failed"),
        }
    }

    /// Start the agent's watcher if it should run and does not (the lease is held).
    fn ensure_work(self: &Arc<Self>, k: &str) {
        if let Some(w) = self.leased_work().filter(|w| w.is_work(k)) {
            if let Some(f) = self.fence_of(k) {
                w.start(k, f);
            }
            return;
        }
        let Some((tenant, name)) = k.split_once('/') else { return };
        if let Some(d) = self.get(tenant, name) {
            self.sync_watcher(&d.record);
        }
    }

    /// Stop the work of `k` here and forget its lease (lost, or about to be handed back).
    pub(super) async fn drop_work(&self, k: &str) -> Option<Held> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner).remove(k);
        let watcher = self.watchers.lock().unwrap_or_else(PoisonError::into_inner).remove(k);
        let mailbox = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(k);
        if let Some(w) = watcher {
            w.halt().await;
        }
        if let Some(m) = mailbox {
            m.halt().await;
        }
        if let Some(w) = self.leased_work().filter(|w| w.is_work(k)) {
            w.stop(k).await;
        }
        held
    }

    /// Stop the work of `k` and hand its lease back (owner emptied, same epoch): the next
    /// owner takes it at once instead of waiting for it to expire.
    async fn release(&self, k: &str) {
        let Some(h) = self.drop_work(k).await else { return };
        let rec = LeaseRecord { owner: String::new(), epoch: h.epoch, renewed_ms: now_ms() };
        match self.registry.store().record_put(RecordKind::Lease, k, encode(&rec), Some(h.rev)).await {
            Ok(_) => {
                tracing::info!(agent = %k, epoch = h.epoch, "lease handed back");
                self.metrics.lease_event("handed_back");
            }
            Err(e) => tracing::info!(agent = %k, error = %e, "handing a lease back failed; it expires instead"),
        }
    }

    /// One round of the lease loop (see the module doc).
    pub(super) async fn own_tick(self: &Arc<Self>) {
        let store = self.registry.store().clone();
        // Leases this node could not renew for a whole TTL are lost to it, whatever the
        // store says later: stop their work before another node may take them.
        let ttl = self.cluster.lease_ttl();
        let overdue: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, h)| h.renewed.elapsed() >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for k in overdue {
            tracing::warn!(agent = %k, "lease not renewed within its TTL: work stopped");
            self.metrics.lease_event("expired");
            self.drop_work(&k).await;
        }
        let (in_flight, queued, mailbox) = self.node_load();
        self.cluster.set_load(in_flight, queued, mailbox);
        let live = match self.cluster.beat(store.as_ref()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "membership heartbeat failed");
                return;
            }
        };
        // Each live node enforces its share of every tenant's rate and concurrency quotas.
        self.tenants.limiters.set_nodes(u32::try_from(live.len()).unwrap_or(u32::MAX));
        self.egress().set_nodes(u32::try_from(live.len()).unwrap_or(u32::MAX));
        self.own_leases(&live).await;
        // The daily egress counts, into the store and back (the first tick is at restore),
        // after the leases: a slow store delays the counts, not the renewals.
        self.egress().flush().await;
    }

    /// The leases' part of a round: read every lease on a full round, stop the work of
    /// those lost, take those wanted, hand back the others, renew the rest.
    async fn own_leases(self: &Arc<Self>, live: &[String]) {
        let me = self.cluster.id().to_owned();
        // Every lease, on a full round (see the module doc).
        let leases = if self.full_round(live) {
            match self.read_leases().await {
                Some(l) => Some(l),
                None => return,
            }
        } else {
            None
        };
        let held: Vec<(String, Held)> =
            self.held.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(k, h)| (k.clone(), *h)).collect();
        // Held leases that the store gives to another epoch are lost (between full rounds,
        // the renewal's compare-and-swap finds them).
        if let Some(leases) = &leases {
            for (k, h) in &held {
                let mine = leases.get(k).is_some_and(|(l, rev)| l.owner == me && l.epoch == h.epoch && *rev == h.rev);
                if !mine {
                    tracing::warn!(agent = %k, epoch = h.epoch, "lease lost to another node: work stopped");
                    self.metrics.lease_event("lost");
                    self.drop_work(k).await;
                }
            }
        }
        let mut wanted = Vec::new();
        self.deployed.each(|d| {
            if d.is_running() {
                wanted.push(key(&d.record.tenant, &d.record.name));
            }
        });
        // Leased work is wanted while its lease exists: every such lease on a full round,
        // else those this node holds (a vanished one fails its renewal).
        if let Some(w) = self.leased_work() {
            match &leases {
                Some(leases) => wanted.extend(leases.keys().filter(|k| w.is_work(k)).cloned()),
                None => wanted.extend(held.iter().map(|(k, _)| k).filter(|k| w.is_work(k)).cloned()),
            }
        }
        let wanted_set: HashSet<&str> = wanted.iter().map(String::as_str).collect();
        let leaving = self.cluster.is_leaving();
        let mut renew = Vec::new();
        for k in &wanted {
            let desired = rendezvous(k, live) == Some(me.as_str()) && !leaving;
            let holds = self.fence_of(k).is_some();
            if holds && !desired {
                self.release(k).await;
            } else if holds {
                renew.push(k.clone());
                self.ensure_work(k);
            } else if desired {
                let found = match &leases {
                    Some(leases) => leases.get(k).cloned(),
                    None => match self.read_lease(k).await {
                        Ok(found) => found,
                        Err(()) => continue,
                    },
                };
                let found = found.as_ref().map(|(l, rev)| (l, *rev));
                if let Some((epoch, expected)) = free(found, &me) {
                    self.take(k, epoch, expected).await;
                } else if let Some((l, rev)) = found
                    && self.cluster.lease_expired(k, rev)
                {
                    tracing::info!(agent = %k, from = %l.owner, "lease expired: taking it");
                    self.take(k, l.epoch + 1, rev).await;
                }
            }
        }
        // Held but no longer running here (stopped, deleted): hand back.
        for (k, _) in &held {
            if !wanted_set.contains(k.as_str()) && self.fence_of(k).is_some() {
                self.release(k).await;
            }
        }
        self.renew(&renew).await;
        self.cluster.set_owned(self.held.lock().unwrap_or_else(PoisonError::into_inner).len());
    }

    /// Whether this round reads every lease: the first, one after the live nodes changed,
    /// one a lease TTL after the last.
    fn full_round(&self, live: &[String]) -> bool {
        let mut scan = self.lease_scan.lock().unwrap_or_else(PoisonError::into_inner);
        let due = scan.at.is_none_or(|at| at.elapsed() >= self.cluster.lease_ttl()) || scan.live != live;
        if due {
            *scan = Scan { at: Some(Instant::now()), live: live.to_vec() };
        }
        due
    }

    /// Every lease in the store (`None`: the read failed; the next round is a full one
    /// again). Starts the expiry clock of every other node's lease at its first sight.
    async fn read_leases(&self) -> Option<HashMap<String, (LeaseRecord, u64)>> {
        let rows = match self.registry.store().record_list_revisions(RecordKind::Lease, "").await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leases failed");
                self.lease_scan.lock().unwrap_or_else(PoisonError::into_inner).at = None;
                return None;
            }
        };
        let mut leases: HashMap<String, (LeaseRecord, u64)> = HashMap::new();
        for (k, bytes, rev) in rows {
            if let Ok(l) = serde_json::from_slice::<LeaseRecord>(&bytes) {
                leases.insert(k, (l, rev));
            }
        }
        let me = self.cluster.id();
        for (k, (l, rev)) in &leases {
            if l.owner != me {
                self.cluster.lease_expired(k, *rev);
            }
        }
        self.cluster.forget_leases_except(&leases.keys().map(String::as_str).collect::<HashSet<_>>());
        Some(leases)
    }

    /// The lease of `k` (`Err`: unreadable now).
    async fn read_lease(&self, k: &str) -> Result<Option<(LeaseRecord, u64)>, ()> {
        match self.registry.store().record_get(RecordKind::Lease, k).await {
            Ok(Some((bytes, rev))) => {
                serde_json::from_slice::<LeaseRecord>(&bytes).map(|l| Some((l, rev))).map_err(|_| ())
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(agent = %k, error = %e, "reading a lease failed");
                Err(())
            }
        }
    }

    /// Renew `keys` in one transaction; on a conflict, one at a time (a conflict there is
    /// a lease lost).
    async fn renew(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let me = self.cluster.id().to_owned();
        let now = now_ms();
        let plan: Vec<(String, Held)> = {
            let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            keys.iter().filter_map(|k| held.get(k).map(|h| (k.clone(), *h))).collect()
        };
        let op = |k: &str, h: &Held| RecordOp::Put {
            kind: RecordKind::Lease,
            key: k.to_owned(),
            value: encode(&LeaseRecord { owner: me.clone(), epoch: h.epoch, renewed_ms: now }),
            expected: Some(h.rev),
        };
        let ops: Vec<RecordOp> = plan.iter().map(|(k, h)| op(k, h)).collect();
        let store = self.registry.store().clone();
        let started = Instant::now();
        match store.record_apply(None, &ops, Quota::NONE).await {
            Ok(revs) => {
                let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                for ((k, _), rev) in plan.iter().zip(revs) {
                    if let Some(h) = held.get_mut(k) {
                        h.rev = rev;
                        h.renewed = started;
                    }
                }
            }
            Err(StoreError::Conflict { .. }) => {
                for (k, h) in &plan {
                    let RecordOp::Put { value, .. } = op(k, h) else { continue };
                    match store.record_put(RecordKind::Lease, k, value, Some(h.rev)).await {
                        Ok(rev) => {
                            if let Some(h) = self.held.lock().unwrap_or_else(PoisonError::into_inner).get_mut(k) {
                                h.rev = rev;
                                h.renewed = started;
                            }
                        }
                        Err(StoreError::Conflict { .. }) => {
                            tracing::warn!(agent = %k, "lease lost while renewing: work stopped");
                            self.metrics.lease_event("lost");
                            self.drop_work(k).await;
                        }
                        Err(e) => tracing::warn!(agent = %k, error = %e, "renewing a lease failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the leases failed"),
        }
    }

    /// Start the lease loop (once): a round every heartbeat, and one at once.
    pub(super) fn start_ownership(self: &Arc<Self>) {
        let mut task = self.owner_task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        let host: std::sync::Weak<dyn Host> = weak.clone() as std::sync::Weak<dyn Host>;
        let every = self.cluster.heartbeat();
        *task = Some(coordination::supervise(host, "ownership", move || {
            let weak = weak.clone();
            async move {
                loop {
                    let Some(agents) = weak.upgrade() else { return };
                    agents.own_tick().await;
                    drop(agents);
                    tokio::time::sleep(every).await;
                }
            }
        }));
    }

    /// Stop the lease loop and wait until it is gone.
    async fn stop_ownership(&self) {
        let task = self.owner_task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Stop at once without handing anything back, the way a killed process would: the
    /// membership record goes stale and the leases expire (failover benches and tests of
    /// one process).
    pub async fn crash(&self) {
        self.cluster.leave();
        self.stop_ownership().await;
        self.held.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.halt_watchers().await;
        if let Some(w) = self.leased_work() {
            w.stop_all().await;
        }
    }

    /// Leave the cluster (at shutdown): stop the lease loop and every piece of work, hand
    /// every lease back, and remove the membership record, so that the other nodes take
    /// over at once instead of after the TTL.
    pub async fn hand_back(&self) {
        self.cluster.leave();
        self.stop_ownership().await;
        let keys: Vec<String> = self.held.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        for k in keys {
            self.release(&k).await;
        }
        self.egress().close().await;
        if let Err(e) = self.cluster.remove(self.registry.store().as_ref()).await {
            tracing::warn!(error = %e, "removing the membership record failed");
        }
    }
}
