//! Clients of other services: lazily connected channels, so start order
//! does not matter and a down peer fails fast with UNAVAILABLE.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::ConfigError;

/// A lazily connected channel to `addr` (`http://host:port`).
/// `request_timeout` bounds each unary call; feeds pass `None`.
pub fn channel(addr: &str, request_timeout: Option<Duration>) -> Result<Channel, ConfigError> {
    let mut endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| ConfigError::Invalid { what: "peer address", detail: format!("{addr}: {e}") })?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(t) = request_timeout {
        endpoint = endpoint.timeout(t);
    }
    Ok(endpoint.connect_lazy())
}
