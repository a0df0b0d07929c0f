//! Validation of gateway requests before any downstream call, so an invalid
//! touchpoint writes nothing anywhere. Identifier syntax is identification's
//! to judge (its field names match this request's).

use crm_proto::{
    common::v1::Channel,
    gateway::v1 as pb,
    interaction::v1::{Direction, InteractionType, Purpose},
};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    validate,
};

/// Most identifiers in one touchpoint (identification's limit).
pub const MAX_IDENTIFIERS: usize = 20;
/// Longest request id: downstream keys append a suffix to it.
pub const MAX_REQUEST_ID: usize = 100;
/// Most offers asked for.
pub const MAX_OFFERS: i32 = 50;
/// Offers when none is asked for.
pub const DEFAULT_OFFERS: i32 = 3;

/// Check a HandleTouchpoint request; returns how many offers to ask for.
pub fn check_touchpoint(req: &pb::HandleTouchpointRequest) -> Result<i32, RuntimeError> {
    let mut v = FieldViolations::new();
    if req.identifiers.is_empty() {
        v.add("identifiers", "at least one identifier");
    } else if req.identifiers.len() > MAX_IDENTIFIERS {
        v.add("identifiers", format!("at most {MAX_IDENTIFIERS}"));
    }
    validate::enumeration::<Channel>(&mut v, "channel", req.channel, true);
    let kind = validate::enumeration::<InteractionType>(&mut v, "interaction_type", req.interaction_type, true);
    let direction = validate::enumeration::<Direction>(&mut v, "direction", req.direction, false);
    let purpose = validate::enumeration::<Purpose>(&mut v, "purpose", req.purpose, false);
    if direction == Some(Direction::Outbound) && purpose.is_none() {
        v.add("purpose", "required for outbound touchpoints");
    }
    match (&req.purchase, kind) {
        (Some(p), Some(InteractionType::Purchase)) => {
            validate::text(&mut v, "purchase.order_number", &p.order_number, validate::MAX_SHORT_TEXT, false);
            validate::order(&mut v, "purchase.", &p.currency_code, &p.lines);
        }
        (None, Some(InteractionType::Purchase)) => v.add("purchase", "required for PURCHASE touchpoints"),
        (Some(_), _) => v.add("purchase", "only for PURCHASE touchpoints"),
        (None, _) => {}
    }
    validate::timestamp(&mut v, "occur_time", req.occur_time.as_ref());
    validate::text(&mut v, "thread_id", &req.thread_id, 128, false);
    validate::attributes(&mut v, "interaction_attributes", &req.interaction_attributes);
    v.require((0..=MAX_OFFERS).contains(&req.max_offers), "max_offers", format!("between 0 and {MAX_OFFERS}"));
    validate::text(&mut v, "request_id", &req.request_id, MAX_REQUEST_ID, false);
    v.finish()?;
    Ok(if req.max_offers == 0 { DEFAULT_OFFERS } else { req.max_offers })
}

/// The idempotency key of one downstream step of a workflow (empty when
/// the workflow has none).
pub fn step_key(request_id: &str, step: &str) -> String {
    if request_id.is_empty() { String::new() } else { format!("{request_id}:{step}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::identification::v1::Identifier;

    fn touchpoint() -> pb::HandleTouchpointRequest {
        pb::HandleTouchpointRequest {
            identifiers: vec![Identifier { r#type: 1, value: "a@b.es".into(), namespace: String::new() }],
            channel: Channel::Web as i32,
            interaction_type: InteractionType::Visit as i32,
            ..Default::default()
        }
    }

    fn fields(r: Result<i32, RuntimeError>) -> Vec<String> {
        match r {
            Err(RuntimeError::InvalidArgument(v)) => v.violations().iter().map(|(f, _)| f.clone()).collect(),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_visit_is_valid_with_default_offers() {
        assert_eq!(check_touchpoint(&touchpoint()).unwrap(), DEFAULT_OFFERS);
    }

    #[test]
    fn purchases_need_their_details_and_only_purchases_have_them() {
        let mut t = touchpoint();
        t.interaction_type = InteractionType::Purchase as i32;
        assert_eq!(fields(check_touchpoint(&t)), ["purchase"]);
        t.purchase = Some(pb::PurchaseDetails { currency_code: "EUR".into(), ..Default::default() });
        assert_eq!(fields(check_touchpoint(&t)), ["purchase.lines"]);
        let mut t = touchpoint();
        t.purchase = Some(pb::PurchaseDetails::default());
        assert_eq!(fields(check_touchpoint(&t)), ["purchase"]);
    }

    #[test]
    fn everything_wrong_is_named() {
        let t = pb::HandleTouchpointRequest {
            channel: 99,
            direction: Direction::Outbound as i32,
            max_offers: 51,
            request_id: "x".repeat(101),
            ..Default::default()
        };
        assert_eq!(
            fields(check_touchpoint(&t)),
            ["identifiers", "channel", "interaction_type", "purpose", "max_offers", "request_id"]
        );
    }

    #[test]
    fn step_keys_derive_from_the_request_id() {
        assert_eq!(step_key("t-1", "record"), "t-1:record");
        assert_eq!(step_key("", "record"), "");
    }
}
