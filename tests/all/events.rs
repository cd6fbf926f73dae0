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
