//! RecordReturn.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use crm_proto::{common::v1::Channel, interaction::v1 as pb};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    validate,
};
use prost::Message;

use super::occurred_at;

/// Longest sku (as on order lines).
const MAX_SKU: usize = 64;

/// A validated RecordReturn.
#[derive(Debug, Clone)]
pub struct NewReturn {
    /// The order.
    pub order_id: String,
    /// (sku, quantity) returned, each sku once.
    pub items: Vec<(String, i64)>,
    /// When.
    pub occurred_at: DateTime<Utc>,
    /// Reason.
    pub reason: String,
    /// Channel; `None`: the order's.
    pub channel: Option<Channel>,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl TryFrom<pb::RecordReturnRequest> for NewReturn {
    type Error = RuntimeError;

    fn try_from(req: pb::RecordReturnRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "order_id", &req.order_id);
        if req.lines.is_empty() {
            v.add("lines", "at least one line");
        } else if req.lines.len() > validate::MAX_ORDER_LINES {
            v.add("lines", format!("at most {} lines", validate::MAX_ORDER_LINES));
        }
        let mut seen = HashSet::new();
        for (i, l) in req.lines.iter().enumerate().take(validate::MAX_ORDER_LINES) {
            let sku = format!("lines[{i}].sku");
            validate::text(&mut v, &sku, &l.sku, MAX_SKU, true);
            if !l.sku.is_empty() && !seen.insert(l.sku.as_str()) {
                v.add(sku, "the sku is already on another line");
            }
            v.require(
                (1..=validate::MAX_QUANTITY).contains(&l.quantity),
                format!("lines[{i}].quantity"),
                format!("between 1 and {}", validate::MAX_QUANTITY),
            );
        }
        let occurred_at = occurred_at(&mut v, "occur_time", req.occur_time.as_ref());
        validate::text(&mut v, "reason", &req.reason, validate::MAX_SHORT_TEXT, false);
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, false);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        Ok(NewReturn {
            order_id: req.order_id,
            items: req.lines.into_iter().map(|l| (l.sku, l.quantity)).collect(),
            occurred_at,
            reason: req.reason,
            channel,
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}
