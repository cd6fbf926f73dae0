//! Agent logs: structured fields, the host's lines about failures, the SSE follow stream,
//! and the log kept in the store across a restart, bounded, deleted with its agent.

use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::store::RecordKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Server, answer};

/// The agent's log lines (at most 1000).
async fn lines(s: &Server, token: &str, agent: &str) -> Vec<Value> {
    s.get_json(token, &format!("/v1/agents/{agent}/logs?limit=1000")).await.as_array().unwrap().clone()
}

/// The agent's log once a line matches `pred` (bounded wait).
async fn line_where(s: &Server, token: &str, agent: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = lines(s, token, agent).await;
        if let Some(l) = all.iter().find(|l| pred(l)) {
            return l.clone();
        }
        assert!(Instant::now() < deadline, "no such line in the log of {agent}: {all:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Invoke and return the status and the invocation id of the response.
async fn invoke_id(s: &Server, token: &str, agent: &str, input: &str) -> (StatusCode, String) {
    let r =
        s.req(Method::POST, &format!("/v1/agents/{agent}/invoke"), token).body(input.to_owned()).send().await.unwrap();
    let id = r.headers()["x-cortex-invocation"].to_str().unwrap().to_owned();
    (r.status(), id)
}

/// The stored log records of `tenant/agent`: how many lines and bytes of JSON.
async fn stored(s: &Server, tenant: &str, agent: &str) -> (usize, usize) {
    let records =
        s.state.registry.store().record_list(RecordKind::AgentLog, &format!("{tenant}/{agent}/")).await.unwrap();
    let lines: usize = records.iter().map(|(_, v)| serde_json::from_slice::<Vec<Value>>(v).unwrap().len()).sum();
    (lines, records.iter().map(|(_, v)| v.len()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_keep_their_fields_and_each_failure_leaves_a_host_line() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "kv", &kv, json!({})).await;
    let hostile = s.upload(&dev, art::HOSTILE).await;
    s.deploy(&dev, "hostile", &hostile, json!({})).await;

    // A JSON line on stdout: level and message taken out, the other keys kept as fields.
    let (status, said) = invoke_id(&s, &dev, "kv", r#"say:{"level":"WARN","msg":"slow order","order":42}"#).await;
    assert_eq!(status, StatusCode::OK);
    // A runtime.log record: its fields as fields, not folded into the message.
    s.invoke_ok(&dev, "kv", "log:paid").await;
    let all = lines(&s, &dev, "kv").await;
    let json_line = all.iter().find(|l| l["message"] == "slow order").unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(
        (&json_line["stream"], &json_line["level"], &json_line["fields"], &json_line["invocation"]),
        (&json!("stdout"), &json!("warn"), &json!({"order": 42}), &json!(said)),
        "{json_line}"
    );
    assert!(json_line["time_ms"].as_u64().unwrap() > 0 && json_line["seq"].as_u64().unwrap() > 0);
    let record = all.iter().find(|l| l["message"] == "paid").unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!((&record["stream"], &record["fields"]), (&json!("log"), &json!({"source": "kv"})), "{record}");

    // An agent error: one host line at level error with the invocation, the codes, the message.
    let (status, failed) = invoke_id(&s, &dev, "kv", "fail:5").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let host = line_where(&s, &dev, "kv", |l| l["invocation"] == failed.as_str()).await;
    assert_eq!((&host["stream"], &host["level"]), (&json!("host"), &json!("error")), "{host}");
    let f = &host["fields"];
    assert_eq!(
        (&f["code"], &f["agent_code"], &f["agent_message"], &f["export"]),
        (&json!("agent_error"), &json!("big-error"), &json!("mmmmm"), &json!("handle"))
    );
    assert!(host["message"].as_str().unwrap().contains("handle failed: agent_error: big-error"), "{host}");
    // A success leaves no host line.
    assert!(lines(&s, &dev, "kv").await.iter().filter(|l| l["stream"] == "host").count() == 1);

    // A trap and a deadline: each its host line with its code.
    let (status, trapped) = invoke_id(&s, &dev, "hostile", "trap").await;
    assert!(status.is_client_error() || status.is_server_error());
    let host = line_where(&s, &dev, "hostile", |l| l["invocation"] == trapped.as_str()).await;
    assert_eq!(
        (&host["level"], &host["fields"]["code"], &host["fields"]["kind"]),
        (&json!("error"), &json!("trap"), &json!("unreachable"))
    );
    s.deploy_with(&dev, "slow", &hostile, json!({"limits": {"timeout_ms": 100}})).await;
    let (_, late) = invoke_id(&s, &dev, "slow", "loop").await;
    let host = line_where(&s, &dev, "slow", |l| l["invocation"] == late.as_str()).await;
    assert_eq!((&host["fields"]["code"], &host["fields"]["limit_ms"]), (&json!("deadline_exceeded"), &json!(100)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_on_change_batch_leaves_a_host_line() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "kv", &kv, json!({})).await;
    let watcher = s.upload(&dev, art::WATCHER).await;
    let spec = json!({"config": {"fail": "yes"}, "watches": [{"collection": "orders"}]});
    s.deploy_with(&dev, "w", &watcher, spec).await;
    s.invoke_ok(&dev, "kv", r#"put:orders/o1={"n":1}"#).await;
    let host = line_where(&s, &dev, "w", |l| l["stream"] == "host").await;
    assert_eq!(host["level"], "error");
    let f = &host["fields"];
    assert_eq!(
        (&f["export"], &f["code"], &f["agent_code"]),
        (&json!("on-change"), &json!("agent_error"), &json!("told-to-fail"))
    );
    assert_eq!((&f["events"], &f["first_change"], &f["last_change"]), (&json!(1), &json!(1), &json!(1)), "{host}");
    assert!(host["message"].as_str().unwrap().starts_with("on-change batch of 1 events failed"), "{host}");
    assert!(host["invocation"].as_str().is_some_and(|i| !i.is_empty()));
}

/// Read a stream until `done(body)` holds (bounded, not timed).
async fn read_until(r: &mut reqwest::Response, body: &mut String, done: impl Fn(&str) -> bool) -> bool {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done(body) {
            match r.chunk().await.unwrap() {
                Some(chunk) => body.push_str(&String::from_utf8_lossy(&chunk)),
                None => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

/// `(id, data)` of each event of an SSE body.
fn events(body: &str) -> Vec<(Option<u64>, String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty() && !e.trim_start().starts_with(':'))
        .map(|e| {
            let field = |name: &str| {
                e.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
            };
            let data = field("data").map_or(Value::Null, |d| serde_json::from_str(&d).unwrap());
            (field("id").and_then(|i| i.parse().ok()), field("event").unwrap_or_default(), data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stream_follows_resumes_and_stays_within_the_tenant() {
    // A short header timeout: the stream must outlive it.
    let s = Server::start_with(|c| c.http.header_timeout_ms = 200).await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "kv", &kv, json!({})).await;
    s.invoke_ok(&dev, "kv", "say:before").await;

    // Follow: the line written before is replayed, one written after subscribing arrives.
    let observer = s.token(Some("acme"), Role::Observer);
    let mut r = s.req(Method::GET, "/v1/agents/kv/logs/stream", &observer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = String::new();
    assert!(read_until(&mut r, &mut body, |b| b.contains("before")).await, "{body}");
    let (_, after) = invoke_id(&s, &dev, "kv", "say:after").await;
    assert!(read_until(&mut r, &mut body, |b| b.contains("\"after\"")).await, "{body}");
    let got = events(&body);
    let logs: Vec<_> = got.iter().filter(|e| e.1 == "log").collect();
    assert_eq!(logs.len(), 2, "{body}");
    assert_eq!(
        (logs[1].2["message"].as_str(), logs[1].2["invocation"].as_str()),
        (Some("after"), Some(after.as_str()))
    );
    for (id, _, data) in &logs {
        assert_eq!(*id, data["seq"].as_u64(), "each event's id is its line's number: {body}");
    }
    let first = logs[0].0.unwrap();

    // Resume: after `since`, or after a Last-Event-ID (which wins over `since`).
    let path = format!("/v1/agents/kv/logs/stream?follow=false&since={first}");
    let body = s.req(Method::GET, &path, &dev).send().await.unwrap().text().await.unwrap();
    let msgs: Vec<Value> = events(&body).into_iter().map(|e| e.2["message"].clone()).collect();
    assert_eq!(msgs, [json!("after")], "{body}");
    let r = s
        .req(Method::GET, "/v1/agents/kv/logs/stream?follow=false&since=0", &dev)
        .header("last-event-id", first.to_string())
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(events(&body).len(), 1, "{body}");
    let r = answer(
        s.req(Method::GET, "/v1/agents/kv/logs/stream", &dev).header("last-event-id", "x").send().await.unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{}", r.text);

    // Or the last lines: `tail`, on the list and the stream.
    let last = s.get_json(&dev, "/v1/agents/kv/logs?tail=1").await;
    assert_eq!(last.as_array().unwrap().iter().map(|l| l["message"].clone()).collect::<Vec<_>>(), [json!("after")]);
    let body = s.req(Method::GET, "/v1/agents/kv/logs/stream?follow=false&tail=1", &dev).send().await.unwrap();
    let body = body.text().await.unwrap();
    assert_eq!(events(&body).into_iter().map(|e| e.2["message"].clone()).collect::<Vec<_>>(), [json!("after")]);
    // Both: the last `tail` lines after `since`.
    let last_seq = last[0]["seq"].as_u64().unwrap();
    let both = s.get_json(&dev, "/v1/agents/kv/logs?tail=1&since=1").await;
    assert_eq!(both.as_array().unwrap().iter().map(|l| l["message"].clone()).collect::<Vec<_>>(), [json!("after")]);
    let none = s.get_json(&dev, &format!("/v1/agents/kv/logs?tail=100&since={last_seq}")).await;
    assert_eq!(none, json!([]), "nothing after the last line, however many asked for");

    // Another tenant cannot read it: 404, as every agent route; no token: 401.
    let other = s.developer_in("other").await;
    let r = answer(s.req(Method::GET, "/v1/agents/kv/logs/stream", &other).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    let r = s.client.get(s.url("/v1/agents/kv/logs/stream")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Deleting the agent ends a following stream with an `end` event.
    let mut r = s.req(Method::GET, &format!("/v1/agents/kv/logs/stream?since={first}"), &dev).send().await.unwrap();
    let mut body = String::new();
    assert!(read_until(&mut r, &mut body, |b| b.contains("\"after\"")).await, "{body}");
    let r2 = s.req(Method::DELETE, "/v1/agents/kv", &dev).send().await.unwrap();
    assert_eq!(r2.status(), StatusCode::NO_CONTENT);
    assert!(read_until(&mut r, &mut body, |b| b.contains("agent_deleted")).await, "{body}");
    let end = events(&body).into_iter().find(|e| e.1 == "end").unwrap();
    assert_eq!((&end.2["code"], &end.2["status"]), (&json!("agent_deleted"), &json!(404)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_survive_a_restart_and_go_with_their_agent() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "kv", &kv, json!({})).await;
    s.deploy(&dev, "gone", &kv, json!({})).await;
    s.invoke_ok(&dev, "kv", r#"say:{"msg":"kept","n":1}"#).await;
    let (_, failed) = invoke_id(&s, &dev, "kv", "fail:3").await;
    s.invoke_ok(&dev, "gone", "say:doomed").await;
    let before = lines(&s, &dev, "kv").await;
    assert_eq!(before.len(), 2, "{before:?}");
    // Deleted: its log goes, and a namesake starts with an empty one.
    assert_eq!(s.req(Method::DELETE, "/v1/agents/gone", &dev).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(stored(&s, "acme", "gone").await.0, 0);
    s.deploy(&dev, "gone", &kv, json!({})).await;
    assert_eq!(lines(&s, &dev, "gone").await, Vec::<Value>::new());

    // A clean shutdown right after the invocations: nothing is lost.
    let dir = s.stop().await;
    let s = Server::start_in(dir, |_| {}).await;
    let dev = s.token(Some("acme"), Role::Developer);
    let after = lines(&s, &dev, "kv").await;
    assert_eq!(after, before, "the same lines, numbers, times, invocations and fields");
    assert!(after.iter().any(|l| l["invocation"] == failed.as_str() && l["stream"] == "host"));
    assert_eq!(lines(&s, &dev, "gone").await, Vec::<Value>::new());
    // Numbering goes on after the kept lines.
    s.invoke_ok(&dev, "kv", "say:next").await;
    let now = lines(&s, &dev, "kv").await;
    assert_eq!(now.last().unwrap()["seq"].as_u64(), Some(before.last().unwrap()["seq"].as_u64().unwrap() + 1));

    // The tenant's deletion deletes every stored log of it.
    let r = s.req(Method::DELETE, "/v1/tenants/acme", &s.admin()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let left = s.state.registry.store().record_list(RecordKind::AgentLog, "acme/").await.unwrap();
    assert!(left.is_empty(), "{} log records left", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_log_is_bounded_in_lines_and_bytes() {
    let s = Server::start_with(|c| {
        c.http.log_ring_lines = 5;
        c.http.log_ring_bytes = 1 << 20;
    })
    .await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "kv", &kv, json!({})).await;
    for i in 0..30 {
        s.invoke_ok(&dev, "kv", &format!("say:line {i}")).await;
    }
    let shown: Vec<Value> = lines(&s, &dev, "kv").await.iter().map(|l| l["message"].clone()).collect();
    assert_eq!(shown, (25..30).map(|i| json!(format!("line {i}"))).collect::<Vec<_>>());
    let dir = s.stop().await;

    // Lines: the kept log holds the ring's lines and at most one older chunk's worth.
    let s = Server::start_in(dir, |c| {
        c.http.log_ring_lines = 5;
        c.http.log_ring_bytes = 1 << 20;
    })
    .await;
    let dev = s.token(Some("acme"), Role::Developer);
    let kept: Vec<Value> = lines(&s, &dev, "kv").await.iter().map(|l| l["message"].clone()).collect();
    assert_eq!(kept, shown);
    let (n, _) = stored(&s, "acme", "kv").await;
    assert!((5..=10).contains(&n), "{n} lines stored for a ring of 5");
    let dir = s.stop().await;

    // Bytes: lines of 2 KiB in a ring of 16 KiB.
    let s = Server::start_in(dir, |c| {
        c.http.log_ring_lines = 1000;
        c.http.log_ring_bytes = 16 << 10;
    })
    .await;
    let dev = s.token(Some("acme"), Role::Developer);
    let big = "b".repeat(2048);
    for _ in 0..40 {
        s.invoke_ok(&dev, "kv", &format!("say:{big}")).await;
    }
    let shown = lines(&s, &dev, "kv").await;
    assert!(shown.len() < 8, "{} lines of 2 KiB in 16 KiB", shown.len());
    // The writer stores behind the ring: wait (bounded) until it caught up.
    let last = shown.last().unwrap()["seq"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = s.state.registry.store().record_list(RecordKind::AgentLog, "acme/kv/").await.unwrap();
        let seqs: Vec<u64> = records
            .iter()
            .flat_map(|(_, v)| serde_json::from_slice::<Vec<Value>>(v).unwrap())
            .map(|l| l["seq"].as_u64().unwrap())
            .collect();
        if seqs.last() == Some(&last) {
            let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
            assert!(bytes <= 2 * (16 << 10) + 4096, "{bytes} bytes stored for a ring of 16 KiB");
            break;
        }
        assert!(Instant::now() < deadline, "the log was not stored: {seqs:?}, last {last}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
