//! Writes under concurrency share commits (group commit): duplicates,
//! refusals and successes queued together each get their own answer, and
//! what was answered OK is exactly what the feed and the store hold.

use super::*;

/// A return of `quantity` pegs of `order_id`.
fn return_pegs(order_id: &str, quantity: i64, request_id: &str) -> pb::RecordReturnRequest {
    pb::RecordReturnRequest {
        order_id: order_id.to_owned(),
        lines: vec![pb::OrderLine { sku: "PEG".into(), quantity, ..Default::default() }],
        reason: "spare".into(),
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn one_request_sent_many_times_at_once_is_recorded_once() {
    const COPIES: usize = 16;
    const OTHERS: usize = 16;
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let mut retried = visit(&customer, 1_700_000_000);
    retried.request_id = "the-one-visit".into();
    let copies = (0..COPIES).map(|_| {
        let (mut c, req) = (client.clone(), retried.clone());
        tokio::spawn(async move { c.record_interaction(req).await.map(|r| r.into_inner()) })
    });
    let others = (0..OTHERS).map(|i| {
        let mut req = visit(&customer, 1_700_000_001 + i as i64);
        req.request_id = format!("other-{i}");
        let mut c = client.clone();
        tokio::spawn(async move { c.record_interaction(req).await.map(|r| r.into_inner()) })
    });
    let copies: Vec<_> = futures::future::join_all(copies).await;
    let others: Vec<_> = futures::future::join_all(others).await;

    let first = copies[0].as_ref().expect("task").as_ref().expect("recorded").clone();
    for c in &copies {
        assert_eq!(c.as_ref().expect("task").as_ref().expect("recorded"), &first, "every copy answers the same");
    }
    let mut sequences = vec![first.sequence];
    for o in others {
        sequences.push(o.expect("task").expect("recorded").sequence);
    }
    sequences.sort_unstable();
    let n = (OTHERS + 1) as i64;
    assert_eq!(sequences, (1..=n).collect::<Vec<_>>(), "one sequence per distinct request");

    let timeline = client
        .list_interactions(pb::ListInteractionsRequest { customer_id: customer, page_size: 100, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(timeline.interactions.len(), OTHERS + 1, "one interaction per distinct request");
    let events = feed_events(&mut client, 0).await;
    let logged: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(logged, (1..=n).collect::<Vec<_>>(), "one event per distinct request");
}

#[tokio::test]
async fn refused_writes_queued_with_others_do_not_hold_them_back() {
    const RETURNS: usize = 8;
    const VISITS: usize = 24;
    let (_server, mut client) = spawn_app().await;
    let order = client.record_purchase(purchase(&new_id(), "")).await.expect("purchase").into_inner();
    let order_id = order.order.expect("order").id;
    let customer = new_id();

    // Ten pegs were bought: each return asks for four, so two fit and the
    // rest are refused, while visits are recorded beside them.
    let returns = (0..RETURNS).map(|i| {
        let (mut c, req) = (client.clone(), return_pegs(&order_id, 4, &format!("pegs-{i}")));
        tokio::spawn(async move { c.record_return(req).await.map(|r| r.into_inner().sequence) })
    });
    let visits = (0..VISITS).map(|i| {
        let (mut c, req) = (client.clone(), visit(&customer, 1_700_000_000 + i as i64));
        tokio::spawn(async move { c.record_interaction(req).await.map(|r| r.into_inner().sequence) })
    });
    let returns: Vec<_> = futures::future::join_all(returns).await;
    let visits: Vec<_> = futures::future::join_all(visits).await;

    let mut sequences = vec![order.sequence];
    let mut refused = 0;
    for r in returns {
        match r.expect("task") {
            Ok(seq) => sequences.push(seq),
            Err(e) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, RETURNS - 2, "two returns of four fit in ten");
    for v in visits {
        sequences.push(v.expect("task").expect("every visit is recorded"));
    }
    sequences.sort_unstable();
    let n = sequences.len() as i64;
    assert_eq!(n as usize, 1 + 2 + VISITS);
    assert_eq!(sequences, (1..=n).collect::<Vec<_>>(), "refused writes leave no gap");

    let got = client.get_order(pb::GetOrderRequest { order_id }).await.expect("get").into_inner();
    assert_eq!(got.returns.iter().flat_map(|r| &r.lines).map(|l| l.quantity).sum::<i64>(), 8);
    let events = feed_events(&mut client, 0).await;
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    let returned = events.iter().filter(|e| matches!(e.kind, Some(Kind::ReturnRecorded(_)))).count();
    assert_eq!(returned, 2, "no event of a refused return");
}
