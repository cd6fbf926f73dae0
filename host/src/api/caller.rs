//! Who calls, decided once per request and in one place: the credentials (a JWT or an API
//! key, 401 without), RBAC for the route's action (403), the tenant header (a
//! platform-admin's only: 403 `foreign_tenant` for anyone else naming another tenant), and
//! the cached lookup of the tenant the request acts in ([`Caller::scope`]).
//!
//! Every `/v1` route gets its [`Caller`] from [`Caller::authenticate`] (the route guard in
//! [`super::router`] calls it before the handler runs and hands it to the handler as an
//! extractor); the invocation fast path of [`crate::server`] calls the very same function.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};

use super::auth::{self, Action, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::{AppState, CachedTenant, TENANT_HEADER, authorize};

/// The authenticated caller of a request: its principal (derefs to it), the record of its
/// own tenant when its credentials have one, and the tenant header it sent.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who, from the verified credentials.
    pub principal: Principal,
    /// The record of the principal's own tenant (`None` for a platform-admin without one).
    own: Option<Arc<CachedTenant>>,
    /// The request's tenant header, if any.
    named: Option<HeaderValue>,
}

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl Caller {
    /// The one authentication of a request with `headers`: [`Self::identify`] (the
    /// credentials), then [`Self::permit`] (RBAC for `action`, the tenant header).
    pub async fn authenticate(st: &AppState, headers: &HeaderMap, action: Option<Action>) -> ApiResult<Caller> {
        let caller = Self::identify(st, headers).await?;
        caller.permit(action)?;
        Ok(caller)
    }

    /// Who sends `headers`: the principal of its credentials (401 without good ones;
    /// credentials of a deleted tenant, or of an earlier tenant of the same name, are
    /// refused), its own tenant's record, and the tenant header. Nothing is permitted yet:
    /// [`Self::permit`] does that (the route guard audits what it refuses, with the caller).
    pub async fn identify(st: &AppState, headers: &HeaderMap) -> ApiResult<Caller> {
        let span = crate::telemetry::otel::step("auth");
        let (principal, own) = tracing::Instrument::instrument(principal_and_tenant(st, headers), span).await?;
        Ok(Caller { principal, own, named: headers.get(TENANT_HEADER).cloned() })
    }

    /// May the caller do `action` (`None`: a method the route does not have, checked by
    /// none) with the tenant header it sent? 403 for a role that may not, 403
    /// `foreign_tenant` for anyone but a platform-admin naming another tenant than its own.
    pub fn permit(&self, action: Option<Action>) -> ApiResult<()> {
        if let Some(action) = action {
            authorize(&self.principal, action)?;
        }
        if self.principal.role != Role::PlatformAdmin
            && let Some(h) = &self.named
        {
            let named = h.to_str().unwrap_or("\u{fffd}");
            if self.principal.tenant.as_deref() != Some(named) {
                return Err(foreign_tenant(named));
            }
        }
        Ok(())
    }

    /// The tenant the request acts in and its record (cached): the one a platform-admin
    /// names with the tenant header, else the caller's own (400 for a platform-admin that
    /// names none, 404 for a tenant that does not exist).
    pub async fn scope(&self, st: &AppState) -> ApiResult<Arc<CachedTenant>> {
        // A header that is not text names no tenant anyone has.
        let named = self.named.as_ref().map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let p = &self.principal;
        let name = match (p.role, named, &p.tenant) {
            (Role::PlatformAdmin, Some(h), _) => h,
            (_, Some(h), Some(t)) if h != &**t => return Err(foreign_tenant(h)),
            (_, _, Some(t)) => t,
            _ => return Err(ApiError::BadRequest(format!("name the tenant with the {TENANT_HEADER} header"))),
        };
        if let Some(t) = self.own.as_ref().filter(|t| t.name == name) {
            return Ok(t.clone());
        }
        match st.tenant(name).await? {
            Some(t) => Ok(t),
            None => Err(ApiError::NotFound(format!("tenant {name:?} not found"))),
        }
    }

    /// The record of the caller's own tenant, if its credentials have one.
    pub fn own(&self) -> Option<&Arc<CachedTenant>> {
        self.own.as_ref()
    }

    /// The tenant a platform-admin names with the tenant header, if it is text.
    pub fn named(&self) -> Option<&str> {
        self.named.as_ref().and_then(|v| v.to_str().ok())
    }
}

/// The [`Caller`] the route guard authenticated before the handler runs (it is there on
/// every `/v1` route); a route outside the guard is refused (401), never let in.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .remove::<Caller>()
            .ok_or_else(|| ApiError::Unauthorized("missing or invalid credentials".into()))
    }
}

/// A non-platform-admin named another tenant than its own in the tenant header.
fn foreign_tenant(named: &str) -> ApiError {
    ApiError::ForeignTenant(format!(
        "only a platform-admin may act in another tenant with {TENANT_HEADER} (it names {named:?})"
    ))
}

/// The credentials of `Authorization: Bearer <credentials>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// The principal of the request's credentials, and the record of its tenant (`None` for a
/// platform-admin without one). Credentials of a deleted tenant are refused.
async fn principal_and_tenant(st: &AppState, headers: &HeaderMap) -> ApiResult<(Principal, Option<Arc<CachedTenant>>)> {
    let unauthorized = |why: String| {
        tracing::info!(reason = %why, "refused credentials");
        ApiError::Unauthorized("missing or invalid credentials".into())
    };
    let raw = bearer(headers).ok_or_else(|| unauthorized("no bearer credentials".into()))?;
    if let Some((id, secret)) = auth::parse_api_key(raw) {
        let Some(k) = st.api_key(id).await? else {
            return Err(unauthorized(format!("unknown key {id}")));
        };
        if k.revoked || !auth::constant_time_eq(k.hash.as_bytes(), auth::hash_secret(secret).as_bytes()) {
            return Err(unauthorized(format!("revoked or wrong key {id}")));
        }
        let Some(tenant) = st.tenant(&k.tenant).await? else {
            return Err(unauthorized(format!("key {id} of a deleted tenant")));
        };
        // A key made for an earlier tenant of this name (keys from before tenant ids: made
        // before this tenant was) never acts for this one.
        let same = if k.tenant_id.is_empty() { k.created_ms >= tenant.created_ms } else { k.tenant_id == tenant.id };
        if !same {
            tracing::info!(key = id, tenant = %k.tenant, "refused an API key of an earlier tenant of this name");
            return Err(ApiError::CredentialsPredateTenant(format!(
                "this API key belongs to an earlier tenant named {:?}, deleted since",
                k.tenant
            )));
        }
        let role = Role::parse(&k.role).ok_or_else(|| unauthorized("bad role on key".into()))?;
        let p = Principal {
            subject: format!("key:{id}").into(),
            tenant: Some(k.tenant.as_str().into()),
            role,
            issued_at: None,
        };
        return Ok((p, Some(tenant)));
    }
    let p = st.verifier.authenticate(raw).await.map_err(|e| match e {
        auth::AuthError::UnknownKey(why) => {
            tracing::info!(reason = %why, "refused credentials");
            ApiError::UnknownSigningKey(why)
        }
        auth::AuthError::Unavailable(why) => ApiError::Busy { code: "idp_unavailable", message: why },
        other => unauthorized(other.to_string()),
    })?;
    let tenant = match &p.tenant {
        Some(t) => match st.tenant(t).await? {
            Some(record) if record.accepts_token_issued_at(p.issued_at) => Some(record),
            Some(_) => {
                tracing::info!(tenant = %t, iat = ?p.issued_at, "refused a token of an earlier tenant of this name");
                return Err(ApiError::CredentialsPredateTenant(format!(
                    "tenant {t:?} was deleted and created again: its tokens must be issued (iat) after that"
                )));
            }
            None => return Err(unauthorized(format!("token of unknown or deleted tenant {t:?}"))),
        },
        None => None,
    };
    Ok((p, tenant))
}
