//! `/metrics`: invocations by tenant, agent and outcome, with bounded agent labels.

use cortex_artifacts as art;
use serde_json::json;

use crate::server::Server;

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
    let timed = value(r#"cortex_invocation_duration_seconds_count{tenant="acme"}"#);
    assert!(timed >= 3.0, "{timed} invocations timed");
    assert_eq!(value(r#"cortex_invocation_duration_seconds_bucket{tenant="acme",le="+Inf"}"#), timed);
    assert!(value(r#"cortex_invocation_duration_seconds_sum{tenant="acme"}"#) > 0.0);
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
