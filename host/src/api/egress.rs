//! `/v1/egress`: a tenant's egress allow-list, the URL prefixes its agents' grants must stay
//! within (tenant-admin). A deploy whose grant is outside it is refused, and every outbound
//! request (each hop of a followed redirect too) is held to the list as it is now, so a
//! narrower list holds agents deployed before it at once.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::{AppState, Caller, JsonBody};
use crate::registry::Tenant;
use crate::store::RecordKind;

type St = State<Arc<AppState>>;

/// A tenant's egress allow-list (the body and answer of `/v1/egress`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressAllow {
    /// URL prefixes (`https://api.example.com/v1/`) grants must stay within; `null`: no
    /// allow-list (any destination a deploy names); `[]`: no egress at all.
    #[schema(max_items = 64, value_type = Option<Vec<UrlPrefix>>)]
    pub allow: Option<Vec<String>>,
}

/// A URL prefix of the allow-list: `http` or `https`, a host name, an optional port and a
/// path without dot segments.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, pattern = "^https?://[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9_~-]*)*$")]
#[allow(dead_code)]
pub struct UrlPrefix(String);

pub async fn get(State(st): St, p: Caller) -> ApiResult<Json<EgressAllow>> {
    let t = p.scope(&st).await?;
    Ok(Json(EgressAllow { allow: t.egress_allow.clone() }))
}

pub async fn put(State(st): St, p: Caller, JsonBody(body): JsonBody<EgressAllow>) -> ApiResult<Json<EgressAllow>> {
    let name = p.scope(&st).await?.name.clone();
    if let Some(list) = &body.allow {
        crate::egress::parse_allow_list(list).map_err(|e| ApiError::BadRequest(format!("allow: {e}")))?;
    }
    let (mut t, rev) = st
        .registry
        .get::<Tenant>(RecordKind::Tenant, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tenant {name:?} not found")))?;
    t.egress_allow = body.allow;
    st.registry.put(RecordKind::Tenant, &name, &t, Some(rev)).await?;
    st.forget_tenant(&name);
    Ok(Json(EgressAllow { allow: t.egress_allow }))
}
