//! `GET /v1/audit/export?since=`: the audit log as JSON lines for SIEM ingestion, and the
//! background pruning of `[audit] retention_days`.
//!
//! The export streams one [`AuditEvent`] a line (`application/x-ndjson`), oldest first,
//! from after `since` to the newest event at the time it gets there, read from the store
//! in batches (never the whole log in memory). A platform-admin exports the platform's log
//! (`?tenant=` or the tenant header: only that tenant's events); anyone else with the
//! audit permission (a tenant-admin) exports their tenant's own log, numbered for that
//! tenant. A client resumes with `since` = the last `seq` it stored. A store failure midway
//! cuts the response off (the chunked body does not end cleanly), so a cut export is never
//! mistaken for a complete one.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Role;
use super::error::ApiResult;
use super::{AppState, Caller, Query};
use crate::registry::{AuditEvent, Tenant};
use crate::store::RecordKind;

/// Events read from the store at a time.
const BATCH: usize = 512;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Events after this sequence number (default 0: from the oldest kept).
    #[serde(default)]
    since: u64,
    /// Platform-admins: only this tenant's events (by name), from the platform's log.
    #[serde(default)]
    tenant: Option<String>,
}

/// Where an export is.
struct Cursor {
    after: u64,
    failed: bool,
}

/// The audit log after `since`, as JSON lines.
pub async fn export(State(st): State<Arc<AppState>>, p: Caller, Query(q): Query<ExportQuery>) -> ApiResult<Response> {
    let (log, only) = if p.role == Role::PlatformAdmin {
        (None, q.tenant.or_else(|| p.named().map(str::to_owned)))
    } else {
        (Some(p.scope(&st).await?.id.clone()), None)
    };
    let store = st.registry.store().clone();
    let lines = futures_util::stream::unfold(Cursor { after: q.since, failed: false }, move |mut c| {
        let (store, log, only) = (store.clone(), log.clone(), only.clone());
        async move {
            if c.failed {
                return None;
            }
            loop {
                let batch = match store.audit_list(log.as_deref(), c.after, BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "audit export cut off by a store failure");
                        c.failed = true;
                        return Some((Err(std::io::Error::other(e.to_string())), c));
                    }
                };
                let (last, _) = batch.last()?;
                c.after = *last;
                let mut out = Vec::new();
                for (seq, raw) in &batch {
                    let Ok(mut e) = serde_json::from_slice::<AuditEvent>(raw) else {
                        tracing::error!(seq, "unreadable audit event skipped in an export");
                        continue;
                    };
                    e.seq = *seq;
                    if only.as_ref().is_some_and(|t| &e.tenant != t) {
                        continue;
                    }
                    if serde_json::to_writer(&mut out, &e).is_ok() {
                        out.push(b'\n');
                    }
                }
                // A batch of only other tenants' events: read on rather than send nothing.
                if !out.is_empty() {
                    return Some((Ok(Bytes::from(out)), c));
                }
            }
        }
    });
    let mut resp = Body::from_stream(lines).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(resp)
}

/// Delete audit events older than `[audit] retention_days`, every `prune_interval_ms`, while
/// the state lives (see [`crate::registry::Registry::audit_prune_before`]).
pub async fn retention(state: Weak<AppState>) {
    loop {
        let Some(st) = state.upgrade() else { return };
        let cfg = st.config.audit.clone();
        if cfg.retention_days == 0 {
            return;
        }
        let cutoff = crate::registry::now_ms().saturating_sub(cfg.retention_days.saturating_mul(86_400_000));
        let tenants = match st.registry.list::<Tenant>(RecordKind::Tenant, "").await {
            Ok(t) => t.into_iter().map(|t| t.id).filter(|id| !id.is_empty()).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list tenants to prune their audit logs");
                Vec::new()
            }
        };
        match st.registry.audit_prune_before(cutoff, &tenants).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, retention_days = cfg.retention_days, "pruned the audit log"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
        }
        drop(st);
        tokio::time::sleep(Duration::from_millis(cfg.prune_interval_ms.max(10))).await;
    }
}
