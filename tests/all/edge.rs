//! The HTTP edge: every refusal is problem+json with a code, declared oversized bodies are
//! refused before they are read, a role learns nothing from a route it may not call, the
//! tenant header is a platform-admin's only, idle keep-alive connections are announced.

use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::api::{Role, route_action};
use cortex_host::registry::Quotas;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::{Server, answer};

/// Send `head` (request line and headers, no body) on a fresh connection and read the
/// answer: whatever the server sends before it closes, or by the test's own bound.
async fn raw(s: &Server, head: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the response is whole (a problem body ends with `}`) or the server closes.
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if String::from_utf8_lossy(&buf).ends_with('}') {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_over_the_limit_is_refused_before_it_is_read() {
    // A body that never comes would only end by the request timeout: set it out of reach of
    // the test's own bound, so only an answer made before reading can pass.
    let s = Server::start_with(|c| {
        c.http.request_timeout_ms = 600_000;
        c.http.header_timeout_ms = 600_000;
    })
    .await;
    s.tenant("t").await;
    let dev = s.token(Some("t"), Role::TenantAdmin);
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;
    let module_limit = s.state.config.http.module_limit_bytes;
    let body_limit = s.state.config.http.body_limit_bytes;
    let cases = [
        ("POST", "/v1/modules", module_limit + (1 << 20), "application/wasm"),
        ("POST", "/v1/agents", body_limit + 1, "application/json"),
        ("PUT", "/v1/agents/hello/config", body_limit + 1, "application/json"),
        ("POST", "/v1/keys", body_limit + 1, "application/json"),
        // The invocation lanes: straight from the server, and through the router.
        ("POST", "/v1/agents/hello/invoke", body_limit + 1, "application/octet-stream"),
        ("POST", "/v1/agents/h%65llo/invoke", body_limit + 1, "application/octet-stream"),
    ];
    for (method, path, length, kind) in cases {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dev}\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n"
        );
        let resp = raw(&s, &head).await;
        assert!(resp.starts_with("HTTP/1.1 413"), "{method} {path} declaring {length} bytes: {resp}");
        assert!(resp.contains("application/problem+json"), "{resp}");
        assert!(resp.contains(r#""code":"body_too_large""#), "{resp}");
        // The connection closes after the refusal: it announces no keep-alive.
        let head = resp.to_ascii_lowercase();
        if head.contains("connection: close") {
            assert!(!head.contains("keep-alive:"), "{method} {path}: {resp}");
        }
    }
}

/// A request refused for its role or its tenant header is not waited for either when its
/// body is declared over the limit: the 403 goes out before a byte of the body is read, as
/// the 413 of a role that may call the route does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_declaring_a_body_over_the_limit_is_answered_before_it_is_read() {
    let s = Server::start_with(|c| {
        c.http.request_timeout_ms = 600_000;
        c.http.header_timeout_ms = 600_000;
    })
    .await;
    s.tenant("t").await;
    s.tenant("u").await;
    let observer = s.token(Some("t"), Role::Observer);
    let dev = s.token(Some("t"), Role::Developer);
    let module_limit = s.state.config.http.module_limit_bytes;
    let body_limit = s.state.config.http.body_limit_bytes;
    // (method, path, token, tenant header, declared length, code)
    let cases = [
        ("POST", "/v1/modules", &observer, "", module_limit + (1 << 20), "forbidden"),
        ("POST", "/v1/agents", &observer, "", body_limit + 1, "forbidden"),
        ("POST", "/v1/keys", &dev, "", body_limit + 1, "forbidden"),
        ("POST", "/v1/agents/a/upgrade", &observer, "", body_limit + 1, "forbidden"),
        ("POST", "/v1/agents/a%61/invoke", &observer, "", body_limit + 1, "forbidden"),
        ("POST", "/v1/modules", &dev, "X-Cortex-Tenant: u\r\n", module_limit + (1 << 20), "foreign_tenant"),
        ("PUT", "/v1/agents/a/config", &dev, "X-Cortex-Tenant: u\r\n", body_limit + 1, "foreign_tenant"),
    ];
    for (method, path, token, extra, length, code) in cases {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        );
        let resp = raw(&s, &head).await;
        let what = format!("{method} {path} {extra} declaring {length} bytes: {resp}");
        assert!(resp.starts_with("HTTP/1.1 403"), "{what}");
        assert!(resp.contains(&format!(r#""code":"{code}""#)), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_problem_json_with_a_code() {
    let s = Server::start().await;
    let ta = s.token(Some("t"), Role::TenantAdmin);
    s.tenant("t").await;
    let admin = s.admin();
    let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
    // (method, path, token, status, code)
    let cases: Vec<(Method, &str, Option<&str>, StatusCode, &str)> = vec![
        // Query strings of the wrong type or with unknown parameters.
        (m("GET"), "/v1/events?since=abc", Some(&ta), StatusCode::BAD_REQUEST, "invalid_query"),
        (m("GET"), "/v1/events?limit=-1", Some(&ta), StatusCode::BAD_REQUEST, "invalid_query"),
        (m("GET"), "/v1/events/stream?follow=perhaps", Some(&ta), StatusCode::BAD_REQUEST, "invalid_query"),
        (m("GET"), "/v1/audit?since=1e3", Some(&ta), StatusCode::BAD_REQUEST, "invalid_query"),
        (m("GET"), "/v1/audit?bogus=1", Some(&ta), StatusCode::BAD_REQUEST, "invalid_query"),
        (m("GET"), "/v1/agents/a/logs?limit=x", Some(&ta), StatusCode::BAD_REQUEST, "invalid_query"),
        // Path segments that are not UTF-8 once decoded.
        (m("GET"), "/v1/agents/%FF", Some(&ta), StatusCode::BAD_REQUEST, "invalid_path"),
        (m("GET"), "/v1/modules/%C3%28", Some(&ta), StatusCode::BAD_REQUEST, "invalid_path"),
        (m("GET"), "/v1/tenants/%FF", Some(&admin), StatusCode::BAD_REQUEST, "invalid_path"),
        (m("DELETE"), "/v1/agents/a/deadletters/%FF", Some(&ta), StatusCode::BAD_REQUEST, "invalid_path"),
        // A method the route does not have, on each route family.
        (m("PUT"), "/v1/tenants", Some(&admin), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("POST"), "/v1/tenants/t", Some(&admin), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("PUT"), "/v1/keys", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("GET"), "/v1/keys/k", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("DELETE"), "/v1/audit", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("POST"), "/v1/events", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("DELETE"), "/v1/events/stream", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("PATCH"), "/v1/modules", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("POST"), "/v1/modules/d", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("DELETE"), "/v1/agents", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("PATCH"), "/v1/agents/a", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("GET"), "/v1/agents/a/invoke", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("GET"), "/v1/agents/a/stop", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("POST"), "/v1/agents/a/config", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("POST"), "/v1/agents/a/logs", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("PUT"), "/v1/agents/a/deadletters", Some(&ta), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("POST"), "/healthz", None, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("DELETE"), "/metrics", None, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (m("PUT"), "/v1/openapi.json", None, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        // Routes that do not exist.
        (m("GET"), "/", None, StatusCode::NOT_FOUND, "no_route"),
        (m("GET"), "/v2/agents", Some(&ta), StatusCode::NOT_FOUND, "no_route"),
        (m("GET"), "/v1/agents/a/nothing", Some(&ta), StatusCode::NOT_FOUND, "no_route"),
        (m("POST"), "/v1/nothing", None, StatusCode::NOT_FOUND, "no_route"),
        // Bodies of the wrong kind.
        (m("POST"), "/v1/agents", Some(&ta), StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (method, path, token, status, code) in cases {
        let mut rb = s.client.request(method.clone(), s.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = answer(rb.send().await.unwrap()).await;
        let what = format!("{method} {path}: {} {} {}", r.status, r.content_type, r.text);
        assert_eq!((r.status, r.code.as_str()), (status, code), "{what}");
        assert_eq!(r.content_type, "application/problem+json", "{what}");
        assert_eq!(r.body["status"], status.as_u16(), "{what}");
        assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}");
    }
    // A 405 still says which methods the route has.
    let r = s.req(Method::DELETE, "/v1/agents", &ta).send().await.unwrap();
    let allow = r.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "allow: {allow:?}");
}

/// The refusal code of a request by a role that may not call its route, whatever its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_call_a_route_learns_nothing_from_its_body_checks() {
    let s = Server::start().await;
    s.tenant("t").await;
    let observer = s.token(Some("t"), Role::Observer);
    let developer = s.token(Some("t"), Role::Developer);
    let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
    // Malformed bodies: unknown fields, wrong types, not JSON.
    let routes = [
        (m("POST"), "/v1/tenants", "/v1/tenants"),
        (m("PATCH"), "/v1/tenants/{tenant}", "/v1/tenants/t"),
        (m("POST"), "/v1/keys", "/v1/keys"),
        (m("POST"), "/v1/agents", "/v1/agents"),
        (m("PUT"), "/v1/agents/{name}/config", "/v1/agents/a/config"),
        (m("POST"), "/v1/agents/{name}/upgrade", "/v1/agents/a/upgrade"),
    ];
    let bodies = [r#"{"nmae": 1, "modul": [true]}"#, r#"{"name": 7}"#, "not json at all"];
    let mut cells = 0;
    for (token, role) in [(&observer, Role::Observer), (&developer, Role::Developer)] {
        for (method, template, path) in &routes {
            let action = route_action(method, template).unwrap();
            if action.allowed(role) {
                continue;
            }
            for body in bodies {
                let r = answer(
                    s.req(method.clone(), path, token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                let what = format!("{} {method} {path} with {body}: {} {}", role.as_str(), r.status, r.text);
                assert_eq!((r.status, r.code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{what}");
                for leak in ["field", "name", "module", "quotas", "config", "line", "column"] {
                    assert!(!r.body["detail"].as_str().unwrap_or_default().contains(leak), "{what}");
                }
                cells += 1;
            }
        }
    }
    // observer: all six routes; developer: tenants and keys.
    assert_eq!(cells, (6 + 3) * bodies.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_header_naming_another_tenant_is_refused_unless_platform_admin() {
    let s = Server::start().await;
    let a = s.developer_in("alpha").await;
    s.tenant("beta").await;
    let a_admin = s.token(Some("alpha"), Role::TenantAdmin);
    let digest = s.upload(&a, art::HELLO).await;
    s.deploy(&a, "hello", &digest, json!({})).await;
    let requests = [
        (Method::GET, "/v1/agents", &a),
        (Method::GET, "/v1/modules", &a),
        (Method::GET, "/v1/events", &a),
        (Method::POST, "/v1/agents/hello/invoke", &a),
        (Method::POST, "/v1/agents/h%65llo/invoke", &a),
        (Method::GET, "/v1/audit", &a_admin),
        (Method::GET, "/v1/keys", &a_admin),
        (Method::GET, "/v1/tenants/alpha", &a_admin),
    ];
    for (method, path, token) in requests {
        for named in ["beta", "nowhere", "ALPHA"] {
            let r = answer(
                s.req(method.clone(), path, token).header("x-cortex-tenant", named).body("x").send().await.unwrap(),
            )
            .await;
            let what = format!("{method} {path} naming {named}: {} {}", r.status, r.text);
            assert_eq!((r.status, r.code.as_str()), (StatusCode::FORBIDDEN, "foreign_tenant"), "{what}");
            assert_eq!(r.content_type, "application/problem+json", "{what}");
        }
        // Naming its own tenant is fine.
        let r = s.req(method.clone(), path, token).header("x-cortex-tenant", "alpha").body("x").send().await.unwrap();
        assert!(r.status().is_success(), "{method} {path} naming its own tenant: {}", r.status());
    }
    // A platform-admin acts in any tenant with it.
    let r = s.req(Method::GET, "/v1/agents", &s.admin()).header("x-cortex-tenant", "beta").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_of_a_missing_agent_spends_no_rate_token() {
    let s = Server::start().await;
    let quotas = Quotas { invocations_per_second: 1, burst: 1, ..Quotas::default() };
    s.tenant_with("t", Some(quotas)).await;
    let dev = s.token(Some("t"), Role::Developer);
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;
    // Both lanes, several times: each a 404, none a 429.
    for _ in 0..3 {
        for path in ["/v1/agents/nobody/invoke", "/v1/agents/n%6Fbody/invoke"] {
            let r = answer(s.req(Method::POST, path, &dev).body("x").send().await.unwrap()).await;
            assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{path}: {}", r.text);
        }
    }
    // The bucket's one token is still there.
    assert_eq!(s.invoke_ok(&dev, "hello", "you").await, "Hello, you!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_refused_as_stopped_or_circuit_open_spends_no_rate_token() {
    let s = Server::start().await;
    // Two tokens: one for the trap that opens the breaker, one for the last invocation.
    let quotas = Quotas { invocations_per_second: 1, burst: 2, ..Quotas::default() };
    s.tenant_with("t", Some(quotas)).await;
    let dev = s.token(Some("t"), Role::Developer);
    let hostile = s.upload(&dev, art::HOSTILE).await;
    let hello = s.upload(&dev, art::HELLO).await;
    let breaker = json!({ "supervision": {
        "window": 20, "consecutive_failures": 1, "failure_ratio": 1.0, "min_outcomes": 20,
        "open_ms": 60_000, "max_open_ms": 60_000,
    }});
    s.deploy_with(&dev, "h", &hostile, breaker).await;
    s.deploy(&dev, "hello", &hello, json!({})).await;
    s.deploy(&dev, "off", &hello, json!({})).await;
    let r = s.req(Method::POST, "/v1/agents/off/stop", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.invoke(&dev, "h", "trap").await.0, StatusCode::BAD_GATEWAY);
    // Both lanes, several times: each refused as what it is, none a 429.
    for _ in 0..3 {
        for (path, status, code) in [
            ("/v1/agents/h/invoke", StatusCode::SERVICE_UNAVAILABLE, "circuit_open"),
            ("/v1/agents/%68/invoke", StatusCode::SERVICE_UNAVAILABLE, "circuit_open"),
            ("/v1/agents/off/invoke", StatusCode::CONFLICT, "agent_stopped"),
            ("/v1/agents/o%66f/invoke", StatusCode::CONFLICT, "agent_stopped"),
        ] {
            let r = answer(s.req(Method::POST, path, &dev).body("x").send().await.unwrap()).await;
            assert_eq!((r.status, r.code.as_str()), (status, code), "{path}: {}", r.text);
        }
    }
    // The bucket's second token is still there.
    assert_eq!(s.invoke_ok(&dev, "hello", "you").await, "Hello, you!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_say_how_long_an_idle_connection_stays_open() {
    let s = Server::start_with(|c| c.http.header_timeout_ms = 7_000).await;
    for path in ["/healthz", "/v1/nothing", "/v1/agents"] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.headers().get("keep-alive").map(|v| v.to_str().unwrap()), Some("timeout=7"), "{path}");
    }
    let dev = s.developer_in("t").await;
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;
    let r = s.req(Method::POST, "/v1/agents/hello/invoke", &dev).body("x").send().await.unwrap();
    assert_eq!(r.headers().get("keep-alive").map(|v| v.to_str().unwrap()), Some("timeout=7"));
}

/// Send `head` and then `body` on a fresh connection from one task while another reads: the
/// answer the server sends (a write the server cuts short is the client's loss, not the
/// answer's). `chunked`: the body goes in 64 KiB chunks of the chunked coding.
async fn sent_while_answered(s: &Server, head: String, body: usize, chunked: bool) -> String {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        let mut left = body;
        while left > 0 {
            let n = left.min(chunk.len());
            if chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            wr.write_all(&chunk[..n]).await?;
            if chunked {
                wr.write_all(b"\r\n").await?;
            }
            left -= n;
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        std::io::Result::Ok(())
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Err(e) => return Err(e),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if String::from_utf8_lossy(&buf).ends_with('}') {
                return Ok(());
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    match read {
        Ok(Ok(())) => text,
        Ok(Err(e)) => format!("read failed after {text:?}: {e}"),
        Err(_) => format!("no answer within 20 s after {text:?}"),
    }
}

/// A server that answers before it has read a request's body (a body declared or found over
/// the limit, a caller refused, an agent that does not exist) closes the connection gently:
/// a client still sending the body reads the whole answer, never a reset that throws it
/// away. Bodies larger than the socket buffers, in both framings, through the real client
/// and through one that reads while it writes, several at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_body_reads_the_answer_sent_before_it() {
    let s = Server::start().await;
    s.tenant("t").await;
    let dev = s.token(Some("t"), Role::TenantAdmin);
    let observer = s.token(Some("t"), Role::Observer);
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;
    let module_limit = s.state.config.http.module_limit_bytes;
    let body_limit = s.state.config.http.body_limit_bytes;
    let big = (4 << 20).max(body_limit + 1);
    // (method, path, token, body bytes, status, code)
    let cases = [
        ("POST", "/v1/agents", dev.as_str(), big, 413, "body_too_large"),
        ("POST", "/v1/modules", dev.as_str(), module_limit + (4 << 20), 413, "body_too_large"),
        ("POST", "/v1/agents/hello/invoke", dev.as_str(), big, 413, "body_too_large"),
        ("POST", "/v1/agents/h%65llo/invoke", dev.as_str(), big, 413, "body_too_large"),
        ("POST", "/v1/agents/nobody/invoke", dev.as_str(), body_limit / 2, 404, "not_found"),
        ("POST", "/v1/agents", observer.as_str(), big, 403, "forbidden"),
        ("POST", "/v1/agents", "not-a-token", big, 401, "unauthorized"),
        ("POST", "/v1/nothing", dev.as_str(), big, 404, "no_route"),
    ];
    for round in 0..4 {
        for (method, path, token, length, status, code) in cases {
            let what = format!("round {round}: {method} {path} with {length} bytes");
            // The real client, two at once.
            let send = || {
                s.client
                    .request(Method::from_bytes(method.as_bytes()).unwrap(), s.url(path))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(vec![b'x'; length])
                    .send()
            };
            let (a, b) = tokio::join!(send(), send());
            for r in [a, b] {
                let r = match r {
                    Ok(r) => answer(r).await,
                    Err(e) => panic!("{what}: the client lost the answer: {e:?}"),
                };
                assert_eq!((r.status.as_u16(), r.code.as_str()), (status, code), "{what}: {}", r.text);
            }
            // A client that reads while it writes, with each framing.
            for chunked in [false, true] {
                let framing =
                    if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {length}") };
                let head = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
                );
                let resp = sent_while_answered(&s, head, length, chunked).await;
                assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{what} ({framing}): {resp}");
                assert!(resp.contains(&format!(r#""code":"{code}""#)), "{what} ({framing}): {resp}");
                // The connection closes after it, and the answer says so.
                assert!(resp.to_ascii_lowercase().contains("connection: close"), "{what} ({framing}): {resp}");
            }
        }
    }
}
