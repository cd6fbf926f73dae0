//! Agent links in the edge collection `cortex_edges`.
//!
//! An edge's `_key` is the escaped `(tenant, from, kind, to)`, so `link` of the same triple
//! replaces it (insert with `overwrite=true`) and tenants never share an edge. `_from` and
//! `_to` are the handles of the two agents' registry records in `cortex_records` (the
//! vertices; ArangoDB does not require them to exist). Fields: `tenant`, `from`, `to`,
//! `kind`, `attrs` (JSON text, verbatim) and `kh`/`fh`/`th`, the hex of kind, from and to,
//! to sort in byte order, and `size` (its [`edge_size`], counted in the tenant's usage).
//! Neighbours are read through the edge index (`e._from == @vertex` or `e._to == @vertex`)
//! with AQL, filtered on `e.tenant` as well, and bounded by a byte budget on the server
//! (a running sum of `size`: past the budget, no more edges are sent).
//!
//! `link` and `unlink` run in a stream transaction over the edges and `cortex_records`,
//! with the tenant's usage document ([`super::usage`]).

use arangors::document::options::{InsertOptions, RemoveOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::keys::{arango_key, hex};
use super::{
    ArangoStore, EDGES, MAX_ATTEMPTS, RECORDS, Step, backend, is_not_found, lost_race, read, too_busy, with_key,
};
use crate::store::{Direction, Edge, GraphStore, Quota, RecordKind, Result, edge_size};

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
    #[serde(default)]
    size: u64,
}

/// An edge as a neighbours query returns it; `attrs` is `None` past the byte budget.
#[derive(Deserialize)]
struct Row {
    from: String,
    to: String,
    kind: String,
    attrs: Option<String>,
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
    WINDOW { preceding: \"unbounded\", following: 0 } AGGREGATE used = SUM(e.size) \
    RETURN { from: e.from, to: e.to, kind: e.kind, attrs: used <= @budget OR used == e.size ? e.attrs : null }";
const INCOMING: &str = "FOR e IN cortex_edges FILTER e._to == @vertex AND e.tenant == @tenant \
    AND (@kind == null OR e.kind == @kind) AND e._from != @skip SORT e.kh, e.fh LIMIT @limit \
    WINDOW { preceding: \"unbounded\", following: 0 } AGGREGATE used = SUM(e.size) \
    RETURN { from: e.from, to: e.to, kind: e.kind, attrs: used <= @budget OR used == e.size ? e.attrs : null }";

/// Append `rows` to `edges` up to the first one past the budget; `false` if one was.
fn take_within(edges: &mut Vec<Edge>, rows: Vec<Row>, bytes: &mut usize) -> bool {
    for r in rows {
        let Some(attrs) = r.attrs else { return false };
        *bytes =
            bytes.saturating_add(usize::try_from(edge_size(&r.from, &r.to, &r.kind, &attrs)).unwrap_or(usize::MAX));
        edges.push(Edge { from: r.from, to: r.to, kind: r.kind, attrs });
    }
    true
}

impl ArangoStore {
    /// Remove every edge of a tenant.
    pub(super) async fn purge_edges(&self, tenant: &str) -> Result<()> {
        // The tenant's usage document goes with its data (`purge_usage`).
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
    async fn link_within(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        quota: Quota,
    ) -> Result<()> {
        let size = edge_size(from, to, kind, attrs);
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
            size,
        };
        let key = edge_key(tenant, from, to, kind);
        let body = with_key(&key, &edge)?;
        for _ in 0..MAX_ATTEMPTS {
            let (key, body) = (&key, body.clone());
            let step = self
                .in_transaction(&[EDGES, RECORDS], |id| async move {
                    let edges = self.edges.clone_with_transaction(id.clone()).map_err(backend)?;
                    let records = self.records.clone_with_transaction(id).map_err(backend)?;
                    let mut meter = self.meter(&records, tenant).await?;
                    let old = read::<StoredEdge>(&edges, key).await?;
                    meter.add(size, u64::from(old.is_none()));
                    meter.remove(old.map_or(0, |(_, e)| e.size), 0);
                    // `overwrite=true`: a replace-insert.
                    let options = InsertOptions::builder().overwrite(true).wait_for_sync(true).build();
                    match edges.create_document(body, options).await {
                        Ok(_) => {}
                        Err(e) if lost_race(&e) => return Ok(Step::Retry),
                        Err(e) => return Err(backend(e)),
                    }
                    meter.commit(&records, quota).await
                })
                .await?;
            if let Step::Done(()) = step {
                return Ok(());
            }
        }
        Err(too_busy("link"))
    }

    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>> {
        let Some((_, e)) = read::<StoredEdge>(&self.edges, &edge_key(tenant, from, to, kind)).await? else {
            return Ok(None);
        };
        Ok(Some(Edge { from: e.from, to: e.to, kind: e.kind, attrs: e.attrs }))
    }

    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        let key = edge_key(tenant, from, to, kind);
        for _ in 0..MAX_ATTEMPTS {
            let key = &key;
            let step = self
                .in_transaction(&[EDGES, RECORDS], |id| async move {
                    let edges = self.edges.clone_with_transaction(id.clone()).map_err(backend)?;
                    let records = self.records.clone_with_transaction(id).map_err(backend)?;
                    let mut meter = self.meter(&records, tenant).await?;
                    let Some((rev, old)) = read::<StoredEdge>(&edges, key).await? else {
                        return Ok(Step::Done(false));
                    };
                    match edges.remove_document::<Value>(key, RemoveOptions::default(), Some(rev)).await {
                        Ok(_) => {}
                        Err(e) if lost_race(&e) => return Ok(Step::Retry),
                        Err(e) if is_not_found(&e) => return Ok(Step::Done(false)),
                        Err(e) => return Err(backend(e)),
                    }
                    meter.remove(old.size, 1);
                    Ok(match meter.commit(&records, Quota::NONE).await? {
                        Step::Done(()) => Step::Done(true),
                        Step::Retry => Step::Retry,
                    })
                })
                .await?;
            if let Step::Done(existed) = step {
                return Ok(existed);
            }
        }
        Err(too_busy("unlink"))
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
        let v = vertex(tenant, agent);
        let mut edges = Vec::new();
        let mut bytes = 0usize;
        if limit > 0 && matches!(direction, Direction::Outgoing | Direction::Both) {
            let vars = vec![
                ("vertex", json!(v)),
                ("tenant", json!(tenant)),
                ("kind", json!(kind)),
                ("limit", json!(limit)),
                ("budget", json!(max_bytes)),
            ];
            if !take_within(&mut edges, self.query::<Row>(OUTGOING, vars).await?, &mut bytes) {
                return Ok(edges);
            }
        }
        let room = limit.saturating_sub(edges.len());
        // What the outgoing edges left of the budget (the first incoming edge of an empty
        // answer always fits).
        let budget = if edges.is_empty() { max_bytes } else { max_bytes.saturating_sub(bytes) };
        if room > 0 && budget > 0 && matches!(direction, Direction::Incoming | Direction::Both) {
            // With both directions a self-loop was listed as outgoing already.
            let skip = if direction == Direction::Both { v.clone() } else { String::new() };
            let vars = vec![
                ("vertex", json!(v)),
                ("tenant", json!(tenant)),
                ("kind", json!(kind)),
                ("skip", json!(skip)),
                ("limit", json!(room)),
                ("budget", json!(budget)),
            ];
            let rows = self.query::<Row>(INCOMING, vars).await?;
            // The server lets the first row through whatever its size; past outgoing
            // edges it must fit in what is left.
            let first_fits = rows.first().and_then(|r| r.attrs.as_ref().map(|a| (r, a))).is_some_and(|(r, a)| {
                edges.is_empty()
                    || usize::try_from(edge_size(&r.from, &r.to, &r.kind, a)).unwrap_or(usize::MAX) <= budget
            });
            if first_fits {
                take_within(&mut edges, rows, &mut bytes);
            }
        }
        Ok(edges)
    }

    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        #[derive(Deserialize)]
        struct Removed {
            n: u64,
            bytes: Option<u64>,
        }
        let r: Vec<Removed> = self
            .query(
                "LET removed = (FOR e IN cortex_edges FILTER e.tenant == @tenant \
                 AND (e._from == @vertex OR e._to == @vertex) \
                 REMOVE e IN cortex_edges RETURN OLD.size) RETURN { n: LENGTH(removed), bytes: SUM(removed) }",
                vec![("tenant", json!(tenant)), ("vertex", json!(vertex(tenant, agent)))],
            )
            .await?;
        let Some(r) = r.first() else { return Ok(0) };
        self.release(tenant, r.bytes.unwrap_or(0), r.n).await?;
        Ok(r.n)
    }
}
