//! `/v1/secrets`: the tenant's secrets (tenant-admin), write-only: a value goes in and is
//! never returned, logged, counted or audited (the audit event names the route and the
//! secret, as for every mutating request, never a body). See [`crate::vault`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::{AppState, Caller, JsonBody, Path};
use crate::vault::{SecretMeta, SecretValue, VaultError};

type St = State<Arc<AppState>>;

/// The body of `PUT /v1/secrets/{name}`. Its `Debug` shows no value.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    /// The value (1 byte to `[secrets] max_value_bytes`, 16 KiB by default): stored
    /// encrypted, never returned.
    #[schema(value_type = String, min_length = 1)]
    value: SecretValue,
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::InvalidName(_) => ApiError::Invalid { code: "invalid_secret_name", message: e.to_string() },
            VaultError::Empty => ApiError::Invalid { code: "empty_secret", message: e.to_string() },
            VaultError::TooLarge { .. } => ApiError::Invalid { code: "secret_too_large", message: e.to_string() },
            VaultError::TooMany(_) => ApiError::Conflict { code: "too_many_secrets", message: e.to_string() },
            VaultError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("no secret {name:?}"))
}

pub async fn list(State(st): St, p: Caller) -> ApiResult<Json<Vec<SecretMeta>>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.vault.list(&t.name).await?))
}

pub async fn get(State(st): St, p: Caller, Path(name): Path<String>) -> ApiResult<Json<SecretMeta>> {
    let t = p.scope(&st).await?;
    st.vault.meta(&t.name, &name).await?.map(Json).ok_or_else(|| not_found(&name))
}

pub async fn put(
    State(st): St,
    p: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<SecretBody>,
) -> ApiResult<(StatusCode, Json<SecretMeta>)> {
    let t = p.scope(&st).await?;
    let (meta, created) = st.vault.put(&t.name, &name, &body.value).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(meta)))
}

pub async fn delete(State(st): St, p: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let t = p.scope(&st).await?;
    if st.vault.delete(&t.name, &name).await? { Ok(StatusCode::NO_CONTENT) } else { Err(not_found(&name)) }
}
