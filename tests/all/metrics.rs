//! `/metrics`: invocations by tenant, agent and outcome, with bounded agent labels; HTTP
//! requests by route template; the node's state as gauges; compiles and the artifact cache;
//! every documented family present from the start, in a valid exposition.

use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::registry::Quotas;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::exposition::{Exposition, check};
use crate::server::{Server, answer};

/// Scrape `s` and check the exposition.
async fn scrape(s: &Server) -> Exposition {
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    check(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"))
}

/// Scrape until `want` holds (generous deadline).
async fn scrape_until(s: &Server, what: &str, want: impl Fn(&Exposition) -> bool) -> Exposition {
    let start = Instant::now();
    loop {
        let e = scrape(s).await;
        if want(&e) {
            return e;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}; last scrape: {e:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each `(family, label)` has exactly one series with that label, at 0.
fn all_zero(e: &Exposition, series: &[(&str, (&str, &str))]) {
    for (name, label) in series {
        assert_eq!(e.value(name, &[*label]), Some(0.0), "{name}{label:?}");
    }
}

/// The families the README's metrics table documents.
fn documented() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let rows: Vec<(String, String)> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let kind = rest.split('|').nth(1)?.trim().to_owned();
            (name.starts_with("cortex_") || name.starts_with("process_")).then(|| (name.to_owned(), kind))
        })
        .collect();
    assert!(rows.len() > 20, "the README's metrics table: {rows:?}");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exposes_every_documented_family_in_a_valid_exposition() {
    let s = Server::start().await;
    let e = scrape(&s).await;
    let documented = documented();
    for (name, kind) in &documented {
        assert_eq!(e.types.get(name), Some(kind), "{name} ({kind}) before any traffic: {:?}", e.types);
    }
    for name in e.types.keys() {
        assert!(documented.iter().any(|(d, _)| d == name), "{name} is exposed but not in the README's table");
    }
    // Known label values are there at zero before a first event.
    all_zero(
        &e,
        &[
            ("cortex_artifact_cache_total", ("result", "hit")),
            ("cortex_artifact_cache_total", ("result", "miss")),
            ("cortex_traps_total", ("kind", "fuel_exhausted")),
            ("cortex_task_restarts_total", ("kind", "watcher")),
            ("cortex_http_requests_total", ("route", "/metrics")),
        ],
    );
    assert_eq!(e.value("cortex_module_compile_seconds_count", &[]), Some(0.0));
    // The build, and the process.
    let version = e.label_values("cortex_build_info", "version");
    assert_eq!(version, [env!("CARGO_PKG_VERSION").to_owned()].into(), "{e:?}");
    let commit = e.label_values("cortex_build_info", "git_commit").into_iter().next().unwrap();
    assert_eq!(commit, cortex_host::telemetry::GIT_COMMIT);
    if let Ok(out) = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output()
        && out.status.success()
    {
        assert_eq!(commit, String::from_utf8_lossy(&out.stdout).trim(), "the commit built from");
    }
    assert_eq!(e.value("cortex_build_info", &[]), Some(1.0));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = e.value("process_start_time_seconds", &[]).unwrap();
    assert!(started > now - 3600.0 && started <= now + 1.0, "started {started}, now {now}");
    assert!(e.value("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(e.value("process_open_fds", &[]).unwrap() >= 3.0);
    assert!(e.value("process_threads", &[]).unwrap() >= 2.0);

    // A tenant's series exist once it does; an agent's once it is deployed: then every
    // family has samples, before any invocation.
    let dev = s.developer_in("acme").await;
    let e = scrape(&s).await;
    all_zero(
        &e,
        &[
            ("cortex_rate_limited_total", ("reason", "module_quota")),
            ("cortex_change_batches_total", ("result", "dead_lettered")),
            ("cortex_messages_total", ("result", "sent")),
            ("cortex_modules", ("tenant", "acme")),
            ("cortex_dead_letters", ("tenant", "acme")),
        ],
    );
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "first", &hello, json!({})).await;
    let e = scrape(&s).await;
    for (name, kind) in &documented {
        // Labelled by configured OIDC issuers only (none here): see tests/all/oidc.rs.
        if name.starts_with("cortex_oidc_") {
            continue;
        }
        let sampled = |n: &str| e.samples.iter().any(|x| x.name == n);
        let has = if kind == "histogram" { sampled(&format!("{name}_count")) } else { sampled(name) };
        assert!(has, "{name} has no sample with a tenant and an agent");
    }
    let zero = [("tenant", "acme"), ("agent", "first"), ("outcome", "fuel_exhausted")];
    assert_eq!(e.value("cortex_invocations_total", &zero), Some(0.0));
    assert_eq!(e.value("cortex_agent_health", &[("agent", "first")]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_counted_by_route_template_and_status_on_both_lanes() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "first", &hello, json!({})).await;
    // Two invocations on the server's fast path, one through the router (a percent-encoded
    // name), one of an agent that does not exist.
    s.invoke_ok(&dev, "first", "a").await;
    s.invoke_ok(&dev, "first", "b").await;
    let r = s.req(Method::POST, "/v1/agents/%66irst/invoke", &dev).body("c").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.invoke(&dev, "nobody", "x").await.0, StatusCode::NOT_FOUND);
    s.get_json(&dev, "/v1/agents/first").await;
    for path in ["/no/such/path", "/v1/agents/first/nonsense"] {
        assert_eq!(s.req(Method::GET, path, &dev).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    let e = scrape(&s).await;
    let count = |method: &str, route: &str, status: &str| {
        e.value("cortex_http_requests_total", &[("method", method), ("route", route), ("status", status)])
    };
    assert_eq!(count("POST", "/v1/agents/{name}/invoke", "200"), Some(3.0), "{e:?}");
    assert_eq!(count("POST", "/v1/agents/{name}/invoke", "404"), Some(1.0));
    assert_eq!(count("GET", "/v1/agents/{name}", "200"), Some(1.0));
    assert_eq!(count("GET", "unmatched", "404"), Some(2.0));
    assert_eq!(count("POST", "/v1/agents", "201"), Some(1.0));
    let timed = e.value(
        "cortex_http_request_duration_seconds_count",
        &[("method", "POST"), ("route", "/v1/agents/{name}/invoke")],
    );
    assert_eq!(timed, Some(4.0));
    // Routes are templates only: no path the client sent is a label.
    let routes = e.label_values("cortex_http_requests_total", "route");
    assert!(routes.iter().all(|r| r == "unmatched" || !r.contains("first") && !r.contains("nobody")), "{routes:?}");
}

/// A request the server answers in its route's place (cut at `http.request_timeout_ms`)
/// keeps the route's template as its label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_its_deadline_keeps_its_route_label() {
    // The tenant is made first, without the short timeout.
    let s = Server::start().await;
    let dev = s.developer_in("t").await;
    let s = Server::start_in(s.stop().await, |c| c.http.request_timeout_ms = 400).await;
    // Ten bytes of a module announced, none sent.
    let resp = s.unsent_body("POST /v1/modules", &dev).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    let e = scrape(&s).await;
    let labels = [("method", "POST"), ("route", "/v1/modules"), ("status", "408")];
    assert_eq!(e.value("cortex_http_requests_total", &labels), Some(1.0), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_pools_mailboxes_agents_and_modules() {
    let s = Server::start().await;
    let roomy =
        Quotas { invocations_per_second: 100_000, burst: 100_000, concurrent_invocations: 1000, ..Quotas::default() };
    s.tenant_with("t", Some(roomy)).await;
    let dev = s.token(Some("t"), Role::Developer);
    let hostile = s.upload(&dev, art::HOSTILE).await;
    let messenger = s.upload(&dev, art::MESSENGER).await;
    let limits = json!({ "timeout_ms": 60_000 });
    let spec = json!({ "max_concurrency": 1, "queue": 2, "queue_timeout_ms": 60_000, "limits": limits });
    s.deploy_with(&dev, "q", &hostile, spec).await;
    s.deploy(&dev, "a", &messenger, json!({})).await;
    s.deploy(&dev, "b", &messenger, json!({})).await;
    let gauge = |e: &Exposition, name: &str| e.value(name, &[("tenant", "t")]);
    let e = scrape(&s).await;
    assert_eq!(gauge(&e, "cortex_agents"), Some(3.0));
    assert_eq!(gauge(&e, "cortex_modules"), Some(2.0));
    assert_eq!(gauge(&e, "cortex_invocations_running"), Some(0.0));
    assert_eq!(gauge(&e, "cortex_invocations_queued"), Some(0.0));

    // One invocation holds the agent's only slot; the next waits in its queue.
    let invoke = |input: &str| {
        let rb = s.req(Method::POST, "/v1/agents/q/invoke", &dev).body(input.to_owned());
        tokio::spawn(async move { answer(rb.send().await.unwrap()).await })
    };
    let blocker = invoke("sleep:5000");
    scrape_until(&s, "one running", |e| gauge(e, "cortex_invocations_running") == Some(1.0)).await;
    let queued = invoke("echo:waited");
    scrape_until(&s, "one queued", |e| {
        gauge(e, "cortex_invocations_queued") == Some(1.0) && gauge(e, "cortex_invocations_running") == Some(1.0)
    })
    .await;
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued.await.unwrap().text, "waited");
    scrape_until(&s, "nothing running or queued", |e| {
        gauge(e, "cortex_invocations_queued") == Some(0.0) && gauge(e, "cortex_invocations_running") == Some(0.0)
    })
    .await;

    // Messages to a stopped agent wait in its mailbox.
    assert_eq!(s.req(Method::POST, "/v1/agents/b/stop", &dev).send().await.unwrap().status(), 200);
    for i in 0..2 {
        assert_eq!(s.invoke_ok(&dev, "a", &format!("send:b:m{i}")).await, "sent");
    }
    scrape_until(&s, "two messages waiting", |e| gauge(e, "cortex_mailbox_depth") == Some(2.0)).await;

    // Deleting an agent and a module moves their gauges.
    assert_eq!(s.req(Method::DELETE, "/v1/agents/q", &dev).send().await.unwrap().status(), 204);
    assert_eq!(s.req(Method::DELETE, &format!("/v1/modules/{hostile}"), &dev).send().await.unwrap().status(), 204);
    let e = scrape(&s).await;
    assert_eq!(gauge(&e, "cortex_agents"), Some(2.0));
    assert_eq!(gauge(&e, "cortex_modules"), Some(1.0));

    // Counted from the store at start.
    let dir = s.stop().await;
    let s = Server::start_in(dir, |_| {}).await;
    let e = scrape(&s).await;
    assert_eq!(gauge(&e, "cortex_modules"), Some(1.0));
    assert_eq!(gauge(&e, "cortex_agents"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lag_and_dead_letters_follow_the_feed() {
    let s = Server::start().await;
    // One invocation a second: the watcher's deliveries wait for tokens, so it lags.
    let slow = Quotas { invocations_per_second: 1, burst: 1, ..Quotas::default() };
    s.tenant_with("acme", Some(slow)).await;
    let dev = s.token(Some("acme"), Role::Developer);
    let kv = s.upload(&dev, art::KV).await;
    let watcher = s.upload(&dev, art::WATCHER).await;
    s.deploy(&dev, "writer", &kv, json!({})).await;
    let spec = json!({ "config": { "fail": "yes" }, "watches": [{ "collection": "orders" }] });
    s.deploy_with(&dev, "w", &watcher, spec).await;
    let gauge = |e: &Exposition, name: &str| e.value(name, &[("tenant", "acme")]);
    scrape_until(&s, "the watcher reads its cursor", |e| gauge(e, "cortex_watcher_lag_events") == Some(0.0)).await;
    assert_eq!(gauge(&scrape(&s).await, "cortex_dead_letters"), Some(0.0), "none yet");

    s.invoke_ok(&dev, "writer", r#"put:orders/a={"n":1}"#).await;
    scrape_until(&s, "the watcher lags", |e| gauge(e, "cortex_watcher_lag_events") == Some(1.0)).await;
    // Its retries fail: the batch becomes a dead letter and the cursor moves past it.
    let letters = s.dead_letters_until(&dev, "w", 1).await;
    scrape_until(&s, "a dead letter, no lag", |e| {
        gauge(e, "cortex_dead_letters") == Some(1.0) && gauge(e, "cortex_watcher_lag_events") == Some(0.0)
    })
    .await;
    let id = letters[0]["id"].as_str().unwrap();
    let r = s.req(Method::DELETE, &format!("/v1/agents/w/deadletters/{id}"), &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(gauge(&scrape(&s).await, "cortex_dead_letters"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiles_are_timed_and_the_artifact_cache_counts_its_hits() {
    let s = Server::start().await;
    let a = s.developer_in("a").await;
    let b = s.developer_in("b").await;
    let cache = |e: &Exposition, result: &str| e.value("cortex_artifact_cache_total", &[("result", result)]);
    let hello = s.upload(&a, art::HELLO).await;
    let e = scrape(&s).await;
    assert_eq!((cache(&e, "miss"), cache(&e, "hit")), (Some(1.0), Some(0.0)));
    assert_eq!(e.value("cortex_module_compile_seconds_count", &[]), Some(1.0));
    assert!(e.value("cortex_module_compile_seconds_sum", &[]).unwrap() > 0.0);
    // The same component in another tenant: compiled once, taken from the cache.
    assert_eq!(s.upload(&b, art::HELLO).await, hello);
    let e = scrape(&s).await;
    assert_eq!((cache(&e, "miss"), cache(&e, "hit")), (Some(1.0), Some(1.0)));
    assert_eq!(e.value("cortex_module_compile_seconds_count", &[]), Some(1.0));
    // A restart loads the deployed agent's module from the cache.
    s.deploy(&a, "h", &hello, json!({})).await;
    let dir = s.stop().await;
    let s = Server::start_in(dir, |_| {}).await;
    let e = scrape(&s).await;
    assert_eq!((cache(&e, "miss"), cache(&e, "hit")), (Some(0.0), Some(1.0)));
    assert_eq!(e.value("cortex_module_compile_seconds_count", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_are_counted_by_outcome_and_extra_agents_fold_into_other() {
    let s = Server::start_with(|c| c.metrics.max_agent_labels = 1).await;
    let dev = s.developer_in("acme").await;
    let hello = s.upload(&dev, art::HELLO).await;
    let hostile = s.upload(&dev, art::HOSTILE).await;
    s.deploy(&dev, "first", &hello, json!({})).await;
    s.deploy(&dev, "second", &hostile, json!({})).await;
    s.invoke_ok(&dev, "first", "a").await;
    s.invoke_ok(&dev, "first", "b").await;
    let (status, _) = s.invoke(&dev, "second", "trap").await;
    assert_eq!(status, 502);
    let text = s.client.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"cortex_invocations_total{agent="first",outcome="ok",tenant="acme"} 2"#), "{text}");
    assert!(text.contains(r#"cortex_invocations_total{agent="other",outcome="trap",tenant="acme"} 1"#), "{text}");
    assert!(text.contains(r#"cortex_traps_total{kind="unreachable"} 1"#), "{text}");
    assert!(text.contains("cortex_store_operation_seconds_count"), "store latency is exported");
    assert!(!text.contains(r#"agent="second""#), "the label set is bounded");
    // Every invocation is timed and its peak memory recorded, buckets consistent with counts.
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Timed per agent, the agent label capped like the counters'.
    let timed = value(r#"cortex_invocation_duration_seconds_count{agent="first",tenant="acme"}"#);
    assert_eq!(timed, 2.0, "the first agent's invocations timed");
    assert_eq!(value(r#"cortex_invocation_duration_seconds_bucket{agent="first",tenant="acme",le="+Inf"}"#), timed);
    assert!(value(r#"cortex_invocation_duration_seconds_sum{agent="first",tenant="acme"}"#) > 0.0);
    assert_eq!(value(r#"cortex_invocation_duration_seconds_count{agent="other",tenant="acme"}"#), 1.0);
    let measured = value("cortex_invocation_peak_memory_bytes_count");
    assert!(measured >= 3.0, "{measured} invocations measured");
    assert!(value("cortex_invocation_peak_memory_bytes_sum") >= 3.0 * 65536.0, "a component has at least a page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_bearer_token() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("metrics.token");
    std::fs::write(&file, "scrape-me-0123456789abcdef\n").unwrap();
    let s = Server::start_with(|c| c.metrics.token_file = Some(file.clone())).await;
    let get = |token: Option<&str>| {
        let mut rb = s.client.get(s.url("/metrics"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    for (what, token) in [
        ("no token", None),
        ("wrong token", Some("scrape-me-0123456789abcdeX")),
        ("a platform-admin JWT", Some(s.admin().as_str())),
    ] {
        let r = crate::server::answer(get(token).await.unwrap()).await;
        assert_eq!((r.status.as_u16(), r.code.as_str()), (401, "unauthorized"), "{what}: {}", r.text);
        assert_eq!(r.content_type, "application/problem+json");
        assert!(!r.text.contains("cortex_"), "{what}: {}", r.text);
    }
    let r = get(Some("scrape-me-0123456789abcdef")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("cortex_"));
    // Health and readiness stay open.
    assert_eq!(s.client.get(s.url("/healthz")).send().await.unwrap().status(), 200);

    // A token file that cannot be read stops the server from starting.
    let dir = crate::server::data_dir();
    let mut cfg = crate::server::config(dir.path());
    cfg.metrics.token_file = Some(secrets.path().join("missing"));
    assert!(cortex_host::server::build(cfg).await.is_err());
}
