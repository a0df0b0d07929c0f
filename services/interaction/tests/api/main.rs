//! Black-box tests of interaction over gRPC on an ephemeral port with a
//! real store (SQLite, or PostgreSQL when `CRM_TEST_DATABASE_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod complaints;
mod consent;
mod feed;
mod group_commit;
mod lifecycle;
mod migration;
mod returns;
mod voice;

use chrono::{DateTime, TimeZone, Utc};
use crm_proto::{
    common::v1::{Channel, Interval, TraitValue, trait_value},
    interaction::v1::{self as pb, interaction_event::Kind, interaction_service_client::InteractionServiceClient},
};
use crm_runtime::{
    config::{Peers, ServiceKind},
    error::field_violations,
    ids::new_id,
    testing::TestServer,
};
use futures::StreamExt;
use tonic::{Code, transport::Channel as GrpcChannel};

/// An interaction server following a real identification server.
struct App {
    /// The identification server whose feed interaction follows.
    identification: TestServer,
    /// The interaction server under test.
    interaction: TestServer,
}

/// Start an identification server.
async fn start_identification() -> TestServer {
    TestServer::start(ServiceKind::Identification, Peers::default(), |s, sd| async move {
        crm_identification::start(&s, sd).await
    })
    .await
}

/// Start an interaction server following `identification`.
async fn start_interaction(identification: &TestServer) -> TestServer {
    let peers = Peers { identification: Some(identification.url()), ..Default::default() };
    TestServer::start(ServiceKind::Interaction, peers, |s, sd| async move { crm_interaction::start(&s, sd).await })
        .await
}

async fn spawn_app() -> (App, InteractionServiceClient<GrpcChannel>) {
    let identification = start_identification().await;
    let interaction = start_interaction(&identification).await;
    let client = InteractionServiceClient::new(interaction.channel());
    (App { identification, interaction }, client)
}

fn visit(customer: &str, at_seconds: i64) -> pb::RecordInteractionRequest {
    pb::RecordInteractionRequest {
        customer_id: customer.to_owned(),
        channel: Channel::Web as i32,
        r#type: pb::InteractionType::Visit as i32,
        occur_time: Some(prost_types::Timestamp { seconds: at_seconds, nanos: 0 }),
        ..Default::default()
    }
}

fn purchase(customer: &str, request_id: &str) -> pb::RecordPurchaseRequest {
    pb::RecordPurchaseRequest {
        customer_id: customer.to_owned(),
        channel: Channel::Store as i32,
        currency_code: "EUR".into(),
        order_number: "A-1".into(),
        lines: vec![
            pb::OrderLine {
                sku: "TENT-2".into(),
                category: "tents".into(),
                quantity: 2,
                unit_price_minor: 19_999,
                unit_cost_minor: 12_000,
            },
            pb::OrderLine {
                sku: "PEG".into(),
                category: "spares".into(),
                quantity: 10,
                unit_price_minor: 50,
                unit_cost_minor: 10,
            },
        ],
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

fn fields(status: &tonic::Status) -> Vec<String> {
    let mut f: Vec<String> = field_violations(status).into_iter().map(|(f, _)| f).collect();
    f.sort();
    f
}

/// A protobuf timestamp.
fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    crm_runtime::time::to_timestamp(t)
}

/// An instant in UTC.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// Every event of the feed after `after`, read until it has been quiet for
/// a moment.
async fn feed_events(client: &mut InteractionServiceClient<GrpcChannel>, after: i64) -> Vec<pb::InteractionEvent> {
    let mut feed = client.subscribe(pb::SubscribeRequest { after_sequence: after }).await.expect("feed").into_inner();
    let mut events = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(std::time::Duration::from_millis(300), feed.next()).await {
        events.push(item.expect("event").event.expect("event"));
    }
    events
}

#[tokio::test]
async fn records_and_lists_a_timeline_newest_first_with_pages() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = client.record_interaction(visit(&customer, 1_700_000_000 + i)).await.expect("record").into_inner();
        assert_eq!(r.sequence, i + 1);
        ids.push(r.interaction.expect("interaction").id);
    }
    client.record_interaction(visit(&new_id(), 1_700_000_000)).await.expect("other customer");

    let first = client
        .list_interactions(pb::ListInteractionsRequest {
            customer_id: customer.clone(),
            page_size: 3,
            ..Default::default()
        })
        .await
        .expect("page 1")
        .into_inner();
    let second = client
        .list_interactions(pb::ListInteractionsRequest {
            customer_id: customer.clone(),
            page_size: 3,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    let got: Vec<String> = first.interactions.iter().chain(&second.interactions).map(|i| i.id.clone()).collect();
    ids.reverse();
    assert_eq!(got, ids, "newest first, across pages, only this customer");
    assert!(second.next_page_token.is_empty());

    let got = client
        .get_interaction(pb::GetInteractionRequest { interaction_id: ids[0].clone() })
        .await
        .expect("get")
        .into_inner()
        .interaction
        .expect("interaction");
    assert_eq!(got.customer_id, customer);
    assert_eq!(got.channel, Channel::Web as i32);
}

#[tokio::test]
async fn timeline_filters_by_period_and_channel() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    for i in 0..4 {
        let mut req = visit(&customer, 1_000 * (i + 1));
        if i == 3 {
            req.channel = Channel::Email as i32;
        }
        client.record_interaction(req).await.expect("record");
    }
    let period = Interval {
        start_time: Some(prost_types::Timestamp { seconds: 2_000, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: 4_000, nanos: 0 }),
    };
    let r = client
        .list_interactions(pb::ListInteractionsRequest {
            customer_id: customer.clone(),
            period: Some(period),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.interactions.len(), 2, "[2000, 4000) holds two");
    let r = client
        .list_interactions(pb::ListInteractionsRequest {
            customer_id: customer,
            channel: Channel::Email as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.interactions.len(), 1);
}

#[tokio::test]
async fn a_retried_write_returns_the_first_result_and_the_feed_holds_one_event() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let first = client.record_purchase(purchase(&customer, "req-1")).await.expect("first").into_inner();
    let retry = client.record_purchase(purchase(&customer, "req-1")).await.expect("retry").into_inner();
    assert_eq!(first, retry);

    let mut other = purchase(&customer, "req-1");
    other.order_number = "A-2".into();
    let err = client.record_purchase(other).await.expect_err("key reused for another request");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["request_id"]);

    let mut feed = client.subscribe(pb::SubscribeRequest { after_sequence: 0 }).await.expect("feed").into_inner();
    let event = feed.next().await.expect("event").expect("ok").event.expect("event");
    assert_eq!(event.sequence, 1);
    assert!(matches!(event.kind, Some(Kind::PurchaseRecorded(_))));
    let more = tokio::time::timeout(std::time::Duration::from_millis(300), feed.next()).await;
    assert!(more.is_err(), "exactly one event for the retried write");
}

#[tokio::test]
async fn purchases_have_exact_revenue_cost_and_margin() {
    let (_server, mut client) = spawn_app().await;
    let r = client.record_purchase(purchase(&new_id(), "")).await.expect("record").into_inner();
    let order = r.order.expect("order");
    assert_eq!(order.revenue.as_ref().map(|m| m.minor_units), Some(2 * 19_999 + 10 * 50));
    assert_eq!(order.cost.as_ref().map(|m| m.minor_units), Some(2 * 12_000 + 10 * 10));
    assert_eq!(order.margin.as_ref().map(|m| m.minor_units), Some(2 * 7_999 + 10 * 40));
    let interaction = r.interaction.expect("interaction");
    assert_eq!(interaction.r#type, pb::InteractionType::Purchase as i32);
    assert_eq!(interaction.order_id, order.id);
    let got = client.get_order(pb::GetOrderRequest { order_id: order.id.clone() }).await.expect("get").into_inner();
    assert_eq!(got.order, Some(order));
}

#[tokio::test]
async fn invalid_input_gets_field_violations() {
    let (_server, mut client) = spawn_app().await;
    let bad = pb::RecordInteractionRequest {
        customer_id: "not-a-uuid".into(),
        channel: 999,
        r#type: pb::InteractionType::Purchase as i32,
        direction: pb::Direction::Outbound as i32,
        thread_id: "x".repeat(10_000),
        ..Default::default()
    };
    let err = client.record_interaction(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["channel", "customer_id", "purpose", "thread_id", "type"]);

    let mut attrs = std::collections::BTreeMap::new();
    attrs.insert("bad key".to_owned(), TraitValue { kind: Some(trait_value::Kind::IntValue(1)) });
    let mut req = visit(&new_id(), 0);
    req.attributes = attrs;
    req.occur_time = Some(prost_types::Timestamp { seconds: 1, nanos: -5 });
    let err = client.record_interaction(req).await.expect_err("invalid");
    assert_eq!(fields(&err), ["attributes[bad key]", "occur_time"]);

    let mut p = purchase(&new_id(), "");
    p.currency_code = "euro".into();
    p.lines[0].quantity = 0;
    p.lines[1].unit_price_minor = -1;
    p.lines.push(pb::OrderLine { sku: String::new(), quantity: 1, ..Default::default() });
    let err = client.record_purchase(p).await.expect_err("invalid");
    assert_eq!(fields(&err), ["currency_code", "lines[0].quantity", "lines[1].unit_price_minor", "lines[2].sku"]);

    let mut p = purchase(&new_id(), "");
    p.lines.clear();
    let err = client.record_purchase(p).await.expect_err("no lines");
    assert_eq!(fields(&err), ["lines"]);

    let err = client.subscribe(pb::SubscribeRequest { after_sequence: -1 }).await.expect_err("negative");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let (_server, mut client) = spawn_app().await;
    let err =
        client.get_interaction(pb::GetInteractionRequest { interaction_id: new_id() }).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let err = client.get_order(pb::GetOrderRequest { order_id: new_id() }).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let err = client.get_order(pb::GetOrderRequest { order_id: "x".into() }).await.expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_retried_interaction_with_several_attributes_is_recognised() {
    let (_server, mut client) = spawn_app().await;
    let request = |order: &[(&str, i64)]| {
        let mut req = visit("0190a8e2-7c3b-7000-8000-000000000001", 1_700_000_000);
        req.request_id = "visit-1".into();
        for (k, v) in order {
            req.attributes.insert((*k).to_owned(), TraitValue { kind: Some(trait_value::Kind::IntValue(*v)) });
        }
        req
    };
    let entries = [("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 4)];
    let first = client.record_interaction(request(&entries)).await.expect("first").into_inner();
    for _ in 0..8 {
        let retry = client.record_interaction(request(&entries)).await.expect("retry").into_inner();
        assert_eq!(retry, first, "a map's order on the wire does not make it another request");
    }
    assert_eq!(feed_events(&mut client, 0).await.len(), 1);
}
