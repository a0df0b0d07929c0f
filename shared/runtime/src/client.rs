//! Clients of other services: lazily connected channels, so start order
//! does not matter and a down peer fails fast with UNAVAILABLE. Every call
//! carries the caller's W3C trace context (`traceparent`, `tracestate`), so
//! one workflow is one trace across the services.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};
use tower::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::ConfigError;

/// A channel that puts the current span's trace context in the metadata of
/// every call. Generated clients take it like a `Channel`.
#[derive(Clone, Debug)]
pub struct TracedChannel {
    inner: Channel,
}

impl TracedChannel {
    /// Trace calls made on `inner`.
    pub fn new(inner: Channel) -> Self {
        TracedChannel { inner }
    }
}

impl Service<http::Request<Body>> for TracedChannel {
    type Response = http::Response<Body>;
    type Error = <Channel as Service<http::Request<Body>>>::Error;
    type Future = <Channel as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // Generated clients call this while the caller's future is polled,
        // so the current span is the caller's.
        crate::telemetry::inject_headers(&tracing::Span::current().context(), request.headers_mut());
        self.inner.call(request)
    }
}

/// The endpoint for `addr` (`http://host:port`): short connect timeout, no
/// Nagle delay, keep-alive. `request_timeout` bounds each unary call.
pub fn endpoint(addr: &str, request_timeout: Option<Duration>) -> Result<Endpoint, ConfigError> {
    let mut endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| ConfigError::Invalid { what: "peer address", detail: format!("{addr}: {e}") })?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(t) = request_timeout {
        endpoint = endpoint.timeout(t);
    }
    Ok(endpoint)
}

/// A lazily connected, traced channel to `addr` (`http://host:port`).
/// `request_timeout` bounds each unary call; feeds pass `None`.
pub fn channel(addr: &str, request_timeout: Option<Duration>) -> Result<TracedChannel, ConfigError> {
    Ok(TracedChannel::new(endpoint(addr, request_timeout)?.connect_lazy()))
}
