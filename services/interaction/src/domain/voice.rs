//! Voice of the customer: analysis periods (calendar buckets in UTC) and
//! the arithmetic of NPS, CSAT and customer-perceived value. Sums are kept
//! per UTC day by the store and added up here per bucket.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};

/// Most buckets one analysis may ask for.
pub const MAX_BUCKETS: usize = 1000;
/// Microseconds in a day.
pub const DAY_US: i64 = 86_400_000_000;

/// Length of an analysis bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Calendar days.
    Day,
    /// ISO weeks, Monday to Sunday.
    Week,
    /// Calendar months.
    Month,
    /// Calendar quarters (January, April, July, October).
    Quarter,
    /// Calendar years.
    Year,
}

/// One bucket: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
}

/// The UTC day number of an instant in microseconds (floor, also before 1970).
pub fn day_of(us: i64) -> i64 {
    us.div_euclid(DAY_US)
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// The start of the calendar unit holding `t`.
fn floor(t: DateTime<Utc>, g: Granularity) -> Option<NaiveDate> {
    let d = t.date_naive();
    match g {
        Granularity::Day => Some(d),
        Granularity::Week => d.checked_sub_days(Days::new(u64::from(d.weekday().num_days_from_monday()))),
        Granularity::Month => d.with_day(1),
        Granularity::Quarter => NaiveDate::from_ymd_opt(d.year(), (d.month0() / 3) * 3 + 1, 1),
        Granularity::Year => NaiveDate::from_ymd_opt(d.year(), 1, 1),
    }
}

/// The start of the unit after the one starting on `d`.
fn next(d: NaiveDate, g: Granularity) -> Option<NaiveDate> {
    match g {
        Granularity::Day => d.checked_add_days(Days::new(1)),
        Granularity::Week => d.checked_add_days(Days::new(7)),
        Granularity::Month => d.checked_add_months(Months::new(1)),
        Granularity::Quarter => d.checked_add_months(Months::new(3)),
        Granularity::Year => d.checked_add_months(Months::new(12)),
    }
}

/// The buckets of `[start, end)`: calendar units in UTC, the first and the
/// last clipped to the period. `None` if there would be more than `max`
/// (or the calendar overflows); an empty period has no buckets.
pub fn buckets(start: DateTime<Utc>, end: DateTime<Utc>, g: Granularity, max: usize) -> Option<Vec<Bucket>> {
    let mut out = Vec::new();
    let mut unit = floor(start, g)?;
    while midnight(unit) < end {
        if out.len() == max {
            return None;
        }
        let following = next(unit, g)?;
        out.push(Bucket { start: midnight(unit).max(start), end: midnight(following).min(end) });
        unit = following;
    }
    Some(out)
}

/// The index of the bucket holding the instant `us`, if any.
pub fn bucket_of(buckets: &[Bucket], us: i64) -> Option<usize> {
    let i = buckets.partition_point(|b| b.end.timestamp_micros() <= us);
    (i < buckets.len() && buckets[i].start.timestamp_micros() <= us).then_some(i)
}

/// Counts behind NPS and CSAT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SatisfactionSums {
    /// NPS answers 9–10.
    pub promoters: i64,
    /// NPS answers 7–8.
    pub passives: i64,
    /// NPS answers 0–6.
    pub detractors: i64,
    /// Sum of CSAT answers.
    pub csat_total: i64,
    /// CSAT answers.
    pub csat_responses: i64,
}

impl SatisfactionSums {
    /// Count one response (`nps` −1 and `csat` 0: not asked).
    pub fn record(&mut self, nps: i32, csat: i32) {
        match nps {
            9..=10 => self.promoters += 1,
            7..=8 => self.passives += 1,
            0..=6 => self.detractors += 1,
            _ => {}
        }
        if (1..=5).contains(&csat) {
            self.csat_total += i64::from(csat);
            self.csat_responses += 1;
        }
    }

    /// Add another set of counts.
    pub fn add(&mut self, o: &SatisfactionSums) {
        self.promoters += o.promoters;
        self.passives += o.passives;
        self.detractors += o.detractors;
        self.csat_total += o.csat_total;
        self.csat_responses += o.csat_responses;
    }

    /// Responses with an NPS answer.
    pub fn nps_responses(&self) -> i64 {
        self.promoters + self.passives + self.detractors
    }

    /// % promoters − % detractors (−100..100); 0 without answers.
    pub fn nps(&self) -> f64 {
        let n = self.nps_responses();
        if n == 0 { 0.0 } else { 100.0 * (self.promoters - self.detractors) as f64 / n as f64 }
    }

    /// Mean CSAT; 0 without answers.
    pub fn csat_mean(&self) -> f64 {
        if self.csat_responses == 0 { 0.0 } else { self.csat_total as f64 / self.csat_responses as f64 }
    }
}

/// Sums behind the perceived value of one attribute (or of everything).
/// The competitor's performance counts only where it is known.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ValueSums {
    /// Ratings.
    pub ratings: i64,
    /// Σ importance.
    pub importance: f64,
    /// Σ our performance.
    pub ours: f64,
    /// Ratings that know the competitor's performance.
    pub known: i64,
    /// Σ competitor's performance, where known.
    pub competitor: f64,
    /// Σ importance, where the competitor's performance is known.
    pub known_importance: f64,
    /// Σ importance × ours, where the competitor's performance is known.
    pub weighted_ours: f64,
    /// Σ importance × competitor's, where known.
    pub weighted_competitor: f64,
}

impl ValueSums {
    /// Count one rating (`competitor` negative: unknown).
    pub fn record(&mut self, importance: f64, ours: f64, competitor: f64) {
        self.ratings += 1;
        self.importance += importance;
        self.ours += ours;
        if competitor >= 0.0 {
            self.known += 1;
            self.competitor += competitor;
            self.known_importance += importance;
            self.weighted_ours += importance * ours;
            self.weighted_competitor += importance * competitor;
        }
    }

    /// Add other sums.
    pub fn add(&mut self, o: &ValueSums) {
        self.ratings += o.ratings;
        self.importance += o.importance;
        self.ours += o.ours;
        self.known += o.known;
        self.competitor += o.competitor;
        self.known_importance += o.known_importance;
        self.weighted_ours += o.weighted_ours;
        self.weighted_competitor += o.weighted_competitor;
    }

    /// Mean importance; 0 without ratings.
    pub fn mean_importance(&self) -> f64 {
        ratio_or_zero(self.importance, self.ratings as f64)
    }

    /// Mean performance, ours; 0 without ratings.
    pub fn mean_ours(&self) -> f64 {
        ratio_or_zero(self.ours, self.ratings as f64)
    }

    /// Mean performance, the competitor's where known; 0 if never known.
    pub fn mean_competitor(&self) -> f64 {
        ratio_or_zero(self.competitor, self.known as f64)
    }

    /// Σ importance × (ours − competitor's) / Σ importance, where the
    /// competitor's performance is known; 0 when that weight is 0.
    pub fn weighted_advantage(&self) -> f64 {
        ratio_or_zero(self.weighted_ours - self.weighted_competitor, self.known_importance)
    }

    /// Σ importance × ours / Σ importance × competitor's, where known; 0
    /// when undefined (no known, weighted competitor performance).
    pub fn perceived_value_ratio(&self) -> f64 {
        ratio_or_zero(self.weighted_ours, self.weighted_competitor)
    }
}

fn ratio_or_zero(num: f64, den: f64) -> f64 {
    if den == 0.0 { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    #[test]
    fn monthly_buckets_are_calendar_months_clipped_to_the_period() {
        let b = buckets(at(2026, 1, 15, 6), at(2026, 4, 1, 0), Granularity::Month, MAX_BUCKETS).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0], Bucket { start: at(2026, 1, 15, 6), end: at(2026, 2, 1, 0) });
        assert_eq!(b[1], Bucket { start: at(2026, 2, 1, 0), end: at(2026, 3, 1, 0) });
        assert_eq!(b[2], Bucket { start: at(2026, 3, 1, 0), end: at(2026, 4, 1, 0) });
    }

    #[test]
    fn weeks_start_on_monday_and_quarters_and_years_on_the_calendar() {
        // 2026-01-01 is a Thursday.
        let b = buckets(at(2026, 1, 1, 0), at(2026, 1, 13, 0), Granularity::Week, MAX_BUCKETS).unwrap();
        assert_eq!(
            b.iter().map(|b| b.start).collect::<Vec<_>>(),
            [at(2026, 1, 1, 0), at(2026, 1, 5, 0), at(2026, 1, 12, 0)]
        );
        let b = buckets(at(2026, 2, 10, 0), at(2026, 8, 1, 0), Granularity::Quarter, MAX_BUCKETS).unwrap();
        assert_eq!(
            b.iter().map(|b| b.end).collect::<Vec<_>>(),
            [at(2026, 4, 1, 0), at(2026, 7, 1, 0), at(2026, 8, 1, 0)]
        );
        let b = buckets(at(2025, 6, 1, 0), at(2027, 1, 1, 0), Granularity::Year, MAX_BUCKETS).unwrap();
        assert_eq!(b.len(), 2);
        let b = buckets(at(2026, 1, 1, 0), at(2026, 1, 1, 12), Granularity::Day, MAX_BUCKETS).unwrap();
        assert_eq!(b, [Bucket { start: at(2026, 1, 1, 0), end: at(2026, 1, 1, 12) }]);
    }

    #[test]
    fn bucket_counts_are_bounded_and_empty_periods_have_none() {
        assert!(buckets(at(2000, 1, 1, 0), at(2010, 1, 1, 0), Granularity::Day, MAX_BUCKETS).is_none());
        let b = buckets(at(2000, 1, 1, 0), at(2000, 1, 1, 0) + chrono::Duration::days(1000), Granularity::Day, 1000);
        assert_eq!(b.map(|b| b.len()), Some(1000));
        assert_eq!(buckets(at(2026, 1, 1, 0), at(2026, 1, 1, 0), Granularity::Day, 10), Some(vec![]));
    }

    #[test]
    fn instants_fall_in_their_bucket() {
        let b = buckets(at(2026, 1, 1, 0), at(2026, 3, 1, 0), Granularity::Month, MAX_BUCKETS).unwrap();
        assert_eq!(bucket_of(&b, at(2026, 1, 1, 0).timestamp_micros()), Some(0));
        assert_eq!(bucket_of(&b, at(2026, 2, 1, 0).timestamp_micros() - 1), Some(0));
        assert_eq!(bucket_of(&b, at(2026, 2, 1, 0).timestamp_micros()), Some(1));
        assert_eq!(bucket_of(&b, at(2026, 3, 1, 0).timestamp_micros()), None);
        assert_eq!(bucket_of(&b, at(2025, 12, 31, 23).timestamp_micros()), None);
        assert_eq!(bucket_of(&[], 0), None);
    }

    #[test]
    fn days_floor_before_the_epoch() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_US - 1), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(-DAY_US), -1);
    }

    #[test]
    fn nps_is_promoters_minus_detractors_and_csat_a_mean() {
        let mut s = SatisfactionSums::default();
        for (nps, csat) in [(10, 5), (9, 4), (8, 0), (7, 3), (6, 1), (0, 0), (-1, 2)] {
            s.record(nps, csat);
        }
        assert_eq!(s.nps_responses(), 6);
        assert_eq!(s.nps(), 0.0, "2 promoters, 2 detractors");
        assert_eq!(s.csat_responses, 5);
        assert_eq!(s.csat_mean(), 3.0);
        let mut t = SatisfactionSums::default();
        t.record(10, 5);
        t.add(&s);
        assert_eq!(t.nps(), 100.0 * 1.0 / 7.0);
    }

    #[test]
    fn empty_buckets_are_zero_not_nan() {
        let s = SatisfactionSums::default();
        assert_eq!((s.nps(), s.csat_mean(), s.nps_responses()), (0.0, 0.0, 0));
        let v = ValueSums::default();
        assert_eq!(
            (
                v.mean_importance(),
                v.mean_ours(),
                v.mean_competitor(),
                v.weighted_advantage(),
                v.perceived_value_ratio()
            ),
            (0.0, 0.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn perceived_value_weights_by_importance_and_ignores_unknown_competitors() {
        let mut v = ValueSums::default();
        v.record(8.0, 6.0, 7.0);
        v.record(4.0, 9.0, -1.0);
        v.record(10.0, 9.0, 5.0);
        assert_eq!(v.mean_importance(), 22.0 / 3.0);
        assert_eq!(v.mean_ours(), 8.0);
        assert_eq!(v.mean_competitor(), 6.0);
        assert_eq!(v.weighted_advantage(), (8.0 * (6.0 - 7.0) + 10.0 * (9.0 - 5.0)) / 18.0);
        assert_eq!(v.perceived_value_ratio(), (48.0 + 90.0) / (56.0 + 50.0));
        let mut w = ValueSums::default();
        w.add(&v);
        assert_eq!(w, v);
    }

    #[test]
    fn division_by_zero_is_zero() {
        let mut v = ValueSums::default();
        v.record(5.0, 7.0, -1.0);
        assert_eq!(v.mean_competitor(), 0.0, "competitor never known");
        assert_eq!(v.weighted_advantage(), 0.0);
        assert_eq!(v.perceived_value_ratio(), 0.0);
        let mut z = ValueSums::default();
        z.record(0.0, 7.0, 3.0);
        assert_eq!(z.weighted_advantage(), 0.0, "zero importance");
        let mut c = ValueSums::default();
        c.record(5.0, 7.0, 0.0);
        assert_eq!(c.perceived_value_ratio(), 0.0, "competitor scored 0");
        assert_eq!(c.weighted_advantage(), 7.0);
    }
}
