//! OpenTelemetry export over OTLP/HTTP, received by a real OTLP receiver in this process
//! (protobuf decoded with `opentelemetry-proto`): the span tree of an HTTP invocation that
//! calls a second agent, which sends a message to a third; W3C `traceparent` in and out;
//! the trace id in problem bodies; and no tenant data in any span.
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
