//! The tenant's change feed for outside consumers: `GET /v1/events?since=SEQ&limit=N` and a
//! server-sent-events stream `GET /v1/events/stream?since=SEQ` (each event's SSE `id` is its
//! sequence number, so a client resumes with `?since=<last id>`; `follow=false` ends the
//! stream once it has caught up). The stream is guarded ([`StreamGuard`]): it ends, with a
//! last `end` event carrying a problem (`code`, `detail`), when its credentials lapse.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;

use super::auth::Action;
use super::error::ApiResult;
use super::stream_guard::{Lapse, StreamGuard};
use super::{AppState, Caller, Query};
use crate::store::ChangeEvent;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
    /// For the stream: keep waiting for new events (default), or end once caught up.
    #[serde(default)]
    follow: Option<bool>,
}

/// Events after `since`, in sequence order.
pub async fn list(
    State(st): State<Arc<AppState>>,
    p: Caller,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<ChangeEvent>>> {
    let t = p.scope(&st).await?;
    let events = st.registry.store().feed_since(&t.name, q.since, q.limit.unwrap_or(100).min(1000)).await?;
    Ok(Json(events))
}

/// How long the stream waits for a write before it checks again (keep-alives go out
/// meanwhile).
const WAIT: Duration = Duration::from_secs(15);

/// A server-sent-events stream of the tenant's feed, from `since` on.
pub async fn stream(
    State(st): State<Arc<AppState>>,
    p: Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    let guard = StreamGuard::open(&st, &p, &headers, Action::ReadAgents).await?;
    let tenant = guard.tenant().name.clone();
    let batch = q.limit.unwrap_or(100).clamp(1, 1000);
    let follow = q.follow.unwrap_or(true);
    let state = (st, tenant, q.since, std::collections::VecDeque::<ChangeEvent>::new());
    let events = futures_util::stream::unfold(state, move |(st, tenant, mut cursor, mut pending)| async move {
        loop {
            if let Some(e) = pending.pop_front() {
                cursor = e.seq;
                let data = serde_json::to_string(&e).unwrap_or_default();
                let ev = Event::default().id(cursor.to_string()).event("change").data(data);
                return Some((Ok(ev), (st, tenant, cursor, pending)));
            }
            let store = st.registry.store();
            match store.feed_since(&tenant, cursor, batch).await {
                Ok(list) if !list.is_empty() => pending.extend(list),
                Ok(_) if !follow => return None,
                Ok(_) => {
                    if let Err(e) = store.wait_for(&tenant, cursor, WAIT).await {
                        tracing::warn!(error = %e, "event stream wait failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) => {
                    // End the stream; the client resumes from its last id.
                    tracing::warn!(error = %e, "event stream read failed");
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(guard.wrap(events, |lapse| Some(Ok(end_event(lapse))))).keep_alive(KeepAlive::default()))
}

/// The last event of a stream whose credentials lapsed: `event: end`, a problem as data.
pub(super) fn end_event(lapse: Lapse) -> Event {
    end(lapse.code(), lapse.status(), lapse.detail())
}

/// The last event of a stream the server ends: `event: end`, a problem as data.
pub(super) fn end(code: &str, status: u16, detail: &str) -> Event {
    let problem = serde_json::json!({
        "type": format!("https://cortex.dev/problems/{code}"),
        "title": "stream ended",
        "status": status,
        "detail": detail,
        "code": code,
    });
    Event::default().event("end").data(problem.to_string())
}
