//! The HTTP API over a real socket with a real client: the agent lifecycle, RBAC, quotas,
//! rate limits, bad uploads, restart persistence, slow clients, the OpenAPI document and
//! the audit log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::{Action, Role};
use cortex_host::registry::Quotas;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::{Server, answer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_lifecycle_from_upload_to_delete() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    let counter = s.upload(&dev, art::COUNTER).await;
    assert_ne!(kv, counter);

    let a = s.deploy(&dev, "svc", &kv, json!({ "mode": "v1" })).await;
    assert_eq!(a["status"], "running");
    assert_eq!(a["module"], kv.as_str());
    assert_eq!(s.invoke_ok(&dev, "svc", "config:mode").await, "v1");

    // Hot reload: the new config is seen by the next invocation.
    let r = s
        .req(Method::PUT, "/v1/agents/svc/config", &dev)
        .json(&json!({ "config": { "mode": "v2" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.invoke_ok(&dev, "svc", "config:mode").await, "v2");

    // A config that init refuses: the error is returned and the old config stays in force.
    let r = s
        .req(Method::PUT, "/v1/agents/svc/config", &dev)
        .json(&json!({ "config": { "mode": "v3", "reject": "test" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "init_agent_error");
    assert!(problem["detail"].as_str().unwrap().contains("rejected: test"), "{problem}");
    assert_eq!(s.invoke_ok(&dev, "svc", "config:mode").await, "v2");
    assert_eq!(s.invoke_ok(&dev, "svc", "config:reject").await, "none");

    // Logs of the agent's own log calls.
    let r = s.req(Method::POST, "/v1/agents/svc/invoke", &dev).body("log:lifecycle-marker").send().await.unwrap();
    let id = r.headers()["x-cortex-invocation"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), "logged");
    let logs = s.get_json(&dev, "/v1/agents/svc/logs").await;
    let line = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("lifecycle-marker")))
        .unwrap_or_else(|| panic!("no log line: {logs}"));
    assert_eq!(line["invocation"], id, "the log line names the invocation of the response header: {logs}");
    // Every invocation has an id of its own, the one the agent sees.
    let r = s.req(Method::POST, "/v1/agents/svc/invoke", &dev).body("whoami").send().await.unwrap();
    let other = r.headers()["x-cortex-invocation"].to_str().unwrap().to_owned();
    let who: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(who["invocation"], other);
    assert_ne!(other, id);

    // Upgrade to another module: the counter runs now.
    let r =
        s.req(Method::POST, "/v1/agents/svc/upgrade", &dev).json(&json!({ "module": counter })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.invoke_ok(&dev, "svc", "hits").await, "1");
    assert_eq!(s.invoke_ok(&dev, "svc", "hits").await, "2");
    let a = s.get_json(&dev, "/v1/agents/svc").await;
    assert_eq!(a["module"], counter.as_str());
    assert_eq!(a["previous_module"], kv.as_str());

    // Rollback: the kv module again, with the current config.
    let r = s.req(Method::POST, "/v1/agents/svc/rollback", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.invoke_ok(&dev, "svc", "config:mode").await, "v2");
    let a = s.get_json(&dev, "/v1/agents/svc").await;
    assert_eq!(a["module"], kv.as_str());
    // The counter's document survived the module changes (same tenant, same agent).
    assert_eq!(s.invoke_ok(&dev, "svc", "get:counters/hits").await, "2");

    // Stop: invocations are refused with 409 agent_stopped.
    let r = s.req(Method::POST, "/v1/agents/svc/stop", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = answer(s.req(Method::POST, "/v1/agents/svc/invoke", &dev).body("config:mode").send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::CONFLICT, "agent_stopped"), "{}", r.text);
    assert_eq!(s.get_json(&dev, "/v1/agents/svc").await["status"], "stopped");

    // Start: invocations run again.
    let r = s.req(Method::POST, "/v1/agents/svc/start", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.invoke_ok(&dev, "svc", "config:mode").await, "v2");

    // Delete: gone everywhere.
    let r = s.req(Method::DELETE, "/v1/agents/svc", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = answer(s.req(Method::GET, "/v1/agents/svc", &dev).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let r = answer(s.req(Method::POST, "/v1/agents/svc/invoke", &dev).body("x").send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(s.get_json(&dev, "/v1/agents").await, json!([]));
    // With no agent left, both modules can be deleted.
    for d in [&kv, &counter] {
        let r = s.req(Method::DELETE, &format!("/v1/modules/{d}"), &dev).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

/// An agent name follows one rule, `[a-z][a-z0-9-]{0,62}`, wherever it enters: a deploy
/// body (400 `bad_request`), a path on both invocation lanes and the other agent routes
/// (400 `invalid_path`); each error names the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_agent_name_is_refused_where_it_enters_with_the_rule() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let hello = s.upload(&dev, art::HELLO).await;
    const RULE: &str = "[a-z][a-z0-9-]{0,62}";
    let longest = format!("a{}", "0".repeat(62));
    let too_long = format!("{longest}1");
    for bad in ["Svc", "9lives", "a_b", "-a", "", "caf\u{e9}", too_long.as_str()] {
        let r = answer(
            s.req(Method::POST, "/v1/agents", &dev).json(&json!({"name": bad, "module": hello})).send().await.unwrap(),
        )
        .await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{bad:?}: {}", r.text);
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("agent name") && detail.contains(RULE), "{bad:?}: {detail}");
    }
    assert_eq!(s.get_json(&dev, "/v1/agents").await, json!([]), "nothing deployed");
    // The longest name is a name.
    s.deploy(&dev, &longest, &hello, json!({})).await;
    assert_eq!(s.invoke_ok(&dev, &longest, "you").await, "Hello, you!");

    // In a path: the invocation (a bad name never takes the fast lane, the router refuses
    // it), the agent itself, its sub-routes; a known and a missing good name for contrast.
    let cases = [
        (Method::POST, "/v1/agents/Svc/invoke"),
        (Method::POST, "/v1/agents/%53vc/invoke"),
        (Method::POST, "/v1/agents/a_b/invoke"),
        (Method::GET, "/v1/agents/9lives"),
        (Method::DELETE, "/v1/agents/a_b"),
        (Method::POST, "/v1/agents/Svc/stop"),
        (Method::GET, "/v1/agents/a_b/logs"),
        (Method::GET, "/v1/agents/a_b/logs/stream"),
        (Method::DELETE, "/v1/agents/Svc/deadletters/x"),
    ];
    for (method, path) in cases {
        let r = answer(s.req(method.clone(), path, &dev).body("you").send().await.unwrap()).await;
        assert_eq!(
            (r.status, r.code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_path"),
            "{method} {path}: {}",
            r.text
        );
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("agent name") && detail.contains(RULE), "{method} {path}: {detail}");
    }
    let r = answer(s.req(Method::POST, "/v1/agents/nobody/invoke", &dev).body("you").send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    // Credentials still come first: no name check answers an anonymous caller.
    let r = answer(s.client.get(s.url("/v1/agents/Svc")).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{}", r.text);
    // The OpenAPI document states the rule for the path parameter.
    let doc: Value = s.client.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let param = &doc["paths"]["/v1/agents/{name}/invoke"]["post"]["parameters"][0];
    assert_eq!((&param["name"], &param["schema"]["pattern"]), (&json!("name"), &json!(format!("^{RULE}$"))), "{param}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_in_use_cannot_be_deleted() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "svc", &kv, json!({})).await;
    let r = answer(s.req(Method::DELETE, &format!("/v1/modules/{kv}"), &dev).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::CONFLICT, "module_in_use"));
    assert_eq!(s.invoke_ok(&dev, "svc", "config:x").await, "none");
}

/// Every authenticated route, its action, and a request that does not depend on the
/// caller's rights beyond RBAC (destructive ones aim at objects that do not exist).
/// (method, documented path, requested path, action, JSON body, raw body).
type RbacRoute = (Method, &'static str, String, Action, Option<Value>, Option<Vec<u8>>);

fn rbac_routes(kv: &str) -> Vec<RbacRoute> {
    let quotas = serde_json::to_value(Quotas::default()).unwrap();
    let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
    vec![
        (
            m("POST"),
            "/v1/tenants",
            "/v1/tenants".into(),
            Action::ManageTenants,
            Some(json!({"name": "made-by-rbac"})),
            None,
        ),
        (m("GET"), "/v1/tenants", "/v1/tenants".into(), Action::ManageTenants, None, None),
        (m("GET"), "/v1/tenants/{tenant}", "/v1/tenants/t".into(), Action::ReadTenant, None, None),
        (
            m("PATCH"),
            "/v1/tenants/{tenant}",
            "/v1/tenants/ghost".into(),
            Action::ManageTenants,
            Some(json!({"quotas": quotas})),
            None,
        ),
        (m("DELETE"), "/v1/tenants/{tenant}", "/v1/tenants/ghost".into(), Action::ManageTenants, None, None),
        (m("POST"), "/v1/keys", "/v1/keys".into(), Action::ManageKeys, Some(json!({"role": "observer"})), None),
        (m("GET"), "/v1/keys", "/v1/keys".into(), Action::ManageKeys, None, None),
        (m("DELETE"), "/v1/keys/{id}", "/v1/keys/nokey".into(), Action::ManageKeys, None, None),
        (m("GET"), "/v1/audit", "/v1/audit".into(), Action::ReadAudit, None, None),
        (m("GET"), "/v1/audit/export", "/v1/audit/export".into(), Action::ReadAudit, None, None),
        (m("GET"), "/v1/cluster", "/v1/cluster".into(), Action::ManageTenants, None, None),
        (m("GET"), "/v1/profiles", "/v1/profiles".into(), Action::ReadProfiles, None, None),
        (m("GET"), "/v1/profiles/{name}", "/v1/profiles/ghost".into(), Action::ReadProfiles, None, None),
        (
            m("PUT"),
            "/v1/profiles/{name}",
            "/v1/profiles/small".into(),
            Action::ManageProfiles,
            Some(json!({"limits": {"fuel": 1000}})),
            None,
        ),
        (m("DELETE"), "/v1/profiles/{name}", "/v1/profiles/ghost".into(), Action::ManageProfiles, None, None),
        (m("GET"), "/v1/registries", "/v1/registries".into(), Action::ManageRegistries, None, None),
        (
            m("PUT"),
            "/v1/registries/{host}",
            "/v1/registries/registry.example.com".into(),
            Action::ManageRegistries,
            Some(json!({"username": "u", "password": "p"})),
            None,
        ),
        (
            m("DELETE"),
            "/v1/registries/{host}",
            "/v1/registries/ghost.example.com".into(),
            Action::ManageRegistries,
            None,
            None,
        ),
        (m("GET"), "/v1/admin/backup", "/v1/admin/backup".into(), Action::Backup, None, None),
        (m("GET"), "/v1/secrets", "/v1/secrets".into(), Action::ManageSecrets, None, None),
        (m("GET"), "/v1/secrets/{name}", "/v1/secrets/ghost".into(), Action::ManageSecrets, None, None),
        (
            m("PUT"),
            "/v1/secrets/{name}",
            "/v1/secrets/rbac".into(),
            Action::ManageSecrets,
            Some(json!({"value": "v"})),
            None,
        ),
        (m("DELETE"), "/v1/secrets/{name}", "/v1/secrets/ghost".into(), Action::ManageSecrets, None, None),
        (m("GET"), "/v1/egress", "/v1/egress".into(), Action::ManageEgress, None, None),
        (m("PUT"), "/v1/egress", "/v1/egress".into(), Action::ManageEgress, Some(json!({"allow": null})), None),
        (m("GET"), "/v1/events", "/v1/events".into(), Action::ReadAgents, None, None),
        (m("GET"), "/v1/events/stream", "/v1/events/stream?follow=false".into(), Action::ReadAgents, None, None),
        (
            m("POST"),
            "/v1/modules",
            "/v1/modules".into(),
            Action::WriteModules,
            None,
            Some(std::fs::read(art::KV).unwrap()),
        ),
        (m("GET"), "/v1/modules", "/v1/modules".into(), Action::ReadModules, None, None),
        (m("GET"), "/v1/modules/{digest}", format!("/v1/modules/{kv}"), Action::ReadModules, None, None),
        (m("GET"), "/v1/modules/{digest}/wasm", format!("/v1/modules/{kv}/wasm"), Action::ReadModules, None, None),
        (m("DELETE"), "/v1/modules/{digest}", "/v1/modules/nodigest".into(), Action::WriteModules, None, None),
        (
            m("POST"),
            "/v1/modules/{digest}/tags",
            format!("/v1/modules/{kv}/tags"),
            Action::WriteModules,
            Some(json!({"name": "kv", "tag": "rbac"})),
            None,
        ),
        (
            m("POST"),
            "/v1/agents",
            "/v1/agents".into(),
            Action::WriteAgents,
            Some(json!({"name": "ghost", "module": "nodigest"})),
            None,
        ),
        (m("GET"), "/v1/agents", "/v1/agents".into(), Action::ReadAgents, None, None),
        (m("GET"), "/v1/agents/{name}", "/v1/agents/a1".into(), Action::ReadAgents, None, None),
        (m("DELETE"), "/v1/agents/{name}", "/v1/agents/ghost".into(), Action::WriteAgents, None, None),
        (
            m("PUT"),
            "/v1/agents/{name}/config",
            "/v1/agents/a1/config".into(),
            Action::WriteAgents,
            Some(json!({"config": {"k": "v"}})),
            None,
        ),
        (
            m("POST"),
            "/v1/agents/{name}/upgrade",
            "/v1/agents/ghost/upgrade".into(),
            Action::WriteAgents,
            Some(json!({"module": "nodigest"})),
            None,
        ),
        (m("POST"), "/v1/agents/{name}/rollback", "/v1/agents/a1/rollback".into(), Action::WriteAgents, None, None),
        (m("POST"), "/v1/agents/{name}/stop", "/v1/agents/ghost/stop".into(), Action::WriteAgents, None, None),
        (m("POST"), "/v1/agents/{name}/start", "/v1/agents/ghost/start".into(), Action::WriteAgents, None, None),
        (
            m("POST"),
            "/v1/agents/{name}/invoke",
            "/v1/agents/a1/invoke".into(),
            Action::Invoke,
            None,
            Some(b"whoami".to_vec()),
        ),
        (m("GET"), "/v1/agents/{name}/logs", "/v1/agents/a1/logs".into(), Action::ReadLogs, None, None),
        (
            m("GET"),
            "/v1/agents/{name}/logs/stream",
            "/v1/agents/a1/logs/stream?follow=false".into(),
            Action::ReadLogs,
            None,
            None,
        ),
        (m("GET"), "/v1/workflows", "/v1/workflows".into(), Action::ReadAgents, None, None),
        (m("GET"), "/v1/workflows/{name}", "/v1/workflows/ghost".into(), Action::ReadAgents, None, None),
        (
            m("PUT"),
            "/v1/workflows/{name}",
            "/v1/workflows/ghost".into(),
            Action::WriteAgents,
            Some(json!({"steps": [{"id": "a", "agent": "ghost"}]})),
            None,
        ),
        (m("DELETE"), "/v1/workflows/{name}", "/v1/workflows/ghost".into(), Action::WriteAgents, None, None),
        (m("GET"), "/v1/workflows/{name}/runs", "/v1/workflows/ghost/runs".into(), Action::ReadAgents, None, None),
        (
            m("POST"),
            "/v1/workflows/{name}/runs",
            "/v1/workflows/ghost/runs".into(),
            Action::Invoke,
            Some(json!({"input": 1})),
            None,
        ),
        (
            m("GET"),
            "/v1/workflows/{name}/runs/{id}",
            "/v1/workflows/ghost/runs/r1".into(),
            Action::ReadAgents,
            None,
            None,
        ),
        (
            m("GET"),
            "/v1/workflows/{name}/runs/{id}/steps/{step}/output",
            "/v1/workflows/ghost/runs/r1/steps/a/output".into(),
            Action::ReadAgents,
            None,
            None,
        ),
        (
            m("POST"),
            "/v1/workflows/{name}/runs/{id}/cancel",
            "/v1/workflows/ghost/runs/r1/cancel".into(),
            Action::WriteAgents,
            None,
            None,
        ),
        (
            m("POST"),
            "/v1/workflows/{name}/runs/{id}/resolve",
            "/v1/workflows/ghost/runs/r1/resolve".into(),
            Action::WriteAgents,
            Some(json!({"step": "a", "action": "retry"})),
            None,
        ),
        (m("GET"), "/v1/agents/{name}/deadletters", "/v1/agents/a1/deadletters".into(), Action::ReadAgents, None, None),
        (
            m("DELETE"),
            "/v1/agents/{name}/deadletters/{id}",
            "/v1/agents/a1/deadletters/1-2".into(),
            Action::WriteAgents,
            None,
            None,
        ),
        (
            m("POST"),
            "/v1/agents/{name}/deadletters/{id}/replay",
            "/v1/agents/a1/deadletters/1-2/replay".into(),
            Action::WriteAgents,
            None,
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix_matches_the_table_for_every_role_and_route() {
    let s = Server::start().await;
    s.tenant("t").await;
    let admin = s.admin();
    let ta = s.token(Some("t"), Role::TenantAdmin);
    let kv = s.upload(&ta, art::KV).await;
    s.deploy(&ta, "a1", &kv, json!({})).await;
    let routes = rbac_routes(&kv);

    // The table covers every authenticated route of the OpenAPI document, and every action.
    let doc = s.get_json(&admin, "/v1/openapi.json").await;
    let public = ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if public.contains(&path.as_str()) {
                continue;
            }
            let m = method.to_uppercase();
            assert!(
                routes.iter().any(|(rm, rp, ..)| rm.as_str() == m && *rp == path.as_str()),
                "route {m} {path} is missing from the RBAC test table"
            );
        }
    }
    // And every route of the table is in the document.
    for (m, template, ..) in &routes {
        let op = &doc["paths"][*template][m.as_str().to_lowercase()];
        assert!(op["operationId"].is_string(), "{m} {template} is served but not in the OpenAPI document");
    }
    for a in Action::ALL {
        assert!(routes.iter().any(|r| r.3 == a), "no route exercises {a:?}");
    }
    // The server checks each route's action before its handler runs, from its own table:
    // the same as this one, for every route.
    for (method, template, _, action, ..) in &routes {
        assert_eq!(cortex_host::api::route_action(method, template), Some(*action), "{method} {template}");
    }

    let mut cells = 0;
    for role in Role::ALL {
        let token = match role {
            Role::PlatformAdmin => admin.clone(),
            r => s.token(Some("t"), r),
        };
        for (method, template, path, action, json_body, raw_body) in &routes {
            let mut rb = s.req(method.clone(), path, &token);
            if role == Role::PlatformAdmin {
                rb = rb.header("x-cortex-tenant", "t");
            }
            if let Some(j) = json_body {
                rb = rb.json(j);
            }
            if let Some(b) = raw_body {
                rb = rb.body(b.clone());
            }
            let r = answer(rb.send().await.unwrap()).await;
            let cell = format!("{} {method} {template} ({action:?}): {} {}", role.as_str(), r.status, r.text);
            if action.allowed(role) {
                assert_ne!(r.status, StatusCode::FORBIDDEN, "allowed but refused: {cell}");
                assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{cell}");
                assert!(!r.status.is_server_error(), "{cell}");
            } else {
                assert_eq!(
                    (r.status, r.code.as_str()),
                    (StatusCode::FORBIDDEN, "forbidden"),
                    "not allowed but served: {cell}"
                );
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 4 * routes.len());
    // Refused requests changed nothing: the only tenant created is the platform-admin's.
    let tenants: BTreeSet<String> = s
        .get_json(&admin, "/v1/tenants")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tenants, BTreeSet::from(["t".to_owned(), "made-by-rbac".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cannot_have_more_rights_than_its_creator() {
    let s = Server::start().await;
    s.tenant("t").await;
    let ta = s.token(Some("t"), Role::TenantAdmin);
    for role in ["platform-admin"] {
        let r = answer(s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": role})).send().await.unwrap()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}: {}", r.text);
    }
    // A developer key works as a developer: it may list agents, not read the audit log.
    let r = answer(
        s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": "developer", "name": "ci"})).send().await.unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["key"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get_json(&key, "/v1/agents").await, json!([]));
    let r = answer(s.req(Method::GET, "/v1/audit", &key).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Listing shows the key without its secret.
    let keys = s.get_json(&ta, "/v1/keys").await;
    assert!(keys.to_string().contains(&id) && !keys.to_string().contains(&key), "{keys}");
    // The key's id with another secret is refused, also while the key is in use.
    let forged = format!("ck_{id}_{}", "0".repeat(key.len() - id.len() - 4));
    let r = answer(s.req(Method::GET, "/v1/agents", &forged).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // Revoked: refused at once.
    let r = s.req(Method::DELETE, &format!("/v1/keys/{id}"), &ta).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = answer(s.req(Method::GET, "/v1/agents", &key).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_a_code_and_never_a_5xx() {
    let limit = 300_000usize;
    let s = Server::start_with(|c| c.http.module_limit_bytes = limit).await;
    let dev = s.developer_in("t").await;
    let hello = std::fs::read(art::HELLO).unwrap();
    let mut random = vec![0u8; 50_000];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in &mut random {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut wasm_header_then_junk = b"\0asm\x0d\0\x01\0".to_vec();
    wasm_header_then_junk.extend_from_slice(&random[..1000]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", hello[..hello.len() / 2].to_vec()),
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
        ("wrong world", std::fs::read(art::NOT_AN_AGENT).unwrap()),
        ("random bytes", random),
        ("component header then junk", wasm_header_then_junk),
        ("foreign import", std::fs::read(art::FOREIGN_IMPORT).unwrap()),
        ("oversized", vec![0u8; limit + 1]),
    ];
    for (what, bytes) in cases {
        let r = answer(s.req(Method::POST, "/v1/modules", &dev).body(bytes).send().await.unwrap()).await;
        assert!(r.status.is_client_error(), "{what}: {} {}", r.status, r.text);
        assert!(!r.code.is_empty(), "{what}: no code in {}", r.text);
        assert_eq!(r.content_type, "application/problem+json", "{what}");
        if what == "oversized" {
            assert_eq!((r.status, r.code.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
        }
        if what == "core module" {
            assert_eq!(r.code, "not_a_component");
        }
    }

    // Oversized and chunked (no Content-Length): refused while reading.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/modules HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dev}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    // Stop writing when the server answers and closes; a write error is fine too.
    while sent <= limit + chunk.len() {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if tcp.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "chunked oversized upload: {resp}");
    assert!(resp.contains("\"code\":\"body_too_large\""), "{resp}");

    // Nothing was stored, and the server still works.
    assert_eq!(s.get_json(&dev, "/v1/modules").await, json!([]));
    s.upload(&dev, art::HELLO).await;
}

/// Invocations skip the router (`api::invoke_direct`, the same `Caller::authenticate` and
/// `invoke_request` as the route's handler); what a client sees must not change:
/// the body limit with and without a declared length, credentials, and a name the direct
/// lane does not take (percent-encoded) answered by the router the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_bodies_are_limited_and_both_lanes_answer_alike() {
    let limit = 4096usize;
    let s = Server::start_with(|c| c.http.body_limit_bytes = limit).await;
    let dev = s.developer_in("t").await;
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;

    let at_limit = "a".repeat(limit);
    assert_eq!(s.invoke_ok(&dev, "hello", &at_limit).await, format!("Hello, {at_limit}!"));
    let r =
        answer(s.req(Method::POST, "/v1/agents/hello/invoke", &dev).body("a".repeat(limit + 1)).send().await.unwrap())
            .await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"), "{}", r.text);
    assert_eq!(r.content_type, "application/problem+json");

    // Chunked, no declared length: refused once more than the limit has arrived.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/agents/hello/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {dev}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        let chunk = format!("{:x}\r\n{}\r\n", limit / 2 + 1, "b".repeat(limit / 2 + 1));
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "chunked oversized invocation: {resp}");
    assert!(resp.contains("\"code\":\"body_too_large\""), "{resp}");

    // Both lanes: `h%65llo` is `hello` to the router.
    for path in ["/v1/agents/hello/invoke", "/v1/agents/h%65llo/invoke"] {
        let r = answer(s.req(Method::POST, path, &dev).body("you").send().await.unwrap()).await;
        assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "Hello, you!"), "{path}");
        let r = answer(s.client.post(s.url(path)).body("you").send().await.unwrap()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path}");
        let observer = s.token(Some("t"), Role::Observer);
        let r = answer(s.req(Method::POST, path, &observer).body("you").send().await.unwrap()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{path}");
    }
    for path in ["/v1/agents/nobody/invoke", "/v1/agents/n%6Fbody/invoke"] {
        let r = answer(s.req(Method::POST, path, &dev).body("you").send().await.unwrap()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{path}: {}", r.text);
    }
}

/// `http.request_timeout_ms` bounds an invocation on both lanes (the server's fast path and,
/// for a percent-encoded name, the router): a body that never arrives gets 408, and an agent
/// that sleeps past it ends with its own outcome (504) at that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_ends_by_the_request_timeout() {
    // Compiling the agent takes longer than the timeout: deploy, then restart with it.
    let s = Server::start().await;
    let dev = s.developer_in("t").await;
    let digest = s.upload(&dev, art::HOSTILE).await;
    s.deploy(&dev, "hostile", &digest, json!({})).await;
    let s = Server::start_in(s.stop().await, |c| c.http.request_timeout_ms = 400).await;

    for path in ["/v1/agents/hostile/invoke", "/v1/agents/h%6Fstile/invoke"] {
        for input in ["sleep:10000", "sleep:3000"] {
            let start = Instant::now();
            let r = answer(s.req(Method::POST, path, &dev).body(input).send().await.unwrap()).await;
            assert_eq!(
                (r.status, r.code.as_str()),
                (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
                "{path} {input}: {}",
                r.text
            );
            assert!(start.elapsed() < Duration::from_secs(5), "{path} {input} took {:?}", start.elapsed());
        }

        // Ten bytes announced, none sent.
        let resp = s.unsent_body(&format!("POST {path}"), &dev).await;
        assert!(resp.starts_with("HTTP/1.1 408"), "{path}: {resp}");
        assert!(resp.contains("\"code\":\"request_timeout\""), "{path}: {resp}");
    }
    assert_eq!(s.invoke_ok(&dev, "hostile", "echo:still up").await, "still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_quota_is_held_to_it() {
    let s = Server::start().await;
    let q = Quotas { invocations_per_second: 5, burst: 5, ..Quotas::default() };
    s.tenant_with("t", Some(q)).await;
    let dev = s.token(Some("t"), Role::Developer);
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "a", &kv, json!({})).await;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let rb = s.req(Method::POST, "/v1/agents/a/invoke", &dev).body("whoami");
        tasks.push(tokio::spawn(async move { answer(rb.send().await.unwrap()).await }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(r.code, "rate_limited");
                let retry: u64 = r.retry_after.as_deref().expect("Retry-After on 429").parse().unwrap();
                assert!(retry >= 1, "{retry}");
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let max = 5.0 + elapsed * 5.0 + 1.0;
    assert!(ok >= 5, "the burst of 5 must pass: {ok}");
    assert!(f64::from(ok) <= max, "{ok} invocations passed in {elapsed:.2}s, more than {max:.1}");
    assert_eq!(ok + limited, 30);
    // Raised quotas hold at once: the new burst, less what was just spent.
    let raised = Quotas { invocations_per_second: 1000, burst: 100, ..Quotas::default() };
    let r = s.req(Method::PATCH, "/v1/tenants/t", &s.admin()).json(&json!({ "quotas": raised })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for i in 0..50 {
        let (status, _) = s.invoke(&dev, "a", "whoami").await;
        assert_eq!(status, StatusCode::OK, "invocation {i} after the quota was raised");
    }
    // Another tenant is not affected.
    let other = s.developer_in("other").await;
    let kv2 = s.upload(&other, art::KV).await;
    s.deploy(&other, "a", &kv2, json!({})).await;
    s.invoke_ok(&other, "a", "whoami").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_429_and_leave_nothing_half_done() {
    let s = Server::start().await;
    let kv_size = std::fs::metadata(art::KV).unwrap().len();
    let q = Quotas { agents: 1, module_bytes: kv_size + 1000, ..Quotas::default() };
    s.tenant_with("t", Some(q)).await;
    let dev = s.token(Some("t"), Role::Developer);
    let kv = s.upload(&dev, art::KV).await;
    // Re-uploading the same bytes is idempotent, not counted twice.
    assert_eq!(s.upload(&dev, art::KV).await, kv);

    // Module bytes: the counter does not fit.
    let r = answer(
        s.req(Method::POST, "/v1/modules", &dev).body(std::fs::read(art::COUNTER).unwrap()).send().await.unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "module_quota"), "{}", r.text);
    assert!(r.retry_after.is_some(), "Retry-After on 429");
    let modules = s.get_json(&dev, "/v1/modules").await;
    assert_eq!(modules.as_array().unwrap().len(), 1, "{modules}");
    assert_eq!(modules[0]["digest"], kv.as_str());

    // Agents: one only.
    s.deploy(&dev, "one", &kv, json!({})).await;
    let r = answer(
        s.req(Method::POST, "/v1/agents", &dev).json(&json!({"name": "two", "module": kv})).send().await.unwrap(),
    )
    .await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "agent_quota"), "{}", r.text);
    assert!(r.retry_after.is_some(), "Retry-After on 429");
    let r = answer(s.req(Method::GET, "/v1/agents/two", &dev).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let agents = s.get_json(&dev, "/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    let r = answer(s.req(Method::POST, "/v1/agents/two/invoke", &dev).body("whoami").send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Limits above the tenant's caps are refused too.
    let too_much = json!({"name": "three", "module": kv, "limits": {"fuel": Quotas::default().max_fuel + 1}});
    let r = answer(s.req(Method::POST, "/v1/agents", &dev).json(&too_much).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_on_the_same_data_dir() {
    let s = Server::start().await;
    s.tenant("acme").await;
    let ta = s.token(Some("acme"), Role::TenantAdmin);
    let kv = s.upload(&ta, art::KV).await;
    s.deploy(&ta, "notes", &kv, json!({ "greeting": "hi" })).await;
    s.deploy(&ta, "paused", &kv, json!({})).await;
    assert_eq!(s.req(Method::POST, "/v1/agents/paused/stop", &ta).send().await.unwrap().status(), StatusCode::OK);
    let rev = s.invoke_ok(&ta, "notes", r#"put:notes/n1={"a":1}"#).await;
    assert!(rev.parse::<u64>().is_ok(), "{rev}");
    let r =
        answer(s.req(Method::POST, "/v1/keys", &ta).json(&json!({"role": "developer"})).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let key = r.body["key"].as_str().unwrap().to_owned();
    let audit_before = s.get_json(&ta, "/v1/audit").await.as_array().unwrap().len();
    assert!(audit_before >= 4, "{audit_before}");

    let dir = s.stop().await;
    let s = Server::start_in(dir, |_| {}).await;

    // The same token still verifies (the secret persisted), the tenant and its objects are back.
    let t = s.get_json(&ta, "/v1/tenants/acme").await;
    assert_eq!(t["name"], "acme");
    let modules = s.get_json(&ta, "/v1/modules").await;
    assert_eq!(modules[0]["digest"], kv.as_str());
    assert_eq!(s.get_json(&ta, "/v1/agents/notes").await["config"]["greeting"], "hi");
    assert_eq!(s.invoke_ok(&ta, "notes", "config:greeting").await, "hi");
    assert_eq!(s.invoke_ok(&ta, "notes", "get:notes/n1").await, r#"{"a":1}"#);
    let r = answer(s.req(Method::POST, "/v1/agents/paused/invoke", &ta).body("whoami").send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::CONFLICT, "agent_stopped"), "a stopped agent stays stopped");
    // The API key works.
    assert_eq!(s.get_json(&key, "/v1/agents").await.as_array().unwrap().len(), 2);
    // The audit log kept its events.
    let audit = s.get_json(&ta, "/v1/audit").await;
    assert!(audit.as_array().unwrap().len() >= audit_before, "{audit}");
    assert!(audit.to_string().contains("POST /v1/agents"), "{audit}");
    // The module record points at bytes that still exist: a new agent can use it.
    s.deploy(&ta, "fresh", &kv, json!({})).await;
    s.invoke_ok(&ta, "fresh", "whoami").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_headers_slowly_is_disconnected() {
    let s = Server::start_with(|c| c.http.header_timeout_ms = 500).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let start = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    let elapsed = start.elapsed();
    assert!(read.is_ok(), "the server kept a half-sent request open for 5 s");
    assert!(elapsed >= Duration::from_millis(400), "closed after {elapsed:?}, before the header timeout");
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "answered an incomplete request: {text}");
    // A keep-alive connection left idle after a request is closed by the same timeout.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "an idle keep-alive connection stayed open for 5 s: {text}");
    assert!(text.starts_with("HTTP/1.1 200 OK") && text.ends_with("ok"), "{text}");
    // The server still serves.
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_until_one_closes() {
    let s = Server::start_with(|c| {
        c.http.max_connections = 2;
        c.http.header_timeout_ms = 60_000;
    })
    .await;
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&buf[..n]));
        held.push(tcp);
    }
    // A third connection is left in the backlog: its request gets no answer...
    let mut third = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "a connection past the limit was served: {early:?}");
    // ...until one of the two closes.
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_served_route() {
    let s = Server::start().await;
    s.tenant("t").await;
    let admin = s.admin();
    let doc: Value = s.client.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut n = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let concrete: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "nothing-here" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            // The event stream follows the feed forever unless told to stop when caught up.
            let concrete = if concrete.ends_with("/stream") { format!("{concrete}?follow=false") } else { concrete };
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut rb = s.req(m.clone(), &concrete, &admin).header("x-cortex-tenant", "t");
            if op["requestBody"]["content"]["application/json"].is_object() {
                rb = rb.json(&json!({}));
            } else if op.get("requestBody").is_some() {
                rb = rb.body(b"x".to_vec());
            }
            let r = answer(rb.send().await.unwrap()).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}: {}", r.text);
            assert_ne!(r.code, "no_route", "{m} {path} is documented but not served");
            assert!(!r.status.is_server_error(), "{m} {path}: {} {}", r.status, r.text);
            n += 1;
        }
        // And a method it does not document is not served there.
        for m in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            if ops.get(m.as_str().to_lowercase()).is_some() {
                continue;
            }
            let concrete = path.replace("{name}", "nothing-here").replace(['{', '}'], "");
            let r = answer(s.req(m.clone(), &concrete, &admin).send().await.unwrap()).await;
            assert_eq!(
                (r.status, r.code.as_str()),
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
                "{m} {path} is served but not documented: {}",
                r.text
            );
        }
    }
    assert!(n >= 28, "only {n} operations documented");
    for path in ["/v1/nope", "/v2/agents", "/v1/agents/a/b/c", "/"] {
        let r = answer(s.req(Method::GET, path, &admin).send().await.unwrap()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::NOT_FOUND, "no_route"), "{path}: {}", r.text);
        assert_eq!(r.content_type, "application/problem+json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_are_audited_and_each_tenant_admin_sees_only_its_own() {
    let s = Server::start().await;
    s.tenant("a").await;
    s.tenant("b").await;
    let admin = s.admin();
    let (ta_a, ta_b) = (s.token(Some("a"), Role::TenantAdmin), s.token(Some("b"), Role::TenantAdmin));
    let kv_a = s.upload(&ta_a, art::KV).await;
    s.deploy(&ta_a, "agent-a", &kv_a, json!({})).await;
    s.invoke_ok(&ta_a, "agent-a", "whoami").await;
    let kv_b = s.upload(&ta_b, art::KV).await;
    s.deploy(&ta_b, "agent-b", &kv_b, json!({})).await;
    // A refused mutating call is audited with its outcome.
    let dev_a = s.token(Some("a"), Role::Developer);
    let r = s.req(Method::POST, "/v1/keys", &dev_a).json(&json!({"role": "observer"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let events = s.get_json(&ta_a, "/v1/audit").await;
    let events = events.as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["tenant"] == "a"), "tenant-admin of a sees other tenants: {events:?}");
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"POST /v1/modules"), "{actions:?}");
    assert!(actions.contains(&"POST /v1/agents"), "{actions:?}");
    assert!(!actions.iter().any(|a| a.ends_with("/invoke")), "invocations are not audited: {actions:?}");
    assert!(
        events.iter().any(|e| e["action"] == "POST /v1/keys" && e["outcome"] == 403 && e["actor"] == "test-developer"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["action"] == "POST /v1/agents" && e["outcome"] == 201 && e["target"] == "/v1/agents")
    );
    // Asking for another tenant changes nothing.
    let other = s.get_json(&ta_a, "/v1/audit?tenant=b").await;
    assert!(other.as_array().unwrap().iter().all(|e| e["tenant"] == "a"), "{other}");
    // Read-only calls are not audited.
    assert!(!actions.iter().any(|a| a.starts_with("GET")), "{actions:?}");

    // The platform-admin sees both tenants, and filters.
    let all = s.get_json(&admin, "/v1/audit").await;
    let tenants: BTreeSet<&str> = all.as_array().unwrap().iter().map(|e| e["tenant"].as_str().unwrap()).collect();
    assert!(tenants.contains("a") && tenants.contains("b"), "{tenants:?}");
    assert!(all.as_array().unwrap().iter().any(|e| e["action"] == "POST /v1/tenants" && e["target"] == "/v1/tenants"));
    let only_b = s.get_json(&admin, "/v1/audit?tenant=b").await;
    assert!(!only_b.as_array().unwrap().is_empty());
    assert!(only_b.as_array().unwrap().iter().all(|e| e["tenant"] == "b"), "{only_b}");

    // Developers and observers may not read the audit log.
    for role in [Role::Developer, Role::Observer] {
        let r = answer(s.req(Method::GET, "/v1/audit", &s.token(Some("a"), role)).send().await.unwrap()).await;
        assert_eq!((r.status, r.code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{}", role.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_need_no_credentials() {
    let s = Server::start().await;
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), want);
    }
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // And every API route does.
    let r = answer(s.client.get(s.url("/v1/agents")).send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_cannot_exceed_the_module_bytes_quota() {
    let s = Server::start().await;
    let kv_size = std::fs::metadata(art::KV).unwrap().len();
    let quota = kv_size + 1000;
    s.tenant_with("t", Some(Quotas { module_bytes: quota, ..Quotas::default() })).await;
    let dev = s.token(Some("t"), Role::Developer);
    // Five different components at once: any one fits, all five do not.
    let mut uploads = Vec::new();
    for path in [art::KV, art::COUNTER, art::HOSTILE, art::HELLO, art::COMPUTE] {
        let rb = s.req(Method::POST, "/v1/modules", &dev).body(std::fs::read(path).unwrap());
        uploads.push(tokio::spawn(async move { answer(rb.send().await.unwrap()).await }));
    }
    for u in uploads {
        let r = u.await.unwrap();
        assert!(matches!(r.status.as_u16(), 201 | 429), "{} {}", r.status, r.text);
    }
    let modules = s.get_json(&dev, "/v1/modules").await;
    let used: u64 = modules.as_array().unwrap().iter().map(|m| m["size"].as_u64().unwrap()).sum();
    let n = modules.as_array().unwrap().len();
    assert!(used <= quota, "{n} modules take {used} bytes, over the quota of {quota}");
}

/// Deploy `{prefix}0..{prefix}7` of module `kv` at once; how many were created (the others
/// must be refused with `agent_quota`).
async fn deploy_eight_at_once(s: &Server, dev: &str, kv: &str, prefix: &str) -> usize {
    let mut deploys = Vec::new();
    for i in 0..8 {
        let rb = s.req(Method::POST, "/v1/agents", dev).json(&json!({"name": format!("{prefix}{i}"), "module": kv}));
        deploys.push(tokio::spawn(async move { answer(rb.send().await.unwrap()).await }));
    }
    let mut created = 0;
    for d in deploys {
        let r = d.await.unwrap();
        match r.status.as_u16() {
            201 => created += 1,
            429 => assert_eq!(r.code, "agent_quota"),
            _ => panic!("{} {}", r.status, r.text),
        }
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deploys_cannot_exceed_the_agents_quota() {
    let s = Server::start().await;
    s.tenant_with("t", Some(Quotas { agents: 1, ..Quotas::default() })).await;
    let dev = s.token(Some("t"), Role::Developer);
    let kv = s.upload(&dev, art::KV).await;
    let created = deploy_eight_at_once(&s, &dev, &kv, "a").await;
    let agents = s.get_json(&dev, "/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), created);
    assert_eq!(created, 1, "{created} agents deployed at once under a quota of 1");

    // A delete gives the place back, once: the count follows deletes too.
    let name = agents[0]["name"].as_str().unwrap().to_owned();
    let r = answer(s.req(Method::DELETE, &format!("/v1/agents/{name}"), &dev).send().await.unwrap()).await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text);
    let created = deploy_eight_at_once(&s, &dev, &kv, "b").await;
    assert_eq!(created, 1, "{created} agents deployed after a delete under a quota of 1");
    assert_eq!(s.get_json(&dev, "/v1/agents").await.as_array().unwrap().len(), 1);
}

/// Files under the data dir whose name starts with `digest` (its bytes and its artifact).
fn files_of(dir: &std::path::Path, digest: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(digest) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Bytes of every file under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        total += if p.is_dir() { du(&p) } else { e.metadata().unwrap().len() };
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_module_frees_its_bytes_artifact_and_loaded_module() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let kv = s.upload(&dev, art::KV).await;
    let files = files_of(s.dir.path(), &kv);
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, [format!("{kv}.cwasm"), format!("{kv}.wasm")], "{files:?}");
    assert!(s.state.agents.modules.is_cached(&kv));

    let r = s.req(Method::DELETE, &format!("/v1/modules/{kv}"), &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(files_of(s.dir.path(), &kv), Vec::<std::path::PathBuf>::new());
    assert!(!s.state.agents.modules.is_cached(&kv));
    assert_eq!(s.get_json(&dev, "/v1/modules").await, json!([]));
    // Uploaded again, it is whole again and runs.
    assert_eq!(s.upload(&dev, art::KV).await, kv);
    s.deploy(&dev, "svc", &kv, json!({})).await;
    assert_eq!(s.invoke_ok(&dev, "svc", "config:x").await, "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_delete_cycles_under_a_small_quota_leave_the_data_dir_as_it_was() {
    let s = Server::start().await;
    let paths = [art::KV, art::COUNTER, art::HELLO];
    let largest = paths.iter().map(|p| std::fs::metadata(p).unwrap().len()).max().unwrap();
    // Room for one module at a time.
    s.tenant_with("t", Some(Quotas { module_bytes: largest, ..Quotas::default() })).await;
    let dev = s.token(Some("t"), Role::Developer);
    let modules = s.dir.path().join("modules");
    let cache = s.dir.path().join("cache");
    let before = (du(&modules), du(&cache));
    for round in 0..2 {
        for path in paths {
            let d = s.upload(&dev, path).await;
            assert!(du(&cache) > before.1, "round {round}: {path} was not cached");
            let r = s.req(Method::DELETE, &format!("/v1/modules/{d}"), &dev).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            assert_eq!((du(&modules), du(&cache)), before, "round {round}: {path} left files behind");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_shared_by_two_tenants_is_freed_with_the_last_record() {
    let s = Server::start().await;
    let a = s.developer_in("a").await;
    let b = s.developer_in("b").await;
    let kv = s.upload(&a, art::KV).await;
    assert_eq!(s.upload(&b, art::KV).await, kv);
    let files = files_of(s.dir.path(), &kv);
    assert_eq!(files.len(), 2, "{files:?}");

    // `a` deletes its record: `b`'s still names the bytes, so they stay and `b` deploys.
    let r = s.req(Method::DELETE, &format!("/v1/modules/{kv}"), &a).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(files_of(s.dir.path(), &kv), files);
    s.deploy(&b, "svc", &kv, json!({})).await;
    assert_eq!(s.invoke_ok(&b, "svc", "config:x").await, "none");

    // Deleting tenant `b` deletes its last record: the files go.
    let r = s.req(Method::DELETE, "/v1/tenants/b", &s.admin()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(files_of(s.dir.path(), &kv), Vec::<std::path::PathBuf>::new());
    assert!(!s.state.agents.modules.is_cached(&kv));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_outlasts_the_compile_bound_is_refused_and_its_compile_stopped() {
    // `hello` deployed and compiled with the default bounds first, so that checking the
    // host still serves depends on no bound.
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hi", &hello, json!({})).await;
    let dir = s.stop().await;
    // A compile bomb within every static bound, against a 300 ms compile timeout (memory
    // out of reach): the upload is refused, the compile child killed, the host serves on.
    let s = Server::start_in(dir, |c| {
        c.engine.compile_timeout = Duration::from_millis(300);
        c.engine.compile.memory_bytes = 64 << 30;
    })
    .await;
    let bomb = cortex_artifacts::bombs::quadratic(4_000, 10_000);
    let upload = s.req(Method::POST, "/v1/modules", &dev).body(bomb).send();
    let (r, seen) = crate::common::watching_children(upload).await;
    let r = answer(r.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "compile_timeout"), "{}", r.text);
    crate::common::assert_children_gone(&seen);
    let modules = s.get_json(&dev, "/v1/modules").await;
    assert_eq!(modules.as_array().unwrap().len(), 1, "{modules}");
    assert_eq!(modules[0]["digest"], hello.as_str());
    assert_eq!(s.invoke_ok(&dev, "hi", "again").await, "Hello, again!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_forgets_on_change_is_warned_at_upload_and_its_watches_refused() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let upload = |path: &'static str| {
        let r = s.req(Method::POST, "/v1/modules", &dev).body(std::fs::read(path).unwrap());
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let partial = upload(art::NO_ON_CHANGE).await;
    assert_eq!(partial["world"], "agent", "{partial}");
    assert_eq!(partial["warnings"], json!(["exports handle but not on-change; watches will be refused"]), "{partial}");
    // The warning stays with the module.
    let digest = partial["digest"].as_str().unwrap();
    assert_eq!(s.get_json(&dev, &format!("/v1/modules/{digest}")).await["warnings"], partial["warnings"]);
    // And it is what happens: a deploy with watches is refused, one without runs.
    let body = json!({ "name": "w", "module": digest, "watches": [{ "collection": "c", "prefix": "" }] });
    let r = answer(s.req(Method::POST, "/v1/agents", &dev).json(&body).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("on-change"), "{}", r.text);
    s.deploy(&dev, "plain", digest, json!({})).await;
    assert_eq!(s.invoke(&dev, "plain", "x").await.0, StatusCode::NO_CONTENT);
    // A full agent and a tool get no warning.
    for path in [art::KV, art::HELLO] {
        let m = upload(path).await;
        assert!(m.get("warnings").is_none(), "{m}");
    }
}
