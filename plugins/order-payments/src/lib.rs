//! `order-payments` (world `agent`): charges and refunds orders, for the workflow version
//! of the order pipeline (`plugins/order-workflow.json`, see `plugins/README.md`); the
//! message version has no payment step.
//!
//! **Takes** (`handle`) JSON:
//! - `{"op": "charge", "order": ID, "amount_cents": N}`: creates `payments/<ID>` =
//!   `{"order": ID, "amount_cents": N, "status": "charged"}` (compare-and-swap on revision
//!   0) and answers it. Safe to run twice: a payment of that order with the same amount is
//!   answered as it is (charged or refunded); another amount is refused with
//!   `amount-mismatch`.
//! - `{"op": "refund", "order": ID}`: moves `payments/<ID>` to `"status": "refunded"` and
//!   answers it; a refunded payment is answered as it is, an order never charged is
//!   answered `{"order": ID, "status": "none"}` (nothing to undo: a compensation must
//!   succeed even if the charge never happened).
//!
//! Errors: `bad-input` (not one of those, a bad id), `amount-mismatch`, `conflict` (the
//! payment kept changing).
//!
//! **Config:** none.

use cortex_agent::documents::{self, StoreError};
use cortex_agent::{Agent, AgentError};
use order_common::{MAX_ATTEMPTS, check_id};
use serde::{Deserialize, Serialize};

struct OrderPayments;

/// Where payments live: `payments/<order id>`.
const PAYMENTS: &str = "payments";
/// A payment taken.
const CHARGED: &str = "charged";
/// A payment given back.
const REFUNDED: &str = "refunded";

/// What the agent takes.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Charge { order: String, amount_cents: u64 },
    Refund { order: String },
}

/// `payments/<id>`.
#[derive(Debug, Serialize, Deserialize)]
struct Payment {
    order: String,
    amount_cents: u64,
    status: String,
}

fn answer(payment: &Payment) -> Result<Option<Vec<u8>>, AgentError> {
    Ok(Some(serde_json::to_vec(payment)?))
}

fn charge(order: &str, amount_cents: u64) -> Result<Option<Vec<u8>>, AgentError> {
    let payment = Payment { order: order.to_owned(), amount_cents, status: CHARGED.to_owned() };
    match documents::put_json(PAYMENTS, order, &payment, Some(0)) {
        Ok(_) => answer(&payment),
        Err(documents::Error::Store(StoreError::Conflict(_))) => {
            let Some((existing, _)) = documents::get_json::<Payment>(PAYMENTS, order)? else {
                return Err(AgentError::new("conflict", format!("payment of {order} changed meanwhile; retry")));
            };
            if existing.amount_cents != amount_cents {
                return Err(AgentError::new(
                    "amount-mismatch",
                    format!("order {order} was charged {} cents, not {amount_cents}", existing.amount_cents),
                ));
            }
            answer(&existing)
        }
        Err(e) => Err(e.into()),
    }
}

fn refund(order: &str) -> Result<Option<Vec<u8>>, AgentError> {
    for _ in 0..MAX_ATTEMPTS {
        let Some((mut payment, revision)) = documents::get_json::<Payment>(PAYMENTS, order)? else {
            return Ok(Some(serde_json::to_vec(&serde_json::json!({ "order": order, "status": "none" }))?));
        };
        if payment.status == REFUNDED {
            return answer(&payment);
        }
        payment.status = REFUNDED.to_owned();
        match documents::put_json(PAYMENTS, order, &payment, Some(revision)) {
            Ok(_) => return answer(&payment),
            Err(documents::Error::Store(StoreError::Conflict(_))) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AgentError::new("conflict", format!("payment of {order} kept changing; retry")))
}

impl Agent for OrderPayments {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let request: Request = serde_json::from_slice(&input).map_err(|e| {
            AgentError::bad_input(format!(
                "expected {{\"op\": \"charge\", \"order\", \"amount_cents\"}} or {{\"op\": \"refund\", \"order\"}}: {e}"
            ))
        })?;
        match request {
            Request::Charge { order, amount_cents } => charge(check_id(&order)?, amount_cents),
            Request::Refund { order } => refund(check_id(&order)?),
        }
    }
}

cortex_agent::export_agent!(OrderPayments);
