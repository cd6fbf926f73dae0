//! `GET /v1/cluster` (platform-admin): the nodes this node knows of, whether each is live,
//! and the agents whose background work each owns (from the leases in the store).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::error::ApiResult;
use super::{AppState, Caller};
use crate::cluster::{LeaseRecord, NodeRecord};
use crate::store::RecordKind;

/// One owned piece of background work.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OwnedWork {
    /// `tenant/agent`.
    pub agent: String,
    /// The lease's epoch.
    pub epoch: u64,
}

/// A node as `GET /v1/cluster` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its membership record.
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Whether the answering node counts it live (its record changed within the TTL).
    pub live: bool,
    /// Whether it is the answering node.
    pub this: bool,
    /// The agents whose work it holds the lease of (`owns` in its record is how many it
    /// counted at its last heartbeat).
    pub owned: Vec<OwnedWork>,
}

/// The cluster as one node sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The answering node's id.
    pub node: String,
    /// The registry stream position it has applied.
    pub registry_applied: u64,
    /// Every node with a membership record.
    pub nodes: Vec<NodeView>,
    /// Leases handed back or held by a node without a record, waiting to be taken.
    pub unowned: Vec<OwnedWork>,
}

pub async fn get(State(st): State<Arc<AppState>>, _p: Caller) -> ApiResult<Json<ClusterView>> {
    let cluster = st.agents.cluster();
    let leases = st.registry.list_revisions::<LeaseRecord>(RecordKind::Lease, "").await?;
    let mut by_owner: BTreeMap<String, Vec<OwnedWork>> = BTreeMap::new();
    for (agent, l, _) in leases {
        by_owner.entry(l.owner).or_default().push(OwnedWork { agent, epoch: l.epoch });
    }
    let mut nodes = Vec::new();
    for (record, live) in cluster.nodes() {
        let owns = by_owner.remove(&record.id).unwrap_or_default();
        let this = record.id == cluster.id();
        nodes.push(NodeView { record, live, this, owned: owns });
    }
    let unowned = by_owner.into_values().flatten().collect();
    Ok(Json(ClusterView { node: cluster.id().to_owned(), registry_applied: cluster.applied(), nodes, unowned }))
}
