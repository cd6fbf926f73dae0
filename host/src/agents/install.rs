//! Install and uninstall on this node: the in-memory agent, its mailbox and its change-feed
//! dispatcher, kept in step with its record; restore of every agent at start.

use std::sync::{Arc, PoisonError};

use super::Agents;
use super::deployed::{Deployed, Shared, key};
use super::error::AgentsResult;
use super::messenger::Mesh;
use crate::coordination::{self, Host, Mailbox, Watcher};
use crate::registry::{AgentRecord, AgentStatus, Quotas};
use crate::runtime::Module;
use crate::store::RecordKind;

impl Agents {
    /// Install (or replace) a deployed agent, keeping its pool, counters and logs; start
    /// its change-feed dispatcher when it runs and watches, stop it otherwise.
    pub fn install(self: &Arc<Self>, record: AgentRecord, revision: u64, module: Arc<Module>) -> Arc<Deployed> {
        self.mesh.get_or_init(|| Arc::new(Mesh(Arc::downgrade(self))));
        self.this.get_or_init(|| Arc::downgrade(self));
        let (tenant, name) = (record.tenant.clone(), record.name.clone());
        let d = self.deployed.replace(&tenant, &name, |old| {
            let shared = match old {
                Some(old) => old.shared.clone(),
                None => {
                    let (lines, bytes) = (self.config.http.log_ring_lines, self.config.http.log_ring_bytes);
                    Arc::new(Shared::new(&record, lines, bytes, self.logbook.clone()))
                }
            };
            let base = self.context(&record, &Quotas::default());
            let metrics = self.metrics.agent(&record.tenant, &record.name);
            Arc::new(Deployed { record, revision, module, shared, base, metrics })
        });
        self.metrics.agent_health(&d.metrics, self.health_of(&d).gauge());
        self.sync_watcher(&d.record);
        self.sync_mailbox(&d.record);
        d
    }

    /// Stop the mailbox task of an agent that no longer runs (it keeps its messages until
    /// started); start one for a running agent with messages waiting. An idle agent has no
    /// mailbox task: a send starts it ([`Self::wake_mailbox`]).
    fn sync_mailbox(self: &Arc<Self>, record: &AgentRecord) {
        let k = key(&record.tenant, &record.name);
        if record.status != AgentStatus::Running {
            self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(&k);
            return;
        }
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&k)
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed) > 0);
        if waiting {
            self.wake_mailbox(&record.tenant, &record.name);
        }
    }

    /// A message waits for `tenant/name`: wake its mailbox task, or start one if it has
    /// none (or its task ended with the mailbox empty). Nothing for an agent that is not
    /// deployed or not running (its messages wait until it is started).
    pub(super) fn wake_mailbox(self: &Arc<Self>, tenant: &str, name: &str) {
        let Some(d) = self.deployed.get(tenant, name) else { return };
        if !d.is_running() {
            return;
        }
        let k = key(tenant, name);
        // Only the node holding the agent's lease runs its mailbox.
        let Some(fence) = self.fence_of(&k) else { return };
        let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
        if boxes.get(&k).is_some_and(Mailbox::wake) {
            return;
        }
        let host: std::sync::Weak<dyn Host> = Arc::downgrade(self) as std::sync::Weak<dyn Host>;
        let m = coordination::spawn_mailbox(
            host,
            tenant.to_owned(),
            name.to_owned(),
            // At most half the agent's instances (rounded up), so that calls and HTTP
            // invocations still find one while a backlog drains.
            (d.record.max_concurrency.max(1) as usize).div_ceil(2),
            self.mailbox_settings.clone(),
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).entry(k.clone()).or_default().clone(),
            Some(fence),
        );
        boxes.insert(k, m);
    }

    /// Read every mailbox once: count each agent's waiting messages and wake (or start)
    /// the mailboxes that have some. At restore, and every `idle_poll` from the sweep (for
    /// messages another node wrote, or a wake-up that found no task).
    pub(super) async fn wake_waiting_mailboxes(self: &Arc<Self>) -> AgentsResult<()> {
        let messages = self.registry.store().record_list(RecordKind::Message, "").await?;
        let mut waiting: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for (k, _) in &messages {
            // `tenant/agent/id`
            if let Some((agent_key, _)) = k.rsplit_once('/') {
                *waiting.entry(agent_key).or_default() += 1;
            }
        }
        for (agent_key, n) in waiting {
            let Some((tenant, name)) = agent_key.split_once('/') else { continue };
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(agent_key.to_owned())
                .or_default()
                .fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            self.wake_mailbox(tenant, name);
        }
        Ok(())
    }

    /// Start the mailbox sweep (once): every `idle_poll`, [`Self::wake_waiting_mailboxes`].
    fn start_sweep(self: &Arc<Self>) {
        let mut sweep = self.sweep.lock().unwrap_or_else(PoisonError::into_inner);
        if sweep.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        let host: std::sync::Weak<dyn Host> = weak.clone() as std::sync::Weak<dyn Host>;
        let every = self.mailbox_settings.idle_poll;
        *sweep = Some(coordination::supervise(host, "mailbox_sweep", move || {
            let weak = weak.clone();
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(agents) = weak.upgrade() else { return };
                    if let Err(e) = agents.wake_waiting_mailboxes().await {
                        tracing::warn!(error = %e, "mailbox sweep: reading the mailboxes failed");
                    }
                }
            }
        }));
    }

    /// Start, keep or stop the dispatcher of an agent to match its record.
    pub(super) fn sync_watcher(self: &Arc<Self>, record: &AgentRecord) {
        let k = key(&record.tenant, &record.name);
        // Only the node holding the agent's lease runs its watcher, fenced by the lease.
        let fence = self.fence_of(&k);
        let wanted = record.status == AgentStatus::Running && !record.watches.is_empty() && fence.is_some();
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if wanted && watchers.get(&k).is_some_and(|w| w.watches == record.watches && w.fence == fence) {
            return;
        }
        // Dropping a watcher asks its task to stop.
        watchers.remove(&k);
        if wanted {
            let host: std::sync::Weak<dyn Host> = Arc::downgrade(self) as std::sync::Weak<dyn Host>;
            let w = coordination::spawn(
                host,
                record.tenant.clone(),
                record.name.clone(),
                record.watches.clone(),
                self.dispatch.clone(),
                fence,
            );
            watchers.insert(k, w);
        }
    }

    /// Forget a deployed agent (and stop its dispatcher).
    ///
    /// Waits until the agent's mailbox task is gone, so that no delivery in flight writes
    /// after the caller forgets the agent's records.
    pub async fn uninstall(&self, tenant: &str, name: &str) {
        if let Some(d) = self.deployed.get(tenant, name) {
            d.shared.close_logs();
        }
        self.deployed.remove(tenant, name);
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        let mailbox = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        if let Some(m) = mailbox {
            m.halt().await;
        }
        // Its kept log goes with it (a line written after `close_logs` is not kept).
        if let Err(e) = self.logbook.purge(tenant, name).await {
            tracing::warn!(%tenant, agent = %name, error = %e, "deleting the agent's kept log failed");
        }
    }

    /// Whether the change-feed dispatcher of an agent is running.
    pub fn is_watching(&self, tenant: &str, name: &str) -> bool {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&key(tenant, name))
    }

    /// Stop every change-feed dispatcher at once and wait until they are gone, the way a
    /// crash would: batches in flight are abandoned without moving their cursors (they are
    /// delivered again after a restart). For shutdown, and for tests that reopen the data
    /// directory in the same process.
    pub async fn halt_watchers(&self) {
        let all: Vec<Watcher> =
            self.watchers.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, w)| w).collect();
        for w in all {
            w.halt().await;
        }
        let sweep = self.sweep.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sweep) = sweep {
            sweep.abort();
            let _ = sweep.await;
        }
        let all: Vec<Mailbox> =
            self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, m)| m).collect();
        for m in all {
            m.halt().await;
        }
        // Last: the logs of the invocations that ended (a clean shutdown loses none).
        if let Err(e) = self.logbook.stop().await {
            tracing::error!(error = %e, "storing the last agent logs failed");
        }
    }

    /// Bring back every agent in the registry (after a restart), with the dispatchers of
    /// the watching ones and the mailboxes of those with messages waiting: one read of the
    /// agent records (with their revisions), one of the mailboxes.
    pub async fn restore(self: &Arc<Self>) -> AgentsResult<usize> {
        self.resume_compiles().await?;
        let records = self.registry.list_revisions::<AgentRecord>(RecordKind::Agent, "").await?;
        // Their kept logs: one scan too.
        let mut logs = self.logbook.load_all().await?;
        let mut n = 0;
        for (k, record, rev) in records {
            match self.modules.load(&record.module).await {
                Ok(m) => {
                    let d = self.install(record, rev, m);
                    if let Some(lines) = logs.remove(&k) {
                        d.shared.restore_logs(lines);
                    }
                    n += 1;
                }
                Err(e) => tracing::error!(agent = %k, error = %e, "cannot restore agent"),
            }
        }
        // Leases first (a single node takes its own at once): watchers and mailboxes run
        // where the lease is held.
        self.own_tick().await;
        self.wake_waiting_mailboxes().await?;
        self.start_sweep();
        self.start_ownership();
        self.logbook.spawn_writer();
        Ok(n)
    }
}
