//! The feed consumer: follows another service's feed and applies each event
//! exactly once, storing its cursor in the same transaction as the effect,
//! so a crash or restart loses nothing and applies nothing twice. Each
//! event is applied in its own span, linked to the span that produced it.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use sea_orm::{ConnectionTrait, DbErr};
use tokio::sync::watch;
use tonic::Status;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    client::TracedChannel,
    db::{Store, WriteTxn, stmt},
    error::RuntimeError,
    feed::{Delivery, FeedEvent},
    server::Shutdown,
};

/// A stream of feed deliveries.
pub type DeliveryStream<E> = BoxStream<'static, Result<Delivery<E>, Status>>;

/// Where events come from.
pub trait FeedSource<E>: Send + Sync + 'static {
    /// Open a stream of the events after `after`.
    fn subscribe(&self, after: i64) -> BoxFuture<'static, Result<DeliveryStream<E>, Status>>;
}

/// What a consumer does with each event, inside the cursor's transaction.
pub trait Projection<E>: Send + Sync + 'static {
    /// Apply one event. An error rolls the transaction back; the event is
    /// retried after a reconnect.
    fn apply<'a>(&'a self, tx: &'a mut WriteTxn, event: &'a E) -> BoxFuture<'a, Result<(), RuntimeError>>;
}

/// The last applied sequence of a consumer, as stored.
pub async fn load_cursor<C: ConnectionTrait>(c: &C, name: &str) -> Result<i64, DbErr> {
    let row = c
        .query_one_raw(stmt(
            c.get_database_backend(),
            "SELECT position FROM feed_cursors WHERE name = ?",
            vec![name.into()],
        ))
        .await?;
    match row {
        Some(r) => r.try_get_by_index(0),
        None => Ok(0),
    }
}

/// Move a cursor from `to - 1` to `to`, after the write's deferred
/// statements (on SQLite in the same round trip); false if it was not at
/// `to - 1`. The first event's cursor may not be stored yet.
async fn advance_cursor(tx: &mut WriteTxn, name: &str, to: i64) -> Result<bool, DbErr> {
    let (sql, values) = if to == 1 {
        (
            "INSERT INTO feed_cursors (name, position) VALUES (?, ?) ON CONFLICT (name) DO UPDATE \
             SET position = excluded.position WHERE feed_cursors.position = ? RETURNING position",
            vec![name.into(), to.into(), (to - 1).into()],
        )
    } else {
        (
            "UPDATE feed_cursors SET position = ? WHERE name = ? AND position = ? RETURNING position",
            vec![to.into(), name.into(), (to - 1).into()],
        )
    };
    let advance = tx.stmt(sql, values);
    Ok(tx.query_one_after_deferred(advance).await?.is_some())
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied, cursor advanced.
    Applied,
    /// At or before the cursor: already applied, skipped.
    Duplicate,
}

/// Apply one event exactly once: run the projection and advance the
/// cursor from the event's predecessor in one transaction. The cursor is
/// checked where it is advanced, so the common case reads nothing first; a
/// redelivered event's effects are rolled back, and it is reported as a
/// duplicate.
pub async fn apply_once<E: FeedEvent, P: Projection<E> + ?Sized>(
    store: &Store,
    name: &str,
    projection: &P,
    event: &E,
) -> Result<Applied, RuntimeError> {
    let seq = event.sequence();
    let mut tx = store.begin_write().await?;
    let applied = projection.apply(&mut tx, event).await;
    if applied.is_ok() && advance_cursor(&mut tx, name, seq).await? {
        tx.commit().await?;
        return Ok(Applied::Applied);
    }
    tx.rollback().await?;
    // Not applied: the stored cursor tells a duplicate from a gap.
    let cursor = load_cursor(store.conn(), name).await?;
    if seq <= cursor {
        return Ok(Applied::Duplicate);
    }
    if seq != cursor + 1 {
        return Err(RuntimeError::Internal(format!("feed {name} skipped from {cursor} to {seq}")));
    }
    applied?;
    Err(RuntimeError::Aborted(format!("cursor {name} moved concurrently")))
}

/// A running consumer's progress, for `min_sequence` waits and readiness.
#[derive(Clone, Debug)]
pub struct Progress {
    applied: watch::Receiver<i64>,
    connected: watch::Receiver<bool>,
}

impl Progress {
    /// The last applied sequence.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// A receiver of the applied sequence.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.applied.clone()
    }

    /// Resolves once the consumer has connected to its source.
    pub async fn connected(&self) {
        let mut rx = self.connected.clone();
        let _ = rx.wait_for(|&c| c).await;
    }
}

/// A consumer of one feed into one store.
pub struct Consumer<E> {
    /// Cursor name, e.g. "interaction".
    pub name: String,
    /// The store holding cursor and projection.
    pub store: Store,
    /// Where events come from.
    pub source: Arc<dyn FeedSource<E>>,
    /// What to do with them.
    pub projection: Arc<dyn Projection<E>>,
}

impl<E: FeedEvent> Consumer<E> {
    /// Start following the feed in the background until `shutdown` has
    /// drained (in-flight reads may be waiting for the next event).
    pub async fn spawn(self, shutdown: Shutdown) -> Result<Progress, DbErr> {
        let start = load_cursor(self.store.conn(), &self.name).await?;
        let (applied_tx, applied_rx) = watch::channel(start);
        let (connected_tx, connected_rx) = watch::channel(false);
        tokio::spawn(self.run(applied_tx, connected_tx, shutdown));
        Ok(Progress { applied: applied_rx, connected: connected_rx })
    }

    async fn run(self, applied: watch::Sender<i64>, connected: watch::Sender<bool>, shutdown: Shutdown) {
        let mut backoff = Backoff::new();
        loop {
            if shutdown.is_drained() {
                return;
            }
            let cursor = match load_cursor(self.store.conn(), &self.name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(feed = %self.name, error = %e, "cannot read cursor");
                    if backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            applied.send_if_modified(|a| {
                let changed = *a != cursor;
                *a = cursor;
                changed
            });
            let mut stream = tokio::select! {
                r = self.source.subscribe(cursor) => match r {
                    Ok(s) => s,
                    Err(status) => {
                        tracing::warn!(feed = %self.name, code = ?status.code(), "feed source unavailable");
                        if backoff.wait(&shutdown).await { return; }
                        continue;
                    }
                },
                _ = shutdown.drained() => return,
            };
            connected.send_replace(true);
            tracing::info!(feed = %self.name, after = cursor, "following feed");
            loop {
                // Once drained, stop before applying anything more.
                let next = tokio::select! {
                    biased;
                    _ = shutdown.drained() => return,
                    n = stream.next() => n,
                };
                let Delivery { event, trace_context } = match next {
                    Some(Ok(d)) => d,
                    Some(Err(status)) => {
                        tracing::warn!(feed = %self.name, code = ?status.code(), "feed interrupted");
                        break;
                    }
                    None => {
                        tracing::info!(feed = %self.name, "feed ended");
                        break;
                    }
                };
                let span = tracing::info_span!(
                    "feed.apply",
                    otel.name = %format!("{} apply", self.name),
                    otel.kind = "consumer",
                    feed = %self.name,
                    sequence = event.sequence(),
                    kind = event.kind(),
                );
                // A new trace per applied event, linked to the producer's
                // span: the producer's request ended long ago.
                if let Some(producer) = trace_context.as_ref().and_then(crate::telemetry::span_context) {
                    span.add_link(producer);
                }
                let outcome =
                    apply_once(&self.store, &self.name, &*self.projection, &event).instrument(span.clone()).await;
                drop(span);
                match outcome {
                    Ok(_) => {
                        backoff.reset();
                        applied.send_if_modified(|a| {
                            let moved = event.sequence() > *a;
                            if moved {
                                *a = event.sequence();
                            }
                            moved
                        });
                    }
                    Err(e) => {
                        tracing::error!(feed = %self.name, sequence = event.sequence(), error = %e, "cannot apply event");
                        break;
                    }
                }
            }
            if backoff.wait(&shutdown).await {
                return;
            }
        }
    }
}

/// Exponential backoff from 50 ms to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: Duration::from_millis(50) }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
    /// Sleep; true if shutdown came first.
    async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = shutdown.drained() => true,
        }
    }
}

/// The identification feed over gRPC.
#[derive(Clone, Debug)]
pub struct ProfileFeed(pub TracedChannel);

impl FeedSource<crm_proto::identification::v1::ProfileEvent> for ProfileFeed {
    fn subscribe(
        &self,
        after: i64,
    ) -> BoxFuture<'static, Result<DeliveryStream<crm_proto::identification::v1::ProfileEvent>, Status>> {
        use crm_proto::identification::v1::{
            SubscribeRequest, identification_service_client::IdentificationServiceClient,
        };
        let mut client = IdentificationServiceClient::new(self.0.clone());
        Box::pin(async move {
            let stream = client.subscribe(SubscribeRequest { after_sequence: after }).await?.into_inner();
            Ok(stream
                .map(|r| {
                    r.and_then(|resp| match resp.event {
                        Some(event) => Ok(Delivery { event, trace_context: resp.trace_context }),
                        None => Err(Status::internal("feed response without event")),
                    })
                })
                .boxed())
        })
    }
}

/// The interaction feed over gRPC.
#[derive(Clone, Debug)]
pub struct InteractionFeed(pub TracedChannel);

impl FeedSource<crm_proto::interaction::v1::InteractionEvent> for InteractionFeed {
    fn subscribe(
        &self,
        after: i64,
    ) -> BoxFuture<'static, Result<DeliveryStream<crm_proto::interaction::v1::InteractionEvent>, Status>> {
        use crm_proto::interaction::v1::{SubscribeRequest, interaction_service_client::InteractionServiceClient};
        let mut client = InteractionServiceClient::new(self.0.clone());
        Box::pin(async move {
            let stream = client.subscribe(SubscribeRequest { after_sequence: after }).await?.into_inner();
            Ok(stream
                .map(|r| {
                    r.and_then(|resp| match resp.event {
                        Some(event) => Ok(Delivery { event, trace_context: resp.trace_context }),
                        None => Err(Status::internal("feed response without event")),
                    })
                })
                .boxed())
        })
    }
}

/// A feed read straight from a store in the same process (tests, tools).
#[derive(Clone, Debug)]
pub struct LocalFeed {
    /// The store holding the event log.
    pub store: Store,
    /// Ends the streams.
    pub shutdown: Shutdown,
}

impl<E: FeedEvent> FeedSource<E> for LocalFeed {
    fn subscribe(&self, after: i64) -> BoxFuture<'static, Result<DeliveryStream<E>, Status>> {
        let stream = crate::feed::deliveries::<E>(self.store.clone(), after, self.shutdown.clone());
        Box::pin(async move { Ok(stream.boxed()) })
    }
}
