//! `order-auditor` (world `agent`): keeps an audit record of every order of the order
//! pipeline (see `plugins/README.md`). Deploy it watching the orders:
//! `"watches": [{"collection": "orders", "prefix": ""}]`.
//!
//! **On change** (`on-change`): for each order named in the batch (events of other
//! collections are ignored) it reads `orders/<ID>` as it is now and merges what it sees
//! into `audit/<ID>` = `{"statuses": [...], "revision": N, "anomalies": [...]}`:
//! - `statuses`: the distinct statuses of the order, in the order they happened (taken from
//!   the order's `history`, so a status that came and went between two batches is not
//!   missed; `deleted` once the order is gone);
//! - `revision`: the highest revision of the order seen;
//! - `anomalies`: what breaks the pipeline's rules, one text each: a path other than
//!   `received -> priced -> fulfilled` or `received -> rejected` (or a prefix), a revision
//!   that is not the number of statuses (every pipeline write moves the status once, so a
//!   second run of a stage or a foreign write shows here), a `status` that is not the last
//!   of `history`, a document that is not an order.
//!
//! **Idempotent under redelivery:** the merge is a set union and a maximum, and a record
//! that would not change is not written, so the same batch delivered twice leaves the same
//! records (and writes nothing the second time). Each record is written with
//! compare-and-swap, retried on conflict.
//!
//! **Takes** (`handle`): `report` returns every audit record as one JSON object, order id
//! -> record (the test polls it to know when the pipeline is done). Anything else is
//! `bad-input`.
//!
//! **Config:** none.
//!
//! The legal paths ([`order_common::PATHS`]) and the orders collection come from
//! `order-common`, shared with the other stages.

use std::collections::BTreeMap;

use cortex_agent::documents::{self, StoreError};
use cortex_agent::{Agent, AgentError, ChangeEvent};
use order_common::{ORDERS, PATHS};
use serde::{Deserialize, Serialize};

struct OrderAuditor;

/// Where the audit records live: `audit/<id>`.
const AUDIT: &str = "audit";
/// The status recorded once an order is gone.
const DELETED: &str = "deleted";
/// Compare-and-swap rounds on one record before the batch fails (and is delivered again).
const MAX_ATTEMPTS: usize = 32;
/// Page size when listing the records.
const PAGE: u32 = 500;

/// `audit/<id>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    statuses: Vec<String>,
    revision: u64,
    anomalies: Vec<String>,
}

/// The fields of an order the auditor reads (not the whole `order_common::Order`: a
/// document that is not a whole order is still audited by its statuses).
#[derive(Debug, Deserialize)]
struct Seen {
    status: String,
    #[serde(default)]
    history: Vec<String>,
}

/// What one reading of `orders/<id>` shows, as a record to merge.
fn observe(id: &str) -> Result<Record, AgentError> {
    let Some(doc) = documents::get(ORDERS, id)? else {
        return Ok(Record { statuses: vec![DELETED.to_owned()], ..Record::default() });
    };
    let revision = doc.revision;
    let seen: Seen = match serde_json::from_str(&doc.value) {
        Ok(seen) => seen,
        Err(e) => {
            return Ok(Record {
                revision,
                anomalies: vec![format!("not an order at revision {revision}: {e}")],
                ..Record::default()
            });
        }
    };
    let history = if seen.history.is_empty() { vec![seen.status.clone()] } else { seen.history };
    let mut anomalies = Vec::new();
    if history.last() != Some(&seen.status) {
        anomalies.push(format!("status {:?} is not the last of its history at revision {revision}", seen.status));
    }
    let legal =
        PATHS.iter().any(|path| history.len() <= path.len() && history.iter().zip(path.iter()).all(|(h, p)| h == p));
    if !legal {
        anomalies.push(format!("illegal path {}", history.join(" -> ")));
    }
    if revision != history.len() as u64 {
        anomalies.push(format!("revision {revision} after {} status changes", history.len()));
    }
    Ok(Record { statuses: history, revision, anomalies })
}

/// `old` with what `new` adds: statuses and anomalies as ordered sets, the highest revision.
fn merge(old: &Record, new: &Record) -> Record {
    let mut merged = old.clone();
    for status in &new.statuses {
        if !merged.statuses.contains(status) {
            merged.statuses.push(status.clone());
        }
    }
    for anomaly in &new.anomalies {
        if !merged.anomalies.contains(anomaly) {
            merged.anomalies.push(anomaly.clone());
        }
    }
    merged.revision = merged.revision.max(new.revision);
    merged
}

/// Merges `seen` into `audit/<id>` with compare-and-swap; writes nothing if it adds nothing.
fn record(id: &str, seen: &Record) -> Result<(), AgentError> {
    for _ in 0..MAX_ATTEMPTS {
        let (old, revision) = match documents::get_json::<Record>(AUDIT, id)? {
            Some((old, revision)) => (old, revision),
            None => (Record::default(), 0),
        };
        let merged = merge(&old, seen);
        if revision != 0 && merged == old {
            return Ok(());
        }
        match documents::put_json(AUDIT, id, &merged, Some(revision)) {
            Ok(_) => return Ok(()),
            Err(documents::Error::Store(StoreError::Conflict(_))) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AgentError::new("conflict", format!("audit/{id} kept changing; deliver the batch again")))
}

/// Every audit record, order id -> record.
fn report() -> Result<String, AgentError> {
    let mut all = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = documents::list(AUDIT, "", PAGE, cursor.as_deref())?;
        for doc in page.documents {
            let record: serde_json::Value = serde_json::from_str(&doc.value)?;
            all.insert(doc.key, record);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(serde_json::to_string(&all)?)
}

impl Agent for OrderAuditor {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        match input.as_slice() {
            b"report" => Ok(Some(report()?.into_bytes())),
            _ => Err(AgentError::bad_input("the only command is `report`")),
        }
    }

    fn on_change(events: Vec<ChangeEvent>) -> Result<(), AgentError> {
        // Each order once per batch, in the order of its first event: reading it once shows
        // everything its events in the batch did.
        let mut ids: Vec<&str> = Vec::new();
        for event in events.iter().filter(|e| e.collection == ORDERS) {
            if !ids.contains(&event.key.as_str()) {
                ids.push(&event.key);
            }
        }
        for id in ids {
            record(id, &observe(id)?)?;
        }
        Ok(())
    }
}

cortex_agent::export_agent!(OrderAuditor);
