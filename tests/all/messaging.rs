//! The messaging import from real guests, through the HTTP API: durable mailboxes with
//! idempotency keys, retries and dead letters, synchronous calls with a depth limit, cycle
//! detection and the caller's deadline, topics, restarts, and tenant isolation.

use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::api::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::server::Server;

/// Poll `f` until it returns `Some`, for at most 30 s (a bound, not a synchronisation).
pub(crate) async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn inbox(s: &Server, token: &str, agent: &str) -> Vec<String> {
    let raw = s.invoke_ok(token, agent, "inbox").await;
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("inbox of {agent}: {e}: {raw}"))
}

/// Wait until `agent` has received `n` messages, and return them sorted.
async fn inbox_of(s: &Server, token: &str, agent: &str, n: usize) -> Vec<String> {
    let mut got = until(&format!("{n} messages in {agent}"), || async {
        let got = inbox(s, token, agent).await;
        (got.len() >= n).then_some(got)
    })
    .await;
    got.sort();
    got
}

/// The value of the sample `name_and_labels` (labels in their sorted order) in `/metrics`; 0 if absent.
pub(crate) async fn metric(s: &Server, name_and_labels: &str) -> f64 {
    let text = s.req(Method::GET, "/metrics", &s.admin()).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// The `acme` tenant with the messenger module uploaded: a developer token and the digest.
async fn acme(s: &Server) -> (String, String) {
    let dev = s.developer_in("acme").await;
    let m = s.upload(&dev, art::MESSENGER).await;
    (dev, m)
}

fn fast_retries(cfg: &mut cortex_host::config::ServerConfig) {
    cfg.messaging.attempts = 2;
    cfg.messaging.backoff_ms = 10;
    cfg.messaging.idle_poll_ms = 200;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_delivers_each_idempotency_key_once() {
    let s = Server::start().await;
    let (dev, m) = acme(&s).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    s.deploy(&dev, "b", &m, json!({})).await;
    for input in ["sendk:b:order-1:first", "sendk:b:order-1:again", "send:b:plain", "send:b:plain"] {
        assert_eq!(s.invoke_ok(&dev, "a", input).await, "sent", "{input}");
    }
    assert_eq!(inbox_of(&s, &dev, "b", 3).await, ["first", "plain", "plain"], "one per key, every plain send");
    // The key is remembered after delivery too: a late duplicate is dropped, not delivered.
    assert_eq!(s.invoke_ok(&dev, "a", "sendk:b:order-1:late").await, "sent");
    until("the late duplicate to be dropped", || async {
        (metric(&s, r#"cortex_messages_total{result="deduplicated",tenant="acme"}"#).await >= 2.0).then_some(())
    })
    .await;
    assert_eq!(inbox(&s, &dev, "b").await.len(), 3);
    let b = s.get_json(&dev, "/v1/agents/b").await;
    assert_eq!(b["messages"]["delivered"], 3, "{b}");
    // Each duplicate was dropped once: when it was sent (its first copy still waiting) or
    // by the mailbox (the first copy already delivered): `first` and the two plain sends
    // are always written, each duplicate at most once, so 3 to 5.
    assert_eq!(metric(&s, r#"cortex_messages_total{result="deduplicated",tenant="acme"}"#).await, 2.0);
    let sent = metric(&s, r#"cortex_messages_total{result="sent",tenant="acme"}"#).await;
    assert!((3.0..=5.0).contains(&sent), "{sent}");
    assert_eq!(metric(&s, r#"cortex_host_calls_total{interface="messaging",tenant="acme"}"#).await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_is_retried_then_dead_lettered_and_replayed() {
    let s = Server::start_with(fast_retries).await;
    let (dev, m) = acme(&s).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    s.deploy(&dev, "b", &m, json!({ "fail": "yes" })).await;
    assert_eq!(s.invoke_ok(&dev, "a", "sendk:b:k:payload").await, "sent");
    let letters = s.dead_letters_until(&dev, "b", 1).await;
    let l = &letters[0];
    assert_eq!(l["kind"], "message", "{l}");
    assert_eq!(l["attempts"], 2, "{l}");
    assert_eq!(l["error_code"], "agent_error", "{l}");
    assert_eq!(l["message"]["from"], "a", "{l}");
    assert_eq!(l["message"]["body_hex"], "7061796c6f6164", "{l}");
    // The letter is stored before the agent's counter moves: wait for the counter.
    let counts = until("the dead letter counted in the agent view", || async {
        let view = s.get_json(&dev, "/v1/agents/b").await;
        let c = (view["messages"]["retried"].as_u64(), view["messages"]["dead_lettered"].as_u64());
        (c.1 == Some(1)).then_some(c)
    })
    .await;
    assert_eq!(counts, (Some(1), Some(1)));

    // Replay while it still fails: 422, the letter stays.
    let id = l["id"].as_str().unwrap();
    let path = format!("/v1/agents/b/deadletters/{id}/replay");
    let r = s.req(Method::POST, &path, &dev).send().await.unwrap();
    assert_eq!(r.status(), 422);
    // Fixed: the replay delivers it and removes the letter.
    let r = s.req(Method::PUT, "/v1/agents/b/config", &dev).json(&json!({ "config": {} })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.req(Method::POST, &path, &dev).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(inbox(&s, &dev, "b").await, ["payload"]);
    assert_eq!(s.get_json(&dev, "/v1/agents/b/deadletters").await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_keyed_message_is_not_delivered_twice_and_init_cannot_message() {
    let s = Server::start_with(fast_retries).await;
    let (dev, m) = acme(&s).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    s.deploy(&dev, "b", &m, json!({ "fail": "yes" })).await;
    assert_eq!(s.invoke_ok(&dev, "a", "sendk:b:k:one").await, "sent");
    let id = s.dead_letters_until(&dev, "b", 1).await[0]["id"].as_str().unwrap().to_owned();
    // Fixed, b takes a later message under the same key (the key was never delivered)...
    let r = s.req(Method::PUT, "/v1/agents/b/config", &dev).json(&json!({ "config": {} })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.invoke_ok(&dev, "a", "sendk:b:k:two").await, "sent");
    assert_eq!(inbox_of(&s, &dev, "b", 1).await, ["two"]);
    // (its key is remembered once the mailbox has removed it, which the counter shows)
    until("the delivery to be recorded", || async {
        (s.get_json(&dev, "/v1/agents/b").await["messages"]["delivered"] == 1).then_some(())
    })
    .await;
    // ...so replaying the parked copy delivers nothing and removes the letter.
    let r = s.req(Method::POST, &format!("/v1/agents/b/deadletters/{id}/replay"), &dev).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "duplicate");
    assert_eq!(s.get_json(&dev, "/v1/agents/b/deadletters").await, json!([]));
    assert_eq!(inbox(&s, &dev, "b").await, ["two"]);

    // `init` may be undone, so it cannot message: its send is refused and the deploy fails.
    let r = s
        .req(Method::POST, "/v1/agents", &dev)
        .json(&json!({ "name": "c", "module": m, "config": { "init_send": "b" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("messaging-unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reply_and_stop_at_the_depth_limit_and_on_cycles() {
    let s = Server::start().await;
    let (dev, m) = acme(&s).await;
    for i in 1..=9 {
        s.deploy(&dev, &format!("m{i}"), &m, json!({})).await;
    }
    s.deploy(&dev, "sulky", &m, json!({ "fail": "yes" })).await;
    assert_eq!(s.invoke_ok(&dev, "m1", "chain:m2,m3").await, "end@m3");
    // Eight deep is allowed; the ninth is refused, and the error comes back up the chain.
    assert_eq!(s.invoke_ok(&dev, "m1", "chain:m2,m3,m4,m5,m6,m7,m8").await, "end@m8");
    let deep = s.invoke_ok(&dev, "m1", "chain:m2,m3,m4,m5,m6,m7,m8,m9").await;
    assert!(deep.starts_with("error:messaging-depth-exceeded:"), "{deep}");
    // A cycle is an error at once, never a hang.
    let cycle = s.invoke_ok(&dev, "m1", "chain:m2,m3,m1").await;
    assert!(cycle.starts_with("error:messaging-depth-exceeded:"), "{cycle}");
    let own = s.invoke_ok(&dev, "m1", "call:m1:inbox").await;
    assert!(own.starts_with("error:messaging-depth-exceeded:"), "{own}");
    // The callee's error reaches the caller as it was.
    let err = s.invoke_ok(&dev, "m1", "call:sulky:hello").await;
    assert!(err.starts_with("error:told-to-fail:"), "{err}");
    let r = s.invoke_ok(&dev, "m1", "call:ghost:x").await;
    assert!(r.starts_with("error:messaging-unknown-agent:"), "{r}");
    // A target that is no agent name, under the API's one rule (`_` and a leading digit
    // included: no such agent can be deployed), is refused as such, naming the rule.
    for cmd in ["call:../m2:x", "call:_m2:x", "call:2m:x", "call:M2:x", "send:m_2:x", "send::x"] {
        let r = s.invoke_ok(&dev, "m1", cmd).await;
        assert!(r.starts_with("error:messaging-invalid-argument:"), "{cmd}: {r}");
        assert!(r.contains("agent name") && r.contains("[a-z][a-z0-9-]{0,62}"), "{cmd}: {r}");
    }
    // A call reply is the callee's output.
    assert_eq!(s.invoke_ok(&dev, "m1", "call:m2:hello").await, "got");
    assert_eq!(inbox(&s, &dev, "m2").await, ["hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_runs_within_its_callers_deadline() {
    // Fuel out of reach: the quota's default highest fuel (10 billion) is burnt by a spin in
    // about a second on a fast machine, too close to the deadlines under test.
    let fuel = u64::MAX / 2;
    let s = Server::start_with(|c| c.quotas.max_fuel = fuel).await;
    let (dev, m) = acme(&s).await;
    s.deploy_with(&dev, "caller", &m, json!({ "limits": { "timeout_ms": 400 } })).await;
    // A caller whose own deadline is out of reach: only the callee's can trip.
    s.deploy_with(&dev, "patient", &m, json!({ "limits": { "timeout_ms": 60_000, "fuel": fuel } })).await;
    s.deploy_with(&dev, "quick", &m, json!({ "limits": { "timeout_ms": 200, "fuel": fuel } })).await;
    s.deploy_with(&dev, "slow", &m, json!({ "limits": { "timeout_ms": 60_000, "fuel": fuel } })).await;
    // The callee's own limit is shorter: the caller sees deadline-exceeded and goes on.
    let r = s.invoke_ok(&dev, "patient", "call:quick:spin").await;
    assert!(r.starts_with("error:messaging-deadline-exceeded:"), "{r}");
    // The callee may run 60 s, the caller only 400 ms: the callee is cut at the caller's
    // deadline (it does not run on), and the caller ends deadline_exceeded.
    let (status, body) = s.invoke(&dev, "caller", "call:slow:spin").await;
    assert_eq!(status, 504, "{body}");
    let slow = until("the callee to be accounted", || async {
        let v = s.get_json(&dev, "/v1/agents/slow").await;
        (v["invocations"] == 1).then_some(v)
    })
    .await;
    assert_eq!(slow["failures"], 1, "{slow}");
    let d = metric(&s, r#"cortex_invocations_total{agent="slow",outcome="deadline_exceeded",tenant="acme"}"#).await;
    assert_eq!(d, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_every_subscriber_of_the_topic_only() {
    let s = Server::start().await;
    let (dev, m) = acme(&s).await;
    s.deploy(&dev, "p", &m, json!({})).await;
    s.deploy_with(&dev, "s1", &m, json!({ "subscriptions": ["news"] })).await;
    s.deploy_with(&dev, "s2", &m, json!({ "subscriptions": ["other", "news"] })).await;
    s.deploy_with(&dev, "s3", &m, json!({ "subscriptions": ["other"] })).await;
    assert_eq!(s.invoke_ok(&dev, "p", "publish:news:hi").await, "published");
    assert_eq!(s.invoke_ok(&dev, "p", "publish:nobody.listens:x").await, "published");
    assert_eq!(inbox_of(&s, &dev, "s1", 1).await, ["hi"]);
    assert_eq!(inbox_of(&s, &dev, "s2", 1).await, ["hi"]);
    assert_eq!(s.invoke_ok(&dev, "p", "publish:other:o").await, "published");
    assert_eq!(inbox_of(&s, &dev, "s3", 1).await, ["o"], "s3 never got news");
    assert_eq!(inbox_of(&s, &dev, "s2", 2).await, ["hi", "o"]);
    let r = s.invoke_ok(&dev, "p", "publish:Bad Topic:x").await;
    assert!(r.starts_with("error:messaging-invalid-argument:"), "{r}");

    // Subscriptions are checked at deploy.
    for bad in [json!(["UPPER"]), json!(["a/b"]), json!(["x", "x"])] {
        let r = s
            .req(Method::POST, "/v1/agents", &dev)
            .json(&json!({ "name": "bad", "module": m, "subscriptions": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_message_another_tenants_agents() {
    let s = Server::start().await;
    s.tenant("alpha").await;
    s.tenant("beta").await;
    let a = s.token(Some("alpha"), Role::Developer);
    let b = s.token(Some("beta"), Role::Developer);
    let ma = s.upload(&a, art::MESSENGER).await;
    let mb = s.upload(&b, art::MESSENGER).await;
    s.deploy(&a, "sender", &ma, json!({})).await;
    s.deploy_with(&a, "target", &ma, json!({ "subscriptions": ["news"] })).await;
    s.deploy(&b, "intruder", &mb, json!({})).await;
    for input in ["send:target:x", "sendk:target:k:x", "call:target:x"] {
        let r = s.invoke_ok(&b, "intruder", input).await;
        assert!(r.starts_with("error:messaging-unknown-agent:"), "{input}: {r}");
    }
    // Beta cannot see alpha's mailbox dead letters either.
    let r = s.req(Method::GET, "/v1/agents/target/deadletters", &b).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // With an agent of the same name (and topic) in beta, beta's messages reach beta's.
    s.deploy_with(&b, "target", &mb, json!({ "subscriptions": ["news"] })).await;
    for input in ["send:target:x", "sendk:target:k:y", "publish:news:from-beta"] {
        let r = s.invoke_ok(&b, "intruder", input).await;
        assert!(r == "sent" || r == "published", "{input}: {r}");
    }
    assert_eq!(s.invoke_ok(&b, "intruder", "call:target:z").await, "got");
    assert_eq!(s.invoke_ok(&a, "sender", "publish:news:from-alpha").await, "published");
    assert_eq!(inbox_of(&s, &b, "target", 4).await, ["from-beta", "x", "y", "z"]);
    assert_eq!(inbox_of(&s, &a, "target", 1).await, ["from-alpha"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_stopped_agent_wait_across_a_restart() {
    let s = Server::start().await;
    let (dev, m) = acme(&s).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    s.deploy(&dev, "b", &m, json!({})).await;
    assert_eq!(s.req(Method::POST, "/v1/agents/b/stop", &dev).send().await.unwrap().status(), 200);
    for i in 0..5 {
        assert_eq!(s.invoke_ok(&dev, "a", &format!("send:b:m{i}")).await, "sent");
    }
    assert_eq!(s.get_json(&dev, "/v1/agents/b").await["messages"]["pending"], 5);
    let dir = s.stop().await;
    let s = Server::start_in(dir, |_| {}).await;
    assert_eq!(s.req(Method::POST, "/v1/agents/b/start", &dev).send().await.unwrap().status(), 200);
    assert_eq!(inbox_of(&s, &dev, "b", 5).await, ["m0", "m1", "m2", "m3", "m4"]);

    // A deleted agent's mailbox goes with it.
    assert_eq!(s.req(Method::POST, "/v1/agents/b/stop", &dev).send().await.unwrap().status(), 200);
    assert_eq!(s.invoke_ok(&dev, "a", "send:b:lost").await, "sent");
    assert_eq!(s.req(Method::DELETE, "/v1/agents/b", &dev).send().await.unwrap().status(), 204);
    s.deploy(&dev, "b", &m, json!({})).await;
    assert_eq!(s.invoke_ok(&dev, "a", "send:b:fresh").await, "sent");
    // (The inbox is a tenant document, so it outlives the agent: the old five stay.)
    assert_eq!(inbox_of(&s, &dev, "b", 6).await, ["fresh", "m0", "m1", "m2", "m3", "m4"], "never `lost`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_more() {
    let s = Server::start_with(|c| c.messaging.max_pending = 3).await;
    let (dev, m) = acme(&s).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    s.deploy(&dev, "b", &m, json!({})).await;
    assert_eq!(s.req(Method::POST, "/v1/agents/b/stop", &dev).send().await.unwrap().status(), 200);
    let r = s.invoke_ok(&dev, "a", "sendn:b:5").await;
    assert!(r.starts_with("error:messaging-unavailable:"), "{r}");
    assert!(r.contains("full"), "{r}");
    assert_eq!(s.get_json(&dev, "/v1/agents/b").await["messages"]["pending"], 3);
    assert_eq!(s.req(Method::POST, "/v1/agents/b/start", &dev).send().await.unwrap().status(), 200);
    assert_eq!(inbox_of(&s, &dev, "b", 3).await, ["m0", "m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_count_against_the_tenants_rate_and_wait_for_it() {
    let s = Server::start().await;
    let q = cortex_host::registry::Quotas { invocations_per_second: 20, burst: 5, ..Default::default() };
    s.tenant_with("acme", Some(q)).await;
    let dev = s.token(Some("acme"), Role::Developer);
    let m = s.upload(&dev, art::MESSENGER).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    s.deploy_with(&dev, "b", &m, json!({ "config": { "quiet": "yes" } })).await;
    // One invocation sends 30 messages: far more deliveries than the burst allows at once.
    assert_eq!(s.invoke_ok(&dev, "a", "sendn:b:30").await, "sent");
    let b = until("30 deliveries", || async {
        let v = s.get_json(&dev, "/v1/agents/b").await;
        (v["messages"]["delivered"] == 30).then_some(v)
    })
    .await;
    // They waited for the bucket (refusals counted), and none used up a retry.
    assert_eq!((b["messages"]["retried"].as_u64(), b["messages"]["dead_lettered"].as_u64()), (Some(0), Some(0)));
    assert!(metric(&s, r#"cortex_rate_limited_total{reason="rate_limited",tenant="acme"}"#).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_deliveries_count_against_the_tenants_concurrency_quota() {
    let s = Server::start().await;
    let q = cortex_host::registry::Quotas { concurrent_invocations: 1, ..Default::default() };
    s.tenant_with("acme", Some(q)).await;
    let dev = s.token(Some("acme"), Role::Developer);
    let m = s.upload(&dev, art::MESSENGER).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    s.deploy(&dev, "b", &m, json!({})).await;
    // The caller holds the tenant's only slot: its call finds none, and says why.
    let r = s.invoke_ok(&dev, "a", "call:b:hello").await;
    assert!(r.starts_with("error:messaging-unavailable:") && r.contains("1 concurrent invocations"), "{r}");
    assert!(metric(&s, r#"cortex_rate_limited_total{reason="concurrency_quota",tenant="acme"}"#).await >= 1.0);
    // A message waits for the slot (without using up a retry), and arrives once it is free.
    assert_eq!(s.invoke_ok(&dev, "a", "send:b:later").await, "sent");
    // Watched through the agent's counters: an invocation of b now could take the slot.
    let b = until("the delivery", || async {
        let v = s.get_json(&dev, "/v1/agents/b").await;
        (v["messages"]["delivered"] == 1).then_some(v)
    })
    .await;
    assert_eq!(inbox(&s, &dev, "b").await, ["later"]);
    assert_eq!((b["messages"]["retried"].as_u64(), b["messages"]["dead_lettered"].as_u64()), (Some(0), Some(0)), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_count_against_the_storage_quota_until_delivered() {
    let s = Server::start().await;
    let quotas = cortex_host::registry::Quotas { stored_bytes: 6_000, ..Default::default() };
    s.tenant_with("acme", Some(quotas)).await;
    let dev = s.token(Some("acme"), cortex_host::api::Role::Developer);
    let m = s.upload(&dev, art::MESSENGER).await;
    s.deploy(&dev, "a", &m, json!({})).await;
    // `quiet`: b takes its messages without storing them.
    s.deploy(&dev, "b", &m, json!({ "quiet": "yes" })).await;
    // A stopped agent's messages wait in its mailbox (and in the tenant's stored bytes).
    let r = s.req(reqwest::Method::POST, "/v1/agents/b/stop", &dev).send().await.unwrap();
    assert!(r.status().is_success());
    let body = "x".repeat(1000);
    assert_eq!(s.invoke_ok(&dev, "a", &format!("send:b:{body}")).await, "sent");
    let used = s.state.registry.store().stored_bytes("acme").await.unwrap();
    assert!(used > 2000, "a queued message counts its stored record: {used}");
    let mut refused = None;
    for _ in 0..10 {
        let r = s.invoke_ok(&dev, "a", &format!("send:b:{body}")).await;
        if r != "sent" {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the quota refuses a message past it");
    assert!(r.starts_with("error:messaging-too-large:") && r.contains("quota"), "{r}");
    // Delivered messages free what they held.
    let r = s.req(reqwest::Method::POST, "/v1/agents/b/start", &dev).send().await.unwrap();
    assert!(r.status().is_success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.state.registry.store().stored_bytes("acme").await.unwrap() != 0 {
        assert!(std::time::Instant::now() < deadline, "the mailbox never drained");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(s.invoke_ok(&dev, "a", &format!("send:b:{body}")).await, "sent");
}
