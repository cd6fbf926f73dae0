//! `order-pricing` (world `agent`): prices the orders of the order pipeline (see
//! `plugins/README.md`).
//!
//! **Takes** (`handle`), as text:
//! - `price:<ID>` (a message from `order-intake`): if `orders/<ID>` is `received`, computes
//!   its total from the price table and moves it, with one compare-and-swap write, to
//!   `priced` with `"total_cents"`, or to `rejected` with a `"reason"` when a SKU has no
//!   price; appends the new status to `"history"`. A priced order's id is then published
//!   to the topic (config `topic`). Returns `priced` or `rejected`. Safe to deliver twice:
//!   an order already `priced` is published again (a crash may have come between the write
//!   and the publish; fulfilment ignores an order it has shipped), a `fulfilled` or
//!   `rejected` one is left alone (returns its status).
//! - `quote:<ID>` (a call from `order-fulfilment`): the order's total at today's prices,
//!   `{"order": ID, "total_cents": N}`, without writing anything.
//!
//! - as a workflow step (`plugins/order-workflow.json`; the host sets `cortex.workflow.run`):
//!   `{"order": ID}`, priced as `price:<ID>` is, but nothing is published (the workflow
//!   charges and ships the order next); answers `{"order": ID, "status": "priced",
//!   "total_cents": N}` or `{"order": ID, "status": "rejected", "reason": ...}`
//!   ([`order_common::step_answer`]).
//!
//! Errors: `bad-input` (unknown command or bad id), `unknown-order` (no `orders/<ID>`),
//! `unknown-sku` (a quote for an order with an unpriced SKU), `invalid-state` (a status the
//! pipeline does not know), `bad-config`.
//!
//! **Config:** `price.<SKU>` = price in cents (a non-negative integer; `init` refuses
//! anything else with `bad-config`); `topic` = where priced orders go (default
//! `orders.priced`); `next` = downstream agents (comma-separated), linked in the graph by
//! `init` (`-feeds->`, attributes `{"via":"publish","topic":TOPIC}`; an agent that does
//! not exist fails `init` with `unknown-downstream`).
//!
//! The order document ([`order_common::Order`]), its statuses, the id check and the graph
//! links of `init` ([`order_common::link_downstream`]) come from `order-common`, shared
//! with the other stages.

use std::collections::BTreeMap;

use cortex_agent::documents::{self, StoreError};
use cortex_agent::{Agent, AgentError, messaging};
use order_common::{
    FULFILLED, Item, MAX_ATTEMPTS, ORDERS, PRICED, RECEIVED, REJECTED, check_id, config_value, in_workflow,
    kept_changing, link_downstream, load, step_answer, step_order,
};
use serde_json::json;

struct OrderPricing;

/// Where priced orders are published unless config `topic` says otherwise.
const DEFAULT_TOPIC: &str = "orders.priced";
/// Config keys of the price table start with this.
const PRICE_PREFIX: &str = "price.";

/// SKU -> cents, from `price.<SKU>` config entries.
fn price_table(config: &[(String, String)]) -> Result<BTreeMap<String, u64>, AgentError> {
    let mut table = BTreeMap::new();
    for (key, value) in config {
        let Some(sku) = key.strip_prefix(PRICE_PREFIX) else { continue };
        let cents = value
            .trim()
            .parse::<u64>()
            .map_err(|e| AgentError::new("bad-config", format!("{key} = {value:?} is not a price in cents: {e}")))?;
        table.insert(sku.to_owned(), cents);
    }
    Ok(table)
}

/// The order's total, or why it cannot be priced.
fn total(items: &[Item], prices: &BTreeMap<String, u64>) -> Result<u64, String> {
    let mut sum = 0u64;
    for item in items {
        let price = prices.get(&item.sku).ok_or_else(|| format!("unknown sku {:?}", item.sku))?;
        sum = price
            .checked_mul(item.qty)
            .and_then(|line| sum.checked_add(line))
            .ok_or_else(|| "total overflows".to_owned())?;
    }
    Ok(sum)
}

/// Publishes a priced order's id to the topic (config `topic`).
fn publish(id: &str) -> Result<(), AgentError> {
    let topic = cortex_agent::config("topic").unwrap_or_else(|| DEFAULT_TOPIC.to_owned());
    messaging::publish(&topic, id.as_bytes())?;
    Ok(())
}

/// `price:<ID>`: received -> priced (then publish, if `publish`) or rejected.
fn price(id: &str, publish_priced: bool) -> Result<&'static str, AgentError> {
    let prices = price_table(&cortex_agent::config_all())?;
    for _ in 0..MAX_ATTEMPTS {
        let (mut order, revision) = load(id)?;
        match order.status.as_str() {
            RECEIVED => {}
            PRICED => {
                if publish_priced {
                    publish(id)?;
                }
                return Ok(PRICED);
            }
            FULFILLED => return Ok(FULFILLED),
            REJECTED => return Ok(REJECTED),
            other => {
                return Err(AgentError::new("invalid-state", format!("order {id} is {other:?}, not {RECEIVED:?}")));
            }
        }
        let status = match total(&order.items, &prices) {
            Ok(cents) => {
                order.total_cents = Some(cents);
                PRICED
            }
            Err(reason) => {
                order.reason = Some(reason);
                REJECTED
            }
        };
        order.advance(status);
        match documents::put_json(ORDERS, id, &order, Some(revision)) {
            Ok(_) => {
                if status == PRICED && publish_priced {
                    publish(id)?;
                }
                return Ok(status);
            }
            Err(documents::Error::Store(StoreError::Conflict(_))) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(kept_changing(id))
}

/// `quote:<ID>`: the order's total at the prices in force.
fn quote(id: &str) -> Result<String, AgentError> {
    let prices = price_table(&cortex_agent::config_all())?;
    let (order, _) = load(id)?;
    let cents = total(&order.items, &prices).map_err(|reason| AgentError::new("unknown-sku", reason))?;
    Ok(json!({ "order": id, "total_cents": cents }).to_string())
}

impl Agent for OrderPricing {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        price_table(&config)?;
        let topic = config_value(&config, "topic").unwrap_or(DEFAULT_TOPIC);
        let attributes = json!({ "via": "publish", "topic": topic }).to_string();
        link_downstream(&config, &attributes)
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        if in_workflow() {
            let id = step_order(&input)?;
            price(&id, false)?;
            return step_answer(&id);
        }
        let input = String::from_utf8(input)?;
        let (verb, id) = input.split_once(':').unwrap_or((input.as_str(), ""));
        let reply = match verb {
            "price" => price(check_id(id)?, true)?.to_owned(),
            "quote" => quote(check_id(id)?)?,
            other => return Err(AgentError::bad_input(format!("unknown command {other:?} (price:ID or quote:ID)"))),
        };
        Ok(Some(reply.into_bytes()))
    }
}

cortex_agent::export_agent!(OrderPricing);
