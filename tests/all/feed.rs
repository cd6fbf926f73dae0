//! The change-feed dispatcher over the real HTTP API: agents deployed with watches get
//! every watched write through `on-change`, in feed order, at least once, also across a
//! restart; failed batches become dead letters that can be replayed or discarded; a
//! tenant never sees another tenant's writes.

use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Server, answer};

/// One entry of the watcher plugin's log: feed position, `collection/key`, revision, delete.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    seq: u64,
    doc: String,
    rev: u64,
    del: bool,
}

fn parse(entry: &str) -> Seen {
    let (seq, rest) = entry.split_once(':').unwrap();
    let (rest, del) = match rest.strip_suffix(":del") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (doc, rev) = rest.rsplit_once('@').unwrap();
    Seen { seq: seq.parse().unwrap(), doc: doc.to_owned(), rev: rev.parse().unwrap(), del }
}

async fn deploy_watcher(s: &Server, token: &str, name: &str, module: &str, config: Value, watches: Value) {
    let r = s
        .req(Method::POST, "/v1/agents", token)
        .json(&json!({ "name": name, "module": module, "config": config, "watches": watches }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "deploy {name}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["watches"].as_array().map(Vec::len), watches.as_array().map(Vec::len), "{body}");
}

/// What the watcher `name` has recorded so far.
async fn seen(s: &Server, token: &str, name: &str) -> Vec<Seen> {
    let text = s.invoke_ok(token, name, "").await;
    let entries: Vec<String> = serde_json::from_str(&text).unwrap();
    entries.iter().map(|e| parse(e)).collect()
}

/// Poll (bounded) until `done` holds for what `name` has seen; returns it.
async fn seen_until(s: &Server, token: &str, name: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = seen(s, token, name).await;
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "watcher {name} did not get there in 30 s; it saw {now:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn docs(seen: &[Seen]) -> Vec<(String, u64, bool)> {
    seen.iter().map(|e| (e.doc.clone(), e.rev, e.del)).collect()
}

fn expect(list: &[(&str, u64, bool)]) -> Vec<(String, u64, bool)> {
    list.iter().map(|(d, r, del)| ((*d).to_owned(), *r, *del)).collect()
}

fn strictly_increasing(seen: &[Seen]) -> bool {
    seen.windows(2).all(|w| w[0].seq < w[1].seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_get_every_watched_write_in_order_without_gaps() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    let watcher = s.upload(&dev, art::WATCHER).await;
    s.deploy(&dev, "writer", &kv, json!({})).await;
    // Written before the watchers exist: they start at the feed head of their deploy.
    s.invoke_ok(&dev, "writer", r#"put:orders/early={"n":0}"#).await;
    deploy_watcher(&s, &dev, "all", &watcher, json!({}), json!([{ "collection": "orders", "prefix": "" }])).await;
    deploy_watcher(&s, &dev, "eu", &watcher, json!({}), json!([{ "collection": "orders", "prefix": "eu/" }])).await;
    assert!(s.state.agents.is_watching("acme", "all"));

    let mut want = Vec::new();
    for round in 1..=3u64 {
        for k in ["o1", "o2", "eu/o3"] {
            assert_eq!(
                s.invoke_ok(&dev, "writer", &format!(r#"put:orders/{k}={{"n":{round}}}"#)).await,
                round.to_string()
            );
            want.push((format!("orders/{k}"), round, false));
        }
        // Not watched: another collection.
        s.invoke_ok(&dev, "writer", &format!(r#"put:customers/c1={{"n":{round}}}"#)).await;
    }
    assert_eq!(s.invoke_ok(&dev, "writer", "del:orders/o1").await, "true");
    want.push(("orders/o1".into(), 3, true));
    // A transaction: both writes, in op order.
    s.invoke_ok(
        &dev,
        "writer",
        r#"tx:[{"op":"put","c":"orders","k":"o9","v":{"n":1}},{"op":"put","c":"orders","k":"eu/o9","v":{"n":2}}]"#,
    )
    .await;
    want.push(("orders/o9".into(), 1, false));
    want.push(("orders/eu/o9".into(), 1, false));

    let all = seen_until(&s, &dev, "all", |v| v.len() >= want.len()).await;
    // Exactly the watched writes, in write order, each once: no gap, no reordering.
    assert_eq!(docs(&all), want, "{all:?}");
    assert!(strictly_increasing(&all), "{all:?}");
    let eu_want: Vec<_> = want.iter().filter(|(d, ..)| d.starts_with("orders/eu/")).cloned().collect();
    let eu = seen_until(&s, &dev, "eu", |v| v.len() >= eu_want.len()).await;
    assert_eq!(docs(&eu), eu_want, "{eu:?}");
    // Both saw the same feed positions for the same writes.
    for e in &eu {
        assert!(all.contains(e), "{e:?} not in {all:?}");
    }
    // No failures, so no dead letters; the deliveries are counted as invocations.
    assert_eq!(s.get_json(&dev, "/v1/agents/all/deadletters").await, json!([]));
    let a = s.get_json(&dev, "/v1/agents/all").await;
    assert_eq!(a["failures"], 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_a_restart_without_skipping() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    let watcher = s.upload(&dev, art::WATCHER).await;
    s.deploy(&dev, "writer", &kv, json!({})).await;
    deploy_watcher(&s, &dev, "w", &watcher, json!({}), json!([{ "collection": "orders" }])).await;

    let mut want = Vec::new();
    for i in 0..10 {
        s.invoke_ok(&dev, "writer", &format!(r#"put:orders/k{}={{"i":{i}}}"#, i % 4)).await;
        want.push((format!("orders/k{}", i % 4), i / 4 + 1, false));
    }
    seen_until(&s, &dev, "w", |v| v.len() >= 4).await;
    // Mid-way: more writes, then every dispatcher is stopped as a crash would stop it
    // (a batch in flight is abandoned, its cursor not moved), then the server.
    for i in 10..16 {
        s.invoke_ok(&dev, "writer", &format!(r#"put:orders/k{}={{"i":{i}}}"#, i % 4)).await;
        want.push((format!("orders/k{}", i % 4), i / 4 + 1, false));
    }
    s.state.agents.halt_watchers().await;
    assert!(!s.state.agents.is_watching("acme", "w"));
    let dir = s.stop().await;

    let s = Server::start_in(dir, |_| {}).await;
    assert!(s.state.agents.is_watching("acme", "w"), "the watcher is restored with its agent");
    let dev = s.token(Some("acme"), Role::Developer);
    for i in 16..20 {
        s.invoke_ok(&dev, "writer", &format!(r#"put:orders/k{}={{"i":{i}}}"#, i % 4)).await;
        want.push((format!("orders/k{}", i % 4), i / 4 + 1, false));
    }
    let last = want.last().unwrap().clone();
    let all = seen_until(&s, &dev, "w", |v| docs(v).contains(&last)).await;

    // At least once: every write is there; in order: first deliveries follow the feed.
    let mut first = Vec::new();
    for e in &all {
        if !first.iter().any(|f: &Seen| f.seq == e.seq) {
            first.push(e.clone());
        }
    }
    assert_eq!(docs(&first), want, "{all:?}");
    assert!(strictly_increasing(&first), "{all:?}");
    // Duplicates only from the one batch that was in flight at the halt: the log rewinds
    // at most once, and what it repeats is a contiguous run of what came just before.
    let rewinds: Vec<usize> = (1..all.len()).filter(|&i| all[i].seq <= all[i - 1].seq).collect();
    assert!(rewinds.len() <= 1, "more than one redelivery: {all:?}");
    if let Some(&i) = rewinds.first() {
        let repeated = all[..i].iter().position(|e| e.seq == all[i].seq).expect("a rewind repeats a seen event");
        let n = i - repeated;
        assert_eq!(all[repeated..i], all[i..i + n], "the repeated batch is redelivered whole: {all:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_become_dead_letters_that_can_be_replayed_or_discarded() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let observer = s.token(Some("acme"), Role::Observer);
    let kv = s.upload(&dev, art::KV).await;
    let watcher = s.upload(&dev, art::WATCHER).await;
    s.deploy(&dev, "writer", &kv, json!({})).await;
    deploy_watcher(&s, &dev, "w", &watcher, json!({ "fail": "yes" }), json!([{ "collection": "orders" }])).await;

    s.invoke_ok(&dev, "writer", r#"put:orders/a={"n":1}"#).await;
    let letters = s.dead_letters_until(&dev, "w", 1).await;
    let first = letters[0].clone();
    assert_eq!(first["error_code"], "agent_error", "{first}");
    assert!(first["error"].as_str().unwrap().contains("told-to-fail"), "{first}");
    assert!(first["attempts"].as_u64().unwrap() >= 2, "retried before parking: {first}");
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{first}");
    assert_eq!((events[0]["collection"].as_str(), events[0]["key"].as_str()), (Some("orders"), Some("a")));
    assert_eq!(events[0]["op"], "put");
    let id = first["id"].as_str().unwrap().to_owned();
    let metrics = s.client.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"cortex_change_batches_total{result="dead_lettered",tenant="acme"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"cortex_change_batches_total{result="retried",tenant="acme"}"#), "{metrics}");
    // Observers may read dead letters but not replay them.
    assert_eq!(s.get_json(&observer, "/v1/agents/w/deadletters").await.as_array().unwrap().len(), 1);
    let replay = format!("/v1/agents/w/deadletters/{id}/replay");
    let r = answer(s.req(Method::POST, &replay, &observer).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // The cursor moved past the dead letter: the next write is a batch of its own.
    s.invoke_ok(&dev, "writer", r#"put:orders/b={"n":1}"#).await;
    let letters = s.dead_letters_until(&dev, "w", 2).await;
    let second = letters[1]["id"].as_str().unwrap().to_owned();
    assert_eq!(letters[1]["events"][0]["key"], "b");

    // A replay that fails again: 422 with the outcome, the dead letter stays.
    let r = answer(s.req(Method::POST, &replay, &dev).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "agent_error"), "{}", r.text);
    // The agent's own error as fields, like an invocation's problem.
    assert_eq!(r.body["agent_code"], "told-to-fail", "{}", r.text);
    assert_eq!(r.body["agent_message"], "refusing 1 events", "{}", r.text);
    let letters = s.dead_letters_until(&dev, "w", 2).await;
    assert!(letters[0]["attempts"].as_u64() > first["attempts"].as_u64(), "{letters:?}");

    // Fixed: replay delivers the batch and removes the dead letter.
    let r = s.req(Method::PUT, "/v1/agents/w/config", &dev).json(&json!({ "config": { "fail": "no" } })).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    // Two replays at once: the batch is delivered once, the other replay is told why not.
    let (one, two) =
        tokio::join!(async { answer(s.req(Method::POST, &replay, &dev).send().await.unwrap()).await }, async {
            answer(s.req(Method::POST, &replay, &dev).send().await.unwrap()).await
        },);
    let (won, lost) = if one.status == StatusCode::OK { (one, two) } else { (two, one) };
    assert_eq!(won.status, StatusCode::OK, "{}", won.text);
    assert_eq!(won.body["outcome"], "ok");
    assert!(
        [(StatusCode::CONFLICT, "replay_in_progress"), (StatusCode::NOT_FOUND, "not_found")]
            .contains(&(lost.status, lost.code.as_str())),
        "{} {}",
        lost.status,
        lost.text
    );
    let seen_now = seen(&s, &dev, "w").await;
    assert_eq!(docs(&seen_now), expect(&[("orders/a", 1, false)]));
    let r = answer(s.req(Method::POST, &replay, &dev).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "replayed once only");

    // New writes flow again.
    s.invoke_ok(&dev, "writer", r#"put:orders/c={"n":1}"#).await;
    let seen_now = seen_until(&s, &dev, "w", |v| v.len() >= 2).await;
    assert_eq!(docs(&seen_now), expect(&[("orders/a", 1, false), ("orders/c", 1, false)]));

    // Discard the other one.
    let r = s.req(Method::DELETE, &format!("/v1/agents/w/deadletters/{second}"), &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get_json(&dev, "/v1/agents/w/deadletters").await, json!([]));
    for bad in ["nothing-here", "..", "1-2"] {
        let r =
            answer(s.req(Method::POST, &format!("/v1/agents/w/deadletters/{bad}/replay"), &dev).send().await.unwrap())
                .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{bad}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_another_tenants_changes() {
    let s = Server::start().await;
    s.tenant("a").await;
    s.tenant("b").await;
    let dev_a = s.token(Some("a"), Role::Developer);
    let dev_b = s.token(Some("b"), Role::Developer);
    let (kv_a, w_a) = (s.upload(&dev_a, art::KV).await, s.upload(&dev_a, art::WATCHER).await);
    let (kv_b, w_b) = (s.upload(&dev_b, art::KV).await, s.upload(&dev_b, art::WATCHER).await);
    s.deploy(&dev_a, "writer", &kv_a, json!({})).await;
    s.deploy(&dev_b, "writer", &kv_b, json!({})).await;
    let watches = json!([{ "collection": "orders" }]);
    deploy_watcher(&s, &dev_a, "w", &w_a, json!({ "fail": "yes" }), watches.clone()).await;
    deploy_watcher(&s, &dev_b, "w", &w_b, json!({}), watches).await;

    // A dead letter in A, under the same agent name as B's watcher.
    s.invoke_ok(&dev_a, "writer", r#"put:orders/x={"i":0}"#).await;
    let a_letters = s.dead_letters_until(&dev_a, "w", 1).await;
    let r = s.req(Method::PUT, "/v1/agents/w/config", &dev_a).json(&json!({ "config": {} })).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);

    for i in 0..5 {
        s.invoke_ok(&dev_a, "writer", &format!(r#"put:orders/a{i}={{"i":{i}}}"#)).await;
    }
    s.invoke_ok(&dev_b, "writer", r#"put:orders/b0={"i":0}"#).await;
    let a = seen_until(&s, &dev_a, "w", |v| v.len() >= 5).await;
    let b = seen_until(&s, &dev_b, "w", |v| !v.is_empty()).await;
    let a_want: Vec<String> = (0..5).map(|i| format!("orders/a{i}")).collect();
    assert_eq!(a.iter().map(|e| e.doc.clone()).collect::<Vec<_>>(), a_want, "{a:?}");
    assert_eq!(docs(&b), expect(&[("orders/b0", 1, false)]));
    assert_eq!(b[0].seq, 1, "B's feed is B's own: {b:?}");

    // A's dead letters stay A's: B neither lists nor replays nor discards them, even
    // with their id and an agent of the same name.
    assert_eq!(s.get_json(&dev_b, "/v1/agents/w/deadletters").await, json!([]));
    let id = a_letters[0]["id"].as_str().unwrap();
    for (method, path) in [
        (Method::POST, format!("/v1/agents/w/deadletters/{id}/replay")),
        (Method::DELETE, format!("/v1/agents/w/deadletters/{id}")),
    ] {
        let r = answer(s.req(method, &path, &dev_b).send().await.unwrap()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    }
    assert_eq!(s.dead_letters_until(&dev_a, "w", 1).await, a_letters);
    assert_eq!(seen(&s, &dev_b, "w").await, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_validated_and_follow_the_agent_lifecycle() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let watcher = s.upload(&dev, art::WATCHER).await;
    let hello = s.upload(&dev, art::HELLO).await;
    for (module, watches) in [
        (&watcher, json!([{ "collection": "a/b" }])),
        (&watcher, json!([{ "collection": "" }])),
        (&watcher, json!([{ "collection": "orders", "prefix": "a b" }])),
        (&watcher, json!([{ "collection": "orders", "other": 1 }])),
        (&hello, json!([{ "collection": "orders" }])),
    ] {
        let r = s
            .req(Method::POST, "/v1/agents", &dev)
            .json(&json!({ "name": "w", "module": module, "watches": watches }))
            .send()
            .await
            .unwrap();
        let r = answer(r).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{watches}: {}", r.text);
    }
    assert_eq!(s.get_json(&dev, "/v1/agents").await, json!([]));

    deploy_watcher(&s, &dev, "w", &watcher, json!({}), json!([{ "collection": "orders", "prefix": "x/" }])).await;
    assert!(s.state.agents.is_watching("acme", "w"));
    // An upgrade to a module without on-change is refused while the agent watches.
    let r = answer(
        s.req(Method::POST, "/v1/agents/w/upgrade", &dev).json(&json!({ "module": hello })).send().await.unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = s.req(Method::POST, "/v1/agents/w/stop", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!s.state.agents.is_watching("acme", "w"));
    let r = s.req(Method::POST, "/v1/agents/w/start", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.state.agents.is_watching("acme", "w"));
    let r = s.req(Method::DELETE, "/v1/agents/w", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!s.state.agents.is_watching("acme", "w"));
    let r = answer(s.req(Method::GET, "/v1/agents/w/deadletters", &dev).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
