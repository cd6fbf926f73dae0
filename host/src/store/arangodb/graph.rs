//! Agent links in the edge collection `cortex_edges`.
//!
//! An edge's `_key` is the escaped `(tenant, from, kind, to)`, so `link` of the same triple
//! replaces it (insert with `overwrite=true`) and tenants never share an edge. `_from` and
//! `_to` are the handles of the two agents' registry records in `cortex_records` (the
//! vertices; ArangoDB does not require them to exist). Fields: `tenant`, `from`, `to`,
//! `kind`, `attrs` (JSON text, verbatim) and `kh`/`fh`/`th`, the hex of kind, from and to,
//! to sort in byte order. Neighbours are read through the edge index (`e._from == @vertex`
//! or `e._to == @vertex`) with AQL, filtered on `e.tenant` as well.

use arangors::document::options::{InsertOptions, RemoveOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::keys::{arango_key, hex};
use super::{ArangoStore, RECORDS, backend, is_not_found, with_key};
use crate::store::{Direction, Edge, GraphStore, RecordKind, Result};

/// One edge as kept in `cortex_edges`.
#[derive(Serialize, Deserialize)]
struct StoredEdge {
    #[serde(rename = "_from")]
    from_vertex: String,
    #[serde(rename = "_to")]
    to_vertex: String,
    tenant: String,
    from: String,
    to: String,
    kind: String,
    kh: String,
    fh: String,
    th: String,
    attrs: String,
}

#[derive(Deserialize)]
struct Row {
    from: String,
    to: String,
    kind: String,
    attrs: String,
}

impl From<Row> for Edge {
    fn from(r: Row) -> Self {
        Edge { from: r.from, to: r.to, kind: r.kind, attrs: r.attrs }
    }
}

/// The vertex of an agent: its registry record's handle (see `registry::scoped`).
fn vertex(tenant: &str, agent: &str) -> String {
    format!("{RECORDS}/{}", arango_key(&[RecordKind::Agent.as_str(), &format!("{tenant}/{agent}")]))
}

fn edge_key(tenant: &str, from: &str, to: &str, kind: &str) -> String {
    arango_key(&[tenant, from, kind, to])
}

const OUTGOING: &str = "FOR e IN cortex_edges FILTER e._from == @vertex AND e.tenant == @tenant \
    AND (@kind == null OR e.kind == @kind) SORT e.kh, e.th LIMIT @limit \
    RETURN { from: e.from, to: e.to, kind: e.kind, attrs: e.attrs }";
const INCOMING: &str = "FOR e IN cortex_edges FILTER e._to == @vertex AND e.tenant == @tenant \
    AND (@kind == null OR e.kind == @kind) AND e._from != @skip SORT e.kh, e.fh LIMIT @limit \
    RETURN { from: e.from, to: e.to, kind: e.kind, attrs: e.attrs }";

impl ArangoStore {
    /// Remove every edge of a tenant.
    pub(super) async fn purge_edges(&self, tenant: &str) -> Result<()> {
        let _: Vec<u64> = self
            .query(
                "LET removed = (FOR e IN cortex_edges FILTER e.tenant == @tenant \
                 REMOVE e IN cortex_edges RETURN 1) RETURN LENGTH(removed)",
                vec![("tenant", json!(tenant))],
            )
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl GraphStore for ArangoStore {
    async fn link(&self, tenant: &str, from: &str, to: &str, kind: &str, attrs: &str) -> Result<()> {
        let edge = StoredEdge {
            from_vertex: vertex(tenant, from),
            to_vertex: vertex(tenant, to),
            tenant: tenant.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            kind: kind.to_owned(),
            kh: hex(kind.as_bytes()),
            fh: hex(from.as_bytes()),
            th: hex(to.as_bytes()),
            attrs: attrs.to_owned(),
        };
        let body = with_key(&edge_key(tenant, from, to, kind), &edge)?;
        // `overwrite=true`: a replace-insert, atomic in the server.
        let options = InsertOptions::builder().overwrite(true).wait_for_sync(true).build();
        self.edges.create_document(body, options).await.map(|_| ()).map_err(backend)
    }

    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        let key = edge_key(tenant, from, to, kind);
        match self.edges.remove_document::<Value>(&key, RemoveOptions::default(), None).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn neighbours(
        &self,
        tenant: &str,
        agent: &str,
        kind: Option<&str>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Edge>> {
        let v = vertex(tenant, agent);
        let mut edges = Vec::new();
        if limit > 0 && matches!(direction, Direction::Outgoing | Direction::Both) {
            let vars =
                vec![("vertex", json!(v)), ("tenant", json!(tenant)), ("kind", json!(kind)), ("limit", json!(limit))];
            edges.extend(self.query::<Row>(OUTGOING, vars).await?.into_iter().map(Edge::from));
        }
        let room = limit.saturating_sub(edges.len());
        if room > 0 && matches!(direction, Direction::Incoming | Direction::Both) {
            // With both directions a self-loop was listed as outgoing already.
            let skip = if direction == Direction::Both { v.clone() } else { String::new() };
            let vars = vec![
                ("vertex", json!(v)),
                ("tenant", json!(tenant)),
                ("kind", json!(kind)),
                ("skip", json!(skip)),
                ("limit", json!(room)),
            ];
            edges.extend(self.query::<Row>(INCOMING, vars).await?.into_iter().map(Edge::from));
        }
        Ok(edges)
    }

    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        let n: Vec<u64> = self
            .query(
                "LET removed = (FOR e IN cortex_edges FILTER e.tenant == @tenant \
                 AND (e._from == @vertex OR e._to == @vertex) \
                 REMOVE e IN cortex_edges RETURN 1) RETURN LENGTH(removed)",
                vec![("tenant", json!(tenant)), ("vertex", json!(vertex(tenant, agent)))],
            )
            .await?;
        Ok(n.first().copied().unwrap_or(0))
    }
}
