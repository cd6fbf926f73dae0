//! OpenTelemetry tracing, exported over OTLP/HTTP (protobuf); off by default.
//!
//! The host's `tracing` spans become OpenTelemetry spans through a layer ([`layer`]) that
//! the process's subscriber carries from the start; it does nothing (every span and event
//! is filtered out of it) until [`install`] turns export on from the `[telemetry]` config.
//! So the subscriber can be set up before the config is read, and a process (a test) can
//! turn export on for itself without relying on any other global provider.
//!
//! W3C trace context: [`extract`] reads `traceparent`/`tracestate` of an inbound request,
//! [`TraceHeaders`] writes the headers of a span; [`scope`]/[`current_trace_id`] carry the
//! trace id of the request a task answers (problem+json bodies and agent log records quote
//! it); [`TraceContext`] stores a span's context with a message, a change event or a
//! workflow run so that its delivery (or step) is linked to the sender's (writer's,
//! starter's) span; [`inject_into_egress`] passes it to an agent's HTTP destination when
//! `propagate_to_egress` says so.
//!
//! Spans never carry a tenant's data (inputs, outputs, document values, message bodies):
//! only names, ids, outcomes and sizes.
//!
//! Export goes through [`ReqwestClient`], the host's own reqwest 0.12 (rustls) client run on
//! the tokio runtime that called [`install`]: opentelemetry-otlp's own HTTP clients would
//! add a second reqwest (0.13) or a hyper client of its own, and its blocking client a
//! thread with a runtime of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanBuilder, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context as LayerContext, Filter};
use tracing_subscriber::registry::LookupSpan;

/// `[telemetry]`: OpenTelemetry trace export. Off unless `endpoint` is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP endpoint (the collector's base URL, e.g. `http://otel-collector:4318`;
    /// spans go to `{endpoint}/v1/traces`). Unset: no export, no spans recorded.
    pub endpoint: Option<String>,
    /// Headers sent with every export (e.g. an `authorization` for a hosted backend).
    pub headers: BTreeMap<String, String>,
    /// Share of new traces sampled, 0.0 to 1.0 (parent-based: a request that arrives with
    /// a sampled `traceparent` is sampled whatever the ratio).
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Further resource attributes (e.g. `deployment.environment = "prod"`).
    pub resource_attributes: BTreeMap<String, String>,
    /// Timeout of one export request (ms).
    pub timeout_ms: u64,
    /// Spans queued for export at most; past it, new spans are dropped (and counted).
    pub max_queue: usize,
    /// Send `traceparent`/`tracestate` with agents' outbound HTTP requests (egress), so a
    /// destination that traces joins the trace. Off by default: it tells third parties the
    /// trace id (and sampling decision) of the request that led to the call.
    pub propagate_to_egress: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            headers: BTreeMap::new(),
            sampling_ratio: 1.0,
            service_name: "cortex".to_owned(),
            resource_attributes: BTreeMap::new(),
            timeout_ms: 10_000,
            max_queue: 2048,
            propagate_to_egress: false,
        }
    }
}

/// Why trace export could not be turned on.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The configuration is invalid.
    #[error("invalid [telemetry] configuration: {0}")]
    Invalid(String),
    /// The exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Is export on (some [`install`] succeeded and its guard lives)?
static ON: AtomicBool = AtomicBool::new(false);

/// `propagate_to_egress` of the config [`install`] turned export on with.
static TO_EGRESS: AtomicBool = AtomicBool::new(false);

/// The tracer spans are built with: a never-sampling one until [`install`].
static TRACER: LazyLock<RwLock<SdkTracer>> = LazyLock::new(|| RwLock::new(off_tracer()));

fn off_tracer() -> SdkTracer {
    SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOff).build().tracer("cortex")
}

/// `cortex_trace_export_total{outcome}`: batches of spans sent to the OTLP endpoint, by
/// `ok` or `failed`. Process-wide (the exporter is); every metrics registry shows it.
pub static EXPORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new("cortex_trace_export_total", "Batches of trace spans exported over OTLP, by outcome (ok, failed)"),
        &["outcome"],
    )
    .unwrap_or_else(|_| unreachable_counter());
    for o in ["ok", "failed"] {
        c.with_label_values(&[o]);
    }
    c
});

/// `cortex_trace_spans_exported_total{outcome}`: spans in the batches of [`EXPORTS`].
pub static SPANS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new("cortex_trace_spans_exported_total", "Trace spans sent over OTLP, by outcome (ok, failed)"),
        &["outcome"],
    )
    .unwrap_or_else(|_| unreachable_counter());
    for o in ["ok", "failed"] {
        c.with_label_values(&[o]);
    }
    c
});

// The names and label above are valid: this is never reached.
fn unreachable_counter() -> IntCounterVec {
    #[allow(clippy::unwrap_used)]
    IntCounterVec::new(Opts::new("cortex_trace_unreachable", "-"), &["outcome"]).unwrap()
}

/// The tracer of [`layer`]: builds every span with whatever tracer [`install`] set last.
#[derive(Clone, Debug, Default)]
pub struct SlotTracer;

impl opentelemetry::trace::Tracer for SlotTracer {
    type Span = opentelemetry_sdk::trace::Span;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Self::Span {
        let tracer = TRACER.read().unwrap_or_else(PoisonError::into_inner).clone();
        tracer.build_with_context(builder, parent_cx)
    }
}

/// Passes spans and events to the OpenTelemetry layer only while export is on, and then
/// only the host's own at `INFO` or above (not wasmtime's, cranelift's or hyper's).
#[derive(Clone, Copy, Debug)]
struct WhenOn;

impl<S> Filter<S> for WhenOn {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &LayerContext<'_, S>) -> bool {
        ON.load(Ordering::Relaxed) && *meta.level() <= tracing::Level::INFO && meta.target().starts_with("cortex")
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if *meta.level() <= tracing::Level::INFO && meta.target().starts_with("cortex") {
            // Asked again each time: export may be turned on later.
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
}

/// The OpenTelemetry layer for the process's subscriber: add it once, at start; it is
/// inert until [`install`].
pub fn layer<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(SlotTracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(WhenOn)
}

/// Install a subscriber with only [`layer`] in it, if the process has none yet (for
/// tests and benches that turn export on without logs). Returns whether it did.
pub fn init_subscriber() -> bool {
    use tracing_subscriber::layer::SubscriberExt;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer())).is_ok()
}

/// The provider of the export [`install`] turned on last.
static PROVIDER: LazyLock<std::sync::Mutex<Option<SdkTracerProvider>>> = LazyLock::new(Default::default);

/// Export every span ended so far (waits for the export), if export is on.
pub fn flush() {
    let provider = PROVIDER.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(p) = provider
        && let Err(e) = p.force_flush()
    {
        tracing::warn!(error = %e, "trace flush failed");
    }
}

/// Turn export off, after exporting what is queued (at the process's exit).
pub fn shutdown() {
    ON.store(false, Ordering::Relaxed);
    TO_EGRESS.store(false, Ordering::Relaxed);
    *TRACER.write().unwrap_or_else(PoisonError::into_inner) = off_tracer();
    let provider = PROVIDER.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(p) = provider
        && let Err(e) = p.shutdown()
    {
        tracing::debug!(error = %e, "trace provider shutdown");
    }
}

/// Turn export on as `cfg` says (returns `false`, and changes nothing, when it has no
/// endpoint). Must run within a tokio runtime (exports are sent on it). A later call
/// replaces the earlier exporter, which exports what it has queued first.
pub fn install(cfg: &TelemetryConfig) -> Result<bool, OtelError> {
    let Some(endpoint) = cfg.endpoint.as_deref() else {
        return Ok(false);
    };
    if !(0.0..=1.0).contains(&cfg.sampling_ratio) {
        return Err(OtelError::Invalid(format!("sampling_ratio {} is not within 0.0 to 1.0", cfg.sampling_ratio)));
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| OtelError::Exporter("no tokio runtime to send exports on".to_owned()))?;
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    let client = reqwest::Client::builder().timeout(timeout).build().map_err(|e| OtelError::Exporter(e.to_string()))?;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ReqwestClient { client, runtime })
        .with_endpoint(url)
        .with_timeout(timeout)
        .with_headers(cfg.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.version", super::VERSION));
    for (k, v) in &cfg.resource_attributes {
        resource = resource.with_attribute(KeyValue::new(k.clone(), v.clone()));
    }
    let processor = BatchSpanProcessor::builder(Counted(exporter))
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(cfg.max_queue.max(1))
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampling_ratio))))
        .with_resource(resource.build())
        .build();
    LazyLock::force(&EXPORTS);
    LazyLock::force(&SPANS);
    *TRACER.write().unwrap_or_else(PoisonError::into_inner) = provider.tracer("cortex");
    let old = PROVIDER.lock().unwrap_or_else(PoisonError::into_inner).replace(provider);
    TO_EGRESS.store(cfg.propagate_to_egress, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
    if let Some(old) = old {
        let _ = old.shutdown();
    }
    Ok(true)
}

/// The OTLP exporter, counting what it sends in [`EXPORTS`] and [`SPANS`].
#[derive(Debug)]
struct Counted(opentelemetry_otlp::SpanExporter);

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.0.export(batch).await;
        let outcome = if r.is_ok() { "ok" } else { "failed" };
        if let Err(e) = &r {
            tracing::debug!(error = %e, spans = n, "trace export failed");
        }
        EXPORTS.with_label_values(&[outcome]).inc();
        SPANS.with_label_values(&[outcome]).inc_by(n);
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// Sends OTLP requests with the host's reqwest (rustls) client on the tokio runtime that
/// [`install`] ran on (the batch processor calls from a thread of its own).
#[derive(Debug)]
pub struct ReqwestClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for ReqwestClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let task = self.runtime.spawn(async move {
            let mut req = client.request(parts.method, parts.uri.to_string()).body(body);
            for (k, v) in &parts.headers {
                req = req.header(k, v);
            }
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = task.await??;
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The trace context of an inbound request's `traceparent`/`tracestate` (an empty context
/// when it has none, or a malformed one).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Make `span` a child of the remote parent in `headers` (if any).
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` (and `tracestate`, if the trace has one) of a response, for the
/// span that served the request.
#[derive(Clone, Debug)]
pub struct TraceHeaders {
    traceparent: http::HeaderValue,
    tracestate: Option<http::HeaderValue>,
}

impl TraceHeaders {
    /// The headers of `span` (while export is on and the span has a context).
    pub fn of(span: &tracing::Span) -> Option<TraceHeaders> {
        let cx = TraceContext::of(span)?;
        Some(TraceHeaders {
            traceparent: http::HeaderValue::from_str(&cx.traceparent).ok()?,
            tracestate: (!cx.tracestate.is_empty()).then(|| http::HeaderValue::from_str(&cx.tracestate).ok()).flatten(),
        })
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.to_str().ok()?.split('-').nth(1)
    }

    /// Set them on a response.
    pub fn insert_into(self, headers: &mut http::HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent);
        if let Some(ts) = self.tracestate {
            headers.insert(TRACESTATE, ts);
        }
    }
}

/// A span's W3C trace context, as stored with a message (`traceparent`, `tracestate`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceContext {
    /// The W3C `traceparent`.
    pub traceparent: String,
    /// The W3C `tracestate` (often empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a TraceContext);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.0.traceparent),
            "tracestate" if !self.0.tracestate.is_empty() => Some(&self.0.tracestate),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

impl TraceContext {
    /// The context of `span`, while export is on and `span` has a valid one.
    pub fn of(span: &tracing::Span) -> Option<TraceContext> {
        if !ON.load(Ordering::Relaxed) {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut map = BTreeMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut map));
        Some(TraceContext {
            traceparent: map.remove("traceparent")?,
            tracestate: map.remove("tracestate").unwrap_or_default(),
        })
    }

    /// The context of the current span (see [`TraceContext::of`]).
    pub fn current() -> Option<TraceContext> {
        TraceContext::of(&tracing::Span::current())
    }

    /// Link `span` to the span this context was taken from (e.g. a delivery to its send).
    pub fn link_from(&self, span: &tracing::Span) {
        if !ON.load(Ordering::Relaxed) {
            return;
        }
        let cx = TraceContextPropagator::new().extract(&MapExtractor(self));
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.add_link(sc);
        }
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.split('-').nth(1)
    }
}

/// Name `span` `name` in its export (`otel.name` recorded after the span started is not
/// applied), while export is on.
pub fn rename(span: &tracing::Span, name: String) {
    if ON.load(Ordering::Relaxed) {
        span.context().span().update_name(name);
    }
}

/// The trace id of `span` (32 hex digits), while export is on.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

tokio::task_local! {
    /// The trace id of the request this task answers (set by [`scope`]).
    static TRACE_ID: Option<Arc<str>>;
}

/// Run `fut` as the answer to a request in trace `id`: its problems and agent log records
/// quote it.
pub async fn scope<F: Future>(id: Option<String>, fut: F) -> F::Output {
    TRACE_ID.scope(id.map(Arc::from), fut).await
}

/// The trace id of the request the current task answers (within [`scope`]), else of the
/// current span.
pub fn current_trace_id() -> Option<String> {
    TRACE_ID
        .try_with(|v| v.as_deref().map(str::to_owned))
        .ok()
        .flatten()
        .or_else(|| trace_id_of(&tracing::Span::current()))
}

/// The span of one internal step of a request (`auth`), child of the current span; none
/// while export is off.
pub fn step(name: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!("step", otel.name = name)
}

/// The span of one host call (`documents.get`, `messaging.call`, ...), child of the
/// invocation's; none while export is off. Its attributes name the call, never its data.
pub fn host_call(interface: &'static str, op: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let kind = if interface == "messaging" && op != "call" { "producer" } else { "client" };
    tracing::info_span!(
        "host_call",
        otel.name = %format_args!("{interface}.{op}"),
        otel.kind = kind,
        cortex.host_call.interface = interface,
        cortex.host_call.operation = op,
    )
}

/// The span of a delivery (`message`, `change`) to `tenant`/`agent`: the root of a trace
/// of its own, linked to the span that sent the message or made the write (`from`), if
/// known; none while export is off.
pub fn delivery_span(kind: &'static str, tenant: &str, agent: &str, from: Option<&TraceContext>) -> tracing::Span {
    delivery_span_linked(kind, tenant, agent, from)
}

/// Links a delivery span carries at most (a batch of changes from many writes).
pub const MAX_DELIVERY_LINKS: usize = 32;

/// [`delivery_span`] linked to each distinct span in `from` (the writes of a batch of
/// changes), [`MAX_DELIVERY_LINKS`] at most.
pub fn delivery_span_linked<'a>(
    kind: &'static str,
    tenant: &str,
    agent: &str,
    from: impl IntoIterator<Item = &'a TraceContext>,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "deliver",
        otel.name = %format_args!("deliver {kind}"),
        otel.kind = "consumer",
        cortex.tenant = tenant,
        cortex.agent = agent,
        cortex.delivery = kind,
    );
    let mut linked: Vec<&str> = Vec::new();
    for t in from {
        if linked.len() >= MAX_DELIVERY_LINKS {
            break;
        }
        if !linked.contains(&t.traceparent.as_str()) {
            linked.push(&t.traceparent);
            t.link_from(&span);
        }
    }
    span
}

/// The span of one attempt of a workflow step's call (`workflow.step`): the root of a
/// trace of its own, linked to the request that started the run (if it was traced), with
/// the step's invocation as its child; none while export is off.
pub fn workflow_step_span(run: &crate::workflows::Run, step: &str, attempt: u32, agent: &str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "workflow_step",
        otel.name = "workflow.step",
        otel.kind = "internal",
        cortex.tenant = %run.tenant,
        cortex.agent = agent,
        cortex.workflow.name = %run.workflow,
        cortex.workflow.version = run.version,
        cortex.workflow.run.id = %run.id,
        cortex.workflow.step.id = step,
        cortex.workflow.step.attempt = attempt,
    );
    if let Some(t) = &run.trace {
        t.link_from(&span);
    }
    span
}

/// Put the trace context of `span` (`traceparent`, and `tracestate` if any) into the
/// headers of an agent's outbound request, replacing the agent's own, when export is on
/// and `[telemetry] propagate_to_egress` is set; otherwise leave them alone. Returns
/// whether it did.
pub fn inject_into_egress(span: &tracing::Span, headers: &mut http::HeaderMap) -> bool {
    if !TO_EGRESS.load(Ordering::Relaxed) {
        return false;
    }
    let Some(h) = TraceHeaders::of(span) else { return false };
    headers.remove(TRACESTATE);
    h.insert_into(headers);
    true
}

/// The W3C trace context header, in both directions.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The W3C vendor trace state header, in both directions (with [`TRACEPARENT`]).
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Is export on?
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_header_is_extracted_and_a_stored_context_keeps_its_trace_id() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let cx = extract(&h);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert!(cx.span().span_context().is_remote());
        let garbage = {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", http::HeaderValue::from_static("nonsense"));
            extract(&h)
        };
        assert!(!garbage.span().span_context().is_valid());
        let stored = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: String::new(),
        };
        assert_eq!(stored.trace_id(), Some("0af7651916cd43dd8448eb211c80319c"));
    }

    #[test]
    fn the_readme_config_parses() {
        let cfg: TelemetryConfig = toml::from_str(
            r#"
            endpoint = "http://otel-collector:4318"
            headers = { authorization = "Bearer x" }
            sampling_ratio = 0.1
            service_name = "cortex"
            resource_attributes = { "deployment.environment" = "prod" }
            timeout_ms = 10000
            max_queue = 2048
            propagate_to_egress = false
            "#,
        )
        .unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://otel-collector:4318"));
        assert_eq!(cfg.headers["authorization"], "Bearer x");
        assert_eq!(cfg.resource_attributes["deployment.environment"], "prod");
        assert!(toml::from_str::<TelemetryConfig>("sample_ratio = 0.5").is_err(), "unknown keys are refused");
    }

    #[test]
    fn export_is_off_by_default() {
        let cfg = TelemetryConfig::default();
        assert!(cfg.endpoint.is_none());
        assert!(!install(&cfg).unwrap());
        assert!(TraceContext::current().is_none());
        assert!(!cfg.propagate_to_egress, "no trace context leaves for agents' destinations by default");
        let mut h = http::HeaderMap::new();
        h.insert(
            TRACEPARENT,
            http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert!(!inject_into_egress(&tracing::Span::current(), &mut h));
        assert_eq!(h.len(), 1, "an agent's own header is left alone");
        assert!(delivery_span_linked("change", "t", "a", []).is_none());
    }
}
