//! HandleTouchpoint end to end through all five services (GW-1), on
//! SQLite, or on PostgreSQL when `CRM_TEST_DATABASE_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crm_e2e::Suite;
use crm_proto::{
    common::v1::{Channel, FeedSequences, Money},
    differentiation::v1::GetCustomerValueRequest,
    gateway::v1::{HandleTouchpointRequest, HandleTouchpointResponse, Part, PurchaseDetails},
    identification::v1::{self as id, IdentifierType, MatchMethod},
    interaction::v1::{self as ipb, InteractionType, OrderLine},
    personalization::v1::{CreateOfferRequest, Offer},
};
use crm_runtime::error::field_violations;
use futures::StreamExt;
use tonic::Code;

fn ident(kind: IdentifierType, value: &str) -> id::Identifier {
    id::Identifier { r#type: kind as i32, value: value.into(), namespace: String::new() }
}

fn visit(ids: Vec<id::Identifier>) -> HandleTouchpointRequest {
    HandleTouchpointRequest {
        identifiers: ids,
        channel: Channel::Web as i32,
        interaction_type: InteractionType::Visit as i32,
        ..Default::default()
    }
}

fn purchase(ids: Vec<id::Identifier>, price: i64, cost: i64, request_id: &str) -> HandleTouchpointRequest {
    HandleTouchpointRequest {
        interaction_type: InteractionType::Purchase as i32,
        purchase: Some(PurchaseDetails {
            order_number: String::new(),
            currency_code: "EUR".into(),
            lines: vec![OrderLine {
                sku: "TENT".into(),
                category: "tents".into(),
                quantity: 1,
                unit_price_minor: price,
                unit_cost_minor: cost,
            }],
        }),
        request_id: request_id.into(),
        ..visit(ids)
    }
}

fn profile_id(r: &HandleTouchpointResponse) -> String {
    r.profile.as_ref().expect("profile").id.clone()
}

fn eur(r: &HandleTouchpointResponse) -> (i64, i64, i64) {
    let s = r.value.as_ref().expect("value").summary.as_ref().expect("summary");
    let t = s.totals.iter().find(|t| t.currency_code == "EUR").expect("EUR totals");
    (s.order_count, t.revenue_minor, t.margin_minor)
}

#[tokio::test]
async fn the_same_person_by_email_then_by_phone_and_email_is_one_profile() {
    let suite = Suite::start().await;
    let mut gw = suite.gateway();
    let first = gw
        .handle_touchpoint(visit(vec![ident(IdentifierType::Email, "Marta.Puig@Correu.cat")]))
        .await
        .unwrap()
        .into_inner();
    assert!(first.profile_created, "on {}", suite.store_kind());
    let second = gw
        .handle_touchpoint(visit(vec![
            ident(IdentifierType::Phone, "+34 655 12 34 56"),
            ident(IdentifierType::Email, "marta.puig@correu.cat"),
        ]))
        .await
        .unwrap()
        .into_inner();
    let third =
        gw.handle_touchpoint(visit(vec![ident(IdentifierType::Phone, "655123456")])).await.unwrap().into_inner();
    assert_eq!(profile_id(&second), profile_id(&first));
    assert_eq!(profile_id(&third), profile_id(&first));
    assert!(!second.profile_created && !third.profile_created);
    assert_eq!(second.match_explanation.as_ref().map(|m| m.method), Some(MatchMethod::Deterministic as i32));
    assert_eq!(third.profile.as_ref().map(|p| p.identifiers.len()), Some(2));

    // Three touchpoints, one timeline.
    let timeline = suite
        .interaction()
        .list_interactions(ipb::ListInteractionsRequest { customer_id: profile_id(&first), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.interactions.len(), 3);
    // And the value read after the third reflects all three.
    assert_eq!(third.value.as_ref().and_then(|v| v.summary.as_ref()).map(|s| s.interaction_count), Some(3));
}

#[tokio::test]
async fn a_purchase_shows_up_in_the_value_with_read_your_writes() {
    let suite = Suite::start().await;
    let mut gw = suite.gateway();
    let buyer = || vec![ident(IdentifierType::Email, "joao@correio.pt")];
    let r1 = gw.handle_touchpoint(purchase(buyer(), 25_000, 15_000, "")).await.unwrap().into_inner();
    assert!(r1.missing_parts.is_empty(), "{:?}", r1.missing_parts);
    assert_eq!(eur(&r1), (1, 25_000, 10_000), "the first purchase is in the value returned with it");
    let order = r1.order.as_ref().expect("order");
    assert_eq!(order.margin, Some(Money { currency_code: "EUR".into(), minor_units: 10_000 }));
    let r2 = gw.handle_touchpoint(purchase(buyer(), 5_000, 1_000, "")).await.unwrap().into_inner();
    assert_eq!(eur(&r2), (2, 30_000, 14_000));
    let seqs = r2.sequences.expect("sequences");
    assert!(seqs.interaction_sequence > r1.sequences.expect("sequences").interaction_sequence);
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_records_nothing_twice() {
    let suite = Suite::start().await;
    let mut gw = suite.gateway();
    let req = purchase(vec![ident(IdentifierType::CustomerNumber, "C-77")], 9_900, 4_000, "till-3/receipt-881");
    let first = gw.handle_touchpoint(req.clone()).await.unwrap().into_inner();
    let retry = gw.handle_touchpoint(req).await.unwrap().into_inner();
    assert_eq!(retry.interaction, first.interaction);
    assert_eq!(retry.order, first.order);
    assert_eq!(retry.sequences, first.sequences);
    assert!(retry.profile_created, "the retry replays the first answer");
    assert_eq!(eur(&retry), (1, 9_900, 5_900), "counted once");
    let timeline = suite
        .interaction()
        .list_interactions(ipb::ListInteractionsRequest { customer_id: profile_id(&first), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.interactions.len(), 1);
}

#[tokio::test]
async fn offers_for_the_channel_and_moment_come_with_the_touchpoint() {
    let suite = Suite::start().await;
    let mut offers = suite.personalization();
    let offer = |name: &str, channel: Channel, margin: i64| Offer {
        display_name: name.into(),
        category: "tents".into(),
        channels: vec![channel as i32],
        expected_margin: Some(Money { currency_code: "EUR".into(), minor_units: margin }),
        ..Default::default()
    };
    for o in [
        offer("web small", Channel::Web, 500),
        offer("web big", Channel::Web, 2_000),
        offer("email only", Channel::Email, 9_000),
    ] {
        offers.create_offer(CreateOfferRequest { offer: Some(o), request_id: String::new() }).await.unwrap();
    }
    let expired = Offer {
        valid_until_time: Some(prost_types::Timestamp { seconds: 1_000_000_000, nanos: 0 }),
        ..offer("expired", Channel::Web, 99_000)
    };
    offers.create_offer(CreateOfferRequest { offer: Some(expired), request_id: String::new() }).await.unwrap();

    let r = suite
        .gateway()
        .handle_touchpoint(visit(vec![ident(IdentifierType::Email, "ana@correo.es")]))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = r.offers.iter().map(|o| o.offer.as_ref().expect("offer").display_name.clone()).collect();
    assert_eq!(names, ["web big", "web small"]);
    assert!(r.offers.iter().all(|o| !o.factors.is_empty()), "every offer is explained");
}

#[tokio::test]
async fn restarting_the_differentiation_consumer_mid_stream_loses_and_double_counts_nothing() {
    let mut suite = Suite::start().await;
    let customer = crm_runtime::ids::new_id();
    let writer = {
        let mut interactions = suite.interaction();
        let customer = customer.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..60i64 {
                let r = interactions
                    .record_purchase(ipb::RecordPurchaseRequest {
                        customer_id: customer.clone(),
                        channel: Channel::Store as i32,
                        occur_time: Some(prost_types::Timestamp { seconds: 1_700_000_000 + i * 86_400, nanos: 0 }),
                        currency_code: "EUR".into(),
                        lines: vec![OrderLine {
                            sku: "S".into(),
                            quantity: 1,
                            unit_price_minor: 100 + i,
                            unit_cost_minor: 50,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                last = r.sequence;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    suite.restart_differentiation().await;
    let last = writer.await.unwrap();
    let value = suite
        .differentiation()
        .get_customer_value(GetCustomerValueRequest {
            customer_id: customer,
            min_sequence: Some(FeedSequences { interaction_sequence: last, identification_sequence: 0 }),
        })
        .await
        .unwrap()
        .into_inner();
    let s = value.value.unwrap().summary.unwrap();
    assert_eq!((s.order_count, s.transaction_count), (60, 60), "on {}", suite.store_kind());
    let revenue: i64 = (0..60).map(|i| 100 + i).sum();
    assert_eq!(s.totals[0].revenue_minor, revenue, "every purchase exactly once");
}

#[tokio::test]
async fn a_failing_step_after_recording_is_reported_not_fatal() {
    let mut suite = Suite::start().await;
    let personalization = suite.personalization.take().expect("running");
    let _ = personalization.stop().await;
    let r = suite
        .gateway()
        .handle_touchpoint(visit(vec![ident(IdentifierType::Email, "ana@correo.es")]))
        .await
        .expect("the touchpoint is still answered")
        .into_inner();
    assert!(r.interaction.is_some(), "the interaction was recorded");
    assert!(r.value.is_some());
    assert_eq!(r.missing_parts.len(), 1);
    assert_eq!((r.missing_parts[0].part, r.missing_parts[0].code.as_str()), (Part::Offers as i32, "UNAVAILABLE"));
}

#[tokio::test]
async fn invalid_touchpoints_get_field_violations_and_record_nothing() {
    let suite = Suite::start().await;
    let mut gw = suite.gateway();

    let err = gw.handle_touchpoint(visit(vec![ident(IdentifierType::Email, "not-an-email")])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(), ["identifiers[0]"]);

    let mut bad = purchase(vec![ident(IdentifierType::Email, "ana@correo.es")], 100, 50, "");
    bad.purchase.as_mut().unwrap().lines[0].quantity = 0;
    bad.interaction_type = 99;
    let err = gw.handle_touchpoint(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields: Vec<String> = field_violations(&err).into_iter().map(|(f, _)| f).collect();
    fields.sort();
    assert_eq!(fields, ["interaction_type", "purchase"]);

    let mut bad = purchase(vec![ident(IdentifierType::Email, "ana@correo.es")], 100, 50, "");
    bad.purchase.as_mut().unwrap().lines[0].quantity = 0;
    let err = gw.handle_touchpoint(bad).await.unwrap_err();
    assert_eq!(field_violations(&err).into_iter().map(|(f, _)| f).collect::<Vec<_>>(), ["purchase.lines[0].quantity"]);

    let err = gw.handle_touchpoint(HandleTouchpointRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nothing reached identification or interaction.
    for mut feed in [
        suite
            .identification()
            .subscribe(id::SubscribeRequest { after_sequence: 0 })
            .await
            .unwrap()
            .into_inner()
            .map(|e| e.is_ok())
            .boxed(),
        suite
            .interaction()
            .subscribe(ipb::SubscribeRequest { after_sequence: 0 })
            .await
            .unwrap()
            .into_inner()
            .map(|e| e.is_ok())
            .boxed(),
    ] {
        assert!(tokio::time::timeout(Duration::from_millis(300), feed.next()).await.is_err(), "no event recorded");
    }
}
