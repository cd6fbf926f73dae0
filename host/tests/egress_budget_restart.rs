//! The daily token budget of egress is kept in the store: a node that starts again on the
//! same data still refuses the metered requests of a tenant whose budget it spent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/serve.rs"]
mod serve;

use std::time::Duration;

use axum::response::IntoResponse;
use cortex_artifacts as art;
use cortex_host::registry::Quotas;
use reqwest::Client;
use serde_json::{Value, json};
use serve::{Options, Serve};

/// A loopback server answering every request with an OpenAI-shaped completion of 30 + 40
/// tokens.
async fn model() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Hello" } }],
            "usage": { "prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70 },
        }))
        .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn chat(c: &Client, s: &Serve, tok: &str, url: &str) -> Value {
    let input = json!({ "method": "POST", "url": url, "body": "{}" }).to_string();
    let r = c.post(s.url("/v1/agents/c/invoke")).bearer_auth(tok).body(input).send().await.unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_token_budget_stays_spent_after_a_restart() {
    let addr = model().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opts = Options {
        env: vec![("CORTEX_CFG__EGRESS__ALLOW_PRIVATE".into(), r#"["127.0.0.1/32"]"#.into())],
        ..Options::default()
    };
    let c = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut s = Serve::start_with(&data, &opts);
    s.ready().await;
    let admin = s.token(None, "platform-admin");
    let quotas = Quotas { tokens_per_day: 100, ..Quotas::default() };
    let r = c
        .post(s.url("/v1/tenants"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "t", "quotas": quotas }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let tok = s.token(Some("t"), "developer");
    let module = std::fs::read(art::EGRESS_CLIENT).unwrap();
    let r = c.post(s.url("/v1/modules")).bearer_auth(&tok).body(module).send().await.unwrap();
    let digest = r.json::<Value>().await.unwrap()["digest"].as_str().unwrap().to_owned();
    let url = format!("http://{addr}/v1/chat/completions");
    let grant = json!([{ "url": format!("http://{addr}/v1/"), "methods": ["POST"], "meter": "openai" }]);
    let r = c
        .post(s.url("/v1/agents"))
        .bearer_auth(&tok)
        .json(&json!({ "name": "c", "module": digest, "egress": grant }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // 140 tokens: the budget of 100 is spent.
    for _ in 0..2 {
        assert_eq!(chat(&c, &s, &tok, &url).await["status"], 200);
    }
    assert_eq!(chat(&c, &s, &tok, &url).await["status"], 429);

    s.terminate();
    let s = Serve::start_with(&data, &opts);
    s.ready().await;
    let v = chat(&c, &s, &tok, &url).await;
    assert_eq!(v["status"], 429, "a restart does not refill the budget: {v}");
    assert!(v["body"].as_str().unwrap().contains("token_budget_exhausted"), "{v}");
    let view: Value = c.get(s.url("/v1/agents/c")).bearer_auth(&tok).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["egress_usage"]["tenant_tokens_today"], 140, "{view}");
}
