//! The feed (IN-6): every write is idempotent and returns its sequence, and
//! the feed neither skips nor repeats a sequence under concurrent writers.

use std::time::Duration;

use crate::*;

fn peg_return(order_id: &str, request_id: &str) -> pb::RecordReturnRequest {
    pb::RecordReturnRequest {
        order_id: order_id.to_owned(),
        lines: vec![pb::OrderLine { sku: "PEG".into(), quantity: 1, ..Default::default() }],
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

fn survey(customer: &str, request_id: &str) -> pb::RecordSurveyResponseRequest {
    pb::RecordSurveyResponseRequest {
        response: Some(pb::SurveyResponse {
            customer_id: customer.to_owned(),
            nps: 8,
            csat: 4,
            ratings: vec![pb::AttributeRating {
                attribute: "price".into(),
                importance: 7.0,
                our_performance: 6.0,
                competitor_performance: 5.0,
            }],
            ..Default::default()
        }),
        request_id: request_id.to_owned(),
        channel: Channel::Web as i32,
    }
}

fn complaint(customer: &str, request_id: &str) -> pb::RecordComplaintRequest {
    pb::RecordComplaintRequest {
        complaint: Some(pb::Complaint {
            customer_id: customer.to_owned(),
            category: "delivery".into(),
            ..Default::default()
        }),
        channel: Channel::Chat as i32,
        request_id: request_id.to_owned(),
    }
}

fn defection(customer: &str, request_id: &str) -> pb::RecordDefectionRequest {
    pb::RecordDefectionRequest {
        defection: Some(pb::Defection {
            customer_id: customer.to_owned(),
            reason: pb::DefectionReason::Price as i32,
            manageable: true,
            ..Default::default()
        }),
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

fn consent(customer: &str, request_id: &str) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        consent: Some(pb::Consent {
            customer_id: customer.to_owned(),
            channel: Channel::Email as i32,
            purpose: pb::Purpose::Marketing as i32,
            state: pb::ConsentState::Granted as i32,
            lawful_basis: pb::LawfulBasis::Consent as i32,
            source: "app".into(),
            ..Default::default()
        }),
        request_id: request_id.to_owned(),
    }
}

fn uninvited(customer: &str) -> pb::RecordInteractionRequest {
    pb::RecordInteractionRequest {
        customer_id: customer.to_owned(),
        channel: Channel::Sms as i32,
        direction: pb::Direction::Outbound as i32,
        r#type: pb::InteractionType::CampaignContact as i32,
        purpose: pb::Purpose::Marketing as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_write_retried_with_its_request_id_returns_the_first_result_and_appends_one_event() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();

    let purchase_req = purchase(&customer, "w-purchase");
    let order = client.record_purchase(purchase_req.clone()).await.expect("purchase").into_inner();
    assert_eq!(client.record_purchase(purchase_req).await.expect("retry").into_inner(), order);
    let order_id = order.order.expect("order").id;

    let r = peg_return(&order_id, "w-return");
    let ret = client.record_return(r.clone()).await.expect("return").into_inner();
    assert_eq!(client.record_return(r).await.expect("retry").into_inner(), ret);

    let s = survey(&customer, "w-survey");
    let answered = client.record_survey_response(s.clone()).await.expect("survey").into_inner();
    assert_eq!(client.record_survey_response(s).await.expect("retry").into_inner(), answered);

    let c = complaint(&customer, "w-complaint");
    let opened = client.record_complaint(c.clone()).await.expect("complaint").into_inner();
    assert_eq!(client.record_complaint(c).await.expect("retry").into_inner(), opened);

    let u = pb::UpdateComplaintRequest {
        complaint_id: opened.complaint.as_ref().expect("complaint").id.clone(),
        status: pb::ComplaintStatus::Resolved as i32,
        request_id: "w-update".into(),
    };
    let updated = client.update_complaint(u.clone()).await.expect("update").into_inner();
    assert_eq!(client.update_complaint(u).await.expect("retry").into_inner(), updated);

    let d = defection(&customer, "w-defection");
    let defected = client.record_defection(d.clone()).await.expect("defection").into_inner();
    assert_eq!(client.record_defection(d).await.expect("retry").into_inner(), defected);

    let k = consent(&customer, "w-consent");
    let consented = client.record_consent(k.clone()).await.expect("consent").into_inner();
    assert_eq!(client.record_consent(k).await.expect("retry").into_inner(), consented);

    let mut i = uninvited(&customer);
    i.channel = Channel::Email as i32;
    i.request_id = "w-contact".into();
    let contacted = client.record_interaction(i.clone()).await.expect("contact").into_inner();
    assert_eq!(client.record_interaction(i).await.expect("retry").into_inner(), contacted);

    let p = pb::UpdateContactPolicyRequest {
        policy: Some(pb::ContactPolicy {
            customer_id: customer.clone(),
            max_contacts_per_week: 5,
            ..Default::default()
        }),
        request_id: "w-policy".into(),
    };
    let policy = client.update_contact_policy(p.clone()).await.expect("policy").into_inner();
    assert_eq!(client.update_contact_policy(p).await.expect("retry").into_inner(), policy);
    assert_eq!(policy.policy.map(|p| p.etag), Some("1".into()), "applied once");

    let sequences = [
        order.sequence,
        ret.sequence,
        answered.sequence,
        opened.sequence,
        updated.sequence,
        defected.sequence,
        consented.sequence,
        contacted.sequence,
    ];
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6, 7, 8]);
    let events = feed_events(&mut client, 0).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match &e.kind {
            Some(Kind::PurchaseRecorded(_)) => "purchase",
            Some(Kind::ReturnRecorded(_)) => "return",
            Some(Kind::SurveyResponseRecorded(_)) => "survey",
            Some(Kind::ComplaintChanged(_)) => "complaint",
            Some(Kind::DefectionRecorded(_)) => "defection",
            Some(Kind::ConsentRecorded(_)) => "consent",
            Some(Kind::InteractionRecorded(_)) => "interaction",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["purchase", "return", "survey", "complaint", "complaint", "defection", "consent", "interaction"],
        "one event per write, in order"
    );
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), sequences);
    assert!(events.iter().all(|e| e.customer_id == customer));
}

/// One writer's mixed writes: the sequences of those that were recorded,
/// and how many were refused (outbound marketing without consent).
async fn write_mixed(mut client: InteractionServiceClient<GrpcChannel>, writes: usize) -> (Vec<i64>, usize) {
    let customer = new_id();
    let mut order_id = String::new();
    let mut sequences = Vec::new();
    let mut refused = 0;
    for i in 0..writes {
        let sequence = match i % 8 {
            0 => client
                .record_interaction(visit(&customer, 1_700_000_000 + i as i64))
                .await
                .map(|r| r.into_inner().sequence),
            1 => client.record_purchase(purchase(&customer, "")).await.map(|r| {
                let r = r.into_inner();
                order_id = r.order.map(|o| o.id).unwrap_or_default();
                r.sequence
            }),
            2 => client.record_consent(consent(&customer, "")).await.map(|r| r.into_inner().sequence),
            3 => client.record_survey_response(survey(&customer, "")).await.map(|r| r.into_inner().sequence),
            4 => client.record_complaint(complaint(&customer, "")).await.map(|r| r.into_inner().sequence),
            5 => client.record_defection(defection(&customer, "")).await.map(|r| r.into_inner().sequence),
            6 => client.record_return(peg_return(&order_id, "")).await.map(|r| r.into_inner().sequence),
            _ => match client.record_interaction(uninvited(&customer)).await {
                Err(e) if e.code() == Code::FailedPrecondition => {
                    refused += 1;
                    continue;
                }
                other => other.map(|r| r.into_inner().sequence),
            },
        };
        sequences.push(sequence.unwrap_or_else(|e| panic!("write {i}: {e}")));
    }
    (sequences, refused)
}

#[tokio::test]
async fn the_feed_never_skips_or_repeats_a_sequence_under_concurrent_writers() {
    const WRITERS: usize = 16;
    const WRITES: usize = 50;
    let (_server, client) = spawn_app().await;

    // The reader subscribes from the start before anything is written and
    // tails while the writers write.
    let mut feed =
        client.clone().subscribe(pb::SubscribeRequest { after_sequence: 0 }).await.expect("feed").into_inner();
    let (target_tx, target_rx) = tokio::sync::watch::channel(None::<usize>);
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        loop {
            let target = *target_rx.borrow();
            if target.is_some_and(|n| seen.len() >= n) {
                // Anything more would be a repeat.
                while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), feed.next()).await {
                    seen.push(item.expect("event").event.expect("event").sequence);
                }
                return seen;
            }
            match tokio::time::timeout(Duration::from_millis(200), feed.next()).await {
                Ok(Some(item)) => seen.push(item.expect("event").event.expect("event").sequence),
                Ok(None) => panic!("the feed ended after {} events", seen.len()),
                Err(_) => assert!(tokio::time::Instant::now() < deadline, "reader stalled at {} events", seen.len()),
            }
        }
    });

    let writers: Vec<_> = (0..WRITERS).map(|_| tokio::spawn(write_mixed(client.clone(), WRITES))).collect();
    let mut written = Vec::new();
    let mut refused = 0;
    for w in futures::future::join_all(writers).await {
        let (sequences, r) = w.expect("writer");
        written.extend(sequences);
        refused += r;
    }
    let n = written.len();
    assert_eq!(n + refused, WRITERS * WRITES);
    assert_eq!(refused, WRITERS * (WRITES / 8), "every uninvited contact was refused");
    written.sort_unstable();
    let expected: Vec<i64> = (1..=n as i64).collect();
    assert_eq!(written, expected, "the writes got every sequence exactly once");

    target_tx.send(Some(n)).expect("reader alive");
    let seen = reader.await.expect("reader");
    assert_eq!(seen.len(), n, "no repeats, nothing missing");
    assert_eq!(seen, expected, "the reader saw 1..=N in order");
}
