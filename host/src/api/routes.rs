//! Tenants, API keys, audit, health, metrics and the OpenAPI document.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::{self, Action, Principal, Role};
use super::error::{ApiError, ApiResult, problem};
use super::{AppState, JsonBody, authorize, check_name, tenant_scope};
use crate::registry::{AgentRecord, ApiKeyRecord, AuditEvent, ModuleRecord, Quotas, Tenant, now_ms, scoped};
use crate::store::RecordKind;

type St = State<Arc<AppState>>;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(st): St) -> Response {
    match st.registry.store().stored_bytes("").await {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            tracing::error!(error = %e, "store not ready");
            problem(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the store is not available".into())
        }
    }
}

pub async fn metrics(State(st): St) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

pub async fn openapi_doc() -> Json<serde_json::Value> {
    Json(super::openapi())
}

pub async fn not_found() -> ApiError {
    ApiError::NoRoute
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    #[serde(default)]
    quotas: Option<Quotas>,
}

pub async fn create_tenant(
    State(st): St,
    Extension(p): Extension<Principal>,
    JsonBody(body): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    authorize(&p, Action::ManageTenants)?;
    check_name("tenant", &body.name)?;
    let t = Tenant {
        name: body.name,
        quotas: body.quotas.unwrap_or_else(|| st.config.quotas.clone()),
        created_ms: now_ms(),
    };
    match st.registry.put(RecordKind::Tenant, &t.name, &t, Some(0)).await {
        Ok(_) => {
            st.forget_tenant(&t.name);
            Ok((StatusCode::CREATED, Json(t)))
        }
        Err(crate::store::StoreError::Conflict { .. }) => {
            Err(ApiError::Conflict { code: "already_exists", message: format!("tenant {:?} exists", t.name) })
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn list_tenants(State(st): St, Extension(p): Extension<Principal>) -> ApiResult<Json<Vec<Tenant>>> {
    authorize(&p, Action::ManageTenants)?;
    Ok(Json(st.registry.list(RecordKind::Tenant, "").await?))
}

/// A tenant record, visible to platform-admins and to that tenant's admins.
async fn visible_tenant(st: &AppState, p: &Principal, name: &str) -> ApiResult<(Tenant, u64)> {
    authorize(p, Action::ReadTenant)?;
    if p.role != Role::PlatformAdmin && p.tenant.as_deref() != Some(name) {
        return Err(ApiError::NotFound(format!("tenant {name:?} not found")));
    }
    st.registry
        .get::<Tenant>(RecordKind::Tenant, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tenant {name:?} not found")))
}

pub async fn get_tenant(
    State(st): St,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Tenant>> {
    Ok(Json(visible_tenant(&st, &p, &name).await?.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    quotas: Quotas,
}

pub async fn update_tenant(
    State(st): St,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateTenant>,
) -> ApiResult<Json<Tenant>> {
    authorize(&p, Action::ManageTenants)?;
    let (mut t, rev) = visible_tenant(&st, &p, &name).await?;
    t.quotas = body.quotas;
    st.registry.put(RecordKind::Tenant, &name, &t, Some(rev)).await?;
    st.forget_tenant(&name);
    Ok(Json(t))
}

pub async fn delete_tenant(
    State(st): St,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&p, Action::ManageTenants)?;
    visible_tenant(&st, &p, &name).await?;
    // The tenant record goes first: from then on its credentials are refused.
    st.registry.delete(RecordKind::Tenant, &name).await?;
    st.forget_tenant(&name);
    let prefix = scoped(&name, "");
    for a in st.registry.list::<AgentRecord>(RecordKind::Agent, &prefix).await? {
        st.uninstall(&a.tenant, &a.name).await;
        st.registry.delete(RecordKind::Agent, &scoped(&a.tenant, &a.name)).await?;
        crate::coordination::forget(&st.registry, &a.tenant, &a.name).await?;
    }
    for m in st.registry.list::<ModuleRecord>(RecordKind::Module, &prefix).await? {
        st.delete_module(&m.tenant, &m.digest).await?;
    }
    for k in st.registry.list::<ApiKeyRecord>(RecordKind::ApiKey, "").await? {
        if k.tenant == name {
            st.registry.delete(RecordKind::ApiKey, &k.id).await?;
            st.forget_api_key(&k.id);
        }
    }
    st.registry.store().purge_tenant_documents(&name).await?;
    st.limiters.forget(&name);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    role: String,
    #[serde(default)]
    name: String,
}

#[derive(Serialize)]
pub struct NewKey {
    id: String,
    /// Shown once; only its hash is stored.
    key: String,
    role: String,
    tenant: String,
}

#[derive(Serialize)]
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
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<NewKey>)> {
    authorize(&p, Action::ManageKeys)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    let role = Role::parse(&body.role).ok_or_else(|| ApiError::BadRequest(format!("unknown role {:?}", body.role)))?;
    if role > p.role || role == Role::PlatformAdmin {
        return Err(ApiError::Forbidden("a key cannot have more rights than its creator, nor platform-admin".into()));
    }
    let (id, key, hash) = auth::new_api_key().map_err(|e| ApiError::Internal(format!("random bytes: {e}")))?;
    let rec = ApiKeyRecord {
        id: id.clone(),
        tenant: t.name.clone(),
        role: role.as_str().into(),
        name: body.name,
        hash,
        created_ms: now_ms(),
        revoked: false,
    };
    st.registry.put(RecordKind::ApiKey, &id, &rec, Some(0)).await?;
    Ok((StatusCode::CREATED, Json(NewKey { id, key, role: rec.role, tenant: t.name.clone() })))
}

pub async fn list_keys(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<KeyView>>> {
    authorize(&p, Action::ManageKeys)?;
    let t = tenant_scope(&st, &p, &headers).await?;
    let keys = st.registry.list::<ApiKeyRecord>(RecordKind::ApiKey, "").await?;
    Ok(Json(keys.into_iter().filter(|k| k.tenant == t.name).map(KeyView::from).collect()))
}

pub async fn revoke_key(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&p, Action::ManageKeys)?;
    let t = tenant_scope(&st, &p, &headers).await?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    actor: Option<String>,
}

pub async fn list_audit(
    State(st): St,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEvent>>> {
    authorize(&p, Action::ReadAudit)?;
    // Tenant-admins see their own tenant only, whatever they ask for; platform-admins may
    // filter with `?tenant=` or the tenant header.
    let named = headers.get(super::TENANT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let tenant =
        if p.role == Role::PlatformAdmin { q.tenant.or(named) } else { p.tenant.as_deref().map(str::to_owned) };
    let limit = q.limit.unwrap_or(100).min(1000);
    let events = st
        .registry
        .audit_list(q.since, limit, |e| {
            tenant.as_ref().is_none_or(|t| &e.tenant == t)
                && q.action.as_ref().is_none_or(|a| e.action.contains(a.as_str()))
                && q.actor.as_ref().is_none_or(|a| &e.actor == a)
        })
        .await?;
    Ok(Json(events))
}
