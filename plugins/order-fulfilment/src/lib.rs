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
//! **As a workflow step** (`plugins/order-workflow.json`; the host sets
//! `cortex.workflow.run`): takes `{"order": ID}` and does the same, answering `{"order":
//! ID, "status": S}` ([`order_common::step_answer`]).
//!
//! Errors: `bad-input` (not an order id), `unknown-order`, `not-priced`, `invalid-state`,
//! `cannot-ship` (an item's SKU is listed in config `unshippable`; nothing is written),
//! `bad-quote` (the reply of pricing is not a quote for this order), `bad-config`, and the
//! pricing agent's own errors, passed through by `call`.
//!
//! **Config:** `pricing` = the agent that answers quotes (required); `unshippable` = SKUs
//! that cannot be shipped (comma-separated, optional): an order with one fails with
//! `cannot-ship` (the workflow version then refunds its payment).
//!
//! The order document ([`order_common::Order`]), its statuses, the id check and the config
//! lookups come from `order-common`, shared with the other stages.

use cortex_agent::documents::{self, Op, PutOp, StoreError};
use cortex_agent::{Agent, AgentError, messaging};
use order_common::{
    FULFILLED, Item, MAX_ATTEMPTS, ORDERS, PRICED, RECEIVED, REJECTED, check_id, in_workflow, kept_changing, load,
    require_config, required_config, step_answer, step_order,
};
use serde::{Deserialize, Serialize};

struct OrderFulfilment;

/// Where shipments live: `shipments/<id>`, created when the order is fulfilled.
const SHIPMENTS: &str = "shipments";
/// The config key naming the agent that answers quotes.
const PRICING: &str = "pricing";
/// The config key listing SKUs that cannot be shipped (comma-separated).
const UNSHIPPABLE: &str = "unshippable";
/// What config `pricing` names, for its error.
const PRICING_IS: &str = "the quoting agent";

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

/// Asks the pricing agent for the order's final total.
fn final_quote(id: &str) -> Result<u64, AgentError> {
    let pricing = required_config(PRICING, PRICING_IS)?;
    let reply = messaging::call(&pricing, format!("quote:{id}").as_bytes())?
        .ok_or_else(|| AgentError::new("bad-quote", format!("{pricing} answered nothing to quote:{id}")))?;
    let quote: Quote = serde_json::from_slice(&reply)
        .map_err(|e| AgentError::new("bad-quote", format!("{pricing} answered quote:{id} with a non-quote: {e}")))?;
    if quote.order != id {
        return Err(AgentError::new("bad-quote", format!("asked for {id}, got a quote for {}", quote.order)));
    }
    Ok(quote.total_cents)
}

/// `<ID>`: priced -> fulfilled, with its shipment, at the final quote.
fn fulfil(id: &str) -> Result<&'static str, AgentError> {
    for _ in 0..MAX_ATTEMPTS {
        let (mut order, revision) = load(id)?;
        match order.status.as_str() {
            PRICED => {}
            FULFILLED => return Ok(FULFILLED),
            REJECTED => return Ok(REJECTED),
            RECEIVED => return Err(AgentError::new("not-priced", format!("order {id} is not priced yet"))),
            other => return Err(AgentError::new("invalid-state", format!("order {id} is {other:?}"))),
        }
        let unshippable = cortex_agent::config(UNSHIPPABLE).unwrap_or_default();
        if let Some(item) = order.items.iter().find(|i| unshippable.split(',').any(|s| s.trim() == i.sku)) {
            return Err(AgentError::new("cannot-ship", format!("order {id}: {} cannot be shipped", item.sku)));
        }
        let total_cents = final_quote(id)?;
        let shipment = Shipment { order: id, customer: &order.customer, items: &order.items, total_cents };
        let shipment = serde_json::to_string(&shipment)?;
        order.advance(FULFILLED);
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
    Err(kept_changing(id))
}

impl Agent for OrderFulfilment {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        require_config(&config, PRICING, PRICING_IS)
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        if in_workflow() {
            let id = step_order(&input)?;
            fulfil(&id)?;
            return step_answer(&id);
        }
        let input = String::from_utf8(input)?;
        let status = fulfil(check_id(input.trim())?)?;
        Ok(Some(status.as_bytes().to_vec()))
    }
}

cortex_agent::export_agent!(OrderFulfilment);
