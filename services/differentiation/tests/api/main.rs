//! Black-box tests of differentiation over gRPC, following a real
//! interaction server's feed, on SQLite or PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cdnow;
mod defections;
mod lifecycle;
mod migration;
mod refit;
mod retention;
mod segments;
mod tiers;

use std::time::Duration;

use crm_differentiation::settings::ValueSettings;
use crm_proto::{
    common::v1::{Channel, FeedSequences},
    differentiation::v1::{self as pb, differentiation_service_client::DifferentiationServiceClient},
    identification::v1::identification_service_client::IdentificationServiceClient,
    interaction::v1::{self as ipb, interaction_service_client::InteractionServiceClient},
};
use crm_runtime::{
    config::{Peers, ServiceKind, Settings},
    error::field_violations,
    ids::new_id,
    server::Shutdown,
    testing::{TestDb, TestServer},
};
use tonic::{Code, Request, transport::Channel as GrpcChannel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub(crate) struct App {
    _identification: TestServer,
    _interaction: TestServer,
    _differentiation: TestServer,
    pub(crate) interactions: InteractionServiceClient<GrpcChannel>,
    pub(crate) values: DifferentiationServiceClient<GrpcChannel>,
    pub(crate) profiles: IdentificationServiceClient<GrpcChannel>,
}

impl App {
    /// The URL of differentiation's store, to check what it holds.
    pub(crate) fn differentiation_store(&self) -> &str {
        &self._differentiation.db().url
    }
}

/// Wait until differentiation has applied the feed up to `last` (a
/// projection may take longer than one request's deadline to catch up).
pub(crate) async fn caught_up(app: &mut App, last: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let read = pb::GetCustomerValueRequest { customer_id: new_id(), min_sequence: at(last) };
        match app.values.get_customer_value(read).await {
            Ok(_) => return,
            Err(e) if e.code() == Code::DeadlineExceeded && tokio::time::Instant::now() < deadline => {}
            Err(e) => panic!("caught up: {e:?}"),
        }
    }
}

/// Fit a value model in EUR, activated; it must converge.
pub(crate) async fn fit_active_eur_model(app: &mut App) -> pb::ValueModel {
    let model = app
        .values
        .fit_value_model(pb::FitValueModelRequest { activate: true, currency_code: "EUR".into(), ..Default::default() })
        .await
        .expect("fit")
        .into_inner()
        .model
        .expect("model");
    assert!(model.converged && model.active, "{model:?}");
    model
}

pub(crate) async fn spawn_app() -> App {
    spawn_app_with(ValueSettings::default()).await
}

/// The suite with differentiation's own settings.
pub(crate) async fn spawn_app_with(values: ValueSettings) -> App {
    let identification = TestServer::start(ServiceKind::Identification, Peers::default(), |s, sd| async move {
        crm_identification::start(&s, sd).await
    })
    .await;
    let peers = Peers { identification: Some(identification.url()), ..Default::default() };
    let interaction =
        TestServer::start(ServiceKind::Interaction, peers, |s, sd| async move { crm_interaction::start(&s, sd).await })
            .await;
    let peers = Peers {
        interaction: Some(interaction.url()),
        identification: Some(identification.url()),
        ..Default::default()
    };
    let differentiation = TestServer::start(ServiceKind::Differentiation, peers, |s, sd| async move {
        crm_differentiation::start_with(&s, &values, sd).await
    })
    .await;
    App {
        profiles: IdentificationServiceClient::new(identification.channel()),
        interactions: InteractionServiceClient::new(interaction.channel()),
        values: DifferentiationServiceClient::new(differentiation.channel()),
        _identification: identification,
        _interaction: interaction,
        _differentiation: differentiation,
    }
}

pub(crate) fn purchase(customer: &str, day: i64, currency: &str, price: i64, cost: i64) -> ipb::RecordPurchaseRequest {
    ipb::RecordPurchaseRequest {
        customer_id: customer.to_owned(),
        channel: Channel::Web as i32,
        occur_time: Some(prost_types::Timestamp { seconds: 1_700_000_000 + day * 86_400, nanos: 0 }),
        currency_code: currency.into(),
        lines: vec![ipb::OrderLine {
            sku: "S".into(),
            category: "c".into(),
            quantity: 1,
            unit_price_minor: price,
            unit_cost_minor: cost,
        }],
        ..Default::default()
    }
}

pub(crate) fn at(seq: i64) -> Option<FeedSequences> {
    Some(FeedSequences { interaction_sequence: seq, identification_sequence: 0 })
}

#[tokio::test]
async fn a_purchase_is_in_the_value_when_read_with_its_sequence() {
    let mut app = spawn_app().await;
    let customer = new_id();
    let mut last = 0;
    for (day, price, cost) in [(0, 1000, 600), (0, 500, 100), (3, 2000, 1500)] {
        last = app
            .interactions
            .record_purchase(purchase(&customer, day, "EUR", price, cost))
            .await
            .expect("purchase")
            .into_inner()
            .sequence;
    }
    last = app
        .interactions
        .record_purchase(purchase(&customer, 5, "USD", 700, 200))
        .await
        .expect("usd")
        .into_inner()
        .sequence
        .max(last);
    let r = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: customer.clone(), min_sequence: at(last) })
        .await
        .expect("value")
        .into_inner();
    assert!(r.as_of_sequence.expect("as of").interaction_sequence >= last);
    let s = r.value.expect("value").summary.expect("summary");
    assert_eq!((s.order_count, s.transaction_count, s.frequency), (4, 3, 2), "two orders on day 0 are one transaction");
    assert!((s.recency_days - 5.0).abs() < 1e-6);
    let eur = s.totals.iter().find(|t| t.currency_code == "EUR").expect("eur");
    assert_eq!((eur.revenue_minor, eur.cost_minor, eur.margin_minor, eur.order_count), (3500, 2200, 1300, 3));
    let usd = s.totals.iter().find(|t| t.currency_code == "USD").expect("usd");
    assert_eq!(usd.margin_minor, 500);
    assert_eq!(s.interaction_count, 4);
}

#[tokio::test]
async fn interactions_count_and_unknown_customers_have_an_empty_history() {
    let mut app = spawn_app().await;
    let customer = new_id();
    let seq = app
        .interactions
        .record_interaction(ipb::RecordInteractionRequest {
            customer_id: customer.clone(),
            channel: Channel::Phone as i32,
            r#type: ipb::InteractionType::Inquiry as i32,
            ..Default::default()
        })
        .await
        .expect("inquiry")
        .into_inner()
        .sequence;
    let s = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: customer, min_sequence: at(seq) })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value")
        .summary
        .expect("summary");
    assert_eq!((s.interaction_count, s.order_count), (1, 0));
    let s = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: new_id(), min_sequence: None })
        .await
        .expect("unknown customer")
        .into_inner()
        .value
        .expect("value");
    assert_eq!(s.summary.map(|s| s.order_count), Some(0));
}

#[tokio::test]
async fn a_position_not_reached_within_the_deadline_is_deadline_exceeded() {
    let mut app = spawn_app().await;
    let mut req = Request::new(pb::GetCustomerValueRequest { customer_id: new_id(), min_sequence: at(1_000) });
    req.set_timeout(Duration::from_millis(300));
    let err = app.values.get_customer_value(req).await.expect_err("not reached");
    assert_eq!(err.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn invalid_reads_are_refused() {
    let mut app = spawn_app().await;
    let err = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: "x".into(), min_sequence: None })
        .await
        .expect_err("bad id");
    assert_eq!(field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(), ["customer_id"]);
    let err = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: new_id(), min_sequence: at(-1) })
        .await
        .expect_err("negative");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut req = Request::new(pb::GetCustomerValueRequest {
        customer_id: new_id(),
        min_sequence: Some(FeedSequences { identification_sequence: 1_000, interaction_sequence: 0 }),
    });
    req.set_timeout(Duration::from_millis(300));
    let err = app.values.get_customer_value(req).await.expect_err("identification position not reached");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let err = app.values.fit_value_model(pb::FitValueModelRequest::default()).await.expect_err("no purchases");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = app
        .values
        .fit_value_model(pb::FitValueModelRequest {
            currency_code: "usd".into(),
            horizon_days: 100_000,
            monthly_discount_rate: Some(-0.5),
            ..Default::default()
        })
        .await
        .expect_err("bad fit");
    assert_eq!(
        field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(),
        ["currency_code", "horizon_days", "monthly_discount_rate"]
    );
    let err = app.values.get_value_model(pb::GetValueModelRequest { version: -1 }).await.expect_err("negative");
    assert_eq!(field_violations(&err)[0].0, "version");
    let err = app.values.get_value_model(pb::GetValueModelRequest { version: 0 }).await.expect_err("none active");
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .values
        .list_customer_values(pb::ListCustomerValuesRequest {
            page_size: -1,
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad page");
    assert_eq!(field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(), ["page_size", "page_token"]);
}

#[tokio::test]
async fn it_is_not_serving_until_its_feed_is_connected() {
    // A peer address where nothing listens.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let db = TestDb::new("differentiation").await;
    let mut settings = Settings::for_tests(ServiceKind::Differentiation, db.url.clone());
    settings.peers.interaction = Some(format!("http://{unused}"));
    let shutdown = Shutdown::new();
    let running = crm_differentiation::start(&settings, shutdown.clone()).await.expect("start");
    let mut health = HealthClient::new(
        crm_runtime::client::channel(&format!("http://{}", running.local_addr), None).expect("channel"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    shutdown.trigger();
}
