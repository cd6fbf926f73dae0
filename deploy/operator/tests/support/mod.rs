//! A fake Cortex API on 127.0.0.1 for the reconcile tests: keeps tenants, profiles,
//! modules and agents the way the real API shows them, records every call, and answers
//! the next calls matching a prefix with an injected error.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Default)]
pub struct State {
    pub tenants: BTreeMap<String, Value>,
    pub profiles: BTreeMap<(String, String), Value>,
    pub modules: BTreeSet<(String, String)>,
    pub agents: BTreeMap<(String, String), Value>,
    pub cluster: Value,
    pub calls: Vec<String>,
    /// (call prefix, status, code): the next call starting with the prefix gets it.
    pub inject: VecDeque<(String, u16, String)>,
}

#[derive(Clone)]
pub struct FakeCortex {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

fn problem(status: u16, code: &str) -> Response {
    let s = StatusCode::from_u16(status).unwrap();
    (
        s,
        axum::Json(
            json!({ "type": "x", "title": "x", "status": status, "detail": format!("fake {code}"), "code": code }),
        ),
    )
        .into_response()
}

impl FakeCortex {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State { cluster: json!({ "nodes": [] }), ..State::default() }));
        let st = state.clone();
        let app = axum::Router::new().fallback(move |m: Method, uri: Uri, h: HeaderMap, body: Bytes| {
            let st = st.clone();
            async move { handle(&st, m, uri.path(), &h, body) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Calls made since `from` (an index from an earlier `calls().len()`), excluding GETs.
    pub fn writes_since(&self, from: usize) -> Vec<String> {
        self.calls()[from..].iter().filter(|c| !c.starts_with("GET ")).cloned().collect()
    }

    pub fn inject(&self, prefix: &str, status: u16, code: &str) {
        self.state.lock().unwrap().inject.push_back((prefix.into(), status, code.into()));
    }

    pub fn agent(&self, tenant: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().agents.get(&(tenant.into(), name.into())).cloned()
    }

    pub fn set_agent_field(&self, tenant: &str, name: &str, field: &str, v: Value) {
        let mut s = self.state.lock().unwrap();
        s.agents.get_mut(&(tenant.into(), name.into())).unwrap()[field] = v;
    }

    pub fn tenant(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().tenants.get(name).cloned()
    }

    pub fn profiles(&self, tenant: &str) -> Vec<String> {
        self.state.lock().unwrap().profiles.keys().filter(|(t, _)| t == tenant).map(|(_, n)| n.clone()).collect()
    }
}

fn handle(st: &Mutex<State>, m: Method, path: &str, h: &HeaderMap, body: Bytes) -> Response {
    let mut s = st.lock().unwrap();
    let call = format!("{m} {path}");
    s.calls.push(call.clone());
    if let Some(i) = s.inject.iter().position(|(p, _, _)| call.starts_with(p.as_str())) {
        let (_, status, code) = s.inject.remove(i).unwrap();
        return problem(status, &code);
    }
    let tenant = h.get("x-cortex-tenant").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (m.as_str(), parts.as_slice()) {
        ("GET", ["v1", "cluster"]) => axum::Json(s.cluster.clone()).into_response(),
        ("POST", ["v1", "tenants"]) => {
            let name = json["name"].as_str().unwrap().to_owned();
            if s.tenants.contains_key(&name) {
                return problem(409, "tenant_exists");
            }
            let mut quotas = json!({ "invocations_per_second": 200, "burst": 400, "agents": 100 });
            json_patch::merge(&mut quotas, &json["quotas"]);
            let t = json!({ "name": name, "quotas": quotas });
            s.tenants.insert(name, t.clone());
            (StatusCode::CREATED, axum::Json(t)).into_response()
        }
        ("GET", ["v1", "tenants", t]) => match s.tenants.get(*t) {
            Some(v) => axum::Json(v.clone()).into_response(),
            None => problem(404, "not_found"),
        },
        ("PATCH", ["v1", "tenants", t]) => match s.tenants.get_mut(*t) {
            Some(v) => {
                json_patch::merge(&mut v["quotas"], &json["quotas"]);
                axum::Json(v.clone()).into_response()
            }
            None => problem(404, "not_found"),
        },
        ("DELETE", ["v1", "tenants", t]) => {
            let t = t.to_string();
            if s.tenants.remove(&t).is_none() {
                return problem(404, "not_found");
            }
            s.agents.retain(|(tt, _), _| *tt != t);
            s.profiles.retain(|(tt, _), _| *tt != t);
            StatusCode::NO_CONTENT.into_response()
        }
        _ if !s.tenants.contains_key(&tenant) => problem(404, "tenant_not_found"),
        ("GET", ["v1", "profiles"]) => {
            let list: Vec<Value> =
                s.profiles.iter().filter(|((t, _), _)| *t == tenant).map(|(_, v)| v.clone()).collect();
            axum::Json(list).into_response()
        }
        ("PUT", ["v1", "profiles", n]) => {
            let v = json!({ "tenant": tenant, "name": n, "limits": json["limits"], "max_concurrency": json["max_concurrency"] });
            s.profiles.insert((tenant.clone(), n.to_string()), v.clone());
            axum::Json(v).into_response()
        }
        ("DELETE", ["v1", "profiles", n]) => {
            s.profiles.remove(&(tenant.clone(), n.to_string()));
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["v1", "modules"]) => {
            let digest = hex::encode(Sha256::digest(&body));
            s.modules.insert((tenant.clone(), digest.clone()));
            (StatusCode::CREATED, axum::Json(json!({ "digest": digest }))).into_response()
        }
        ("GET", ["v1", "agents", n]) => match s.agents.get(&(tenant.clone(), n.to_string())) {
            Some(v) => axum::Json(v.clone()).into_response(),
            None => problem(404, "not_found"),
        },
        ("POST", ["v1", "agents"]) => {
            let name = json["name"].as_str().unwrap().to_owned();
            let module = json["module"].as_str().unwrap().to_owned();
            if !s.modules.contains(&(tenant.clone(), module.clone())) {
                return problem(404, "module_not_found");
            }
            if s.agents.contains_key(&(tenant.clone(), name.clone())) {
                return problem(409, "agent_exists");
            }
            let or = |k: &str, d: Value| if json[k].is_null() { d } else { json[k].clone() };
            let mut limits = json!({ "fuel": null, "memory_bytes": null, "timeout_ms": null });
            json_patch::merge(&mut limits, &json["limits"]);
            let v = json!({
                "tenant": tenant, "name": name, "module": module, "config": or("config", json!({})),
                "limits": limits, "max_concurrency": or("max_concurrency", json!(16)),
                "queue": or("queue", json!(64)), "queue_timeout_ms": or("queue_timeout_ms", json!(1000)),
                "watches": or("watches", json!([])), "subscriptions": or("subscriptions", json!([])),
                "profile": json["profile"], "status": "running", "health": "healthy", "circuit": "closed",
            });
            s.agents.insert((tenant.clone(), name), v.clone());
            (StatusCode::CREATED, axum::Json(v)).into_response()
        }
        ("POST", ["v1", "agents", n, "upgrade"]) => {
            let module = json["module"].as_str().unwrap().to_owned();
            if !s.modules.contains(&(tenant.clone(), module.clone())) {
                return problem(404, "module_not_found");
            }
            match s.agents.get_mut(&(tenant.clone(), n.to_string())) {
                Some(v) => {
                    v["module"] = json!(module);
                    if !json["config"].is_null() {
                        v["config"] = json["config"].clone();
                    }
                    axum::Json(v.clone()).into_response()
                }
                None => problem(404, "not_found"),
            }
        }
        ("DELETE", ["v1", "agents", n]) => match s.agents.remove(&(tenant.clone(), n.to_string())) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => problem(404, "not_found"),
        },
        _ => problem(404, "no_route"),
    }
}
