//! Black-box tests of personalization over gRPC on an ephemeral port with a
//! real store (SQLite, or PostgreSQL when `CRM_TEST_DATABASE_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use crm_proto::{
    common::v1::{Channel, FeedSequences, Money},
    personalization::v1::{self as pb, OfferState, personalization_service_client::PersonalizationServiceClient},
};
use crm_runtime::{
    config::{Peers, ServiceKind},
    error::field_violations,
    ids::{is_valid_id, new_id},
    testing::TestServer,
};
use tonic::{Code, transport::Channel as GrpcChannel};

type Client = PersonalizationServiceClient<GrpcChannel>;

async fn spawn_app() -> (TestServer, Client) {
    let server = TestServer::start(ServiceKind::Personalization, Peers::default(), |s, sd| async move {
        crm_personalization::start(&s, sd).await
    })
    .await;
    let client = PersonalizationServiceClient::new(server.channel());
    (server, client)
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money { currency_code: "EUR".into(), minor_units })
}

fn offer(name: &str) -> pb::Offer {
    pb::Offer {
        display_name: name.to_owned(),
        description: format!("{name}, for you.\nSee terms."),
        category: "tents".into(),
        cost: eur(300),
        expected_margin: eur(1_000),
        ..Default::default()
    }
}

async fn create(client: &mut Client, offer: pb::Offer) -> pb::Offer {
    client
        .create_offer(pb::CreateOfferRequest { offer: Some(offer), request_id: String::new() })
        .await
        .expect("create")
        .into_inner()
        .offer
        .expect("offer")
}

fn fields(status: &tonic::Status) -> Vec<String> {
    let mut f: Vec<String> = field_violations(status).into_iter().map(|(f, _)| f).collect();
    f.sort();
    f
}

fn ids(offers: &[pb::Offer]) -> Vec<&str> {
    offers.iter().map(|o| o.id.as_str()).collect()
}

fn names(r: &pb::NextBestOffersResponse) -> Vec<String> {
    r.offers.iter().map(|r| r.offer.as_ref().expect("offer").display_name.clone()).collect()
}

#[tokio::test]
async fn creates_gets_and_lists_offers_oldest_first_with_pages() {
    let (_server, mut client) = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create(&mut client, offer(&format!("Offer {i}"))).await);
    }
    let first = &created[0];
    assert!(is_valid_id(&first.id));
    assert_eq!(first.state, OfferState::Active as i32, "unspecified state means active");
    assert_eq!(first.business_weight, 1.0, "unset weight means the default");
    assert!(first.create_time.is_some());
    assert_eq!(first.create_time, first.update_time);
    assert!(!first.etag.is_empty());
    assert_eq!(first.expected_margin, eur(1_000));

    let got = client
        .get_offer(pb::GetOfferRequest { offer_id: first.id.clone() })
        .await
        .expect("get")
        .into_inner()
        .offer
        .expect("offer");
    assert_eq!(&got, first);

    let page1 = client
        .list_offers(pb::ListOffersRequest { page_size: 3, ..Default::default() })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(page1.offers.len(), 3);
    assert!(!page1.next_page_token.is_empty());
    let page2 = client
        .list_offers(pb::ListOffersRequest {
            page_size: 3,
            page_token: page1.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert!(page2.next_page_token.is_empty(), "last page");
    let listed: Vec<pb::Offer> = page1.offers.into_iter().chain(page2.offers).collect();
    assert_eq!(listed, created, "oldest first, across pages, as created");
}

#[tokio::test]
async fn lists_filter_by_state() {
    let (_server, mut client) = spawn_app().await;
    let active = create(&mut client, offer("Active")).await;
    let paused = create(&mut client, pb::Offer { state: OfferState::Paused as i32, ..offer("Paused") }).await;
    let list = |state: OfferState| pb::ListOffersRequest { state: state as i32, ..Default::default() };
    let r = client.list_offers(list(OfferState::Paused)).await.expect("list").into_inner();
    assert_eq!(ids(&r.offers), [paused.id.as_str()]);
    let r = client.list_offers(list(OfferState::Active)).await.expect("list").into_inner();
    assert_eq!(ids(&r.offers), [active.id.as_str()]);
    let r = client.list_offers(list(OfferState::Archived)).await.expect("list").into_inner();
    assert!(r.offers.is_empty());
    let r = client.list_offers(list(OfferState::Unspecified)).await.expect("list").into_inner();
    assert_eq!(ids(&r.offers), [active.id.as_str(), paused.id.as_str()], "no filter");
}

#[tokio::test]
async fn a_retried_create_returns_the_first_offer_and_stores_one() {
    let (_server, mut client) = spawn_app().await;
    let req = pb::CreateOfferRequest { offer: Some(offer("Once")), request_id: "req-1".into() };
    let first = client.create_offer(req.clone()).await.expect("first").into_inner();
    let retry = client.create_offer(req.clone()).await.expect("retry").into_inner();
    assert_eq!(first, retry);

    let other = pb::CreateOfferRequest { offer: Some(offer("Another")), ..req };
    let err = client.create_offer(other).await.expect_err("key reused for another request");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["request_id"]);

    let r = client.list_offers(pb::ListOffersRequest::default()).await.expect("list").into_inner();
    assert_eq!(ids(&r.offers), [first.offer.expect("offer").id.as_str()]);
}

#[tokio::test]
async fn next_best_offers_filters_by_channel_window_state_and_ranks_by_score() {
    let (_server, mut client) = spawn_app().await;
    let at = 1_800_000_000;
    let web_email = vec![Channel::Web as i32, Channel::Email as i32];
    // Presentable on the web at `at`; scores 1000, 1500 (window starts
    // exactly at `at`), 0 (no margin) and 1000 (ties with "All channels",
    // created later so ranked after it).
    create(&mut client, pb::Offer { expected_margin: eur(1_000), ..offer("All channels") }).await;
    create(
        &mut client,
        pb::Offer {
            channels: web_email.clone(),
            business_weight: 3.0,
            expected_margin: eur(500),
            valid_from_time: ts(at),
            valid_until_time: ts(at + 86_400),
            ..offer("Web and email")
        },
    )
    .await;
    create(
        &mut client,
        pb::Offer {
            channels: vec![Channel::Web as i32],
            business_weight: 2.0,
            expected_margin: None,
            ..offer("No margin")
        },
    )
    .await;
    create(&mut client, pb::Offer { business_weight: 0.5, expected_margin: eur(2_000), ..offer("Tie") }).await;
    // Not presentable on the web at `at`, each scoring far above the rest.
    let big = |name: &str| pb::Offer { business_weight: 10.0, expected_margin: eur(99_999), ..offer(name) };
    create(&mut client, pb::Offer { valid_until_time: ts(at), ..big("Expired") }).await;
    create(&mut client, pb::Offer { valid_from_time: ts(at + 1), ..big("Future") }).await;
    create(&mut client, pb::Offer { channels: vec![Channel::Store as i32], ..big("Store only") }).await;
    create(&mut client, pb::Offer { state: OfferState::Paused as i32, ..big("Paused") }).await;
    create(&mut client, pb::Offer { eligibility: "customer.tier == 'gold'".into(), ..big("Gold only") }).await;

    let request = |channel: Channel, max_offers: i32| pb::NextBestOffersRequest {
        customer_id: new_id(),
        channel: channel as i32,
        max_offers,
        at_time: ts(at),
        ..Default::default()
    };
    let r = client.next_best_offers(request(Channel::Web, 10)).await.expect("nbo").into_inner();
    assert_eq!(names(&r), ["Web and email", "All channels", "Tie", "No margin"]);
    assert_eq!(r.offers.iter().map(|o| o.score).collect::<Vec<_>>(), [1_500.0, 1_000.0, 1_000.0, 0.0]);
    for ranked in &r.offers {
        let factor_names: Vec<&str> = ranked.factors.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(factor_names, ["business_weight", "expected_margin"]);
        assert_eq!(ranked.factors.iter().map(|f| f.value).product::<f64>(), ranked.score);
        assert!(ranked.factors.iter().all(|f| !f.detail.is_empty()));
    }
    assert_eq!(r.as_of_sequence, Some(FeedSequences::default()), "no feed consumed: positions are 'any'");

    let r = client.next_best_offers(request(Channel::Web, 0)).await.expect("nbo").into_inner();
    assert_eq!(names(&r), ["Web and email", "All channels", "Tie"], "three by default");

    let r = client.next_best_offers(request(Channel::Store, 1_000)).await.expect("nbo").into_inner();
    assert_eq!(names(&r), ["Store only", "All channels", "Tie"]);

    let mut later = request(Channel::Email, 10);
    later.at_time = ts(at + 86_400);
    let r = client.next_best_offers(later).await.expect("nbo").into_inner();
    assert_eq!(names(&r), ["Future", "All channels", "Tie"], "one window has ended, another has begun");
}

#[tokio::test]
async fn invalid_offers_get_field_violations() {
    let (_server, mut client) = spawn_app().await;
    let hostile = pb::Offer {
        display_name: "x".repeat(10_000),
        description: "nul\u{0}byte".into(),
        category: "c".repeat(65),
        channels: vec![Channel::Web as i32, 999, 0],
        valid_from_time: ts(2_000),
        valid_until_time: ts(1_000),
        cost: Some(Money { currency_code: "eur".into(), minor_units: 1 }),
        expected_margin: Some(Money { currency_code: String::new(), minor_units: 1 }),
        eligibility: "e".repeat(10_000),
        per_customer_cap: -1,
        total_cap: -1,
        business_weight: f64::NAN,
        state: 99,
        ..Default::default()
    };
    let req = pb::CreateOfferRequest { offer: Some(hostile), request_id: "bad\nid".into() };
    let err = client.create_offer(req).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        [
            "offer.business_weight",
            "offer.category",
            "offer.channels[1]",
            "offer.channels[2]",
            "offer.cost.currency_code",
            "offer.description",
            "offer.display_name",
            "offer.eligibility",
            "offer.expected_margin.currency_code",
            "offer.per_customer_cap",
            "offer.state",
            "offer.total_cap",
            "offer.valid_until_time",
            "request_id",
        ]
    );

    let bad = pb::Offer {
        display_name: "Tent\u{7}".into(),
        valid_from_time: Some(prost_types::Timestamp { seconds: 1, nanos: -5 }),
        business_weight: -1.0,
        ..offer("x")
    };
    let err = client.create_offer(pb::CreateOfferRequest { offer: Some(bad), ..Default::default() }).await;
    let err = err.expect_err("invalid");
    assert_eq!(fields(&err), ["offer.business_weight", "offer.display_name", "offer.valid_from_time"]);

    let bad = pb::Offer { display_name: String::new(), business_weight: f64::INFINITY, ..offer("x") };
    let err = client.create_offer(pb::CreateOfferRequest { offer: Some(bad), ..Default::default() }).await;
    assert_eq!(fields(&err.expect_err("invalid")), ["offer.business_weight", "offer.display_name"]);

    let err = client.create_offer(pb::CreateOfferRequest::default()).await.expect_err("no offer");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["offer"]);

    let r = client.list_offers(pb::ListOffersRequest::default()).await.expect("list").into_inner();
    assert!(r.offers.is_empty(), "nothing invalid was stored");
}

#[tokio::test]
async fn invalid_reads_get_field_violations() {
    let (_server, mut client) = spawn_app().await;
    for bad_id in ["", "not-a-uuid", &new_id().to_uppercase(), &"9".repeat(10_000)] {
        let err = client.get_offer(pb::GetOfferRequest { offer_id: bad_id.to_owned() }).await.expect_err("bad id");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), ["offer_id"]);
    }

    let bad = pb::ListOffersRequest { page_size: -1, page_token: "garbage".into(), state: 99 };
    let err = client.list_offers(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["page_size", "page_token", "state"]);

    let mut context = BTreeMap::new();
    context.insert("bad key".to_owned(), "v".to_owned());
    context.insert("page".to_owned(), "home\u{1b}[2J".to_owned());
    context.insert("intent".to_owned(), "i".repeat(10_000));
    context.insert("fine".to_owned(), "ok".to_owned());
    let bad = pb::NextBestOffersRequest {
        customer_id: "not-a-uuid".into(),
        channel: 999,
        context,
        max_offers: -1,
        at_time: Some(prost_types::Timestamp { seconds: 1, nanos: -5 }),
        min_sequence: Some(FeedSequences { identification_sequence: -1, interaction_sequence: 0 }),
    };
    let err = client.next_best_offers(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        [
            "at_time",
            "channel",
            "context[bad key]",
            "context[intent]",
            "context[page]",
            "customer_id",
            "max_offers",
            "min_sequence.identification_sequence",
        ]
    );

    let err = client
        .next_best_offers(pb::NextBestOffersRequest { customer_id: new_id(), ..Default::default() })
        .await
        .expect_err("no channel");
    assert_eq!(fields(&err), ["channel"]);
}

#[tokio::test]
async fn unknown_offers_are_not_found() {
    let (_server, mut client) = spawn_app().await;
    let err = client.get_offer(pb::GetOfferRequest { offer_id: new_id() }).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn later_rpcs_answer_unimplemented() {
    let (_server, mut client) = spawn_app().await;
    let err = client.create_product(pb::CreateProductRequest::default()).await.expect_err("later");
    assert_eq!(err.code(), Code::Unimplemented);
    let err = client.update_offer(pb::UpdateOfferRequest::default()).await.expect_err("later");
    assert_eq!(err.code(), Code::Unimplemented);
}
