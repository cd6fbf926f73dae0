//! `order-common`: what the four agents of the order pipeline (`order-intake`,
//! `order-pricing`, `order-fulfilment`, `order-auditor`; see `plugins/README.md`) share:
//! the order document and its statuses, the rule for order ids and SKUs, config lookups,
//! the graph links that `init` of intake and pricing makes, and what makes a stage usable
//! as a workflow step ([`in_workflow`], [`step_order`], [`step_answer`]).
//!
//! A plain library (an rlib, not a component): `tests/artifacts/build.rs` builds it as a
//! dependency of the agents and gives it no constant in `cortex-artifacts`. It calls the
//! SDK's imports but exports nothing; each agent still ends with its own
//! `cortex_agent::export_agent!`.

use cortex_agent::AgentError;
use cortex_agent::documents::{self, Revision};
use cortex_agent::graph::{self, Direction};
use serde::{Deserialize, Serialize};

/// Where orders live: `orders/<id>`, one document per order.
pub const ORDERS: &str = "orders";

/// The status an accepted order starts in (written by `order-intake`).
pub const RECEIVED: &str = "received";
/// A received order whose every SKU has a price; it carries `total_cents` (`order-pricing`).
pub const PRICED: &str = "priced";
/// A received order with a SKU without a price; it carries `reason` (`order-pricing`). Final.
pub const REJECTED: &str = "rejected";
/// A priced order that has shipped (`order-fulfilment`). Final.
pub const FULFILLED: &str = "fulfilled";

/// The paths an order may take; its `history` is always a prefix of one of them.
pub const PATHS: [&[&str]; 2] = [&[RECEIVED, PRICED, FULFILLED], &[RECEIVED, REJECTED]];

/// Longest order id or SKU, in bytes.
pub const MAX_NAME: usize = 64;

/// Read-modify-write rounds on one order before a stage gives up with `conflict` (the
/// mailbox then delivers the message again).
pub const MAX_ATTEMPTS: usize = 16;

/// The config key naming the agents a stage feeds (comma-separated), linked by
/// [`link_downstream`].
pub const NEXT: &str = "next";

/// One line of an order. Unknown fields are refused: intake refuses them in a submitted
/// order, and every order in `orders/` is written by intake with exactly these two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// What is ordered, `[A-Za-z0-9._-]{1,64}` (see [`is_name`]).
    pub sku: String,
    /// How many, at least 1.
    pub qty: u64,
}

/// An order as stored in `orders/<id>`. Unknown fields are ignored, and the optional ones
/// are left out when unset, so a `received` order is `{"id","customer","items","status",
/// "history"}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    /// The key of the document, `[A-Za-z0-9._-]{1,64}`.
    pub id: String,
    /// Who ordered.
    pub customer: String,
    /// The lines of the order, 1 or more.
    pub items: Vec<Item>,
    /// One of [`RECEIVED`], [`PRICED`], [`REJECTED`], [`FULFILLED`].
    pub status: String,
    /// Every status the order has had, oldest first; the last is `status`.
    #[serde(default)]
    pub history: Vec<String>,
    /// The total at the prices of pricing, once `priced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cents: Option<u64>,
    /// Why pricing rejected the order, once `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Order {
    /// A new order in status [`RECEIVED`], which is also its whole history.
    pub fn received(id: String, customer: String, items: Vec<Item>) -> Self {
        Self {
            id,
            customer,
            items,
            status: RECEIVED.to_owned(),
            history: vec![RECEIVED.to_owned()],
            total_cents: None,
            reason: None,
        }
    }

    /// Moves the order to `status`, appending it to the history.
    pub fn advance(&mut self, status: &str) {
        self.status = status.to_owned();
        self.history.push(status.to_owned());
    }
}

/// The config key the host sets (to the run id) when an agent runs as a workflow step.
pub const WORKFLOW_RUN: &str = "cortex.workflow.run";

/// Whether this invocation is a step of a workflow run (the host set [`WORKFLOW_RUN`]).
/// A stage then sends and publishes nothing, since the workflow moves the order on, and
/// answers JSON ([`step_answer`]); pricing and fulfilment take `{"order": ID}`
/// ([`step_order`]) instead of their text commands.
pub fn in_workflow() -> bool {
    cortex_agent::config(WORKFLOW_RUN).is_some()
}

/// The order id of a workflow step's input `{"order": ID}`; `bad-input` otherwise.
pub fn step_order(input: &[u8]) -> Result<String, AgentError> {
    #[derive(Deserialize)]
    struct Step {
        order: String,
    }
    let step: Step = serde_json::from_slice(input)
        .map_err(|e| AgentError::bad_input(format!("a workflow step takes {{\"order\": ID}}: {e}")))?;
    check_id(&step.order)?;
    Ok(step.order)
}

/// A stage's answer as a workflow step: `{"order": ID, "status": S}` from `orders/<id>`
/// as it is now, with `total_cents` once priced and `reason` once rejected.
pub fn step_answer(id: &str) -> Result<Option<Vec<u8>>, AgentError> {
    let (order, _) = load(id)?;
    let mut answer = serde_json::json!({ "order": order.id, "status": order.status });
    if let Some(cents) = order.total_cents {
        answer["total_cents"] = cents.into();
    }
    if let Some(reason) = order.reason {
        answer["reason"] = reason.into();
    }
    Ok(Some(serde_json::to_vec(&answer)?))
}

/// Whether `s` is a usable order id or SKU: `[A-Za-z0-9._-]{1,64}`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `id` if it is an order id as intake accepts them ([`is_name`]), else `bad-input`.
pub fn check_id(id: &str) -> Result<&str, AgentError> {
    if is_name(id) { Ok(id) } else { Err(AgentError::bad_input(format!("bad order id {id:?}"))) }
}

/// `orders/<id>` and its revision; `unknown-order` if there is none.
pub fn load(id: &str) -> Result<(Order, Revision), AgentError> {
    documents::get_json::<Order>(ORDERS, id)?
        .ok_or_else(|| AgentError::new("unknown-order", format!("no order {id:?}")))
}

/// The error of a stage that lost [`MAX_ATTEMPTS`] compare-and-swap rounds on `orders/<id>`.
pub fn kept_changing(id: &str) -> AgentError {
    AgentError::new("conflict", format!("order {id} kept changing; deliver again"))
}

/// The value of `key` in `config` (as `init` receives it), if set.
pub fn config_value<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The `bad-config` error for a required key that is not set; `what` says what it names,
/// as in ``config `next` (the pricing agent) is not set``.
pub fn missing_config(key: &str, what: &str) -> AgentError {
    AgentError::new("bad-config", format!("config `{key}` ({what}) is not set"))
}

/// For `init`: checks that `config` sets `key` to more than blanks ([`missing_config`] if not).
pub fn require_config(config: &[(String, String)], key: &str, what: &str) -> Result<(), AgentError> {
    match config_value(config, key) {
        Some(value) if !value.trim().is_empty() => Ok(()),
        _ => Err(missing_config(key, what)),
    }
}

/// For `handle`: the value of `key` in the config in force ([`missing_config`] if unset).
pub fn required_config(key: &str, what: &str) -> Result<String, AgentError> {
    cortex_agent::config(key).ok_or_else(|| missing_config(key, what))
}

/// For `init`: makes this agent's outgoing `feeds` edges in the graph match [`NEXT`] of
/// `config` (comma-separated agent names; none unlinks them all), each edge with
/// `attributes` (a JSON object saying how the stage feeds the next, such as
/// `{"via":"send"}`).
///
/// An agent that does not exist fails with `unknown-downstream`, so downstream agents
/// are deployed first. Edges are removed only once every wanted edge is in, so a refused
/// config keeps the edges of the one before.
pub fn link_downstream(config: &[(String, String)], attributes: &str) -> Result<(), AgentError> {
    let me = cortex_agent::whoami().agent;
    let wanted: Vec<&str> = config
        .iter()
        .filter(|(k, _)| k == NEXT)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_ascii_words() {
        assert!(is_name("o-001") && is_name("SKU.2_b") && is_name(&"a".repeat(MAX_NAME)));
        assert!(!is_name("") && !is_name("a b") && !is_name("ä") && !is_name(&"a".repeat(MAX_NAME + 1)));
    }

    #[test]
    fn a_received_order_serialises_without_the_fields_of_later_stages() {
        let order = Order::received("o-1".into(), "Ada".into(), vec![Item { sku: "tea".into(), qty: 2 }]);
        let json = serde_json::to_string(&order).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"id":"o-1","customer":"Ada","items":[{"sku":"tea","qty":2}],"status":"received","history":["received"]}"#
        );
    }

    #[test]
    fn require_config_refuses_a_missing_or_blank_key() {
        let config = vec![("next".to_owned(), " ".to_owned()), ("topic".to_owned(), "t".to_owned())];
        assert_eq!(config_value(&config, "topic"), Some("t"));
        let err = require_config(&config, "next", "the pricing agent").err();
        assert_eq!(
            err.map(|e| (e.code, e.message)),
            Some(("bad-config".into(), "config `next` (the pricing agent) is not set".into()))
        );
        assert!(require_config(&config, "topic", "a topic").is_ok());
        assert!(require_config(&config, "pricing", "the quoting agent").is_err());
    }
}
