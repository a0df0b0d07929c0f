//! Voice of the customer (IN-3): survey responses and their analyses.

use crate::*;

fn rating(attribute: &str, importance: f64, ours: f64, competitor: f64) -> pb::AttributeRating {
    pb::AttributeRating {
        attribute: attribute.to_owned(),
        importance,
        our_performance: ours,
        competitor_performance: competitor,
    }
}

fn answer(
    customer: &str,
    segment: &str,
    at: DateTime<Utc>,
    nps: i32,
    csat: i32,
    ratings: Vec<pb::AttributeRating>,
) -> pb::RecordSurveyResponseRequest {
    pb::RecordSurveyResponseRequest {
        response: Some(pb::SurveyResponse {
            customer_id: customer.to_owned(),
            survey_id: "q1-2026".into(),
            nps,
            csat,
            ratings,
            segment: segment.to_owned(),
            occur_time: Some(ts(at)),
            comment: "fine".into(),
            ..Default::default()
        }),
        channel: Channel::Email as i32,
        ..Default::default()
    }
}

struct Panel {
    a: String,
    b: String,
    c: String,
}

/// Responses of three customers over January to April 2026: a and b carry
/// the segment tag "gold", c "silver".
async fn answered_panel(client: &mut InteractionServiceClient<GrpcChannel>) -> Panel {
    let p = Panel { a: new_id(), b: new_id(), c: new_id() };
    let answers = [
        answer(
            &p.a,
            "gold",
            utc(2026, 1, 5, 10, 0, 0),
            10,
            5,
            vec![rating("price", 8.0, 6.0, 7.0), rating("delivery", 10.0, 9.0, 5.0)],
        ),
        answer(&p.a, "gold", utc(2026, 1, 15, 9, 0, 0), 3, 3, vec![]),
        answer(&p.b, "gold", utc(2026, 1, 20, 12, 0, 0), 9, 4, vec![rating("price", 4.0, 9.0, -1.0)]),
        answer(&p.c, "silver", utc(2026, 1, 31, 23, 59, 59), 7, 0, vec![rating("delivery", 6.0, 5.0, 8.0)]),
        answer(&p.c, "silver", utc(2026, 2, 1, 0, 0, 0), 0, 2, vec![rating("price", 5.0, 5.0, 5.0)]),
        answer(&p.b, "gold", utc(2026, 2, 14, 8, 0, 0), -1, 1, vec![]),
        // Outside [2026-01-01, 2026-04-01).
        answer(&p.a, "gold", utc(2026, 4, 1, 0, 0, 0), 10, 5, vec![rating("price", 10.0, 10.0, 1.0)]),
        answer(&p.a, "gold", utc(2025, 12, 31, 23, 59, 59), 0, 1, vec![rating("price", 10.0, 1.0, 10.0)]),
    ];
    for a in answers {
        client.record_survey_response(a).await.expect("answer");
    }
    p
}

fn first_quarter() -> Interval {
    Interval { start_time: Some(ts(utc(2026, 1, 1, 0, 0, 0))), end_time: Some(ts(utc(2026, 4, 1, 0, 0, 0))) }
}

fn month(m: u32) -> Interval {
    Interval { start_time: Some(ts(utc(2026, m, 1, 0, 0, 0))), end_time: Some(ts(utc(2026, m + 1, 1, 0, 0, 0))) }
}

fn satisfaction(b: &pb::SatisfactionBucket) -> (i64, f64, i64, f64) {
    (b.nps_responses, b.nps, b.csat_responses, b.csat_mean)
}

#[tokio::test]
async fn a_survey_response_is_recorded_with_its_interaction_once() {
    let (_server, mut client) = spawn_app().await;
    let customer = new_id();
    let mut req = answer(&customer, "gold", utc(2026, 1, 5, 10, 0, 0), 9, 4, vec![rating("price", 8.0, 6.0, -3.0)]);
    req.request_id = "survey-1".into();
    let first = client.record_survey_response(req.clone()).await.expect("record").into_inner();
    let retry = client.record_survey_response(req).await.expect("retry").into_inner();
    assert_eq!(first, retry);
    let response = first.response.expect("response");
    assert!(!response.id.is_empty());
    assert_eq!(response.ratings[0].competitor_performance, -1.0, "unknown is stored as -1");
    let interaction = first.interaction.expect("interaction");
    assert_eq!(interaction.r#type, pb::InteractionType::SurveyResponse as i32);
    assert_eq!(interaction.channel, Channel::Email as i32);
    assert_eq!(interaction.customer_id, customer);

    let events = feed_events(&mut client, 0).await;
    assert_eq!(events.len(), 1);
    match &events[0].kind {
        Some(Kind::SurveyResponseRecorded(e)) => {
            assert_eq!(e.response.as_ref(), Some(&response));
            assert_eq!(e.interaction.as_ref().map(|i| i.id.as_str()), Some(interaction.id.as_str()));
        }
        other => panic!("expected a survey response, got {other:?}"),
    }
}

#[tokio::test]
async fn nps_and_csat_per_month_and_per_segment() {
    let (_server, mut client) = spawn_app().await;
    let p = answered_panel(&mut client).await;
    let ask = |customer_ids: Vec<String>, segment: &str| pb::AnalyzeSatisfactionRequest {
        period: Some(first_quarter()),
        granularity: pb::Granularity::Month as i32,
        customer_ids,
        segment: segment.to_owned(),
    };

    let all = client.analyze_satisfaction(ask(vec![], "")).await.expect("all").into_inner().buckets;
    assert_eq!(all.iter().map(|b| b.period.expect("period")).collect::<Vec<_>>(), [month(1), month(2), month(3)]);
    // January: 10, 9 promote, 7 is passive, 3 detracts; CSAT 5, 4, 3 (one not asked).
    assert_eq!(satisfaction(&all[0]), (4, 25.0, 3, 4.0));
    // February: one detractor (0), one not asked; CSAT 2 and 1.
    assert_eq!(satisfaction(&all[1]), (1, -100.0, 2, 1.5));
    assert_eq!(satisfaction(&all[2]), (0, 0.0, 0, 0.0), "an empty month");

    let gold = client.analyze_satisfaction(ask(vec![], "gold")).await.expect("gold").into_inner().buckets;
    assert_eq!(satisfaction(&gold[0]), (3, 100.0 * 1.0 / 3.0, 3, 4.0));
    assert_eq!(satisfaction(&gold[1]), (0, 0.0, 1, 1.0));

    let only_c = client.analyze_satisfaction(ask(vec![p.c.clone()], "")).await.expect("c").into_inner().buckets;
    assert_eq!(satisfaction(&only_c[0]), (1, 0.0, 0, 0.0));
    assert_eq!(satisfaction(&only_c[1]), (1, -100.0, 1, 2.0));

    let both = client
        .analyze_satisfaction(ask(vec![p.a.clone(), p.b.clone(), p.c.clone(), p.a.clone()], "silver"))
        .await
        .expect("both filters")
        .into_inner()
        .buckets;
    assert_eq!(both.iter().map(satisfaction).collect::<Vec<_>>(), only_c.iter().map(satisfaction).collect::<Vec<_>>());

    let weekly = client
        .analyze_satisfaction(pb::AnalyzeSatisfactionRequest {
            period: Some(month(1)),
            granularity: pb::Granularity::Week as i32,
            ..Default::default()
        })
        .await
        .expect("weekly")
        .into_inner()
        .buckets;
    // 2026-01-01 is a Thursday: Jan 1–4, then weeks from Mondays the 5th, 12th, 19th and 26th (clipped).
    assert_eq!(weekly.len(), 5);
    assert_eq!(weekly[4].period.as_ref().and_then(|p| p.end_time), month(1).end_time);
    assert_eq!(weekly.iter().map(|b| b.nps_responses).collect::<Vec<_>>(), [0, 1, 1, 1, 1]);

    let daily = client
        .analyze_satisfaction(pb::AnalyzeSatisfactionRequest {
            period: Some(Interval {
                start_time: Some(ts(utc(2026, 1, 31, 12, 0, 0))),
                end_time: Some(ts(utc(2026, 2, 1, 12, 0, 0))),
            }),
            granularity: pb::Granularity::Day as i32,
            ..Default::default()
        })
        .await
        .expect("daily")
        .into_inner()
        .buckets;
    assert_eq!(daily.iter().map(satisfaction).collect::<Vec<_>>(), [(1, 0.0, 0, 0.0), (1, -100.0, 1, 2.0)]);
}

#[tokio::test]
async fn perceived_value_per_month_and_attribute_against_the_competitor() {
    let (_server, mut client) = spawn_app().await;
    let _ = answered_panel(&mut client).await;
    let ask = |segment: &str| pb::AnalyzePerceivedValueRequest {
        period: Some(first_quarter()),
        granularity: pb::Granularity::Month as i32,
        segment: segment.to_owned(),
        ..Default::default()
    };
    let r = client.analyze_perceived_value(ask("")).await.expect("all").into_inner();
    let rows: Vec<_> = r
        .rows
        .iter()
        .map(|row| {
            (
                row.period.expect("period"),
                row.attribute.as_str(),
                row.importance,
                row.our_performance,
                row.competitor_performance,
                row.weighted_advantage,
                row.responses,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            // (10, 9, 5) and (6, 5, 8): Σ imp × (ours − comp) = 40 − 18 over Σ imp = 16.
            (month(1), "delivery", 8.0, 7.0, 6.5, 22.0 / 16.0, 2),
            // (8, 6, 7) and (4, 9, unknown): the unknown counts for us, not for the comparison.
            (month(1), "price", 6.0, 7.5, 7.0, -1.0, 2),
            (month(2), "price", 5.0, 5.0, 5.0, 0.0, 1),
        ]
    );
    // Σ imp × ours / Σ imp × competitor over the ratings that know the competitor.
    assert_eq!(r.perceived_value_ratio, (90.0 + 30.0 + 48.0 + 25.0) / (50.0 + 48.0 + 56.0 + 25.0));

    let gold = client.analyze_perceived_value(ask("gold")).await.expect("gold").into_inner();
    assert_eq!(gold.rows.len(), 2);
    assert_eq!((gold.rows[0].attribute.as_str(), gold.rows[0].weighted_advantage), ("delivery", 4.0));
    assert_eq!(gold.perceived_value_ratio, (90.0 + 48.0) / (50.0 + 56.0));

    let nobody = client.analyze_perceived_value(ask("nobody")).await.expect("empty").into_inner();
    assert!(nobody.rows.is_empty());
    assert_eq!(nobody.perceived_value_ratio, 0.0, "undefined without ratings");

    let quarterly = client
        .analyze_perceived_value(pb::AnalyzePerceivedValueRequest {
            period: Some(first_quarter()),
            granularity: pb::Granularity::Quarter as i32,
            ..Default::default()
        })
        .await
        .expect("quarter")
        .into_inner();
    let price = quarterly.rows.iter().find(|r| r.attribute == "price").expect("price");
    assert_eq!(
        (price.responses, price.importance, price.weighted_advantage),
        (3, 17.0 / 3.0, (48.0 + 25.0 - 56.0 - 25.0) / 13.0)
    );
}

#[tokio::test]
async fn survey_responses_reject_invalid_and_hostile_input() {
    let (_server, mut client) = spawn_app().await;
    let mut ratings = vec![
        rating("", 5.0, 5.0, 5.0),
        rating("speed", f64::NAN, 11.0, f64::INFINITY),
        rating("speed", -1.0, 5.0, 10.5),
        rating("fit", 5.0, 5.0, f64::NEG_INFINITY),
    ];
    ratings.push(rating(&"x".repeat(129), 1.0, 1.0, 1.0));
    let mut req = answer("nope", &"s".repeat(65), Utc::now() + chrono::Duration::days(2), 11, 6, ratings);
    if let Some(r) = req.response.as_mut() {
        r.comment = "c".repeat(4097);
        r.survey_id = "id\u{0}".into();
    }
    req.channel = 999;
    req.request_id = "x".repeat(129);
    let err = client.record_survey_response(req).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        [
            "channel",
            "request_id",
            "response.comment",
            "response.csat",
            "response.customer_id",
            "response.nps",
            "response.occur_time",
            "response.ratings[0].attribute",
            "response.ratings[1].competitor_performance",
            "response.ratings[1].importance",
            "response.ratings[1].our_performance",
            "response.ratings[2].attribute",
            "response.ratings[2].competitor_performance",
            "response.ratings[2].importance",
            "response.ratings[3].competitor_performance",
            "response.ratings[4].attribute",
            "response.segment",
            "response.survey_id",
        ]
    );

    let many = (0..51).map(|i| rating(&format!("a{i}"), 1.0, 1.0, 1.0)).collect();
    let err = client
        .record_survey_response(answer(&new_id(), "", utc(2026, 1, 1, 0, 0, 0), 5, 3, many))
        .await
        .expect_err("too many ratings");
    assert_eq!(fields(&err), ["response.ratings"]);
    let err = client.record_survey_response(pb::RecordSurveyResponseRequest::default()).await.expect_err("empty");
    assert_eq!(fields(&err), ["response"]);
    assert!(feed_events(&mut client, 0).await.is_empty());
}

#[tokio::test]
async fn analyses_reject_invalid_periods_and_filters() {
    let (_server, mut client) = spawn_app().await;
    let err = client.analyze_satisfaction(pb::AnalyzeSatisfactionRequest::default()).await.expect_err("nothing");
    assert_eq!(fields(&err), ["granularity", "period"]);

    let day = pb::Granularity::Day as i32;
    let decade =
        Interval { start_time: Some(ts(utc(2016, 1, 1, 0, 0, 0))), end_time: Some(ts(utc(2026, 1, 1, 0, 0, 0))) };
    let err = client
        .analyze_satisfaction(pb::AnalyzeSatisfactionRequest {
            period: Some(decade),
            granularity: day,
            ..Default::default()
        })
        .await
        .expect_err("3653 days");
    assert_eq!(fields(&err), ["period"]);
    let ok = client
        .analyze_satisfaction(pb::AnalyzeSatisfactionRequest {
            period: Some(decade),
            granularity: pb::Granularity::Month as i32,
            ..Default::default()
        })
        .await
        .expect("120 months")
        .into_inner();
    assert_eq!(ok.buckets.len(), 120);

    let backwards = Interval { start_time: first_quarter().end_time, end_time: first_quarter().start_time };
    let open = Interval { start_time: first_quarter().start_time, end_time: None };
    let empty = Interval { start_time: first_quarter().start_time, end_time: first_quarter().start_time };
    let broken = Interval { start_time: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }), end_time: None };
    for (period, expected) in [
        (backwards, vec!["period"]),
        (open, vec!["period.end_time"]),
        (empty, vec!["period"]),
        (broken, vec!["period.end_time", "period.start_time"]),
    ] {
        let err = client
            .analyze_perceived_value(pb::AnalyzePerceivedValueRequest {
                period: Some(period),
                granularity: 99,
                ..Default::default()
            })
            .await
            .expect_err("invalid period");
        let mut expected: Vec<&str> = expected;
        expected.insert(0, "granularity");
        assert_eq!(fields(&err), expected);
    }

    let too_many: Vec<String> = (0..10_001).map(|_| new_id()).collect();
    let err = client
        .analyze_satisfaction(pb::AnalyzeSatisfactionRequest {
            period: Some(first_quarter()),
            granularity: day,
            customer_ids: too_many,
            segment: "s\n".into(),
        })
        .await
        .expect_err("oversized");
    assert_eq!(fields(&err), ["customer_ids", "segment"]);
    let err = client
        .analyze_satisfaction(pb::AnalyzeSatisfactionRequest {
            period: Some(first_quarter()),
            granularity: day,
            customer_ids: vec![new_id(), "1 OR 1=1".into(), String::new()],
            ..Default::default()
        })
        .await
        .expect_err("bad ids");
    assert_eq!(fields(&err), ["customer_ids[1]", "customer_ids[2]"]);

    let many: Vec<String> = (0..10_000).map(|_| new_id()).collect();
    let ok = client
        .analyze_satisfaction(pb::AnalyzeSatisfactionRequest {
            period: Some(first_quarter()),
            granularity: pb::Granularity::Year as i32,
            customer_ids: many,
            ..Default::default()
        })
        .await
        .expect("10000 customers")
        .into_inner();
    assert_eq!(ok.buckets.len(), 1);
}
