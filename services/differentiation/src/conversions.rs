//! Protobuf requests to domain commands, validating while converting: each
//! invalid field is a field violation (INVALID_ARGUMENT).

use chrono::{DateTime, Duration, Utc};
use crm_proto::{differentiation::v1 as pb, interaction::v1::DefectionReason};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency, validate,
};
use prost::Message;

use crate::{
    domain::{
        clv::Valuation,
        segment::{self, Rule},
        value::{Policy, channel_key, channel_of_key},
    },
    store::{defections::DefectionQuery, models::FitCommand, segments::NewSegment, values::PolicyUpdate},
};

/// Largest cost per interaction accepted, minor units.
pub const MAX_COST_PER_INTERACTION: i64 = 1_000_000_000;

/// A stored or requested policy as the domain's (unknown channel keys are
/// left out; validation refuses them in requests).
pub fn policy_from_proto(p: &pb::TierPolicy) -> Policy {
    Policy {
        version: p.version,
        most_valuable_share: p.most_valuable_share,
        most_growable_share: p.most_growable_share,
        cost_per_interaction: p
            .cost_per_interaction_minor
            .iter()
            .filter_map(|(k, v)| Some((channel_of_key(k)?, *v)))
            .collect(),
        currency: p.currency_code.clone(),
        hysteresis_share: p.hysteresis_share,
        hysteresis_floor: p.hysteresis_floor_minor,
    }
}

/// The domain's policy as protobuf (without etag and time).
pub fn policy_to_proto(p: &Policy) -> pb::TierPolicy {
    pb::TierPolicy {
        version: p.version,
        most_valuable_share: p.most_valuable_share,
        most_growable_share: p.most_growable_share,
        cost_per_interaction_minor: p
            .cost_per_interaction
            .iter()
            .filter_map(|(c, v)| Some((channel_key(*c)?, *v)))
            .collect(),
        currency_code: p.currency.clone(),
        hysteresis_share: p.hysteresis_share,
        hysteresis_floor_minor: p.hysteresis_floor,
        etag: String::new(),
        create_time: None,
    }
}

/// An UpdateTierPolicy request as a command.
pub fn policy_update(req: &pb::UpdateTierPolicyRequest) -> Result<PolicyUpdate, RuntimeError> {
    let mut v = FieldViolations::new();
    idempotency::check_request_id(&mut v, &req.request_id);
    validate::text(&mut v, "etag", &req.etag, validate::MAX_SHORT_TEXT, false);
    let Some(p) = &req.policy else {
        v.add("policy", "required");
        return Err(RuntimeError::InvalidArgument(v));
    };
    let share = |v: &mut FieldViolations, field: &str, x: f64| {
        v.require(x.is_finite() && (0.0..=1.0).contains(&x), field, "between 0 and 1");
    };
    share(&mut v, "policy.most_valuable_share", p.most_valuable_share);
    share(&mut v, "policy.most_growable_share", p.most_growable_share);
    share(&mut v, "policy.hysteresis_share", p.hysteresis_share);
    v.require(
        (0..=MAX_COST_PER_INTERACTION).contains(&p.hysteresis_floor_minor),
        "policy.hysteresis_floor_minor",
        format!("between 0 and {MAX_COST_PER_INTERACTION}"),
    );
    v.require(validate::is_currency_code(&p.currency_code), "policy.currency_code", "an ISO 4217 code such as EUR");
    let mut keys: Vec<&String> = p.cost_per_interaction_minor.keys().collect();
    keys.sort();
    for k in keys {
        let field = format!("policy.cost_per_interaction_minor[{}]", k.chars().take(64).collect::<String>());
        if channel_of_key(k).is_none() {
            v.add(field, "not a channel (web, mobile_app, email, phone, call_centre, store, chat, social, sales_rep, partner, sms)");
        } else if !(0..=MAX_COST_PER_INTERACTION).contains(&p.cost_per_interaction_minor[k]) {
            v.add(field, format!("between 0 and {MAX_COST_PER_INTERACTION}"));
        }
    }
    v.finish()?;
    Ok(PolicyUpdate {
        policy: policy_from_proto(p),
        etag: req.etag.clone(),
        request_id: req.request_id.clone(),
        fingerprint: idempotency::fingerprint(
            &pb::UpdateTierPolicyRequest { request_id: String::new(), ..req.clone() }.encode_to_vec(),
        ),
    })
}

/// Longest CLV horizon, days (ten years).
pub const MAX_HORIZON_DAYS: i32 = 3650;

/// A fit request as a command, as of `now`.
pub fn fit_command(req: &pb::FitValueModelRequest, now: DateTime<Utc>) -> Result<FitCommand, RuntimeError> {
    let mut v = FieldViolations::new();
    let end = validate::timestamp(&mut v, "calibration_end_time", req.calibration_end_time.as_ref());
    if let Some(e) = end {
        v.require(e <= now + Duration::days(1), "calibration_end_time", "must not be in the future");
    }
    v.require(
        req.currency_code.is_empty() || validate::is_currency_code(&req.currency_code),
        "currency_code",
        "an ISO 4217 code such as EUR",
    );
    v.require(
        (0..=MAX_HORIZON_DAYS).contains(&req.horizon_days),
        "horizon_days",
        format!("between 1 and {MAX_HORIZON_DAYS} (0 for the default, 365)"),
    );
    if let Some(d) = req.monthly_discount_rate {
        v.require(d.is_finite() && (0.0..=1.0).contains(&d), "monthly_discount_rate", "between 0 and 1");
    }
    idempotency::check_request_id(&mut v, &req.request_id);
    v.finish()?;
    let defaults = Valuation::default();
    Ok(FitCommand {
        calibration_end: end.unwrap_or(now),
        currency: (!req.currency_code.is_empty()).then(|| req.currency_code.clone()),
        valuation: Valuation {
            horizon_days: if req.horizon_days == 0 { defaults.horizon_days } else { req.horizon_days as u32 },
            monthly_discount_rate: req.monthly_discount_rate.unwrap_or(defaults.monthly_discount_rate),
        },
        activate: req.activate,
        request_id: req.request_id.clone(),
        fingerprint: idempotency::fingerprint(
            &pb::FitValueModelRequest { request_id: String::new(), ..req.clone() }.encode_to_vec(),
        ),
    })
}

/// The keyset of a page token "number|id" (customer values: real value and
/// customer; tier changes: time and change id; profitability: margin and
/// customer).
pub fn value_cursor(v: &mut FieldViolations, token: &str) -> Option<(i64, String)> {
    let raw = crm_runtime::page::decode_token(v, token)?;
    let parsed = raw.split_once('|').and_then(|(k, id)| Some((k.parse::<i64>().ok()?, id.to_owned())));
    if parsed.is_none() {
        v.add("page_token", "not a token returned by this service");
    }
    parsed
}

/// The page token after `(number, id)`.
pub fn value_token(key: i64, id: &str) -> String {
    crm_runtime::page::encode_token(&format!("{key}|{id}"))
}

/// Longest segment description, in characters.
pub const MAX_SEGMENT_DESCRIPTION: usize = 2048;

/// A CreateSegment request as a command: the expression is compiled, and
/// a refused one is a violation of `segment.expression` carrying the
/// parser's message.
pub fn new_segment(req: &pb::CreateSegmentRequest) -> Result<NewSegment, RuntimeError> {
    let mut v = FieldViolations::new();
    idempotency::check_request_id(&mut v, &req.request_id);
    let Some(s) = &req.segment else {
        v.add("segment", "required");
        return Err(RuntimeError::InvalidArgument(v));
    };
    validate::text(&mut v, "segment.display_name", &s.display_name, validate::MAX_SHORT_TEXT, true);
    if !s.display_name.is_empty() && s.display_name.trim().is_empty() {
        v.add("segment.display_name", "must not be blank");
    }
    validate::text(&mut v, "segment.description", &s.description, MAX_SEGMENT_DESCRIPTION, false);
    let mut rule = None;
    if s.expression.trim().is_empty() {
        v.add("segment.expression", "required");
    } else if s.expression.chars().count() > segment::MAX_EXPRESSION_CHARS {
        v.add("segment.expression", format!("at most {} characters", segment::MAX_EXPRESSION_CHARS));
    } else if segment::has_bad_control(&s.expression) {
        v.add("segment.expression", "must not contain control characters other than tabs and line breaks");
    } else {
        match Rule::compile(&s.expression) {
            Ok(r) => rule = Some(r),
            Err(e) => v.add("segment.expression", e.0),
        }
    }
    v.finish()?;
    let rule = rule.ok_or_else(|| RuntimeError::Internal("validated expression without a rule".into()))?;
    // Output-only fields do not make a retry a different request.
    let fingerprint_of = pb::CreateSegmentRequest {
        request_id: String::new(),
        segment: Some(pb::Segment { id: String::new(), member_count: 0, create_time: None, ..s.clone() }),
    };
    Ok(NewSegment {
        display_name: s.display_name.clone(),
        description: s.description.clone(),
        expression: s.expression.clone(),
        rule: std::sync::Arc::new(rule),
        request_id: req.request_id.clone(),
        fingerprint: idempotency::fingerprint(&fingerprint_of.encode_to_vec()),
    })
}

/// The id a page token ends after (segments: segment id; members:
/// customer id).
pub fn id_cursor(v: &mut FieldViolations, token: &str) -> Option<String> {
    let raw = crm_runtime::page::decode_token(v, token)?;
    if !crm_runtime::ids::is_valid_id(&raw) {
        v.add("page_token", "not a token returned by this service");
        return None;
    }
    Some(raw)
}

/// The page token after `id`.
pub fn id_token(id: &str) -> String {
    crm_runtime::page::encode_token(id)
}

/// Default length of a defection value report's period, days.
pub const DEFECTION_PERIOD_DAYS: i64 = 365;

/// An AnalyzeDefectionValue request as a query (period defaults relative
/// to `now`).
pub fn defection_query(
    req: &pb::AnalyzeDefectionValueRequest,
    now: DateTime<Utc>,
) -> Result<DefectionQuery, RuntimeError> {
    let mut v = FieldViolations::new();
    let period = req.period.unwrap_or_default();
    let start = validate::timestamp(&mut v, "period.start_time", period.start_time.as_ref());
    let end = validate::timestamp(&mut v, "period.end_time", period.end_time.as_ref());
    if let (Some(s), Some(e)) = (start, end) {
        v.require(s < e, "period.end_time", "must be after period.start_time");
    }
    let mut reasons = Vec::with_capacity(req.reasons.len());
    for (i, r) in req.reasons.iter().enumerate() {
        if let Some(r) = validate::enumeration::<DefectionReason>(&mut v, &format!("reasons[{i}]"), *r, true) {
            reasons.push(r as i32);
        }
    }
    v.require(
        req.currency_code.is_empty() || validate::is_currency_code(&req.currency_code),
        "currency_code",
        "an ISO 4217 code such as EUR",
    );
    v.finish()?;
    let end = end.unwrap_or(now);
    let start = start.unwrap_or(end - Duration::days(DEFECTION_PERIOD_DAYS));
    reasons.sort_unstable();
    reasons.dedup();
    Ok(DefectionQuery {
        start_us: start.timestamp_micros(),
        end_us: end.timestamp_micros(),
        reasons,
        currency: (!req.currency_code.is_empty()).then(|| req.currency_code.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: Result<FitCommand, RuntimeError>) -> Vec<String> {
        match r {
            Err(RuntimeError::InvalidArgument(v)) => v.violations().iter().map(|(f, _)| f.clone()).collect(),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_a_bare_request() {
        let now = Utc::now();
        let c = fit_command(&pb::FitValueModelRequest::default(), now).unwrap();
        assert_eq!(c.calibration_end, now);
        assert_eq!(c.currency, None);
        assert_eq!(c.valuation, Valuation::default());
        let c = fit_command(&pb::FitValueModelRequest { monthly_discount_rate: Some(0.0), ..Default::default() }, now)
            .unwrap();
        assert_eq!(c.valuation.monthly_discount_rate, 0.0);
    }

    #[test]
    fn every_bad_field_is_named() {
        let now = Utc::now();
        let req = pb::FitValueModelRequest {
            calibration_end_time: Some(prost_types::Timestamp { seconds: now.timestamp() + 10 * 86_400, nanos: 0 }),
            activate: true,
            currency_code: "eur".into(),
            horizon_days: -1,
            monthly_discount_rate: Some(f64::NAN),
            request_id: "x\u{1}".into(),
        };
        assert_eq!(
            fields(fit_command(&req, now)),
            ["calibration_end_time", "currency_code", "horizon_days", "monthly_discount_rate", "request_id"]
        );
        let req = pb::FitValueModelRequest { horizon_days: MAX_HORIZON_DAYS + 1, ..Default::default() };
        assert_eq!(fields(fit_command(&req, now)), ["horizon_days"]);
    }

    #[test]
    fn policies_round_trip_and_bad_ones_name_each_field() {
        let policy = crate::domain::value::Policy::default();
        let proto = policy_to_proto(&policy);
        assert_eq!(proto.cost_per_interaction_minor.get("call_centre"), Some(&400));
        assert_eq!(policy_from_proto(&proto), policy);
        let cmd =
            policy_update(&pb::UpdateTierPolicyRequest { policy: Some(proto.clone()), ..Default::default() }).unwrap();
        assert_eq!(cmd.policy, policy);
        let bad = pb::TierPolicy {
            most_valuable_share: 1.5,
            most_growable_share: f64::NAN,
            cost_per_interaction_minor: [("fax".to_owned(), 1), ("web".to_owned(), -1)].into(),
            currency_code: "euro".into(),
            hysteresis_share: -0.1,
            hysteresis_floor_minor: -1,
            ..proto
        };
        let fields = match policy_update(&pb::UpdateTierPolicyRequest {
            policy: Some(bad),
            request_id: "\u{7}".into(),
            etag: "x".repeat(300),
        }) {
            Err(RuntimeError::InvalidArgument(v)) => v.violations().iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
            other => panic!("expected invalid argument, got {other:?}"),
        };
        assert_eq!(
            fields,
            [
                "request_id",
                "etag",
                "policy.most_valuable_share",
                "policy.most_growable_share",
                "policy.hysteresis_share",
                "policy.hysteresis_floor_minor",
                "policy.currency_code",
                "policy.cost_per_interaction_minor[fax]",
                "policy.cost_per_interaction_minor[web]",
            ]
        );
        let missing = policy_update(&pb::UpdateTierPolicyRequest::default());
        assert!(matches!(missing, Err(RuntimeError::InvalidArgument(v)) if v.violations()[0].0 == "policy"));
    }

    #[test]
    fn value_tokens_round_trip() {
        let mut v = FieldViolations::new();
        let t = value_token(-5, "0190");
        assert_eq!(value_cursor(&mut v, &t), Some((-5, "0190".to_owned())));
        assert!(v.is_empty());
        assert_eq!(value_cursor(&mut v, &crm_runtime::page::encode_token("nope")), None);
        assert_eq!(v.violations().len(), 1);
    }

    fn violations(r: Result<NewSegment, RuntimeError>) -> Vec<(String, String)> {
        match r {
            Err(RuntimeError::InvalidArgument(v)) => v.violations().to_vec(),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn segments_are_validated_field_by_field() {
        let ok = pb::Segment { display_name: "Eco".into(), expression: "'eco' in needs".into(), ..Default::default() };
        let cmd = new_segment(&pb::CreateSegmentRequest { segment: Some(ok.clone()), request_id: "r".into() }).unwrap();
        assert_eq!(cmd.expression, "'eco' in needs");
        let same = pb::Segment { id: "ignored".into(), member_count: 9, ..ok.clone() };
        let again = new_segment(&pb::CreateSegmentRequest { segment: Some(same), request_id: "r".into() }).unwrap();
        assert_eq!(cmd.fingerprint, again.fingerprint, "output-only fields are ignored");
        let bad = pb::Segment {
            display_name: "x".repeat(300),
            description: "a\u{7}".into(),
            expression: "tier == ".into(),
            ..Default::default()
        };
        let v = violations(new_segment(&pb::CreateSegmentRequest { segment: Some(bad), request_id: "\u{1}".into() }));
        let fields: Vec<&str> = v.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["request_id", "segment.display_name", "segment.description", "segment.expression"]);
        assert!(v[3].1.starts_with("ERROR: <input>:1:"), "{}", v[3].1);
        for (name, expression, field) in [
            ("", "true", "segment.display_name"),
            ("  ", "true", "segment.display_name"),
            ("n", "", "segment.expression"),
            ("n", "true\u{0}", "segment.expression"),
            ("n", &"1 == 1 && ".repeat(500), "segment.expression"),
        ] {
            let s = pb::Segment { display_name: name.into(), expression: expression.into(), ..Default::default() };
            let v = violations(new_segment(&pb::CreateSegmentRequest { segment: Some(s), ..Default::default() }));
            assert_eq!(v.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), [field], "{name:?} {expression:?}");
        }
        let v = violations(new_segment(&pb::CreateSegmentRequest::default()));
        assert_eq!(v[0].0, "segment");
    }

    #[test]
    fn id_tokens_round_trip_and_others_are_refused() {
        let mut v = FieldViolations::new();
        let id = crm_runtime::ids::new_id();
        assert_eq!(id_cursor(&mut v, &id_token(&id)), Some(id));
        assert!(v.is_empty());
        assert_eq!(id_cursor(&mut v, &crm_runtime::page::encode_token("5|x")), None);
        assert_eq!(id_cursor(&mut v, "nope"), None);
        assert_eq!(v.violations().len(), 2);
    }
}
