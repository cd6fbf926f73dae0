//! Tenant isolation over the API, and attacks on bearer tokens.

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::registry::now_ms;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Server, answer, b64url, data_dir, rsa_keypair, rsa_modulus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_never_reaches_tenant_b_objects() {
    let s = Server::start().await;
    s.tenant("aaa").await;
    s.tenant("bbb").await;
    let a = s.token(Some("aaa"), Role::TenantAdmin);
    let b = s.token(Some("bbb"), Role::TenantAdmin);

    // B: its own module (the counter), an agent only B has, an agent with a name A also
    // uses, a key, and a document.
    let b_module = s.upload(&b, art::COUNTER).await;
    let b_kv = s.upload(&b, art::KV).await;
    s.deploy(&b, "b-secret-agent", &b_module, json!({ "b-config-key": "b-config-value" })).await;
    s.deploy(&b, "shared", &b_kv, json!({ "who": "bbb-config" })).await;
    assert_eq!(s.invoke_ok(&b, "shared", r#"put:private/doc={"owner":"bbb"}"#).await, "1");
    assert_eq!(s.invoke_ok(&b, "b-secret-agent", "x").await, "1");
    let r = answer(
        s.req(Method::POST, "/v1/keys", &b).json(&json!({"role": "developer", "name": "b-key"})).send().await.unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let b_key_id = r.body["id"].as_str().unwrap().to_owned();
    let b_key = r.body["key"].as_str().unwrap().to_owned();

    // A: the kv module and an agent named like B's.
    let a_kv = s.upload(&a, art::KV).await;
    s.deploy(&a, "shared", &a_kv, json!({ "who": "aaa-config" })).await;

    let secrets =
        ["b-secret-agent", "b-config-value", "bbb-config", "b-key", &b_module, &b_key_id, "\"owner\":\"bbb\""];
    let ag = "/v1/agents/b-secret-agent";
    let calls: Vec<(Method, String, Option<Value>, Option<&str>)> = vec![
        (Method::GET, "/v1/tenants/bbb".into(), None, None),
        (
            Method::PATCH,
            "/v1/tenants/bbb".into(),
            Some(json!({"quotas": cortex_host::registry::Quotas::default()})),
            None,
        ),
        (Method::DELETE, "/v1/tenants/bbb".into(), None, None),
        (Method::GET, format!("/v1/modules/{b_module}"), None, None),
        (Method::DELETE, format!("/v1/modules/{b_module}"), None, None),
        (Method::GET, ag.into(), None, None),
        (Method::PUT, format!("{ag}/config"), Some(json!({"config": {"hijacked": "yes"}})), None),
        (Method::POST, format!("{ag}/upgrade"), Some(json!({"module": a_kv})), None),
        (Method::POST, format!("{ag}/rollback"), None, None),
        (Method::POST, format!("{ag}/stop"), None, None),
        (Method::POST, format!("{ag}/start"), None, None),
        (Method::POST, format!("{ag}/invoke"), None, Some("x")),
        (Method::GET, format!("{ag}/logs"), None, None),
        (Method::DELETE, ag.into(), None, None),
        (Method::DELETE, format!("/v1/keys/{b_key_id}"), None, None),
        // A deploys with B's module digest: not A's module.
        (Method::POST, "/v1/agents".into(), Some(json!({"name": "stolen", "module": b_module})), None),
        (Method::POST, "/v1/agents/shared/upgrade".into(), Some(json!({"module": b_module})), None),
    ];
    for (method, path, body, raw) in &calls {
        for tenant_header in [None, Some("bbb")] {
            let mut rb = s.req(method.clone(), path, &a);
            if let Some(h) = tenant_header {
                // A tenant-admin cannot switch tenant with the platform-admin header.
                rb = rb.header("x-cortex-tenant", h);
            }
            if let Some(j) = body {
                rb = rb.json(j);
            }
            if let Some(r) = raw {
                rb = rb.body(r.to_string());
            }
            let r = answer(rb.send().await.unwrap()).await;
            let what = format!("{method} {path} (header {tenant_header:?}): {} {}", r.status, r.text);
            // Tenant management is refused by RBAC before any lookup; naming B in the header is
            // refused as such (only a platform-admin may); the rest is "not found".
            let want = if path.starts_with("/v1/tenants/") && *method != Method::GET {
                (StatusCode::FORBIDDEN, "forbidden")
            } else if tenant_header.is_some() {
                (StatusCode::FORBIDDEN, "foreign_tenant")
            } else {
                (StatusCode::NOT_FOUND, "not_found")
            };
            assert_eq!((r.status, r.code.as_str()), want, "{what}");
            // The detail may echo what the request named; nothing else of B's may appear.
            let sent = format!("{path} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
            for secret in secrets.iter().filter(|s| !sent.contains(**s)) {
                assert!(!r.text.contains(secret), "leaked {secret:?}: {what}");
            }
        }
    }

    // Listings show A's objects only.
    for path in ["/v1/agents", "/v1/modules", "/v1/keys", "/v1/audit", "/v1/audit?tenant=bbb", "/v1/agents/shared/logs"]
    {
        for header in [None, Some("bbb")] {
            let mut rb = s.req(Method::GET, path, &a);
            if let Some(h) = header {
                rb = rb.header("x-cortex-tenant", h);
            }
            let r = answer(rb.send().await.unwrap()).await;
            let want = if header.is_some() { StatusCode::FORBIDDEN } else { StatusCode::OK };
            assert_eq!(r.status, want, "{path}: {}", r.text);
            // A's audit log names what A itself asked for above; other listings name nothing of B's.
            for secret in secrets.iter().filter(|_| !path.starts_with("/v1/audit")) {
                assert!(!r.text.contains(secret), "{path} (header {header:?}) leaked {secret:?}: {}", r.text);
            }
            assert!(!r.text.contains("\"tenant\":\"bbb\""), "{path} shows tenant bbb: {}", r.text);
        }
    }
    // The same agent name is A's own agent, with A's config and A's documents.
    assert_eq!(s.invoke_ok(&a, "shared", "config:who").await, "aaa-config");
    assert_eq!(s.invoke_ok(&a, "shared", "get:private/doc").await, "none");
    let who: Value = serde_json::from_str(&s.invoke_ok(&a, "shared", "whoami").await).unwrap();
    assert_eq!(who["tenant"], "aaa");

    // B's objects are untouched.
    let agent = s.get_json(&b, "/v1/agents/b-secret-agent").await;
    assert_eq!(agent["status"], "running");
    assert_eq!(agent["module"], b_module.as_str());
    assert_eq!(agent["config"], json!({ "b-config-key": "b-config-value" }));
    assert_eq!(s.invoke_ok(&b, "b-secret-agent", "x").await, "2");
    assert_eq!(s.get_json(&b, &format!("/v1/modules/{b_module}")).await["digest"], b_module.as_str());
    assert_eq!(s.invoke_ok(&b, "shared", "get:private/doc").await, r#"{"owner":"bbb"}"#);
    assert_eq!(s.get_json(&b_key, "/v1/agents").await.as_array().unwrap().len(), 2, "B's key was revoked by A");
    assert_eq!(s.get_json(&s.admin(), "/v1/tenants/bbb").await["name"], "bbb");
}

fn now() -> u64 {
    now_ms() / 1000
}

fn good_claims() -> Value {
    json!({ "sub": "mallory", "iss": "cortex", "aud": "cortex-api", "exp": now() + 3600, "iat": now(), "role": "platform-admin" })
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
}

async fn assert_unauthorized(s: &Server, what: &str, token: &str) {
    let r = answer(s.req(Method::GET, "/v1/tenants", token).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{what}: {}", r.text);
    assert_eq!(r.content_type, "application/problem+json", "{what}");
    assert_eq!(r.body["detail"], "missing or invalid credentials", "{what}: the reason is for the log only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_malformed_tokens_are_refused() {
    let s = Server::start().await;
    let secret = std::fs::read_to_string(s.dir.path().join("jwt-hs256.secret")).unwrap();
    let secret = secret.trim().as_bytes().to_vec();
    // The control: a well-formed token with this secret is accepted.
    let r = s.req(Method::GET, "/v1/tenants", &hs256(&secret, &good_claims())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = good_claims();
        f(c.as_object_mut().unwrap());
        hs256(&secret, &c)
    };
    let good = hs256(&secret, &good_claims());
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let mut flipped = sig.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let escalated_payload = {
        let mut c = good_claims();
        c["sub"] = json!("someone-else");
        b64url(c.to_string().as_bytes())
    };

    let cases: Vec<(&str, String)> = vec![
        ("alg none", unsigned(&json!({"alg": "none", "typ": "JWT"}), &good_claims())),
        ("alg None", unsigned(&json!({"alg": "None", "typ": "JWT"}), &good_claims())),
        ("alg none with the real signature", format!("{}.{payload}.{sig}", b64url(br#"{"alg":"none","typ":"JWT"}"#))),
        (
            "expired",
            with(&|c| {
                c.insert("exp".into(), json!(now() - 3600));
            }),
        ),
        (
            "exp as a string",
            with(&|c| {
                c.insert("exp".into(), json!((now() + 3600).to_string()));
            }),
        ),
        (
            "no exp",
            with(&|c| {
                c.remove("exp");
            }),
        ),
        (
            "no aud",
            with(&|c| {
                c.remove("aud");
            }),
        ),
        (
            "no iss",
            with(&|c| {
                c.remove("iss");
            }),
        ),
        (
            "no sub",
            with(&|c| {
                c.remove("sub");
            }),
        ),
        (
            "wrong aud",
            with(&|c| {
                c.insert("aud".into(), json!("another-api"));
            }),
        ),
        (
            "wrong iss",
            with(&|c| {
                c.insert("iss".into(), json!("evil"));
            }),
        ),
        (
            "unknown role",
            with(&|c| {
                c.insert("role".into(), json!("root"));
            }),
        ),
        (
            "developer without a tenant",
            with(&|c| {
                c.insert("role".into(), json!("developer"));
            }),
        ),
        (
            "tenant that does not exist",
            with(&|c| {
                c.insert("tenant".into(), json!("nowhere"));
            }),
        ),
        ("bad signature", format!("{head}.{payload}.{}", String::from_utf8(flipped).unwrap())),
        ("payload swapped under a valid signature", format!("{head}.{escalated_payload}.{sig}")),
        ("other secret", hs256(b"not-the-server-secret-not-the-server-secret", &good_claims())),
        ("empty", String::new()),
        ("garbage", "a.b.c".into()),
        ("not a jwt", "hello".into()),
        ("fake api key", "ck_000000000000_deadbeef".into()),
    ];
    for (what, token) in &cases {
        assert_unauthorized(&s, what, token).await;
    }
    // No credentials, or not a bearer scheme.
    let r = answer(s.client.get(s.url("/v1/tenants")).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let r = answer(
        s.client.get(s.url("/v1/tenants")).header("authorization", format!("Basic {good}")).send().await.unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_a_deleted_tenant_are_refused() {
    let s = Server::start().await;
    s.tenant("gone").await;
    let ta = s.token(Some("gone"), Role::TenantAdmin);
    let kv = s.upload(&ta, art::KV).await;
    s.deploy(&ta, "a", &kv, json!({})).await;
    let r =
        answer(s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": "developer"})).send().await.unwrap()).await;
    let key = r.body["key"].as_str().unwrap().to_owned();
    assert_eq!(s.get_json(&key, "/v1/agents").await.as_array().unwrap().len(), 1);

    let r = s.req(Method::DELETE, "/v1/tenants/gone", &s.admin()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for (what, token) in [("token", &ta), ("api key", &key)] {
        let r = answer(s.req(Method::GET, "/v1/agents", token).send().await.unwrap()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{what}: {}", r.text);
    }
    // Re-creating a tenant of the same name does not bring back its objects, nor its
    // credentials (see `tenants::a_tenant_created_again_gets_none_of_the_old_tenants_...`).
    s.tenant("gone").await;
    let ta = s.token(Some("gone"), Role::TenantAdmin);
    assert_eq!(s.get_json(&ta, "/v1/agents").await, json!([]));
    assert_eq!(s.get_json(&ta, "/v1/modules").await, json!([]));
    let r = answer(s.req(Method::GET, "/v1/agents", &key).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "an old tenant's API key must not work for its namesake");
}

fn rs256(private_pem: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_pem(private_pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_refuses_key_confusion_and_unsigned_tokens() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keypair(keys.path());
    let public_pem = std::fs::read(&public).unwrap();
    let private_pem = std::fs::read(&private).unwrap();
    let s = Server::start_in(data_dir(), |c| {
        c.auth.algorithm = "RS256".into();
        c.auth.public_key_file = Some(public.clone());
    })
    .await;
    // The control: a token signed with the private key is accepted.
    let r = s.req(Method::GET, "/v1/tenants", &rs256(&private_pem, None, &good_claims())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let other = tempfile::tempdir().unwrap();
    let (other_private, _) = rsa_keypair(other.path());
    let mut expired = good_claims();
    expired["exp"] = json!(now() - 3600);
    let cases: Vec<(&str, String)> = vec![
        ("HS256 signed with the public key PEM", hs256(&public_pem, &good_claims())),
        (
            "HS256 signed with the trimmed public key PEM",
            hs256(String::from_utf8_lossy(&public_pem).trim().as_bytes(), &good_claims()),
        ),
        ("alg none", unsigned(&json!({"alg": "none", "typ": "JWT"}), &good_claims())),
        ("another key pair", rs256(&std::fs::read(other_private).unwrap(), None, &good_claims())),
        ("expired", rs256(&private_pem, None, &expired)),
    ];
    for (what, token) in &cases {
        assert_unauthorized(&s, what, token).await;
    }
    // Minting development tokens is impossible without HS256.
    assert!(s.state.verifier.mint(&crate::server::claims(None, Role::PlatformAdmin)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_refuses_unknown_and_missing_kids() {
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = rsa_keypair(keys.path());
    let private_pem = std::fs::read(&private).unwrap();
    let jwks = json!({ "keys": [{
        "kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
        "n": b64url(&rsa_modulus(&private)), "e": "AQAB"
    }]});
    let jwks_path = keys.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let s = Server::start_in(data_dir(), |c| {
        c.auth.algorithm = "RS256".into();
        c.auth.jwks_file = Some(jwks_path.clone());
    })
    .await;
    let r = s.req(Method::GET, "/v1/tenants", &rs256(&private_pem, Some("k1"), &good_claims())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the control token with kid k1");
    for (what, kid) in
        [("junk kid", Some("junk")), ("no kid", None), ("path kid", Some("../../k1")), ("empty kid", Some(""))]
    {
        assert_unauthorized(&s, what, &rs256(&private_pem, kid, &good_claims())).await;
    }
    let none = unsigned(&json!({"alg": "none", "kid": "k1"}), &good_claims());
    assert_unauthorized(&s, "alg none with a good kid", &none).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_in_the_future_is_refused_and_an_aud_array_holding_ours_is_accepted() {
    let s = Server::start().await;
    let secret = std::fs::read_to_string(s.dir.path().join("jwt-hs256.secret")).unwrap();
    let secret = secret.trim().as_bytes().to_vec();
    let leeway = s.state.config.auth.leeway_seconds;
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = good_claims();
        f(c.as_object_mut().unwrap());
        hs256(&secret, &c)
    };
    let accepted: Vec<(&str, String)> = vec![
        ("nbf in the past", with(&|c| drop(c.insert("nbf".into(), json!(now() - 60))))),
        ("nbf now", with(&|c| drop(c.insert("nbf".into(), json!(now()))))),
        ("nbf within the leeway", with(&|c| drop(c.insert("nbf".into(), json!(now() + leeway / 2))))),
        ("aud as an array of ours alone", with(&|c| drop(c.insert("aud".into(), json!(["cortex-api"]))))),
        ("aud as an array holding ours", with(&|c| drop(c.insert("aud".into(), json!(["another-api", "cortex-api"]))))),
    ];
    for (what, token) in &accepted {
        let r = answer(s.req(Method::GET, "/v1/tenants", token).send().await.unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text);
    }
    let refused: Vec<(&str, String)> = vec![
        ("nbf an hour ahead", with(&|c| drop(c.insert("nbf".into(), json!(now() + 3600))))),
        ("nbf past the leeway", with(&|c| drop(c.insert("nbf".into(), json!(now() + leeway + 60))))),
        ("nbf as a string", with(&|c| drop(c.insert("nbf".into(), json!(now().to_string()))))),
        ("aud as an array without ours", with(&|c| drop(c.insert("aud".into(), json!(["another-api"]))))),
        ("aud as an empty array", with(&|c| drop(c.insert("aud".into(), json!([]))))),
        ("aud as a number", with(&|c| drop(c.insert("aud".into(), json!(7))))),
        ("iss as an array", with(&|c| drop(c.insert("iss".into(), json!(["cortex"]))))),
        ("expired past the leeway", with(&|c| drop(c.insert("exp".into(), json!(now() - leeway - 60))))),
        ("no role", with(&|c| drop(c.remove("role")))),
    ];
    for (what, token) in &refused {
        assert_unauthorized(&s, what, token).await;
    }
}
