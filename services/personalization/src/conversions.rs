//! Protobuf ↔ domain, in one place: requests are validated while they are
//! converted, so handlers only ever see well-formed commands. Violations
//! name fields by their path in the request (`offer.channels[2]`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_proto::{
    common::v1::{Channel, Money},
    personalization::v1::{self as pb, OfferState},
};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    ids::is_valid_id,
    page, time, validate,
};
use prost::Message;

use crate::domain;

/// Longest offer description.
pub const MAX_DESCRIPTION: usize = 4096;
/// Longest offer category.
pub const MAX_CATEGORY: usize = 64;
/// Longest eligibility expression.
pub const MAX_ELIGIBILITY: usize = 4096;
/// Most entries in an offer's channel list (there are fewer channels than
/// this; the bound keeps a hostile list from producing a violation per entry).
pub const MAX_CHANNELS: usize = 32;

/// Free text of at most `max` characters that may span lines: tabs and line
/// breaks are allowed (descriptions, expressions), other control characters
/// are not.
fn multiline_text(v: &mut FieldViolations, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        v.add(field, format!("at most {max} characters"));
    } else if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        v.add(field, "must not contain control characters other than tabs and line breaks");
    }
}

fn money(v: &mut FieldViolations, field: &str, value: Option<&Money>) {
    if let Some(m) = value {
        v.require(
            validate::is_currency_code(&m.currency_code),
            format!("{field}.currency_code"),
            "an ISO 4217 code such as EUR",
        );
    }
}

fn channels(v: &mut FieldViolations, field: &str, list: &[i32]) {
    if list.len() > MAX_CHANNELS {
        v.add(field, format!("at most {MAX_CHANNELS} channels"));
        return;
    }
    for (i, &raw) in list.iter().enumerate() {
        let item = format!("{field}[{i}]");
        if raw == 0 {
            v.add(item, "must not be CHANNEL_UNSPECIFIED");
        } else if validate::enumeration::<Channel>(v, &item, raw, true).is_some() && list[..i].contains(&raw) {
            v.add(item, "listed more than once");
        }
    }
}

/// A validated CreateOffer.
#[derive(Debug, Clone)]
pub struct NewOffer {
    /// The offer as it will be stored, without the server-assigned id,
    /// times and etag; defaults applied (state ACTIVE, business weight 1).
    pub offer: pb::Offer,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl TryFrom<pb::CreateOfferRequest> for NewOffer {
    type Error = RuntimeError;

    fn try_from(req: pb::CreateOfferRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        check_request_id(&mut v, &req.request_id);
        let Some(o) = req.offer else {
            v.add("offer", "required");
            return Err(RuntimeError::InvalidArgument(v));
        };
        validate::text(&mut v, "offer.display_name", &o.display_name, validate::MAX_SHORT_TEXT, true);
        multiline_text(&mut v, "offer.description", &o.description, MAX_DESCRIPTION);
        validate::text(&mut v, "offer.category", &o.category, MAX_CATEGORY, false);
        channels(&mut v, "offer.channels", &o.channels);
        let from = validate::timestamp(&mut v, "offer.valid_from_time", o.valid_from_time.as_ref());
        let until = validate::timestamp(&mut v, "offer.valid_until_time", o.valid_until_time.as_ref());
        if let (Some(f), Some(u)) = (from, until) {
            v.require(f < u, "offer.valid_until_time", "must be after valid_from_time");
        }
        money(&mut v, "offer.cost", o.cost.as_ref());
        money(&mut v, "offer.expected_margin", o.expected_margin.as_ref());
        // Stored as given; it is not evaluated yet, so NextBestOffers leaves
        // offers with an expression out (see `domain::Exclusion`).
        multiline_text(&mut v, "offer.eligibility", &o.eligibility, MAX_ELIGIBILITY);
        v.require(o.per_customer_cap >= 0, "offer.per_customer_cap", "must not be negative (0: no cap)");
        v.require(o.total_cap >= 0, "offer.total_cap", "must not be negative (0: no cap)");
        v.require(
            o.business_weight.is_finite() && o.business_weight >= 0.0,
            "offer.business_weight",
            "a finite number ≥ 0 (0: the default, 1)",
        );
        let state = validate::enumeration::<OfferState>(&mut v, "offer.state", o.state, false)
            .filter(|s| *s != OfferState::Unspecified)
            .unwrap_or(OfferState::Active);
        v.finish()?;
        let offer = pb::Offer {
            id: String::new(),
            state: state as i32,
            business_weight: domain::effective_weight(o.business_weight),
            create_time: None,
            update_time: None,
            etag: String::new(),
            ..o
        };
        Ok(NewOffer { offer, request_id: req.request_id, fingerprint: fp })
    }
}

/// A validated ListOffers.
#[derive(Debug, Clone)]
pub struct OfferQuery {
    /// Page size.
    pub page_size: u64,
    /// Keyset cursor: the id of the last offer of the previous page.
    pub after: Option<String>,
    /// Only this state.
    pub state: Option<OfferState>,
}

/// Encode a ListOffers cursor.
pub fn offer_token(id: &str) -> String {
    page::encode_token(id)
}

impl TryFrom<pb::ListOffersRequest> for OfferQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::ListOffersRequest) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        let page_size = page::page_size(&mut v, req.page_size);
        let after = page::decode_token(&mut v, &req.page_token).and_then(|id| {
            if is_valid_id(&id) {
                Some(id)
            } else {
                v.add("page_token", "not a token returned by this service");
                None
            }
        });
        let state = validate::enumeration::<OfferState>(&mut v, "state", req.state, false);
        v.finish()?;
        Ok(OfferQuery { page_size, after, state })
    }
}

/// A validated NextBestOffers.
#[derive(Debug, Clone)]
pub struct NextBestOffersQuery {
    /// Customer. Nothing per customer is known here yet (no feed is
    /// consumed), so it only names who the answer is for.
    pub customer_id: String,
    /// Channel the offers will be presented on.
    pub channel: Channel,
    /// Most offers to return.
    pub max_offers: usize,
    /// Instant the validity windows are checked at.
    pub at: DateTime<Utc>,
    /// Context of the moment: bounded and accepted, not yet used (context
    /// weights arrive with the learned ranking).
    pub context: BTreeMap<String, String>,
}

fn context(v: &mut FieldViolations, field: &str, map: &BTreeMap<String, String>) {
    if map.len() > validate::MAX_ATTRIBUTES {
        v.add(field, format!("at most {} entries", validate::MAX_ATTRIBUTES));
        return;
    }
    for (key, value) in map {
        let ok_key = !key.is_empty()
            && key.len() <= validate::MAX_ATTRIBUTE_KEY
            && key.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
        if !ok_key {
            v.add(
                format!("{field}[{key:.64}]"),
                format!("keys are 1..{} of A-Z a-z 0-9 _ . : -", validate::MAX_ATTRIBUTE_KEY),
            );
            continue;
        }
        validate::text(v, &format!("{field}[{key}]"), value, validate::MAX_ATTRIBUTE_VALUE, false);
    }
}

impl TryFrom<pb::NextBestOffersRequest> for NextBestOffersQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::NextBestOffersRequest) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        validate::id(&mut v, "customer_id", &req.customer_id);
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, true);
        let max_offers = match req.max_offers {
            n if n < 0 => {
                v.add("max_offers", "must not be negative (0: the default, 3)");
                domain::DEFAULT_MAX_OFFERS
            }
            0 => domain::DEFAULT_MAX_OFFERS,
            n => (n as usize).min(domain::MAX_MAX_OFFERS),
        };
        let at = validate::timestamp(&mut v, "at_time", req.at_time.as_ref()).unwrap_or_else(time::now);
        context(&mut v, "context", &req.context);
        // No feed is consumed yet, so the answer depends on no feed position:
        // any well-formed `min_sequence` is already satisfied.
        if let Some(m) = &req.min_sequence {
            validate::sequence(&mut v, "min_sequence.identification_sequence", m.identification_sequence);
            validate::sequence(&mut v, "min_sequence.interaction_sequence", m.interaction_sequence);
        }
        v.finish()?;
        Ok(NextBestOffersQuery {
            customer_id: req.customer_id,
            channel: channel.unwrap_or_default(),
            max_offers,
            at,
            context: req.context,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn fields(r: Result<impl std::fmt::Debug, RuntimeError>) -> Vec<String> {
        match r {
            Err(RuntimeError::InvalidArgument(v)) => {
                let mut f: Vec<String> = v.violations().iter().map(|(f, _)| f.clone()).collect();
                f.sort();
                f
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    fn create(offer: pb::Offer) -> pb::CreateOfferRequest {
        pb::CreateOfferRequest { offer: Some(offer), request_id: String::new() }
    }

    #[test]
    fn defaults_are_applied_and_server_fields_ignored() {
        let req = create(pb::Offer {
            id: "client-chosen".into(),
            display_name: "Tent upgrade".into(),
            etag: "x".into(),
            create_time: Some(prost_types::Timestamp { seconds: 5, nanos: 0 }),
            ..Default::default()
        });
        let o = NewOffer::try_from(req).unwrap().offer;
        assert_eq!(o.state, OfferState::Active as i32);
        assert_eq!(o.business_weight, 1.0);
        assert!(o.id.is_empty() && o.etag.is_empty() && o.create_time.is_none());
    }

    #[test]
    fn descriptions_and_expressions_may_span_lines() {
        let req = create(pb::Offer {
            display_name: "A".into(),
            description: "line one\nline two\ttabbed\r\n".into(),
            eligibility: "a &&\n  b".into(),
            ..Default::default()
        });
        assert!(NewOffer::try_from(req).is_ok());
        let req = create(pb::Offer {
            display_name: "A\nB".into(),
            description: "nul\u{0}".into(),
            eligibility: "esc\u{1b}[2J".into(),
            ..Default::default()
        });
        assert_eq!(fields(NewOffer::try_from(req)), ["offer.description", "offer.display_name", "offer.eligibility"]);
    }

    #[test]
    fn channels_must_be_known_specified_and_distinct() {
        let req = create(pb::Offer {
            display_name: "A".into(),
            channels: vec![Channel::Web as i32, 0, 999, Channel::Web as i32],
            ..Default::default()
        });
        assert_eq!(fields(NewOffer::try_from(req)), ["offer.channels[1]", "offer.channels[2]", "offer.channels[3]"]);
        let req = create(pb::Offer { display_name: "A".into(), channels: vec![999; 10_000], ..Default::default() });
        assert_eq!(fields(NewOffer::try_from(req)), ["offer.channels"]);
    }

    #[test]
    fn the_window_must_not_be_empty() {
        let ts = |s| Some(prost_types::Timestamp { seconds: s, nanos: 0 });
        let req = create(pb::Offer {
            display_name: "A".into(),
            valid_from_time: ts(10),
            valid_until_time: ts(10),
            ..Default::default()
        });
        assert_eq!(fields(NewOffer::try_from(req)), ["offer.valid_until_time"]);
    }

    #[test]
    fn business_weight_must_be_finite_and_not_negative() {
        for w in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5] {
            let req = create(pb::Offer { display_name: "A".into(), business_weight: w, ..Default::default() });
            assert_eq!(fields(NewOffer::try_from(req)), ["offer.business_weight"], "{w}");
        }
    }

    #[test]
    fn a_missing_offer_is_a_violation() {
        assert_eq!(fields(NewOffer::try_from(pb::CreateOfferRequest::default())), ["offer"]);
    }

    #[test]
    fn max_offers_has_a_default_and_a_ceiling() {
        let req = |max_offers| pb::NextBestOffersRequest {
            customer_id: crm_runtime::ids::new_id(),
            channel: Channel::Web as i32,
            max_offers,
            ..Default::default()
        };
        assert_eq!(NextBestOffersQuery::try_from(req(0)).unwrap().max_offers, domain::DEFAULT_MAX_OFFERS);
        assert_eq!(NextBestOffersQuery::try_from(req(7)).unwrap().max_offers, 7);
        assert_eq!(NextBestOffersQuery::try_from(req(i32::MAX)).unwrap().max_offers, domain::MAX_MAX_OFFERS);
        assert_eq!(fields(NextBestOffersQuery::try_from(req(-1))), ["max_offers"]);
    }

    #[test]
    fn page_tokens_must_carry_an_id() {
        let req = pb::ListOffersRequest { page_token: page::encode_token("not-an-id"), ..Default::default() };
        assert_eq!(fields(OfferQuery::try_from(req)), ["page_token"]);
        let id = crm_runtime::ids::new_id();
        let req = pb::ListOffersRequest { page_token: offer_token(&id), ..Default::default() };
        assert_eq!(OfferQuery::try_from(req).unwrap().after, Some(id));
    }
}
