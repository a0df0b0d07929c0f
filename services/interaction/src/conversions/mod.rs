//! Protobuf ↔ domain, in one place: requests are validated while they are
//! converted, so handlers only ever see well-formed commands. Field
//! violations name the field by its path in the request. Interactions and
//! purchases are here; returns, the voice of the customer, complaints and
//! defections, and consent and contact policy have a module each.

mod complaints;
mod consent;
mod returns;
mod voice;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use crm_proto::{
    common::v1::{Channel, Interval, TraitValue},
    interaction::v1 as pb,
};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    page, time, validate,
};
use prost::Message;

pub use self::{
    complaints::{ComplaintUpdate, DefectionQuery, NewComplaint, NewDefection},
    consent::{ConsentPage, ContactQuery, NewConsent, PolicyUpdate, consent_token, default_policy, policy_from_pb},
    returns::NewReturn,
    voice::{AnalysisQuery, NewSurveyResponse, interval as bucket_interval},
};
use crate::domain::{self, Line};

/// Longest thread id.
const MAX_THREAD_ID: usize = 128;
/// Longest free text (descriptions, notes, comments).
pub const MAX_LONG_TEXT: usize = 4096;
/// Longest category, segment tag or other short code.
pub const MAX_CODE: usize = 64;

/// How far in the future an occurrence may be (clock skew).
fn max_future() -> Duration {
    Duration::hours(24)
}

/// An optional period `field` (`Interval`): each end a valid instant if
/// set, start not after end. `required` asks for both ends.
pub(crate) fn period(
    v: &mut FieldViolations,
    field: &str,
    p: Option<&Interval>,
    required: bool,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let Some(p) = p else {
        if required {
            v.add(field, "required");
        }
        return (None, None);
    };
    let start_field = format!("{field}.start_time");
    let end_field = format!("{field}.end_time");
    let start = validate::timestamp(v, &start_field, p.start_time.as_ref());
    let end = validate::timestamp(v, &end_field, p.end_time.as_ref());
    if required {
        v.require(p.start_time.is_some(), start_field, "required");
        v.require(p.end_time.is_some(), end_field, "required");
    }
    if let (Some(s), Some(e)) = (start, end) {
        v.require(s <= e, field, "start_time must not be after end_time");
    }
    (start, end)
}

/// A validated RecordInteraction.
#[derive(Debug, Clone)]
pub struct NewInteraction {
    /// Customer.
    pub customer_id: String,
    /// Channel.
    pub channel: Channel,
    /// Direction.
    pub direction: pb::Direction,
    /// Type (never purchase).
    pub kind: pb::InteractionType,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Thread.
    pub thread_id: String,
    /// Attributes.
    pub attributes: BTreeMap<String, TraitValue>,
    /// Purpose.
    pub purpose: pb::Purpose,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

/// When something happened: `t`, or now if unset; at most a day ahead.
pub(crate) fn occurred_at(v: &mut FieldViolations, field: &str, t: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    let now = time::now();
    match validate::timestamp(v, field, t) {
        Some(at) if at > now + max_future() => {
            v.add(field, "must not be more than 24 hours in the future");
            now
        }
        Some(at) => at,
        None => now,
    }
}

impl TryFrom<pb::RecordInteractionRequest> for NewInteraction {
    type Error = RuntimeError;

    fn try_from(req: pb::RecordInteractionRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "customer_id", &req.customer_id);
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, true);
        let direction = validate::enumeration::<pb::Direction>(&mut v, "direction", req.direction, false)
            .unwrap_or(pb::Direction::Inbound);
        let kind = validate::enumeration::<pb::InteractionType>(&mut v, "type", req.r#type, true);
        if kind == Some(pb::InteractionType::Purchase) {
            v.add("type", "record purchases with RecordPurchase");
        }
        let purpose = validate::enumeration::<pb::Purpose>(&mut v, "purpose", req.purpose, false);
        if direction == pb::Direction::Outbound && purpose.is_none() {
            v.add("purpose", "required for outbound contacts");
        }
        let occurred_at = occurred_at(&mut v, "occur_time", req.occur_time.as_ref());
        validate::text(&mut v, "thread_id", &req.thread_id, MAX_THREAD_ID, false);
        validate::attributes(&mut v, "attributes", &req.attributes);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        Ok(NewInteraction {
            customer_id: req.customer_id,
            channel: channel.unwrap_or_default(),
            direction,
            kind: kind.unwrap_or_default(),
            occurred_at,
            thread_id: req.thread_id,
            attributes: req.attributes,
            purpose: purpose.unwrap_or_default(),
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}

/// A validated RecordPurchase.
#[derive(Debug, Clone)]
pub struct NewPurchase {
    /// Customer.
    pub customer_id: String,
    /// Channel.
    pub channel: Channel,
    /// When.
    pub occurred_at: DateTime<Utc>,
    /// Number in the selling system.
    pub order_number: String,
    /// Currency.
    pub currency_code: String,
    /// Lines as given.
    pub lines: Vec<pb::OrderLine>,
    /// Exact totals.
    pub totals: domain::Totals,
    /// Thread.
    pub thread_id: String,
    /// Attributes.
    pub attributes: BTreeMap<String, TraitValue>,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl TryFrom<pb::RecordPurchaseRequest> for NewPurchase {
    type Error = RuntimeError;

    fn try_from(req: pb::RecordPurchaseRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "customer_id", &req.customer_id);
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, true);
        let occurred_at = occurred_at(&mut v, "occur_time", req.occur_time.as_ref());
        validate::text(&mut v, "order_number", &req.order_number, validate::MAX_SHORT_TEXT, false);
        validate::order(&mut v, "", &req.currency_code, &req.lines);
        validate::text(&mut v, "thread_id", &req.thread_id, MAX_THREAD_ID, false);
        validate::attributes(&mut v, "attributes", &req.attributes);
        check_request_id(&mut v, &req.request_id);
        let lines: Vec<Line> = req
            .lines
            .iter()
            .map(|l| Line { quantity: l.quantity, unit_price: l.unit_price_minor, unit_cost: l.unit_cost_minor })
            .collect();
        let totals = domain::totals(&lines);
        if totals.is_none() && v.is_empty() {
            v.add("lines", "order total is too large");
        }
        v.finish()?;
        Ok(NewPurchase {
            customer_id: req.customer_id,
            channel: channel.unwrap_or_default(),
            occurred_at,
            order_number: req.order_number,
            currency_code: req.currency_code,
            lines: req.lines,
            totals: totals.unwrap_or_default(),
            thread_id: req.thread_id,
            attributes: req.attributes,
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}

/// A validated timeline query.
#[derive(Debug, Clone)]
pub struct TimelineQuery {
    /// Customer.
    pub customer_id: String,
    /// Page size.
    pub page_size: u64,
    /// Keyset cursor: (occurred_at_us, id) of the last item of the previous page.
    pub after: Option<(i64, String)>,
    /// Only this channel.
    pub channel: Option<Channel>,
    /// Only this type.
    pub kind: Option<pb::InteractionType>,
    /// Only from this instant (inclusive), microseconds.
    pub from_us: Option<i64>,
    /// Only until this instant (exclusive), microseconds.
    pub until_us: Option<i64>,
    /// Only this thread.
    pub thread_id: Option<String>,
}

/// Encode a timeline cursor.
pub fn timeline_token(occurred_at_us: i64, id: &str) -> String {
    page::encode_token(&format!("{occurred_at_us}|{id}"))
}

impl TryFrom<pb::ListInteractionsRequest> for TimelineQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::ListInteractionsRequest) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        validate::id(&mut v, "customer_id", &req.customer_id);
        let page_size = page::page_size(&mut v, req.page_size);
        let after = page::decode_token(&mut v, &req.page_token).and_then(|t| {
            let parsed = t.split_once('|').and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())));
            if parsed.is_none() {
                v.add("page_token", "not a token returned by this service");
            }
            parsed
        });
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, false);
        let kind = validate::enumeration::<pb::InteractionType>(&mut v, "type", req.r#type, false);
        let (from, until) = period(&mut v, "period", req.period.as_ref(), false);
        let (from_us, until_us) = (from.map(|t| t.timestamp_micros()), until.map(|t| t.timestamp_micros()));
        validate::text(&mut v, "thread_id", &req.thread_id, MAX_THREAD_ID, false);
        v.finish()?;
        Ok(TimelineQuery {
            customer_id: req.customer_id,
            page_size,
            after,
            channel,
            kind,
            from_us,
            until_us,
            thread_id: (!req.thread_id.is_empty()).then_some(req.thread_id),
        })
    }
}
