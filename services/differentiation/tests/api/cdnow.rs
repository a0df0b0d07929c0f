//! The CDNOW acceptance data: the 2,357-customer sample of CDNOW
//! purchases (Jan 1997 – Jun 1998) that Fader, Hardie & Lee fit BG/NBD on.
//! It is not kept in the repository: it ships inside the `lifetimes` PyPI
//! package, which is downloaded once with pip and cached under
//! `${XDG_CACHE_HOME:-~/.cache}/idic-crm/cdnow`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use chrono::NaiveDate;
use crm_proto::{common::v1::Channel, differentiation::v1 as pb, interaction::v1 as ipb};
use crm_runtime::ids::new_id;
use futures::StreamExt;

use crate::{at, spawn_app};
use crm_differentiation::domain::{
    self, PurchaseDay, bgnbd,
    gamma_gamma::{self, Spend},
};

/// One line of `CDNOW_sample.txt`.
#[derive(Debug, Clone, Copy)]
pub struct Purchase {
    /// Customer number in the sample (1..=2357).
    pub customer: u32,
    /// Purchase date.
    pub date: NaiveDate,
    /// Dollar value in cents.
    pub cents: i64,
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    base.join("idic-crm").join("cdnow")
}

const WHEEL: &str = "Lifetimes-0.11.3-py3-none-any.whl";
const MEMBER: &str = "lifetimes/datasets/CDNOW_sample.txt";

/// The path of `CDNOW_sample.txt`, fetching it on first use.
pub fn sample_file() -> PathBuf {
    let dir = cache_dir();
    let file = dir.join("CDNOW_sample.txt");
    if file.exists() {
        return file;
    }
    std::fs::create_dir_all(&dir).expect("cache dir");
    if !dir.join(WHEEL).exists() {
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "lifetimes==0.11.3", "--no-deps", "--quiet", "-d"])
            .arg(&dir)
            .status()
            .expect("run python3 -m pip download");
        assert!(status.success(), "pip download lifetimes==0.11.3 failed");
    }
    // Extract to a unique name and rename, so concurrent tests never read
    // a half-written file.
    let partial = dir.join(format!("CDNOW_sample.txt.{}", std::process::id()));
    let script = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[3], 'wb') as out:\n    out.write(z.read(sys.argv[2]))\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join(WHEEL))
        .arg(MEMBER)
        .arg(&partial)
        .status()
        .expect("run python3 to extract the sample");
    assert!(status.success(), "extracting {MEMBER} failed");
    std::fs::rename(&partial, &file).expect("rename");
    file
}

/// Every purchase of the sample, in file order.
pub fn purchases() -> Vec<Purchase> {
    parse(&sample_file())
}

fn parse(path: &Path) -> Vec<Purchase> {
    let text = std::fs::read_to_string(path).expect("read sample");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "line {l:?}");
            let (dollars, cents) = f[4].split_once('.').unwrap_or((f[4], "0"));
            Purchase {
                customer: f[1].parse().expect("customer"),
                date: NaiveDate::parse_from_str(f[2], "%Y%m%d").expect("date"),
                cents: dollars.parse::<i64>().expect("dollars") * 100
                    + format!("{cents:0<2}")[..2].parse::<i64>().expect("cents"),
            }
        })
        .collect()
}

/// The calibration period's last day.
pub fn calibration_end() -> NaiveDate {
    NaiveDate::from_ymd_opt(1997, 9, 30).expect("date")
}

/// Days since the epoch.
pub fn epoch_day(d: NaiveDate) -> i64 {
    d.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days()
}

/// Per customer, purchase days ascending with the day's total (a
/// transaction is a distinct purchase day).
pub fn purchase_days(all: &[Purchase]) -> BTreeMap<u32, Vec<PurchaseDay>> {
    let mut by: BTreeMap<u32, BTreeMap<i64, i64>> = BTreeMap::new();
    for p in all {
        *by.entry(p.customer).or_default().entry(epoch_day(p.date)).or_default() += p.cents;
    }
    by.into_iter()
        .map(|(c, days)| {
            (
                c,
                days.into_iter()
                    .map(|(day, cents)| PurchaseDay { day, revenue_minor: cents, margin_minor: cents })
                    .collect(),
            )
        })
        .collect()
}

/// The published estimates checked to three significant digits.
pub fn assert_three_digits(name: &str, got: f64, want: f64) {
    let digits = |v: f64| {
        let e = v.abs().log10().floor() as i32 - 2;
        (v / 10f64.powi(e)).round() * 10f64.powi(e)
    };
    assert!((digits(got) - want).abs() < 1e-9 * want.abs(), "{name}: got {got} (≈ {}), published {want}", digits(got));
}

#[test]
fn the_pure_models_reproduce_the_published_cdnow_estimates() {
    let all = purchases();
    assert_eq!(all.len(), 6_919);
    let end = epoch_day(calibration_end());
    let summaries: Vec<_> = purchase_days(&all).values().filter_map(|days| domain::repeat_summary(days, end)).collect();
    assert_eq!(summaries.len(), 2_357);
    let weeks = |d: i64| d as f64 / 7.0;
    let fit = bgnbd::Population::new(
        summaries
            .iter()
            .map(|s| (bgnbd::Rft { x: s.frequency, t_x: weeks(s.recency_days), t: weeks(s.age_days) }, 1.0)),
    )
    .fit();
    assert!(fit.converged, "{fit:?}");
    let p = fit.params;
    assert_three_digits("r", p.r, 0.243);
    assert_three_digits("alpha", p.alpha, 4.41);
    assert_three_digits("a", p.a, 0.793);
    assert_three_digits("b", p.b, 2.43);
    assert!((fit.log_likelihood - (-9_582.4)).abs() < 0.05, "log-likelihood {}", fit.log_likelihood);
    let spend = gamma_gamma::Population::new(
        summaries
            .iter()
            .map(|s| (Spend { x: s.frequency, mean: domain::to_units(s.mean_repeat_margin_minor, "USD") }, 1.0)),
    );
    assert_eq!(spend.customers(), 946.0);
    let gg = spend.fit();
    assert!(gg.converged, "{gg:?}");
    assert_three_digits("p", gg.params.p, 6.25);
    assert_three_digits("q", gg.params.q, 3.74);
    assert_three_digits("gamma", gg.params.gamma, 15.4);
}

fn purchase_request(customer: &str, date: NaiveDate, cents: i64) -> ipb::RecordPurchaseRequest {
    let noon = date.and_hms_opt(12, 0, 0).expect("time").and_utc();
    ipb::RecordPurchaseRequest {
        customer_id: customer.to_owned(),
        channel: Channel::Web as i32,
        occur_time: Some(prost_types::Timestamp { seconds: noon.timestamp(), nanos: 0 }),
        currency_code: "USD".into(),
        lines: vec![ipb::OrderLine {
            sku: "CD".into(),
            category: "music".into(),
            quantity: 1,
            unit_price_minor: cents,
            unit_cost_minor: 0,
        }],
        ..Default::default()
    }
}

fn timestamp(d: NaiveDate) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: d.and_hms_opt(0, 0, 0).expect("time").and_utc().timestamp(), nanos: 0 }
}

#[tokio::test]
async fn cdnow_through_the_services_reproduces_the_published_estimates() {
    let mut app = spawn_app().await;
    let all = purchases();
    let ids: BTreeMap<u32, String> = all.iter().map(|p| (p.customer, new_id())).collect();
    // Record every purchase through interaction, a few at a time.
    let last = futures::stream::iter(all.iter().map(|p| {
        let mut client = app.interactions.clone();
        let req = purchase_request(&ids[&p.customer], p.date, p.cents);
        async move { client.record_purchase(req).await.expect("purchase").into_inner().sequence }
    }))
    .buffer_unordered(16)
    .fold(0, |m, s| async move { m.max(s) })
    .await;
    // The projection follows the feed: one customer's summary at that
    // position (on PostgreSQL, with a commit per event, the projection may
    // still be catching up when the last write returns: ask again).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    let first = loop {
        let read = pb::GetCustomerValueRequest { customer_id: ids[&1].clone(), min_sequence: at(last) };
        match app.values.get_customer_value(read).await {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == tonic::Code::DeadlineExceeded && tokio::time::Instant::now() < deadline => {}
            Err(e) => panic!("value: {e:?}"),
        }
    };
    let s = first.value.expect("value").summary.expect("summary");
    assert_eq!((s.order_count, s.transaction_count), (4, 4));

    let model = app
        .values
        .fit_value_model(pb::FitValueModelRequest {
            calibration_end_time: Some(timestamp(calibration_end())),
            activate: true,
            currency_code: "USD".into(),
            ..Default::default()
        })
        .await
        .expect("fit")
        .into_inner()
        .model
        .expect("model");
    assert!(model.converged && model.active, "{model:?}");
    assert_eq!((model.customer_count, model.gamma_gamma_customer_count, model.time_unit_days), (2_357, 946, 7));
    assert!(model.distinct_triple_count < 2_357, "compressed to distinct triples");
    assert_three_digits("r", model.r, 0.243);
    assert_three_digits("alpha", model.alpha, 4.41);
    assert_three_digits("a", model.a, 0.793);
    assert_three_digits("b", model.b, 2.43);
    assert!((model.log_likelihood - (-9_582.4)).abs() < 0.05, "log-likelihood {}", model.log_likelihood);
    assert_three_digits("p", model.p, 6.25);
    assert_three_digits("q", model.q, 3.74);
    assert_three_digits("gamma", model.gamma, 15.4);
    let active = app.values.get_value_model(pb::GetValueModelRequest { version: 0 }).await.expect("active");
    assert_eq!(active.into_inner().model.expect("model").version, model.version);

    // Scores come from the active model, with an interval around the CLV.
    let v = app
        .values
        .get_customer_value(pb::GetCustomerValueRequest { customer_id: ids[&1].clone(), min_sequence: None })
        .await
        .expect("value")
        .into_inner()
        .value
        .expect("value");
    let lv = v.lifetime_value.expect("lifetime value");
    assert_eq!(lv.model_version, model.version);
    assert!((0.0..=1.0).contains(&lv.probability_alive));
    let clv = lv.clv.expect("clv");
    let (lo, hi) = (lv.clv_lower.expect("lower").minor_units, lv.clv_upper.expect("upper").minor_units);
    assert!(lo <= clv.minor_units && clv.minor_units <= hi, "{lo} {} {hi}", clv.minor_units);
    assert_eq!(clv.currency_code, "USD");
    assert!(lv.interval_level > 0.0);

    // Values and tiers are in the tier policy's currency: USD here.
    let policy = app.values.get_tier_policy(pb::GetTierPolicyRequest {}).await.expect("policy").into_inner().policy;
    app.values
        .update_tier_policy(pb::UpdateTierPolicyRequest {
            policy: Some(pb::TierPolicy { currency_code: "USD".into(), ..policy.expect("policy") }),
            ..Default::default()
        })
        .await
        .expect("policy in USD");
    assert_at_risk_customers_and_their_economics(&mut app).await;
    // Large purchases today move a customer to the top of the value list
    // (highest real value: margin + CLV + referrals): the stored value
    // follows the event.
    let top = |r: pb::ListCustomerValuesResponse| r.values[0].customer_id.clone();
    let before = app
        .values
        .list_customer_values(pb::ListCustomerValuesRequest { page_size: 3, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(before.values.len(), 3);
    assert!(!before.next_page_token.is_empty());
    // Customer 1 bought four times for a few dollars, last in 1998.
    let quiet = ids[&1].clone();
    assert_ne!(top(before), quiet);
    let today = chrono::Utc::now().date_naive();
    let mut seq = 0;
    for back in [2, 1, 0] {
        let req = purchase_request(&quiet, today - chrono::Duration::days(back), 1_000_000);
        seq = app.interactions.record_purchase(req).await.expect("purchase").into_inner().sequence;
    }
    let after = app
        .values
        .list_customer_values(pb::ListCustomerValuesRequest {
            page_size: 3,
            min_sequence: at(seq),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(top(after), quiet);

    // A fit that cannot converge (no customers before the calibration end)
    // says so and keeps the active model.
    let failed = app
        .values
        .fit_value_model(pb::FitValueModelRequest {
            calibration_end_time: Some(timestamp(NaiveDate::from_ymd_opt(1990, 1, 1).expect("date"))),
            activate: true,
            currency_code: "USD".into(),
            ..Default::default()
        })
        .await
        .expect("fit")
        .into_inner()
        .model
        .expect("model");
    assert!(!failed.converged && !failed.active, "{failed:?}");
    assert!(failed.message.contains("did not converge"), "{}", failed.message);
    assert_eq!(failed.version, model.version + 1);
    let active = app.values.get_value_model(pb::GetValueModelRequest { version: 0 }).await.expect("active");
    assert_eq!(active.into_inner().model.expect("model").version, model.version);
}

/// With a fitted model in the policy currency, valuable customers whose
/// P(alive) fell are listed, most value at risk first, and intervening on
/// one of them is weighed against their CLV at risk.
async fn assert_at_risk_customers_and_their_economics(app: &mut crate::App) {
    let at_risk = app
        .values
        .list_at_risk_customers(pb::ListAtRiskCustomersRequest {
            probability_alive_below: 0.5,
            page_size: 20,
            ..Default::default()
        })
        .await
        .expect("at risk")
        .into_inner();
    assert!(!at_risk.customers.is_empty(), "lapsed repeat buyers are at risk today");
    let mut previous = i64::MAX;
    for c in &at_risk.customers {
        assert!([pb::ValueTier::MostValuable as i32, pb::ValueTier::MostGrowable as i32].contains(&c.tier));
        let p = c.lifetime_value.as_ref().expect("lifetime value").probability_alive;
        assert!(p < 0.5, "{p}");
        let at_stake = (c.real_value.as_ref().expect("real value").minor_units as f64 * (1.0 - p)) as i64;
        assert!(at_stake <= previous.saturating_add(1), "most value at risk first");
        previous = at_stake;
    }
    let customer = at_risk.customers[0].customer_id.clone();
    let usd = |minor_units| Some(crm_proto::common::v1::Money { currency_code: "USD".into(), minor_units });
    let e = app
        .values
        .evaluate_retention(pb::EvaluateRetentionRequest {
            customer_id: customer.clone(),
            intervention_cost: usd(100),
            expected_save_rate: 0.5,
            ..Default::default()
        })
        .await
        .expect("evaluate")
        .into_inner();
    let clv = e.clv.expect("clv").minor_units;
    let at_risk_value = e.clv_at_risk.expect("at risk").minor_units;
    assert!(e.probability_alive < 0.5);
    assert_eq!(at_risk_value, (clv.max(0) as f64 * (1.0 - e.probability_alive)).round() as i64);
    let net = e.expected_net_value.expect("net").minor_units;
    assert_eq!(net, (at_risk_value as f64 * 0.5).round() as i64 - 100);
    assert_eq!(e.recommend, net > 0, "{}", e.reason);
    let err = app
        .values
        .evaluate_retention(pb::EvaluateRetentionRequest {
            customer_id: customer,
            intervention_cost: Some(crm_proto::common::v1::Money { currency_code: "EUR".into(), minor_units: 100 }),
            expected_save_rate: 0.5,
            ..Default::default()
        })
        .await
        .expect_err("another currency");
    assert_eq!(crm_runtime::error::field_violations(&err)[0].0, "intervention_cost.currency_code");
}
