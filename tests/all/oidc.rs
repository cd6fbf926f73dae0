//! Single sign-on: OIDC issuers served by the test on 127.0.0.1 (discovery document and
//! key set), RS256 and ES256 keys made by the test, rotation without a restart, a flood of
//! unknown key ids, a provider down at start, two issuers with their own claim mappings.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode as AxStatus;
use axum::response::IntoResponse;

use cortex_host::config::{OidcGroupMapping, OidcIssuerConfig};
use cortex_host::registry::now_ms;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Server, answer, b64url, openssl, rsa_modulus};

/// A signing key made by the test: its `kid`, algorithm, private key and public JWK.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    alg: Algorithm,
    private: EncodingKey,
    jwk: Value,
}

fn rsa_key(dir: &Path, kid: &str) -> SigningKey {
    let private = dir.join(format!("{kid}.pem"));
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private.to_str().unwrap()]);
    let n = rsa_modulus(&private);
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        private: EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(&n), "e": "AQAB"}),
    }
}

fn ec_key(dir: &Path, kid: &str) -> SigningKey {
    let private = dir.join(format!("{kid}.pem"));
    let p = private.to_str().unwrap();
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p]);
    // The public key's DER ends with the uncompressed point: 0x04, x, y.
    let der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    let point = &der[der.len() - 65..];
    assert_eq!(point[0], 4);
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        private: EncodingKey::from_ec_pem(&std::fs::read(&private).unwrap()).unwrap(),
        jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
                    "x": b64url(&point[1..33]), "y": b64url(&point[33..])}),
    }
}

/// What the test's provider serves.
#[derive(Default)]
struct ProviderState {
    issuer: Mutex<String>,
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
}

/// An OIDC provider on 127.0.0.1: discovery document and key set.
struct Provider {
    state: Arc<ProviderState>,
    issuer: String,
}

impl Provider {
    async fn start(keys: &[&SigningKey], down: bool) -> Provider {
        let state = Arc::new(ProviderState::default());
        state.down.store(down, Ordering::SeqCst);
        *state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
        async fn discovery(State(st): State<Arc<ProviderState>>) -> axum::response::Response {
            if st.down.load(Ordering::SeqCst) {
                return AxStatus::SERVICE_UNAVAILABLE.into_response();
            }
            let issuer = st.issuer.lock().unwrap().clone();
            Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")})).into_response()
        }
        async fn jwks(State(st): State<Arc<ProviderState>>) -> axum::response::Response {
            st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            if st.down.load(Ordering::SeqCst) {
                return AxStatus::SERVICE_UNAVAILABLE.into_response();
            }
            Json(json!({"keys": *st.keys.lock().unwrap()})).into_response()
        }
        let app = axum::Router::new()
            .route("/realm/.well-known/openid-configuration", axum::routing::get(discovery))
            .route("/realm/keys", axum::routing::get(jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/realm", listener.local_addr().unwrap());
        *state.issuer.lock().unwrap() = issuer.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Provider { state, issuer }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

/// An issuer's configuration: audience `cortex`, fast retries for tests.
fn issuer_config(issuer: &str) -> OidcIssuerConfig {
    OidcIssuerConfig {
        issuer: issuer.into(),
        audience: "cortex".into(),
        tenant_claim: Some("tenant".into()),
        role_claim: Some("role".into()),
        min_refresh_interval_ms: 200,
        ..OidcIssuerConfig::default()
    }
}

/// A token signed with `key` (its kid in the header) with `claims`, plus `iss`, `aud` and
/// an `exp` ten minutes ahead unless `claims` sets them.
fn token(key: &SigningKey, iss: &str, claims: Value) -> String {
    token_kid(key, &key.kid, iss, claims)
}

fn token_kid(key: &SigningKey, kid: &str, iss: &str, claims: Value) -> String {
    let mut c = json!({"iss": iss, "aud": "cortex", "exp": now_ms() / 1000 + 600, "iat": now_ms() / 1000 - 1});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    let c = Value::Object(
        c.as_object().unwrap().iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect(),
    );
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &c, &key.private).unwrap()
}

/// Status and problem code of `GET path` with `token`.
async fn get(s: &Server, path: &str, token: &str) -> (StatusCode, String) {
    let a = answer(s.req(Method::GET, path, token).send().await.unwrap()).await;
    (a.status, a.code)
}

/// Poll `GET path` with `token` until it answers `want` (bounded); the last answer.
async fn until(s: &Server, path: &str, token: &str, want: StatusCode) -> (StatusCode, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = get(s, path, token).await;
        if got.0 == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of metric series `series` (its name and labels as exposed) on `s`, if any.
async fn metric(s: &Server, series: &str) -> Option<f64> {
    let text = s.client.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_are_accepted_and_keys_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec) = (rsa_key(dir.path(), "rsa-1"), ec_key(dir.path(), "ec-1"));
    let idp = Provider::start(&[&rsa, &ec], false).await;
    let iss = idp.issuer.clone();
    let s = Server::start_with(|c| c.auth.oidc = vec![issuer_config(&iss)]).await;
    // The static HS256 tokens keep working beside the issuer's.
    s.tenant("acme").await;
    let dev = json!({"sub": "ann", "tenant": "acme", "role": "developer"});
    assert_eq!(until(&s, "/v1/agents", &token(&rsa, &iss, dev.clone()), StatusCode::OK).await.0, StatusCode::OK);
    assert_eq!(get(&s, "/v1/agents", &token(&ec, &iss, dev.clone())).await.0, StatusCode::OK);
    // Audience, expiry, issuer: checked.
    let refused = [
        json!({"sub": "ann", "tenant": "acme", "role": "developer", "aud": "someone-else"}),
        json!({"sub": "ann", "tenant": "acme", "role": "developer", "exp": now_ms() / 1000 - 3600}),
        json!({"sub": "ann", "tenant": "acme", "role": "developer", "exp": null}),
        json!({"sub": "ann", "tenant": "acme", "role": "no-such-role"}),
        json!({"sub": "ann", "role": "developer"}),
    ];
    for claims in refused {
        assert_eq!(
            get(&s, "/v1/agents", &token(&rsa, &iss, claims.clone())).await.0,
            StatusCode::UNAUTHORIZED,
            "{claims}"
        );
    }
    // Within the leeway (60 s by default) an expired token still passes.
    let skewed = json!({"sub": "ann", "tenant": "acme", "role": "developer", "exp": now_ms() / 1000 - 10});
    assert_eq!(get(&s, "/v1/agents", &token(&rsa, &iss, skewed)).await.0, StatusCode::OK);
    // A token of another issuer name with the same key: not this issuer's, not the static one.
    let other = token(&rsa, "https://elsewhere.example", dev.clone());
    assert_eq!(get(&s, "/v1/agents", &other).await.0, StatusCode::UNAUTHORIZED);

    // Rotation: the provider publishes a new key and drops the old RSA one.
    let rsa2 = rsa_key(dir.path(), "rsa-2");
    idp.publish(&[&rsa2, &ec]);
    let fresh = token(&rsa2, &iss, dev.clone());
    assert_eq!(until(&s, "/v1/agents", &fresh, StatusCode::OK).await, (StatusCode::OK, String::new()));
    // A new token of the dropped key is refused once the keys were fetched again.
    let old = token(&rsa, &iss, json!({"sub": "bob", "tenant": "acme", "role": "observer"}));
    let (status, code) = get(&s, "/v1/agents", &old).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "unknown_signing_key"));

    // Metrics: fetches counted by outcome, the last good one's time.
    let label = format!("{{issuer=\"{iss}\",outcome=\"ok\"}}");
    let ok = metric(&s, &format!("cortex_oidc_refresh_total{label}")).await.unwrap();
    assert!(ok >= 2.0, "{ok}");
    let last = metric(&s, &format!("cortex_oidc_last_refresh_timestamp_seconds{{issuer=\"{iss}\"}}")).await.unwrap();
    assert!(last > 1.0e9, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_key_ids_costs_the_provider_one_fetch_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let key = ec_key(dir.path(), "ec-1");
    let idp = Provider::start(&[&key], false).await;
    let iss = idp.issuer.clone();
    let s = Server::start_with(|c| {
        c.auth.oidc = vec![OidcIssuerConfig { min_refresh_interval_ms: 600_000, ..issuer_config(&iss) }]
    })
    .await;
    s.tenant("acme").await;
    let good = token(&key, &iss, json!({"sub": "ann", "tenant": "acme", "role": "observer"}));
    assert_eq!(until(&s, "/v1/agents", &good, StatusCode::OK).await.0, StatusCode::OK);
    let before = idp.fetches();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..60 {
        let t =
            token_kid(&key, &format!("made-up-{i}"), &iss, json!({"sub": "x", "tenant": "acme", "role": "observer"}));
        let req = s.req(Method::GET, "/v1/agents", &t).send();
        flood.spawn(async move { answer(req.await.unwrap()).await });
    }
    while let Some(a) = flood.join_next().await {
        let a = a.unwrap();
        assert_eq!((a.status, a.code.as_str()), (StatusCode::UNAUTHORIZED, "unknown_signing_key"), "{}", a.text);
    }
    let during = idp.fetches() - before;
    assert!(during <= 1, "60 tokens of unknown kids made {during} key set fetches");
    // The known key still works throughout.
    assert_eq!(get(&s, "/v1/agents", &good).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_start_is_waited_for_and_the_host_serves_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path(), "rsa-1");
    let idp = Provider::start(&[&key], true).await;
    let iss = idp.issuer.clone();
    let s = Server::start_with(|c| c.auth.oidc = vec![issuer_config(&iss)]).await;
    s.tenant("acme").await;
    let t = token(&key, &iss, json!({"sub": "ann", "tenant": "acme", "role": "developer"}));
    let a = answer(s.req(Method::GET, "/v1/agents", &t).send().await.unwrap()).await;
    assert_eq!((a.status, a.code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable"), "{}", a.text);
    assert!(a.retry_after.is_some());
    // The host serves everything else meanwhile.
    assert_eq!(s.client.get(s.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(get(&s, "/v1/tenants", &s.admin()).await.0, StatusCode::OK);
    let failed = format!("cortex_oidc_refresh_total{{issuer=\"{iss}\",outcome=\"error\"}}");
    assert!(metric(&s, &failed).await.unwrap() >= 1.0);
    let never = format!("cortex_oidc_last_refresh_timestamp_seconds{{issuer=\"{iss}\"}}");
    assert_eq!(metric(&s, &never).await, Some(0.0));

    idp.state.down.store(false, Ordering::SeqCst);
    assert_eq!(until(&s, "/v1/agents", &t, StatusCode::OK).await, (StatusCode::OK, String::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_map_their_own_claims_and_keep_their_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (people_key, ci_key) = (rsa_key(dir.path(), "people-1"), ec_key(dir.path(), "ci-1"));
    let (people, ci) = (Provider::start(&[&people_key], false).await, Provider::start(&[&ci_key], false).await);
    let (p_iss, c_iss) = (people.issuer.clone(), ci.issuer.clone());
    // People: groups (as Keycloak, Okta or Entra ID send them) mapped to roles and
    // tenants, the subject in `email`. CI: a tenant claim with dots in its name (Auth0
    // style) and roles nested as Keycloak's `realm_access.roles`.
    let people_cfg = OidcIssuerConfig {
        subject_claim: "email".into(),
        tenant_claim: None,
        role_claim: None,
        groups_claim: Some("groups".into()),
        groups: vec![
            OidcGroupMapping { group: "acme-devs".into(), role: "developer".into(), tenant: Some("acme".into()) },
            OidcGroupMapping { group: "platform-team".into(), role: "platform-admin".into(), tenant: None },
        ],
        ..issuer_config(&p_iss)
    };
    let ci_cfg = OidcIssuerConfig {
        tenant_claim: Some("https://ci.example/tenant".into()),
        role_claim: Some("realm_access.roles".into()),
        ..issuer_config(&c_iss)
    };
    let s = Server::start_with(|c| c.auth.oidc = vec![people_cfg, ci_cfg]).await;
    s.tenant("acme").await;

    let dev = token(
        &people_key,
        &p_iss,
        json!({"sub": "u-1", "email": "ann@acme.example", "groups": ["acme-devs", "other"]}),
    );
    assert_eq!(until(&s, "/v1/agents", &dev, StatusCode::OK).await.0, StatusCode::OK);
    // A developer: no audit log.
    assert_eq!(get(&s, "/v1/audit", &dev).await.0, StatusCode::FORBIDDEN);
    // The platform team's member is a platform-admin (the strongest mapped role), acting
    // under the subject of `email`.
    let admin = token(
        &people_key,
        &p_iss,
        json!({"sub": "u-2", "email": "root@acme.example", "groups": ["acme-devs", "platform-team"]}),
    );
    let r = s.req(Method::POST, "/v1/tenants", &admin).json(&json!({"name": "beta"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let audit: Value = s.req(Method::GET, "/v1/audit", &admin).send().await.unwrap().json().await.unwrap();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "root@acme.example" && e["action"] == "POST /v1/tenants"),
        "{audit}"
    );
    // No mapped group, no role: refused.
    let nobody = token(&people_key, &p_iss, json!({"sub": "u-3", "email": "x@y", "groups": ["visitors"]}));
    assert_eq!(get(&s, "/v1/agents", &nobody).await.0, StatusCode::UNAUTHORIZED);

    // CI: an observer of acme by its nested role and namespaced tenant claim.
    let ci_token = token(
        &ci_key,
        &c_iss,
        json!({"sub": "pipeline", "https://ci.example/tenant": "acme", "realm_access": {"roles": ["observer", "x"]}}),
    );
    assert_eq!(until(&s, "/v1/agents", &ci_token, StatusCode::OK).await.0, StatusCode::OK);
    let r = s.req(Method::POST, "/v1/modules", &ci_token).body(vec![0u8; 8]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A token naming issuer A signed with issuer B's key is refused: by B's kid (unknown to
    // A) and by A's kid (the signature does not verify).
    let claims = json!({"sub": "u-9", "email": "evil@x", "groups": ["platform-team"]});
    let (status, code) = get(&s, "/v1/tenants", &token(&ci_key, &p_iss, claims.clone())).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "unknown_signing_key"));
    let forged = token_kid(&ci_key, &people_key.kid, &p_iss, claims);
    assert_eq!(get(&s, "/v1/tenants", &forged).await.0, StatusCode::UNAUTHORIZED);
}

/// The first ```toml block of the README's section `heading`.
fn readme_toml(heading: &str) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = &text[text.find(heading).unwrap_or_else(|| panic!("no {heading:?} in the README"))..];
    let block = &section[section.find("```toml\n").unwrap() + 8..];
    block[..block.find("```").unwrap()].to_owned()
}

#[test]
fn the_readmes_sso_log_and_audit_settings_are_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cortex.toml");
    let text = [
        readme_toml("## Host logs"),
        readme_toml("## Single sign-on (OIDC)"),
        readme_toml("## Audit export and retention"),
    ]
    .join("\n");
    std::fs::write(&file, text).unwrap();
    let cfg = cortex_host::config::ServerConfig::load(Some(&file), Vec::new()).unwrap();
    assert_eq!(cfg.log.format, cortex_host::config::LogFormat::Json);
    assert_eq!(cfg.auth.oidc.len(), 2);
    assert_eq!(cfg.auth.oidc[0].groups.len(), 2);
    assert_eq!(cfg.audit.retention_days, 365);
    cortex_host::api::oidc::Oidc::new(&cfg.auth.oidc).unwrap();
}
