//! The documents and runtime imports, driven from a real guest (plugins/kv).

use std::collections::BTreeMap;

use cortex_artifacts as art;
use cortex_host::runtime::{Limits, Module, Report};

use crate::common::{Sandbox, limits, text};

async fn kv(sb: &Sandbox, m: &Module, tenant: &str, cmd: &str) -> Report {
    sb.runtime.invoke(m, &sb.agent(tenant, "kv"), &limits(), cmd.as_bytes()).await
}

async fn kv_text(sb: &Sandbox, m: &Module, tenant: &str, cmd: &str) -> String {
    text(&kv(sb, m, tenant, cmd).await)
}

#[tokio::test]
async fn put_get_and_compare_and_swap_from_a_guest() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    assert_eq!(kv_text(&sb, &m, "t1", "get:orders/o1").await, "none");
    assert_eq!(kv_text(&sb, &m, "t1", r#"put:orders/o1={"n":1}"#).await, "1");
    assert_eq!(kv_text(&sb, &m, "t1", "get:orders/o1").await, r#"{"n":1}"#);
    // A stale expected revision is refused with the current one.
    assert_eq!(kv_text(&sb, &m, "t1", r#"cas:orders/o1@0={"n":2}"#).await, "conflict:1");
    assert_eq!(kv_text(&sb, &m, "t1", r#"cas:orders/o1@1={"n":2}"#).await, "2");
    assert_eq!(kv_text(&sb, &m, "t1", "del:orders/o1").await, "true");
    assert_eq!(kv_text(&sb, &m, "t1", "del:orders/o1").await, "false");
}

#[tokio::test]
async fn tenants_cannot_see_each_others_documents() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    assert_eq!(kv_text(&sb, &m, "alpha", r#"put:secrets/k="alpha-only""#).await, "1");
    assert_eq!(kv_text(&sb, &m, "beta", "get:secrets/k").await, "none");
    let listing = kv_text(&sb, &m, "beta", "list:secrets/?limit=10").await;
    let v: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(v["keys"], serde_json::json!([]));
    assert_eq!(kv_text(&sb, &m, "alpha", "get:secrets/k").await, r#""alpha-only""#);
}

#[tokio::test]
async fn list_pages_through_a_prefix() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    for k in ["a/1", "a/2", "a/3", "b/1"] {
        kv_text(&sb, &m, "t1", &format!("put:c/{k}=0")).await;
    }
    let p1: serde_json::Value = serde_json::from_str(&kv_text(&sb, &m, "t1", "list:c/a/?limit=2").await).unwrap();
    assert_eq!(p1["keys"], serde_json::json!(["a/1", "a/2"]));
    let cursor = p1["next"].as_str().unwrap().to_owned();
    let p2: serde_json::Value =
        serde_json::from_str(&kv_text(&sb, &m, "t1", &format!("list:c/a/?limit=2&cursor={cursor}")).await).unwrap();
    assert_eq!(p2["keys"], serde_json::json!(["a/3"]));
    assert!(p2["next"].is_null());
}

#[tokio::test]
async fn transact_is_all_or_nothing() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    kv_text(&sb, &m, "t1", "put:acct/a=10").await;
    let bad = r#"tx:[{"op":"put","c":"acct","k":"b","v":5},{"op":"put","c":"acct","k":"a","v":5,"rev":7}]"#;
    assert_eq!(kv_text(&sb, &m, "t1", bad).await, "error:conflict:current revision is 1");
    assert_eq!(kv_text(&sb, &m, "t1", "get:acct/b").await, "none", "the first op must not be applied");
    let good = r#"tx:[{"op":"put","c":"acct","k":"b","v":5,"rev":0},{"op":"put","c":"acct","k":"a","v":5,"rev":1}]"#;
    assert_eq!(kv_text(&sb, &m, "t1", good).await, "[1,2]");
}

#[tokio::test]
async fn bad_keys_and_values_are_typed_errors_not_traps() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    let r = kv_text(&sb, &m, "t1", "put:c/has space=1").await;
    assert!(r.starts_with("error:invalid-key:"), "{r}");
    let r = kv_text(&sb, &m, "t1", "put:c/k={not json").await;
    assert!(r.starts_with("error:invalid-value:"), "{r}");
    let r = kv_text(&sb, &m, "t1", "put:bad.collection/k=1").await;
    assert!(r.starts_with("error:invalid-key:"), "{r}");
}

#[tokio::test]
async fn runtime_import_answers_from_the_host_identity_and_config() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    let mut cfg = BTreeMap::new();
    cfg.insert("greeting".to_owned(), "hej".to_owned());
    let agent = sb.agent_with_config("tenant-x", "agent-y", cfg);
    let who = text(&sb.runtime.invoke(&m, &agent, &limits(), b"whoami").await);
    let v: serde_json::Value = serde_json::from_str(&who).unwrap();
    assert_eq!((v["tenant"].as_str(), v["agent"].as_str()), (Some("tenant-x"), Some("agent-y")));
    assert!(!v["invocation"].as_str().unwrap().is_empty());
    assert_eq!(text(&sb.runtime.invoke(&m, &agent, &limits(), b"config:greeting").await), "hej");
    assert_eq!(text(&sb.runtime.invoke(&m, &agent, &limits(), b"config:missing").await), "none");
    let r = sb.runtime.invoke(&m, &agent, &limits(), b"log:hello log").await;
    assert_eq!(text(&r), "logged");
    assert_eq!(r.logs.records.len(), 1);
    assert_eq!(r.logs.records[0].message, "hello log");
    assert!(r.stats.host_calls >= 1);
}

#[tokio::test]
async fn writes_past_the_tenants_storage_quota_are_refused_with_a_typed_error() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    let mut agent = sb.agent("small", "kv");
    agent.stored_bytes_quota = Some(64);
    let run = |cmd: &'static str| {
        let (sb, m, agent) = (&sb, &m, agent.clone());
        async move { text(&sb.runtime.invoke(m, &agent, &limits(), cmd.as_bytes()).await) }
    };
    assert_eq!(run(r#"put:c/a="0123456789012345678901234567890123456789""#).await, "1");
    let r = run(r#"put:c/b="0123456789012345678901234567890123456789""#).await;
    assert!(r.starts_with("error:quota-exceeded:"), "{r}");
    assert_eq!(run("get:c/b").await, "none", "nothing was written");
    // Freeing space makes room again.
    assert_eq!(run("del:c/a").await, "true");
    assert_eq!(run(r#"put:c/b="0123456789012345678901234567890123456789""#).await, "1");
}

#[tokio::test]
async fn a_listing_past_the_byte_budget_comes_in_short_pages_that_reach_every_document_once() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    // 12 values of 512 KiB; a 16 MiB guest gets pages of at most 2 MiB (an eighth of its
    // memory), so at most 3 of them per page whatever the `limit` it asks for.
    let value = format!("\"{}\"", "v".repeat((512 << 10) - 2));
    for i in 0..12 {
        assert_eq!(kv_text(&sb, &m, "t1", &format!("put:big/k{i:02}={value}")).await, "1");
    }
    let small = Limits { memory_bytes: 16 << 20, ..limits() };
    let agent = sb.agent("t1", "kv");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let cmd = match &cursor {
            Some(c) => format!("list:big/?limit=1000&cursor={c}"),
            None => "list:big/?limit=1000".to_owned(),
        };
        let page: serde_json::Value =
            serde_json::from_str(&text(&sb.runtime.invoke(&m, &agent, &small, cmd.as_bytes()).await)).unwrap();
        let keys: Vec<String> = serde_json::from_value(page["keys"].clone()).unwrap();
        assert!((1..=3).contains(&keys.len()), "a page of {} values of 512 KiB", keys.len());
        seen.extend(keys);
        pages += 1;
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..12).map(|i| format!("k{i:02}")).collect::<Vec<_>>(), "every document once, in order");
    assert!(pages >= 4, "{pages} pages");
}

#[tokio::test]
async fn json_the_sdk_cannot_read_back_is_refused_with_invalid_value() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep = nested(100_000);
    let too_deep = nested(65);
    let at_limit = nested(64);
    for bad in [deep.as_str(), too_deep.as_str(), "1e999999", r#""\ud800""#, r#"{"k":"a\udc00"}"#] {
        let r = kv_text(&sb, &m, "t1", &format!("put:c/k={bad}")).await;
        assert!(r.starts_with("error:invalid-value:"), "{}: {r}", &bad[..bad.len().min(20)]);
    }
    // The same through a transaction (70 deep: the guest's own serde_json still reads it,
    // the host refuses it): nothing of it is written.
    let tx =
        format!(r#"tx:[{{"op":"put","c":"c","k":"ok","v":1}},{{"op":"put","c":"c","k":"bad","v":{}}}]"#, nested(70));
    let r = kv_text(&sb, &m, "t1", &tx).await;
    assert!(r.starts_with("error:invalid-value:"), "{r}");
    assert_eq!(kv_text(&sb, &m, "t1", "get:c/ok").await, "none");
    assert_eq!(kv_text(&sb, &m, "t1", "get:c/k").await, "none", "nothing was stored");
    // At the documented depth, and ordinary escapes, values are kept.
    assert_eq!(kv_text(&sb, &m, "t1", &format!("put:c/k={at_limit}")).await, "1");
    assert_eq!(kv_text(&sb, &m, "t1", r#"put:c/e="\ud83d\ude00""#).await, "1");
}

#[tokio::test]
async fn a_huge_agent_error_is_kept_and_echoed_truncated() {
    let sb = Sandbox::new();
    let m = sb.load(art::KV).await;
    let r = kv(&sb, &m, "t1", "fail:10000000").await;
    let cortex_host::runtime::Outcome::AgentError { code, message } = &r.outcome else {
        panic!("expected an agent error, got {}", r.outcome)
    };
    assert_eq!(code, "big-error");
    assert!(message.len() <= 4096 + 64, "{} bytes kept", message.len());
    assert!(message.ends_with("(truncated: 10000000 bytes)"), "{}", &message[message.len() - 40..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_422_body_of_a_huge_agent_error_is_truncated() {
    let s = crate::server::Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "kv", &kv, serde_json::json!({})).await;
    let (status, body) = s.invoke(&dev, "kv", "fail:10000000").await;
    assert_eq!(status.as_u16(), 422, "{body:.200}");
    assert!(body.len() < 16 << 10, "a {} byte body", body.len());
    assert!(body.contains("big-error") && body.contains("truncated: 10000000 bytes"), "{body:.300}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_init_leaves_no_document_and_no_change_event_and_a_successful_one_keeps_all() {
    let s = crate::server::Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "reader", &kv, serde_json::json!({})).await;
    let puts = "init/a=1;init/b={\"n\":2}";
    // `init` writes two documents, reads them back (it sees its own writes), then fails.
    let body = serde_json::json!({ "name": "bad", "module": kv, "config": { "init_puts": puts, "reject": "yes" } });
    let r = s.req(reqwest::Method::POST, "/v1/agents", &dev).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422, "{}", r.text().await.unwrap());
    assert_eq!(s.invoke_ok(&dev, "reader", "get:init/a").await, "none");
    assert_eq!(s.invoke_ok(&dev, "reader", "get:init/b").await, "none");
    let events = s.get_json(&dev, "/v1/events?since=0").await;
    assert_eq!(events.as_array().map(Vec::len), Some(0), "{events}");

    // The same init succeeding: all of its writes are there, with their change events.
    s.deploy(&dev, "good", &kv, serde_json::json!({ "init_puts": puts })).await;
    assert_eq!(s.invoke_ok(&dev, "reader", "get:init/a").await, "1");
    assert_eq!(s.invoke_ok(&dev, "reader", "get:init/b").await, r#"{"n":2}"#);
    let events = s.get_json(&dev, "/v1/events?since=0").await;
    let keys: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["key"].as_str()).collect();
    assert_eq!(keys, ["a", "b"], "{events}");
}
