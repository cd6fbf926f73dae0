//! `/v1/profiles`: a tenant's resource profiles. Its admins write them, every role of the
//! tenant reads them; the rules are the lifecycle layer's ([`crate::agents::profiles`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, ApiResult};
use super::{AppState, Caller, JsonBody, Path};
use crate::agents::ProfileSpec;
use crate::names::{self, NameKind};
use crate::registry::{ProfileRecord, scoped};
use crate::store::RecordKind;

type St = State<Arc<AppState>>;

pub async fn list(State(st): St, p: Caller) -> ApiResult<Json<Vec<ProfileRecord>>> {
    let t = p.scope(&st).await?;
    Ok(Json(st.registry.list(RecordKind::Profile, &scoped(&t.name, "")).await?))
}

pub async fn get(State(st): St, p: Caller, Path(name): Path<String>) -> ApiResult<Json<ProfileRecord>> {
    let t = p.scope(&st).await?;
    match st.registry.get::<ProfileRecord>(RecordKind::Profile, &scoped(&t.name, &name)).await? {
        Some((rec, _)) => Ok(Json(rec)),
        None => Err(ApiError::NotFound(format!("profile {name:?} not found"))),
    }
}

pub async fn put(
    State(st): St,
    p: Caller,
    Path(name): Path<String>,
    JsonBody(spec): JsonBody<ProfileSpec>,
) -> ApiResult<(StatusCode, Json<ProfileRecord>)> {
    let t = p.scope(&st).await?;
    names::check(NameKind::Profile, &name)?;
    // Serialised with deploys: a deploy reads the profile it names under the same lock.
    let _lock = st.tenant_write_lock(&t.name).await;
    let (rec, created) = st.agents.put_profile(&t.name, &t.quotas, &name, spec).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(rec)))
}

pub async fn delete(State(st): St, p: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let t = p.scope(&st).await?;
    let _lock = st.tenant_write_lock(&t.name).await;
    st.agents.delete_profile(&t.name, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
