//! The documents and runtime imports, driven from a real guest (plugins/kv).

use std::collections::BTreeMap;

use cortex_artifacts as art;
use cortex_host::runtime::{Module, Report};

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
