//! RecordSurveyResponse and the analyses of the voice of the customer.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use crm_proto::{
    common::v1::{Channel, Interval},
    interaction::v1 as pb,
};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    time::to_timestamp,
    validate,
};
use prost::Message;

use super::{MAX_CODE, MAX_LONG_TEXT, occurred_at, period};
use crate::domain::voice::{self, Bucket, Granularity};

/// Most attribute ratings in one response.
pub const MAX_RATINGS: usize = 50;
/// Longest attribute name.
const MAX_ATTRIBUTE: usize = 128;
/// Longest survey id.
const MAX_SURVEY_ID: usize = 128;
/// Most customers an analysis may be restricted to.
pub const MAX_ANALYSIS_CUSTOMERS: usize = 10_000;
/// Most invalid customer ids reported one by one.
const MAX_REPORTED_IDS: usize = 20;
/// Highest score of importance and performance.
const MAX_SCORE: f64 = 10.0;

/// A validated RecordSurveyResponse.
#[derive(Debug, Clone)]
pub struct NewSurveyResponse {
    /// The response as it will be stored (no id yet, occur_time set,
    /// unknown competitor performance as −1).
    pub response: pb::SurveyResponse,
    /// When it was answered.
    pub occurred_at: DateTime<Utc>,
    /// Channel (unspecified: not known).
    pub channel: Channel,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

fn score(v: &mut FieldViolations, field: String, value: f64) {
    v.require(value.is_finite() && (0.0..=MAX_SCORE).contains(&value), field, "between 0 and 10");
}

impl TryFrom<pb::RecordSurveyResponseRequest> for NewSurveyResponse {
    type Error = RuntimeError;

    fn try_from(req: pb::RecordSurveyResponseRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, false);
        check_request_id(&mut v, &req.request_id);
        let Some(mut r) = req.response else {
            v.add("response", "required");
            return Err(RuntimeError::InvalidArgument(v));
        };
        validate::id(&mut v, "response.customer_id", &r.customer_id);
        validate::text(&mut v, "response.survey_id", &r.survey_id, MAX_SURVEY_ID, false);
        v.require((-1..=10).contains(&r.nps), "response.nps", "0..10, or -1 if not asked");
        v.require((0..=5).contains(&r.csat), "response.csat", "1..5, or 0 if not asked");
        if r.ratings.len() > MAX_RATINGS {
            v.add("response.ratings", format!("at most {MAX_RATINGS} ratings"));
        }
        let mut seen = HashSet::new();
        for (i, rating) in r.ratings.iter_mut().enumerate().take(MAX_RATINGS) {
            let f = |name: &str| format!("response.ratings[{i}].{name}");
            validate::text(&mut v, &f("attribute"), &rating.attribute, MAX_ATTRIBUTE, true);
            if !rating.attribute.is_empty() && !seen.insert(rating.attribute.clone()) {
                v.add(f("attribute"), "the attribute is already rated in this response");
            }
            score(&mut v, f("importance"), rating.importance);
            score(&mut v, f("our_performance"), rating.our_performance);
            let c = rating.competitor_performance;
            v.require(c.is_finite() && c <= MAX_SCORE, f("competitor_performance"), "0..10, or negative if unknown");
            if c < 0.0 {
                rating.competitor_performance = -1.0;
            }
        }
        validate::text(&mut v, "response.segment", &r.segment, MAX_CODE, false);
        let occurred_at = occurred_at(&mut v, "response.occur_time", r.occur_time.as_ref());
        validate::text(&mut v, "response.comment", &r.comment, MAX_LONG_TEXT, false);
        v.finish()?;
        r.id = String::new();
        r.occur_time = Some(to_timestamp(occurred_at));
        Ok(NewSurveyResponse {
            response: r,
            occurred_at,
            channel: channel.unwrap_or_default(),
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}

/// A validated AnalyzeSatisfaction or AnalyzePerceivedValue.
#[derive(Debug, Clone)]
pub struct AnalysisQuery {
    /// Start of the period (inclusive).
    pub start: DateTime<Utc>,
    /// End of the period (exclusive).
    pub end: DateTime<Utc>,
    /// Its buckets, oldest first.
    pub buckets: Vec<Bucket>,
    /// Only these customers (empty: everyone), sorted and distinct.
    pub customer_ids: Vec<String>,
    /// Only this segment tag.
    pub segment: Option<String>,
}

fn analysis(
    period_pb: Option<&Interval>,
    granularity: i32,
    customer_ids: Vec<String>,
    segment: String,
) -> Result<AnalysisQuery, RuntimeError> {
    let mut v = FieldViolations::new();
    let (start, end) = period(&mut v, "period", period_pb, true);
    let granularity =
        validate::enumeration::<pb::Granularity>(&mut v, "granularity", granularity, true).map(|g| match g {
            pb::Granularity::Unspecified | pb::Granularity::Day => Granularity::Day,
            pb::Granularity::Week => Granularity::Week,
            pb::Granularity::Month => Granularity::Month,
            pb::Granularity::Quarter => Granularity::Quarter,
            pb::Granularity::Year => Granularity::Year,
        });
    let mut buckets = Vec::new();
    if let (Some(s), Some(e)) = (start, end) {
        if s == e {
            v.add("period", "must not be empty");
        } else if let (true, Some(g)) = (s < e, granularity) {
            match voice::buckets(s, e, g, voice::MAX_BUCKETS) {
                Some(b) => buckets = b,
                None => v.add(
                    "period",
                    format!("more than {} buckets: narrow the period or use a coarser granularity", voice::MAX_BUCKETS),
                ),
            }
        }
    }
    if customer_ids.len() > MAX_ANALYSIS_CUSTOMERS {
        v.add("customer_ids", format!("at most {MAX_ANALYSIS_CUSTOMERS} customers"));
    } else {
        let mut reported = 0;
        for (i, id) in customer_ids.iter().enumerate() {
            let before = v.violations().len();
            validate::id(&mut v, &format!("customer_ids[{i}]"), id);
            if v.violations().len() > before {
                reported += 1;
                if reported == MAX_REPORTED_IDS {
                    break;
                }
            }
        }
    }
    validate::text(&mut v, "segment", &segment, MAX_CODE, false);
    v.finish()?;
    let (Some(start), Some(end)) = (start, end) else {
        return Err(FieldViolations::single("period", "required"));
    };
    let customer_ids: BTreeSet<String> = customer_ids.into_iter().collect();
    Ok(AnalysisQuery {
        start,
        end,
        buckets,
        customer_ids: customer_ids.into_iter().collect(),
        segment: (!segment.is_empty()).then_some(segment),
    })
}

impl TryFrom<pb::AnalyzeSatisfactionRequest> for AnalysisQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::AnalyzeSatisfactionRequest) -> Result<Self, RuntimeError> {
        analysis(req.period.as_ref(), req.granularity, req.customer_ids, req.segment)
    }
}

impl TryFrom<pb::AnalyzePerceivedValueRequest> for AnalysisQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::AnalyzePerceivedValueRequest) -> Result<Self, RuntimeError> {
        analysis(req.period.as_ref(), req.granularity, req.customer_ids, req.segment)
    }
}

/// A bucket as a protobuf interval.
pub fn interval(b: &Bucket) -> Interval {
    Interval { start_time: Some(to_timestamp(b.start)), end_time: Some(to_timestamp(b.end)) }
}
