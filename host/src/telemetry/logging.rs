//! The host's own logs (`[log]`): human-readable text (the default) or JSON, one object a
//! line on stderr, for log shippers.
//!
//! A JSON line holds `timestamp` (RFC 3339, UTC, milliseconds), `level`, `target`,
//! `message`, the event's other `fields`, `spans` (the enclosing spans, outermost first, each
//! its `name` and fields) and, when one of those spans carries one, `trace_id` (a span's
//! `trace_id` field, else its `request_id`: the request id until traces are exported).
//!
//! The level comes from `[log] level` (an `EnvFilter` directive such as `info` or
//! `warn,cortex_host::api=debug`); `RUST_LOG` (or `CORTEX_LOG`) overrides it when set.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// The filter: `RUST_LOG`, else `CORTEX_LOG`, else `level`; a directive that does not parse
/// falls back to `warn` (and says so on stderr).
pub fn filter(level: &str) -> EnvFilter {
    for var in ["RUST_LOG", "CORTEX_LOG"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            match EnvFilter::try_new(&v) {
                Ok(f) => return f,
                Err(e) => eprintln!("warning: {var}={v:?} is not a log filter ({e}); using [log] level"),
            }
        }
    }
    EnvFilter::try_new(level).unwrap_or_else(|e| {
        eprintln!("warning: [log] level {level:?} is not a log filter ({e}); using warn");
        EnvFilter::new("warn")
    })
}

/// Install the process's log subscriber (once; later calls do nothing).
pub fn init(cfg: &LogConfig) {
    // The level filters the log lines only: the OpenTelemetry layer (inert unless
    // `[telemetry]` turns export on) filters for itself, so a `warn` log level does not
    // hide the INFO spans a trace is made of.
    let filter = filter(&cfg.level);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match cfg.format {
        LogFormat::Text => Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
        LogFormat::Json => Box::new(JsonLayer),
    };
    let _ =
        tracing_subscriber::registry().with(lines.with_filter(filter)).with(crate::telemetry::otel::layer()).try_init();
}

/// Writes each event as one JSON object a line on stderr.
#[derive(Debug, Default)]
pub struct JsonLayer;

/// A span's recorded fields, kept in its extensions.
struct SpanFields(Map<String, Value>);

/// Records fields into a JSON map.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for JsonLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut Visitor(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(fields)) = ext.get_mut::<SpanFields>() {
            values.record(&mut Visitor(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        let message = fields.remove("message").unwrap_or(Value::String(String::new()));
        let mut spans = Vec::new();
        let mut trace_id = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let mut entry = Map::new();
                entry.insert("name".into(), Value::String(span.name().to_owned()));
                if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                    // The innermost span's id wins; `trace_id` over `request_id`.
                    if let Some(id) = f.get("trace_id").or_else(|| f.get("request_id")) {
                        trace_id = Some(id.clone());
                    }
                    entry.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                spans.push(Value::Object(entry));
            }
        }
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(crate::cli::logs::utc(crate::registry::now_ms())));
        line.insert("level".into(), Value::String(meta.level().as_str().to_owned()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        line.insert("message".into(), message);
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        if !spans.is_empty() {
            line.insert("spans".into(), Value::Array(spans));
        }
        if let Some(id) = trace_id {
            line.insert("trace_id".into(), id);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        // One write a line, so lines of concurrent events do not interleave.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_in_a_request_span_is_one_json_line_with_its_trace_id() {
        use std::sync::{Arc, Mutex};
        // Capture through a layer writing to a buffer: the same code as stderr's.
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<Value>>>);
        struct Capture(Buf);
        impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
                let mut fields = Map::new();
                event.record(&mut Visitor(&mut fields));
                let mut rid = None;
                if let Some(scope) = ctx.event_scope(event) {
                    for span in scope.from_root() {
                        if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                            rid = f.get("request_id").cloned();
                        }
                    }
                }
                fields.insert("rid".into(), rid.unwrap_or(Value::Null));
                self.0.0.lock().unwrap().push(Value::Object(fields));
            }
        }
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(JsonLayer).with(Capture(buf.clone()));
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", request_id = "r-1");
            let _e = span.enter();
            tracing::info!(n = 3, "hello");
        });
        let got = buf.0.lock().unwrap();
        assert_eq!(got[0]["rid"], "r-1");
        assert_eq!(got[0]["n"], 3);
        assert_eq!(got[0]["message"], "hello");
    }
}
