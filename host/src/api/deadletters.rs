//! Dead letters: change batches a watching agent failed after its retries, and messages
//! its mailbox gave up on. List them, replay one (a batch through `on-change`, a message
//! through `handle`; deleted once it succeeds), or discard one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::agents::deployed;
use super::error::{ApiError, ApiResult, agent_problem, problem};
use super::{AppState, Caller, Path};
use crate::coordination::{self, Delivery, mailbox};
use crate::names::AgentName;
use crate::registry::{DeadLetter, Letter, now_ms};
use crate::store::RecordKind;

type St = State<Arc<AppState>>;

/// The answer to a replay that delivered (or found already delivered) its dead letter.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The dead letter's id (deleted now).
    id: String,
    /// `ok`: delivered now; `duplicate`: its message had been delivered already.
    #[schema(value_type = String)]
    outcome: &'static str,
    /// For a change batch: the events delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<usize>,
}

pub async fn list(State(st): St, p: Caller, Path(name): Path<AgentName>) -> ApiResult<Json<Vec<DeadLetter>>> {
    let (t, _) = deployed(&st, &p, &name).await?;
    Ok(Json(coordination::dead_letters(&st.registry, &t.name, &name).await?))
}

/// The dead letter `id` of the caller's agent `name`, with its record key and revision.
async fn find(st: &AppState, p: &Caller, name: &AgentName, id: &str) -> ApiResult<(String, DeadLetter, u64)> {
    let (t, _) = deployed(st, p, name).await?;
    let missing = || ApiError::NotFound(format!("dead letter {id:?} of agent {name:?} not found"));
    if !coordination::valid_dead_letter_id(id) {
        return Err(missing());
    }
    let key = coordination::dead_letter_key(&t.name, name, id);
    let (letter, rev) = st.registry.get::<DeadLetter>(RecordKind::DeadLetter, &key).await?.ok_or_else(missing)?;
    Ok((key, letter, rev))
}

pub async fn replay(State(st): St, p: Caller, Path((name, id)): Path<(AgentName, String)>) -> ApiResult<Response> {
    let (key, _, _) = find(&st, &p, &name, &id).await?;
    // One replay of a letter at a time: two at once would both deliver it.
    let Some(_claim) = st.claim_replay(&key) else {
        return Err(ApiError::Conflict {
            code: "replay_in_progress",
            message: format!("dead letter {id:?} is being replayed; look again once that ends"),
        });
    };
    // Read again under the claim: a replay that just ended has removed it.
    let missing = || ApiError::NotFound(format!("dead letter {id:?} of agent {name:?} not found"));
    let (mut letter, rev) = st.registry.get::<DeadLetter>(RecordKind::DeadLetter, &key).await?.ok_or_else(missing)?;
    let (delivery, done) = match &letter.content {
        Letter::Message { message: m } => {
            let body = mailbox::decode_body(&m.body_hex)
                .ok_or_else(|| ApiError::Internal(format!("dead letter {id:?} has an unreadable body")))?;
            // A message with an idempotency key is delivered once: not again if a later copy
            // got through, and its key is remembered once this one does.
            let store = st.registry.store();
            let seen = mailbox::delivered_key(m);
            if let Some(k) = &seen
                && mailbox::was_delivered(store.as_ref(), k).await?
            {
                st.registry.delete(RecordKind::DeadLetter, &key).await?;
                return Ok(Json(Replayed { id: letter.id, outcome: "duplicate", events: None }).into_response());
            }
            let delivery = st.agents.deliver_message(&letter.tenant, &name, &body).await;
            if let (Delivery::Delivered, Some(k)) = (&delivery, &seen) {
                mailbox::remember_delivered(store.as_ref(), k).await?;
            }
            (delivery, Replayed { id: letter.id.clone(), outcome: "ok", events: None })
        }
        Letter::Changes { events, .. } => {
            let n = events.len();
            (
                st.agents.deliver_changes(&letter.tenant, &name, events).await,
                Replayed { id: letter.id.clone(), outcome: "ok", events: Some(n) },
            )
        }
    };
    match delivery {
        Delivery::Delivered => {
            st.registry.delete(RecordKind::DeadLetter, &key).await?;
            Ok(Json(done).into_response())
        }
        Delivery::Throttled(_) => Err(ApiError::TooMany {
            code: "rate_limited",
            message: format!("tenant {:?} is over its invocation rate", letter.tenant),
            retry_after: 1,
        }),
        Delivery::Gone => {
            Err(ApiError::Conflict { code: "agent_stopped", message: format!("agent {name:?} is stopped") })
        }
        Delivery::Failed { code, message, agent } => {
            letter.attempts += 1;
            letter.error_code = code.clone();
            letter.error = message.clone();
            letter.updated_ms = now_ms();
            // A concurrent replay or discard wins; this one only reports its outcome.
            let _ = st.registry.put(RecordKind::DeadLetter, &key, &letter, Some(rev)).await;
            let detail = format!("replay failed: {message}");
            // The agent's own error as fields, like an invocation's problem.
            Ok(match agent {
                Some((agent_code, agent_message)) => {
                    agent_problem(StatusCode::UNPROCESSABLE_ENTITY, detail, agent_code, agent_message)
                }
                None => problem(StatusCode::UNPROCESSABLE_ENTITY, &code, detail),
            })
        }
    }
}

pub async fn discard(State(st): St, p: Caller, Path((name, id)): Path<(AgentName, String)>) -> ApiResult<StatusCode> {
    let (key, _, _) = find(&st, &p, &name, &id).await?;
    st.registry.delete(RecordKind::DeadLetter, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
