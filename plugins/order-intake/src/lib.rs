//! `order-intake` (world `agent`): the entry of the order pipeline (see `plugins/README.md`).
//!
//! **Takes** (`handle`) an order as JSON, `{"id": ID, "customer": TEXT, "items": [{"sku":
//! SKU, "qty": N}, ...]}`, and refuses a malformed one with one of these error codes:
//! `invalid-json` (not JSON, or not that shape; unknown fields are refused), `invalid-id`
//! (`ID` must match `[A-Za-z0-9._-]{1,64}`), `invalid-customer` (1 to 128 characters, no
//! control characters), `invalid-items` (1 to 100 items), `invalid-sku` (`[A-Za-z0-9._-]{1,64}`),
//! `invalid-qty` (1 to 10000).
//!
//! **Writes** `orders/<ID>` = the order with `"status": "received"` and `"history":
//! ["received"]`, created only if absent (compare-and-swap on revision 0), then sends
//! `price:<ID>` to the pricing agent (config `next`) with the idempotency key
//! `order:<ID>`. Returns `accepted`.
//!
//! **Idempotent:** an order whose id exists already starts no second run. If it is the same
//! order (customer and items equal) the answer is `duplicate`, and while it is still
//! `received` the message is sent again under the same idempotency key (delivered once by
//! the host; this heals a crash between the write and the send). A different order under
//! a used id is refused with `id-reused`.
//!
//! **Config:** `next` = the pricing agent (required). `init` links this agent to it in the
//! graph (`-feeds->`, attributes `{"via":"send"}`), removing `feeds` edges to agents no
//! longer named; a downstream agent that does not exist fails `init` with
//! `unknown-downstream`, so deploy downstream agents first.
//!
//! **As a workflow step** (`plugins/order-workflow.json`; the host sets
//! `cortex.workflow.run`): the same checks and the same write, but no message is sent (the
//! workflow prices the order next), and the answer is JSON, `{"order": ID, "status": S}`
//! ([`order_common::step_answer`]), for a new order and a duplicate alike.
//!
//! The order document ([`order_common::Order`]), the id and SKU rule, the config checks
//! and the graph links of `init` ([`order_common::link_downstream`]) come from
//! `order-common`, shared with the other stages.

use cortex_agent::documents::{self, StoreError};
use cortex_agent::{Agent, AgentError, messaging};
use order_common::{
    Item, NEXT, ORDERS, Order, RECEIVED, in_workflow, is_name, link_downstream, require_config, required_config,
    step_answer,
};
use serde::Deserialize;

struct OrderIntake;

/// Longest customer name, in characters.
const MAX_CUSTOMER: usize = 128;
/// Most items in one order.
const MAX_ITEMS: usize = 100;
/// Largest quantity of one item.
const MAX_QTY: u64 = 10_000;
/// What config `next` names, for its error.
const NEXT_IS: &str = "the pricing agent";

/// An order as submitted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submitted {
    id: String,
    customer: String,
    items: Vec<Item>,
}

/// Parses and checks a submitted order.
fn parse(input: &[u8]) -> Result<Submitted, AgentError> {
    let order: Submitted = serde_json::from_slice(input).map_err(|e| {
        AgentError::new("invalid-json", format!("not an order ({{\"id\",\"customer\",\"items\"}}): {e}"))
    })?;
    if !is_name(&order.id) {
        return Err(AgentError::new(
            "invalid-id",
            format!("order id {:?} must match [A-Za-z0-9._-]{{1,64}}", order.id),
        ));
    }
    let customer_len = order.customer.chars().count();
    if customer_len == 0 || customer_len > MAX_CUSTOMER || order.customer.chars().any(char::is_control) {
        return Err(AgentError::new(
            "invalid-customer",
            format!("customer must be 1 to {MAX_CUSTOMER} characters without control characters"),
        ));
    }
    if order.items.is_empty() || order.items.len() > MAX_ITEMS {
        return Err(AgentError::new(
            "invalid-items",
            format!("an order has 1 to {MAX_ITEMS} items, not {}", order.items.len()),
        ));
    }
    for (i, item) in order.items.iter().enumerate() {
        if !is_name(&item.sku) {
            return Err(AgentError::new(
                "invalid-sku",
                format!("items[{i}].sku {:?} must match [A-Za-z0-9._-]{{1,64}}", item.sku),
            ));
        }
        if item.qty == 0 || item.qty > MAX_QTY {
            return Err(AgentError::new(
                "invalid-qty",
                format!("items[{i}].qty must be 1 to {MAX_QTY}, not {}", item.qty),
            ));
        }
    }
    Ok(order)
}

/// Hands the order to pricing (config `next`); the key makes a repeated send of one order
/// a single delivery.
fn send_to_pricing(id: &str) -> Result<(), AgentError> {
    let next = required_config(NEXT, NEXT_IS)?;
    messaging::send(&next, format!("price:{id}").as_bytes(), Some(&format!("order:{id}")))?;
    Ok(())
}

impl Agent for OrderIntake {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        require_config(&config, NEXT, NEXT_IS)?;
        link_downstream(&config, r#"{"via":"send"}"#)
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let order = parse(&input)?;
        let workflow = in_workflow();
        let stored = Order::received(order.id.clone(), order.customer.clone(), order.items.clone());
        match documents::put_json(ORDERS, &order.id, &stored, Some(0)) {
            Ok(_) if workflow => step_answer(&order.id),
            Ok(_) => {
                send_to_pricing(&order.id)?;
                Ok(Some(b"accepted".to_vec()))
            }
            Err(documents::Error::Store(StoreError::Conflict(_))) => {
                let Some((existing, _)) = documents::get_json::<Order>(ORDERS, &order.id)? else {
                    // Deleted in between: let the client try again.
                    return Err(AgentError::new("conflict", format!("order {} changed meanwhile; retry", order.id)));
                };
                if existing.customer != order.customer || existing.items != order.items {
                    return Err(AgentError::new("id-reused", format!("order {} exists with other contents", order.id)));
                }
                if workflow {
                    return step_answer(&order.id);
                }
                if existing.status == RECEIVED {
                    send_to_pricing(&order.id)?;
                }
                Ok(Some(b"duplicate".to_vec()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

cortex_agent::export_agent!(OrderIntake);
