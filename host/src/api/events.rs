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
use super::error::{ApiError, ApiResult};
use super::stream_guard::{Lapse, StreamGuard};
use super::{AppState, Caller, Query};
use crate::store::ChangeEvent;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this sequence number (default 0: from the first). On the stream, a
    /// `Last-Event-ID` header (the id of the last event a client saw) takes its place.
    #[serde(default)]
    since: u64,
    /// At most this many events (default 100, at most 1000); on the stream, per batch read.
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
/// The header a reconnecting `EventSource` sends: the id of the last event it saw.
pub const LAST_EVENT_ID: &str = "last-event-id";

const WAIT: Duration = Duration::from_secs(15);

/// A server-sent-events stream of the tenant's feed, from `since` on.
pub async fn stream(
    State(st): State<Arc<AppState>>,
    p: Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    let guard = StreamGuard::open(&st, &p, &headers, Action::ReadAgents).await?;
    // An `EventSource` that reconnects says where it was: the id of the last event it saw.
    let since = match headers.get(LAST_EVENT_ID) {
        None => q.since,
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| ApiError::Invalid {
            code: "invalid_last_event_id",
            message: "Last-Event-ID must be the sequence number of an event".into(),
        })?,
    };
    // Made here, in the request's task: the stream's end event is read after it.
    let request_id = super::request_id::current();
    let tenant = guard.tenant().name.clone();
    let batch = q.limit.unwrap_or(100).clamp(1, 1000);
    let follow = q.follow.unwrap_or(true);
    let state = (st, tenant, since, std::collections::VecDeque::<ChangeEvent>::new());
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
    Ok(Sse::new(guard.wrap(events, move |lapse| Some(Ok(end_event(lapse, request_id)))))
        .keep_alive(KeepAlive::default()))
}

/// The last event of a stream whose credentials lapsed: `event: end`, a problem as data.
pub(super) fn end_event(lapse: Lapse, request_id: Option<String>) -> Event {
    end(lapse.code(), lapse.status(), lapse.detail(), request_id)
}

/// The last event of a stream the server ends: `event: end`, a problem (with the request's
/// id) as data.
pub(super) fn end(code: &str, status: u16, detail: &str, request_id: Option<String>) -> Event {
    let problem = serde_json::json!({
        "request_id": request_id,
        "type": format!("https://cortex.dev/problems/{code}"),
        "title": "stream ended",
        "status": status,
        "detail": detail,
        "code": code,
    });
    Event::default().event("end").data(problem.to_string())
}
