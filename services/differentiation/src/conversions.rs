//! Protobuf requests to domain commands, validating while converting: each
//! invalid field is a field violation (INVALID_ARGUMENT).

use chrono::{DateTime, Duration, Utc};
use crm_proto::differentiation::v1 as pb;
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency, validate,
};
use prost::Message;

use crate::{domain::clv::Valuation, store::models::FitCommand};

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

/// The keyset of a customer-value page token: "clv|customer_id".
pub fn value_cursor(v: &mut FieldViolations, token: &str) -> Option<(i64, String)> {
    let raw = crm_runtime::page::decode_token(v, token)?;
    let parsed = raw.split_once('|').and_then(|(k, id)| Some((k.parse::<i64>().ok()?, id.to_owned())));
    if parsed.is_none() {
        v.add("page_token", "not a token returned by this service");
    }
    parsed
}

/// The page token after `(clv key, customer id)`.
pub fn value_token(key: i64, id: &str) -> String {
    crm_runtime::page::encode_token(&format!("{key}|{id}"))
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
    fn value_tokens_round_trip() {
        let mut v = FieldViolations::new();
        let t = value_token(-5, "0190");
        assert_eq!(value_cursor(&mut v, &t), Some((-5, "0190".to_owned())));
        assert!(v.is_empty());
        assert_eq!(value_cursor(&mut v, &crm_runtime::page::encode_token("nope")), None);
        assert_eq!(v.violations().len(), 1);
    }
}
