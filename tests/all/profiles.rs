//! Resource profiles over HTTP: tenant-admins write them and every role reads them, each
//! value above 0 and within the tenant's quotas; a deploy naming one takes the limits its
//! spec leaves out (copied into the agent: a later edit does not touch it, a delete is
//! refused while it exists); other tenants never see them; a tenant's delete removes them.

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::registry::{ProfileRecord, Quotas};
use cortex_host::store::RecordKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Answer, Server, answer};

/// Fuel a profile gives in these tests: a `loop` burns it in well under a second.
const FUEL: u64 = 50_000_000;

async fn put(s: &Server, token: &str, name: &str, body: Value) -> Answer {
    answer(s.req(Method::PUT, &format!("/v1/profiles/{name}"), token).json(&body).send().await.unwrap()).await
}

async fn call(s: &Server, method: Method, path: &str, token: &str) -> Answer {
    answer(s.req(method, path, token).send().await.unwrap()).await
}

async fn deploy(s: &Server, token: &str, spec: Value) -> Answer {
    answer(s.req(Method::POST, "/v1/agents", token).json(&spec).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admins_create_replace_and_delete_profiles_that_every_role_reads() {
    let s = Server::start().await;
    s.tenant("acme").await;
    let ta = s.token(Some("acme"), Role::TenantAdmin);
    let dev = s.token(Some("acme"), Role::Developer);
    let obs = s.token(Some("acme"), Role::Observer);

    let small = json!({"limits": {"fuel": FUEL, "timeout_ms": 2000}, "max_concurrency": 2});
    let r = put(&s, &ta, "small", small).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!((r.body["name"].as_str(), r.body["limits"]["fuel"].as_u64()), (Some("small"), Some(FUEL)));
    let created = r.body["created_ms"].as_u64().unwrap();
    let r = put(&s, &ta, "large", json!({"limits": {"memory_bytes": 64 << 20}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Every role of the tenant reads them; only its admins write them.
    for token in [&ta, &dev, &obs] {
        let list = s.get_json(token, "/v1/profiles").await;
        let names: Vec<&str> = list.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(names, ["large", "small"], "{list}");
        assert_eq!(s.get_json(token, "/v1/profiles/small").await["max_concurrency"], 2);
    }
    for token in [&dev, &obs] {
        let r = put(&s, token, "small", json!({"limits": {"fuel": 1}})).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{}", r.text);
        let r = call(&s, Method::DELETE, "/v1/profiles/small", token).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{}", r.text);
    }
    assert_eq!(s.get_json(&obs, "/v1/profiles/small").await["limits"]["fuel"], FUEL, "refused writes changed nothing");

    // A PUT replaces the whole profile (what it leaves out is no longer set).
    let r = put(&s, &ta, "small", json!({"limits": {"fuel": FUEL * 2}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let got = s.get_json(&obs, "/v1/profiles/small").await;
    assert_eq!(got["limits"], json!({"fuel": FUEL * 2, "memory_bytes": null, "timeout_ms": null}), "{got}");
    assert_eq!(got.get("max_concurrency"), None, "{got}");
    assert_eq!(got["created_ms"].as_u64(), Some(created), "a replacement keeps the creation time");

    let r = call(&s, Method::DELETE, "/v1/profiles/small", &ta).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = call(&s, Method::GET, "/v1/profiles/small", &ta).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let r = call(&s, Method::DELETE, "/v1/profiles/small", &ta).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));

    // The writes are audited like the other admin writes, refused ones included.
    let audit = s.get_json(&ta, "/v1/audit?action=profiles").await;
    let events: Vec<(String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["outcome"].as_u64().unwrap()))
        .collect();
    let put_ = "PUT /v1/profiles/{name}".to_owned();
    let del = "DELETE /v1/profiles/{name}".to_owned();
    for want in
        [(put_.clone(), 201), (put_.clone(), 403), (put_, 200), (del.clone(), 403), (del.clone(), 204), (del, 404)]
    {
        assert!(events.contains(&want), "{want:?} not in {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_with_a_zero_a_value_over_the_quotas_or_a_bad_name_is_refused() {
    let s = Server::start().await;
    let quotas = Quotas { max_fuel: FUEL, concurrent_invocations: 4, ..Quotas::default() };
    s.tenant_with("acme", Some(quotas.clone())).await;
    let ta = s.token(Some("acme"), Role::TenantAdmin);
    let cases = [
        ("p", json!({"limits": {"fuel": 0}}), "invalid_profile"),
        ("p", json!({"max_concurrency": 0}), "invalid_profile"),
        ("p", json!({"limits": {"fuel": FUEL + 1}}), "over_quota"),
        ("p", json!({"limits": {"memory_bytes": quotas.max_memory_bytes + 1}}), "over_quota"),
        ("p", json!({"limits": {"timeout_ms": quotas.max_timeout_ms + 1}}), "over_quota"),
        ("p", json!({"max_concurrency": 5}), "over_quota"),
        ("p", json!({"limits": {"fuel": 1}, "colour": "red"}), "bad_request"),
        ("p", json!({"limits": {"fuel": -1}}), "bad_request"),
        ("Big", json!({}), "bad_request"),
        ("a.b", json!({}), "bad_request"),
    ];
    for (name, body, code) in cases {
        let r = put(&s, &ta, name, body.clone()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, code), "{name} {body}: {}", r.text);
    }
    assert_eq!(s.get_json(&ta, "/v1/profiles").await, json!([]), "nothing refused was kept");
    // At the quotas exactly is allowed.
    let r = put(&s, &ta, "p", json!({"limits": {"fuel": FUEL}, "max_concurrency": 4})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_takes_what_its_spec_leaves_out_from_its_profile() {
    let s = Server::start().await;
    s.tenant("acme").await;
    let ta = s.token(Some("acme"), Role::TenantAdmin);
    let hostile = s.upload(&ta, art::HOSTILE).await;
    // The timeout is the quota's highest: only the fuel limit can end a loop.
    let small = json!({"limits": {"fuel": FUEL, "timeout_ms": 60_000}, "max_concurrency": 2});
    assert_eq!(put(&s, &ta, "small", small).await.status, StatusCode::CREATED);

    let a = s.deploy_with(&ta, "lean", &hostile, json!({"profile": "small"})).await;
    assert_eq!(a["profile"], "small", "{a}");
    assert_eq!(a["limits"], json!({"fuel": FUEL, "memory_bytes": null, "timeout_ms": 60_000}), "{a}");
    assert_eq!(a["max_concurrency"], 2, "{a}");
    assert_eq!(s.get_json(&ta, "/v1/agents/lean").await["profile"], "small");
    // The profile's fuel is the agent's: a loop runs out of exactly that.
    let fuel_of_a_loop = |agent: &'static str| {
        let s = &s;
        let ta = &ta;
        async move {
            let r = s.req(Method::POST, &format!("/v1/agents/{agent}/invoke"), ta).body("loop").send().await.unwrap();
            let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(header("x-cortex-outcome"), "fuel_exhausted");
            header("x-cortex-fuel").parse::<u64>().unwrap()
        }
    };
    assert_eq!(fuel_of_a_loop("lean").await, FUEL);

    // What the spec gives wins over the profile; the rest still comes from it.
    let spec = json!({"profile": "small", "limits": {"fuel": FUEL * 2}, "max_concurrency": 3});
    let b = s.deploy_with(&ta, "richer", &hostile, spec).await;
    assert_eq!(b["limits"], json!({"fuel": FUEL * 2, "memory_bytes": null, "timeout_ms": 60_000}), "{b}");
    assert_eq!(b["max_concurrency"], 3, "{b}");
    assert_eq!(fuel_of_a_loop("richer").await, FUEL * 2);
    // Without a profile: no profile in the view, the defaults.
    let c = s.deploy(&ta, "plain", &hostile, json!({})).await;
    assert_eq!((c.get("profile"), &c["max_concurrency"]), (None, &json!(16)), "{c}");

    // A later edit of the profile applies to the next deploy, not to deployed agents.
    assert_eq!(put(&s, &ta, "small", json!({"limits": {"fuel": FUEL * 3}})).await.status, StatusCode::OK);
    assert_eq!(s.get_json(&ta, "/v1/agents/lean").await["limits"]["fuel"], FUEL);
    assert_eq!(fuel_of_a_loop("lean").await, FUEL);

    // A profile an agent was deployed with cannot be deleted while the agent exists.
    let r = call(&s, Method::DELETE, "/v1/profiles/small", &ta).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::CONFLICT, "profile_in_use"), "{}", r.text);
    for agent in ["lean", "richer"] {
        assert_eq!(call(&s, Method::DELETE, &format!("/v1/agents/{agent}"), &ta).await.status, StatusCode::NO_CONTENT);
    }
    let r = call(&s, Method::DELETE, "/v1/profiles/small", &ta).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_naming_an_unknown_profile_or_one_over_a_lowered_quota_is_refused() {
    let s = Server::start().await;
    s.tenant("acme").await;
    let ta = s.token(Some("acme"), Role::TenantAdmin);
    let kv = s.upload(&ta, art::KV).await;
    let r = deploy(&s, &ta, json!({"name": "a", "module": kv, "profile": "ghost"})).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "unknown_profile"), "{}", r.text);
    assert!(r.text.contains("ghost"), "{}", r.text);

    // The profile was within the quotas when written; the quota was lowered since: the
    // deploy checks the result against the quotas of now.
    assert_eq!(put(&s, &ta, "big", json!({"limits": {"fuel": FUEL}})).await.status, StatusCode::CREATED);
    let admin = s.admin();
    let r = s.req(Method::PATCH, "/v1/tenants/acme", &admin).json(&json!({"quotas": {"max_fuel": FUEL - 1}})).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    let r = deploy(&s, &ta, json!({"name": "a", "module": kv, "profile": "big"})).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{}", r.text);
    assert!(r.text.contains("limits.fuel"), "{}", r.text);
    // An explicit value within the quota makes the deploy work.
    let spec = json!({"profile": "big", "limits": {"fuel": FUEL - 1}});
    assert_eq!(s.deploy_with(&ta, "a", &kv, spec).await["limits"]["fuel"], FUEL - 1);
    assert_eq!(s.get_json(&ta, "/v1/agents").await.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_profiles_are_invisible_and_a_tenants_delete_removes_its_own() {
    let s = Server::start().await;
    s.tenant("acme").await;
    s.tenant("other").await;
    let acme = s.token(Some("acme"), Role::TenantAdmin);
    let other = s.token(Some("other"), Role::TenantAdmin);
    assert_eq!(put(&s, &acme, "small", json!({"limits": {"fuel": FUEL}})).await.status, StatusCode::CREATED);

    assert_eq!(s.get_json(&other, "/v1/profiles").await, json!([]));
    let r = call(&s, Method::GET, "/v1/profiles/small", &other).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let r = call(&s, Method::DELETE, "/v1/profiles/small", &other).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let kv = s.upload(&other, art::KV).await;
    let r = deploy(&s, &other, json!({"name": "a", "module": kv, "profile": "small"})).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "unknown_profile"), "{}", r.text);
    // Its own profile of the same name is its own.
    assert_eq!(put(&s, &other, "small", json!({"limits": {"fuel": 7}})).await.status, StatusCode::CREATED);
    assert_eq!(s.get_json(&acme, "/v1/profiles/small").await["limits"]["fuel"], FUEL);
    // A platform-admin reads them in the tenant it names.
    let admin = s.admin();
    let r = s.req(Method::GET, "/v1/profiles/small", &admin).header("x-cortex-tenant", "other").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["limits"]["fuel"], 7);

    let r = call(&s, Method::DELETE, "/v1/tenants/acme", &admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let left: Vec<ProfileRecord> = s.state.registry.list(RecordKind::Profile, "").await.unwrap();
    assert_eq!(left.iter().map(|p| (p.tenant.as_str(), p.name.as_str())).collect::<Vec<_>>(), [("other", "small")]);
}
