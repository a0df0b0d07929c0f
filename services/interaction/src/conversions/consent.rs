//! Consent, contact policy and EvaluateContact.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use crm_proto::{common::v1::Channel, interaction::v1 as pb};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    page, time, validate,
};
use prost::Message;

use crate::domain::contact::{ContactRequest, DEFAULT_TIME_ZONE, MINUTES_PER_DAY, Policy};

/// Longest etag accepted.
const MAX_ETAG: usize = 128;

/// A validated RecordConsent.
#[derive(Debug, Clone)]
pub struct NewConsent {
    /// The record as it will be stored (no id and record time yet).
    pub consent: pb::Consent,
    /// When a grant lapses.
    pub expires_at: Option<DateTime<Utc>>,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl TryFrom<pb::RecordConsentRequest> for NewConsent {
    type Error = RuntimeError;

    fn try_from(req: pb::RecordConsentRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        check_request_id(&mut v, &req.request_id);
        let Some(mut c) = req.consent else {
            v.add("consent", "required");
            return Err(RuntimeError::InvalidArgument(v));
        };
        validate::id(&mut v, "consent.customer_id", &c.customer_id);
        validate::enumeration::<Channel>(&mut v, "consent.channel", c.channel, true);
        validate::enumeration::<pb::Purpose>(&mut v, "consent.purpose", c.purpose, true);
        let state = validate::enumeration::<pb::ConsentState>(&mut v, "consent.state", c.state, true);
        let granted = state == Some(pb::ConsentState::Granted);
        validate::enumeration::<pb::LawfulBasis>(&mut v, "consent.lawful_basis", c.lawful_basis, granted);
        validate::text(&mut v, "consent.source", &c.source, validate::MAX_SHORT_TEXT, true);
        let expires_at = validate::timestamp(&mut v, "consent.expire_time", c.expire_time.as_ref());
        if let Some(e) = expires_at {
            if state == Some(pb::ConsentState::Withdrawn) {
                v.add("consent.expire_time", "a withdrawal does not expire");
            } else if e <= time::now() {
                v.add("consent.expire_time", "must be in the future");
            }
        }
        v.finish()?;
        c.id = String::new();
        c.record_time = None;
        Ok(NewConsent { consent: c, expires_at, request_id: req.request_id, fingerprint: fp })
    }
}

/// A validated ListConsents.
#[derive(Debug, Clone)]
pub struct ConsentPage {
    /// Customer.
    pub customer_id: String,
    /// Page size.
    pub page_size: u64,
    /// Keyset cursor: the sequence of the last record of the previous page.
    pub after_sequence: Option<i64>,
}

/// Encode a consent-history cursor.
pub fn consent_token(sequence: i64) -> String {
    page::encode_token(&sequence.to_string())
}

impl TryFrom<pb::ListConsentsRequest> for ConsentPage {
    type Error = RuntimeError;

    fn try_from(req: pb::ListConsentsRequest) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        validate::id(&mut v, "customer_id", &req.customer_id);
        let page_size = page::page_size(&mut v, req.page_size);
        let after_sequence = page::decode_token(&mut v, &req.page_token).and_then(|t| {
            let parsed = t.parse::<i64>().ok().filter(|s| *s >= 0);
            if parsed.is_none() {
                v.add("page_token", "not a token returned by this service");
            }
            parsed
        });
        v.finish()?;
        Ok(ConsentPage { customer_id: req.customer_id, page_size, after_sequence })
    }
}

/// A validated UpdateContactPolicy.
#[derive(Debug, Clone)]
pub struct PolicyUpdate {
    /// The policy as it will be stored (time zone filled in, no etag).
    pub policy: pb::ContactPolicy,
    /// The etag the caller saw, if it asked for a conditional update.
    pub expected_etag: Option<String>,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

fn minute(v: &mut FieldViolations, field: &str, value: i32) {
    v.require(
        (0..MINUTES_PER_DAY).contains(&value),
        field,
        format!("minutes after midnight, 0..{}", MINUTES_PER_DAY - 1),
    );
}

impl TryFrom<pb::UpdateContactPolicyRequest> for PolicyUpdate {
    type Error = RuntimeError;

    fn try_from(req: pb::UpdateContactPolicyRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        check_request_id(&mut v, &req.request_id);
        let Some(mut p) = req.policy else {
            v.add("policy", "required");
            return Err(RuntimeError::InvalidArgument(v));
        };
        validate::id(&mut v, "policy.customer_id", &p.customer_id);
        validate::enumeration::<Channel>(&mut v, "policy.preferred_channel", p.preferred_channel, false);
        if p.time_zone.is_empty() {
            p.time_zone = DEFAULT_TIME_ZONE.name().to_owned();
        } else if p.time_zone.len() > validate::MAX_SHORT_TEXT || p.time_zone.parse::<Tz>().is_err() {
            v.add("policy.time_zone", "an IANA time zone such as Europe/Madrid");
        }
        minute(&mut v, "policy.quiet_start_minute", p.quiet_start_minute);
        minute(&mut v, "policy.quiet_end_minute", p.quiet_end_minute);
        v.require(p.max_contacts_per_week >= 0, "policy.max_contacts_per_week", "must not be negative (0: no cap)");
        validate::text(&mut v, "policy.etag", &p.etag, MAX_ETAG, false);
        v.finish()?;
        let expected_etag = (!p.etag.is_empty()).then(|| std::mem::take(&mut p.etag));
        Ok(PolicyUpdate { policy: p, expected_etag, request_id: req.request_id, fingerprint: fp })
    }
}

/// The policy of a customer who never set one: no quiet hours, no cap,
/// Europe/Madrid; its etag is "0".
pub fn default_policy(customer_id: &str) -> pb::ContactPolicy {
    pb::ContactPolicy {
        customer_id: customer_id.to_owned(),
        preferred_channel: 0,
        time_zone: DEFAULT_TIME_ZONE.name().to_owned(),
        quiet_start_minute: 0,
        quiet_end_minute: 0,
        max_contacts_per_week: 0,
        etag: "0".to_owned(),
    }
}

/// The domain view of a stored policy.
pub fn policy_from_pb(p: &pb::ContactPolicy) -> Result<Policy, RuntimeError> {
    let time_zone = p
        .time_zone
        .parse::<Tz>()
        .map_err(|_| RuntimeError::Internal(format!("stored time zone {:?} unknown", p.time_zone)))?;
    Ok(Policy {
        time_zone,
        quiet_start_minute: p.quiet_start_minute,
        quiet_end_minute: p.quiet_end_minute,
        max_contacts_per_week: p.max_contacts_per_week,
    })
}

/// A validated EvaluateContact.
#[derive(Debug, Clone)]
pub struct ContactQuery {
    /// Customer.
    pub customer_id: String,
    /// The contact asked about.
    pub request: ContactRequest,
}

impl TryFrom<pb::EvaluateContactRequest> for ContactQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::EvaluateContactRequest) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        validate::id(&mut v, "customer_id", &req.customer_id);
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, true);
        let purpose = validate::enumeration::<pb::Purpose>(&mut v, "purpose", req.purpose, true);
        let at = validate::timestamp(&mut v, "at_time", req.at_time.as_ref()).unwrap_or_else(time::now);
        v.finish()?;
        Ok(ContactQuery {
            customer_id: req.customer_id,
            request: ContactRequest { channel: channel.unwrap_or_default(), purpose: purpose.unwrap_or_default(), at },
        })
    }
}
