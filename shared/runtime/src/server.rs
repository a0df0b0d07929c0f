//! The server bootstrap, written once: health (NOT_SERVING until ready),
//! reflection v1 and v1alpha, RPC telemetry (a server span per call joined
//! to the caller's trace, RED metrics), timeouts, and graceful shutdown that
//! drains in-flight calls within a deadline.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::{config::Settings, rpc_telemetry::RpcTelemetryLayer};

/// A shutdown signal that any number of tasks can wait on, in two phases:
/// *triggered* (stop accepting work: health turns NOT_SERVING, listeners
/// close, feeds end) and *drained* (every server started with it has
/// finished its in-flight calls, or given up at the drain timeout). Work
/// that in-flight calls depend on, such as the feed consumers a
/// `min_sequence` read waits for, runs until drained.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<Phase>,
    tx: Arc<watch::Sender<Phase>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Phase {
    triggered: bool,
    /// Servers started with this signal that have not finished yet.
    serving: usize,
}

impl Phase {
    fn drained(self) -> bool {
        self.triggered && self.serving == 0
    }
}

/// Held by a running server; dropping it tells the signal that server has
/// finished.
#[derive(Debug)]
pub struct ServingGuard(Arc<watch::Sender<Phase>>);

impl Drop for ServingGuard {
    fn drop(&mut self) {
        self.0.send_modify(|p| p.serving = p.serving.saturating_sub(1));
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(Phase::default());
        Shutdown { rx, tx: Arc::new(tx) }
    }

    /// Trigger it (idempotent).
    pub fn trigger(&self) {
        self.tx.send_modify(|p| p.triggered = true);
    }

    /// Whether it was triggered.
    pub fn is_triggered(&self) -> bool {
        self.rx.borrow().triggered
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|p| p.triggered).await;
    }

    /// Whether it was triggered and every server has finished.
    pub fn is_drained(&self) -> bool {
        self.rx.borrow().drained()
    }

    /// Resolves once triggered and every server has finished.
    pub async fn drained(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|p| p.drained()).await;
    }

    /// Count a server as running until the guard is dropped.
    pub fn serving(&self) -> ServingGuard {
        self.tx.send_modify(|p| p.serving += 1);
        ServingGuard(self.tx.clone())
    }

    /// A signal triggered by SIGTERM or SIGINT (Ctrl-C).
    pub fn on_signals() -> Self {
        let s = Shutdown::new();
        let trigger = s.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            trigger.trigger();
        });
        s
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A server that failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Reflection could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The store failed at start-up.
    #[error("store: {0}")]
    Store(#[from] sea_orm::DbErr),
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Where it listens (the real port when 0 was asked).
    pub local_addr: SocketAddr,
    /// Resolves when it has stopped.
    pub task: JoinHandle<Result<(), ServeError>>,
}

/// What a service hands to the runtime to be served.
pub struct ServiceSpec<R> {
    /// Fully-qualified gRPC service names (health and reflection list them).
    pub grpc_names: Vec<&'static str>,
    /// The service's routes.
    pub routes: Routes,
    /// Resolves when the service is ready (migrations ran, feeds connected).
    pub ready: R,
}

/// The services every server answers besides its own.
const ALWAYS_SERVED: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Bind, then serve `spec` until `shutdown`; health turns SERVING when
/// `spec.ready` resolves and NOT_SERVING as soon as shutdown starts.
pub async fn spawn<R>(settings: &Settings, spec: ServiceSpec<R>, shutdown: Shutdown) -> Result<Running, ServeError>
where
    R: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: settings.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: settings.listen, source })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::NotServing).await;
    for name in &spec.grpc_names {
        health.set_service_status(*name, ServingStatus::NotServing).await;
    }

    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so clients can decode field violations.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(ALWAYS_SERVED[0])
            .with_service_name(ALWAYS_SERVED[1])
            .with_service_name(ALWAYS_SERVED[2]);
        for name in &spec.grpc_names {
            b = b.with_service_name(*name);
        }
        b
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let routes = spec.routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

    let service = settings.kind.name();
    let served: Vec<&str> = spec.grpc_names.iter().copied().chain(ALWAYS_SERVED).collect();
    let telemetry = RpcTelemetryLayer::new(
        &[
            crm_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        &served,
    );
    let router =
        tonic::transport::Server::builder().timeout(settings.request_timeout).layer(telemetry).add_routes(routes);

    // Readiness.
    {
        let health = health.clone();
        let names = spec.grpc_names.clone();
        let shutdown = shutdown.clone();
        let ready = spec.ready;
        tokio::spawn(async move {
            tokio::select! {
                _ = ready => {}
                _ = shutdown.wait() => return,
            }
            if shutdown.is_triggered() {
                return;
            }
            health.set_service_status("", ServingStatus::Serving).await;
            for name in names {
                health.set_service_status(name, ServingStatus::Serving).await;
            }
            tracing::info!(service, "serving");
        });
    }

    let drain = settings.drain_timeout;
    let guard = shutdown.serving();
    let names = spec.grpc_names.clone();
    let task = tokio::spawn(async move {
        let _guard = guard;
        let stop = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                shutdown.wait().await;
                health.set_service_status("", ServingStatus::NotServing).await;
                for name in names {
                    health.set_service_status(name, ServingStatus::NotServing).await;
                }
            }
        };
        // Accepted sockets must not wait for delayed ACKs (Nagle): small
        // gRPC frames would stall ~40 ms at the tail.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = router.serve_with_incoming_shutdown(incoming, stop);
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => r?,
            _ = async { shutdown.wait().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(service, "drain timeout: closing remaining calls");
            }
        }
        tracing::info!(service, "stopped");
        Ok(())
    });
    tracing::info!(service, %local_addr, "listening");
    Ok(Running { local_addr, task })
}
