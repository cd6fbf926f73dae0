//! An agent's log: `GET /v1/agents/{name}/logs` (a page of lines) and the same as a
//! server-sent-events stream, `GET /v1/agents/{name}/logs/stream`. Both start after `since`,
//! or `tail` lines before the end.
//!
//! Each line is one `log` event whose SSE `id` is the line's number (`seq`) and whose data
//! is the line as `GET /v1/agents/{name}/logs` gives it. The stream starts after `since`
//! (default 0: every line the agent's log still holds) or, when the request carries a
//! `Last-Event-ID` header (an `EventSource` reconnecting), after that id; then it waits for
//! new lines (`follow=false` ends it once caught up). Lines the log dropped before they
//! were read (it is bounded) are skipped: the ids show the gap. The stream is guarded like
//! the event stream ([`StreamGuard`]); it ends with an `end` event when its credentials
//! lapse, or with an `end` event of code `agent_deleted` when the agent is deleted.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;

use super::auth::Action;
use super::error::{ApiError, ApiResult};
use super::stream_guard::StreamGuard;
use super::{AppState, Caller, Path, Query};
use crate::agents::Shared;
use crate::names::AgentName;
use crate::runtime::LogLine;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Lines after this number.
    #[serde(default)]
    since: Option<u64>,
    /// Or the last this many lines.
    #[serde(default)]
    tail: Option<u64>,
    /// At most this many lines (100 by default, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

/// Where a read starts: after `since`, and no earlier than `tail` lines before the end of
/// `shared`'s log (both given: the last `tail` lines after `since`).
fn start(shared: &Shared, since: Option<u64>, tail: Option<u64>) -> ApiResult<u64> {
    let from_tail = tail.map(|n| shared.last_log_seq().saturating_sub(n));
    Ok(since.unwrap_or(0).max(from_tail.unwrap_or(0)))
}

/// Lines of agent `name`'s log after `since` (or the last `tail`), at most `limit`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    p: Caller,
    Path(name): Path<AgentName>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<LogLine>>> {
    let (_, d) = super::agents::deployed(&st, &p, &name).await?;
    let after = start(&d.shared, q.since, q.tail)?;
    Ok(Json(d.shared.logs(after, q.limit.unwrap_or(100).min(1000))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Lines after this number (a `Last-Event-ID` header takes precedence).
    #[serde(default)]
    since: Option<u64>,
    /// Or the last this many lines, then the new ones.
    #[serde(default)]
    tail: Option<u64>,
    /// Lines read from the log at a time.
    #[serde(default)]
    limit: Option<usize>,
    /// Keep waiting for new lines (default), or end once caught up.
    #[serde(default)]
    follow: Option<bool>,
}

/// The `Last-Event-ID` of a reconnecting client, if any.
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get("last-event-id") else { return Ok(None) };
    let text = v.to_str().unwrap_or_default().trim();
    text.parse().map(Some).map_err(|_| {
        ApiError::BadRequest(format!("Last-Event-ID {text:?} is not a log line number (a non-negative integer)"))
    })
}

/// Where a log stream is.
struct Cursor {
    shared: Arc<Shared>,
    appended: tokio::sync::watch::Receiver<u64>,
    after: u64,
    pending: VecDeque<LogLine>,
    batch: usize,
    follow: bool,
    ended: bool,
    /// The id of the request that opened the stream (for its `end` event).
    request_id: Option<String>,
}

impl Cursor {
    /// The next event, or `None` at the end.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                self.after = line.seq;
                let data = serde_json::to_string(&line).unwrap_or_default();
                return Some(Event::default().id(line.seq.to_string()).event("log").data(data));
            }
            if self.ended {
                return None;
            }
            // Seen before the read: a line written after it wakes the wait below.
            self.appended.borrow_and_update();
            let lines = self.shared.logs(self.after, self.batch);
            if !lines.is_empty() {
                self.pending.extend(lines);
                continue;
            }
            if self.shared.logs_closed() {
                self.ended = true;
                return Some(agent_deleted(self.request_id.clone()));
            }
            if !self.follow || self.appended.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// The last event of the log of an agent that was deleted.
fn agent_deleted(request_id: Option<String>) -> Event {
    super::events::end("agent_deleted", 404, "the agent was deleted", request_id)
}

/// A server-sent-events stream of agent `name`'s log, from `since` (or `Last-Event-ID`) on.
pub async fn stream(
    State(st): State<Arc<AppState>>,
    p: Caller,
    Path(name): Path<AgentName>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    let request_id = super::request_id::current();
    let resume = last_event_id(&headers)?;
    let guard = StreamGuard::open(&st, &p, &headers, Action::ReadLogs).await?;
    let d = st.agents.find(&guard.tenant().name, &name).await?;
    let after = match resume {
        Some(id) => id,
        None => start(&d.shared, q.since, q.tail)?,
    };
    let shared = d.shared.clone();
    let cursor = Cursor {
        appended: shared.follow_logs(),
        shared,
        after,
        pending: VecDeque::new(),
        batch: q.limit.unwrap_or(100).clamp(1, 1000),
        follow: q.follow.unwrap_or(true),
        ended: false,
        request_id: request_id.clone(),
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        let ev = c.next().await?;
        Some((Ok(ev), c))
    });
    Ok(Sse::new(guard.wrap(events, move |lapse| Some(Ok(super::events::end_event(lapse, request_id)))))
        .keep_alive(KeepAlive::default()))
}
