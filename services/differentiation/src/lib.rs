//! Differentiation — Differentiate: what each customer is worth and what
//! they need. Builds its projections from the interaction and
//! identification feeds (exactly once, cursor in the same transaction):
//! purchase summaries, lifetime values, real and strategic value, cost to
//! serve, value tiers, RFM, needs-based segment memberships; and answers
//! value and segment reads with consistency tokens.
#![forbid(unsafe_code)]

pub mod api;
pub mod conversions;
pub mod domain;
pub mod migration;
pub mod settings;
pub mod store;

use std::sync::Arc;

use crm_proto::differentiation::v1::differentiation_service_server::DifferentiationServiceServer;
use crm_runtime::{
    client,
    config::{ServiceKind, Settings},
    consumer::{Consumer, InteractionFeed, ProfileFeed},
    db::Store,
    server::{Running, ServeError, ServiceSpec, Shutdown, spawn},
};
use settings::ValueSettings;
use tonic::server::NamedService;

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = <DifferentiationServiceServer<api::DifferentiationApi> as NamedService>::NAME;

/// The cursor name of the interaction feed consumer.
pub const INTERACTION_FEED: &str = "interaction";

/// The cursor name of the identification feed consumer.
pub const IDENTIFICATION_FEED: &str = "identification";

/// Connect and migrate the store, follow the interaction feed (and the
/// identification feed when its address is configured), then serve until
/// `shutdown`, refitting the value model and recomputing the tier
/// boundaries periodically. Health turns SERVING once the feeds are
/// connected. Its own settings come from the environment ([`settings`]).
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Running, ServeError> {
    start_with(settings, &ValueSettings::from_env()?, shutdown).await
}

/// [`start`] with explicit differentiation settings.
pub async fn start_with(
    settings: &Settings,
    values: &ValueSettings,
    shutdown: Shutdown,
) -> Result<Running, ServeError> {
    let interaction = settings.peers.require(ServiceKind::Interaction)?;
    let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
    store.migrate::<migration::Migrator>().await?;
    store::values::ensure_policy(&store, &values.initial_policy).await?;
    let consumer = Consumer {
        name: INTERACTION_FEED.to_owned(),
        store: store.clone(),
        source: Arc::new(InteractionFeed(client::channel(&interaction, None)?)),
        projection: Arc::new(store::PurchaseSummaryProjection),
    };
    let progress = consumer.spawn(shutdown.clone()).await?;
    let identity = match &settings.peers.identification {
        Some(addr) => {
            let consumer = Consumer {
                name: IDENTIFICATION_FEED.to_owned(),
                store: store.clone(),
                source: Arc::new(ProfileFeed(client::channel(addr, None)?)),
                projection: Arc::new(store::IdentityProjection),
            };
            Some(consumer.spawn(shutdown.clone()).await?)
        }
        None => None,
    };
    if !values.refit_interval.is_zero() {
        store::models::schedule_refit(store.clone(), values.refit_interval, shutdown.clone());
    }
    if !values.recompute_interval.is_zero() || values.recompute_events > 0 {
        let (every, events) = (values.recompute_interval, values.recompute_events);
        tokio::spawn(recompute_periodically(store.clone(), every, events, shutdown.clone()));
    }
    // Waits for a `min_sequence` end a little before the request times out,
    // so that the answer is DEADLINE_EXCEEDED rather than a cancellation.
    let max_wait = settings.request_timeout.saturating_sub(settings.request_timeout / 10);
    let api =
        api::DifferentiationApi::new(store, progress.clone(), max_wait).following_identification(identity.clone());
    let service = DifferentiationServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let ready = async move {
        progress.connected().await;
        if let Some(p) = identity {
            p.connected().await;
        }
    };
    let spec = ServiceSpec { grpc_names: vec![SERVICE_NAME], routes: tonic::service::Routes::new(service), ready };
    spawn(settings, spec, shutdown).await
}

/// How often the recompute job looks at the count of events applied.
const RECOMPUTE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Recompute the tier boundaries every `every` (zero: not by time; CLVs
/// and recencies move with time even when no event arrives) and once
/// `events` interaction events (0: not by count) were applied since the
/// last recompute, until shutdown.
async fn recompute_periodically(store: Store, every: std::time::Duration, events: u64, shutdown: Shutdown) {
    let tick = if every.is_zero() { RECOMPUTE_CHECK } else { RECOMPUTE_CHECK.min(every) };
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let by_time = !every.is_zero() && last.elapsed() >= every;
        let by_count = match store::values::recompute_due(&store, events).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tier recompute count");
                false
            }
        };
        if !by_time && !by_count {
            continue;
        }
        last = tokio::time::Instant::now();
        if let Err(e) = store::values::recompute(&store).await {
            tracing::warn!(error = %e, "tier recompute failed; retrying at the next period");
        }
    }
}
