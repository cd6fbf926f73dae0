//! Single sign-on: tokens of OpenID Connect issuers (`[[auth.oidc]]`), verified with the
//! keys each issuer publishes.
//!
//! Each issuer's keys come from its discovery document
//! (`<issuer>/.well-known/openid-configuration`, whose `issuer` must be the configured one)
//! and the `jwks_uri` it names. They are fetched in the background at start and every
//! `refresh_interval_ms` (after a failure, every `min_refresh_interval_ms` until one
//! succeeds), and again when a token names a `kid` the issuer's set lacks (a rotation):
//! at most once per `min_refresh_interval_ms` per issuer, so a flood of tokens with made-up
//! key ids costs the provider one fetch per interval; meanwhile such a token is refused
//! (`unknown_signing_key`, 401). Until a first fetch succeeds, the issuer's tokens are
//! refused with `idp_unavailable` (503); the keys of the last good fetch are kept through
//! failures. The host serves throughout.
//!
//! A token is routed by its (unverified) `iss` to the issuer of that name and verified with
//! that issuer's keys only, its algorithms only, its audience, `exp` required, `nbf`
//! checked, both with the issuer's leeway. The principal comes from the verified claims
//! through the issuer's claim mapping (subject, tenant, role, groups).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::auth::{AuthError, Principal, Role};
use crate::config::OidcIssuerConfig;
use crate::telemetry::OidcMetrics;

/// The largest discovery document or key set read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The configured OIDC issuers.
pub struct Oidc {
    issuers: Vec<Arc<Issuer>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.issuers.iter().map(|i| &i.cfg.issuer)).finish()
    }
}

/// One issuer: its configuration, validation and keys.
pub struct Issuer {
    cfg: OidcIssuerConfig,
    discovery_url: String,
    /// One validation per accepted algorithm (jsonwebtoken checks one family at a time).
    validations: Vec<(Algorithm, Validation)>,
    /// The roles of `cfg.groups`, parsed once.
    group_roles: Vec<Role>,
    http: reqwest::Client,
    /// The keys of the last good fetch (`None`: none succeeded yet), by `kid` (`""` for a
    /// key without one).
    keys: RwLock<Option<HashMap<String, Key>>>,
    /// When a token's unknown `kid` last caused a fetch: the rate limit.
    gate: tokio::sync::Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches attempted so far (a waiter for [`Self::fetching`] skips its own if one ran).
    attempts: AtomicU64,
    metrics: OnceLock<OidcMetrics>,
}

/// A verification key and the algorithm its JWK pins, if any.
struct Key {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

/// A URL Cortex may fetch keys from: https, or http to a loopback host (a provider on the
/// same machine, as in tests).
fn fetchable(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    match u.scheme() {
        "https" => true,
        "http" => match u.host_str() {
            Some("localhost") => true,
            Some(h) => h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            None => false,
        },
        _ => false,
    }
}

fn algorithm(name: &str) -> Result<Algorithm, AuthError> {
    let alg: Algorithm = name.parse().map_err(|_| AuthError::Config(format!("unknown algorithm {name:?}")))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(AuthError::Config(format!("{name} needs a shared secret: OIDC issuers sign with public keys")));
    }
    Ok(alg)
}

impl Oidc {
    /// The issuers of `cfgs`, checked (no key is fetched yet: see [`Self::start`]).
    pub fn new(cfgs: &[OidcIssuerConfig]) -> Result<Self, AuthError> {
        let mut issuers = Vec::new();
        for cfg in cfgs {
            let bad = |what: String| AuthError::Config(format!("auth.oidc issuer {:?}: {what}", cfg.issuer));
            if cfg.audience.is_empty() {
                return Err(bad("needs an audience".into()));
            }
            let discovery_url = format!("{}/.well-known/openid-configuration", cfg.issuer.trim_end_matches('/'));
            if !fetchable(&discovery_url) {
                return Err(bad("the issuer must be an https URL (or http on a loopback address)".into()));
            }
            if issuers.iter().any(|i: &Arc<Issuer>| i.cfg.issuer == cfg.issuer) {
                return Err(bad("configured twice".into()));
            }
            let algorithms = cfg.algorithms.iter().map(|a| algorithm(a)).collect::<Result<Vec<_>, _>>()?;
            if algorithms.is_empty() {
                return Err(bad("needs at least one algorithm".into()));
            }
            let mut group_roles = Vec::new();
            for g in &cfg.groups {
                group_roles.push(
                    Role::parse(&g.role)
                        .ok_or_else(|| bad(format!("group {:?}: unknown role {:?}", g.group, g.role)))?,
                );
            }
            if cfg.role_claim.is_none() && cfg.groups.is_empty() {
                return Err(bad("needs a role_claim or groups (a mapping of groups to roles)".into()));
            }
            let validations = algorithms
                .into_iter()
                .map(|alg| {
                    let mut v = Validation::new(alg);
                    v.algorithms = vec![alg];
                    v.set_issuer(&[cfg.issuer.as_str()]);
                    v.set_audience(&[cfg.audience.as_str()]);
                    v.set_required_spec_claims(&["exp", "iss", "aud"]);
                    v.leeway = cfg.leeway_seconds;
                    v.validate_exp = true;
                    v.validate_nbf = true;
                    (alg, v)
                })
                .collect();
            let timeout = Duration::from_millis(cfg.request_timeout_ms.max(1));
            let http = reqwest::Client::builder()
                .connect_timeout(timeout)
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("cortex/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| bad(format!("cannot build an HTTP client: {e}")))?;
            issuers.push(Arc::new(Issuer {
                cfg: cfg.clone(),
                discovery_url,
                validations,
                group_roles,
                http,
                keys: RwLock::new(None),
                gate: tokio::sync::Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
                attempts: AtomicU64::new(0),
                metrics: OnceLock::new(),
            }));
        }
        Ok(Self { issuers })
    }

    /// Are any issuers configured?
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Start each issuer's background refresh (within a tokio runtime), counting fetches in
    /// `metrics`. The tasks end when the issuers are dropped.
    pub fn start(&self, metrics: &OidcMetrics) {
        for issuer in &self.issuers {
            for outcome in ["ok", "error"] {
                metrics.refresh.with_label_values(&[issuer.cfg.issuer.as_str(), outcome]);
            }
            metrics.last_success.with_label_values(&[issuer.cfg.issuer.as_str()]);
            let _ = issuer.metrics.set(metrics.clone());
            let weak = Arc::downgrade(issuer);
            tokio::spawn(async move {
                loop {
                    let Some(me) = weak.upgrade() else { return };
                    let ok = me.refresh(None).await;
                    let ms = if ok { me.cfg.refresh_interval_ms } else { me.cfg.min_refresh_interval_ms };
                    drop(me);
                    tokio::time::sleep(Duration::from_millis(ms.max(100))).await;
                }
            });
        }
    }

    /// The issuer a token claims (by its unverified `iss`), if it is one of these.
    pub fn issuer_of(&self, token: &str) -> Option<&Arc<Issuer>> {
        if self.issuers.is_empty() {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token).ok()?.iss?;
        self.issuers.iter().find(|i| i.cfg.issuer == iss)
    }
}

impl Issuer {
    /// The principal of `token` and its `exp`, fetching the keys again (rate-limited) when
    /// its `kid` is unknown.
    pub async fn principal(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let kid = kid_of(token)?;
        if !self.has(&kid) {
            self.refresh_for(&kid).await?;
        }
        self.verify(token)
    }

    /// The principal of `token` and its `exp`, with the keys at hand.
    pub fn verify(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let kid = header.kid.clone().unwrap_or_default();
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::Invalid(format!("algorithm {:?} is not accepted from this issuer", header.alg)));
        };
        let claims = {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            let Some(key) = keys.as_ref().and_then(|k| k.get(&kid)) else { return Err(self.missing(&kid)) };
            if key.alg.is_some_and(|a| a != header.alg) {
                return Err(AuthError::Invalid(format!("the token's alg {:?} is not its key's", header.alg)));
            }
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
                .map_err(|e| AuthError::Invalid(e.to_string()))?
                .claims
        };
        self.map_claims(&claims)
    }

    fn has(&self, kid: &str) -> bool {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|k| k.contains_key(kid))
    }

    /// Why a token of key `kid` cannot be verified now.
    fn missing(&self, kid: &str) -> AuthError {
        if self.keys.read().unwrap_or_else(PoisonError::into_inner).is_none() {
            AuthError::Unavailable(format!(
                "the signing keys of issuer {:?} could not be fetched yet; try again shortly",
                self.cfg.issuer
            ))
        } else {
            AuthError::UnknownKey(format!("issuer {:?} has no signing key {kid:?}", self.cfg.issuer))
        }
    }

    /// Fetch the keys for an unknown `kid`, unless one such fetch ran within
    /// `min_refresh_interval_ms`.
    async fn refresh_for(&self, kid: &str) -> Result<(), AuthError> {
        let mut last = self.gate.lock().await;
        if self.has(kid) {
            return Ok(());
        }
        let min = Duration::from_millis(self.cfg.min_refresh_interval_ms);
        if last.is_some_and(|t| t.elapsed() < min) {
            return Err(self.missing(kid));
        }
        *last = Some(Instant::now());
        self.refresh(Some(self.attempts.load(Ordering::Acquire))).await;
        drop(last);
        if self.has(kid) { Ok(()) } else { Err(self.missing(kid)) }
    }

    /// Fetch the discovery document and key set, and keep the keys if they are good. With
    /// `seen`, a fetch that ran while this one waited its turn counts as this one. Whether
    /// the issuer's keys are good now.
    async fn refresh(&self, seen: Option<u64>) -> bool {
        let _one = self.fetching.lock().await;
        if seen.is_some_and(|s| s != self.attempts.load(Ordering::Acquire)) {
            return self.keys.read().unwrap_or_else(PoisonError::into_inner).is_some();
        }
        let result = self.fetch().await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let issuer = self.cfg.issuer.as_str();
        let metrics = self.metrics.get();
        match result {
            Ok(keys) => {
                tracing::debug!(issuer, keys = keys.len(), "fetched the issuer's signing keys");
                if let Some(m) = metrics {
                    m.refresh.with_label_values(&[issuer, "ok"]).inc();
                    let now = i64::try_from(crate::registry::now_ms() / 1000).unwrap_or(i64::MAX);
                    m.last_success.with_label_values(&[issuer]).set(now);
                }
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(keys);
                true
            }
            Err(e) => {
                tracing::warn!(issuer, error = %e, "cannot fetch the issuer's signing keys");
                if let Some(m) = metrics {
                    m.refresh.with_label_values(&[issuer, "error"]).inc();
                }
                self.keys.read().unwrap_or_else(PoisonError::into_inner).is_some()
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Key>, String> {
        let doc = self.get_json(&self.discovery_url).await?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(format!("the discovery document names issuer {}", doc.get("issuer").unwrap_or(&Value::Null)));
        }
        let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or("the discovery document has no jwks_uri")?;
        if !fetchable(uri) {
            return Err(format!("jwks_uri {uri:?} is not https"));
        }
        let set = self.get_json(uri).await?;
        let list = set.get("keys").and_then(Value::as_array).ok_or("the key set has no keys array")?;
        let mut keys = HashMap::new();
        for raw in list {
            // A key of a type this server does not know is skipped, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else { continue };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_))
            {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
            let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
            keys.insert(jwk.common.key_id.clone().unwrap_or_default(), Key { key, alg });
        }
        if keys.is_empty() {
            return Err("the key set has no usable signing key".into());
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let mut r = self.http.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("GET {url}: {}", r.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
    }

    /// The principal of verified `claims` through the issuer's mapping, and their `exp`.
    fn map_claims<'a>(&'a self, c: &'a Map<String, Value>) -> Result<(Principal, u64), AuthError> {
        let cfg = &self.cfg;
        let subject = claim(c, &cfg.subject_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Invalid(format!("no subject claim {:?}", cfg.subject_claim)))?;
        let claimed_tenant = cfg.tenant_claim.as_deref().and_then(|k| claim(c, k)).and_then(Value::as_str);
        let mut best: Option<(Role, Option<&str>)> = None;
        let mut consider = |role: Role, tenant: Option<&'a str>| {
            if best.is_none_or(|(r, _)| role > r) {
                best = Some((role, tenant));
            }
        };
        if let Some(k) = &cfg.role_claim {
            for r in strings(claim(c, k)) {
                if let Some(role) = Role::parse(r) {
                    consider(role, claimed_tenant);
                }
            }
        }
        if let Some(k) = &cfg.groups_claim {
            for g in strings(claim(c, k)) {
                for (m, role) in cfg.groups.iter().zip(&self.group_roles) {
                    if m.group == g {
                        consider(*role, m.tenant.as_deref().or(claimed_tenant));
                    }
                }
            }
        }
        let (role, tenant) = best.ok_or_else(|| AuthError::Invalid("no role: no known role or mapped group".into()))?;
        if tenant.is_none() && role != Role::PlatformAdmin {
            return Err(AuthError::Invalid("token without a tenant".into()));
        }
        let exp = c.get("exp").and_then(Value::as_u64).ok_or_else(|| AuthError::Invalid("no exp".into()))?;
        let principal = Principal {
            subject: subject.into(),
            tenant: tenant.map(Arc::from),
            role,
            issued_at: c.get("iat").and_then(Value::as_u64),
        };
        Ok((principal, exp))
    }
}

/// The `kid` of a token's header (`""` without one).
fn kid_of(token: &str) -> Result<String, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
    Ok(header.kid.unwrap_or_default())
}

/// Claim `path`: a top-level claim of that exact name, else a dotted path into objects.
fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// A claim's strings: itself if a string, its strings if an array, a space-separated
/// string's words (`scope`) never.
fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_are_found_by_exact_name_or_dotted_path() {
        let c = json!({"https://x.example/roles": ["a"], "realm_access": {"roles": ["b", 3]}});
        let c = c.as_object().unwrap();
        assert_eq!(strings(claim(c, "https://x.example/roles")), ["a"]);
        assert_eq!(strings(claim(c, "realm_access.roles")), ["b"]);
        assert!(claim(c, "realm_access.nope").is_none());
    }

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(fetchable("https://idp.example/.well-known/openid-configuration"));
        assert!(fetchable("http://127.0.0.1:8080/x"));
        assert!(fetchable("http://localhost/x"));
        assert!(!fetchable("http://idp.example/x"));
        assert!(!fetchable("file:///etc/passwd"));
    }
}
