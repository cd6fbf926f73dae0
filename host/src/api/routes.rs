//! Tenants, API keys, audit, health, metrics and the OpenAPI document.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::{self, Principal, Role};
use super::error::{ApiError, ApiResult, problem};
use super::{AppState, Caller, JsonBody, Path, Query};
use crate::names::{self, AgentName, NameKind};
use crate::registry::{
    AgentRecord, ApiKeyRecord, AuditEvent, DeletedTenant, ModuleRecord, ProfileRecord, QuotasPatch, Tenant, now_ms,
    scoped,
};
use crate::store::RecordKind;

type St = State<Arc<AppState>>;

pub async fn healthz() -> &'static str {
    "ok"
}

/// `/readyz`: "ready" when the node has applied the registry stream up to where it was
/// when the node started (else 503 `registry_catching_up`) and the store answers its
/// cheapest call ([`RecordStore::ping`]; else 503 `store_unavailable`, the store's error
/// going to the log only).
///
/// [`RecordStore::ping`]: crate::store::RecordStore::ping
pub async fn readyz(State(st): St) -> Response {
    if !st.agents.cluster().caught_up() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_catching_up",
            "the node has not yet applied the registry changes made before it started".into(),
        );
    }
    match st.registry.store().ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::error!(error = %e, "store not ready");
            problem(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store is not available".into())
        }
    }
}

/// `/metrics`: open, or for `Authorization: Bearer <token>` only when `[metrics] token_file`
/// is set (`token` is its content; `Err` when it could not be read: then nothing is served).
pub async fn metrics(st: &AppState, headers: &HeaderMap, token: &Result<Option<String>, String>) -> Response {
    match token {
        Ok(None) => {}
        Ok(Some(want)) => {
            let given = super::bearer(headers).unwrap_or_default();
            if !auth::constant_time_eq(given.as_bytes(), want.as_bytes()) {
                return ApiError::Unauthorized("/metrics needs `Authorization: Bearer <metrics token>`".into())
                    .into_response();
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics token");
            return problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the metrics token is unreadable".into());
        }
    }
    let state = st.agents.tenant_state().await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render_with(&state)).into_response()
}

/// The bearer token `/metrics` requires (`[metrics] token_file`, trimmed), if any.
pub fn metrics_token(cfg: &crate::config::MetricsConfig) -> Result<Option<String>, String> {
    let Some(path) = &cfg.token_file else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(format!("{}: a metrics token has at least 16 characters", path.display()));
    }
    Ok(Some(token.to_owned()))
}

/// `/v1/openapi.json`: the document, built once.
pub async fn openapi_doc() -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(super::openapi).clone())
}

pub async fn not_found() -> ApiError {
    ApiError::NoRoute
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Its name.
    #[schema(value_type = AgentName)]
    name: String,
    /// The quotas it names; the others are the server's `[quotas]`.
    #[serde(default)]
    quotas: QuotasPatch,
}

/// The longest a creation waits for the clock to pass the second a previous tenant of the
/// same name was deleted in (more means the nodes' clocks disagree: it does not wait).
const MAX_CREATE_WAIT_MS: u64 = 2_000;

pub async fn create_tenant(
    State(st): St,
    _p: Caller,
    JsonBody(body): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    names::check(NameKind::Tenant, &body.name)?;
    let _name = claim_name(&st, &body.name)?;
    let quotas = body.quotas.apply(&st.config.quotas);
    check_weight(&quotas)?;
    let mut t =
        Tenant::new(body.name, quotas, now_ms()).map_err(|e| ApiError::Internal(format!("random bytes: {e}")))?;
    if let Some((gone, _)) = st.registry.get::<DeletedTenant>(RecordKind::DeletedTenant, &t.name).await? {
        // A tenant of this name existed: its tokens carry an `iat` up to the second it was
        // deleted in, so this one starts in a later second and accepts only tokens issued
        // from then on. Wait for that second, so that tokens issued after this answer work.
        t.reused_name = true;
        let start = (gone.deleted_ms / 1000 + 1) * 1000;
        let wait = start.saturating_sub(t.created_ms);
        if wait > 0 && wait <= MAX_CREATE_WAIT_MS {
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        t.created_ms = now_ms().max(start);
    }
    match st.registry.put(RecordKind::Tenant, &t.name, &t, Some(0)).await {
        Ok(_) => {
            st.forget_tenant(&t.name);
            st.metrics.tenant(&t.name);
            Ok((StatusCode::CREATED, Json(t)))
        }
        Err(crate::store::StoreError::Conflict { .. }) => {
            Err(ApiError::Conflict { code: "already_exists", message: format!("tenant {:?} exists", t.name) })
        }
        Err(e) => Err(e.into()),
    }
}

/// Claim the tenant name `name` for a creation or deletion (409 `tenant_busy` while another
/// one of it runs on this node).
fn claim_name(st: &Arc<AppState>, name: &str) -> ApiResult<crate::api::state::Claim> {
    st.claim_tenant_name(name).ok_or_else(|| ApiError::Conflict {
        code: "tenant_busy",
        message: format!("tenant {name:?} is being created or deleted; retry once that is done"),
    })
}

pub async fn list_tenants(State(st): St, _p: Caller) -> ApiResult<Json<Vec<Tenant>>> {
    Ok(Json(st.registry.list(RecordKind::Tenant, "").await?))
}

/// A tenant record, visible to platform-admins and to that tenant's admins.
async fn visible_tenant(st: &AppState, p: &Principal, name: &str) -> ApiResult<(Tenant, u64)> {
    if p.role != Role::PlatformAdmin && p.tenant.as_deref() != Some(name) {
        return Err(ApiError::NotFound(format!("tenant {name:?} not found")));
    }
    st.registry
        .get::<Tenant>(RecordKind::Tenant, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tenant {name:?} not found")))
}

pub async fn get_tenant(State(st): St, p: Caller, Path(name): Path<String>) -> ApiResult<Json<Tenant>> {
    Ok(Json(visible_tenant(&st, &p, &name).await?.0))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// The quotas to change; the others keep their values.
    #[serde(default)]
    quotas: QuotasPatch,
}

/// A tenant's scheduling weight is 1..=1000.
fn check_weight(q: &crate::registry::Quotas) -> ApiResult<()> {
    if (1..=MAX_WEIGHT).contains(&q.weight) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("quotas.weight must be 1..={MAX_WEIGHT}")))
    }
}

/// Highest scheduling weight of a tenant.
const MAX_WEIGHT: u32 = 1000;

pub async fn update_tenant(
    State(st): St,
    p: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateTenant>,
) -> ApiResult<Json<Tenant>> {
    let (mut t, rev) = visible_tenant(&st, &p, &name).await?;
    t.quotas = body.quotas.apply(&t.quotas);
    check_weight(&t.quotas)?;
    st.registry.put(RecordKind::Tenant, &name, &t, Some(rev)).await?;
    st.forget_tenant(&name);
    Ok(Json(t))
}

pub async fn delete_tenant(State(st): St, p: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    // Held until the clean-up below is done: a creation of this name waits for it (409).
    let _name = claim_name(&st, &name)?;
    let (t, _) = visible_tenant(&st, &p, &name).await?;
    // What is left of it first: a later tenant of this name must know the name was used
    // (its tokens are refused then). Then the record: from then on its credentials are
    // refused.
    let gone = DeletedTenant { id: t.id.clone(), deleted_ms: now_ms() };
    st.registry.put(RecordKind::DeletedTenant, &name, &gone, None).await?;
    st.registry.delete(RecordKind::Tenant, &name).await?;
    st.forget_tenant(&name);
    let prefix = scoped(&name, "");
    for a in st.registry.list::<AgentRecord>(RecordKind::Agent, &prefix).await? {
        st.agents.uninstall(&a.tenant, &a.name).await;
        st.registry.delete(RecordKind::Agent, &scoped(&a.tenant, &a.name)).await?;
        crate::coordination::forget(&st.registry, &a.tenant, &a.name).await?;
    }
    st.registry.delete(RecordKind::Counter, &crate::agents::lifecycle::agent_counter_key(&name)).await?;
    for m in st.registry.list::<ModuleRecord>(RecordKind::Module, &prefix).await? {
        st.agents.modules.delete(&m.tenant, &m.digest).await?;
    }
    for p in st.registry.list::<ProfileRecord>(RecordKind::Profile, &prefix).await? {
        st.registry.delete(RecordKind::Profile, &scoped(&p.tenant, &p.name)).await?;
    }
    for c in st.registry.list::<super::registries::RegistryCredential>(RecordKind::RegistryCredential, &prefix).await? {
        st.registry.delete(RecordKind::RegistryCredential, &scoped(&c.tenant, &c.registry)).await?;
    }
    for k in st.registry.list::<ApiKeyRecord>(RecordKind::ApiKey, "").await? {
        // This tenant's keys only (a later tenant of the name, made on another node
        // meanwhile, keeps its own).
        if k.tenant == name && (k.tenant_id.is_empty() || k.tenant_id == t.id) {
            st.registry.delete(RecordKind::ApiKey, &k.id).await?;
            st.forget_api_key(&k.id);
        }
    }
    st.workflows.forget_tenant(&name).await?;
    st.vault.purge_tenant(&name).await?;
    st.agents.egress().forget_tenant(&name).await?;
    st.registry.store().purge_tenant_documents(&name).await?;
    st.tenants.forget_deleted(&name);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// At most the creator's own role, never platform-admin.
    #[schema(value_type = Role)]
    role: String,
    #[serde(default)]
    name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NewKey {
    id: String,
    /// Shown once; only its hash is stored.
    key: String,
    role: String,
    tenant: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyView {
    id: String,
    name: String,
    role: String,
    tenant: String,
    created_ms: u64,
    revoked: bool,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(k: ApiKeyRecord) -> Self {
        Self { id: k.id, name: k.name, role: k.role, tenant: k.tenant, created_ms: k.created_ms, revoked: k.revoked }
    }
}

pub async fn create_key(
    State(st): St,
    p: Caller,
    JsonBody(body): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<NewKey>)> {
    let t = p.scope(&st).await?;
    let role = Role::parse(&body.role).ok_or_else(|| ApiError::BadRequest(format!("unknown role {:?}", body.role)))?;
    if role > p.role || role == Role::PlatformAdmin {
        return Err(ApiError::Forbidden("a key cannot have more rights than its creator, nor platform-admin".into()));
    }
    let (id, key, hash) = auth::new_api_key().map_err(|e| ApiError::Internal(format!("random bytes: {e}")))?;
    let rec = ApiKeyRecord {
        id: id.clone(),
        tenant: t.name.clone(),
        tenant_id: t.id.clone(),
        role: role.as_str().into(),
        name: body.name,
        hash,
        created_ms: now_ms(),
        revoked: false,
    };
    st.registry.put(RecordKind::ApiKey, &id, &rec, Some(0)).await?;
    Ok((StatusCode::CREATED, Json(NewKey { id, key, role: rec.role, tenant: t.name.clone() })))
}

pub async fn list_keys(State(st): St, p: Caller) -> ApiResult<Json<Vec<KeyView>>> {
    let t = p.scope(&st).await?;
    let keys = st.registry.list::<ApiKeyRecord>(RecordKind::ApiKey, "").await?;
    Ok(Json(keys.into_iter().filter(|k| k.tenant == t.name).map(KeyView::from).collect()))
}

pub async fn revoke_key(State(st): St, p: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let t = p.scope(&st).await?;
    let not_found = || ApiError::NotFound(format!("key {id:?} not found"));
    let (mut k, rev) = st.registry.get::<ApiKeyRecord>(RecordKind::ApiKey, &id).await?.ok_or_else(not_found)?;
    if k.tenant != t.name {
        return Err(not_found());
    }
    k.revoked = true;
    st.registry.put(RecordKind::ApiKey, &id, &k, Some(rev)).await?;
    st.forget_api_key(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only events after this sequence number (default 0: from the first).
    #[serde(default)]
    since: u64,
    /// At most this many events (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
    /// Platform-admins: only this tenant's events (default: the tenant header's, else all).
    #[serde(default)]
    tenant: Option<String>,
    /// Only events whose action (`<METHOD> <route>`) contains this text.
    #[serde(default)]
    action: Option<String>,
    /// Only events of this actor (a token's subject or `key:<id>`).
    #[serde(default)]
    actor: Option<String>,
}

pub async fn list_audit(State(st): St, p: Caller, Query(q): Query<AuditQuery>) -> ApiResult<Json<Vec<AuditEvent>>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    let filter = |e: &AuditEvent| {
        q.action.as_ref().is_none_or(|a| e.action.contains(a.as_str()))
            && q.actor.as_ref().is_none_or(|a| &e.actor == a)
    };
    if p.role != Role::PlatformAdmin {
        // Tenant-admins read their tenant's own log, whatever they ask for: only its events,
        // numbered from 1 for this tenant (no gaps from other tenants' activity, nothing of
        // an earlier tenant of the same name).
        let own = p.scope(&st).await?;
        return Ok(Json(st.registry.audit_list(Some(&own.id), q.since, limit, filter).await?));
    }
    // Platform-admins read the platform's log (every tenant, deleted ones included, and
    // platform-wide actions), filtered by tenant name with `?tenant=` or the tenant header.
    let tenant = q.tenant.or_else(|| p.named().map(str::to_owned));
    let events = st
        .registry
        .audit_list(None, q.since, limit, |e| tenant.as_ref().is_none_or(|t| &e.tenant == t) && filter(e))
        .await?;
    Ok(Json(events))
}
