//! Outbound HTTP of agents (`egress`): grants, address rules, secrets, limits, quotas and
//! token metering, against real HTTP servers the tests start on 127.0.0.1.
//!
//! The agent is `plugins/egress-client`: it makes the requests its input describes and
//! answers what it got (status, headers, body) or the wasi:http error code.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cortex_artifacts as art;
use cortex_host::egress::{Egress, StaticResolver};
use cortex_host::registry::Quotas;
use cortex_host::store::RecordKind;
use serde_json::{Value, json};

use crate::server::Server;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    /// `authorization` values received, in order.
    authorization: Vec<String>,
    /// Paths requested.
    paths: Vec<String>,
    /// Every request: path, and its `authorization` (empty when none).
    requests: Vec<(String, String)>,
}

/// A loopback HTTP server: `/api/echo` answers the request's headers, `/api/redirect` a
/// 302 to `/admin`, `/api/big` and `/api/big-declared` 64 KiB, `/api/slow` headers and
/// then nothing, `/v1/chat/completions` the OpenAI shape (streamed when asked).
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = axum::Router::new().fallback(handle).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Upstream { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn handle(State(seen): State<Arc<Mutex<Seen>>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let headers: HeaderMap = req.headers().clone();
    {
        let mut s = seen.lock().unwrap();
        s.paths.push(path.clone());
        let auth = headers.get("authorization").map_or("", |v| v.to_str().unwrap_or("")).to_owned();
        s.requests.push((path.clone(), auth));
        if let Some(v) = headers.get("authorization") {
            s.authorization.push(v.to_str().unwrap_or("").to_owned());
        }
    }
    let method = req.method().to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 24).await.unwrap_or_default();
    let header = |k: &str| headers.get(k).map(|v| v.to_str().unwrap_or("").to_owned());
    match path.as_str() {
        "/api/echo" | "/v2/echo" | "/admin" => {
            let h: Vec<(String, String)> =
                headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
            axum::Json(json!({ "headers": h, "body_bytes": body.len(), "method": method })).into_response()
        }
        // Redirects: `to` answers the request's `x-status` (302 by default) to its
        // `x-location`; `chain` a 302 to `chain2` (relative), which a 307 to `/api/echo`;
        // `loop` a 302 to itself.
        "/api/r/to" => {
            let status = header("x-status").and_then(|s| s.parse().ok()).unwrap_or(302);
            let location = header("x-location").unwrap_or_default();
            (StatusCode::from_u16(status).unwrap(), [("location", location)], "").into_response()
        }
        "/api/r/chain" => (StatusCode::FOUND, [("location", "chain2")], "").into_response(),
        "/api/r/chain2" => (StatusCode::TEMPORARY_REDIRECT, [("location", "/api/echo")], "").into_response(),
        "/api/r/loop" => (StatusCode::FOUND, [("location", "/api/r/loop")], "").into_response(),
        "/api/redirect" => (StatusCode::FOUND, [("location", "/admin")], "").into_response(),
        "/api/big" => {
            let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024]));
            Response::new(Body::from_stream(futures_stream(chunks.collect())))
        }
        "/api/big-declared" => vec![b'x'; 64 * 1024].into_response(),
        "/api/slow" => {
            let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
            // The sender is kept alive by the task: the body never ends.
            tokio::spawn(async move {
                let _tx = _tx;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            Response::new(Body::from_stream(tokio_stream(rx)))
        }
        "/v1/chat/completions" => {
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let usage = json!({ "prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70 });
            if req["stream"] == json!(true) {
                let mut events = Vec::new();
                for word in ["Hel", "lo"] {
                    events.push(format!(
                        "data: {}\n\n",
                        json!({ "choices": [{ "delta": { "content": word } }], "usage": null })
                    ));
                }
                events.push(format!("data: {}\n\n", json!({ "choices": [], "usage": usage })));
                events.push("data: [DONE]\n\n".to_owned());
                let chunks = events.into_iter().map(|e| Ok::<_, std::io::Error>(e.into_bytes())).collect();
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(futures_stream(chunks)))
                    .unwrap()
            } else {
                axum::Json(json!({
                    "id": "chatcmpl-1", "object": "chat.completion",
                    "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Hello" }, "finish_reason": "stop" }],
                    "usage": usage,
                }))
                .into_response()
            }
        }
        _ => (StatusCode::NOT_FOUND, "no such path").into_response(),
    }
}

/// A stream of the given chunks, one at a time.
fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter(chunks)
}

/// A stream of what `rx` receives.
fn tokio_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// A server whose agents may reach the loopback test servers, with `tweak` applied.
async fn server(tweak: impl FnOnce(&mut cortex_host::config::ServerConfig)) -> Server {
    Server::start_with(|c| {
        c.egress.allow_private = vec!["127.0.0.1/32".into()];
        tweak(c);
    })
    .await
}

/// Give `tenant` the secret `name` through `PUT /v1/secrets/{name}`, as a tenant-admin.
async fn put_secret(s: &Server, tenant: &str, name: &str, value: &str) {
    let admin = s.token(Some(tenant), cortex_host::api::Role::TenantAdmin);
    let r = s.req(reqwest::Method::PUT, &format!("/v1/secrets/{name}"), &admin).json(&json!({ "value": value }));
    let r = r.send().await.unwrap();
    assert!(r.status().is_success(), "PUT /v1/secrets/{name}: {}", r.status());
}

/// Deploy the egress client as `name` with `grants`; the developer token.
async fn client(s: &Server, dev: &str, name: &str, grants: Value) {
    let digest = s.upload(dev, art::EGRESS_CLIENT).await;
    s.deploy_with(dev, name, &digest, json!({ "egress": grants })).await;
}

/// Invoke the client with a request description; what the guest answered.
async fn call(s: &Server, dev: &str, agent: &str, req: Value) -> Value {
    let out = s.invoke_ok(dev, agent, &req.to_string()).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn error(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("expected an error, got {v}"))
}

async fn metrics(s: &Server) -> String {
    s.client.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_scheme_host_port_path_and_method_are_reached() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    client(&s, &dev, "c", json!([{ "url": up.url("/api/"), "methods": ["GET", "POST"] }])).await;

    let ok = call(&s, &dev, "c", json!({ "url": up.url("/api/echo") })).await;
    assert_eq!(ok["status"], 200, "{ok}");
    let ok = call(&s, &dev, "c", json!({ "method": "POST", "url": up.url("/api/echo"), "body": "hi" })).await;
    assert_eq!(ok["status"], 200, "{ok}");
    assert!(ok["body"].as_str().unwrap().contains("\"body_bytes\":2"), "{ok}");

    let port = up.addr.port();
    let other_port = if port == 65535 { 1 } else { port + 1 };
    for (what, req) in [
        ("method", json!({ "method": "DELETE", "url": up.url("/api/echo") })),
        ("path", json!({ "url": up.url("/v2/echo") })),
        ("path escape", json!({ "url": up.url("/api/../admin") })),
        ("port", json!({ "url": format!("http://127.0.0.1:{other_port}/api/echo") })),
        ("scheme", json!({ "url": format!("https://127.0.0.1:{port}/api/echo") })),
        ("host", json!({ "url": format!("http://localhost:{port}/api/echo") })),
    ] {
        let v = call(&s, &dev, "c", req).await;
        assert_eq!(error(&v), "HttpRequestDenied", "{what}: {v}");
    }
    assert_eq!(up.seen.lock().unwrap().paths, vec!["/api/echo", "/api/echo"], "denied requests never left");

    // An agent without a grant may import wasi:http (it uploaded and deployed) and gets a
    // typed denial for every request.
    client(&s, &dev, "nogrant", json!([])).await;
    let v = call(&s, &dev, "nogrant", json!({ "url": up.url("/api/echo") })).await;
    assert_eq!(error(&v), "HttpRequestDenied", "{v}");

    let m = metrics(&s).await;
    assert!(
        m.contains("cortex_egress_requests_total{agent=\"c\",host=\"127.0.0.1\",status=\"200\",tenant=\"t\"} 2"),
        "{m}"
    );
    assert!(m.contains("cortex_egress_requests_total{agent=\"c\",host=\"-\",status=\"denied\",tenant=\"t\"} 6"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_addresses_are_denied_by_default() {
    let up = Upstream::start().await;
    let s = Server::start().await;
    let dev = s.developer_in("t").await;
    client(
        &s,
        &dev,
        "c",
        json!([{ "url": up.url("/api/") }, { "url": "http://169.254.169.254/" }, { "url": "http://[::ffff:127.0.0.1]/" }]),
    )
    .await;
    for url in
        [up.url("/api/echo"), "http://169.254.169.254/latest/meta-data/".into(), "http://[::ffff:127.0.0.1]/".into()]
    {
        let v = call(&s, &dev, "c", json!({ "url": url })).await;
        assert_eq!(error(&v), "DestinationIpProhibited", "{url}: {v}");
    }
    assert!(up.seen.lock().unwrap().paths.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resolved_address_is_checked_and_the_checked_one_is_connected() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let mut names = HashMap::new();
    let public: IpAddr = "93.184.216.34".parse().unwrap();
    names.insert("rebind.test".to_owned(), vec![public, "10.0.0.7".parse().unwrap()]);
    names.insert("loop.test".to_owned(), vec!["127.0.0.1".parse().unwrap()]);
    let egress = Egress::new(s.state.config.egress.clone(), s.state.vault.clone())
        .unwrap()
        .with_resolver(Arc::new(StaticResolver(names)));
    s.state.agents.set_egress(Arc::new(egress));
    let dev = s.developer_in("t").await;
    let port = up.addr.port();
    client(
        &s,
        &dev,
        "c",
        json!([{ "url": format!("http://rebind.test:{port}/") }, { "url": format!("http://loop.test:{port}/") }]),
    )
    .await;
    // A public address first, a private one second (DNS rebinding): refused.
    let v = call(&s, &dev, "c", json!({ "url": format!("http://rebind.test:{port}/api/echo") })).await;
    assert_eq!(error(&v), "DestinationIpProhibited", "{v}");
    // The name resolves (through the stub) to the allowed loopback address: reached there.
    let v = call(&s, &dev, "c", json!({ "url": format!("http://loop.test:{port}/api/echo") })).await;
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["body"].as_str().unwrap().contains(&format!("loop.test:{port}")), "the Host header is the name: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_goes_out_in_its_header_and_never_reaches_the_agent() {
    const SECRET: &str = "sk-test-5ecret-value-0f-the-tenant";
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    put_secret(&s, "t", "openai", SECRET).await;
    client(
        &s,
        &dev,
        "c",
        json!([
            { "url": up.url("/api/"), "methods": ["GET"], "secret": "openai", "header": "authorization", "format": "Bearer {}" },
            { "url": up.url("/v2/"), "secret": "missing" },
        ]),
    )
    .await;
    let v = call(
        &s,
        &dev,
        "c",
        json!({ "url": up.url("/api/echo"), "headers": [["authorization", "Bearer guest-value"], ["x-mine", "kept"]] }),
    )
    .await;
    assert_eq!(v["status"], 200, "{v}");
    let seen = up.seen.lock().unwrap().authorization.clone();
    assert_eq!(seen, vec![format!("Bearer {SECRET}")], "the server got the secret, not the guest's value");
    let text = v.to_string();
    assert!(!text.contains(SECRET), "the server's echo of the secret reached the guest: {text}");
    assert!(text.contains("x-mine"), "{text}");
    assert!(text.contains("Bearer ********"), "the echo holds the redacted value: {text}");
    // A grant naming a secret the tenant does not have: a typed error, nothing sent.
    let v = call(&s, &dev, "c", json!({ "url": up.url("/v2/echo") })).await;
    assert_eq!(error(&v), "ConfigurationError", "{v}");
    for (what, text) in [
        ("metrics", metrics(&s).await),
        ("logs", s.get_json(&dev, "/v1/agents/c/logs").await.to_string()),
        ("agent", s.get_json(&dev, "/v1/agents/c").await.to_string()),
    ] {
        assert!(!text.contains(SECRET), "the secret is in the {what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_come_back_to_the_agent_and_the_next_request_is_checked() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    client(&s, &dev, "c", json!([{ "url": up.url("/api/") }])).await;
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/redirect") })).await;
    assert_eq!(v["status"], 302, "{v}");
    let location = v["headers"].as_array().unwrap().iter().find(|h| h[0] == "location").unwrap()[1].clone();
    assert_eq!(location, "/admin");
    // The host did not follow it; the agent following it is held to its grants.
    let v = call(&s, &dev, "c", json!({ "url": up.url("/admin") })).await;
    assert_eq!(error(&v), "HttpRequestDenied", "{v}");
    assert_eq!(up.seen.lock().unwrap().paths, vec!["/api/redirect"]);
}

/// The echo's JSON in a guest's answer.
fn echoed(v: &Value) -> Value {
    serde_json::from_str(v["body"].as_str().unwrap_or_else(|| panic!("no body: {v}"))).unwrap()
}

/// A redirect of `/api/r/to` to `location` with `status`, as the client's request.
fn redirect_to(up: &Upstream, method: &str, status: u16, location: &str) -> Value {
    json!({ "method": method, "url": up.url("/api/r/to"),
            "headers": [["x-status", status.to_string()], ["x-location", location]] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_redirects_stay_within_the_grant_and_carry_the_secret_only_there() {
    const SECRET: &str = "sk-redirect-5ecret-of-the-tenant";
    let up = Upstream::start().await;
    let other = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    put_secret(&s, "t", "openai", SECRET).await;
    client(
        &s,
        &dev,
        "c",
        json!([{ "url": up.url("/api/"), "methods": ["GET", "POST"], "secret": "openai", "redirects": "follow" }]),
    )
    .await;
    let bearer = format!("Bearer {SECRET}");

    // A chain of two: a 302 to a relative `chain2` (a POST goes on as a GET), then a 307.
    let v = call(&s, &dev, "c", json!({ "method": "POST", "url": up.url("/api/r/chain"), "body": "hello" })).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!((echoed(&v)["method"].clone(), echoed(&v)["body_bytes"].clone()), (json!("GET"), json!(0)), "{v}");
    let seen = std::mem::take(&mut up.seen.lock().unwrap().requests);
    let want: Vec<(String, String)> =
        ["/api/r/chain", "/api/r/chain2", "/api/echo"].iter().map(|p| ((*p).to_owned(), bearer.clone())).collect();
    assert_eq!(seen, want, "every hop inside the grant, each with the secret");
    assert!(!v.to_string().contains(SECRET), "{v}");

    // A 307 keeps the method and the body; a 303 makes a GET of a POST.
    let mut req = redirect_to(&up, "POST", 307, "/api/echo");
    req["body"] = json!("hello");
    let v = call(&s, &dev, "c", req).await;
    assert_eq!((echoed(&v)["method"].clone(), echoed(&v)["body_bytes"].clone()), (json!("POST"), json!(5)), "{v}");
    let mut req = redirect_to(&up, "POST", 303, "/api/echo");
    req["body"] = json!("hello");
    let v = call(&s, &dev, "c", req).await;
    assert_eq!((echoed(&v)["method"].clone(), echoed(&v)["body_bytes"].clone()), (json!("GET"), json!(0)), "{v}");
    // A body longer than the host keeps to send again: the 307 comes back to the agent.
    let mut req = redirect_to(&up, "POST", 307, "/api/echo");
    req["body_bytes"] = json!(70_000);
    let v = call(&s, &dev, "c", req).await;
    assert_eq!(v["status"], 307, "{v}");
    up.seen.lock().unwrap().requests.clear();

    // Out of the grant: another host, port, scheme, path prefix, or not http at all.
    let port = up.addr.port();
    for (what, location) in [
        ("host", format!("http://localhost:{port}/api/echo")),
        ("port", other.url("/api/echo")),
        ("scheme", format!("https://127.0.0.1:{port}/api/echo")),
        ("path", "/admin".to_owned()),
        ("path escape", "/api/../admin".to_owned()),
        ("not http", "ftp://127.0.0.1/api/echo".to_owned()),
    ] {
        let v = call(&s, &dev, "c", redirect_to(&up, "GET", 302, &location)).await;
        assert_eq!(error(&v), "HttpRequestDenied", "{what}: {v}");
    }
    assert!(other.seen.lock().unwrap().requests.is_empty(), "nothing, and no secret, reached another destination");
    let seen = up.seen.lock().unwrap().requests.clone();
    assert!(seen.iter().all(|(p, _)| p == "/api/r/to"), "only the redirecting requests were sent: {seen:?}");

    // A loop ends after `max_redirects` (5) hops.
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/r/loop") })).await;
    assert_eq!(error(&v), "LoopDetected", "{v}");
    let loops = up.seen.lock().unwrap().paths.iter().filter(|p| *p == "/api/r/loop").count();
    assert_eq!(loops, 6, "the request and 5 redirects");

    let m = metrics(&s).await;
    assert!(
        m.contains("cortex_egress_requests_total{agent=\"c\",host=\"-\",status=\"redirect_denied\",tenant=\"t\"} 6"),
        "{m}"
    );
    assert!(m.contains("status=\"redirect_loop\",tenant=\"t\"} 1"), "{m}");
}

/// Answers 127.0.0.1 for its first lookup and a private address after (DNS rebinding
/// between two hops of a redirect).
struct Rebinding(std::sync::atomic::AtomicUsize);

impl cortex_host::egress::Resolver for Rebinding {
    fn lookup<'a>(&'a self, _host: &'a str) -> cortex_host::egress::addr::Lookup<'a> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ip: IpAddr = if n == 0 { "127.0.0.1".parse().unwrap() } else { "10.0.0.7".parse().unwrap() };
        Box::pin(async move { Ok(vec![ip]) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_of_a_followed_redirect_is_resolved_and_checked_again() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let egress = Egress::new(s.state.config.egress.clone(), s.state.vault.clone())
        .unwrap()
        .with_resolver(Arc::new(Rebinding(Default::default())));
    s.state.agents.set_egress(Arc::new(egress));
    let dev = s.developer_in("t").await;
    let port = up.addr.port();
    let base = format!("http://rebind.test:{port}/api/");
    client(&s, &dev, "c", json!([{ "url": base, "redirects": "follow" }])).await;
    // Same grant, but the name now resolves to a private address: refused, not connected.
    let v =
        call(&s, &dev, "c", json!({ "url": format!("{base}r/to"), "headers": [["x-location", "/api/echo"]] })).await;
    assert_eq!(error(&v), "DestinationIpProhibited", "{v}");
    assert_eq!(up.seen.lock().unwrap().paths, vec!["/api/r/to"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_and_slow_servers_fail_the_request_not_the_host() {
    let up = Upstream::start().await;
    let s = server(|c| {
        c.egress.max_response_bytes = 16 * 1024;
        c.egress.max_request_bytes = 4 * 1024;
        c.egress.request_timeout_ms = 500;
    })
    .await;
    let dev = s.developer_in("t").await;
    client(&s, &dev, "c", json!([{ "url": up.url("/api/"), "methods": ["GET", "POST"] }])).await;
    // Streamed without a length: cut off at the limit, midway.
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/big") })).await;
    assert_eq!(v["status"], 200, "{v}");
    // (wasmtime-wasi-http 48 gives body errors to the guest untyped: their text says which.)
    assert_eq!(v["body_error"], "HTTP response body size exceeds limit: 16384 bytes", "{v}");
    assert!(v["body"].as_str().unwrap().len() <= 16 * 1024, "no more than the limit reached the guest");
    // Declared too long: refused before the body.
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/big-declared") })).await;
    assert!(error(&v).starts_with("HttpResponseBodySize"), "{v}");
    // A request body over the limit.
    let v = call(&s, &dev, "c", json!({ "method": "POST", "url": up.url("/api/echo"), "body_bytes": 64 * 1024 })).await;
    let refused =
        v["error"].as_str().is_some_and(|e| e.starts_with("HttpRequestBodySize") || e.starts_with("HttpProtocolError"));
    assert!(refused, "{v}");
    // Headers, then nothing: a typed timeout at the request's limit, well before the
    // invocation's own deadline.
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/slow") })).await;
    assert_eq!(v["body_error"], "HTTP response timeout", "{v}");
    // The node still serves.
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/echo") })).await;
    assert_eq!(v["status"], 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_ends_with_the_invocation_deadline() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    let digest = s.upload(&dev, art::EGRESS_CLIENT).await;
    s.deploy_with(
        &dev,
        "c",
        &digest,
        json!({ "egress": [{ "url": up.url("/api/") }], "limits": { "timeout_ms": 700 } }),
    )
    .await;
    let (status, body) = s.invoke(&dev, "c", &json!({ "url": up.url("/api/slow") }).to_string()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("deadline_exceeded"), "{body}");
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/echo") })).await;
    assert_eq!(v["status"], 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_invocation_are_capped() {
    let up = Upstream::start().await;
    let s = server(|c| c.egress.max_concurrent = 2).await;
    let dev = s.developer_in("t").await;
    client(&s, &dev, "c", json!([{ "url": up.url("/api/") }])).await;
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/echo"), "parallel": 3 })).await;
    let v = v.as_array().unwrap();
    assert_eq!((v[0]["status"].clone(), v[1]["status"].clone()), (json!(200), json!(200)), "{v:?}");
    assert_eq!(error(&v[2]), "ConnectionLimitReached", "{v:?}");
}

fn quotas(f: impl FnOnce(&mut Quotas)) -> Quotas {
    let mut q = Quotas::default();
    f(&mut q);
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_tokens_are_metered_and_the_daily_budget_refuses_once_spent() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    // Tenant `t` with a budget of 100 tokens a day, and the client `c` with a metered grant.
    let metered_tenant = || async {
        s.tenant_with("t", Some(quotas(|q| q.tokens_per_day = 100))).await;
        let dev = s.token(Some("t"), cortex_host::api::Role::Developer);
        put_secret(&s, "t", "openai", "sk-meter-test").await;
        client(
            &s,
            &dev,
            "c",
            json!([{ "url": up.url("/v1/"), "methods": ["POST"], "secret": "openai", "meter": "openai" },
                   { "url": up.url("/api/") }]),
        )
        .await;
        dev
    };
    let dev = metered_tenant().await;
    let chat = |stream: bool| {
        json!({ "method": "POST", "url": up.url("/v1/chat/completions"),
                "headers": [["content-type", "application/json"]],
                "body": json!({ "model": "m", "stream": stream, "messages": [{ "role": "user", "content": "hi" }] }).to_string() })
    };
    let v = call(&s, &dev, "c", chat(false)).await;
    assert_eq!(v["status"], 200, "{v}");
    let v = call(&s, &dev, "c", chat(true)).await;
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["body"].as_str().unwrap().contains("[DONE]"), "{v}");
    // 140 tokens counted, over the budget of 100: the next metered request is refused by
    // the host with a 429 (never sent), unmetered ones still go.
    let v = call(&s, &dev, "c", chat(false)).await;
    assert_eq!(v["status"], 429, "{v}");
    assert!(v["body"].as_str().unwrap().contains("token_budget_exhausted"), "{v}");
    assert_eq!(up.seen.lock().unwrap().paths.iter().filter(|p| *p == "/v1/chat/completions").count(), 2);
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/echo") })).await;
    assert_eq!(v["status"], 200, "{v}");
    let m = metrics(&s).await;
    assert!(m.contains("cortex_egress_tokens_total{agent=\"c\",kind=\"prompt\",tenant=\"t\"} 60"), "{m}");
    assert!(m.contains("cortex_egress_tokens_total{agent=\"c\",kind=\"completion\",tenant=\"t\"} 80"), "{m}");
    let view = s.get_json(&dev, "/v1/agents/c").await;
    assert_eq!(view["egress_usage"]["agent_prompt_tokens_today"], 60, "{view}");
    assert_eq!(view["egress_usage"]["tenant_tokens_today"], 140, "{view}");

    // Deleting the tenant takes its counts and its counter records with it: a new tenant of
    // the name starts the day with a whole budget.
    let egress = s.state.agents.egress();
    egress.flush().await;
    let store = s.state.registry.store().clone();
    let records = || async { store.record_list(RecordKind::Counter, "egress/t/").await.unwrap().len() };
    assert_eq!(records().await, 1, "this node's counts of today are stored");
    let r = s.req(reqwest::Method::DELETE, "/v1/tenants/t", &s.admin()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(records().await, 0, "the deleted tenant's counter records are gone");
    let dev = metered_tenant().await;
    let v = call(&s, &dev, "c", chat(false)).await;
    assert_eq!(v["status"], 200, "the new tenant's budget is whole: {v}");
    egress.flush().await;
    assert_eq!(records().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_request_rate_is_a_tenant_quota() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    s.tenant_with("t", Some(quotas(|q| q.egress_requests_per_second = 2))).await;
    let dev = s.token(Some("t"), cortex_host::api::Role::Developer);
    client(&s, &dev, "c", json!([{ "url": up.url("/api/") }])).await;
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/echo"), "parallel": 4 })).await;
    let statuses: Vec<Value> = v.as_array().unwrap().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == json!(200)).count(), 2, "{v}");
    let refused = v.as_array().unwrap().iter().find(|r| r["status"] == 429).unwrap();
    assert!(refused["body"].as_str().unwrap().contains("egress_rate_limited"), "{v}");
    assert!(refused["headers"].as_array().unwrap().iter().any(|h| h[0] == "retry-after"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_stay_within_the_tenant_allow_list() {
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    let admin = s.token(Some("t"), cortex_host::api::Role::TenantAdmin);
    let digest = s.upload(&dev, art::EGRESS_CLIENT).await;
    // Developers may not set it.
    let r = s.req(reqwest::Method::PUT, "/v1/egress", &dev).json(&json!({ "allow": [] })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .req(reqwest::Method::PUT, "/v1/egress", &admin)
        .json(&json!({ "allow": ["https://api.openai.com/v1/"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(s.get_json(&admin, "/v1/egress").await["allow"], json!(["https://api.openai.com/v1/"]));
    s.deploy_with(&dev, "in", &digest, json!({ "egress": [{ "url": "https://api.openai.com/v1/chat/" }] })).await;
    for url in ["https://api.openai.com/v2/", "http://api.openai.com/v1/", "https://evil.example/v1/"] {
        let r = s
            .req(reqwest::Method::POST, "/v1/agents", &dev)
            .json(&json!({ "name": "out", "module": digest, "egress": [{ "url": url }] }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {text}");
        assert!(text.contains("allow-list"), "{text}");
    }
}

/// A tenant-admin narrowing the allow-list holds agents deployed before it at once: their
/// requests, and each hop of a redirect the host follows, must be within the list as it is
/// now, not as it was at their deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_allow_list_holds_agents_deployed_before_it() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    let admin = s.token(Some("t"), cortex_host::api::Role::TenantAdmin);
    client(&s, &dev, "c", json!([{ "url": up.url("/api/"), "methods": ["GET"], "redirects": "follow" }])).await;
    let set = |allow: Value| {
        let r = s.req(reqwest::Method::PUT, "/v1/egress", &admin).json(&json!({ "allow": allow }));
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        }
    };
    let echo = json!({ "url": up.url("/api/echo") });
    let hop_to_echo = redirect_to(&up, "GET", 302, "/api/echo");
    assert_eq!(call(&s, &dev, "c", echo.clone()).await["status"], 200);
    assert_eq!(call(&s, &dev, "c", hop_to_echo.clone()).await["status"], 200);
    let reached = |up: &Upstream| up.seen.lock().unwrap().paths.iter().filter(|p| *p == "/api/echo").count();
    assert_eq!(reached(&up), 2);

    // Narrowed to the redirecting path: the grant still names /api/, the list does not.
    set(json!([up.url("/api/r/")])).await;
    let v = call(&s, &dev, "c", echo.clone()).await;
    assert_eq!(error(&v), "HttpRequestDenied", "a request outside the list: {v}");
    let v = call(&s, &dev, "c", hop_to_echo.clone()).await;
    assert_eq!(error(&v), "HttpRequestDenied", "a hop outside the list: {v}");
    assert_eq!(reached(&up), 2, "nothing outside the list left the host");
    // No egress at all.
    set(json!([])).await;
    let v = call(&s, &dev, "c", json!({ "url": up.url("/api/r/to"), "headers": [["x-location", "/api/r/to"]] })).await;
    assert_eq!(error(&v), "HttpRequestDenied", "an empty list: {v}");
    // The list taken away: the grant alone decides again.
    set(Value::Null).await;
    assert_eq!(call(&s, &dev, "c", hop_to_echo).await["status"], 200);
    assert_eq!(reached(&up), 3);
    let m = metrics(&s).await;
    assert!(m.contains("host=\"-\",status=\"denied\",tenant=\"t\"} 2"), "{m}");
    assert!(m.contains("status=\"redirect_denied\",tenant=\"t\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_caller_example_asks_a_model_with_a_key_it_never_holds() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    put_secret(&s, "t", "openai", "sk-example-key").await;
    let digest = s.upload(&dev, art::MODEL_CALLER).await;
    s.deploy_with(
        &dev,
        "ask",
        &digest,
        json!({
            "config": { "base_url": up.url("/v1"), "model": "m" },
            "egress": [{ "url": up.url("/v1/chat/completions"), "methods": ["POST"],
                         "secret": "openai", "header": "authorization", "format": "Bearer {}", "meter": "openai" }],
        }),
    )
    .await;
    assert_eq!(s.invoke_ok(&dev, "ask", "Say hello").await, "Hello");
    assert_eq!(up.seen.lock().unwrap().authorization, vec!["Bearer sk-example-key"]);
}

/// The audit events of the egress of tenant `t`, as its tenant-admin reads them.
async fn denial_events(s: &Server) -> Vec<Value> {
    let admin = s.token(Some("t"), cortex_host::api::Role::TenantAdmin);
    let v = s.get_json(&admin, "/v1/audit?action=egress_denied&limit=1000").await;
    v.as_array().unwrap().clone()
}

/// Poll [`denial_events`] until `done` holds of them (at most 10 s).
async fn events_until(s: &Server, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = denial_events(s).await;
        if done(&events) {
            return events;
        }
        assert!(std::time::Instant::now() < deadline, "not audited in time: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `suppressed=N` of an event's detail (0 when none).
fn suppressed(e: &Value) -> u64 {
    let d = e["detail"].as_str().unwrap_or("");
    d.split(' ').find_map(|kv| kv.strip_prefix("suppressed=")).map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_are_audited_and_a_loop_of_them_writes_a_bounded_number_of_events() {
    let up = Upstream::start().await;
    let s = server(|_| {}).await;
    let dev = s.developer_in("t").await;
    client(&s, &dev, "c", json!([{ "url": up.url("/api/") }])).await;
    let v =
        call(&s, &dev, "c", json!({ "method": "POST", "url": up.url("/v2/echo?key=hidden"), "body": "secret-body" }))
            .await;
    assert_eq!(error(&v), "HttpRequestDenied", "{v}");
    let events = events_until(&s, |e| !e.is_empty()).await;
    let e = &events[0];
    assert_eq!(e["action"], "egress_denied", "{e}");
    assert_eq!(e["actor"], "agent:c", "{e}");
    assert_eq!(e["tenant"], "t", "{e}");
    assert_eq!(e["target"], format!("http://127.0.0.1:{}/v2/echo", up.addr.port()), "no query: {e}");
    assert_eq!(e["detail"], "reason=not_granted method=POST", "{e}");
    assert!(!e.to_string().contains("hidden") && !e.to_string().contains("secret-body"), "{e}");
    // The platform's export has it too.
    let export =
        s.req(reqwest::Method::GET, "/v1/audit/export", &s.admin()).send().await.unwrap().text().await.unwrap();
    assert!(export.contains("\"action\":\"egress_denied\""), "{export}");

    // A guest looping on denied requests: 1000 denials, at most 10 events a minute (1 above,
    // 9 of the loop), the rest counted in a summary written when the window ends (here at
    // the node's shutdown flush).
    let v = call(&s, &dev, "c", json!({ "url": up.url("/v2/echo"), "repeat": 1000 })).await;
    assert_eq!(error(&v), "HttpRequestDenied", "{v}");
    s.state.agents.egress().close().await;
    let events = events_until(&s, |e| e.iter().any(|e| e["action"] == "egress_denied_suppressed")).await;
    let single = events.iter().filter(|e| e["action"] == "egress_denied").count();
    assert_eq!(single, 10, "{events:?}");
    let counted: u64 = events.iter().map(suppressed).sum();
    assert_eq!(single as u64 + counted, 1001, "every denial is written or counted: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_store_share_one_daily_token_budget() {
    use crate::cluster::{Backend, nodes_on, within};
    let up = Upstream::start().await;
    let Some((nodes, _store, _shared)) = nodes_on(Backend::Embedded, 2).await else { return };
    for n in &nodes {
        let mut cfg = n.state.config.egress.clone();
        cfg.allow_private = vec!["127.0.0.1/32".into()];
        n.state.agents.set_egress(Arc::new(Egress::new(cfg, n.state.vault.clone()).unwrap()));
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    a.tenant_with("t", Some(quotas(|q| q.tokens_per_day = 100))).await;
    let dev = a.token(Some("t"), cortex_host::api::Role::Developer);
    client(a, &dev, "c", json!([{ "url": up.url("/v1/"), "methods": ["POST"], "meter": "openai" }])).await;
    let chat = json!({ "method": "POST", "url": up.url("/v1/chat/completions"), "body": "{}" });
    for _ in 0..2 {
        assert_eq!(call(a, &dev, "c", chat.clone()).await["status"], 200);
    }
    // Node b learns of a's 140 tokens at its next flush, and refuses too.
    within(Duration::from_secs(20), "b counts a's tokens", || async {
        let view = b.get_json(&dev, "/v1/agents/c").await;
        view["egress_usage"]["tenant_tokens_today"] == 140
    })
    .await;
    let v = call(b, &dev, "c", chat.clone()).await;
    assert_eq!(v["status"], 429, "{v}");
    assert!(v["body"].as_str().unwrap().contains("token_budget_exhausted"), "{v}");
}

/// A CA and a certificate of it for 127.0.0.1, made with the `openssl` command: the CA's
/// PEM file, the server's certificate chain and key.
fn test_ca(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl").args(args).current_dir(dir).output().is_ok_and(|o| o.status.success())
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Cortex test CA",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    ok.then(|| dir.join("ca.pem"))
}

/// An https server on 127.0.0.1 with `dir`'s certificate, answering `ok` to every request.
async fn tls_server(dir: &std::path::Path) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ =
                    tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nover tls").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_grants_trust_the_extra_ca_and_fail_typed_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ca) = test_ca(dir.path()) else {
        eprintln!("no openssl command: skipped");
        return;
    };
    let addr = tls_server(dir.path()).await;
    let url = format!("https://{addr}/api/hello");
    let grants = json!([{ "url": format!("https://{addr}/api/") }, { "url": format!("http://{addr}/plain/") }]);

    let with_ca = server(|c| c.egress.extra_ca_file = Some(ca.clone())).await;
    let dev = with_ca.developer_in("t").await;
    client(&with_ca, &dev, "c", grants.clone()).await;
    let v = call(&with_ca, &dev, "c", json!({ "url": url })).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], "over tls", "{v}");
    // An http grant does not reach the same place over https.
    let v = call(&with_ca, &dev, "c", json!({ "url": format!("https://{addr}/plain/x") })).await;
    assert_eq!(error(&v), "HttpRequestDenied", "{v}");

    // Without the CA the server's certificate is not trusted: a typed error, at once.
    let without = server(|_| {}).await;
    let dev = without.developer_in("t").await;
    client(&without, &dev, "c", grants).await;
    let v = call(&without, &dev, "c", json!({ "url": url })).await;
    assert_eq!(error(&v), "TlsCertificateError", "{v}");
}

/// The JavaScript example (plugins/js/model-caller, built from source by
/// scripts/build-languages.sh like the other language agents) calls the model with
/// `fetch`: the host injects the tenant's key and meters the reply's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_model_caller_fetches_through_its_grant_with_a_key_it_never_holds() {
    const SECRET: &str = "sk-js-example-key-of-the-tenant";
    let wasm = tokio::task::spawn_blocking(|| crate::languages::build_target("js-model", "js-model-caller.wasm"))
        .await
        .unwrap();
    let up = Upstream::start().await;
    // Room for a 12 MB component: its compile on a loaded machine, StarlingMonkey's start.
    let mut s = server(|c| {
        c.engine.compile_timeout = Duration::from_secs(600);
        c.http.request_timeout_ms = 600_000;
        c.limits.memory_bytes = 256 << 20;
        c.limits.timeout = Duration::from_secs(30);
        c.limits.fuel = 10_000_000_000;
    })
    .await;
    s.client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    let dev = s.developer_in("t").await;
    put_secret(&s, "t", "openai", SECRET).await;
    let r = s.req(reqwest::Method::POST, "/v1/modules", &dev).body(std::fs::read(&wasm).unwrap()).send().await.unwrap();
    let module: Value = r.json().await.unwrap();
    let module = s.module_settled(&dev, module["digest"].as_str().unwrap(), Duration::from_secs(600)).await;
    assert_eq!(module["status"], "ready", "{module}");
    s.deploy_with(
        &dev,
        "ask-js",
        module["digest"].as_str().unwrap(),
        json!({
            "config": { "base_url": up.url("/v1/"), "model": "m" },
            "egress": [{ "url": up.url("/v1/"), "methods": ["POST"],
                         "secret": "openai", "header": "authorization", "format": "Bearer {}", "meter": "openai" }],
        }),
    )
    .await;
    let out = s.invoke_ok(&dev, "ask-js", "Say hello").await;
    assert_eq!(out, "Hello", "the answer is the test server's");
    assert!(!out.contains(SECRET));
    {
        let seen = up.seen.lock().unwrap();
        assert_eq!(seen.paths, vec!["/v1/chat/completions"]);
        assert_eq!(seen.authorization, vec![format!("Bearer {SECRET}")], "the host injected the key");
    }
    let view = s.get_json(&dev, "/v1/agents/ask-js").await;
    assert_eq!(view["egress_usage"]["agent_prompt_tokens_today"], 30, "{view}");
    assert_eq!(view["egress"][0]["secret"], "openai", "{view}");
    assert!(!view.to_string().contains(SECRET), "{view}");

    // Without a grant for the address the request never leaves and the agent says why.
    s.deploy_with(
        &dev,
        "ungranted",
        module["digest"].as_str().unwrap(),
        json!({ "config": { "base_url": up.url("/v1/") } }),
    )
    .await;
    let (status, body) = s.invoke(&dev, "ungranted", "Say hello").await;
    assert!(!status.is_success() && body.contains("http-error"), "{status} {body}");
    assert_eq!(up.seen.lock().unwrap().paths.len(), 1, "the denied request never left");
}
