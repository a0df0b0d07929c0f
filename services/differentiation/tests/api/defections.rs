//! Defection causes joined with the value lost (DF-7): the report over a
//! generated population against an independent computation, through
//! merges, unmerges and erasures, and its validation.

use std::{collections::BTreeMap, time::Duration};

use crm_proto::{
    common::v1::{FeedSequences, Interval, Money},
    differentiation::v1 as pb,
    identification::v1 as idpb,
    interaction::v1::{self as ipb, DefectionReason},
};
use crm_runtime::{error::field_violations, ids::new_id};
use tonic::Code;

use crate::{
    App, at, caught_up, fit_active_eur_model,
    lifecycle::{merge, person},
    purchase, spawn_app,
};

pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn below(&mut self, n: u64) -> i64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n) as i64
    }
}

const DAY: i64 = 86_400;

/// A recorded defection as the test knows it.
#[derive(Debug, Clone)]
struct Defected {
    customer: String,
    reason: i32,
    manageable: bool,
    occur_secs: i64,
    clv: Option<i64>,
    margin: i64,
}

/// What a cause's row should say: (defections, manageable, customers,
/// CLV lost, margin lost, manageable value lost, unscored).
type Expected = (i64, i64, i64, i64, i64, i64, i64);

fn expect(defections: &[Defected], from: i64, to: i64, reasons: &[i32]) -> BTreeMap<i32, Expected> {
    let mut out: BTreeMap<i32, (Expected, std::collections::BTreeSet<String>)> = BTreeMap::new();
    for d in defections.iter().filter(|d| d.occur_secs >= from && d.occur_secs < to) {
        if !reasons.is_empty() && !reasons.contains(&d.reason) {
            continue;
        }
        for key in [d.reason, 0] {
            let (e, who) = out.entry(key).or_default();
            let value = d.clv.unwrap_or(0) + d.margin;
            who.insert(d.customer.clone());
            *e = (
                e.0 + 1,
                e.1 + i64::from(d.manageable),
                who.len() as i64,
                e.3 + d.clv.unwrap_or(0),
                e.4 + d.margin,
                e.5 + if d.manageable { value } else { 0 },
                e.6 + i64::from(d.clv.is_none()),
            );
        }
    }
    out.into_iter().map(|(k, (e, _))| (k, e)).collect()
}

fn minor(m: &Option<Money>) -> i64 {
    m.as_ref().map_or(i64::MIN, |m| m.minor_units)
}

fn got(c: &pb::DefectionValue) -> Expected {
    (
        c.defection_count,
        c.manageable_count,
        c.customer_count,
        minor(&c.lifetime_value_lost),
        minor(&c.margin_lost),
        minor(&c.manageable_value_lost),
        c.unscored_count,
    )
}

/// The report as the expected map (0: the total), after checking its
/// order, shares and sums.
fn as_map(r: &pb::AnalyzeDefectionValueResponse) -> BTreeMap<i32, Expected> {
    let total = r.total.as_ref().expect("total");
    let lost = |c: &pb::DefectionValue| minor(&c.value_lost);
    for c in std::iter::once(total).chain(&r.causes) {
        assert_eq!(lost(c), minor(&c.lifetime_value_lost) + minor(&c.margin_lost));
        assert_eq!(c.value_lost.as_ref().expect("value lost").currency_code, r.currency_code);
    }
    for w in r.causes.windows(2) {
        assert!((lost(&w[0]), -w[0].reason) > (lost(&w[1]), -w[1].reason), "{:?}", r.causes);
    }
    if lost(total) > 0 {
        for c in &r.causes {
            assert!((c.value_share - lost(c) as f64 / lost(total) as f64).abs() < 1e-12);
        }
    }
    let mut m: BTreeMap<i32, Expected> = r.causes.iter().map(|c| (c.reason, got(c))).collect();
    if total.defection_count > 0 {
        m.insert(0, got(total));
    }
    m
}

async fn report(app: &mut App, req: pb::AnalyzeDefectionValueRequest) -> pb::AnalyzeDefectionValueResponse {
    app.values.analyze_defection_value(req).await.expect("report").into_inner()
}

/// Poll the default report until it says `want` (re-keys and erasures reach
/// this projection through the feeds, at positions the caller does not
/// learn).
async fn until(app: &mut App, want: &BTreeMap<i32, Expected>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = report(app, pb::AnalyzeDefectionValueRequest::default()).await;
        if &as_map(&r) == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "got {:?}, want {want:?}", as_map(&r));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn defect(app: &mut App, d: &Defected) -> i64 {
    app.interactions
        .record_defection(ipb::RecordDefectionRequest {
            defection: Some(ipb::Defection {
                customer_id: d.customer.clone(),
                reason: d.reason,
                manageable: d.manageable,
                occur_time: Some(prost_types::Timestamp { seconds: d.occur_secs, nanos: 0 }),
                ..Default::default()
            }),
            request_id: new_id(),
            ..Default::default()
        })
        .await
        .expect("defection")
        .into_inner()
        .sequence
}

/// Purchases over the last 600 days by `customers`, each with their own
/// rhythm, spend and lifetime, applied by differentiation before it
/// returns: each customer's purchases as (instant, margin), and the last
/// sequence.
pub(crate) async fn buy_for_a_while(
    app: &mut App,
    customers: &[String],
    rng: &mut Lcg,
    now: i64,
) -> (BTreeMap<String, Vec<(i64, i64)>>, i64) {
    let today = now / DAY;
    let mut bought: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    let mut last = 0;
    for id in customers {
        let first = 120 + rng.below(480);
        let gap = 5 + rng.below(40);
        let life = if rng.below(2) == 0 { rng.below(150) } else { 600 };
        let spend = 800 + 200 * rng.below(10);
        let mut day = today - first;
        while day < today && day <= today - first + life {
            let price = spend + 50 * rng.below(5);
            let mut req = purchase(id, 0, "EUR", price, 600);
            let secs = day * DAY + 43_200;
            req.occur_time = Some(prost_types::Timestamp { seconds: secs, nanos: 0 });
            last = last.max(app.interactions.record_purchase(req).await.expect("purchase").into_inner().sequence);
            bought.entry(id.clone()).or_default().push((secs, price - 600));
            day += gap;
        }
    }
    caught_up(app, last).await;
    (bought, last)
}

#[tokio::test]
async fn defection_causes_carry_the_value_lost_with_the_defectors() {
    // Arrange: a generated purchase history over the last 600 days, a
    // fitted value model; three of the customers are known profiles.
    let mut app = spawn_app().await;
    let mut rng = Lcg(7);
    let now = chrono::Utc::now().timestamp();
    let mut customers = Vec::new();
    for i in 0..80 {
        customers.push(if i < 3 { person(&mut app, &[]).await.0 } else { new_id() });
    }
    let (bought, mut last) = buy_for_a_while(&mut app, &customers, &mut rng, now).await;
    fit_active_eur_model(&mut app).await;

    // Defectors: most in the last 300 days, some before the default
    // period, one who never bought; the three profiles for price, price
    // and service.
    let (a, b, c) = (customers[0].clone(), customers[1].clone(), customers[2].clone());
    let mut plan: Vec<(String, i32, i64)> = vec![
        (a.clone(), DefectionReason::Price as i32, 10),
        (b.clone(), DefectionReason::Price as i32, 20),
        (c.clone(), DefectionReason::Service as i32, 30),
        (new_id(), DefectionReason::Moved as i32, 40),
    ];
    for id in &customers[3..45] {
        let ago = if rng.below(8) == 0 { 400 + rng.below(100) } else { 1 + rng.below(300) };
        plan.push((id.clone(), 1 + rng.below(6) as i32, ago));
    }
    let mut defections = Vec::new();
    for (customer, reason, ago) in plan {
        let value = app
            .values
            .get_customer_value(pb::GetCustomerValueRequest { customer_id: customer.clone(), min_sequence: at(last) })
            .await
            .expect("value")
            .into_inner()
            .value
            .expect("value");
        let occur_secs = now - ago * DAY - 3_600;
        let margin = bought.get(&customer).map_or(0, |p| {
            p.iter().filter(|(s, _)| *s > occur_secs - 365 * DAY && *s <= occur_secs).map(|(_, m)| m).sum()
        });
        let d = Defected {
            customer,
            reason,
            manageable: rng.below(2) == 0,
            occur_secs,
            clv: value.lifetime_value.and_then(|l| l.clv).map(|m| m.minor_units),
            margin,
        };
        last = last.max(defect(&mut app, &d).await);
        defections.push(d);
    }
    assert!(defections.iter().any(|d| d.clv.is_none()) && defections.iter().filter(|d| d.clv.is_some()).count() > 30);

    // Act: the default report (the last 365 days, the policy's currency).
    let r = report(&mut app, pb::AnalyzeDefectionValueRequest { min_sequence: at(last), ..Default::default() }).await;

    // Assert.
    assert!(r.as_of_sequence.expect("as of").interaction_sequence >= last);
    assert_eq!(r.currency_code, "EUR");
    let year = (now - 365 * DAY, now + 1);
    let want = expect(&defections, year.0, year.1, &[]);
    assert_eq!(as_map(&r), want);
    assert!(want[&0].0 < defections.len() as i64, "some defections are older than the period");
    assert!(r.causes.len() >= 4 && want[&0].3 > 0 && want[&0].4 > 0, "{r:?}");

    // A chosen period and reasons; another currency counts without value.
    let everything = Interval {
        start_time: Some(prost_types::Timestamp { seconds: now - 1000 * DAY, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: now + DAY, nanos: 0 }),
    };
    let reasons = vec![DefectionReason::Price as i32, DefectionReason::Moved as i32];
    let r = report(
        &mut app,
        pb::AnalyzeDefectionValueRequest { period: Some(everything), reasons: reasons.clone(), ..Default::default() },
    )
    .await;
    assert_eq!(as_map(&r), expect(&defections, now - 1000 * DAY, now + DAY, &reasons));
    let r =
        report(&mut app, pb::AnalyzeDefectionValueRequest { currency_code: "USD".into(), ..Default::default() }).await;
    let total = r.total.expect("total");
    assert_eq!((r.currency_code.as_str(), minor(&total.value_lost)), ("USD", 0));
    assert_eq!((total.defection_count, total.unscored_count), (want[&0].0, want[&0].0));

    // The value lost is fixed when the defection is applied: a later
    // purchase by a defector does not move it.
    let seq = app.interactions.record_purchase(purchase(&a, 0, "EUR", 99_000, 0)).await.expect("buy").into_inner();
    let r = report(&mut app, pb::AnalyzeDefectionValueRequest { min_sequence: at(seq.sequence), ..Default::default() })
        .await;
    assert_eq!(as_map(&r), want);

    // A merge moves b's defection to a (one customer fewer); the unmerge
    // moves it back; an erasure removes a's.
    let merged = merge(&mut app, &a, &b).await;
    let renamed: Vec<Defected> = defections
        .iter()
        .map(|d| Defected { customer: if d.customer == b { a.clone() } else { d.customer.clone() }, ..d.clone() })
        .collect();
    let after_merge = expect(&renamed, year.0, year.1, &[]);
    assert_eq!(after_merge[&(DefectionReason::Price as i32)].2 + 1, want[&(DefectionReason::Price as i32)].2);
    until(&mut app, &after_merge).await;
    app.profiles
        .unmerge_profiles(idpb::UnmergeProfilesRequest { merge_id: merged.merge_id, ..Default::default() })
        .await
        .expect("unmerge");
    until(&mut app, &want).await;
    let erased = app
        .profiles
        .erase_profile(idpb::EraseProfileRequest { profile_id: a.clone(), ..Default::default() })
        .await
        .expect("erase")
        .into_inner();
    let left: Vec<Defected> = defections.iter().filter(|d| d.customer != a).cloned().collect();
    let at_erasure = Some(FeedSequences { identification_sequence: erased.sequence, interaction_sequence: 0 });
    let r = report(&mut app, pb::AnalyzeDefectionValueRequest { min_sequence: at_erasure, ..Default::default() }).await;
    assert_eq!(as_map(&r), expect(&left, year.0, year.1, &[]), "gone at the erasure's position");
}

#[tokio::test]
async fn invalid_defection_value_requests_name_each_field() {
    let mut app = spawn_app().await;
    let fields = |e: tonic::Status| {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        field_violations(&e).into_iter().map(|(f, _)| f).collect::<Vec<_>>()
    };
    let ts = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let err = app
        .values
        .analyze_defection_value(pb::AnalyzeDefectionValueRequest {
            period: Some(Interval { start_time: ts(2_000_000_000), end_time: ts(1_000_000_000) }),
            reasons: vec![DefectionReason::Price as i32, 0, 99],
            currency_code: "eur".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad report");
    assert_eq!(fields(err), ["period.end_time", "reasons[1]", "reasons[2]", "currency_code"]);
    let err = app
        .values
        .analyze_defection_value(pb::AnalyzeDefectionValueRequest {
            period: Some(Interval { start_time: ts(i64::MAX), end_time: None }),
            min_sequence: Some(FeedSequences { interaction_sequence: -1, identification_sequence: 0 }),
            ..Default::default()
        })
        .await
        .expect_err("bad instant");
    assert_eq!(fields(err), ["period.start_time"]);
    let err = app
        .values
        .analyze_defection_value(pb::AnalyzeDefectionValueRequest {
            min_sequence: Some(FeedSequences { interaction_sequence: -1, identification_sequence: 0 }),
            ..Default::default()
        })
        .await
        .expect_err("bad sequence");
    assert_eq!(fields(err), ["min_sequence.interaction_sequence"]);

    // Nothing recorded: an empty report in the policy's currency.
    let r = report(&mut app, pb::AnalyzeDefectionValueRequest::default()).await;
    assert!(r.causes.is_empty());
    assert_eq!(r.currency_code, "EUR");
    let total = r.total.expect("total");
    assert_eq!((total.defection_count, minor(&total.value_lost), total.value_share), (0, 0, 0.0));
}
