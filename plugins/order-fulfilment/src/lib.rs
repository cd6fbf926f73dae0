//! `order-fulfilment` (world `agent`): ships the priced orders of the order pipeline (see
//! `plugins/README.md`). Deploy it subscribed to the pricing agent's topic
//! (`"subscriptions": ["orders.priced"]`).
//!
//! **Takes** (`handle`) an order id (the body pricing publishes). If `orders/<ID>` is
//! `priced`, it asks the pricing agent (config `pricing`) for a final quote with
//! `messaging::call` (`quote:<ID>`, answered `{"order": ID, "total_cents": N}`), then in
//! one transaction moves the order to `fulfilled` (appending it to `"history"`, with the
//! revision it read) and creates `shipments/<ID>` = `{"order": ID, "customer": ...,
//! "items": [...], "total_cents": N}` (which must not exist). Returns `fulfilled`.
//!
//! **Safe to deliver twice:** an order already `fulfilled` (or `rejected`) is left alone
//! and its status returned; a concurrent delivery that loses the race re-reads and finds it
//! fulfilled. An order still `received` is an error (`not-priced`), so the mailbox delivers
//! it again later.
//!
//! Errors: `bad-input` (not an order id), `unknown-order`, `not-priced`, `invalid-state`,
//! `bad-quote` (the reply of pricing is not a quote for this order), `bad-config`, and the
//! pricing agent's own errors, passed through by `call`.
//!
//! **Config:** `pricing` = the agent that answers quotes (required).

use cortex_agent::documents::{self, Op, PutOp, StoreError};
use cortex_agent::{Agent, AgentError, messaging};
use serde::{Deserialize, Serialize};

struct OrderFulfilment;

const ORDERS: &str = "orders";
const SHIPMENTS: &str = "shipments";
const RECEIVED: &str = "received";
const PRICED: &str = "priced";
const REJECTED: &str = "rejected";
const FULFILLED: &str = "fulfilled";
/// Read-modify-write rounds before giving up on a contended order (the mailbox retries).
const MAX_ATTEMPTS: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Item {
    sku: String,
    qty: u64,
}

/// An order as stored in `orders/<id>`.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: String,
    customer: String,
    items: Vec<Item>,
    status: String,
    #[serde(default)]
    history: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total_cents: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// What `quote:<ID>` answers.
#[derive(Debug, Deserialize)]
struct Quote {
    order: String,
    total_cents: u64,
}

/// `shipments/<id>`.
#[derive(Debug, Serialize)]
struct Shipment<'a> {
    order: &'a str,
    customer: &'a str,
    items: &'a [Item],
    total_cents: u64,
}

/// An order id as `order-intake` accepts them: `[A-Za-z0-9._-]{1,64}`.
fn check_id(id: &str) -> Result<&str, AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(id) } else { Err(AgentError::bad_input(format!("bad order id {id:?}"))) }
}

/// Asks the pricing agent for the order's final total.
fn final_quote(id: &str) -> Result<u64, AgentError> {
    let pricing = cortex_agent::config("pricing")
        .ok_or_else(|| AgentError::new("bad-config", "config `pricing` (the quoting agent) is not set"))?;
    let reply = messaging::call(&pricing, format!("quote:{id}").as_bytes())?
        .ok_or_else(|| AgentError::new("bad-quote", format!("{pricing} answered nothing to quote:{id}")))?;
    let quote: Quote = serde_json::from_slice(&reply)
        .map_err(|e| AgentError::new("bad-quote", format!("{pricing} answered quote:{id} with a non-quote: {e}")))?;
    if quote.order != id {
        return Err(AgentError::new("bad-quote", format!("asked for {id}, got a quote for {}", quote.order)));
    }
    Ok(quote.total_cents)
}

fn fulfil(id: &str) -> Result<&'static str, AgentError> {
    for _ in 0..MAX_ATTEMPTS {
        let (mut order, revision) = documents::get_json::<Order>(ORDERS, id)?
            .ok_or_else(|| AgentError::new("unknown-order", format!("no order {id:?}")))?;
        match order.status.as_str() {
            PRICED => {}
            FULFILLED => return Ok(FULFILLED),
            REJECTED => return Ok(REJECTED),
            RECEIVED => return Err(AgentError::new("not-priced", format!("order {id} is not priced yet"))),
            other => return Err(AgentError::new("invalid-state", format!("order {id} is {other:?}"))),
        }
        let total_cents = final_quote(id)?;
        let shipment = Shipment { order: id, customer: &order.customer, items: &order.items, total_cents };
        let shipment = serde_json::to_string(&shipment)?;
        order.status = FULFILLED.to_owned();
        order.history.push(FULFILLED.to_owned());
        let ops = [
            Op::Put(PutOp {
                collection: ORDERS.to_owned(),
                key: id.to_owned(),
                value: serde_json::to_string(&order)?,
                expected: Some(revision),
            }),
            Op::Put(PutOp { collection: SHIPMENTS.to_owned(), key: id.to_owned(), value: shipment, expected: Some(0) }),
        ];
        match documents::transact(&ops) {
            Ok(_) => return Ok(FULFILLED),
            // Another delivery moved the order (or shipped it): read again.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AgentError::new("conflict", format!("order {id} kept changing; deliver again")))
}

impl Agent for OrderFulfilment {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        if config.iter().any(|(k, v)| k == "pricing" && !v.trim().is_empty()) {
            Ok(())
        } else {
            Err(AgentError::new("bad-config", "config `pricing` (the quoting agent) is not set"))
        }
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let input = String::from_utf8(input)?;
        let status = fulfil(check_id(input.trim())?)?;
        Ok(Some(status.as_bytes().to_vec()))
    }
}

cortex_agent::export_agent!(OrderFulfilment);
