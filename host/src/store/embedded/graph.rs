//! Embedded graph edges: two tables, one per direction, written together.
//!
//! `edges_out` maps `tenant | from | kind | to` to the attributes (JSON text) and
//! `edges_in` maps `tenant | to | kind | from` to nothing. Tenant and agent are
//! length-prefixed (exact prefixes, no overlap between tenants); the kind is written in an
//! order-preserving terminated form (`0x00` -> `0x00 0xFF`, then `0x00`) and the other
//! agent takes the rest of the key, so a range scan yields edges sorted by
//! `(kind, other agent)` in byte order, and a kind prefix never matches a longer kind.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{EDGE_COUNT, EmbeddedStore, USAGE, add_bytes, backend, bytes_of, keys_with_prefix, push_part};
use crate::store::{Direction, Edge, GraphStore, Quota, Result, StoreError, Usage, edge_size};

pub(super) const OUT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("edges_out");
pub(super) const IN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("edges_in");

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(OUT).map_err(backend)?;
    txn.open_table(IN).map_err(backend)?;
    Ok(())
}

/// `tenant | agent |`: every edge of `agent` in one direction.
fn agent_prefix(tenant: &str, agent: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + tenant.len() + agent.len());
    push_part(&mut k, tenant.as_bytes());
    push_part(&mut k, agent.as_bytes());
    k
}

fn push_kind(buf: &mut Vec<u8>, kind: &str) {
    for &b in kind.as_bytes() {
        buf.push(b);
        if b == 0 {
            buf.push(0xFF);
        }
    }
    buf.push(0);
}

/// Split `kind-encoded ++ other` (the key after the agent prefix).
fn split_kind(rest: &[u8]) -> Option<(String, String)> {
    let mut kind = Vec::new();
    let mut i = 0;
    loop {
        let b = *rest.get(i)?;
        if b == 0 {
            if rest.get(i + 1) == Some(&0xFF) {
                kind.push(0);
                i += 2;
                continue;
            }
            break;
        }
        kind.push(b);
        i += 1;
    }
    let other = rest.get(i + 1..)?;
    Some((String::from_utf8(kind).ok()?, String::from_utf8(other.to_vec()).ok()?))
}

fn edge_key(tenant: &str, agent: &str, kind: &str, other: &str) -> Vec<u8> {
    let mut k = agent_prefix(tenant, agent);
    push_kind(&mut k, kind);
    k.extend_from_slice(other.as_bytes());
    k
}

/// `(kind, other, value)` of the edges of `agent` in one table, of one kind or all.
fn scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    tenant: &str,
    agent: &str,
    kind: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, String, Vec<u8>)>> {
    scan_bounded(table, tenant, agent, kind, limit, usize::MAX)
}

/// [`scan`], stopping before the edge whose key and value would take the result past
/// `max_bytes` (the first edge always fits).
fn scan_bounded<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    tenant: &str,
    agent: &str,
    kind: Option<&str>,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<(String, String, Vec<u8>)>> {
    let base = agent_prefix(tenant, agent);
    let mut want = base.clone();
    if let Some(kind) = kind {
        push_kind(&mut want, kind);
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for item in table.range::<&[u8]>(want.as_slice()..).map_err(backend)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(backend)?;
        let k = k.value();
        if !k.starts_with(&want) {
            break;
        }
        let size = k.len().saturating_add(v.value().len());
        if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
            break;
        }
        bytes = bytes.saturating_add(size);
        let (kind, other) = split_kind(&k[base.len()..])
            .ok_or_else(|| StoreError::Corrupted(format!("an edge key of {tenant:?} does not decode")))?;
        out.push((kind, other, v.value().to_vec()));
    }
    Ok(out)
}

/// Remove every edge of a tenant.
pub(super) fn purge(txn: &redb::WriteTransaction, tenant: &str) -> Result<()> {
    let mut prefix = Vec::new();
    push_part(&mut prefix, tenant.as_bytes());
    for def in [OUT, IN] {
        let mut table = txn.open_table(def).map_err(backend)?;
        for k in keys_with_prefix(&table, &prefix)? {
            table.remove(k.as_slice()).map_err(backend)?;
        }
    }
    txn.open_table(EDGE_COUNT).map_err(backend)?.remove(tenant).map_err(backend)?;
    Ok(())
}

fn attrs_text(tenant: &str, raw: Vec<u8>) -> Result<String> {
    String::from_utf8(raw).map_err(|_| StoreError::Corrupted(format!("edge attributes of {tenant:?} are not UTF-8")))
}

#[async_trait::async_trait]
impl GraphStore for EmbeddedStore {
    async fn link_within(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        kind: &str,
        attrs: &str,
        quota: Quota,
    ) -> Result<()> {
        let out_key = edge_key(tenant, from, kind, to);
        let in_key = edge_key(tenant, to, kind, from);
        let names = edge_size(from, to, kind, "");
        let (tenant, attrs) = (tenant.to_owned(), attrs.to_owned());
        self.write_txn(move |txn| {
            let mut out = txn.open_table(OUT).map_err(backend)?;
            let mut usage = txn.open_table(USAGE).map_err(backend)?;
            let mut count = txn.open_table(EDGE_COUNT).map_err(backend)?;
            let before = Usage { bytes: bytes_of(&usage, &tenant)?, edges: bytes_of(&count, &tenant)? };
            let old = out.insert(out_key.as_slice(), attrs.as_bytes()).map_err(backend)?;
            let old_size = old.as_ref().map(|o| names + o.value().len() as u64);
            drop(old);
            add_bytes(&mut usage, &tenant, names + attrs.len() as u64, old_size.unwrap_or(0))?;
            add_bytes(&mut count, &tenant, u64::from(old_size.is_none()), 0)?;
            let after = Usage { bytes: bytes_of(&usage, &tenant)?, edges: bytes_of(&count, &tenant)? };
            quota.check(before, after)?;
            txn.open_table(IN).map_err(backend)?.insert(in_key.as_slice(), [].as_slice()).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn edge(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<Option<Edge>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let out = txn.open_table(OUT).map_err(backend)?;
        let Some(raw) = out.get(edge_key(tenant, from, kind, to).as_slice()).map_err(backend)? else {
            return Ok(None);
        };
        let attrs = attrs_text(tenant, raw.value().to_vec())?;
        Ok(Some(Edge { from: from.to_owned(), to: to.to_owned(), kind: kind.to_owned(), attrs }))
    }

    async fn unlink(&self, tenant: &str, from: &str, to: &str, kind: &str) -> Result<bool> {
        let out_key = edge_key(tenant, from, kind, to);
        let in_key = edge_key(tenant, to, kind, from);
        let names = edge_size(from, to, kind, "");
        let tenant = tenant.to_owned();
        self.write_txn(move |txn| {
            let mut out = txn.open_table(OUT).map_err(backend)?;
            let Some(old) = out.remove(out_key.as_slice()).map_err(backend)? else { return Ok(false) };
            let size = names + old.value().len() as u64;
            drop(old);
            add_bytes(&mut txn.open_table(USAGE).map_err(backend)?, &tenant, 0, size)?;
            add_bytes(&mut txn.open_table(EDGE_COUNT).map_err(backend)?, &tenant, 0, 1)?;
            txn.open_table(IN).map_err(backend)?.remove(in_key.as_slice()).map_err(backend)?;
            Ok(true)
        })
        .await
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
        let (tenant, agent, kind) = (tenant.to_owned(), agent.to_owned(), kind.map(str::to_owned));
        self.read(move |txn| neighbours_in(txn, &tenant, &agent, kind.as_deref(), direction, limit, max_bytes)).await
    }

    async fn remove_agent_edges(&self, tenant: &str, agent: &str) -> Result<u64> {
        let (tenant, agent) = (tenant.to_owned(), agent.to_owned());
        self.write_txn(move |txn| {
            let mut out = txn.open_table(OUT).map_err(backend)?;
            let mut incoming = txn.open_table(IN).map_err(backend)?;
            let outgoing = scan(&out, &tenant, &agent, None, usize::MAX)?;
            let arriving = scan(&incoming, &tenant, &agent, None, usize::MAX)?;
            let mut removed = 0;
            let mut bytes = 0;
            for (kind, to, attrs) in &outgoing {
                out.remove(edge_key(&tenant, &agent, kind, to).as_slice()).map_err(backend)?;
                incoming.remove(edge_key(&tenant, to, kind, &agent).as_slice()).map_err(backend)?;
                removed += 1;
                bytes += edge_size(&agent, to, kind, "") + attrs.len() as u64;
            }
            for (kind, from, _) in &arriving {
                if *from == agent {
                    continue; // a self-loop, removed above
                }
                let old = out.remove(edge_key(&tenant, from, kind, &agent).as_slice()).map_err(backend)?;
                bytes += edge_size(from, &agent, kind, "") + old.map_or(0, |o| o.value().len() as u64);
                incoming.remove(edge_key(&tenant, &agent, kind, from).as_slice()).map_err(backend)?;
                removed += 1;
            }
            add_bytes(&mut txn.open_table(USAGE).map_err(backend)?, &tenant, 0, bytes)?;
            add_bytes(&mut txn.open_table(EDGE_COUNT).map_err(backend)?, &tenant, 0, removed)?;
            Ok(removed)
        })
        .await
    }
}

/// The edges of `agent` in `direction`: at most `limit`, and at most `max_bytes` of keys
/// and attributes (at least one edge).
fn neighbours_in(
    txn: &redb::ReadTransaction,
    tenant: &str,
    agent: &str,
    kind: Option<&str>,
    direction: Direction,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Edge>> {
    let mut edges = Vec::new();
    let mut bytes = 0usize;
    let mut budget_spent = false;
    if matches!(direction, Direction::Outgoing | Direction::Both) {
        let out = txn.open_table(OUT).map_err(backend)?;
        let found = scan_bounded(&out, tenant, agent, kind, limit, max_bytes)?;
        for (kind, to, attrs) in found {
            bytes = bytes.saturating_add(kind.len() + to.len() + attrs.len());
            let attrs = attrs_text(tenant, attrs)?;
            edges.push(Edge { from: agent.to_owned(), to, kind, attrs });
        }
        // The scan stopped early for the budget if a next edge would not fit: a rough
        // test is enough here, the incoming pass re-checks every edge it adds.
        budget_spent = bytes >= max_bytes;
    }
    if !budget_spent && matches!(direction, Direction::Incoming | Direction::Both) {
        let incoming = txn.open_table(IN).map_err(backend)?;
        let out = txn.open_table(OUT).map_err(backend)?;
        // A self-loop was listed as outgoing already: fetch enough to skip it.
        let room = limit.saturating_sub(edges.len());
        let extra = usize::from(direction == Direction::Both);
        for (kind, from, _) in scan(&incoming, tenant, agent, kind, room.saturating_add(extra))? {
            if edges.len() >= limit {
                break;
            }
            if direction == Direction::Both && from == agent {
                continue;
            }
            let raw = out.get(edge_key(tenant, &from, &kind, agent).as_slice()).map_err(backend)?;
            let raw = raw.ok_or_else(|| {
                StoreError::Corrupted(format!("edge {from:?} -> {agent:?} of {tenant:?} has no outgoing half"))
            })?;
            let size = kind.len() + from.len() + raw.value().len();
            if !edges.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            let attrs = attrs_text(tenant, raw.value().to_vec())?;
            edges.push(Edge { from, to: agent.to_owned(), kind, attrs });
        }
    }
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_sort_in_byte_order_and_never_prefix_each_other() {
        let mut keys: Vec<Vec<u8>> =
            ["b", "a", "ab", "a\0", ""].iter().map(|k| edge_key("t", "x", k, "other")).collect();
        keys.sort();
        let kinds: Vec<String> =
            keys.iter().map(|k| split_kind(&k[agent_prefix("t", "x").len()..]).unwrap().0).collect();
        assert_eq!(kinds, ["", "a", "a\0", "ab", "b"]);
        let mut a = agent_prefix("t", "x");
        push_kind(&mut a, "a");
        assert!(!edge_key("t", "x", "ab", "y").starts_with(&a));
        assert_eq!(
            split_kind(&edge_key("t", "x", "k\0", "y:z")[agent_prefix("t", "x").len()..]).unwrap(),
            ("k\0".into(), "y:z".into())
        );
    }
}
