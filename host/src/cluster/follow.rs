//! The registry change stream, applied on this node: every write of a replicated record
//! made through any node (this one included) comes back here in commit order, and the node
//! brings its view in line: agents installed, reconfigured, upgraded, stopped or removed;
//! cached tenants and API keys forgotten (so a revoked key or a deleted tenant is refused
//! here too).
//!
//! A change made through this node is applied to this node's view before its answer (read
//! your writes); the stream brings it to the others. On the embedded store a write wakes
//! the follower at once; on ArangoDB the follower polls the stream's head (10 ms doubling
//! to 250 ms while it is quiet), so a change reaches every node well within a second.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::api::AppState;
use crate::store::{ChangeEvent, ChangeOp, REGISTRY_FEED, RecordKind};

/// Events read at once.
const BATCH: usize = 512;

/// How long one wait for the stream lasts before its head is read again.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Follow the registry stream after `from` until the state is dropped.
pub async fn follow(state: Weak<AppState>, from: u64) {
    let Some(st) = state.upgrade() else { return };
    let stopped = st.agents.cluster().stopped();
    drop(st);
    tokio::select! {
        () = run(state, from) => {}
        () = stopped => {}
    }
}

async fn run(state: Weak<AppState>, from: u64) {
    let mut cursor = from;
    let mut backoff = Duration::from_millis(50);
    // Agents whose change could not be applied (the store or a module load failed): tried
    // again every round until they are.
    let mut retry: std::collections::BTreeSet<(String, String)> = std::collections::BTreeSet::new();
    loop {
        let Some(st) = state.upgrade() else { return };
        for (tenant, name) in std::mem::take(&mut retry) {
            if st.agents.refresh(&tenant, &name).await.is_err() {
                retry.insert((tenant, name));
            }
        }
        let store = st.registry.store().clone();
        let events = match store.feed_since(REGISTRY_FEED, cursor, BATCH).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "registry stream: reading failed");
                drop(st);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if let Some(last) = events.last().map(|e| e.seq) {
            for e in &events {
                if let Some(agent) = apply(&st, e).await {
                    retry.insert(agent);
                }
            }
            cursor = last;
            st.agents.cluster().set_applied(cursor, false);
            continue;
        }
        // Read to the head: caught up.
        st.agents.cluster().set_applied(cursor, true);
        drop(st);
        let wait = if retry.is_empty() { IDLE_WAIT } else { Duration::from_secs(1) };
        match store.wait_for(REGISTRY_FEED, cursor, wait).await {
            // The stream never goes back; a lower head is a store that was replaced.
            Ok(head) if head < cursor => cursor = head,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "registry stream: waiting failed");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Bring this node's view in line with one change; the agent to try again when it could
/// not be applied.
async fn apply(st: &Arc<AppState>, e: &ChangeEvent) -> Option<(String, String)> {
    let kind = RecordKind::parse(&e.collection)?;
    match kind {
        RecordKind::Agent => {
            let (tenant, name) = e.key.split_once('/')?;
            if let Err(err) = st.agents.refresh(tenant, name).await {
                tracing::warn!(%tenant, agent = %name, error = %err, "registry stream: applying an agent change failed");
                return Some((tenant.to_owned(), name.to_owned()));
            }
        }
        RecordKind::Tenant | RecordKind::DeletedTenant => {
            st.forget_tenant(&e.key);
            if kind == RecordKind::Tenant && e.op == ChangeOp::Delete {
                st.tenants.forget_deleted(&e.key);
                // This node's counts too, and any counter record of it written since the
                // deleting node removed them (a flush that raced the delete).
                if let Err(err) = st.agents.egress().forget_tenant(&e.key).await {
                    tracing::warn!(tenant = %e.key, error = %err, "registry stream: forgetting a deleted tenant's egress counts failed");
                }
            }
        }
        RecordKind::ApiKey => st.forget_api_key(&e.key),
        // A module deleted through another node: drop this node's copy, artifact and
        // loaded module unless another tenant's record still names the digest.
        RecordKind::Module if e.op == ChangeOp::Delete => {
            if let Some((_, digest)) = e.key.split_once('/')
                && let Err(err) = st.agents.modules.forget_if_unused(digest).await
            {
                tracing::warn!(%digest, error = %err, "registry stream: forgetting a deleted module failed");
            }
        }
        // Read from the store when used: nothing cached to forget.
        _ => {}
    }
    None
}
