//! Retention (DF-7): retention rate per period and acquisition cohort, the
//! value lost with defections per cause, and the economics of a retention
//! intervention.

use std::collections::BTreeMap;

use super::value::money_text;

/// A customer's acquisition cohort: the month of their first purchase day,
/// "YYYY-MM".
pub fn cohort(first_day: i64) -> String {
    chrono::DateTime::from_timestamp(first_day.saturating_mul(86_400), 0)
        .map_or_else(|| "unknown".to_owned(), |d| d.format("%Y-%m").to_string())
}

/// Retention of one cohort in one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Acquisition cohort, "YYYY-MM".
    pub cohort: String,
    /// First day of the period (days since the epoch).
    pub period_start_day: i64,
    /// Customers of the cohort who bought in the period before.
    pub at_start: i64,
    /// Of which bought in this period too.
    pub retained: i64,
}

/// Retention per cohort and period: the periods of `period_days` days from
/// `start_day` while they start before `end_day`; a customer counts at a
/// period's start if they bought in the period before it, and as retained
/// if they bought in it too. `customers` are each one's purchase days,
/// ascending. Rows without customers at the start are left out.
pub fn retention(customers: &[Vec<i64>], start_day: i64, end_day: i64, period_days: i64) -> Vec<Row> {
    let mut rows: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    if period_days <= 0 {
        return vec![];
    }
    for days in customers {
        let Some(first) = days.first() else { continue };
        let group = cohort(*first);
        let bought = |from: i64, to: i64| {
            let i = days.partition_point(|d| *d < from);
            days.get(i).is_some_and(|d| *d < to)
        };
        let mut s = start_day;
        while s < end_day {
            if bought(s - period_days, s) {
                let e = rows.entry((group.clone(), s)).or_default();
                e.0 += 1;
                if bought(s, s + period_days) {
                    e.1 += 1;
                }
            }
            s += period_days;
        }
    }
    rows.into_iter()
        .map(|((cohort, period_start_day), (at_start, retained))| Row { cohort, period_start_day, at_start, retained })
        .collect()
}

/// The economics of intervening to keep a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Economics {
    /// CLV × (1 − P(alive)).
    pub clv_at_risk: i64,
    /// CLV at risk × expected save rate − cost.
    pub expected_net_value: i64,
    /// Whether the intervention pays.
    pub recommend: bool,
    /// Why, in words.
    pub reason: String,
}

/// Whether an intervention costing `cost` that saves `save_rate` of those
/// at risk pays for a customer with `clv` and `probability_alive`.
pub fn economics(clv: i64, probability_alive: f64, cost: i64, save_rate: f64, currency: &str) -> Economics {
    let p = if probability_alive.is_finite() { probability_alive.clamp(0.0, 1.0) } else { 0.0 };
    let at_risk = (clv.max(0) as f64 * (1.0 - p)).round() as i64;
    let saved = (at_risk as f64 * save_rate.clamp(0.0, 1.0)).round() as i64;
    let net = saved.saturating_sub(cost);
    let money = |m: i64| money_text(m, currency);
    let reason = if net > 0 {
        format!(
            "intervene: saving {:.0}% of the CLV at risk {} is worth {}, more than the cost {}",
            save_rate * 100.0,
            money(at_risk),
            money(saved),
            money(cost)
        )
    } else {
        format!(
            "do not intervene: saving {:.0}% of the CLV at risk {} is worth {}, not more than the cost {}",
            save_rate * 100.0,
            money(at_risk),
            money(saved),
            money(cost)
        )
    };
    Economics { clv_at_risk: at_risk, expected_net_value: net, recommend: net > 0, reason }
}

/// The economics of intervening on every member of a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentEconomics {
    /// Members evaluated.
    pub customers: i64,
    /// Σ CLV.
    pub clv: i64,
    /// Mean P(alive).
    pub mean_probability_alive: f64,
    /// Σ CLV × (1 − P(alive)).
    pub clv_at_risk: i64,
    /// Σ (CLV at risk × expected save rate − cost).
    pub expected_net_value: i64,
    /// Whether intervening on the whole segment pays.
    pub recommend: bool,
    /// Members for whom the intervention pays on its own.
    pub recommended_count: i64,
    /// Why, in words.
    pub reason: String,
}

/// Whether an intervention costing `cost` per customer that saves
/// `save_rate` of those at risk pays over `members` (CLV, P(alive)).
pub fn segment_economics(members: &[(i64, f64)], cost: i64, save_rate: f64, currency: &str) -> SegmentEconomics {
    let (mut clv, mut at_risk, mut net, mut paying, mut p_sum) = (0i64, 0i64, 0i64, 0i64, 0.0f64);
    for (c, p) in members {
        let e = economics(*c, *p, cost, save_rate, currency);
        clv = clv.saturating_add(*c);
        at_risk = at_risk.saturating_add(e.clv_at_risk);
        net = net.saturating_add(e.expected_net_value);
        paying += i64::from(e.recommend);
        p_sum += if p.is_finite() { p.clamp(0.0, 1.0) } else { 0.0 };
    }
    let n = members.len() as i64;
    let total_cost = cost.saturating_mul(n);
    let saved = net.saturating_add(total_cost);
    let money = |m: i64| money_text(m, currency);
    let head = format!(
        "saving {:.0}% of the CLV at risk {} of {n} members is worth {}",
        save_rate * 100.0,
        money(at_risk),
        money(saved)
    );
    let reason = if net > 0 {
        format!(
            "intervene: {head}, more than the cost {} ({} each); it pays on its own for {paying} of them",
            money(total_cost),
            money(cost)
        )
    } else {
        format!(
            "do not intervene on the whole segment: {head}, not more than the cost {} ({} each); it pays on its own for {paying} of them",
            money(total_cost),
            money(cost)
        )
    };
    SegmentEconomics {
        customers: n,
        clv,
        mean_probability_alive: if n > 0 { p_sum / n as f64 } else { 0.0 },
        clv_at_risk: at_risk,
        expected_net_value: net,
        recommend: net > 0,
        recommended_count: paying,
        reason,
    }
}

/// Defections of one reason (or of every reason), with the value lost:
/// sums over the defections as they were valued when applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CauseValue {
    /// The reason's number (0 for every reason together).
    pub reason: i32,
    /// Defections.
    pub defections: i64,
    /// Of which manageable.
    pub manageable: i64,
    /// Distinct customers.
    pub customers: i64,
    /// Sum of the defectors' CLV at the time, minor units.
    pub clv_lost: i64,
    /// Sum of the defectors' margin over the year up to each defection.
    pub margin_lost: i64,
    /// CLV plus margin of the manageable defections.
    pub manageable_value_lost: i64,
    /// Defections without a CLV in the currency.
    pub unscored: i64,
}

impl CauseValue {
    /// CLV lost plus margin lost.
    pub fn value_lost(&self) -> i64 {
        self.clv_lost.saturating_add(self.margin_lost)
    }

    /// This cause's share of `total`'s value lost (0 when nothing, or
    /// less than nothing, was lost overall).
    pub fn share_of(&self, total: &CauseValue) -> f64 {
        let all = total.value_lost();
        if all > 0 { self.value_lost() as f64 / all as f64 } else { 0.0 }
    }
}

/// Causes most value lost first; ties by reason number.
pub fn rank_causes(mut causes: Vec<CauseValue>) -> Vec<CauseValue> {
    causes.sort_by(|a, b| b.value_lost().cmp(&a.value_lost()).then(a.reason.cmp(&b.reason)));
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_rank_by_value_lost_then_reason() {
        let cause = |reason, clv_lost, margin_lost| CauseValue { reason, clv_lost, margin_lost, ..Default::default() };
        let ranked = rank_causes(vec![cause(1, 10, 5), cause(2, 0, 40), cause(3, 15, 0), cause(4, -5, 0)]);
        assert_eq!(ranked.iter().map(|c| c.reason).collect::<Vec<_>>(), [2, 1, 3, 4]);
        let total = cause(0, 20, 45);
        assert!((ranked[0].share_of(&total) - 40.0 / 65.0).abs() < 1e-12);
        assert_eq!(ranked[0].share_of(&cause(0, 0, 0)), 0.0);
    }

    #[test]
    fn cohorts_are_first_purchase_months() {
        assert_eq!(cohort(0), "1970-01");
        assert_eq!(cohort(31), "1970-02");
    }

    #[test]
    fn retention_counts_repeat_buyers_per_period() {
        // Periods of 10 days from day 10: [10, 20), [20, 30).
        let customers = vec![
            vec![0, 12, 25], // bought in [0,10), [10,20), [20,30): at start twice, retained twice
            vec![5],         // at start of [10,20), not retained
            vec![15, 21],    // at start of [20,30), retained
            vec![40],        // after the report
        ];
        let rows = retention(&customers, 10, 30, 10);
        let jan: Vec<(i64, i64, i64)> = rows.iter().map(|r| (r.period_start_day, r.at_start, r.retained)).collect();
        assert_eq!(jan, [(10, 2, 1), (20, 2, 2)]);
        assert!(rows.iter().all(|r| r.cohort == "1970-01"));
        assert!(retention(&customers, 10, 30, 0).is_empty());
    }

    #[test]
    fn an_intervention_is_recommended_when_the_saved_value_exceeds_its_cost() {
        let e = economics(10_000, 0.2, 1_000, 0.25, "EUR");
        assert_eq!((e.clv_at_risk, e.expected_net_value, e.recommend), (8_000, 1_000, true));
        assert!(e.reason.starts_with("intervene"), "{}", e.reason);
        let e = economics(10_000, 0.9, 1_000, 0.25, "EUR");
        assert_eq!((e.clv_at_risk, e.expected_net_value, e.recommend), (1_000, -750, false));
        assert_eq!(economics(-5, f64::NAN, 0, 1.0, "EUR").clv_at_risk, 0);
    }

    #[test]
    fn a_segment_is_the_sum_of_its_members() {
        let members = [(10_000, 0.2), (10_000, 0.9), (0, 0.5)];
        let e = segment_economics(&members, 1_000, 0.25, "EUR");
        let one = |c, p| economics(c, p, 1_000, 0.25, "EUR");
        assert_eq!(e.customers, 3);
        assert_eq!(e.clv, 20_000);
        assert_eq!(e.clv_at_risk, one(10_000, 0.2).clv_at_risk + one(10_000, 0.9).clv_at_risk);
        assert_eq!(e.expected_net_value, 1_000 - 750 - 1_000);
        assert!(!e.recommend);
        assert_eq!(e.recommended_count, 1);
        assert!((e.mean_probability_alive - 1.6 / 3.0).abs() < 1e-12);
        assert!(e.reason.starts_with("do not intervene") && e.reason.contains("1 of them"), "{}", e.reason);
        let e = segment_economics(&members[..1], 1_000, 0.25, "EUR");
        assert!(e.recommend && e.reason.starts_with("intervene"), "{}", e.reason);
        assert_eq!(segment_economics(&[], 1, 0.5, "EUR").customers, 0);
    }
}
