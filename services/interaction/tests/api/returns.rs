//! Returns (IN-2).

use crate::*;

fn give_back(order_id: &str, items: &[(&str, i64)], request_id: &str) -> pb::RecordReturnRequest {
    pb::RecordReturnRequest {
        order_id: order_id.to_owned(),
        lines: items
            .iter()
            .map(|(sku, quantity)| pb::OrderLine { sku: (*sku).to_owned(), quantity: *quantity, ..Default::default() })
            .collect(),
        reason: "too small".into(),
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

async fn an_order(client: &mut InteractionServiceClient<GrpcChannel>) -> pb::Order {
    client.record_purchase(purchase(&new_id(), "")).await.expect("purchase").into_inner().order.expect("order")
}

#[tokio::test]
async fn returns_refund_exactly_at_the_order_prices_and_show_on_the_order_and_timeline() {
    let (_server, mut client) = spawn_app().await;
    let order = an_order(&mut client).await;

    let r = client
        .record_return(give_back(&order.id, &[("TENT-2", 1), ("PEG", 4)], ""))
        .await
        .expect("return")
        .into_inner();
    let ret = r.order_return.expect("return");
    assert_eq!(r.sequence, 2);
    assert_eq!(ret.order_id, order.id);
    assert_eq!(ret.customer_id, order.customer_id);
    assert_eq!(ret.revenue.as_ref().map(|m| (m.currency_code.as_str(), m.minor_units)), Some(("EUR", 19_999 + 200)));
    assert_eq!(ret.margin.as_ref().map(|m| m.minor_units), Some(7_999 + 160));
    assert_eq!(
        ret.lines
            .iter()
            .map(|l| (l.sku.as_str(), l.category.as_str(), l.quantity, l.unit_price_minor))
            .collect::<Vec<_>>(),
        [("TENT-2", "tents", 1, 19_999), ("PEG", "spares", 4, 50)]
    );
    let interaction = r.interaction.expect("interaction");
    assert_eq!(interaction.r#type, pb::InteractionType::Return as i32);
    assert_eq!(interaction.order_id, order.id);
    assert_eq!(interaction.channel, Channel::Store as i32, "the order's channel by default");
    assert_eq!(interaction.sequence, 2);

    let mut second = give_back(&order.id, &[("PEG", 6)], "");
    second.channel = Channel::Web as i32;
    let r2 = client.record_return(second).await.expect("the rest of the pegs").into_inner();
    assert_eq!(r2.interaction.expect("interaction").channel, Channel::Web as i32);

    let got = client.get_order(pb::GetOrderRequest { order_id: order.id.clone() }).await.expect("get").into_inner();
    assert_eq!(got.returns.len(), 2);
    assert_eq!(got.returns[0], ret, "oldest first");
    assert_eq!(got.returns[1].lines[0].quantity, 6);

    let timeline = client
        .list_interactions(pb::ListInteractionsRequest {
            customer_id: order.customer_id.clone(),
            r#type: pb::InteractionType::Return as i32,
            ..Default::default()
        })
        .await
        .expect("timeline")
        .into_inner();
    assert_eq!(timeline.interactions.len(), 2);

    let events = feed_events(&mut client, 1).await;
    match &events[0].kind {
        Some(Kind::ReturnRecorded(e)) => {
            assert_eq!(e.order_return.as_ref(), Some(&ret));
            assert_eq!(e.interaction.as_ref().map(|i| i.sequence), Some(2));
        }
        other => panic!("expected a return, got {other:?}"),
    }
}

#[tokio::test]
async fn a_return_larger_than_the_order_fails_and_records_nothing() {
    let (_server, mut client) = spawn_app().await;
    let order = an_order(&mut client).await;

    let err = client.record_return(give_back(&order.id, &[("TENT-2", 3)], "")).await.expect_err("too many");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("TENT-2"), "{}", err.message());

    client.record_return(give_back(&order.id, &[("PEG", 10)], "")).await.expect("all pegs");
    let err = client.record_return(give_back(&order.id, &[("PEG", 1)], "")).await.expect_err("none left");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("PEG") && err.message().contains("already returned"), "{}", err.message());

    let err = client.record_return(give_back(&order.id, &[("HAMMER", 1)], "")).await.expect_err("not bought");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("HAMMER"), "{}", err.message());

    let events = feed_events(&mut client, 0).await;
    assert_eq!(events.len(), 2, "the purchase and the one return that fitted");
}

#[tokio::test]
async fn concurrent_returns_cannot_together_exceed_the_order() {
    let (_server, mut client) = spawn_app().await;
    let order = an_order(&mut client).await;

    let attempts = (0..8).map(|i| {
        let mut c = client.clone();
        let req = give_back(&order.id, &[("PEG", 3)], &format!("pegs-{i}"));
        tokio::spawn(async move { c.record_return(req).await })
    });
    let results = futures::future::join_all(attempts).await;
    let (ok, refused): (Vec<_>, Vec<_>) = results.into_iter().map(|r| r.expect("task")).partition(|r| r.is_ok());
    assert_eq!(ok.len(), 3, "10 pegs hold three returns of 3");
    assert!(refused.iter().all(|r| r.as_ref().err().map(|e| e.code()) == Some(Code::FailedPrecondition)));

    let got = client.get_order(pb::GetOrderRequest { order_id: order.id }).await.expect("get").into_inner();
    let returned: i64 = got.returns.iter().flat_map(|r| &r.lines).map(|l| l.quantity).sum();
    assert_eq!(returned, 9);
}

#[tokio::test]
async fn a_retried_return_returns_the_first_result_and_the_feed_holds_one_event() {
    let (_server, mut client) = spawn_app().await;
    let order = an_order(&mut client).await;
    let first = client.record_return(give_back(&order.id, &[("PEG", 2)], "ret-1")).await.expect("first").into_inner();
    let retry = client.record_return(give_back(&order.id, &[("PEG", 2)], "ret-1")).await.expect("retry").into_inner();
    assert_eq!(first, retry);
    let err = client.record_return(give_back(&order.id, &[("PEG", 3)], "ret-1")).await.expect_err("other request");
    assert_eq!(fields(&err), ["request_id"]);
    let events = feed_events(&mut client, 0).await;
    assert_eq!(events.len(), 2, "the purchase and one return");
    let got = client.get_order(pb::GetOrderRequest { order_id: order.id }).await.expect("get").into_inner();
    assert_eq!(got.returns.len(), 1);
}

#[tokio::test]
async fn returns_reject_invalid_input_and_unknown_orders() {
    let (_server, mut client) = spawn_app().await;

    let mut bad = give_back("not-an-id", &[("", 0), ("A", 1), ("A", 2), ("B", 2_000_000)], &"r".repeat(200));
    bad.reason = "bell\u{7}".into();
    bad.channel = 999;
    bad.occur_time = Some(prost_types::Timestamp { seconds: 1, nanos: 2_000_000_000 });
    let err = client.record_return(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        [
            "channel",
            "lines[0].quantity",
            "lines[0].sku",
            "lines[2].sku",
            "lines[3].quantity",
            "occur_time",
            "order_id",
            "reason",
            "request_id"
        ]
    );

    let err = client.record_return(give_back(&new_id(), &[], "")).await.expect_err("no lines");
    assert_eq!(fields(&err), ["lines"]);
    let many: Vec<(String, i64)> = (0..501).map(|i| (format!("S{i}"), 1)).collect();
    let many: Vec<(&str, i64)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let err = client.record_return(give_back(&new_id(), &many, "")).await.expect_err("oversized");
    assert_eq!(fields(&err), ["lines"]);
    let mut future = give_back(&new_id(), &[("A", 1)], "");
    future.occur_time = Some(ts(Utc::now() + chrono::Duration::days(3)));
    assert_eq!(fields(&client.record_return(future).await.expect_err("future")), ["occur_time"]);
    let hostile = give_back(&new_id(), &[("'; DROP TABLE orders; --", 1)], "");
    assert_eq!(client.record_return(hostile).await.expect_err("no such order").code(), Code::NotFound);

    let err = client.record_return(give_back(&new_id(), &[("PEG", 1)], "")).await.expect_err("unknown order");
    assert_eq!(err.code(), Code::NotFound);
    assert!(feed_events(&mut client, 0).await.is_empty());
}
