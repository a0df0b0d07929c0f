//! A small OTLP/gRPC receiver for tests: it accepts trace and metric
//! exports on an ephemeral port and keeps everything it was sent, so a test
//! can look at exactly what the suite exported.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{ResourceMetrics, metric::Data},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, Span},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<ResourceSpans>>>,
    metrics: Arc<Mutex<Vec<ResourceMetrics>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().map_err(|_| Status::internal("poisoned"))?;
        spans.extend(request.into_inner().resource_spans);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().map_err(|_| Status::internal("poisoned"))?;
        metrics.extend(request.into_inner().resource_metrics);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The receiver, serving until dropped.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Received,
    stop: Option<oneshot::Sender<()>>,
    _task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One exported span with the resource it came from.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    /// `service.name` of the exporting process.
    pub service_name: String,
    /// Every resource attribute.
    pub resource: Vec<KeyValue>,
    /// The span.
    pub span: Span,
}

impl ExportedSpan {
    /// A string attribute of the span.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// Its trace id, in hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Its span id, in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Its parent's span id, in hex (empty for a root).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// One metric data point: the metric's name, the exporting service, and the
/// point's attributes and value (a sum's value or a histogram's count).
#[derive(Debug, Clone)]
pub struct ExportedPoint {
    /// `service.name` of the exporting process.
    pub service_name: String,
    /// Metric name.
    pub metric: String,
    /// The point's attributes.
    pub attributes: Vec<KeyValue>,
    /// The counter's value or the histogram's count.
    pub value: f64,
}

impl ExportedPoint {
    /// An attribute of the point, as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.attributes, key)
    }
}

impl Receiver {
    /// Start on 127.0.0.1 and an ephemeral port.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local addr: {e}"));
        let received = Received::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(MetricsServiceServer::new(received.clone()));
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = server
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver { addr, received, stop: Some(stop), _task: task }
    }

    /// `http://addr`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        let all = self.received.spans.lock().map(|s| s.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for rs in all {
            let resource = rs.resource.unwrap_or_default().attributes;
            let service_name = attribute(&resource, "service.name").unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(ExportedSpan { service_name: service_name.clone(), resource: resource.clone(), span });
                }
            }
        }
        out
    }

    /// Every metric data point received so far.
    pub fn points(&self) -> Vec<ExportedPoint> {
        let all = self.received.metrics.lock().map(|m| m.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for rm in all {
            let service_name =
                attribute(&rm.resource.unwrap_or_default().attributes, "service.name").unwrap_or_default();
            for sm in rm.scope_metrics {
                for metric in sm.metrics {
                    let point = |attributes: Vec<KeyValue>, value: f64| ExportedPoint {
                        service_name: service_name.clone(),
                        metric: metric.name.clone(),
                        attributes,
                        value,
                    };
                    match &metric.data {
                        Some(Data::Sum(sum)) => {
                            for p in &sum.data_points {
                                let value = match p.value {
                                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                                        i,
                                    )) => i as f64,
                                    Some(
                                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d),
                                    ) => d,
                                    None => 0.0,
                                };
                                out.push(point(p.attributes.clone(), value));
                            }
                        }
                        Some(Data::Histogram(h)) => {
                            for p in &h.data_points {
                                out.push(point(p.attributes.clone(), p.count as f64));
                            }
                        }
                        Some(Data::Gauge(g)) => {
                            for p in &g.data_points {
                                out.push(point(p.attributes.clone(), 0.0));
                            }
                        }
                        Some(Data::ExponentialHistogram(h)) => {
                            for p in &h.data_points {
                                out.push(point(p.attributes.clone(), p.count as f64));
                            }
                        }
                        Some(Data::Summary(s)) => {
                            for p in &s.data_points {
                                out.push(point(p.attributes.clone(), p.count as f64));
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        out
    }

    /// The resources metrics were exported with.
    pub fn metric_resources(&self) -> Vec<Resource> {
        let all = self.received.metrics.lock().map(|m| m.clone()).unwrap_or_default();
        all.into_iter().filter_map(|rm| rm.resource).collect()
    }
}

/// An attribute's value as text (strings as they are, others formatted).
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(|kv| any_text(kv.value.as_ref()))
}

/// Any attribute value as text.
pub fn any_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::ArrayValue(a)) => a.values.iter().map(|v| any_text(Some(v))).collect::<Vec<_>>().join(" "),
        Some(Value::KvlistValue(l)) => l
            .values
            .iter()
            .map(|kv| format!("{}={}", kv.key, any_text(kv.value.as_ref())))
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::StringValueStrindex(i)) => i.to_string(),
        None => String::new(),
    }
}

/// Everything a span says, as text: name, attributes, events, links, trace
/// state, status, and its resource.
pub fn span_text(s: &ExportedSpan) -> String {
    let mut out = vec![s.span.name.clone(), s.span.trace_state.clone()];
    let kvs = |out: &mut Vec<String>, attributes: &[KeyValue]| {
        for kv in attributes {
            out.push(format!("{}={}", kv.key, any_text(kv.value.as_ref())));
        }
    };
    kvs(&mut out, &s.span.attributes);
    kvs(&mut out, &s.resource);
    for e in &s.span.events {
        out.push(e.name.clone());
        kvs(&mut out, &e.attributes);
    }
    for l in &s.span.links {
        out.push(l.trace_state.clone());
        kvs(&mut out, &l.attributes);
    }
    if let Some(status) = &s.span.status {
        out.push(status.message.clone());
    }
    out.join("\n")
}

/// Everything a metric point says, as text: its name, service and attributes.
pub fn point_text(p: &ExportedPoint) -> String {
    let mut out = vec![p.metric.clone(), p.service_name.clone()];
    for kv in &p.attributes {
        out.push(format!("{}={}", kv.key, any_text(kv.value.as_ref())));
    }
    out.join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
