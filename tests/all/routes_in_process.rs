//! The API's router driven in-process with `tower::ServiceExt::oneshot` (no socket, no
//! server front): every route, the invocation route included, gets its caller from the one
//! authentication (credentials, RBAC, tenant header, tenant scope), as over sockets.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cortex_artifacts as art;
use cortex_host::api::{self, Role};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::server::Server;

/// Send `method path` with `token` (if any), the tenant header `tenant` (if any) and `body`
/// to a fresh copy of the server's router, in-process; the status, the problem code (if the
/// answer is a problem) and the body as text.
async fn oneshot(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    tenant: Option<&str>,
    body: &str,
) -> (StatusCode, String, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(t) = tenant {
        req = req.header(api::TENANT_HEADER, t);
    }
    let req = req.body(Body::from(body.to_owned())).unwrap();
    let resp = api::router(s.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let code = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["code"].as_str().map(str::to_owned));
    (status, code.unwrap_or_default(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_in_process_authenticate_scope_and_invoke_as_over_sockets() {
    let s = Server::start().await;
    let dev = s.developer_in("t").await;
    s.tenant("u").await;
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;
    let observer = s.token(Some("t"), Role::Observer);
    let admin = s.admin();

    // Refused credentials and roles, on an ordinary route and on the invocation route.
    for path in ["/v1/agents", "/v1/agents/hello/invoke"] {
        let method = if path.ends_with("/invoke") { "POST" } else { "GET" };
        let (status, code, text) = oneshot(&s, method, path, None, None, "you").await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path}: {text}");
        let (status, code, text) = oneshot(&s, method, path, Some("not-a-token"), None, "you").await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path}: {text}");
        let (status, code, text) = oneshot(&s, method, path, Some(&dev), Some("u"), "you").await;
        assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "foreign_tenant"), "{path}: {text}");
    }
    let (status, code, text) = oneshot(&s, "POST", "/v1/agents/hello/invoke", Some(&observer), None, "you").await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{text}");

    // A tenant route: the caller's own tenant, or the one a platform-admin names.
    let (status, _, text) = oneshot(&s, "GET", "/v1/agents", Some(&observer), None, "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let agents: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(agents.as_array().map(|a| a.iter().map(|a| a["name"].clone()).collect()), Some(vec![json!("hello")]));
    let (status, _, text) = oneshot(&s, "GET", "/v1/agents", Some(&admin), Some("u"), "").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "[]"));
    let (status, code, text) = oneshot(&s, "GET", "/v1/agents", Some(&admin), None, "").await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{text}");
    let (status, code, text) = oneshot(&s, "GET", "/v1/agents", Some(&admin), Some("nobody"), "").await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{text}");

    // The invocation route, by a developer of the tenant and by a platform-admin in it.
    let (status, _, text) = oneshot(&s, "POST", "/v1/agents/hello/invoke", Some(&dev), None, "you").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "Hello, you!"));
    let (status, _, text) = oneshot(&s, "POST", "/v1/agents/h%65llo/invoke", Some(&admin), Some("t"), "me").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "Hello, me!"));
    let (status, code, text) = oneshot(&s, "POST", "/v1/agents/nobody/invoke", Some(&dev), None, "you").await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{text}");
}
