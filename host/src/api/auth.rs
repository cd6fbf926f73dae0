//! Authentication (JWT bearer tokens and API keys) and role-based access control.
//!
//! JWTs: one algorithm, pinned by config; `exp`, `iss`, `aud` and `sub` required, `nbf`
//! checked when present (with the same leeway as `exp`), `aud` a string or an array that
//! contains the configured audience (RFC 7519); the validation is built from config only,
//! never from the token's header. The tenant and
//! role come from verified claims only. Tokens of OpenID Connect issuers (`[[auth.oidc]]`)
//! are verified with the keys those issuers publish (see [`super::oidc`]). API keys (`ck_<id>_<secret>`) are stored as
//! SHA-256 hashes and can be revoked.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::secrets;

/// The four roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read only, within its tenant.
    Observer,
    /// Modules, agents, invocations, logs within its tenant.
    Developer,
    /// Everything within its tenant, keys and audit included.
    TenantAdmin,
    /// Everything, every tenant.
    PlatformAdmin,
}

impl Role {
    /// Parse a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "observer" => Role::Observer,
            "developer" => Role::Developer,
            "tenant-admin" => Role::TenantAdmin,
            "platform-admin" => Role::PlatformAdmin,
            _ => return None,
        })
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Observer => "observer",
            Role::Developer => "developer",
            Role::TenantAdmin => "tenant-admin",
            Role::PlatformAdmin => "platform-admin",
        }
    }

    /// Every role, least privileged first.
    pub const ALL: [Role; 4] = [Role::Observer, Role::Developer, Role::TenantAdmin, Role::PlatformAdmin];
}

/// What a request wants to do; the RBAC table maps each to the roles allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create, update or delete tenants; list all tenants; read the cluster's nodes.
    ManageTenants,
    /// Read a tenant record.
    ReadTenant,
    /// Upload or delete modules.
    WriteModules,
    /// List and read modules.
    ReadModules,
    /// Deploy, configure, upgrade, roll back, stop, start, delete agents.
    WriteAgents,
    /// List and read agents.
    ReadAgents,
    /// Invoke agents.
    Invoke,
    /// Read agent logs.
    ReadLogs,
    /// Read the audit log.
    ReadAudit,
    /// Create, list and revoke API keys.
    ManageKeys,
    /// Create, replace and delete resource profiles.
    ManageProfiles,
    /// List and read resource profiles.
    ReadProfiles,
    /// Store, list and delete the tenant's registry credentials.
    ManageRegistries,
    /// Store, list, read the metadata of and delete the tenant's secrets.
    ManageSecrets,
    /// Take a backup of the whole store.
    Backup,
    /// Read and set the tenant's egress allow-list.
    ManageEgress,
}

impl Action {
    /// The RBAC table: may `role` do this (within its tenant, unless platform-admin)?
    pub fn allowed(self, role: Role) -> bool {
        use Role::*;
        match self {
            Action::ManageTenants | Action::Backup => role == PlatformAdmin,
            Action::ReadTenant => role >= TenantAdmin,
            Action::WriteModules | Action::WriteAgents | Action::Invoke => role >= Developer,
            Action::ReadModules | Action::ReadAgents | Action::ReadLogs | Action::ReadProfiles => role >= Observer,
            Action::ReadAudit
            | Action::ManageKeys
            | Action::ManageProfiles
            | Action::ManageRegistries
            | Action::ManageSecrets
            | Action::ManageEgress => role >= TenantAdmin,
        }
    }

    /// Every action.
    pub const ALL: [Action; 16] = [
        Action::ManageTenants,
        Action::ReadTenant,
        Action::WriteModules,
        Action::ReadModules,
        Action::WriteAgents,
        Action::ReadAgents,
        Action::Invoke,
        Action::ReadLogs,
        Action::ReadAudit,
        Action::ManageKeys,
        Action::ManageProfiles,
        Action::ReadProfiles,
        Action::ManageRegistries,
        Action::ManageSecrets,
        Action::Backup,
        Action::ManageEgress,
    ];
}

/// Who is calling, from verified credentials. Cheap to clone: it is cached with its
/// token and cloned into every request made with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Token subject, or `key:<id>` for API keys.
    pub subject: Arc<str>,
    /// The tenant the credentials belong to (`None`: a platform-admin without one).
    pub tenant: Option<Arc<str>>,
    /// The role.
    pub role: Role,
    /// When the token was issued (its `iat`, seconds since the epoch; `None` for API keys).
    pub issued_at: Option<u64>,
}

impl Principal {
    /// The principal of verified claims: a known role, and a tenant unless platform-admin.
    pub fn from_claims(claims: Claims) -> Result<Self, AuthError> {
        let role =
            Role::parse(&claims.role).ok_or_else(|| AuthError::Invalid(format!("unknown role {:?}", claims.role)))?;
        if claims.tenant.is_none() && role != Role::PlatformAdmin {
            return Err(AuthError::Invalid("token without a tenant".into()));
        }
        Ok(Self { subject: claims.sub.into(), tenant: claims.tenant.map(Arc::from), role, issued_at: claims.iat })
    }
}

/// Claims Cortex reads from a token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience (a token may carry an array; [`Verifier::verify`] gives the configured one
    /// it holds).
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: Option<u64>,
    /// Tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Role.
    pub role: String,
}

/// Claims as a token carries them: `aud` is left to jsonwebtoken's validation, which takes a
/// string or an array.
#[derive(Deserialize)]
struct Incoming {
    sub: String,
    iss: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    tenant: Option<String>,
    role: String,
}

/// Why credentials were refused (the detail is for the log; clients see a generic 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials.
    #[error("missing credentials: send `Authorization: Bearer <token>`")]
    Missing,
    /// The token failed verification.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Bad configuration of keys.
    #[error("auth configuration: {0}")]
    Config(String),
    /// The token names a signing key its issuer does not publish (or not yet: a fetch of
    /// the issuer's keys is rate-limited).
    #[error("unknown signing key: {0}")]
    UnknownKey(String),
    /// The token's issuer's keys could not be fetched yet.
    #[error("{0}")]
    Unavailable(String),
}

enum Keys {
    Single(DecodingKey),
    Jwks(HashMap<String, DecodingKey>),
}

/// Verified tokens kept before the cache is emptied.
const MAX_CACHED_TOKENS: usize = 10_000;

/// Verifies bearer tokens.
pub struct Verifier {
    validation: Validation,
    keys: Keys,
    /// The HS256 secret, for minting development tokens.
    hs_secret: Option<Vec<u8>>,
    /// OpenID Connect issuers, if any are configured.
    oidc: Option<super::oidc::Oidc>,
    /// Verified tokens and their principals, until they expire (`exp`, seconds).
    verified: Mutex<HashMap<u64, Verified, BuildHasherDefault<TailHasher>>>,
}

/// A verified token in the cache, under the [`tail`] of its signature.
struct Verified {
    token: Box<str>,
    exp: u64,
    principal: Principal,
}

/// The last 8 bytes of a token, which end its signature: keys for the verified-token cache
/// that cost nothing to hash. A signature cannot be chosen without the signing key, so
/// callers cannot crowd one slot of the map; a token that only shares the tail of a cached
/// one fails the comparison of whole tokens and is verified.
fn tail(token: &str) -> u64 {
    let mut last = [0u8; 8];
    let b = token.as_bytes();
    let n = b.len().min(8);
    last[..n].copy_from_slice(&b[b.len() - n..]);
    u64::from_le_bytes(last)
}

/// Hashes a [`tail`]: a multiply spreads its bits.
#[derive(Default)]
struct TailHasher(u64);

impl std::hash::Hasher for TailHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Config(format!("cannot read {}: {e}", path.display())))
}

/// Load (or create, mode 0600) the development HS256 secret.
pub fn hs256_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if s.len() >= 32 {
            return Ok(s.as_bytes().to_vec());
        }
    }
    let raw = secrets::random_bytes::<32>().map_err(|e| AuthError::Config(format!("cannot read random bytes: {e}")))?;
    let hex = secrets::hex(&raw);
    secrets::write_private(path, hex.as_bytes())
        .map_err(|e| AuthError::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok(hex.into_bytes())
}

impl Verifier {
    /// Build from config; `data_dir` holds the development secret.
    pub fn new(cfg: &AuthConfig, data_dir: &Path) -> Result<Self, AuthError> {
        let alg = match cfg.algorithm.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            other => {
                return Err(AuthError::Config(format!("unsupported algorithm {other:?} (HS256, RS256, ES256, EdDSA)")));
            }
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_audience(&[cfg.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = cfg.leeway_seconds;
        validation.validate_exp = true;
        // A token not valid yet is refused (jsonwebtoken skips `nbf` unless asked).
        validation.validate_nbf = true;
        let mut hs_secret = None;
        let keys = if alg == Algorithm::HS256 {
            let path = cfg.secret_file.clone().unwrap_or_else(|| data_dir.join("jwt-hs256.secret"));
            let secret = hs256_secret(&path)?;
            let key = DecodingKey::from_secret(&secret);
            hs_secret = Some(secret);
            Keys::Single(key)
        } else if let Some(jwks) = &cfg.jwks_file {
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&read(jwks)?)
                .map_err(|e| AuthError::Config(format!("{}: not a JWKS: {e}", jwks.display())))?;
            let mut map = HashMap::new();
            for jwk in &set.keys {
                let Some(kid) = jwk.common.key_id.clone() else { continue };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Config(format!("key {kid}: {e}")))?;
                map.insert(kid, key);
            }
            Keys::Jwks(map)
        } else if let Some(pem) = &cfg.public_key_file {
            let pem = read(pem)?;
            let key = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            }
            .map_err(|e| AuthError::Config(format!("public key: {e}")))?;
            Keys::Single(key)
        } else {
            return Err(AuthError::Config(format!("{} needs auth.public_key_file or auth.jwks_file", cfg.algorithm)));
        };
        let oidc = Some(super::oidc::Oidc::new(&cfg.oidc)?).filter(|o| !o.is_empty());
        Ok(Self { validation, keys, hs_secret, oidc, verified: Mutex::default() })
    }

    /// Start fetching the OIDC issuers' keys in the background (within a tokio runtime),
    /// counted in `metrics`.
    pub fn start(&self, metrics: &crate::telemetry::OidcMetrics) {
        if let Some(o) = &self.oidc {
            o.start(metrics);
        }
    }

    /// The principal of a bearer token: [`Self::principal`], and for a token of an OIDC
    /// issuer the same with that issuer's keys, fetched again (rate-limited) for a key id
    /// it does not know yet.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let Some(issuer) = self.oidc.as_ref().and_then(|o| o.issuer_of(token)) else {
            return self.principal(token);
        };
        if let Some(p) = self.cached(token) {
            return Ok(p.0);
        }
        let (p, exp) = issuer.principal(token).await?;
        self.remember(token, exp, &p);
        Ok(p)
    }

    /// A verified token's principal and `exp` from the cache, unless it expired.
    fn cached(&self, token: &str) -> Option<(Principal, u64)> {
        let now = crate::registry::now_ms() / 1000;
        let cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        let v = cache.get(&tail(token))?;
        (v.exp > now && *v.token == *token).then(|| (v.principal.clone(), v.exp))
    }

    /// Cache a verified token.
    fn remember(&self, token: &str, exp: u64, p: &Principal) {
        let mut cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.clear();
        }
        cache.insert(tail(token), Verified { token: token.into(), exp, principal: p.clone() });
    }

    /// The principal of a bearer token, remembering verified tokens until they expire.
    pub fn principal(&self, token: &str) -> Result<Principal, AuthError> {
        let now = crate::registry::now_ms() / 1000;
        let key = tail(token);
        if let Some(v) = self.verified.lock().unwrap_or_else(PoisonError::into_inner).get(&key)
            && v.exp > now
            && *v.token == *token
        {
            return Ok(v.principal.clone());
        }
        let claims = self.verify(token)?;
        let exp = claims.exp;
        let p = Principal::from_claims(claims)?;
        let mut cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.clear();
        }
        cache.insert(key, Verified { token: token.into(), exp, principal: p.clone() });
        Ok(p)
    }

    /// Verify a token and return its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let key = match &self.keys {
            Keys::Single(k) => k,
            Keys::Jwks(map) => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
                let kid = header.kid.ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                map.get(&kid).ok_or_else(|| AuthError::Invalid(format!("unknown kid {kid:?}")))?
            }
        };
        let claims = jsonwebtoken::decode::<Incoming>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        // jsonwebtoken has checked `aud` (a string or an array holding the configured one).
        let aud = self.validation.aud.iter().flatten().next().cloned().unwrap_or_default();
        let Incoming { sub, iss, exp, iat, tenant, role } = claims;
        Ok(Claims { sub, iss, aud, exp, iat, tenant, role })
    }

    /// The `exp` of a token this verifier accepts (seconds since the epoch).
    pub fn expiry(&self, token: &str) -> Result<u64, AuthError> {
        if let Some((_, exp)) = self.cached(token) {
            return Ok(exp);
        }
        if let Some(issuer) = self.oidc.as_ref().and_then(|o| o.issuer_of(token)) {
            return Ok(issuer.verify(token)?.1);
        }
        Ok(self.verify(token)?.exp)
    }

    /// Mint an HS256 development token (only when the server runs with HS256).
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        let secret = self.hs_secret.as_ref().ok_or_else(|| AuthError::Config("minting needs HS256".into()))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
            .map_err(|e| AuthError::Config(e.to_string()))
    }
}

/// A new API key: `(id, full key to show once, hash to store)`.
pub fn new_api_key() -> std::io::Result<(String, String, String)> {
    let hex = secrets::hex(&secrets::random_bytes::<24>()?);
    let (id, secret) = hex.split_at(12);
    Ok((id.to_owned(), format!("ck_{id}_{secret}"), hash_secret(secret)))
}

/// Split `ck_<id>_<secret>` into id and secret.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("ck_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Compare without an early exit, so timing does not tell how much of a hash matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The stored form of a key's secret.
pub fn hash_secret(secret: &str) -> String {
    secrets::sha256_hex(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_table_matches_the_readme() {
        use Action::*;
        let row = |a: Action| Role::ALL.map(|r| a.allowed(r));
        // observer, developer, tenant-admin, platform-admin
        assert_eq!(row(ManageTenants), [false, false, false, true]);
        assert_eq!(row(ReadTenant), [false, false, true, true]);
        assert_eq!(row(WriteModules), [false, true, true, true]);
        assert_eq!(row(ReadModules), [true, true, true, true]);
        assert_eq!(row(WriteAgents), [false, true, true, true]);
        assert_eq!(row(ReadAgents), [true, true, true, true]);
        assert_eq!(row(Invoke), [false, true, true, true]);
        assert_eq!(row(ReadLogs), [true, true, true, true]);
        assert_eq!(row(ReadAudit), [false, false, true, true]);
        assert_eq!(row(ManageKeys), [false, false, true, true]);
        assert_eq!(row(ManageProfiles), [false, false, true, true]);
        assert_eq!(row(ReadProfiles), [true, true, true, true]);
    }

    #[test]
    fn a_cached_token_vouches_only_for_itself() {
        let dir = std::env::temp_dir().join(format!("cortex-verifier-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = AuthConfig::default();
        let v = Verifier::new(&cfg, &dir).unwrap();
        let claims = |tenant: &str, role: &str| Claims {
            sub: "someone".into(),
            iss: cfg.issuer.clone(),
            aud: cfg.audience.clone(),
            exp: crate::registry::now_ms() / 1000 + 600,
            iat: None,
            tenant: Some(tenant.into()),
            role: role.into(),
        };
        let token = v.mint(&claims("alpha", "observer")).unwrap();
        assert_eq!(v.principal(&token).unwrap().role, Role::Observer);
        // Cached now. The same signature under other claims (another tenant, a stronger
        // role) shares the cache slot of the verified token, and must still be refused.
        let forged_claims = v.mint(&claims("beta", "tenant-admin")).unwrap();
        let payload = forged_claims.split('.').nth(1).unwrap();
        let mut parts = token.split('.');
        let (head, _, sig) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
        let forged = format!("{head}.{payload}.{sig}");
        assert_eq!(tail(&forged), tail(&token));
        assert!(matches!(v.principal(&forged), Err(AuthError::Invalid(_))), "a forged token was let in");
        // The genuine token still answers from the cache, and a second genuine one too.
        assert_eq!(v.principal(&token).unwrap().tenant.as_deref(), Some("alpha"));
        let other = v.mint(&claims("beta", "developer")).unwrap();
        assert_eq!(v.principal(&other).unwrap().tenant.as_deref(), Some("beta"));
        assert_eq!(v.principal(&token).unwrap().tenant.as_deref(), Some("alpha"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn api_keys_parse_and_hash() {
        let (id, key, hash) = new_api_key().unwrap();
        let (pid, secret) = parse_api_key(&key).unwrap();
        assert_eq!(pid, id);
        assert_eq!(hash_secret(secret), hash);
        assert_eq!(parse_api_key("ck__x"), None);
        assert_eq!(parse_api_key("bearer"), None);
    }
}
