//! Tenants over HTTP: quotas a create or a PATCH names (the rest from the server's
//! `[quotas]`, or unchanged), a tenant's immutable id (a tenant deleted and created again
//! under the same name gets none of the old one's tokens, keys or audit), and each tenant's
//! own audit numbering.

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::registry::{ApiKeyRecord, Quotas};
use cortex_host::store::RecordKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Server, answer, claims};

/// Server quotas that differ from the built-in defaults in every field.
fn configured() -> Quotas {
    Quotas {
        invocations_per_second: 7,
        burst: 9,
        concurrent_invocations: 11,
        agents: 2,
        module_bytes: 13 << 20,
        stored_bytes: 17 << 20,
        edges: 31_000,
        max_fuel: 19_000_000,
        max_memory_bytes: 23 << 20,
        max_timeout_ms: 29_000,
        weight: 37,
        egress_requests_per_second: 41,
        egress_bytes_per_day: 43 << 20,
        tokens_per_day: 47_000,
    }
}

async fn quotas_of(s: &Server, tenant: &str) -> Quotas {
    let t = s.get_json(&s.admin(), &format!("/v1/tenants/{tenant}")).await;
    serde_json::from_value(t["quotas"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tenant_gets_the_configured_quotas_it_does_not_name() {
    let s = Server::start_with(|c| c.quotas = configured()).await;
    let r = s
        .req(Method::POST, "/v1/tenants", &s.admin())
        .json(&json!({ "name": "t", "quotas": { "invocations_per_second": 5 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let want = Quotas { invocations_per_second: 5, ..configured() };
    assert_eq!(serde_json::from_value::<Quotas>(created["quotas"].clone()).unwrap(), want);
    assert_eq!(quotas_of(&s, "t").await, want);
    s.tenant("plain").await;
    assert_eq!(quotas_of(&s, "plain").await, configured(), "no quotas named: all from [quotas]");

    // The configured agents quota (2, not the built-in 100) holds.
    let dev = s.token(Some("t"), Role::Developer);
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "a1", &kv, json!({})).await;
    s.deploy(&dev, "a2", &kv, json!({})).await;
    let r = answer(
        s.req(Method::POST, "/v1/agents", &dev).json(&json!({"name": "a3", "module": kv})).send().await.unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_changes_only_the_quotas_it_names() {
    let s = Server::start_with(|c| c.quotas = configured()).await;
    let capped = Quotas { invocations_per_second: 5, agents: 1, ..configured() };
    s.tenant_with("t", Some(capped.clone())).await;
    let r = s
        .req(Method::PATCH, "/v1/tenants/t", &s.admin())
        .json(&json!({ "quotas": { "burst": 50 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let want = Quotas { burst: 50, ..capped };
    let body: Value = r.json().await.unwrap();
    assert_eq!(serde_json::from_value::<Quotas>(body["quotas"].clone()).unwrap(), want);
    assert_eq!(quotas_of(&s, "t").await, want, "every quota not named keeps its value");

    // The agents cap of 1 still holds after the PATCH (the built-in default is 100).
    let dev = s.token(Some("t"), Role::Developer);
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "a", &kv, json!({})).await;
    let r =
        answer(s.req(Method::POST, "/v1/agents", &dev).json(&json!({"name": "b", "module": kv})).send().await.unwrap())
            .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);

    // An empty PATCH changes nothing; an unknown quota is refused.
    let r = s.req(Method::PATCH, "/v1/tenants/t", &s.admin()).json(&json!({ "quotas": {} })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(quotas_of(&s, "t").await, want);
    let r = answer(
        s.req(Method::PATCH, "/v1/tenants/t", &s.admin())
            .json(&json!({ "quotas": { "nope": 1 } }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}

/// The audit events a tenant-admin's token reads, as `(seq, action, tenant_id)`.
async fn audit_of(s: &Server, token: &str, query: &str) -> Vec<(u64, String, String)> {
    let events = s.get_json(token, &format!("/v1/audit{query}")).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["action"].as_str().unwrap().to_owned(),
                e["tenant_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_again_gets_none_of_the_old_tenants_tokens_keys_or_audit() {
    let s = Server::start().await;
    let admin = s.admin();
    s.tenant("acme").await;
    let old = s.get_json(&admin, "/v1/tenants/acme").await;
    let old_id = old["id"].as_str().unwrap().to_owned();
    let old_admin = s.token(Some("acme"), Role::TenantAdmin);
    let r = s.req(Method::POST, "/v1/keys", &old_admin).json(&json!({"role": "developer"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let key: Value = r.json().await.unwrap();
    let (key_id, old_key) = (key["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap().to_owned());
    let key_record = s.state.registry.get::<ApiKeyRecord>(RecordKind::ApiKey, &key_id).await.unwrap().unwrap().0;
    s.upload(&old_admin, art::KV).await;
    assert_eq!(s.req(Method::GET, "/v1/agents", &old_key).send().await.unwrap().status(), StatusCode::OK);

    // Deleted and created again at once, under the same name.
    let r = s.req(Method::DELETE, "/v1/tenants/acme", &admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.tenant("acme").await;
    let new = s.get_json(&admin, "/v1/tenants/acme").await;
    let new_id = new["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id, "a tenant's id is never given to another");

    // The old tenant's token is refused, with a code that says why.
    let r = answer(s.req(Method::GET, "/v1/agents", &old_admin).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "credentials_predate_tenant"), "{}", r.text);
    // So is a token without `iat`: it cannot show it is not one of the old tenant's.
    let no_iat = s.state.verifier.mint(&{
        let mut c = claims(Some("acme"), Role::TenantAdmin);
        c.iat = None;
        c
    });
    let r = answer(s.req(Method::GET, "/v1/agents", &no_iat.unwrap()).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "credentials_predate_tenant"), "{}", r.text);
    // The old API key went with its tenant; and one that outlived it (another node's
    // cache, an interrupted delete) is refused too: it is bound to the old tenant's id.
    let r = answer(s.req(Method::GET, "/v1/agents", &old_key).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    s.state.registry.put(RecordKind::ApiKey, &key_id, &key_record, Some(0)).await.unwrap();
    let r = answer(s.req(Method::GET, "/v1/agents", &old_key).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "credentials_predate_tenant"), "{}", r.text);

    // The new tenant's own credentials work.
    let new_admin = s.token(Some("acme"), Role::TenantAdmin);
    assert_eq!(s.req(Method::GET, "/v1/agents", &new_admin).send().await.unwrap().status(), StatusCode::OK);
    let r = s.req(Method::POST, "/v1/keys", &new_admin).json(&json!({"role": "observer"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let new_key = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    assert_eq!(s.req(Method::GET, "/v1/agents", &new_key).send().await.unwrap().status(), StatusCode::OK);

    // The new tenant-admin sees only the new tenant's audit, numbered from 1.
    let seen = audit_of(&s, &new_admin, "").await;
    assert_eq!(seen, vec![(1, "POST /v1/keys".to_owned(), new_id.clone())], "{seen:?}");
    // The platform keeps the old tenant's audit, with its id.
    let platform = audit_of(&s, &admin, "?tenant=acme").await;
    for action in ["POST /v1/keys", "POST /v1/modules", "DELETE /v1/tenants/{tenant}"] {
        assert!(platform.iter().any(|(_, a, id)| a == action && *id == old_id), "{action}: {platform:?}");
    }
    assert!(platform.iter().any(|(_, a, id)| a == "POST /v1/keys" && *id == new_id), "{platform:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_admin_reads_its_own_audit_numbers_without_gaps_and_pages_with_since() {
    let s = Server::start().await;
    let admin = s.admin();
    s.tenant("a").await;
    s.tenant("b").await;
    let (ta, tb) = (s.token(Some("a"), Role::TenantAdmin), s.token(Some("b"), Role::TenantAdmin));
    // Interleaved mutating calls of both tenants.
    for _ in 0..3 {
        for t in [&ta, &tb, &tb] {
            let r = s.req(Method::POST, "/v1/keys", t).json(&json!({"role": "observer"})).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    }
    let a = audit_of(&s, &ta, "").await;
    assert_eq!(a.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3], "a's own numbers, no gaps: {a:?}");
    let b = audit_of(&s, &tb, "").await;
    assert_eq!(b.iter().map(|e| e.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>(), "{b:?}");
    // `since` pages a tenant's own numbers.
    let page = audit_of(&s, &tb, "?since=2&limit=3").await;
    assert_eq!(page.iter().map(|e| e.0).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(audit_of(&s, &ta, "?since=3").await.is_empty());

    // The platform-admin reads the platform's numbers, which cover every tenant; `since`
    // pages them too.
    let all = audit_of(&s, &admin, "").await;
    let seqs: Vec<u64> = all.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{all:?}");
    assert_eq!(all.iter().filter(|e| e.1 == "POST /v1/keys").count(), 9);
    let later = audit_of(&s, &admin, &format!("?since={}", seqs[seqs.len() - 3])).await;
    assert_eq!(later.iter().map(|e| e.0).collect::<Vec<_>>(), &seqs[seqs.len() - 2..]);
    let only_a = audit_of(&s, &admin, "?tenant=a&action=keys").await;
    assert_eq!(only_a.len(), 3);
}

/// The audit of a tenant names it as its handler does: a platform-admin's `PATCH` or
/// `DELETE` of `/v1/tenants/%61cme` acts on `acme`, and its events are in acme's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_encoded_tenant_path_is_audited_in_that_tenants_log() {
    let s = Server::start().await;
    let admin = s.admin();
    s.tenant("acme").await;
    let id = s.get_json(&admin, "/v1/tenants/acme").await["id"].as_str().unwrap().to_owned();
    let ta = s.token(Some("acme"), Role::TenantAdmin);
    let r = s.req(Method::PATCH, "/v1/tenants/%61cme", &admin).json(&json!({"quotas": {"agents": 7}})).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    assert_eq!(quotas_of(&s, "acme").await.agents, 7);
    let own = audit_of(&s, &ta, "").await;
    assert_eq!(own, vec![(1, "PATCH /v1/tenants/{tenant}".to_owned(), id.clone())], "{own:?}");

    let r = s.req(Method::DELETE, "/v1/tenants/%61cme", &admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let platform = audit_of(&s, &admin, "?tenant=acme").await;
    let actions: Vec<_> = platform.iter().map(|(_, a, i)| (a.as_str(), i.as_str())).collect();
    assert_eq!(
        actions,
        vec![("PATCH /v1/tenants/{tenant}", id.as_str()), ("DELETE /v1/tenants/{tenant}", id.as_str())],
        "{platform:?}"
    );
}

/// A tenant's deletion cleans up by name (its agents, modules, keys and documents) after its
/// record is gone: a tenant created again under the name meanwhile must not lose what it
/// makes to that clean-up. Here the deletion is held in its clean-up (module files are
/// freed under [`cortex_host::agents::Modules::files`]) while the name is created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_again_during_the_old_ones_deletion_keeps_its_own_keys() {
    let s = Server::start().await;
    let admin = s.admin();
    s.tenant("acme").await;
    let old_admin = s.token(Some("acme"), Role::TenantAdmin);
    s.upload(&old_admin, art::HELLO).await;

    let files = s.state.agents.modules.files().await;
    let mut changes = s.state.credential_changes();
    let delete = tokio::spawn(s.req(Method::DELETE, "/v1/tenants/acme", &admin).send());
    // The record is gone (the node forgets it): the deletion is in its clean-up now. (The
    // registry stream makes the node forget cached records too: wait for the change after
    // which the record is gone.)
    loop {
        changes.changed().await.unwrap();
        if s.req(Method::GET, "/v1/tenants/acme", &admin).send().await.unwrap().status() == StatusCode::NOT_FOUND {
            break;
        }
    }

    let during = answer(create_acme(&s).await).await;
    // Either the creation waits for the deletion (409, try again), or whatever it made
    // survives it: a key made now is checked once the deletion is done.
    let early_key = if during.status == StatusCode::CREATED { Some(new_key(&s).await) } else { None };
    if early_key.is_none() {
        assert_eq!((during.status, during.code.as_str()), (StatusCode::CONFLICT, "tenant_busy"), "{}", during.text);
    }
    drop(files);
    assert_eq!(delete.await.unwrap().unwrap().status(), StatusCode::NO_CONTENT);
    let key = match early_key {
        Some(k) => k,
        None => {
            assert_eq!(create_acme(&s).await.status(), StatusCode::CREATED);
            new_key(&s).await
        }
    };
    let r = answer(s.req(Method::GET, "/v1/agents", &key).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "the new tenant's key: {}", r.text);
}

async fn create_acme(s: &Server) -> reqwest::Response {
    s.req(Method::POST, "/v1/tenants", &s.admin()).json(&json!({"name": "acme"})).send().await.unwrap()
}

/// A new observer key of tenant `acme`, made by its tenant-admin.
async fn new_key(s: &Server) -> String {
    let ta = s.token(Some("acme"), Role::TenantAdmin);
    let r = s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": "observer"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned()
}
