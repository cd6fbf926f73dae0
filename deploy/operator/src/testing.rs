//! An in-memory Kubernetes API for tests: a `kube::Client` whose requests are answered
//! from a map of objects kept by path. It serves what the reconcilers call: `GET` and
//! `PATCH` (merge and JSON patch) of objects and their `status` and `scale`
//! subresources, and `POST`/`PATCH` of Events (kept for assertions). An object being
//! deleted ([`FakeKube::delete`]) gets a `deletionTimestamp` while it has finalizers and
//! is removed when a patch leaves it none, as the API server does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// The in-memory API's state; clone it to keep a handle after making the client.
#[derive(Clone, Debug, Default)]
pub struct FakeKube {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Value>,
    events: Vec<Value>,
    requests: Vec<String>,
    version: u64,
}

impl FakeKube {
    /// An empty API and a client of it (default namespace `default`).
    pub fn new() -> (Self, kube::Client) {
        let fake = Self::default();
        let handle = fake.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let handle = handle.clone();
            async move { Ok::<_, Infallible>(handle.serve(req).await) }
        });
        (fake, kube::Client::new(svc, "default"))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Store `obj` at `path` (e.g. `/apis/cortex.dev/v1alpha1/namespaces/ns/agents/a`).
    pub fn put(&self, path: &str, mut obj: Value) {
        let mut s = self.state();
        s.version += 1;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.objects.insert(path.to_owned(), obj);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state().objects.get(path).cloned()
    }

    /// Delete the object at `path` as the API server does: a `deletionTimestamp` while it
    /// has finalizers, else gone.
    pub fn delete(&self, path: &str) {
        let mut s = self.state();
        let Some(o) = s.objects.get_mut(path) else { return };
        let finalizers = o["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if finalizers {
            o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        } else {
            s.objects.remove(path);
        }
    }

    /// The Events published so far.
    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    /// The requests served so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let json_patch = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json-patch"));
        let body = match req.into_body().collect_bytes().await {
            Ok(b) => b,
            Err(e) => return answer(StatusCode::BAD_REQUEST, status_body(400, "BadRequest", &e.to_string())),
        };
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut s = self.state();
        s.requests.push(format!("{method} {path}"));
        if path.contains("/events") {
            s.events.push(body.clone());
            return answer(StatusCode::CREATED, body);
        }
        let (object_path, sub) = match path.rsplit_once('/') {
            Some((p, "status")) if s.objects.contains_key(p) => (p.to_owned(), Some("status")),
            Some((p, "scale")) if s.objects.contains_key(p) => (p.to_owned(), Some("scale")),
            _ => (path.clone(), None),
        };
        let Some(obj) = s.objects.get(&object_path).cloned() else {
            return answer(StatusCode::NOT_FOUND, status_body(404, "NotFound", &format!("{path} not found")));
        };
        match (method, sub) {
            (Method::GET, Some("scale")) => answer(StatusCode::OK, scale_of(&obj)),
            (Method::GET, _) => answer(StatusCode::OK, obj),
            (Method::PATCH, sub) => {
                let mut next = obj.clone();
                let patch = match sub {
                    Some("scale") => json!({ "spec": { "replicas": body["spec"]["replicas"] } }),
                    Some(_) => json!({ "status": body["status"] }),
                    None => body,
                };
                if json_patch {
                    // As the API server does: `test` of null passes on a missing path.
                    let patch = match patch {
                        Value::Array(ops) => Value::Array(
                            ops.into_iter()
                                .filter(|op| {
                                    let missing = op["path"].as_str().is_some_and(|p| next.pointer(p).is_none());
                                    !(op["op"] == "test" && op["value"].is_null() && missing)
                                })
                                .collect(),
                        ),
                        other => other,
                    };
                    let p: json_patch::Patch = match serde_json::from_value(patch) {
                        Ok(p) => p,
                        Err(e) => {
                            return answer(StatusCode::BAD_REQUEST, status_body(400, "BadRequest", &e.to_string()));
                        }
                    };
                    if let Err(e) = json_patch::patch(&mut next, &p) {
                        return answer(StatusCode::UNPROCESSABLE_ENTITY, status_body(422, "Invalid", &e.to_string()));
                    }
                } else {
                    json_patch::merge(&mut next, &patch);
                }
                s.version += 1;
                next["metadata"]["resourceVersion"] = json!(s.version.to_string());
                let deleting = !next["metadata"]["deletionTimestamp"].is_null();
                let finalizers = next["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
                if deleting && !finalizers {
                    s.objects.remove(&object_path);
                } else {
                    s.objects.insert(object_path, next.clone());
                }
                answer(StatusCode::OK, if sub == Some("scale") { scale_of(&next) } else { next })
            }
            _ => answer(StatusCode::METHOD_NOT_ALLOWED, status_body(405, "MethodNotAllowed", &path)),
        }
    }
}

/// The `autoscaling/v1` Scale of a Deployment-like object.
fn scale_of(obj: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": { "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"] },
        "spec": { "replicas": obj["spec"]["replicas"] },
        "status": { "replicas": obj["spec"]["replicas"] },
    })
}

/// A `Status` object as the API server answers errors with.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message })
}

fn answer(status: StatusCode, body: Value) -> Response<Body> {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r
}
