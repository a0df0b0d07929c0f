//! Pure differentiation logic: the repeat-purchase summary in the model's
//! sense (a transaction is a distinct purchase day). No I/O.

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
