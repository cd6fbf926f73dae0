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
        let (tenant, name) = (record.tenant.clone(), record.name.clone());
        let d = self.deployed.replace(&tenant, &name, |old| {
            let shared = match old {
                Some(old) => old.shared.clone(),
                None => {
                    Arc::new(Shared::new(&record, self.config.http.log_ring_lines, self.config.http.log_ring_bytes))
                }
            };
            let base = self.context(&record, &Quotas::default());
            let metrics = self.metrics.agent(&record.tenant, &record.name);
            Arc::new(Deployed { record, revision, module, shared, base, metrics })
        });
        self.sync_watcher(&d.record);
        self.sync_mailbox(&d.record);
        d
    }

    /// Start or stop the mailbox of an agent to match its record: running agents take
    /// their messages, stopped ones keep them until started.
    fn sync_mailbox(self: &Arc<Self>, record: &AgentRecord) {
        let k = key(&record.tenant, &record.name);
        let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
        if record.status != AgentStatus::Running {
            boxes.remove(&k);
            return;
        }
        if boxes.contains_key(&k) {
            return;
        }
        let host: std::sync::Weak<dyn Host> = Arc::downgrade(self) as std::sync::Weak<dyn Host>;
        let m = coordination::spawn_mailbox(
            host,
            record.tenant.clone(),
            record.name.clone(),
            // At most half the agent's instances (rounded up), so that calls and HTTP
            // invocations still find one while a backlog drains.
            (record.max_concurrency.max(1) as usize).div_ceil(2),
            self.mailbox_settings.clone(),
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).entry(k.clone()).or_default().clone(),
        );
        boxes.insert(k, m);
    }

    /// Start, keep or stop the dispatcher of an agent to match its record.
    fn sync_watcher(self: &Arc<Self>, record: &AgentRecord) {
        let k = key(&record.tenant, &record.name);
        let wanted = record.status == AgentStatus::Running && !record.watches.is_empty();
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if wanted && watchers.get(&k).is_some_and(|w| w.watches == record.watches) {
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
            );
            watchers.insert(k, w);
        }
    }

    /// Forget a deployed agent (and stop its dispatcher).
    ///
    /// Waits until the agent's mailbox task is gone, so that no delivery in flight writes
    /// after the caller forgets the agent's records.
    pub async fn uninstall(&self, tenant: &str, name: &str) {
        self.deployed.remove(tenant, name);
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        let mailbox = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(tenant, name));
        if let Some(m) = mailbox {
            m.halt().await;
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
        let all: Vec<Mailbox> =
            self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, m)| m).collect();
        for m in all {
            m.halt().await;
        }
    }

    /// Bring back every agent in the registry (after a restart), with the dispatchers of
    /// the watching ones.
    pub async fn restore(self: &Arc<Self>) -> AgentsResult<usize> {
        let records = self.registry.store().record_list(RecordKind::Agent, "").await?;
        let mut n = 0;
        for (k, _) in records {
            let Some((record, rev)) = self.registry.get::<AgentRecord>(RecordKind::Agent, &k).await? else { continue };
            match self.modules.load(&record.module).await {
                Ok(m) => {
                    self.install(record, rev, m);
                    n += 1;
                }
                Err(e) => tracing::error!(agent = %k, error = %e, "cannot restore agent"),
            }
        }
        Ok(n)
    }
}
