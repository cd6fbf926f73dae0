//! OpenTelemetry export over OTLP/HTTP, received by a real OTLP receiver in this process
//! (protobuf decoded with `opentelemetry-proto`): the span tree of an HTTP invocation that
//! calls a second agent, which sends a message to a third; W3C `traceparent` in and out;
//! the trace id in problem bodies; change deliveries linked to the write; workflow steps
//! linked to the request that started the run; egress requests as HTTP client spans (and
//! `traceparent` sent to the destination only when configured); `tracestate` passed
//! through; deliveries on another node of a cluster linked through the shared store; and
//! no tenant data in any span.
//!
//! The OpenTelemetry layer is installed in this process's subscriber here: nextest runs
//! each test in a process of its own, so no other test's provider is involved.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use cortex_artifacts as art;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::messaging::until;
use crate::server::Server;

/// Spans received by the test's OTLP receiver, with the service name of their resource.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`. Returns its base URL.
async fn receiver(spans: Received) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let spans = spans.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut got = spans.lock().unwrap();
                for rs in req.resource_spans {
                    let service =
                        rs.resource.as_ref().and_then(|r| attr(&r.attributes, "service.name")).unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            got.push((service.clone(), s));
                        }
                    }
                }
                (axum::http::StatusCode::OK, Vec::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn value_text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).map(value_text)
}

fn find<'a>(spans: &'a [Span], what: &str, f: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| f(s)).collect();
    assert_eq!(found.len(), 1, "one span {what}, got {}: {:#?}", found.len(), names(spans));
    found[0]
}

fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|s| format!("{} {}", hex(&s.trace_id), s.name)).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_child(child: &Span, parent: &Span) -> bool {
    child.trace_id == parent.trace_id && child.parent_span_id == parent.span_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_that_calls_and_sends_is_one_linked_trace_without_tenant_data() {
    assert!(cortex_host::telemetry::otel::init_subscriber(), "this process has no subscriber yet");
    let received: Received = Arc::default();
    let endpoint = receiver(received.clone()).await;
    let s = Server::start_with(|cfg| {
        cfg.telemetry.endpoint = Some(endpoint.clone());
        cfg.telemetry.service_name = "cortex-test".into();
        cfg.telemetry.resource_attributes.insert("deployment.environment".into(), "test".into());
    })
    .await;
    let dev = s.developer_in("acme").await;
    let m = s.upload(&dev, art::MESSENGER).await;
    for a in ["a", "b", "c"] {
        s.deploy(&dev, a, &m, json!({})).await;
    }

    // The caller's trace: the request span is its child.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let marker = "SECRET-INPUT-7f3a";
    let resp = s
        .req(Method::POST, "/v1/agents/a/invoke", &dev)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .body(format!("call:b:send:c:{marker}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tp = resp.headers().get("traceparent").expect("a traceparent in the response").to_str().unwrap().to_owned();
    assert!(tp.starts_with(&format!("00-{trace}-")), "the response continues the caller's trace: {tp}");
    assert_eq!(resp.text().await.unwrap(), "sent");

    // c got the message (its document holds the marker; reading it returns the marker).
    until("c to receive the message", || async {
        let (_, out) = s.invoke(&dev, "c", "inbox").await;
        out.contains(marker).then_some(())
    })
    .await;

    // A problem body quotes the request's trace id.
    let resp = s.req(Method::POST, "/v1/agents/nobody/invoke", &dev).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let tp = resp.headers().get("traceparent").unwrap().to_str().unwrap().to_owned();
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["trace_id"].as_str(), tp.split('-').nth(1), "{problem}");

    tokio::task::spawn_blocking(cortex_host::telemetry::otel::flush).await.unwrap();
    let spans: Vec<Span> = until("the spans of the invocation chain to arrive", || {
        let received = received.clone();
        async move {
            let got = received.lock().unwrap().clone();
            let spans: Vec<Span> = got.iter().map(|(_, s)| s.clone()).collect();
            let delivered = spans.iter().any(|s| s.name == "deliver message" && !s.links.is_empty());
            (delivered && spans.iter().any(|s| s.name == "invoke b")).then_some(spans)
        }
    })
    .await;
    assert!(received.lock().unwrap().iter().all(|(svc, _)| svc == "cortex-test"), "service.name from the config");

    let in_trace = |s: &Span| hex(&s.trace_id) == trace;
    let request = find(&spans, "POST invoke of a", |s| {
        in_trace(s) && s.name == "POST /v1/agents/{name}/invoke" && hex(&s.parent_span_id) == caller_span
    });
    assert_eq!(request.kind, 2, "a server span");
    assert_eq!(attr(&request.attributes, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attr(&request.attributes, "http.route").as_deref(), Some("/v1/agents/{name}/invoke"));
    assert_eq!(attr(&request.attributes, "http.response.status_code").as_deref(), Some("200"));
    find(&spans, "auth of the request", |s| s.name == "auth" && is_child(s, request));
    let inv_a = find(&spans, "invoke a", |s| s.name == "invoke a" && is_child(s, request));
    assert_eq!(attr(&inv_a.attributes, "cortex.tenant").as_deref(), Some("acme"));
    assert_eq!(attr(&inv_a.attributes, "cortex.agent").as_deref(), Some("a"));
    assert_eq!(attr(&inv_a.attributes, "cortex.outcome").as_deref(), Some("ok"));
    assert!(attr(&inv_a.attributes, "cortex.invocation.id").is_some_and(|id| !id.is_empty()));
    assert!(attr(&inv_a.attributes, "cortex.fuel").is_some_and(|f| f.parse::<u64>().unwrap() > 0));
    assert!(attr(&inv_a.attributes, "cortex.memory.peak").is_some_and(|m| m.parse::<u64>().unwrap() > 0));
    let call = find(&spans, "messaging.call in a", |s| s.name == "messaging.call" && is_child(s, inv_a));
    let inv_b = find(&spans, "invoke b", |s| s.name == "invoke b" && is_child(s, call));
    let send = find(&spans, "messaging.send in b", |s| s.name == "messaging.send" && is_child(s, inv_b));

    // The delivery to c: a trace of its own, linked to b's send; c's invocation and its
    // document writes are inside it.
    let deliver = find(&spans, "delivery to c", |s| {
        s.name == "deliver message" && s.links.iter().any(|l| l.trace_id == send.trace_id && l.span_id == send.span_id)
    });
    assert_eq!(attr(&deliver.attributes, "cortex.agent").as_deref(), Some("c"));
    let inv_c = find(&spans, "invoke c of the delivery", |s| s.name == "invoke c" && is_child(s, deliver));
    assert!(
        spans.iter().any(|s| s.name.starts_with("documents.") && is_child(s, inv_c)),
        "c's document calls are spans of its invocation"
    );

    // No tenant data anywhere: names, attributes, events, links, status.
    for sp in &spans {
        let text = format!("{sp:?}");
        assert!(!text.contains(marker), "tenant data in span {}: {text}", sp.name);
        assert!(!text.contains("call:b:send"), "the input in span {}: {text}", sp.name);
    }
    s.stop().await;
}

/// Flush the export and wait until the spans received satisfy `done`; all of them.
async fn spans_when(received: &Received, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    until(what, || {
        let received = received.clone();
        let done = &done;
        async move {
            tokio::task::spawn_blocking(cortex_host::telemetry::otel::flush).await.unwrap();
            let spans: Vec<Span> = received.lock().unwrap().iter().map(|(_, s)| s.clone()).collect();
            done(&spans).then_some(spans)
        }
    })
    .await
}

/// Does `span` descend from `ancestor` (through its parents among `spans`)?
fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut at = span;
    for _ in 0..64 {
        if is_child(at, ancestor) {
            return true;
        }
        match spans.iter().find(|p| p.trace_id == at.trace_id && p.span_id == at.parent_span_id) {
            Some(p) => at = p,
            None => return false,
        }
    }
    false
}

/// Assert that no span holds `marker` (names, attributes, events, links, status).
fn no_tenant_data(spans: &[Span], marker: &str) {
    for sp in spans {
        let text = format!("{sp:?}");
        assert!(!text.contains(marker), "tenant data in span {}: {text}", sp.name);
    }
}

/// Deploy the watcher plugin as `name`, watching the collection `inbox`.
async fn deploy_inbox_watcher(s: &Server, dev: &str, name: &str) {
    let w = s.upload(dev, art::WATCHER).await;
    s.deploy_with(dev, name, &w, json!({ "watches": [{ "collection": "inbox", "prefix": "" }] })).await;
}

/// What the watcher `name` has seen so far.
async fn seen(s: &Server, dev: &str, name: &str) -> Vec<String> {
    serde_json::from_str(&s.invoke_ok(dev, name, "").await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_delivery_is_linked_to_the_write_and_tracestate_passes_through() {
    assert!(cortex_host::telemetry::otel::init_subscriber(), "this process has no subscriber yet");
    let received: Received = Arc::default();
    let endpoint = receiver(received.clone()).await;
    let s = Server::start_with(|cfg| cfg.telemetry.endpoint = Some(endpoint.clone())).await;
    let dev = s.developer_in("acme").await;
    let m = s.upload(&dev, art::MESSENGER).await;
    s.deploy(&dev, "m", &m, json!({})).await;
    deploy_inbox_watcher(&s, &dev, "w").await;

    // m takes a message: it writes `inbox/m`, which wakes w.
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let marker = "SECRET-CHANGE-91c2";
    let resp = s
        .req(Method::POST, "/v1/agents/m/invoke", &dev)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=opaque")
        .body(marker)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["traceparent"].to_str().unwrap().starts_with(&format!("00-{trace}-")));
    assert_eq!(resp.headers()["tracestate"], "vendor=opaque", "the caller's tracestate comes back");
    until("w to see the write", || async {
        seen(&s, &dev, "w").await.iter().any(|e| e.contains("inbox/m")).then_some(())
    })
    .await;

    let spans = spans_when(&received, "the change delivery to w", |spans| {
        spans.iter().any(|d| {
            d.name == "deliver change"
                && d.links.iter().any(|l| hex(&l.trace_id) == trace)
                && spans.iter().any(|s| s.name == "invoke w" && is_child(s, d))
        })
    })
    .await;
    let in_trace = |s: &Span| hex(&s.trace_id) == trace;
    let inv_m = find(&spans, "invoke m", |s| in_trace(s) && s.name == "invoke m");
    let writes: Vec<&Span> = spans.iter().filter(|s| s.name.starts_with("documents.") && is_child(s, inv_m)).collect();
    assert!(!writes.is_empty(), "m's document calls are spans of its invocation");
    let deliver = find(&spans, "the delivery of m's write", |s| {
        s.name == "deliver change"
            && s.links.iter().any(|l| writes.iter().any(|w| l.trace_id == w.trace_id && l.span_id == w.span_id))
    });
    assert!(!in_trace(deliver), "the delivery is a trace of its own, linked to the write");
    assert_eq!(attr(&deliver.attributes, "cortex.agent").as_deref(), Some("w"));
    assert_eq!(attr(&deliver.attributes, "cortex.delivery").as_deref(), Some("change"));
    let link = deliver.links.iter().find(|l| l.trace_id == inv_m.trace_id).unwrap();
    assert_eq!(link.trace_state, "vendor=opaque", "the stored context keeps the tracestate");
    find(&spans, "invoke w of the delivery", |s| s.name == "invoke w" && is_child(s, deliver));
    no_tenant_data(&spans, marker);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_steps_are_spans_linked_to_the_request_that_started_the_run() {
    assert!(cortex_host::telemetry::otel::init_subscriber(), "this process has no subscriber yet");
    let received: Received = Arc::default();
    let endpoint = receiver(received.clone()).await;
    let s = Server::start_with(|cfg| cfg.telemetry.endpoint = Some(endpoint.clone())).await;
    let dev = s.developer_in("acme").await;
    let step = s.upload(&dev, art::WORKFLOW_STEP).await;
    s.deploy(&dev, "step", &step, json!({})).await;
    let marker = "SECRET-WORKFLOW-4d1e";
    let def = json!({"steps": [
        {"id": "flaky", "agent": "step", "retry": {"attempts": 2, "backoff_ms": 10},
         "input": {"op": "fail_times", "n": 1, "value": marker}},
        {"id": "after", "agent": "step", "depends_on": ["flaky"], "input": {"op": "echo", "value": marker}}
    ]});
    let r = s.req(Method::PUT, "/v1/workflows/wf", &dev).json(&def).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let r = s
        .req(Method::POST, "/v1/workflows/wf/runs", &dev)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({ "input": { "secret": marker } }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let run: Value = r.json().await.unwrap();
    let id = run["id"].as_str().unwrap().to_owned();
    assert!(run.get("trace").is_none(), "the run's view in the API does not show the trace context: {run}");
    until("the run to succeed", || async {
        let v = s.get_json(&dev, &format!("/v1/workflows/wf/runs/{id}")).await;
        assert_ne!(v["state"], "failed", "{v}");
        (v["state"] == "succeeded").then_some(())
    })
    .await;

    let steps_of_run = |spans: &[Span]| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| {
                s.name == "workflow.step" && attr(&s.attributes, "cortex.workflow.run.id").as_deref() == Some(&id)
            })
            .cloned()
            .collect()
    };
    let spans = spans_when(&received, "the spans of the run's three calls", |spans| {
        steps_of_run(spans).len() == 3
            && spans.iter().any(|s| s.name.starts_with("POST /v1/workflows"))
            && spans.iter().filter(|s| s.name == "invoke step").count() >= 3
    })
    .await;
    let start = find(&spans, "the request that started the run", |s| {
        hex(&s.trace_id) == trace && s.name == "POST /v1/workflows/{name}/runs"
    });
    let mut seen: Vec<(String, String)> = Vec::new();
    for st in steps_of_run(&spans) {
        assert_eq!(attr(&st.attributes, "cortex.tenant").as_deref(), Some("acme"));
        assert_eq!(attr(&st.attributes, "cortex.agent").as_deref(), Some("step"));
        assert_eq!(attr(&st.attributes, "cortex.workflow.name").as_deref(), Some("wf"));
        assert!(
            st.links.iter().any(|l| l.trace_id == start.trace_id && l.span_id == start.span_id),
            "step {:?} is linked to the request that started the run",
            attr(&st.attributes, "cortex.workflow.step.id")
        );
        assert!(st.parent_span_id.is_empty(), "a step's span is the root of a trace of its own");
        find(&spans, "the step's invocation", |s| s.name == "invoke step" && is_child(s, &st));
        seen.push((
            attr(&st.attributes, "cortex.workflow.step.id").unwrap(),
            attr(&st.attributes, "cortex.workflow.step.attempt").unwrap(),
        ));
    }
    seen.sort();
    let want: Vec<(String, String)> =
        [("after", "1"), ("flaky", "1"), ("flaky", "2")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(seen, want, "one span per attempt of each step");
    no_tenant_data(&spans, marker);
    s.stop().await;
}

/// A loopback HTTP server answering every request with the `traceparent` and `tracestate`
/// it got (`-` when absent), as `{"traceparent": .., "tracestate": ..}`. Returns its address.
async fn echo_trace_headers() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let h = |k: &str| headers.get(k).map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
        axum::Json(json!({ "traceparent": h("traceparent"), "tracestate": h("tracestate") }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A traced server whose agent `c` (the egress client) may reach `up`'s `/api/`; the
/// developer token.
async fn egress_server(endpoint: &str, up: std::net::SocketAddr, propagate: bool) -> (Server, String) {
    let s = Server::start_with(|cfg| {
        cfg.telemetry.endpoint = Some(endpoint.to_owned());
        cfg.telemetry.propagate_to_egress = propagate;
        cfg.egress.allow_private = vec!["127.0.0.1/32".into()];
    })
    .await;
    let dev = s.developer_in("acme").await;
    let digest = s.upload(&dev, art::EGRESS_CLIENT).await;
    s.deploy_with(&dev, "c", &digest, json!({ "egress": [{ "url": format!("http://{up}/api/") }] })).await;
    (s, dev)
}

/// Invoke `c` within trace `trace` (tracestate `vendor=opaque`) to GET `url`; what the
/// destination saw.
async fn egress_call(s: &Server, dev: &str, trace: &str, url: &str) -> Value {
    let resp = s
        .req(Method::POST, "/v1/agents/c/invoke", dev)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=opaque")
        .body(json!({ "url": url }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["status"], 200, "{out}");
    serde_json::from_str(out["body"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_request_is_a_client_span_and_carries_traceparent_when_configured() {
    assert!(cortex_host::telemetry::otel::init_subscriber(), "this process has no subscriber yet");
    let received: Received = Arc::default();
    let endpoint = receiver(received.clone()).await;
    let up = echo_trace_headers().await;
    let (s, dev) = egress_server(&endpoint, up, true).await;
    let trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let secret = "SECRET-QUERY-0b7e";
    let got = egress_call(&s, &dev, trace, &format!("http://{up}/api/echo?token={secret}")).await;

    let spans = spans_when(&received, "the egress span", |spans| spans.iter().any(|s| s.name == "GET")).await;
    let inv = find(&spans, "invoke c", |s| hex(&s.trace_id) == trace && s.name == "invoke c");
    let out = find(&spans, "the outbound request", |s| s.name == "GET" && descends(&spans, s, inv));
    assert_eq!(out.kind, 3, "a client span");
    assert_eq!(attr(&out.attributes, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(&out.attributes, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(&out.attributes, "server.port"), Some(up.port().to_string()));
    assert_eq!(attr(&out.attributes, "url.scheme").as_deref(), Some("http"));
    assert_eq!(attr(&out.attributes, "url.path").as_deref(), Some("/api/echo"));
    assert_eq!(attr(&out.attributes, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(&out.attributes, "cortex.agent").as_deref(), Some("c"));
    assert!(attr(&out.attributes, "url.full").is_none(), "the full URL (with its query) is left out");
    // The destination joined the trace as a child of the client span.
    assert_eq!(got["traceparent"], format!("00-{trace}-{}-01", hex(&out.span_id)), "{got}");
    assert_eq!(got["tracestate"], "vendor=opaque", "{got}");
    no_tenant_data(&spans, secret);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_request_carries_no_trace_context_by_default() {
    assert!(cortex_host::telemetry::otel::init_subscriber(), "this process has no subscriber yet");
    let received: Received = Arc::default();
    let endpoint = receiver(received.clone()).await;
    let up = echo_trace_headers().await;
    let (s, dev) = egress_server(&endpoint, up, false).await;
    let trace = "8bf92f3577b34da6a3ce929d0e0e4736";
    let got = egress_call(&s, &dev, trace, &format!("http://{up}/api/echo")).await;
    assert_eq!(got, json!({ "traceparent": "-", "tracestate": "-" }), "no trace context leaves by default");
    // The request is still traced.
    let spans = spans_when(&received, "the egress span", |spans| spans.iter().any(|s| s.name == "GET")).await;
    let inv = find(&spans, "invoke c", |s| hex(&s.trace_id) == trace && s.name == "invoke c");
    find(&spans, "the outbound request", |s| s.name == "GET" && descends(&spans, s, inv));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_on_another_node_are_linked_through_the_shared_store() {
    cross_node(crate::cluster::Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_on_another_node_are_linked_through_the_shared_arangodb_store() {
    cross_node(crate::cluster::Backend::FakeArango).await;
}

/// Two nodes over one store of `backend`: a message sent through one node and a document
/// written through one node are delivered by the receiver's owner, the other node, linked
/// to the sending and writing spans.
async fn cross_node(backend: crate::cluster::Backend) {
    use crate::cluster::{nodes_on, owners, within};
    assert!(cortex_host::telemetry::otel::init_subscriber(), "this process has no subscriber yet");
    let received: Received = Arc::default();
    let endpoint = receiver(received.clone()).await;
    let Some((n, _store, _shared)) = nodes_on(backend, 2).await else { return };
    // Export is process-wide: both in-process nodes send to the one receiver.
    let cfg = cortex_host::telemetry::otel::TelemetryConfig { endpoint: Some(endpoint), ..Default::default() };
    assert!(cortex_host::telemetry::otel::install(&cfg).unwrap());
    n[0].tenant("acme").await;
    let dev = n[0].token(Some("acme"), cortex_host::api::Role::Developer);
    let m = n[0].upload(&dev, art::MESSENGER).await;
    for a in ["a", "b"] {
        n[0].deploy(&dev, a, &m, json!({})).await;
    }
    deploy_inbox_watcher(&n[0], &dev, "w").await;
    let all: Vec<&Server> = n.iter().collect();
    within(std::time::Duration::from_secs(20), "b and w owned by one node each", || async {
        let o = owners(&all);
        ["acme/b", "acme/w"].iter().all(|k| o.get(*k).is_some_and(|v| v.len() == 1))
    })
    .await;
    let o = owners(&all);
    let (owner_b, owner_w) = (o["acme/b"][0].0, o["acme/w"][0].0);
    // Each request goes to the node that does NOT own the receiver: the delivery runs on
    // the other node, which has only the store to go by.
    let (via_send, via_write) = (&n[1 - owner_b], &n[1 - owner_w]);
    let marker = "SECRET-CLUSTER-5e0a";
    let (t_send, t_write) = ("9af92f3577b34da6a3ce929d0e0e4736", "9bf92f3577b34da6a3ce929d0e0e4736");
    for (via, trace, input) in [(via_send, t_send, format!("send:b:{marker}")), (via_write, t_write, marker.to_owned())]
    {
        // Invoked through `via` (the deploy reaches it first).
        let status = within(std::time::Duration::from_secs(20), "a to be invocable", || async {
            via.invoke(&dev, "a", "inbox").await.0 == reqwest::StatusCode::OK
        });
        status.await;
        let resp = via
            .req(Method::POST, "/v1/agents/a/invoke", &dev)
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .body(input)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let spans = spans_when(&received, "the deliveries on the owners", |spans| {
        let linked_to = |kind: &str, trace: &str| {
            spans.iter().any(|s| s.name == kind && s.links.iter().any(|l| hex(&l.trace_id) == trace))
        };
        linked_to("deliver message", t_send) && linked_to("deliver change", t_write)
    })
    .await;
    let send = find(&spans, "a's send", |s| hex(&s.trace_id) == t_send && s.name == "messaging.send");
    let deliver = find(&spans, "the delivery to b", |s| {
        s.name == "deliver message" && s.links.iter().any(|l| l.trace_id == send.trace_id && l.span_id == send.span_id)
    });
    assert_eq!(attr(&deliver.attributes, "cortex.agent").as_deref(), Some("b"));
    let inv_a = find(&spans, "a's invocation that writes", |s| hex(&s.trace_id) == t_write && s.name == "invoke a");
    let change = find(&spans, "the delivery of a's write to w", |s| {
        s.name == "deliver change"
            && s.links.iter().any(|l| {
                spans.iter().any(|w| {
                    w.trace_id == l.trace_id
                        && w.span_id == l.span_id
                        && w.name.starts_with("documents.")
                        && is_child(w, inv_a)
                })
            })
    });
    assert_eq!(attr(&change.attributes, "cortex.agent").as_deref(), Some("w"));
    // The owners have not changed meanwhile: each delivery ran on the other node.
    let now = owners(&all);
    assert_eq!((now["acme/b"][0].0, now["acme/w"][0].0), (owner_b, owner_w));
    no_tenant_data(&spans, marker);
    for s in n {
        s.stop().await;
    }
}
