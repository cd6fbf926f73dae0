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

use cortex_agent::documents::{self, StoreError};
use cortex_agent::graph::{self, Direction};
use cortex_agent::{Agent, AgentError, messaging};
use serde::{Deserialize, Serialize};

struct OrderIntake;

/// Where orders live.
const ORDERS: &str = "orders";
/// The status an accepted order starts in.
const RECEIVED: &str = "received";
/// Longest order id and SKU.
const MAX_NAME: usize = 64;
/// Longest customer name, in characters.
const MAX_CUSTOMER: usize = 128;
/// Most items in one order.
const MAX_ITEMS: usize = 100;
/// Largest quantity of one item.
const MAX_QTY: u64 = 10_000;

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    sku: String,
    qty: u64,
}

/// An order as submitted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submitted {
    id: String,
    customer: String,
    items: Vec<Item>,
}

/// An order as stored in `orders/<id>` (the fields this agent cares about; the other
/// agents add `total_cents` or `reason`).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    id: String,
    customer: String,
    items: Vec<Item>,
    status: String,
    #[serde(default)]
    history: Vec<String>,
}

/// Whether `s` is a usable id or SKU: `[A-Za-z0-9._-]{1,64}`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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

/// The pricing agent, from the config in force.
fn next_agent() -> Result<String, AgentError> {
    cortex_agent::config("next")
        .ok_or_else(|| AgentError::new("bad-config", "config `next` (the pricing agent) is not set"))
}

/// Hands the order to pricing; the key makes a repeated send of one order a single delivery.
fn send_to_pricing(id: &str) -> Result<(), AgentError> {
    let next = next_agent()?;
    messaging::send(&next, format!("price:{id}").as_bytes(), Some(&format!("order:{id}")))?;
    Ok(())
}

/// Makes this agent's outgoing `feeds` edges match `next` (comma-separated agent names).
fn link_downstream(config: &[(String, String)], attributes: &str) -> Result<(), AgentError> {
    let me = cortex_agent::whoami().agent;
    let wanted: Vec<&str> = config
        .iter()
        .filter(|(k, _)| k == "next")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    for &next in &wanted {
        match graph::link(&me, next, "feeds", attributes) {
            Ok(()) => {}
            Err(graph::Error::UnknownAgent(detail)) => {
                return Err(AgentError::new(
                    "unknown-downstream",
                    format!("cannot link {me} -feeds-> {next}: {detail}"),
                ));
            }
            Err(other) => return Err(other.into()),
        }
    }
    // Only once every wanted edge is in: a refused config removes no edge.
    for edge in graph::neighbours(&me, Some("feeds"), Direction::Outgoing, 100)? {
        if !wanted.contains(&edge.to.as_str()) {
            graph::unlink(&me, &edge.to, "feeds")?;
        }
    }
    Ok(())
}

impl Agent for OrderIntake {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        if !config.iter().any(|(k, v)| k == "next" && !v.trim().is_empty()) {
            return Err(AgentError::new("bad-config", "config `next` (the pricing agent) is not set"));
        }
        link_downstream(&config, r#"{"via":"send"}"#)
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let order = parse(&input)?;
        let stored = Stored {
            id: order.id.clone(),
            customer: order.customer.clone(),
            items: order.items.clone(),
            status: RECEIVED.to_owned(),
            history: vec![RECEIVED.to_owned()],
        };
        match documents::put_json(ORDERS, &order.id, &stored, Some(0)) {
            Ok(_) => {
                send_to_pricing(&order.id)?;
                Ok(Some(b"accepted".to_vec()))
            }
            Err(documents::Error::Store(StoreError::Conflict(_))) => {
                let Some((existing, _)) = documents::get_json::<Stored>(ORDERS, &order.id)? else {
                    // Deleted in between: let the client try again.
                    return Err(AgentError::new("conflict", format!("order {} changed meanwhile; retry", order.id)));
                };
                if existing.customer != order.customer || existing.items != order.items {
                    return Err(AgentError::new("id-reused", format!("order {} exists with other contents", order.id)));
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
