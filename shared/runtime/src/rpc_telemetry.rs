//! Server-side RPC telemetry, one tower layer in front of every server: a
//! server span per call, child of the caller's span named by the W3C
//! `traceparent`/`tracestate` metadata, and RED metrics — calls, errors by
//! gRPC code, duration — with the attributes `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code` only. A call ends when its response body (and
//! the trailers carrying the status) has been sent, so streams are measured
//! to their end.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::{
    KeyValue, StringValue,
    metrics::{Counter, Histogram},
};
use prost::Message;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Name of the RED call counter.
pub const REQUESTS: &str = "rpc.server.requests";
/// Name of the RED error counter (calls that did not end OK).
pub const ERRORS: &str = "rpc.server.errors";
/// Name of the RED duration histogram, in seconds.
pub const DURATION: &str = "rpc.server.call.duration";

/// The value of `rpc.service` and `rpc.method` for a path that names no
/// method the server knows (so callers cannot mint metric series).
pub const OTHER: &str = "_OTHER";

/// Adds [`RpcTelemetry`] to a service.
#[derive(Clone, Debug)]
pub struct RpcTelemetryLayer {
    shared: Arc<Shared>,
}

impl RpcTelemetryLayer {
    /// Telemetry for the methods of the `served` services (fully qualified
    /// names) as described by `descriptor_sets` (encoded
    /// `FileDescriptorSet`s); metrics go to the global meter provider.
    pub fn new(descriptor_sets: &[&[u8]], served: &[&str]) -> Self {
        let meter = opentelemetry::global::meter("crm");
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else { continue };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = service.name.unwrap_or_default();
                    let full: Arc<str> =
                        if package.is_empty() { name.into() } else { format!("{package}.{name}").into() };
                    if !served.contains(&&*full) {
                        continue;
                    }
                    for method in service.method {
                        let method: Arc<str> = method.name.unwrap_or_default().into();
                        methods.insert(format!("/{full}/{method}"), (full.clone(), method));
                    }
                }
            }
        }
        let other: Arc<str> = OTHER.into();
        RpcTelemetryLayer {
            shared: Arc::new(Shared {
                methods,
                other: (other.clone(), other),
                requests: meter
                    .u64_counter(REQUESTS)
                    .with_description("gRPC calls served")
                    .with_unit("{request}")
                    .build(),
                errors: meter
                    .u64_counter(ERRORS)
                    .with_description("gRPC calls served that did not end OK")
                    .with_unit("{request}")
                    .build(),
                duration: meter
                    .f64_histogram(DURATION)
                    .with_description("Duration of gRPC calls served, to the last byte of the response")
                    .with_unit("s")
                    .with_boundaries(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ])
                    .build(),
            }),
        }
    }
}

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner, shared: self.shared.clone() }
    }
}

#[derive(Debug)]
struct Shared {
    /// `/package.Service/Method` → (`package.Service`, `Method`).
    methods: HashMap<String, (Arc<str>, Arc<str>)>,
    other: (Arc<str>, Arc<str>),
    requests: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
}

impl Shared {
    fn classify(&self, path: &str) -> (Arc<str>, Arc<str>) {
        self.methods.get(path).unwrap_or(&self.other).clone()
    }
}

/// The service made by [`RpcTelemetryLayer`].
#[derive(Clone, Debug)]
pub struct RpcTelemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Health checks and reflection are measured but not traced: probes would
/// drown the traces.
fn traced(service: &str) -> bool {
    !(service.starts_with("grpc.health.") || service.starts_with("grpc.reflection."))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcTelemetry<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = self.shared.classify(request.uri().path());
        let span = if traced(&service) {
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = %format_args!("{service}/{method}"),
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
            );
            let _ = span.set_parent(crate::telemetry::extract_headers(request.headers()));
            span
        } else {
            Span::none()
        };
        let call = Call { span: span.clone(), start: Instant::now(), shared: self.shared.clone(), service, method };
        // The ready service answers this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let response = span.in_scope(|| inner.call(request));
        Box::pin(async move {
            match response.instrument(span).await {
                Ok(response) => {
                    let status = response.headers().get("grpc-status").and_then(code_of);
                    let (parts, body) = response.into_parts();
                    let body = Observed { inner: Body::new(body), status, call: Some(call) };
                    Ok(http::Response::from_parts(parts, Body::new(body)))
                }
                Err(e) => {
                    call.finish(Code::Unavailable);
                    Err(e)
                }
            }
        })
    }
}

/// One call being served, finished once.
struct Call {
    span: Span,
    start: Instant,
    shared: Arc<Shared>,
    service: Arc<str>,
    method: Arc<str>,
}

impl Call {
    fn finish(self, code: Code) {
        let attributes = [
            KeyValue::new("rpc.service", StringValue::from(self.service)),
            KeyValue::new("rpc.method", StringValue::from(self.method)),
            KeyValue::new("rpc.grpc.status_code", code as i64),
        ];
        self.shared.requests.add(1, &attributes);
        if code != Code::Ok {
            self.shared.errors.add(1, &attributes);
        }
        let elapsed = self.start.elapsed();
        self.shared.duration.record(elapsed.as_secs_f64(), &attributes);
        self.span
            .in_scope(|| tracing::debug!(code = code as i32, elapsed_us = elapsed.as_micros() as u64, "call finished"));
        self.span.record("rpc.grpc.status_code", code as i64);
        if server_fault(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

/// Codes that mean the server failed (OpenTelemetry's rule for gRPC
/// server spans); the others are the caller's doing.
fn server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn code_of(value: &http::HeaderValue) -> Option<Code> {
    value.to_str().ok()?.parse::<i32>().ok().map(Code::from_i32)
}

/// A response body that finishes its call when the status is known: from
/// the trailers, or from the headers of a trailers-only answer, or
/// CANCELLED when the body is dropped before its end.
struct Observed {
    inner: Body,
    status: Option<Code>,
    call: Option<Call>,
}

impl Observed {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")).and_then(code_of) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.finish(code);
            }
            Poll::Ready(None) => {
                let code = self.status.unwrap_or(Code::Unknown);
                self.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let code = if self.inner.is_end_stream() { self.status.unwrap_or(Code::Unknown) } else { Code::Cancelled };
        self.finish(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_named_and_others_are_not() {
        let layer = RpcTelemetryLayer::new(
            &[crm_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET],
            &["crm.gateway.v1.GatewayService", "grpc.health.v1.Health"],
        );
        let (s, m) = layer.shared.classify("/crm.gateway.v1.GatewayService/HandleTouchpoint");
        assert_eq!((&*s, &*m), ("crm.gateway.v1.GatewayService", "HandleTouchpoint"));
        let (s, m) = layer.shared.classify("/grpc.health.v1.Health/Check");
        assert_eq!((&*s, &*m), ("grpc.health.v1.Health", "Check"));
        for path in [
            "/crm.gateway.v1.GatewayService/someone@example.org",
            "/crm.identification.v1.IdentificationService/ResolveIdentity",
            "/x",
            "",
            "/crm.gateway.v1.GatewayService",
        ] {
            let (s, m) = layer.shared.classify(path);
            assert_eq!((&*s, &*m), (OTHER, OTHER), "{path}");
        }
    }

    #[test]
    fn only_server_failures_mark_a_span_as_an_error() {
        assert!(server_fault(Code::Internal));
        assert!(server_fault(Code::Unavailable));
        assert!(!server_fault(Code::Ok));
        assert!(!server_fault(Code::InvalidArgument));
        assert!(!server_fault(Code::NotFound));
        assert!(!server_fault(Code::FailedPrecondition));
    }

    #[test]
    fn status_codes_are_read_from_grpc_status() {
        assert_eq!(code_of(&http::HeaderValue::from_static("0")), Some(Code::Ok));
        assert_eq!(code_of(&http::HeaderValue::from_static("14")), Some(Code::Unavailable));
        assert_eq!(code_of(&http::HeaderValue::from_static("x")), None);
    }
}
