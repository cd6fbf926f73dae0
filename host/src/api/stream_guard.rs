//! Long-lived responses keep checking the credentials that opened them.
//!
//! A streaming route (the event stream today; log follow and workflow runs later) opens a
//! [`StreamGuard`] instead of checking its credentials once, and wraps its stream with
//! [`StreamGuard::wrap`]. The stream then ends, after one last item saying why, as soon as:
//! - the token's `exp` passes (at `exp` exactly: the leeway only helps a request in);
//! - the credentials are refused (a revoked API key), or the role may no longer do what the
//!   stream does;
//! - the tenant it reads is deleted (or deleted and created again under the same name).
//!
//! A change made on this node (key revoked, tenant deleted or updated) wakes every open
//! stream at once; besides, each re-checks every [`RECHECK`], which bounds how long a change
//! made on another node of a shared store takes (the record caches trust a read for a
//! second).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;

use super::auth::Action;
use super::error::{ApiError, ApiResult};
use super::{AppState, CachedTenant, Caller, TENANT_HEADER};
use crate::registry::now_ms;

/// How often an open stream checks its credentials again, besides the wake-ups for changes
/// made on this node and its token's expiry.
pub const RECHECK: Duration = Duration::from_millis(500);

/// Why a guarded stream ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lapse {
    /// The token's `exp` has passed.
    Expired,
    /// The credentials are refused now (a revoked or deleted API key, a tenant-less token).
    Revoked,
    /// The role may no longer do what the stream does.
    Forbidden,
    /// The tenant the stream reads is gone (deleted, or replaced by a namesake).
    TenantGone,
    /// The credentials could not be checked (the store failed): the stream ends rather than
    /// go on unchecked; the client resumes from its last id.
    Unverified,
}

impl Lapse {
    /// Its stable code.
    pub fn code(self) -> &'static str {
        match self {
            Lapse::Expired => "token_expired",
            Lapse::Revoked => "credentials_revoked",
            Lapse::Forbidden => "forbidden",
            Lapse::TenantGone => "tenant_gone",
            Lapse::Unverified => "credentials_unverified",
        }
    }

    /// The HTTP status the same refusal has on a new request.
    pub fn status(self) -> u16 {
        match self {
            Lapse::Expired | Lapse::Revoked => 401,
            Lapse::Forbidden => 403,
            Lapse::TenantGone => 404,
            Lapse::Unverified => 503,
        }
    }

    /// A sentence for people.
    pub fn detail(self) -> &'static str {
        match self {
            Lapse::Expired => "the token has expired",
            Lapse::Revoked => "the credentials are no longer valid",
            Lapse::Forbidden => "the role may no longer read this stream",
            Lapse::TenantGone => "the tenant was deleted",
            Lapse::Unverified => "the credentials could not be checked again",
        }
    }
}

/// The credentials of a streaming request, kept to be checked again while it streams.
pub struct StreamGuard {
    st: Arc<AppState>,
    /// The request's `Authorization` and tenant headers.
    headers: HeaderMap,
    action: Action,
    /// The tenant the stream reads, as it was when the stream opened.
    tenant: Arc<CachedTenant>,
    /// The token's `exp` (seconds since the epoch); `None` for API keys.
    exp: Option<u64>,
}

impl StreamGuard {
    /// Authorize `p` for `action` within its tenant scope, and keep what is needed to check
    /// it again (its credentials and tenant header, from the request's `headers`).
    pub async fn open(st: &Arc<AppState>, p: &Caller, headers: &HeaderMap, action: Action) -> ApiResult<Self> {
        p.permit(Some(action))?;
        let tenant = p.scope(st).await?;
        let mut kept = HeaderMap::new();
        for name in [axum::http::header::AUTHORIZATION, axum::http::HeaderName::from_static(TENANT_HEADER)] {
            if let Some(v) = headers.get(&name) {
                kept.insert(name, v.clone());
            }
        }
        let exp = match super::bearer(headers) {
            Some(raw) if super::auth::parse_api_key(raw).is_none() => Some(
                st.verifier.expiry(raw).map_err(|_| ApiError::Unauthorized("missing or invalid credentials".into()))?,
            ),
            _ => None,
        };
        Ok(Self { st: st.clone(), headers: kept, action, tenant, exp })
    }

    /// The tenant the stream reads.
    pub fn tenant(&self) -> &Arc<CachedTenant> {
        &self.tenant
    }

    /// Are the credentials still good for the stream?
    async fn check(&self) -> Result<(), Lapse> {
        if self.exp.is_some_and(|exp| now_ms() >= exp.saturating_mul(1000)) {
            return Err(Lapse::Expired);
        }
        match self.st.tenant(&self.tenant.name).await {
            Ok(Some(t)) if t.id == self.tenant.id => {}
            Ok(_) => return Err(Lapse::TenantGone),
            Err(_) => return Err(Lapse::Unverified),
        }
        // The same authentication as the request's: its credentials, the action, the header.
        let c = match Caller::authenticate(&self.st, &self.headers, Some(self.action)).await {
            Ok(c) => c,
            Err(ApiError::Unauthorized(_)) => return Err(Lapse::Revoked),
            Err(ApiError::Forbidden(_) | ApiError::ForeignTenant(_)) => return Err(Lapse::Forbidden),
            Err(_) => return Err(Lapse::Unverified),
        };
        match c.scope(&self.st).await {
            Ok(t) if t.name == self.tenant.name && t.id == self.tenant.id => Ok(()),
            Ok(_) | Err(ApiError::NotFound(_)) => Err(Lapse::TenantGone),
            Err(ApiError::Forbidden(_) | ApiError::ForeignTenant(_)) => Err(Lapse::Forbidden),
            Err(_) => Err(Lapse::Unverified),
        }
    }

    /// Resolves when the credentials lapse: at the token's expiry, on a change made on this
    /// node, and every [`RECHECK`], each followed by a check. [`Self::wrap`] runs it beside a
    /// stream; a long-lived response that is not a stream can select on it directly.
    pub async fn lapsed(self) -> Lapse {
        let mut changes = self.st.credential_changes();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = async {
            match self.exp {
                Some(exp) => {
                    let left = exp.saturating_mul(1000).saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(left)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut notified = true;
        loop {
            tokio::select! {
                () = &mut expiry => return Lapse::Expired,
                _ = tick.tick() => {}
                changed = changes.changed(), if notified => {
                    // The state is going away: the ticks go on alone.
                    notified = changed.is_ok();
                }
            }
            if let Err(lapse) = self.check().await {
                tracing::info!(code = lapse.code(), tenant = %self.tenant.name, "a stream's credentials lapsed");
                return lapse;
            }
        }
    }

    /// `stream`, until it ends or the credentials lapse; in that case `last` may give one
    /// last item (saying why) before the end. Nothing of `stream` is delivered once a lapse
    /// is known. The checks run on a task of their own, stopped when the stream is dropped.
    pub fn wrap<S, T>(self, stream: S, last: impl FnOnce(Lapse) -> Option<T> + Send + 'static) -> GuardedStream<T>
    where
        S: Stream<Item = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let watcher = tokio::spawn(async move {
            let _ = tx.send(self.lapsed().await);
        });
        let state = Some((stream.boxed(), rx, Box::new(last) as Box<dyn FnOnce(Lapse) -> Option<T> + Send>));
        let inner = futures_util::stream::unfold(state, |state| async move {
            let (mut stream, mut rx, last) = state?;
            tokio::select! {
                biased;
                lapse = &mut rx => {
                    // A watcher that ended without a word was aborted: end the stream too.
                    let item = last(lapse.unwrap_or(Lapse::Unverified))?;
                    Some((item, None))
                }
                item = stream.next() => item.map(|item| (item, Some((stream, rx, last)))),
            }
        });
        GuardedStream { inner: inner.boxed(), _watcher: AbortOnDrop(watcher) }
    }
}

/// A stream wrapped by [`StreamGuard::wrap`].
pub struct GuardedStream<T> {
    inner: Pin<Box<dyn Stream<Item = T> + Send>>,
    _watcher: AbortOnDrop,
}

impl<T> Stream for GuardedStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
