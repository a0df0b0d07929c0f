//! Telemetry, set up in one place: `tracing` with JSON or human logs, and
//! OpenTelemetry. Every span gets a W3C trace context, which JSON logs carry
//! (`trace_id`, `span_id`) and which travels in gRPC metadata and with feed
//! events. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans and the RPC
//! metrics are exported by OTLP/gRPC; when it is not, nothing is exported
//! and no exporter runs. Logs, span attributes and metric attributes carry
//! ids only — never emails, phones, names, addresses or birth dates.

use std::{collections::HashMap, fmt};

use crm_proto::common::v1::TraceContext;
use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator, trace::SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter,
    filter::{LevelFilter, Targets},
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, JsonFields, Writer},
    },
    prelude::*,
    registry::LookupSpan,
};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production), with `trace_id` and `span_id`.
    Json,
    /// Human-readable lines (development).
    Pretty,
}

/// The OTLP/gRPC endpoint variable; exporting is on when it is set.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The service-name variable; it wins over the name the process picks.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";

/// Keeps the telemetry pipeline; `shutdown` flushes what is buffered.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl TelemetryGuard {
    /// Whether spans and metrics are exported (an OTLP endpoint is set).
    pub fn exporting(&self) -> bool {
        self.meter.is_some()
    }

    /// Export what is buffered and stop exporting; call before the process
    /// exits, outside async code (it blocks until the exports finish).
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(e) = tracer.shutdown()
        {
            tracing::warn!(error = %e, "trace export did not flush");
        }
        if let Some(meter) = self.meter
            && let Err(e) = meter.shutdown()
        {
            tracing::warn!(error = %e, "metric export did not flush");
        }
    }
}

/// The default filter: our crates at `info`, noisy transport internals quiet.
pub const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,sqlx=warn,sea_orm=warn,sea_orm_migration=warn";

/// Targets never turned into exported spans: transport and driver
/// internals, which include the exporter's own calls.
const NOT_EXPORTED: [&str; 9] =
    ["h2", "hyper", "hyper_util", "tonic", "tower", "sqlx", "sea_orm", "sea_orm_migration", "opentelemetry"];

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter configuration is unusable.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Install the global subscriber and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set, the OTLP exporters; `service_name` names the process in telemetry
/// unless `OTEL_SERVICE_NAME` is set. Must run inside a Tokio runtime (the
/// exporter's channel lives on it). Later calls install nothing and return
/// a guard that exports nothing, which lets tests call it freely.
/// `RUST_LOG` overrides the log filter.
pub fn init(format: LogFormat, service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    let exporting = std::env::var(OTLP_ENDPOINT_VAR).is_ok_and(|v| !v.trim().is_empty());
    init_with(format, service_name, exporting)
}

/// `init`, exporting by OTLP (configured by the `OTEL_*` variables) only
/// when `exporting`; otherwise no exporter is built and nothing runs in
/// the background.
pub fn init_with(format: LogFormat, service_name: &str, exporting: bool) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource(service_name);

    // Spans always get a trace context (logs and propagation need it); they
    // are exported only when an endpoint is set.
    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut meter = None;
    if exporting {
        let spans = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        tracer_builder = tracer_builder.with_batch_exporter(spans);
        let metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
        meter = Some(SdkMeterProvider::builder().with_resource(resource).with_periodic_exporter(metrics).build());
    }
    let tracer_provider = tracer_builder.build();
    let tracer = tracer_provider.tracer("crm");

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let exported = NOT_EXPORTED
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, target| t.with_target(*target, LevelFilter::OFF));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_level(true).with_filter(exported);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed =
        match format {
            LogFormat::Json => registry
                .with(tracing_subscriber::fmt::layer().fmt_fields(JsonFields::new()).event_format(JsonWithTraceIds(
                    format::format().json().with_current_span(true).with_span_list(false),
                )))
                .try_init(),
            LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().compact()).try_init(),
        }
        .is_ok();
    if !installed {
        // Another subscriber was first: drop the providers without exporting.
        let _ = tracer_provider.shutdown();
        if let Some(m) = meter {
            let _ = m.shutdown();
        }
        return Ok(TelemetryGuard { tracer: None, meter: None });
    }
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    if let Some(m) = &meter {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    Ok(TelemetryGuard { tracer: Some(tracer_provider), meter })
}

/// What every span and metric says about the process: `service.name`
/// (`OTEL_SERVICE_NAME`, else `service_name`), `service.namespace`,
/// `service.version`, plus `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service_name: &str) -> Resource {
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.namespace", "idic-crm"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ]);
    if std::env::var(SERVICE_NAME_VAR).map_or(true, |v| v.trim().is_empty()) {
        builder = builder.with_service_name(service_name.to_owned());
    }
    builder.build()
}

/// JSON log lines with the W3C ids of the current span added, so a log line
/// leads to its trace.
struct JsonWithTraceIds(format::Format<format::Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let span = if ctx.lookup_current().is_some() { Some(tracing::Span::current()) } else { None };
        let ids = span.map(|s| s.context().span().span_context().clone()).filter(SpanContext::is_valid);
        match (ids, line.trim_end().strip_suffix('}')) {
            (Some(sc), Some(object)) => {
                writeln!(writer, "{object},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}", sc.trace_id(), sc.span_id())
            }
            _ => writer.write_str(&line),
        }
    }
}

/// W3C `traceparent`/`tracestate` in HTTP headers (gRPC metadata).
struct Headers<'a>(&'a mut http::HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::header::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

struct ReadHeaders<'a>(&'a http::HeaderMap);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Put the trace context of `cx` in request headers (nothing when it has
/// no valid span).
pub fn inject_headers(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut Headers(headers));
}

/// The remote parent named by request headers (empty when none or invalid).
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&ReadHeaders(headers))
}

/// The trace context of the current span, to store with an event; `None`
/// when there is no valid span (telemetry not installed).
pub fn current_trace_context() -> Option<TraceContext> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut fields);
    let traceparent = fields.remove("traceparent")?;
    Some(TraceContext { traceparent, tracestate: fields.remove("tracestate").unwrap_or_default() })
}

/// The producer's span named by a stored trace context, for a span link;
/// `None` when absent or malformed.
pub fn span_context(tc: &TraceContext) -> Option<SpanContext> {
    let mut fields = HashMap::from([("traceparent".to_owned(), tc.traceparent.clone())]);
    if !tc.tracestate.is_empty() {
        fields.insert("tracestate".to_owned(), tc.tracestate.clone());
    }
    let cx = TraceContextPropagator::new().extract(&fields);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn a_stored_trace_context_names_the_producer_span() {
        let tc = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: "vendor=value".to_owned(),
        };
        let sc = span_context(&tc).expect("valid");
        assert_eq!(sc.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"));
        assert_eq!(sc.span_id(), SpanId::from_hex("00f067aa0ba902b7").expect("hex"));
        assert!(sc.is_remote());
        assert_eq!(sc.trace_state().header(), "vendor=value");
    }

    #[test]
    fn malformed_trace_contexts_are_ignored() {
        for traceparent in ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
            let tc = TraceContext { traceparent: traceparent.to_owned(), tracestate: String::new() };
            assert_eq!(span_context(&tc), None, "{traceparent}");
        }
    }

    #[test]
    fn headers_round_trip_the_w3c_context() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("k", "v")]).expect("state"),
        );
        let cx = Context::new().with_remote_span_context(sc.clone());
        let mut headers = http::HeaderMap::new();
        inject_headers(&cx, &mut headers);
        assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(headers["tracestate"], "k=v");
        assert_eq!(extract_headers(&headers).span().span_context(), &sc);
    }

    #[test]
    fn without_an_endpoint_spans_get_ids_and_nothing_is_exported() {
        let guard = init_with(LogFormat::Json, "test", false).expect("init");
        assert!(!guard.exporting(), "no exporter without an endpoint");
        let span = tracing::info_span!("work");
        let tc = span.in_scope(current_trace_context).expect("a traced span has a context");
        let sc = span_context(&tc).expect("valid");
        assert_eq!(sc.trace_id(), span.context().span().span_context().trace_id());
        assert_eq!(sc.span_id(), span.context().span().span_context().span_id());
        guard.shutdown();
    }

    #[test]
    fn no_span_means_no_headers_and_no_stored_context() {
        let mut headers = http::HeaderMap::new();
        inject_headers(&Context::new(), &mut headers);
        assert!(headers.is_empty());
        assert_eq!(current_trace_context(), None);
    }
}
