//! May we contact this customer on this channel for this purpose at this
//! time? One pure decision over the consent history, the contact policy and
//! the number of recent marketing contacts, used by EvaluateContact and by
//! RecordInteraction before it records an outbound contact.
//!
//! The rules, in order:
//! 1. The latest consent record for the channel × purpose decides: a
//!    withdrawal denies; a grant allows unless it has lapsed by then (a
//!    lapsed grant denies: a later, time-limited grant supersedes an earlier
//!    open-ended one). The history is the one recorded so far — records
//!    carry the server's time and cannot be backdated — and `at` places the
//!    contact for expiry, quiet hours and the cap.
//! 2. Without a record, a service message is allowed (the contract is its
//!    lawful basis); marketing, profiling and surveys are denied.
//! 3. Quiet hours, in the customer's time zone, deny marketing and survey
//!    contacts (never service messages). The window `[start, end)` may wrap
//!    midnight; start = end means no quiet hours.
//! 4. The weekly cap denies a marketing contact when `max_contacts_per_week`
//!    outbound marketing contacts already happened in the 7 days up to `at`
//!    (`(at − 7 days, at]`); 0 means no cap.
//!
//! Consent is per purpose, so a marketing opt-out never blocks a service
//! message.

use chrono::{DateTime, Duration, Timelike, Utc};
use chrono_tz::Tz;
use crm_proto::{
    common::v1::Channel,
    interaction::v1::{ConsentState, Purpose},
};

/// The time zone of a customer without a contact policy.
pub const DEFAULT_TIME_ZONE: Tz = chrono_tz::Europe::Madrid;
/// Minutes in a day: quiet-hour minutes are `0..MINUTES_PER_DAY`.
pub const MINUTES_PER_DAY: i32 = 1440;

/// The start of the cap's rolling window for a contact at `at`
/// (exclusive; the window ends at `at`, inclusive).
pub fn cap_window_start(at: DateTime<Utc>) -> DateTime<Utc> {
    at - Duration::days(7)
}

/// One consent record as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentFact {
    /// Record id.
    pub id: String,
    /// Channel.
    pub channel: Channel,
    /// Purpose.
    pub purpose: Purpose,
    /// Granted or withdrawn.
    pub state: ConsentState,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// When a grant lapses.
    pub expires_at: Option<DateTime<Utc>>,
    /// Feed sequence: the order of the history.
    pub sequence: i64,
}

/// A customer's contact policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The customer's time zone.
    pub time_zone: Tz,
    /// Quiet hours start, minutes after local midnight (inclusive).
    pub quiet_start_minute: i32,
    /// Quiet hours end, minutes after local midnight (exclusive).
    pub quiet_end_minute: i32,
    /// Most outbound marketing contacts in a rolling week (0: no cap).
    pub max_contacts_per_week: i32,
}

impl Default for Policy {
    /// No quiet hours, no cap, Europe/Madrid.
    fn default() -> Self {
        Policy { time_zone: DEFAULT_TIME_ZONE, quiet_start_minute: 0, quiet_end_minute: 0, max_contacts_per_week: 0 }
    }
}

/// The contact asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactRequest {
    /// Channel.
    pub channel: Channel,
    /// Purpose.
    pub purpose: Purpose,
    /// When.
    pub at: DateTime<Utc>,
}

/// The answer, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the contact may happen.
    pub allowed: bool,
    /// Why, for people.
    pub reason: String,
    /// The consent record that decided, if one did.
    pub consent_id: Option<String>,
}

impl Decision {
    fn deny(reason: String, consent_id: Option<String>) -> Self {
        Decision { allowed: false, reason, consent_id }
    }
}

/// Minutes after local midnight of `at` in `tz`.
pub fn local_minute(tz: Tz, at: DateTime<Utc>) -> i32 {
    let local = at.with_timezone(&tz);
    (local.hour() * 60 + local.minute()) as i32
}

/// Whether `at` falls in the policy's quiet hours.
pub fn in_quiet_hours(policy: &Policy, at: DateTime<Utc>) -> bool {
    let (start, end) = (policy.quiet_start_minute, policy.quiet_end_minute);
    if start == end {
        return false;
    }
    let m = local_minute(policy.time_zone, at);
    if start < end { start <= m && m < end } else { m >= start || m < end }
}

/// A channel for people: "email", "call centre".
pub fn channel_name(c: Channel) -> String {
    c.as_str_name().trim_start_matches("CHANNEL_").to_lowercase().replace('_', " ")
}

/// A purpose for people: "marketing".
pub fn purpose_name(p: Purpose) -> String {
    p.as_str_name().trim_start_matches("PURPOSE_").to_lowercase()
}

fn hhmm(minute: i32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// Decide whether the contact `req` may happen, given the customer's
/// consent `history` (any channels and purposes, any order), `policy`, and
/// the outbound marketing contacts in the cap's window before it.
pub fn evaluate(
    history: &[ConsentFact],
    policy: &Policy,
    recent_marketing_contacts: i64,
    req: &ContactRequest,
) -> Decision {
    let latest =
        history.iter().filter(|c| c.channel == req.channel && c.purpose == req.purpose).max_by_key(|c| c.sequence);
    let (consent_id, basis) = match latest {
        Some(c) if c.state == ConsentState::Withdrawn => {
            return Decision::deny(format!("consent withdrawn {}", day(c.recorded_at)), Some(c.id.clone()));
        }
        Some(c) if c.state != ConsentState::Granted => {
            return Decision::deny("consent state unknown".into(), Some(c.id.clone()));
        }
        Some(c) => match c.expires_at {
            Some(e) if e <= req.at => {
                return Decision::deny(format!("consent expired {}", day(e)), Some(c.id.clone()));
            }
            _ => (Some(c.id.clone()), format!("consent granted {}", day(c.recorded_at))),
        },
        None if req.purpose == Purpose::Service => (None, "service message (contract)".to_owned()),
        None => {
            return Decision::deny(
                format!("no consent for {} on {}", purpose_name(req.purpose), channel_name(req.channel)),
                None,
            );
        }
    };
    if matches!(req.purpose, Purpose::Marketing | Purpose::Survey) && in_quiet_hours(policy, req.at) {
        return Decision::deny(
            format!(
                "quiet hours {}–{} {}",
                hhmm(policy.quiet_start_minute),
                hhmm(policy.quiet_end_minute),
                policy.time_zone.name()
            ),
            None,
        );
    }
    let cap = i64::from(policy.max_contacts_per_week);
    if req.purpose == Purpose::Marketing && cap > 0 && recent_marketing_contacts >= cap {
        return Decision::deny(
            format!(
                "frequency cap: {recent_marketing_contacts} marketing contacts in the last 7 days (at most {cap} a week)"
            ),
            None,
        );
    }
    Decision { allowed: true, reason: basis, consent_id }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn consent(seq: i64, channel: Channel, purpose: Purpose, state: ConsentState) -> ConsentFact {
        ConsentFact {
            id: format!("c{seq}"),
            channel,
            purpose,
            state,
            recorded_at: utc(2026, 1, 2, 10, 0),
            expires_at: None,
            sequence: seq,
        }
    }

    fn ask(channel: Channel, purpose: Purpose, at: DateTime<Utc>) -> ContactRequest {
        ContactRequest { channel, purpose, at }
    }

    fn quiet(start: i32, end: i32) -> Policy {
        Policy { quiet_start_minute: start, quiet_end_minute: end, ..Policy::default() }
    }

    const EMAIL: Channel = Channel::Email;
    const GRANTED: ConsentState = ConsentState::Granted;
    const WITHDRAWN: ConsentState = ConsentState::Withdrawn;

    fn noon() -> DateTime<Utc> {
        utc(2026, 2, 10, 12, 0)
    }

    #[test]
    fn without_consent_only_service_messages_are_allowed() {
        let p = Policy::default();
        let d = evaluate(&[], &p, 0, &ask(EMAIL, Purpose::Service, noon()));
        assert!(d.allowed);
        assert_eq!(d.reason, "service message (contract)");
        assert_eq!(d.consent_id, None);
        for purpose in [Purpose::Marketing, Purpose::Profiling, Purpose::Survey] {
            let d = evaluate(&[], &p, 0, &ask(EMAIL, purpose, noon()));
            assert!(!d.allowed, "{purpose:?}");
        }
        let d = evaluate(&[], &p, 0, &ask(Channel::CallCentre, Purpose::Marketing, noon()));
        assert_eq!(d.reason, "no consent for marketing on call centre");
    }

    #[test]
    fn the_latest_record_for_the_channel_and_purpose_decides() {
        let p = Policy::default();
        let history = [
            consent(1, EMAIL, Purpose::Marketing, GRANTED),
            consent(2, EMAIL, Purpose::Marketing, WITHDRAWN),
            consent(3, Channel::Sms, Purpose::Marketing, GRANTED),
            consent(4, EMAIL, Purpose::Profiling, GRANTED),
        ];
        let d = evaluate(&history, &p, 0, &ask(EMAIL, Purpose::Marketing, noon()));
        assert_eq!(d, Decision::deny("consent withdrawn 2026-01-02".into(), Some("c2".into())));
        let d = evaluate(&history, &p, 0, &ask(Channel::Sms, Purpose::Marketing, noon()));
        assert!(d.allowed);
        assert_eq!(d.consent_id.as_deref(), Some("c3"));
        assert_eq!(d.reason, "consent granted 2026-01-02");
        // Given again: the history is in any order, the sequence decides.
        let mut again = history.to_vec();
        again.insert(0, consent(5, EMAIL, Purpose::Marketing, GRANTED));
        assert!(evaluate(&again, &p, 0, &ask(EMAIL, Purpose::Marketing, noon())).allowed);
    }

    #[test]
    fn a_marketing_opt_out_does_not_block_service_messages() {
        let history = [consent(1, EMAIL, Purpose::Marketing, WITHDRAWN)];
        let p = Policy { max_contacts_per_week: 1, ..quiet(0, 1439) };
        let d = evaluate(&history, &p, 50, &ask(EMAIL, Purpose::Service, noon()));
        assert!(d.allowed, "{}", d.reason);
        assert!(!evaluate(&history, &p, 0, &ask(EMAIL, Purpose::Marketing, noon())).allowed);
    }

    #[test]
    fn a_withdrawn_service_consent_is_respected() {
        let history = [consent(1, Channel::Sms, Purpose::Service, WITHDRAWN)];
        assert!(!evaluate(&history, &Policy::default(), 0, &ask(Channel::Sms, Purpose::Service, noon())).allowed);
        assert!(evaluate(&history, &Policy::default(), 0, &ask(EMAIL, Purpose::Service, noon())).allowed);
    }

    #[test]
    fn a_grant_lapses_at_its_expiry() {
        let expiry = utc(2026, 3, 1, 0, 0);
        let mut c = consent(1, EMAIL, Purpose::Marketing, GRANTED);
        c.expires_at = Some(expiry);
        let p = Policy::default();
        let before = expiry - Duration::microseconds(1);
        assert!(evaluate(std::slice::from_ref(&c), &p, 0, &ask(EMAIL, Purpose::Marketing, before)).allowed);
        let d = evaluate(std::slice::from_ref(&c), &p, 0, &ask(EMAIL, Purpose::Marketing, expiry));
        assert_eq!(d, Decision::deny("consent expired 2026-03-01".into(), Some("c1".into())));
        // A lapsed later grant is not rescued by an earlier open-ended one.
        let earlier = consent(0, EMAIL, Purpose::Marketing, GRANTED);
        assert!(!evaluate(&[earlier, c], &p, 0, &ask(EMAIL, Purpose::Marketing, expiry)).allowed);
    }

    #[test]
    fn quiet_hours_wrap_midnight_start_inclusive_end_exclusive() {
        // 22:00–08:00 in Madrid; February is CET (UTC+1).
        let p = quiet(22 * 60, 8 * 60);
        let history = [consent(1, EMAIL, Purpose::Marketing, GRANTED), consent(2, EMAIL, Purpose::Survey, GRANTED)];
        let at = |h, m| ask(EMAIL, Purpose::Marketing, utc(2026, 2, 10, h, m));
        assert!(evaluate(&history, &p, 0, &at(20, 59)).allowed, "21:59 local");
        let d = evaluate(&history, &p, 0, &at(21, 0));
        assert_eq!(d, Decision::deny("quiet hours 22:00–08:00 Europe/Madrid".into(), None), "22:00 local");
        assert!(!evaluate(&history, &p, 0, &at(23, 30)).allowed, "00:30 local");
        assert!(!evaluate(&history, &p, 0, &ask(EMAIL, Purpose::Marketing, utc(2026, 2, 11, 6, 59))).allowed);
        assert!(evaluate(&history, &p, 0, &ask(EMAIL, Purpose::Marketing, utc(2026, 2, 11, 7, 0))).allowed, "08:00");
        assert!(!evaluate(&history, &p, 0, &ask(EMAIL, Purpose::Survey, utc(2026, 2, 10, 22, 0))).allowed);
        assert!(evaluate(&history, &p, 0, &ask(EMAIL, Purpose::Service, utc(2026, 2, 10, 22, 0))).allowed);
    }

    #[test]
    fn quiet_hours_within_a_day_and_none_when_start_equals_end() {
        let p = quiet(9 * 60, 17 * 60);
        let m = |h, mi| in_quiet_hours(&p, utc(2026, 2, 10, h, mi));
        // Madrid is UTC+1 in February: local 09:00 is 08:00 UTC.
        assert!(!m(7, 59));
        assert!(m(8, 0));
        assert!(m(15, 59));
        assert!(!m(16, 0));
        for minute in [0, 600, 1439] {
            let p = quiet(minute, minute);
            assert!(!in_quiet_hours(&p, utc(2026, 2, 10, 0, 0)));
            assert!(!in_quiet_hours(&p, utc(2026, 2, 10, 12, 0)));
        }
        let last_minute = quiet(1439, 0);
        assert!(in_quiet_hours(&last_minute, utc(2026, 2, 10, 22, 59)), "23:59 local");
        assert!(!in_quiet_hours(&last_minute, utc(2026, 2, 10, 23, 0)), "00:00 local");
    }

    #[test]
    fn quiet_hours_follow_daylight_saving_in_spring() {
        // 2026-03-29: Madrid goes from 02:00 CET to 03:00 CEST.
        let p = quiet(22 * 60, 8 * 60);
        assert!(in_quiet_hours(&p, utc(2026, 3, 28, 6, 0)), "07:00 CET the day before");
        assert!(!in_quiet_hours(&p, utc(2026, 3, 28, 7, 0)), "08:00 CET the day before");
        assert!(in_quiet_hours(&p, utc(2026, 3, 29, 5, 59)), "07:59 CEST");
        assert!(!in_quiet_hours(&p, utc(2026, 3, 29, 6, 0)), "08:00 CEST");
        assert!(!in_quiet_hours(&p, utc(2026, 3, 29, 19, 59)), "21:59 CEST");
        assert!(in_quiet_hours(&p, utc(2026, 3, 29, 20, 0)), "22:00 CEST");
        // A window inside the skipped hour still holds the minutes after it.
        let skipped = quiet(2 * 60 + 30, 3 * 60 + 30);
        assert!(in_quiet_hours(&skipped, utc(2026, 3, 29, 1, 0)), "03:00 CEST");
        assert!(!in_quiet_hours(&skipped, utc(2026, 3, 29, 0, 59)), "01:59 CET");
    }

    #[test]
    fn quiet_hours_follow_daylight_saving_in_autumn() {
        // 2026-10-25: Madrid goes from 03:00 CEST back to 02:00 CET; 02:xx happens twice.
        let p = quiet(2 * 60, 3 * 60);
        assert!(!in_quiet_hours(&p, utc(2026, 10, 24, 23, 59)), "01:59 CEST");
        assert!(in_quiet_hours(&p, utc(2026, 10, 25, 0, 0)), "02:00 CEST");
        assert!(in_quiet_hours(&p, utc(2026, 10, 25, 0, 30)), "02:30 CEST");
        assert!(in_quiet_hours(&p, utc(2026, 10, 25, 1, 30)), "02:30 CET");
        assert!(!in_quiet_hours(&p, utc(2026, 10, 25, 2, 0)), "03:00 CET");
    }

    #[test]
    fn other_time_zones() {
        let p = Policy { time_zone: chrono_tz::Asia::Tokyo, ..quiet(21 * 60, 9 * 60) };
        assert!(in_quiet_hours(&p, utc(2026, 7, 1, 12, 0)), "21:00 JST");
        assert!(!in_quiet_hours(&p, utc(2026, 7, 1, 11, 59)), "20:59 JST");
        assert!(!in_quiet_hours(&p, utc(2026, 7, 1, 0, 0)), "09:00 JST");
    }

    #[test]
    fn the_weekly_cap_counts_marketing_contacts_only() {
        let history = [
            consent(1, EMAIL, Purpose::Marketing, GRANTED),
            consent(2, EMAIL, Purpose::Survey, GRANTED),
            consent(3, EMAIL, Purpose::Profiling, GRANTED),
        ];
        let p = Policy { max_contacts_per_week: 3, ..Policy::default() };
        assert!(evaluate(&history, &p, 2, &ask(EMAIL, Purpose::Marketing, noon())).allowed);
        let d = evaluate(&history, &p, 3, &ask(EMAIL, Purpose::Marketing, noon()));
        assert!(!d.allowed);
        assert_eq!(d.reason, "frequency cap: 3 marketing contacts in the last 7 days (at most 3 a week)");
        assert!(evaluate(&history, &p, 9, &ask(EMAIL, Purpose::Survey, noon())).allowed);
        assert!(evaluate(&history, &p, 9, &ask(EMAIL, Purpose::Profiling, noon())).allowed);
        let uncapped = Policy::default();
        assert!(evaluate(&history, &uncapped, 1_000, &ask(EMAIL, Purpose::Marketing, noon())).allowed);
    }

    #[test]
    fn the_cap_window_is_the_seven_days_up_to_the_contact() {
        let at = noon();
        assert_eq!(cap_window_start(at), utc(2026, 2, 3, 12, 0));
    }

    #[test]
    fn consent_is_checked_before_quiet_hours_and_cap() {
        let history = [consent(1, EMAIL, Purpose::Marketing, WITHDRAWN)];
        let p = Policy { max_contacts_per_week: 1, ..quiet(0, 1439) };
        let d = evaluate(&history, &p, 5, &ask(EMAIL, Purpose::Marketing, noon()));
        assert!(d.reason.starts_with("consent withdrawn"));
        let granted = [consent(1, EMAIL, Purpose::Marketing, GRANTED)];
        let d = evaluate(&granted, &p, 5, &ask(EMAIL, Purpose::Marketing, noon()));
        assert!(d.reason.starts_with("quiet hours"), "quiet hours before the cap");
    }

    #[test]
    fn names_for_people() {
        assert_eq!(channel_name(Channel::MobileApp), "mobile app");
        assert_eq!(purpose_name(Purpose::Survey), "survey");
    }
}
