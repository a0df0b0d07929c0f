//! Complaints and defections.

use chrono::{DateTime, Utc};
use crm_proto::{common::v1::Channel, interaction::v1 as pb};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    time::to_timestamp,
    validate,
};
use prost::Message;

use super::{MAX_CODE, MAX_LONG_TEXT, occurred_at, period};

/// A validated RecordComplaint.
#[derive(Debug, Clone)]
pub struct NewComplaint {
    /// The complaint as it opens (no id yet, status OPEN, open_time set).
    pub complaint: pb::Complaint,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// Channel it came in on.
    pub channel: Channel,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl TryFrom<pb::RecordComplaintRequest> for NewComplaint {
    type Error = RuntimeError;

    fn try_from(req: pb::RecordComplaintRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, true);
        check_request_id(&mut v, &req.request_id);
        let Some(mut c) = req.complaint else {
            v.add("complaint", "required");
            return Err(RuntimeError::InvalidArgument(v));
        };
        validate::id(&mut v, "complaint.customer_id", &c.customer_id);
        validate::text(&mut v, "complaint.category", &c.category, MAX_CODE, true);
        validate::text(&mut v, "complaint.description", &c.description, MAX_LONG_TEXT, false);
        let opened_at = occurred_at(&mut v, "complaint.open_time", c.open_time.as_ref());
        v.finish()?;
        c.id = String::new();
        c.status = pb::ComplaintStatus::Open as i32;
        c.open_time = Some(to_timestamp(opened_at));
        c.resolve_time = None;
        Ok(NewComplaint {
            complaint: c,
            opened_at,
            channel: channel.unwrap_or_default(),
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}

/// A validated UpdateComplaint.
#[derive(Debug, Clone)]
pub struct ComplaintUpdate {
    /// The complaint.
    pub complaint_id: String,
    /// Its new status.
    pub status: pb::ComplaintStatus,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl TryFrom<pb::UpdateComplaintRequest> for ComplaintUpdate {
    type Error = RuntimeError;

    fn try_from(req: pb::UpdateComplaintRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        validate::id(&mut v, "complaint_id", &req.complaint_id);
        let status = validate::enumeration::<pb::ComplaintStatus>(&mut v, "status", req.status, true);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        Ok(ComplaintUpdate {
            complaint_id: req.complaint_id,
            status: status.unwrap_or_default(),
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}

/// A validated RecordDefection.
#[derive(Debug, Clone)]
pub struct NewDefection {
    /// The defection as it will be stored (no id yet, occur_time set).
    pub defection: pb::Defection,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Channel (unspecified: not known).
    pub channel: Channel,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl TryFrom<pb::RecordDefectionRequest> for NewDefection {
    type Error = RuntimeError;

    fn try_from(req: pb::RecordDefectionRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, false);
        check_request_id(&mut v, &req.request_id);
        let Some(mut d) = req.defection else {
            v.add("defection", "required");
            return Err(RuntimeError::InvalidArgument(v));
        };
        validate::id(&mut v, "defection.customer_id", &d.customer_id);
        validate::enumeration::<pb::DefectionReason>(&mut v, "defection.reason", d.reason, true);
        let occurred_at = occurred_at(&mut v, "defection.occur_time", d.occur_time.as_ref());
        validate::text(&mut v, "defection.note", &d.note, MAX_LONG_TEXT, false);
        v.finish()?;
        d.id = String::new();
        d.occur_time = Some(to_timestamp(occurred_at));
        Ok(NewDefection {
            defection: d,
            occurred_at,
            channel: channel.unwrap_or_default(),
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}

/// A validated AnalyzeDefectionCauses: a period, open ends unbounded.
#[derive(Debug, Clone, Copy)]
pub struct DefectionQuery {
    /// From this instant (inclusive), microseconds.
    pub from_us: Option<i64>,
    /// Until this instant (exclusive), microseconds.
    pub until_us: Option<i64>,
}

impl TryFrom<pb::AnalyzeDefectionCausesRequest> for DefectionQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::AnalyzeDefectionCausesRequest) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        let (from, until) = period(&mut v, "period", req.period.as_ref(), false);
        v.finish()?;
        Ok(DefectionQuery {
            from_us: from.map(|t| t.timestamp_micros()),
            until_us: until.map(|t| t.timestamp_micros()),
        })
    }
}
