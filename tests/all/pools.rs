//! Pools and fair share: an agent's bounded wait queue, and a tenant flooding the node
//! cannot starve another (real server, real plugins).

use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::registry::Quotas;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Server, answer};

/// Poll agent `name` until `field` of its view reaches `n` (generous deadline).
async fn until_count(s: &Server, token: &str, name: &str, field: &str, n: u64) {
    let start = Instant::now();
    loop {
        let v: Value = s.get_json(token, &format!("/v1/agents/{name}")).await;
        if v[field].as_u64() == Some(n) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{name}: {field} never reached {n}: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Quotas with every limit out of reach.
fn roomy() -> Quotas {
    Quotas { invocations_per_second: 100_000, burst: 100_000, concurrent_invocations: 1000, ..Quotas::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_agent_queues_up_to_its_queue_then_refuses_with_stable_codes() {
    let s = Server::start().await;
    s.tenant_with("t", Some(roomy())).await;
    let dev = s.token(Some("t"), Role::Developer);
    let hostile = s.upload(&dev, art::HOSTILE).await;
    let limits = json!({ "timeout_ms": 60_000 });
    s.deploy_with(
        &dev,
        "q",
        &hostile,
        json!({ "max_concurrency": 1, "queue": 2, "queue_timeout_ms": 60_000, "limits": limits }),
    )
    .await;
    s.deploy_with(
        &dev,
        "short",
        &hostile,
        json!({ "max_concurrency": 1, "queue": 1, "queue_timeout_ms": 200, "limits": limits }),
    )
    .await;
    let invoke = |agent: &str, input: &str| {
        let rb = s.req(Method::POST, &format!("/v1/agents/{agent}/invoke"), &dev).body(input.to_owned());
        tokio::spawn(async move { answer(rb.send().await.unwrap()).await })
    };

    // Each agent's one slot is held by a sleeping invocation.
    let blocker = invoke("q", "sleep:5000");
    let short_blocker = invoke("short", "sleep:5000");
    until_count(&s, &dev, "q", "running_now", 1).await;
    until_count(&s, &dev, "short", "running_now", 1).await;

    // The next two wait in the queue; the one after them is refused at once.
    let queued: Vec<_> = ["echo:first", "echo:second"].into_iter().map(|i| invoke("q", i)).collect();
    until_count(&s, &dev, "q", "queued_now", 2).await;
    let full = answer(s.req(Method::POST, "/v1/agents/q/invoke", &dev).body("echo:third").send().await.unwrap()).await;
    assert_eq!((full.status, full.code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "pool_full"), "{}", full.text);
    assert_eq!(full.retry_after.as_deref(), Some("1"));

    // A wait longer than the agent's queue_timeout_ms is refused with its own code.
    let late = answer(s.req(Method::POST, "/v1/agents/short/invoke", &dev).body("echo:x").send().await.unwrap()).await;
    assert_eq!((late.status, late.code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "queue_timeout"), "{}", late.text);
    assert_eq!(late.retry_after.as_deref(), Some("1"));

    // The blocker ends; the queued ones then run, in order, and succeed.
    let b = blocker.await.unwrap();
    assert_eq!((b.status, b.text.as_str()), (StatusCode::OK, "slept"));
    for (q, want) in queued.into_iter().zip(["first", "second"]) {
        let r = q.await.unwrap();
        assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, want));
    }
    assert_eq!(short_blocker.await.unwrap().status, StatusCode::OK);
    let v = s.get_json(&dev, "/v1/agents/q").await;
    assert_eq!((v["queue"].as_u64(), v["queue_timeout_ms"].as_u64()), (Some(2), Some(60_000)), "{v}");
    assert_eq!((v["running_now"].as_u64(), v["queued_now"].as_u64()), (Some(0), Some(0)), "{v}");

    // Bounds of the new fields.
    for (spec, what) in
        [(json!({ "queue": 10_001 }), "queue"), (json!({ "queue_timeout_ms": 60_001 }), "queue_timeout_ms")]
    {
        let mut body = json!({ "name": "bad", "module": hostile });
        body.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        let r = answer(s.req(Method::POST, "/v1/agents", &dev).json(&body).send().await.unwrap()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{what}: {}", r.text);
        assert!(r.text.contains(what), "{}", r.text);
    }
}

/// 64 clients of tenant `flood` invoke its agent `flood` (`module`) back to back, client
/// `i` with `inputs[i % len]`, while every one of the quiet tenant's 50 `hello`s must
/// succeed; with two guest slots, so that the flood fills them and the quiet tenant must be
/// let in.
async fn a_quiet_tenant_is_served_under_a_flood_of(module: &str, inputs: &'static [&'static str]) {
    let s = Server::start_with(|c| c.scheduling.guests = 2).await;
    s.tenant_with("flood", Some(roomy())).await;
    s.tenant_with("quiet", Some(Quotas { weight: 1, ..roomy() })).await;
    let flood = s.token(Some("flood"), Role::Developer);
    let quiet = s.token(Some("quiet"), Role::Developer);
    let flooding = s.upload(&flood, module).await;
    let hello = s.upload(&quiet, art::HELLO).await;
    let out_of_reach = json!({ "timeout_ms": 60_000, "fuel": 10_000_000_000u64 });
    s.deploy_with(
        &flood,
        "flood",
        &flooding,
        json!({ "max_concurrency": 64, "queue": 1000, "queue_timeout_ms": 60_000, "limits": out_of_reach }),
    )
    .await;
    s.deploy_with(&quiet, "hello", &hello, json!({ "limits": out_of_reach })).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for i in 0..64 {
        let input = inputs[i % inputs.len()];
        let (rb, stop) = (s.req(Method::POST, "/v1/agents/flood/invoke", &flood).body(input), stop.clone());
        flooders.push(tokio::spawn(async move {
            let mut served = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = answer(rb.try_clone().unwrap().send().await.unwrap()).await;
                assert_eq!(r.status, StatusCode::OK, "flood: {}", r.text);
                served += 1;
            }
            served
        }));
    }
    // The flood fills both slots and more of its guests wait.
    let sched = &s.state.tenants.scheduler;
    assert_eq!(sched.slots(), 2);
    let start = Instant::now();
    while sched.waiting() == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "the flood never filled the slots");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The quiet tenant's requests all succeed while the flood goes on.
    for i in 0..50 {
        let r =
            answer(s.req(Method::POST, "/v1/agents/hello/invoke", &quiet).body(format!("q{i}")).send().await.unwrap())
                .await;
        assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, format!("Hello, q{i}!").as_str()));
    }
    assert_eq!(s.get_json(&flood, "/v1/agents/flood").await["failures"].as_u64(), Some(0));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        assert!(f.await.unwrap() > 0, "every flooding client was served");
    }
    assert_eq!((sched.running(), sched.waiting()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_node_does_not_starve_a_quiet_one() {
    a_quiet_tenant_is_served_under_a_flood_of(art::COMPUTE, &["cpu:20000"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_flood_does_not_starve_a_quiet_tenant() {
    // Guests that spend their time in the store: hundreds of point reads, and writes that
    // wait for their commit.
    a_quiet_tenant_is_served_under_a_flood_of(art::KV, &["getn:300:c/k", "put:c/k={\"n\":1}"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_weight_is_set_at_create_and_patch_and_bounded() {
    let s = Server::start().await;
    let admin = s.admin();
    let r = answer(
        s.req(Method::POST, "/v1/tenants", &admin)
            .json(&json!({ "name": "w", "quotas": { "weight": 3 } }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(s.get_json(&admin, "/v1/tenants/w").await["quotas"]["weight"].as_u64(), Some(3));
    let r = answer(
        s.req(Method::PATCH, "/v1/tenants/w", &admin).json(&json!({ "quotas": { "weight": 5 } })).send().await.unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(s.get_json(&admin, "/v1/tenants/w").await["quotas"]["weight"].as_u64(), Some(5));
    for bad in [0, 1001] {
        let r = answer(
            s.req(Method::PATCH, "/v1/tenants/w", &admin)
                .json(&json!({ "quotas": { "weight": bad } }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{bad}: {}", r.text);
    }
    s.tenant("plain").await;
    assert_eq!(s.get_json(&admin, "/v1/tenants/plain").await["quotas"]["weight"].as_u64(), Some(1), "default weight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_pool_is_capped_by_its_tenants_concurrency_quota() {
    let s = Server::start().await;
    s.tenant_with("t", Some(Quotas { concurrent_invocations: 4, ..Quotas::default() })).await;
    let dev = s.token(Some("t"), Role::Developer);
    let hello = s.upload(&dev, art::HELLO).await;
    // Left out: the default (16), lowered to the quota.
    let v = s.deploy(&dev, "plain", &hello, json!({})).await;
    assert_eq!(v["max_concurrency"], 4, "{v}");
    // Given within the quota: as given.
    let v = s.deploy_with(&dev, "two", &hello, json!({ "max_concurrency": 2 })).await;
    assert_eq!(v["max_concurrency"], 2, "{v}");
    // Given over it: refused, nothing deployed.
    let r = answer(
        s.req(Method::PUT, "/v1/profiles/wide", &s.token(Some("t"), Role::TenantAdmin))
            .json(&json!({ "max_concurrency": 4 }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body = json!({ "name": "wide", "module": hello, "max_concurrency": 5 });
    let r = answer(s.req(Method::POST, "/v1/agents", &dev).json(&body).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{}", r.text);
    assert!(r.text.contains("concurrent invocations"), "{}", r.text);
    let r = answer(s.req(Method::GET, "/v1/agents/wide", &dev).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A profile within the quota gives its value.
    let v = s.deploy_with(&dev, "profiled", &hello, json!({ "profile": "wide" })).await;
    assert_eq!(v["max_concurrency"], 4, "{v}");
}
