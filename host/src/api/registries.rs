//! `/v1/registries`: a tenant's credentials for OCI registries, used by that tenant's
//! `oci://` deploys and upgrades only. Tenant-admins store, list and delete them; the
//! password is never returned (nor logged).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{AppState, Caller, JsonBody, Path};
use crate::oci::{Credentials, Reference};
use crate::registry::{now_ms, scoped};
use crate::store::RecordKind;

type St = State<Arc<AppState>>;

/// A stored credential (the record; never an answer).
#[derive(Clone, Serialize, Deserialize)]
pub struct RegistryCredential {
    /// Owner.
    pub tenant: String,
    /// `host[:port]`, as in references.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// When it was stored.
    pub updated_ms: u64,
}

/// A credential as the API shows it: without its password.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    /// `host[:port]`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// When it was stored.
    pub updated_ms: u64,
}

impl From<RegistryCredential> for CredentialView {
    fn from(c: RegistryCredential) -> Self {
        Self { registry: c.registry, username: c.username, updated_ms: c.updated_ms }
    }
}

/// The body of `PUT /v1/registries/{host}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialBody {
    /// The user name (1 to 4096 characters).
    #[schema(min_length = 1, max_length = 4096)]
    username: String,
    /// The password or token (at most 4096 characters); never returned.
    #[schema(max_length = 4096)]
    password: String,
}

/// Longest user name or password taken.
const MAX_SECRET_LEN: usize = 4096;

/// `registry` as a key: a valid `host[:port]`, lower-cased.
fn registry_key(registry: &str) -> ApiResult<String> {
    let r = registry.to_ascii_lowercase();
    Reference::parse(&format!("{r}/x:x")).map_err(|_| ApiError::Invalid {
        code: "invalid_registry",
        message: format!("{registry:?} is not a registry host[:port]"),
    })?;
    Ok(r)
}

/// The credentials tenant `tenant` stored for `registry`, if any.
pub(super) async fn credentials_for(st: &AppState, tenant: &str, registry: &str) -> ApiResult<Option<Credentials>> {
    let key = scoped(tenant, &registry.to_ascii_lowercase());
    Ok(st
        .registry
        .get::<RegistryCredential>(RecordKind::RegistryCredential, &key)
        .await?
        .map(|(c, _)| Credentials { username: c.username, password: c.password }))
}

pub async fn list(State(st): St, p: Caller) -> ApiResult<Json<Vec<CredentialView>>> {
    let t = p.scope(&st).await?;
    let all = st.registry.list::<RegistryCredential>(RecordKind::RegistryCredential, &scoped(&t.name, "")).await?;
    Ok(Json(all.into_iter().map(CredentialView::from).collect()))
}

pub async fn put(
    State(st): St,
    p: Caller,
    Path(host): Path<String>,
    JsonBody(body): JsonBody<CredentialBody>,
) -> ApiResult<(StatusCode, Json<CredentialView>)> {
    let t = p.scope(&st).await?;
    let registry = registry_key(&host)?;
    if body.username.is_empty()
        || body.username.chars().count() > MAX_SECRET_LEN
        || body.password.chars().count() > MAX_SECRET_LEN
    {
        return Err(ApiError::BadRequest(format!(
            "username must be 1..={MAX_SECRET_LEN} characters, password at most that"
        )));
    }
    let key = scoped(&t.name, &registry);
    let existed = st.registry.get::<RegistryCredential>(RecordKind::RegistryCredential, &key).await?.is_some();
    let rec = RegistryCredential {
        tenant: t.name.clone(),
        registry,
        username: body.username,
        password: body.password,
        updated_ms: now_ms(),
    };
    st.registry.put(RecordKind::RegistryCredential, &key, &rec, None).await?;
    Ok((if existed { StatusCode::OK } else { StatusCode::CREATED }, Json(rec.into())))
}

pub async fn delete(State(st): St, p: Caller, Path(host): Path<String>) -> ApiResult<StatusCode> {
    let t = p.scope(&st).await?;
    let registry = registry_key(&host)?;
    if st.registry.delete(RecordKind::RegistryCredential, &scoped(&t.name, &registry)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no credentials for {registry}")))
    }
}
