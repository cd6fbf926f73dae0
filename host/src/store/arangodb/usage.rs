//! Per-tenant usage in ArangoDB: one document per tenant in `cortex_records`
//! (`_key` = escaped `("usage", tenant)`, fields `kind: "usage"`, `tenant`, `bytes`,
//! `edges`; no registry kind is named `usage`, so record listings never meet it).
//!
//! Every write that changes what a tenant stores reads this document inside its own
//! stream transaction, checks the quota against the new counts and replaces it with
//! `If-Match: <_rev>`: two writers of one tenant collide on it (409 or 412) and the loser
//! starts over, so the counts move exactly with the writes and the check cannot be raced.
//! A tenant without the document (a database from before it existed) starts from the sum
//! of its document sizes.

use arangors::document::options::{InsertOptions, RemoveOptions, ReplaceOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::keys::arango_key;
use super::{ArangoStore, Coll, Step, backend, is_not_found, lost_race, read, with_key};
use crate::store::{Quota, Result, Usage};

/// The usage document as stored.
#[derive(Serialize, Deserialize)]
struct UsageDoc {
    kind: String,
    tenant: String,
    bytes: u64,
    edges: u64,
}

fn usage_key(tenant: &str) -> String {
    arango_key(&["usage", tenant])
}

/// A tenant's usage read inside a write's transaction, changed by its ops, written back
/// by [`Meter::commit`].
pub(super) struct Meter {
    tenant: String,
    rev: Option<String>,
    before: Usage,
    now: Usage,
}

impl Meter {
    /// The tenant whose usage this is.
    pub(super) fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Add `bytes` and `edges`.
    pub(super) fn add(&mut self, bytes: u64, edges: u64) {
        self.now.bytes = self.now.bytes.saturating_add(bytes);
        self.now.edges = self.now.edges.saturating_add(edges);
    }

    /// Add `bytes` and take away `freed` as one write, refused by `quota` if that write
    /// grows the count past it (each write of a transaction is checked on its own, as the
    /// embedded store does; [`Meter::commit`] checks the whole again).
    pub(super) fn step(&mut self, bytes: u64, freed: u64, quota: Quota) -> Result<()> {
        let before = self.now;
        self.add(bytes, 0);
        self.remove(freed, 0);
        quota.check(before, self.now)
    }

    /// Take away `bytes` and `edges`.
    pub(super) fn remove(&mut self, bytes: u64, edges: u64) {
        self.now.bytes = self.now.bytes.saturating_sub(bytes);
        self.now.edges = self.now.edges.saturating_sub(edges);
    }

    /// Check `quota` and write the new counts through `records` (bound to the write's
    /// transaction). `Retry` when another writer of the tenant got in between.
    pub(super) async fn commit(self, records: &Coll, quota: Quota) -> Result<Step<()>> {
        quota.check(self.before, self.now)?;
        if self.now == self.before && self.rev.is_some() {
            return Ok(Step::Done(()));
        }
        let key = usage_key(&self.tenant);
        let doc = UsageDoc { kind: "usage".into(), tenant: self.tenant, bytes: self.now.bytes, edges: self.now.edges };
        let body = with_key(&key, &doc)?;
        let res = match self.rev {
            None => records.create_document(body, InsertOptions::default()).await.map(|_| ()),
            Some(rev) => records.replace_document(&key, body, ReplaceOptions::default(), Some(rev)).await.map(|_| ()),
        };
        match res {
            Ok(()) => Ok(Step::Done(())),
            Err(e) if lost_race(&e) => Ok(Step::Retry),
            Err(e) => Err(backend(e)),
        }
    }
}

impl ArangoStore {
    /// Read `tenant`'s usage through `records` (bound to a write's transaction).
    pub(super) async fn meter(&self, records: &Coll, tenant: &str) -> Result<Meter> {
        let (rev, before) = match read::<UsageDoc>(records, &usage_key(tenant)).await? {
            Some((rev, d)) => (Some(rev), Usage { bytes: d.bytes, edges: d.edges }),
            None => (None, Usage { bytes: self.document_bytes(tenant).await?, edges: 0 }),
        };
        Ok(Meter { tenant: tenant.to_owned(), rev, before, now: before })
    }

    /// What `tenant` stores, outside any transaction.
    pub(super) async fn read_usage(&self, tenant: &str) -> Result<Usage> {
        match read::<UsageDoc>(&self.records, &usage_key(tenant)).await? {
            Some((_, d)) => Ok(Usage { bytes: d.bytes, edges: d.edges }),
            None => Ok(Usage { bytes: self.document_bytes(tenant).await?, edges: 0 }),
        }
    }

    /// Take `bytes` and `edges` from `tenant`'s usage on their own (after a removal that
    /// ran as one AQL query), retrying lost races. A crash in between leaves the usage too
    /// high, never too low.
    pub(super) async fn release(&self, tenant: &str, bytes: u64, edges: u64) -> Result<()> {
        if bytes == 0 && edges == 0 {
            return Ok(());
        }
        for _ in 0..super::MAX_ATTEMPTS {
            let mut m = self.meter(&self.records, tenant).await?;
            m.remove(bytes, edges);
            if let Step::Done(()) = m.commit(&self.records, Quota::NONE).await? {
                return Ok(());
            }
        }
        Err(super::too_busy("release"))
    }

    /// Forget a tenant's usage (its data is purged).
    pub(super) async fn purge_usage(&self, tenant: &str) -> Result<()> {
        match self.records.remove_document::<Value>(&usage_key(tenant), RemoveOptions::default(), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// The sum of a tenant's document sizes (how usage was counted before the usage
    /// document existed).
    async fn document_bytes(&self, tenant: &str) -> Result<u64> {
        let n: Vec<Option<u64>> = self
            .query(
                "RETURN SUM(FOR d IN cortex_documents FILTER d.tenant == @tenant RETURN d.size)",
                vec![("tenant", json!(tenant))],
            )
            .await?;
        Ok(n.first().copied().flatten().unwrap_or(0))
    }
}
