//! What `/metrics` reports of the node's current state: per tenant, the invocations running
//! and queued in the agents' pools, the messages waiting in their mailboxes, the lag of
//! their change-feed watchers and the agents deployed (computed at each scrape from memory,
//! plus one feed-head read per tenant that has watchers); and the modules and dead letters
//! of each tenant, counted in the store once at start and then followed as the store writes
//! and deletes them (see [`crate::store::Instrumented`]): a scrape never lists the store.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::Agents;
use crate::store::{RecordKind, record_tenant};
use crate::telemetry::TenantState;

impl Agents {
    /// The node's invocations running and queued in the agents' pools and the messages
    /// waiting in the mailboxes it holds (the load in its membership record).
    pub(super) fn node_load(&self) -> (u64, u64, u64) {
        let (mut running, mut queued) = (0u64, 0u64);
        self.deployed.each(|d| {
            running += u64::from(d.shared.pool.running());
            queued += u64::from(d.shared.pool.waiting());
        });
        let mailbox = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|n| n.load(Ordering::Relaxed) as u64)
            .sum();
        (running, queued, mailbox)
    }

    /// The node's state per tenant, for the metrics.
    pub async fn tenant_state(&self) -> HashMap<String, TenantState> {
        let mut out: HashMap<String, TenantState> = HashMap::new();
        self.deployed.each(|d| {
            let s = out.entry(d.record.tenant.clone()).or_default();
            s.agents += 1;
            s.running += u64::from(d.shared.pool.running());
            s.queued += u64::from(d.shared.pool.waiting());
        });
        for (k, n) in self.pending.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            out.entry(record_tenant(k).to_owned()).or_default().mailbox += n.load(Ordering::Relaxed) as u64;
        }
        let cursors: Vec<(String, u64)> = self
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(k, w)| Some((record_tenant(k).to_owned(), w.cursor()?)))
            .collect();
        let mut heads: HashMap<&str, u64> = HashMap::new();
        for (tenant, cursor) in &cursors {
            let head = match heads.get(tenant.as_str()) {
                Some(h) => *h,
                None => match self.registry.store().feed_head(tenant).await {
                    Ok(h) => *heads.entry(tenant).or_insert(h),
                    Err(e) => {
                        tracing::warn!(%tenant, error = %e, "metrics: cannot read the feed head");
                        continue;
                    }
                },
            };
            let s = out.entry(tenant.clone()).or_default();
            s.watcher_lag = s.watcher_lag.max(head.saturating_sub(*cursor));
        }
        out
    }

    /// Make the series of every tenant in the store, and count the modules and dead letters
    /// of each (once, at start: from then on the store's writes keep the counts).
    pub async fn count_records(&self) -> crate::store::Result<()> {
        for (name, _) in self.registry.store().record_list(RecordKind::Tenant, "").await? {
            self.metrics.tenant(&name);
        }
        for kind in [RecordKind::Module, RecordKind::DeadLetter] {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for (k, _) in self.registry.store().record_list(kind, "").await? {
                *counts.entry(record_tenant(&k).to_owned()).or_default() += 1;
            }
            self.metrics.records_counted(kind, &counts);
        }
        Ok(())
    }
}
