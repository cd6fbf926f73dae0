//! Request ids: every response carries `x-request-id` (the client's own when it is sane),
//! and every problem+json body carries the same id as `request_id`, whatever made the
//! problem: the guard (401, 403, 413), a handler (400, 404, 409, 422, 429), the invocation
//! fast path, the router's fallback (404, 405) or the framework's own rejections.

use cortex_artifacts as art;
use cortex_host::registry::Quotas;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::server::Server;

/// The id a response carries, checked against its problem body, if it is one; the status.
async fn id_of(r: Response, what: &str) -> (StatusCode, String) {
    let status = r.status();
    let header = r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let header = header.unwrap_or_else(|| panic!("{what}: {status} without x-request-id"));
    let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = r.text().await.unwrap();
    if status.as_u16() >= 400 {
        assert_eq!(content_type, "application/problem+json", "{what}: {status} {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["request_id"], json!(header), "{what}: {status} {text}");
    }
    (status, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_on_every_route_carries_the_request_id_of_its_response() {
    // One invocation a second at most: the second of two in a row is a 429.
    // Small body limits, so that a body over them is cheap to send.
    let module_limit = std::fs::metadata(art::HELLO).unwrap().len() as usize + 1024;
    let s = Server::start_with(|c| {
        c.http.body_limit_bytes = 4096;
        c.http.module_limit_bytes = module_limit;
    })
    .await;
    let quotas = Quotas { invocations_per_second: 1, burst: 1, ..Quotas::default() };
    s.tenant_with("t", Some(quotas)).await;
    let admin = s.admin();
    let dev = s.token(Some("t"), cortex_host::api::Role::Developer);
    let observer = s.token(Some("t"), cortex_host::api::Role::Observer);
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;
    let doc: Value = s.client.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();

    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    let mut n = 0usize;
    let mut check = async |rb: reqwest::RequestBuilder, what: String| {
        n += 1;
        // Every other request names its own id: it is kept.
        let mine = format!("client-{n}");
        let rb = if n.is_multiple_of(2) { rb.header("x-request-id", &mine) } else { rb };
        let (status, id) = id_of(rb.send().await.unwrap(), &what).await;
        if n.is_multiple_of(2) {
            assert_eq!(id, mine, "{what}");
        }
        *seen.entry(status.as_u16()).or_default() += 1;
        status
    };

    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let missing: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "nothing-here" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            // The event stream follows the feed forever unless told to stop when caught up.
            let missing = if missing.ends_with("/stream") { format!("{missing}?follow=false") } else { missing };
            let authed = op.get("security").is_some() && path != "/metrics";
            let body = op.get("requestBody").is_some();
            let what = |case: &str| format!("{m} {path} ({case})");
            // Nothing that does not exist: 404 (or 400 for a body that is not one).
            let mut rb = s.req(m.clone(), &missing, &admin).header("x-cortex-tenant", "t");
            if body {
                rb = rb.header("content-type", "application/json").body("{}");
            }
            check(rb, what("missing")).await;
            if authed {
                // No credentials: 401 from the guard (or the fast path).
                check(s.client.request(m.clone(), s.url(&missing)), what("anonymous")).await;
                // A role the route refuses, or a tenant header naming another tenant: 403.
                let rb = s.req(m.clone(), &missing, &observer).header("x-cortex-tenant", "other");
                check(rb, what("foreign tenant")).await;
                // A malformed query: 400.
                let bad_query = format!("{}?since=minus", missing.trim_end_matches("?follow=false"));
                check(s.req(m.clone(), &bad_query, &admin), what("bad query")).await;
            }
            if body {
                // A body over the limit: 413, refused by its declared length.
                let big = vec![b'x'; module_limit + 1];
                let rb = s.req(m.clone(), &missing, &admin).header("x-cortex-tenant", "t").body(big);
                check(rb, what("too large")).await;
            }
            // A method the route does not have: 405 from the router.
            check(s.req(Method::from_bytes(b"PURGE").unwrap(), &missing, &admin), what("bad method")).await;
        }
    }
    // The fast path: no such agent, over the body limit, over the rate quota, a client id
    // that is not sane (too long, or with a space) is replaced.
    check(s.req(Method::POST, "/v1/agents/nobody/invoke", &dev).body("x"), "fast path 404".into()).await;
    let big = vec![b'x'; 5000];
    check(s.req(Method::POST, "/v1/agents/hello/invoke", &dev).body(big), "fast path 413".into()).await;
    let mut limited = false;
    for _ in 0..5 {
        limited |= check(s.req(Method::POST, "/v1/agents/hello/invoke", &dev).body("x"), "fast path".into()).await
            == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "no invocation was over the rate quota");
    for bad in ["a".repeat(129), "has space".to_owned()] {
        let r =
            s.req(Method::POST, "/v1/agents/nobody/invoke", &dev).header("x-request-id", &bad).send().await.unwrap();
        let (_, id) = id_of(r, "insane id").await;
        assert!(id != bad && !id.is_empty() && id.len() <= 128, "{id}");
    }
    // The fallback: no such route.
    check(s.req(Method::GET, "/v1/nope", &admin), "fallback".into()).await;
    check(s.client.get(s.url("/")), "fallback anonymous".into()).await;

    // The sweep reached every kind of problem named in the document's common errors.
    for status in [400, 401, 403, 404, 405, 413, 429] {
        assert!(seen.contains_key(&status), "no {status} in the sweep: {seen:?}");
    }
    // Ids differ from one request to the next.
    let (_, a) = id_of(s.client.get(s.url("/healthz")).send().await.unwrap(), "healthz").await;
    let (_, b) = id_of(s.client.get(s.url("/healthz")).send().await.unwrap(), "healthz").await;
    assert_ne!(a, b);
}
