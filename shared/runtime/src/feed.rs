//! The feed: `Subscribe(after_sequence)` replays the event log from a
//! position, then tails it live, in order, with nothing skipped. Each
//! event is delivered with the trace context of the operation that produced
//! it.

use std::{pin::Pin, time::Duration};

use crm_proto::common::v1::TraceContext;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use crate::{db::Store, error::FieldViolations, eventlog, server::Shutdown, validate};

/// The stream type generated `Subscribe` handlers return.
pub type ResponseStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

/// The whole of a `Subscribe` handler: check `after`, then stream the
/// events after it, each wrapped with its producer's trace context in the
/// RPC's response by `wrap`.
pub fn subscribe_response<E: FeedEvent, R: Send + 'static>(
    store: Store,
    shutdown: Shutdown,
    after: i64,
    wrap: fn(E, Option<TraceContext>) -> R,
) -> Result<Response<ResponseStream<R>>, Status> {
    let mut v = FieldViolations::new();
    validate::sequence(&mut v, "after_sequence", after);
    v.finish()?;
    let stream = deliveries::<E>(store, after, shutdown).map(move |r| r.map(|d| wrap(d.event, d.trace_context)));
    Ok(Response::new(Box::pin(stream)))
}

/// One event as the feed delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<E> {
    /// The event, with its sequence set.
    pub event: E,
    /// The W3C trace context of the operation that produced it, if traced.
    pub trace_context: Option<TraceContext>,
}

/// An event type carried by a feed: a protobuf message with a sequence.
pub trait FeedEvent: prost::Message + Default + Send + Sync + 'static {
    /// Its position in the feed.
    fn sequence(&self) -> i64;
    /// Set its position (the log assigns it).
    fn set_sequence(&mut self, sequence: i64);
    /// The name of its kind, for operators and logs.
    fn kind(&self) -> &'static str;
}

/// Events read per database round trip while replaying.
const BATCH: u64 = 512;
/// How often a tail polls when no commit was seen in this process (other
/// replicas commit to the same database).
const POLL: Duration = Duration::from_millis(500);

/// Stream the events after `after`: replay, then tail live until the client
/// goes away or the server shuts down.
pub fn subscribe<E: FeedEvent>(store: Store, after: i64, shutdown: Shutdown) -> impl Stream<Item = Result<E, Status>> {
    deliveries(store, after, shutdown).map(|r| r.map(|d| d.event))
}

/// `subscribe`, with each event's trace context.
pub fn deliveries<E: FeedEvent>(
    store: Store,
    after: i64,
    shutdown: Shutdown,
) -> impl Stream<Item = Result<Delivery<E>, Status>> {
    let (tx, rx) = mpsc::channel::<Result<Delivery<E>, Status>>(BATCH as usize);
    tokio::spawn(async move {
        let mut committed = store.committed();
        let mut cursor = after.max(0);
        loop {
            let batch = match eventlog::read_after(store.conn(), cursor, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "feed read failed");
                    let _ = tx.send(Err(Status::unavailable("feed temporarily unavailable"))).await;
                    return;
                }
            };
            let full = batch.len() as u64 == BATCH;
            for stored in batch {
                if stored.sequence != cursor + 1 {
                    // Gap-freedom is the log's invariant; never paper over a hole.
                    tracing::error!(expected = cursor + 1, found = stored.sequence, "feed gap");
                    let _ = tx.send(Err(Status::internal("internal error"))).await;
                    return;
                }
                let mut event = match E::decode(stored.payload.as_slice()) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(sequence = stored.sequence, error = %e, "undecodable event");
                        let _ = tx.send(Err(Status::internal("internal error"))).await;
                        return;
                    }
                };
                event.set_sequence(stored.sequence);
                cursor = stored.sequence;
                store.observe_committed(cursor);
                let delivery = Delivery { event, trace_context: stored.trace_context };
                if tx.send(Ok(delivery)).await.is_err() {
                    return; // the subscriber went away
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.wait() => return,
                _ = committed.wait_for(|&c| c > cursor) => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Generate `FeedEvent` for a generated event message with `sequence`
/// and a `kind` oneof.
macro_rules! feed_event {
    ($ty:ty, $kind:path { $($variant:ident => $name:literal),* $(,)? }) => {
        impl FeedEvent for $ty {
            fn sequence(&self) -> i64 {
                self.sequence
            }
            fn set_sequence(&mut self, sequence: i64) {
                self.sequence = sequence;
            }
            fn kind(&self) -> &'static str {
                use $kind as K;
                match &self.kind {
                    $(Some(K::$variant(_)) => $name,)*
                    None => "unknown",
                }
            }
        }
    };
}

feed_event!(crm_proto::identification::v1::ProfileEvent, crm_proto::identification::v1::profile_event::Kind {
    ProfileCreated => "profile_created",
    ProfileUpdated => "profile_updated",
    IdentifiersChanged => "identifiers_changed",
    ProfileMerged => "profile_merged",
    ProfileUnmerged => "profile_unmerged",
    ProfileErased => "profile_erased",
});

feed_event!(crm_proto::interaction::v1::InteractionEvent, crm_proto::interaction::v1::interaction_event::Kind {
    InteractionRecorded => "interaction_recorded",
    PurchaseRecorded => "purchase_recorded",
    ReturnRecorded => "return_recorded",
    SurveyResponseRecorded => "survey_response_recorded",
    ComplaintChanged => "complaint_changed",
    DefectionRecorded => "defection_recorded",
    ConsentRecorded => "consent_recorded",
    CustomerRekeyed => "customer_rekeyed",
    CustomerErased => "customer_erased",
});
