//! Pure differentiation logic. No I/O.
//!
//! - this module: the repeat-purchase summary in the models' sense (a
//!   transaction is a distinct purchase day; frequency counts repeat days;
//!   recency and age run from the first day; margin and revenue are the
//!   means over the repeat days);
//! - [`special`], [`optimize`], [`random`]: numerics;
//! - [`bgnbd`], [`gamma_gamma`]: the models and their maximum-likelihood fits;
//! - [`clv`]: per-customer value and its interval;
//! - [`retention`]: retention per cohort and retention economics;
//! - [`segment`]: needs-based segments, CEL expressions over customer facts;
//! - [`value`]: real and strategic value, cost to serve, tiers with
//!   hysteresis, RFM, and the interaction attribute conventions.

pub mod bgnbd;
pub mod clv;
pub mod gamma_gamma;
pub mod optimize;
pub mod random;
pub mod retention;
pub mod segment;
pub mod special;
pub mod value;

use chrono::{DateTime, Utc};

/// Microseconds in a day.
pub const DAY_US: i64 = 86_400_000_000;

/// The calendar day (UTC, days since the epoch) of an instant in microseconds.
pub fn day_of(us: i64) -> i64 {
    us.div_euclid(DAY_US)
}

/// What the projection keeps per customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Orders recorded.
    pub orders: i64,
    /// Distinct purchase days.
    pub transactions: i64,
    /// First purchase, µs.
    pub first_purchase_us: Option<i64>,
    /// Last purchase, µs.
    pub last_purchase_us: Option<i64>,
}

/// The summary figures derived from the counts at `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Derived {
    /// Repeat transactions (transactions − 1, never negative).
    pub frequency: i64,
    /// Days from first to last purchase.
    pub recency_days: f64,
    /// Days from first purchase to now.
    pub age_days: f64,
}

/// Derive frequency, recency and age.
pub fn derive(c: &Counts, now: DateTime<Utc>) -> Derived {
    let frequency = (c.transactions - 1).max(0);
    let days = |us: i64| us as f64 / DAY_US as f64;
    match (c.first_purchase_us, c.last_purchase_us) {
        (Some(first), Some(last)) => Derived {
            frequency,
            recency_days: days(last - first).max(0.0),
            age_days: days(now.timestamp_micros() - first).max(0.0),
        },
        _ => Derived { frequency, recency_days: 0.0, age_days: 0.0 },
    }
}

/// Purchases of one day (one transaction), in the model's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseDay {
    /// Days since the epoch (UTC).
    pub day: i64,
    /// Revenue that day, minor units.
    pub revenue_minor: i64,
    /// Margin that day, minor units.
    pub margin_minor: i64,
}

/// A customer's repeat-purchase summary as of a day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepeatSummary {
    /// Repeat transactions (distinct purchase days after the first).
    pub frequency: u32,
    /// Days from the first to the last purchase day.
    pub recency_days: i64,
    /// Days from the first purchase day to the day of observation.
    pub age_days: i64,
    /// Mean margin of the repeat transactions, minor units (0 if none).
    pub mean_repeat_margin_minor: f64,
    /// Mean revenue of the repeat transactions, minor units (0 if none).
    pub mean_repeat_revenue_minor: f64,
}

/// The summary of `days` (ascending, one entry per day) observed at the end
/// of `as_of_day`: later days are ignored; `None` before the first purchase.
pub fn repeat_summary(days: &[PurchaseDay], as_of_day: i64) -> Option<RepeatSummary> {
    let seen: Vec<&PurchaseDay> = days.iter().filter(|d| d.day <= as_of_day).collect();
    let first = seen.first()?;
    let last = seen.last()?;
    let repeats = &seen[1..];
    let n = repeats.len();
    let mean = |f: fn(&PurchaseDay) -> i64| {
        if n == 0 { 0.0 } else { repeats.iter().map(|d| f(d) as f64).sum::<f64>() / n as f64 }
    };
    Some(RepeatSummary {
        frequency: n as u32,
        recency_days: last.day - first.day,
        age_days: as_of_day - first.day,
        mean_repeat_margin_minor: mean(|d| d.margin_minor),
        mean_repeat_revenue_minor: mean(|d| d.revenue_minor),
    })
}

/// Digits after the decimal point of an ISO 4217 currency (2 unless the
/// standard says otherwise), to express money in currency units for the
/// spend model (its γ is in currency units).
pub fn minor_unit_exponent(currency: &str) -> i32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// Minor units of `currency` as currency units.
pub fn to_units(minor: f64, currency: &str) -> f64 {
    minor / 10f64.powi(minor_unit_exponent(currency))
}

/// Currency units of `currency` as whole minor units (rounded; saturating).
pub fn to_minor(units: f64, currency: &str) -> i64 {
    let v = (units * 10f64.powi(minor_unit_exponent(currency))).round();
    if v.is_nan() { 0 } else { v.clamp(i64::MIN as f64, i64::MAX as f64) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn repeat_summary_counts_days_after_the_first() {
        let d = |day, revenue_minor, margin_minor| PurchaseDay { day, revenue_minor, margin_minor };
        // CDNOW customer 1: 1997-01-01, 01-18, 08-02 before 09-30, 12-12 after.
        let days = [d(0, 2933, 2933), d(17, 2973, 2973), d(213, 1496, 1496), d(345, 2648, 2648)];
        let s = repeat_summary(&days, 272).unwrap();
        assert_eq!((s.frequency, s.recency_days, s.age_days), (2, 213, 272));
        assert!((s.mean_repeat_revenue_minor - 2234.5).abs() < 1e-9);
        assert!((s.mean_repeat_margin_minor - 2234.5).abs() < 1e-9);
        let s = repeat_summary(&days, 5).unwrap();
        assert_eq!((s.frequency, s.recency_days, s.age_days, s.mean_repeat_margin_minor), (0, 0, 5, 0.0));
        assert_eq!(repeat_summary(&days, -1), None);
        assert_eq!(repeat_summary(&[], 10), None);
    }

    #[test]
    fn currencies_have_their_minor_units() {
        assert_eq!(to_units(1544.0, "USD"), 15.44);
        assert_eq!(to_units(1544.0, "JPY"), 1544.0);
        assert_eq!(to_units(1544.0, "KWD"), 1.544);
        assert_eq!(to_minor(15.444, "EUR"), 1544);
        assert_eq!(to_minor(f64::NAN, "EUR"), 0);
        assert_eq!(to_minor(1e300, "EUR"), i64::MAX);
    }

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_US - 1), 0);
        assert_eq!(day_of(DAY_US), 1);
        assert_eq!(day_of(-1), -1);
    }

    #[test]
    fn derives_frequency_recency_and_age() {
        let now = Utc.timestamp_opt(30 * 86_400, 0).unwrap();
        let c = Counts { orders: 4, transactions: 3, first_purchase_us: Some(0), last_purchase_us: Some(10 * DAY_US) };
        let d = derive(&c, now);
        assert_eq!(d.frequency, 2);
        assert!((d.recency_days - 10.0).abs() < 1e-9);
        assert!((d.age_days - 30.0).abs() < 1e-9);
    }

    #[test]
    fn no_purchases_is_all_zero() {
        let d = derive(&Counts::default(), Utc::now());
        assert_eq!((d.frequency, d.recency_days, d.age_days), (0, 0.0, 0.0));
    }
}
