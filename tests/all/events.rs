//! The change feed for outside consumers: `GET /v1/events` and the SSE stream.

use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::api::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::server::Server;

/// `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<Value> {
    body.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| serde_json::from_str(d.trim()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_and_stream_the_tenants_writes_in_order() {
    let s = Server::start().await;
    s.tenant("alpha").await;
    s.tenant("beta").await;
    let a = s.token(Some("alpha"), Role::Developer);
    let b = s.token(Some("beta"), Role::Observer);
    let kv = s.upload(&a, art::KV).await;
    s.deploy(&a, "kv", &kv, json!({})).await;
    for cmd in [r#"put:orders/o1={"n":1}"#, r#"put:orders/o2={"n":2}"#, r#"put:orders/o1={"n":3}"#, "del:orders/o2"] {
        s.invoke_ok(&a, "kv", cmd).await;
    }
    let events = s.get_json(&a, "/v1/events?since=0").await;
    let got: Vec<(u64, String, String, u64)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["key"].as_str().unwrap().into(),
                e["op"].as_str().unwrap().into(),
                e["revision"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [(1, "o1", "put", 1), (2, "o2", "put", 1), (3, "o1", "put", 2), (4, "o2", "delete", 1)];
    assert_eq!(got, want.map(|(s, k, o, r)| (s, k.to_owned(), o.to_owned(), r)));
    assert_eq!(events[0]["agent"], "kv");
    assert_eq!(s.get_json(&a, "/v1/events?since=3").await.as_array().unwrap().len(), 1);

    // Another tenant sees none of it, through either route.
    assert_eq!(s.get_json(&b, "/v1/events?since=0").await, json!([]));
    let r = s.req(Method::GET, "/v1/events/stream?follow=false", &b).send().await.unwrap();
    assert!(sse_data(&r.text().await.unwrap()).is_empty());

    // The stream replays from `since` and ends when caught up with follow=false.
    let r = s.req(Method::GET, "/v1/events/stream?since=1&follow=false", &a).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().await.unwrap();
    let seqs: Vec<u64> = sse_data(&body).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert!(body.contains("id: 4") || body.contains("id:4"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_stream_delivers_a_write_made_after_it_connected() {
    // A short header timeout: the stream, a response still going on, must outlive it.
    let s = Server::start_with(|c| c.http.header_timeout_ms = 200).await;
    let a = s.developer_in("alpha").await;
    let kv = s.upload(&a, art::KV).await;
    s.deploy(&a, "kv", &kv, json!({})).await;
    let hostile = s.upload(&a, art::HOSTILE).await;
    s.deploy(&a, "hostile", &hostile, json!({})).await;
    let mut r = s.req(Method::GET, "/v1/events/stream", &a).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Three header timeouts pass while the stream waits (and while this invocation runs).
    s.invoke_ok(&a, "hostile", "sleep:600").await;
    s.invoke_ok(&a, "kv", r#"put:live/k={"x":1}"#).await;
    let mut body = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = r.chunk().await.unwrap() {
            body.push_str(&String::from_utf8_lossy(&chunk));
            if sse_data(&body).iter().any(|e| e["key"] == "k") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the stream did not deliver the write: {body}");
}

/// Read a stream to its end (bounded by a generous timeout, not timed) and return its body
/// and the problem of its last `end` event.
async fn read_to_end(mut r: reqwest::Response) -> (String, Value) {
    let mut body = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = r.chunk().await.unwrap() {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end: {body}");
    let end = body.split("\n\n").filter(|e| e.contains("event: end") || e.contains("event:end")).last();
    let end = end.unwrap_or_else(|| panic!("no end event: {body}"));
    (body.clone(), sse_data(end).into_iter().next().unwrap_or(Value::Null))
}

/// An open stream, connected (its headers came back), over a feed that already has one event.
async fn open_stream(s: &Server, token: &str, tenant_header: Option<&str>) -> reqwest::Response {
    let mut rb = s.req(Method::GET, "/v1/events/stream?since=0", token);
    if let Some(t) = tenant_header {
        rb = rb.header("x-cortex-tenant", t);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r
}

/// A tenant with the kv agent deployed and one write in its feed; a tenant-admin token.
async fn tenant_with_a_write(s: &Server, name: &str) -> String {
    s.tenant(name).await;
    let ta = s.token(Some(name), Role::TenantAdmin);
    let kv = s.upload(&ta, art::KV).await;
    s.deploy(&ta, "kv", &kv, json!({})).await;
    s.invoke_ok(&ta, "kv", r#"put:orders/o1={"n":1}"#).await;
    ta
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_api_key_is_revoked() {
    let s = Server::start().await;
    let ta = tenant_with_a_write(&s, "alpha").await;
    let r = s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": "observer"})).send().await.unwrap();
    let made: Value = r.json().await.unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let stream = open_stream(&s, &key, None).await;
    // Another stream of the same tenant, opened with a token, is not affected.
    let other = open_stream(&s, &ta, None).await;

    let r = s.req(Method::DELETE, &format!("/v1/keys/{}", made["id"].as_str().unwrap()), &ta).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (body, end) = read_to_end(stream).await;
    assert_eq!(end["code"], "credentials_revoked", "{body}");
    assert_eq!(end["status"], 401);
    assert!(body.contains(r#""key":"o1""#), "it delivered before the revocation: {body}");

    // The token's stream still delivers a write made after the revocation.
    s.invoke_ok(&ta, "kv", r#"put:orders/after={"n":2}"#).await;
    let mut other = other;
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = other.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(r#""key":"after""#) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires() {
    let s = Server::start().await;
    tenant_with_a_write(&s, "alpha").await;
    // A token two seconds from its expiry (the leeway lets it in a little after, too).
    let mut claims = crate::server::claims(Some("alpha"), Role::Observer);
    claims.exp = cortex_host::registry::now_ms() / 1000 + 2;
    let token = s.state.verifier.mint(&claims).unwrap();
    let (body, end) = read_to_end(open_stream(&s, &token, None).await).await;
    assert_eq!(end["code"], "token_expired", "{body}");
    assert!(cortex_host::registry::now_ms() / 1000 >= claims.exp, "ended before exp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_tenant_is_deleted() {
    let s = Server::start().await;
    let ta = tenant_with_a_write(&s, "alpha").await;
    let r = s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": "developer"})).send().await.unwrap();
    let key = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    // A tenant token, an API key, and a platform-admin reading the tenant by the header.
    let streams = [
        open_stream(&s, &ta, None).await,
        open_stream(&s, &key, None).await,
        open_stream(&s, &s.admin(), Some("alpha")).await,
    ];
    let r = s.req(Method::DELETE, "/v1/tenants/alpha", &s.admin()).send().await.unwrap();
    assert_eq!(r.status(), 204);
    // A namesake created at once does not keep the old streams alive.
    s.tenant("alpha").await;
    for stream in streams {
        let (body, end) = read_to_end(stream).await;
        assert_eq!(end["code"], "tenant_gone", "{body}");
    }
}

/// No route changes the role of a key or a token today; the guard checks the role again all
/// the same, so a role changed in the store (by an operator, another node, a later route)
/// ends what the new role may not do. Seen by the periodic re-check: nothing on this node
/// is told of the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_stream_ends_when_its_keys_role_loses_the_right() {
    use cortex_host::api::Action;
    use cortex_host::api::stream_guard::{Lapse, StreamGuard};
    use cortex_host::registry::ApiKeyRecord;
    use cortex_host::store::RecordKind;

    let s = Server::start().await;
    s.tenant("alpha").await;
    let ta = s.token(Some("alpha"), Role::TenantAdmin);
    let r = s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": "tenant-admin"})).send().await.unwrap();
    let made: Value = r.json().await.unwrap();
    let (id, key) = (made["id"].as_str().unwrap().to_owned(), made["key"].as_str().unwrap().to_owned());
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    let p = cortex_host::api::Caller::authenticate(&s.state, &headers, Some(Action::ReadAudit)).await.unwrap();
    // Reading the audit log is a tenant-admin's right, not a developer's.
    let guard = StreamGuard::open(&s.state, &p, &headers, Action::ReadAudit).await.unwrap();
    let lapsed = tokio::spawn(guard.lapsed());

    let (mut rec, rev) = s.state.registry.get::<ApiKeyRecord>(RecordKind::ApiKey, &id).await.unwrap().unwrap();
    rec.role = "developer".into();
    s.state.registry.put(RecordKind::ApiKey, &id, &rec, Some(rev)).await.unwrap();
    let lapse = tokio::time::timeout(Duration::from_secs(30), lapsed).await.expect("the guard noticed").unwrap();
    assert_eq!(lapse, Lapse::Forbidden);
}
