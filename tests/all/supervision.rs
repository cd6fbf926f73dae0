//! Supervision through the HTTP API with real guests: the circuit breaker of an agent opens
//! on its failures and answers `503 circuit_open` without running it, half-opens after its
//! interval for one probe and closes on the probe's success or reopens on its failure;
//! calls to an open agent fail clearly and mailbox deliveries wait without using an
//! attempt; an upgrade that fails its probation is rolled back by the host. Every state is
//! awaited by polling the agent view, never by sleeping.

use cortex_artifacts as art;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::messaging::{metric, until};
use crate::server::Server;

async fn view(s: &Server, token: &str, agent: &str) -> Value {
    s.get_json(token, &format!("/v1/agents/{agent}")).await
}

/// Wait until the open breaker of `agent` lets its next invocation through as the probe.
async fn probe_due(s: &Server, token: &str, agent: &str) {
    until("the open interval to pass", || async {
        let v = view(s, token, agent).await;
        (v["circuit"] == "open" && v["circuit_retry_after_ms"] == 0).then_some(())
    })
    .await;
}

/// The host's own audit events of `acme` with `action`, once there are `n`.
async fn host_audit(s: &Server, action: &str, n: usize) -> Vec<Value> {
    until(&format!("{n} audit events {action}"), || async {
        let events = s.get_json(&s.admin(), &format!("/v1/audit?tenant=acme&actor=host&action={action}")).await;
        let events: Vec<Value> = events.as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect();
        (events.len() >= n).then_some(events)
    })
    .await
}

/// A breaker that opens after `failures` in a row, for `open_ms` (then twice as long, at
/// most `max_open_ms`); the ratio out of reach.
fn breaker(failures: u32, open_ms: u64, max_open_ms: u64) -> Value {
    json!({ "supervision": {
        "window": 20, "consecutive_failures": failures, "failure_ratio": 1.0, "min_outcomes": 20,
        "open_ms": open_ms, "max_open_ms": max_open_ms,
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_refuses_without_running_half_opens_reopens_and_closes() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let m = s.upload(&dev, art::HOSTILE).await;
    // Intervals long enough that a loaded machine still sends the next request while the
    // breaker is open (the state machine's timing is unit-tested on paused time).
    let deployed = s.deploy_with(&dev, "h", &m, breaker(3, 1_000, 2_000)).await;
    assert_eq!((&deployed["health"], &deployed["circuit"]), (&json!("healthy"), &json!("closed")));
    assert_eq!(deployed["supervision"]["consecutive_failures"], 3);

    for i in 0..3 {
        assert_eq!(s.invoke(&dev, "h", "trap").await.0, StatusCode::BAD_GATEWAY, "trap {i}");
    }
    let v = view(&s, &dev, "h").await;
    assert_eq!((&v["health"], &v["circuit"], &v["invocations"]), (&json!("failing"), &json!("open"), &json!(3)));
    assert_eq!(v["window"]["consecutive_failures"], 3);

    // Open: 503 circuit_open at once with Retry-After, and the guest does not run.
    let r = s.req(Method::POST, "/v1/agents/h/invoke", &dev).body("echo:x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "circuit_open", "{body}");
    assert_eq!(view(&s, &dev, "h").await["invocations"], 3, "the guest did not run");

    // After the interval, one probe goes through; it fails: open again.
    probe_due(&s, &dev, "h").await;
    let (status, body) = s.invoke(&dev, "h", "trap").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "the probe ran: {body}");
    let v = view(&s, &dev, "h").await;
    assert_eq!((&v["circuit"], &v["invocations"]), (&json!("open"), &json!(4)));
    assert_eq!(s.invoke(&dev, "h", "echo:x").await.0, StatusCode::SERVICE_UNAVAILABLE);

    // The next probe succeeds: closed and healthy, and every invocation runs again.
    probe_due(&s, &dev, "h").await;
    assert_eq!(s.invoke_ok(&dev, "h", "echo:probe").await, "probe");
    let v = view(&s, &dev, "h").await;
    assert_eq!((&v["health"], &v["circuit"], &v["invocations"]), (&json!("healthy"), &json!("closed"), &json!(5)));
    assert_eq!(s.invoke_ok(&dev, "h", "echo:again").await, "again");

    let labels = r#"agent="h",tenant="acme""#;
    assert_eq!(metric(&s, &format!("cortex_agent_circuit_transitions_total{{{labels},to=\"open\"}}")).await, 2.0);
    assert_eq!(metric(&s, &format!("cortex_agent_circuit_transitions_total{{{labels},to=\"half_open\"}}")).await, 2.0);
    assert_eq!(metric(&s, &format!("cortex_agent_circuit_transitions_total{{{labels},to=\"closed\"}}")).await, 1.0);
    assert_eq!(metric(&s, &format!("cortex_agent_circuit_state{{{labels}}}")).await, 0.0);
    assert_eq!(metric(&s, &format!("cortex_agent_health{{{labels}}}")).await, 0.0);

    let opened = host_audit(&s, "circuit_open", 2).await;
    assert_eq!(opened[0]["target"], "/v1/agents/h");
    assert!(opened[0]["detail"].as_str().unwrap().contains("opened for 1000 ms"), "{}", opened[0]);
    assert!(opened[1]["detail"].as_str().unwrap().contains("opened for 2000 ms"), "{}", opened[1]);
    host_audit(&s, "circuit_closed", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_an_open_agent_fail_clearly_and_deliveries_wait_without_an_attempt() {
    // One attempt per message: a delivery that used one while the breaker is open would be
    // a dead letter.
    let s = Server::start_with(|cfg| {
        cfg.messaging.attempts = 1;
        cfg.messaging.backoff_ms = 10;
    })
    .await;
    let dev = s.developer_in("acme").await;
    let hostile = s.upload(&dev, art::HOSTILE).await;
    let messenger = s.upload(&dev, art::MESSENGER).await;
    s.deploy(&dev, "m", &messenger, json!({})).await;
    // Open for a minute: the call below surely meets it open.
    s.deploy_with(&dev, "held", &hostile, breaker(2, 60_000, 60_000)).await;
    s.deploy_with(&dev, "brief", &hostile, breaker(2, 300, 300)).await;
    for agent in ["held", "brief"] {
        for _ in 0..2 {
            assert_eq!(s.invoke(&dev, agent, "trap").await.0, StatusCode::BAD_GATEWAY);
        }
    }

    let answer = s.invoke_ok(&dev, "m", "call:held:echo:x").await;
    assert!(answer.starts_with("error:") && answer.contains("circuit_open"), "{answer}");
    let v = view(&s, &dev, "held").await;
    assert_eq!((&v["circuit"], &v["invocations"]), (&json!("open"), &json!(2)), "the callee did not run");

    assert_eq!(s.invoke_ok(&dev, "m", "send:brief:echo:y").await, "sent");
    let v = until("the message to be delivered", || async {
        let v = view(&s, &dev, "brief").await;
        (v["messages"]["delivered"] == 1 || v["messages"]["dead_lettered"] != 0).then_some(v)
    })
    .await;
    assert_eq!(v["messages"]["dead_lettered"], 0, "{v}");
    assert_eq!(v["messages"]["retried"], 0, "waiting for the breaker used no attempt: {v}");
    // The delivery was the probe: it succeeded and closed the breaker.
    assert_eq!((&v["circuit"], &v["invocations"], &v["failures"]), (&json!("closed"), &json!(3), &json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_fails_its_probation_is_rolled_back_by_the_host() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let hello = s.upload(&dev, art::HELLO).await;
    let hostile = s.upload(&dev, art::HOSTILE).await;
    s.deploy(&dev, "a", &hello, json!({})).await;
    assert_eq!(s.invoke_ok(&dev, "a", "trap").await, "Hello, trap!");

    let bad =
        json!({ "module": hostile, "probation": { "window_ms": 600_000, "failure_ratio": 0.5, "min_invocations": 3 } });
    let r = s.req(Method::POST, "/v1/agents/a/upgrade", &dev).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!((&v["module"], &v["previous_module"]), (&json!(hostile), &json!(hello)));
    assert!(v["probation"]["until_ms"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["probation_progress"], json!({ "invocations": 0, "failures": 0 }));

    // A probation that makes no sense is refused.
    let wrong = json!({ "module": hostile, "probation": { "window_ms": 1000, "failure_ratio": 1.5 } });
    let r = s.req(Method::POST, "/v1/agents/a/upgrade", &dev).json(&wrong).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    for _ in 0..3 {
        assert_eq!(s.invoke(&dev, "a", "trap").await.0, StatusCode::BAD_GATEWAY);
    }
    let v = until("the host to roll back", || async {
        let v = view(&s, &dev, "a").await;
        (v["module"] == hello.as_str()).then_some(v)
    })
    .await;
    let note = &v["rolled_back"];
    assert_eq!((&note["from_module"], &note["to_module"]), (&json!(hostile), &json!(hello)), "{v}");
    assert!(note["reason"].as_str().unwrap().contains("3 of 3 invocations failed"), "{note}");
    assert!(v.get("probation").is_none(), "{v}");
    assert_eq!(s.invoke_ok(&dev, "a", "trap").await, "Hello, trap!", "the previous module runs again");

    let events = host_audit(&s, "rollback", 1).await;
    assert_eq!(events[0]["target"], "/v1/agents/a");
    assert!(events[0]["detail"].as_str().unwrap().contains("probation failed"), "{}", events[0]);
    // A later upgrade clears the note.
    let r = s.req(Method::POST, "/v1/agents/a/upgrade", &dev).json(&json!({ "module": hostile })).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v.get("rolled_back").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_supervision_policy_is_refused_at_deploy() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let m = s.upload(&dev, art::HOSTILE).await;
    for (policy, says) in [
        (json!({ "window": 65 }), "supervision.window"),
        (json!({ "failure_ratio": 0.0 }), "supervision.failure_ratio"),
        (json!({ "open_ms": 10_000, "max_open_ms": 1_000 }), "supervision.open_ms"),
    ] {
        let body = json!({ "name": "h", "module": m, "supervision": policy });
        let r = s.req(Method::POST, "/v1/agents", &dev).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{policy}");
        let b: Value = r.json().await.unwrap();
        assert!(b["detail"].as_str().unwrap().contains(says), "{b}");
    }
}
