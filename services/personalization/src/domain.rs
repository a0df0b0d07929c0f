//! Pure offer logic: validity windows, channel matching, the filter that
//! decides which offers may be presented, and the interim ranking. No I/O.
//!
//! Ranking today is `business_weight × expected margin`. Propensity (learned
//! from outcomes), context weights and cross-sell associations join the
//! product in later issues; each factor is reported with the offer so the
//! caller can always see why an offer ranks where it does.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use crm_proto::{
    common::v1::Channel,
    personalization::v1::{self as pb, OfferState},
};
use crm_runtime::time::from_timestamp;

/// The business lever used when an offer sets none (0).
pub const DEFAULT_BUSINESS_WEIGHT: f64 = 1.0;
/// Offers returned by NextBestOffers when the caller asks for none (0).
pub const DEFAULT_MAX_OFFERS: usize = 3;
/// Most offers NextBestOffers returns, whatever the caller asks for.
pub const MAX_MAX_OFFERS: usize = 50;

/// Why an offer may not be presented on a channel at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// Not ACTIVE (paused or archived).
    NotActive,
    /// Its channels do not include the requested one.
    Channel,
    /// Its validity window has not started.
    NotYetValid,
    /// Its validity window has ended.
    Expired,
    /// A stored bound is not a valid instant (corrupt data): fail closed.
    InvalidWindow,
    /// It has an eligibility expression, and expressions are not evaluated
    /// yet: presenting it could offer it to customers it excludes, so it is
    /// left out until CEL evaluation lands.
    EligibilityNotEvaluated,
}

/// Where an instant lies relative to a validity window `[from, until)`;
/// an unset bound is open.
pub fn window_position(from: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>, at: DateTime<Utc>) -> Ordering {
    if from.is_some_and(|f| at < f) {
        Ordering::Less
    } else if until.is_some_and(|u| at >= u) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// Whether `at` lies in the validity window `[from, until)`.
pub fn window_contains(from: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>, at: DateTime<Utc>) -> bool {
    window_position(from, until, at) == Ordering::Equal
}

/// Whether an offer listing `channels` may be presented on `channel`; an
/// empty list means every channel.
pub fn channel_matches(channels: &[i32], channel: Channel) -> bool {
    channels.is_empty() || channels.contains(&(channel as i32))
}

/// The business lever in effect: 0 (unset) means the default.
pub fn effective_weight(business_weight: f64) -> f64 {
    if business_weight == 0.0 { DEFAULT_BUSINESS_WEIGHT } else { business_weight }
}

/// Whether `offer` may be presented on `channel` at `at`, or why not.
pub fn applicable(offer: &pb::Offer, channel: Channel, at: DateTime<Utc>) -> Result<(), Exclusion> {
    if offer.state != OfferState::Active as i32 {
        return Err(Exclusion::NotActive);
    }
    if !channel_matches(&offer.channels, channel) {
        return Err(Exclusion::Channel);
    }
    let from = offer.valid_from_time.as_ref().map(from_timestamp);
    let until = offer.valid_until_time.as_ref().map(from_timestamp);
    if matches!(from, Some(None)) || matches!(until, Some(None)) {
        return Err(Exclusion::InvalidWindow);
    }
    match window_position(from.flatten(), until.flatten(), at) {
        Ordering::Less => return Err(Exclusion::NotYetValid),
        Ordering::Greater => return Err(Exclusion::Expired),
        Ordering::Equal => {}
    }
    if !offer.eligibility.is_empty() {
        return Err(Exclusion::EligibilityNotEvaluated);
    }
    Ok(())
}

/// An offer's score and the factors it is the product of.
pub fn score(offer: &pb::Offer) -> (f64, Vec<pb::RankFactor>) {
    let weight = effective_weight(offer.business_weight);
    let weight_detail = if offer.business_weight == 0.0 {
        format!("business lever not set on the offer; default {DEFAULT_BUSINESS_WEIGHT}")
    } else {
        "business lever set on the offer".to_owned()
    };
    let (margin, margin_detail) = match &offer.expected_margin {
        Some(m) => (m.minor_units, format!("expected margin of one acceptance, {} minor units", m.currency_code)),
        None => (0, "expected margin not set on the offer; counted as 0".to_owned()),
    };
    let margin = margin as f64;
    let factors = vec![
        pb::RankFactor { name: "business_weight".into(), value: weight, detail: weight_detail },
        pb::RankFactor { name: "expected_margin".into(), value: margin, detail: margin_detail },
    ];
    (weight * margin, factors)
}

/// Best first: higher score, then lower id (older offer) on ties.
pub fn rank_order(a: &pb::RankedOffer, b: &pb::RankedOffer) -> Ordering {
    fn id(r: &pb::RankedOffer) -> &str {
        r.offer.as_ref().map_or("", |o| o.id.as_str())
    }
    b.score.total_cmp(&a.score).then_with(|| id(a).cmp(id(b)))
}

/// The offers that may be presented on `channel` at `at`, ranked best
/// first, at most `max`.
pub fn next_best_offers(
    offers: Vec<pb::Offer>,
    channel: Channel,
    at: DateTime<Utc>,
    max: usize,
) -> Vec<pb::RankedOffer> {
    let mut ranked: Vec<pb::RankedOffer> = offers
        .into_iter()
        .filter(|o| applicable(o, channel, at).is_ok())
        .map(|o| {
            let (score, factors) = score(&o);
            pb::RankedOffer { offer: Some(o), score, factors }
        })
        .collect();
    ranked.sort_by(rank_order);
    ranked.truncate(max);
    ranked
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use chrono::{Duration, TimeZone};
    use crm_proto::common::v1::Money;
    use crm_runtime::time::to_timestamp;

    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).single().unwrap()
    }

    fn offer(id: &str, weight: f64, margin: Option<i64>) -> pb::Offer {
        pb::Offer {
            id: id.to_owned(),
            display_name: id.to_owned(),
            state: OfferState::Active as i32,
            business_weight: weight,
            expected_margin: margin.map(|m| Money { currency_code: "EUR".into(), minor_units: m }),
            ..Default::default()
        }
    }

    fn ids(r: &[pb::RankedOffer]) -> Vec<String> {
        r.iter().map(|r| r.offer.as_ref().unwrap().id.clone()).collect()
    }

    #[test]
    fn the_window_includes_valid_from_and_excludes_valid_until() {
        let (from, until) = (Some(t(100)), Some(t(200)));
        assert!(!window_contains(from, until, t(100) - Duration::microseconds(1)));
        assert!(window_contains(from, until, t(100)), "valid_from is inclusive");
        assert!(window_contains(from, until, t(200) - Duration::microseconds(1)));
        assert!(!window_contains(from, until, t(200)), "valid_until is exclusive");
        assert_eq!(window_position(from, until, t(99)), Ordering::Less);
        assert_eq!(window_position(from, until, t(200)), Ordering::Greater);
    }

    #[test]
    fn unset_bounds_are_open() {
        assert!(window_contains(None, None, t(0)));
        assert!(window_contains(None, Some(t(10)), t(-1_000_000)));
        assert!(!window_contains(None, Some(t(10)), t(10)));
        assert!(window_contains(Some(t(10)), None, t(4_000_000_000)));
        assert!(!window_contains(Some(t(10)), None, t(9)));
    }

    #[test]
    fn an_empty_window_contains_nothing() {
        assert!(!window_contains(Some(t(10)), Some(t(10)), t(10)));
    }

    #[test]
    fn empty_channel_list_means_every_channel() {
        assert!(channel_matches(&[], Channel::Web));
        assert!(channel_matches(&[], Channel::Sms));
        let web_email = [Channel::Web as i32, Channel::Email as i32];
        assert!(channel_matches(&web_email, Channel::Email));
        assert!(!channel_matches(&web_email, Channel::Store));
    }

    #[test]
    fn unset_weight_is_the_default() {
        assert_eq!(effective_weight(0.0), DEFAULT_BUSINESS_WEIGHT);
        assert_eq!(effective_weight(-0.0), DEFAULT_BUSINESS_WEIGHT);
        assert_eq!(effective_weight(2.5), 2.5);
    }

    #[test]
    fn applicability_explains_each_exclusion() {
        let at = t(1_000);
        let ok = offer("a", 1.0, Some(1));
        assert_eq!(applicable(&ok, Channel::Web, at), Ok(()));

        let mut paused = ok.clone();
        paused.state = OfferState::Paused as i32;
        assert_eq!(applicable(&paused, Channel::Web, at), Err(Exclusion::NotActive));
        let mut archived = ok.clone();
        archived.state = OfferState::Archived as i32;
        assert_eq!(applicable(&archived, Channel::Web, at), Err(Exclusion::NotActive));

        let mut store_only = ok.clone();
        store_only.channels = vec![Channel::Store as i32];
        assert_eq!(applicable(&store_only, Channel::Web, at), Err(Exclusion::Channel));

        let mut future = ok.clone();
        future.valid_from_time = Some(to_timestamp(at + Duration::seconds(1)));
        assert_eq!(applicable(&future, Channel::Web, at), Err(Exclusion::NotYetValid));

        let mut starts_now = ok.clone();
        starts_now.valid_from_time = Some(to_timestamp(at));
        assert_eq!(applicable(&starts_now, Channel::Web, at), Ok(()));

        let mut ends_now = ok.clone();
        ends_now.valid_until_time = Some(to_timestamp(at));
        assert_eq!(applicable(&ends_now, Channel::Web, at), Err(Exclusion::Expired));

        let mut corrupt = ok.clone();
        corrupt.valid_until_time = Some(prost_types::Timestamp { seconds: 0, nanos: -1 });
        assert_eq!(applicable(&corrupt, Channel::Web, at), Err(Exclusion::InvalidWindow));

        let mut rule = ok.clone();
        rule.eligibility = "customer.tier == 'gold'".into();
        assert_eq!(applicable(&rule, Channel::Web, at), Err(Exclusion::EligibilityNotEvaluated));
    }

    #[test]
    fn score_is_the_product_of_the_listed_factors() {
        let (s, factors) = score(&offer("a", 2.5, Some(400)));
        assert_eq!(s, 1000.0);
        assert_eq!(factors.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["business_weight", "expected_margin"]);
        assert_eq!(factors.iter().map(|f| f.value).product::<f64>(), s);
        assert!(factors.iter().all(|f| !f.detail.is_empty()));

        let (s, factors) = score(&offer("b", 0.0, None));
        assert_eq!(s, 0.0);
        assert_eq!(factors[0].value, DEFAULT_BUSINESS_WEIGHT);
        assert_eq!(factors[1].value, 0.0);

        let (s, _) = score(&offer("c", 1.0, Some(-50)));
        assert_eq!(s, -50.0, "a loss-making offer ranks below a neutral one");
    }

    #[test]
    fn ranking_is_by_score_then_id() {
        let offers = vec![
            offer("d", 0.5, Some(2000)),
            offer("c", 2.0, None),
            offer("a", 1.0, Some(1000)),
            offer("b", 3.0, Some(500)),
            offer("e", 1.0, Some(-1)),
        ];
        let ranked = next_best_offers(offers, Channel::Web, t(0), 10);
        assert_eq!(ids(&ranked), ["b", "a", "d", "c", "e"], "a and d tie at 1000: lower id first");
        assert_eq!(ranked.iter().map(|r| r.score).collect::<Vec<_>>(), [1500.0, 1000.0, 1000.0, 0.0, -1.0]);
    }

    #[test]
    fn ties_are_broken_by_id_whatever_the_input_order() {
        let mut offers: Vec<pb::Offer> = ["3", "1", "4", "0", "2"].iter().map(|id| offer(id, 1.0, Some(7))).collect();
        let first = ids(&next_best_offers(offers.clone(), Channel::Web, t(0), 10));
        offers.reverse();
        let second = ids(&next_best_offers(offers, Channel::Web, t(0), 10));
        assert_eq!(first, ["0", "1", "2", "3", "4"]);
        assert_eq!(first, second);
    }

    #[test]
    fn only_applicable_offers_are_ranked_and_at_most_max() {
        let at = t(1_000);
        let mut expired = offer("expired", 9.0, Some(9_999));
        expired.valid_until_time = Some(to_timestamp(at));
        let mut future = offer("future", 9.0, Some(9_999));
        future.valid_from_time = Some(to_timestamp(at + Duration::microseconds(1)));
        let mut paused = offer("paused", 9.0, Some(9_999));
        paused.state = OfferState::Paused as i32;
        let mut email = offer("email", 9.0, Some(9_999));
        email.channels = vec![Channel::Email as i32];
        let mut rule = offer("rule", 9.0, Some(9_999));
        rule.eligibility = "true".into();
        let offers = vec![offer("x", 1.0, Some(1)), expired, future, paused, email, rule, offer("y", 1.0, Some(2))];
        assert_eq!(ids(&next_best_offers(offers.clone(), Channel::Web, at, 10)), ["y", "x"]);
        assert_eq!(ids(&next_best_offers(offers.clone(), Channel::Web, at, 1)), ["y"]);
        assert!(next_best_offers(offers, Channel::Web, at, 0).is_empty());
    }

    #[test]
    fn extreme_scores_still_order() {
        let offers =
            vec![offer("a", f64::MAX, Some(i64::MAX)), offer("b", f64::MAX, Some(i64::MIN)), offer("c", 1.0, Some(0))];
        assert_eq!(ids(&next_best_offers(offers, Channel::Web, t(0), 10)), ["a", "c", "b"]);
    }
}
