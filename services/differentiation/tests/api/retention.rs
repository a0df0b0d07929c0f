//! Retention (DF-7): the cohort report over a generated purchase history,
//! and the validation of the retention RPCs. The at-risk list and the
//! economics over a fitted model are exercised by the CDNOW test.

use chrono::NaiveDate;
use crm_proto::{
    common::v1::{Channel, Interval, Money},
    differentiation::v1 as pb,
    interaction::v1 as ipb,
};
use crm_runtime::{error::field_violations, ids::new_id};
use tonic::Code;

use crate::{App, at, spawn_app};

fn noon(day: i64) -> prost_types::Timestamp {
    let base = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date").and_hms_opt(12, 0, 0).expect("time").and_utc();
    prost_types::Timestamp { seconds: base.timestamp() + day * 86_400, nanos: 0 }
}

fn midnight(day: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: noon(day).seconds - 12 * 3600, nanos: 0 }
}

async fn buy_on(app: &mut App, customer: &str, day: i64) -> i64 {
    app.interactions
        .record_purchase(ipb::RecordPurchaseRequest {
            customer_id: customer.to_owned(),
            channel: Channel::Store as i32,
            occur_time: Some(noon(day)),
            currency_code: "EUR".into(),
            lines: vec![ipb::OrderLine {
                sku: "S".into(),
                category: "c".into(),
                quantity: 1,
                unit_price_minor: 1000,
                unit_cost_minor: 400,
            }],
            ..Default::default()
        })
        .await
        .expect("purchase")
        .into_inner()
        .sequence
}

#[tokio::test]
async fn retention_is_reported_per_period_and_acquisition_cohort() {
    // Arrange: days since 2024-01-01.
    let mut app = spawn_app().await;
    let mut last = 0;
    let history = [(new_id(), vec![0, 35, 65]), (new_id(), vec![5]), (new_id(), vec![40, 70]), (new_id(), vec![100])];
    for (customer, days) in &history {
        for d in days {
            last = last.max(buy_on(&mut app, customer, *d).await);
        }
    }
    // Act: two 30-day periods from day 30.
    let report = app
        .values
        .get_retention_report(pb::GetRetentionReportRequest {
            period: Some(Interval { start_time: Some(midnight(30)), end_time: Some(midnight(90)) }),
            period_days: 30,
            min_sequence: at(last),
        })
        .await
        .expect("report")
        .into_inner();
    // Assert.
    assert!(report.as_of_sequence.expect("as of").interaction_sequence >= last);
    let rows: Vec<(&str, i64, i64, i64)> = report
        .rows
        .iter()
        .map(|r| {
            let day =
                r.period_start_time.expect("start").seconds.div_euclid(86_400) - noon(0).seconds.div_euclid(86_400);
            (r.cohort.as_str(), day, r.customers_at_start, r.retained)
        })
        .collect();
    assert_eq!(rows, [("2024-01", 30, 2, 1), ("2024-01", 60, 1, 1), ("2024-02", 60, 1, 1)]);
    assert_eq!(report.rows[0].retention_rate, 0.5);

    // A customer without a lifetime value cannot be evaluated yet.
    let cost = Some(Money { currency_code: "EUR".into(), minor_units: 500 });
    let err = app
        .values
        .evaluate_retention(pb::EvaluateRetentionRequest {
            customer_id: history[0].0.clone(),
            intervention_cost: cost.clone(),
            expected_save_rate: 0.3,
            ..Default::default()
        })
        .await
        .expect_err("no model");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = app
        .values
        .evaluate_retention(pb::EvaluateRetentionRequest {
            customer_id: new_id(),
            intervention_cost: cost.clone(),
            expected_save_rate: 0.3,
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .values
        .evaluate_retention(pb::EvaluateRetentionRequest {
            segment_id: new_id(),
            intervention_cost: cost,
            expected_save_rate: 0.3,
            ..Default::default()
        })
        .await
        .expect_err("unknown segment");
    assert_eq!(err.code(), Code::NotFound);
    // No model, no scores: nobody is listed at risk.
    let at_risk = app
        .values
        .list_at_risk_customers(pb::ListAtRiskCustomersRequest { min_sequence: at(last), ..Default::default() })
        .await
        .expect("at risk")
        .into_inner();
    assert!(at_risk.customers.is_empty());
}

#[tokio::test]
async fn invalid_retention_requests_name_each_field() {
    let mut app = spawn_app().await;
    let fields = |e: tonic::Status| field_violations(&e).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
    let err = app
        .values
        .get_retention_report(pb::GetRetentionReportRequest {
            period: Some(Interval { start_time: Some(noon(10)), end_time: Some(noon(0)) }),
            period_days: -1,
            ..Default::default()
        })
        .await
        .expect_err("bad report");
    assert_eq!(fields(err), ["period_days", "period.end_time"]);
    let err = app
        .values
        .get_retention_report(pb::GetRetentionReportRequest {
            period: Some(Interval { start_time: Some(noon(-3650)), end_time: Some(noon(0)) }),
            period_days: 1,
            ..Default::default()
        })
        .await
        .expect_err("too many periods");
    assert_eq!(fields(err), ["period_days"]);
    let err = app
        .values
        .list_at_risk_customers(pb::ListAtRiskCustomersRequest {
            probability_alive_below: 1.5,
            tiers: vec![pb::ValueTier::MostValuable as i32, 0, 9],
            page_size: -1,
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad at risk");
    assert_eq!(fields(err), ["probability_alive_below", "tiers[1]", "tiers[2]", "page_size", "page_token"]);
    let err = app
        .values
        .evaluate_retention(pb::EvaluateRetentionRequest {
            intervention_cost: Some(Money { currency_code: "eur".into(), minor_units: -1 }),
            expected_save_rate: f64::INFINITY,
            ..Default::default()
        })
        .await
        .expect_err("bad evaluation");
    assert_eq!(
        fields(err),
        ["customer_id", "intervention_cost.currency_code", "intervention_cost.minor_units", "expected_save_rate"]
    );
    let err = app
        .values
        .evaluate_retention(pb::EvaluateRetentionRequest {
            customer_id: new_id(),
            segment_id: new_id(),
            ..Default::default()
        })
        .await
        .expect_err("both");
    assert_eq!(fields(err), ["segment_id", "intervention_cost"]);
}
