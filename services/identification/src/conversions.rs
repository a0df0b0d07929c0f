//! Protobuf ↔ domain for identification: requests are validated while
//! they are converted.

use crm_proto::{
    common::v1::{Channel, Date},
    identification::v1::{self as pb, IdentifierType, PartyType},
};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    validate,
};
use prost::Message;

use crate::domain::{Normalized, Rejection, normalize};

/// Most identifiers in one request.
pub const MAX_IDENTIFIERS: usize = 20;

/// A validated ResolveIdentity.
#[derive(Debug, Clone)]
pub struct ResolveCommand {
    /// Usable identifiers, normalised, without duplicates, in request order.
    pub identifiers: Vec<Normalized>,
    /// Attributes to match on and apply.
    pub attributes: pb::ProfileAttributes,
    /// Channel of the touchpoint.
    pub channel: Channel,
    /// Acquisition for a new prospect.
    pub acquisition: pb::Acquisition,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint of the request.
    pub fingerprint: i64,
}

impl ResolveCommand {
    /// Validate and normalise a request; `region` is the default phone region.
    pub fn from_request(req: pb::ResolveIdentityRequest, region: &str) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        if req.identifiers.is_empty() {
            v.add("identifiers", "at least one identifier");
        } else if req.identifiers.len() > MAX_IDENTIFIERS {
            v.add("identifiers", format!("at most {MAX_IDENTIFIERS}"));
        }
        let mut identifiers: Vec<Normalized> = Vec::new();
        let mut blocked = 0;
        for (i, id) in req.identifiers.iter().enumerate().take(MAX_IDENTIFIERS) {
            let Some(kind) =
                validate::enumeration::<IdentifierType>(&mut v, &format!("identifiers[{i}].type"), id.r#type, true)
            else {
                continue;
            };
            match normalize(kind, &id.namespace, &id.value, region) {
                Ok(n) => {
                    if !identifiers.contains(&n) {
                        identifiers.push(n);
                    }
                }
                Err(Rejection::Invalid(why)) => v.add(format!("identifiers[{i}]"), why),
                Err(Rejection::Blocked) => blocked += 1,
            }
        }
        if identifiers.is_empty() && blocked > 0 && v.is_empty() {
            v.add("identifiers", "only placeholder or test values, which never identify a person");
        }
        let channel = validate::enumeration::<Channel>(&mut v, "channel", req.channel, false).unwrap_or_default();
        let attributes = req.attributes.unwrap_or_default();
        check_attributes(&mut v, "attributes", &attributes);
        let acquisition = req.acquisition.unwrap_or_default();
        validate::enumeration::<Channel>(&mut v, "acquisition.channel", acquisition.channel, false);
        validate::text(&mut v, "acquisition.campaign", &acquisition.campaign, 128, false);
        validate::text(&mut v, "acquisition.target_group", &acquisition.target_group, 128, false);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        Ok(ResolveCommand {
            identifiers,
            attributes,
            channel,
            acquisition,
            request_id: req.request_id,
            fingerprint: fp,
        })
    }
}

/// Validate the attributes a touchpoint offers.
pub fn check_attributes(v: &mut FieldViolations, field: &str, a: &pb::ProfileAttributes) {
    validate::enumeration::<PartyType>(v, &format!("{field}.party_type"), a.party_type, false);
    if let Some(n) = &a.name {
        for (part, value) in [
            ("given_name", &n.given_name),
            ("family_name", &n.family_name),
            ("middle_name", &n.middle_name),
            ("display_name", &n.display_name),
        ] {
            validate::text(v, &format!("{field}.name.{part}"), value, validate::MAX_SHORT_TEXT, false);
        }
    }
    if let Some(d) = &a.birth_date
        && !is_plausible_birth_date(d)
    {
        v.add(format!("{field}.birth_date"), "not a calendar date between 1900 and today");
    }
    if let Some(addr) = &a.address {
        if addr.lines.len() > 5 {
            v.add(format!("{field}.address.lines"), "at most 5 lines");
        }
        for (i, l) in addr.lines.iter().enumerate().take(5) {
            validate::text(v, &format!("{field}.address.lines[{i}]"), l, validate::MAX_SHORT_TEXT, false);
        }
        validate::text(v, &format!("{field}.address.locality"), &addr.locality, 128, false);
        validate::text(v, &format!("{field}.address.region"), &addr.region, 128, false);
        validate::text(v, &format!("{field}.address.postal_code"), &addr.postal_code, 32, false);
        let country_ok = addr.country_code.len() == 2 && addr.country_code.bytes().all(|b| b.is_ascii_uppercase());
        if !addr.country_code.is_empty() && !country_ok {
            v.add(format!("{field}.address.country_code"), "an ISO 3166-1 alpha-2 code such as ES");
        }
    }
    let locale_ok = a.locale.len() <= 35 && a.locale.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !a.locale.is_empty() && !locale_ok {
        v.add(format!("{field}.locale"), "a BCP 47 tag such as es-ES");
    }
    validate::attributes(v, &format!("{field}.traits"), &a.traits);
}

/// A full or partial date (year required; month and day may be 0).
fn is_plausible_birth_date(d: &Date) -> bool {
    use chrono::{Datelike, NaiveDate, Utc};
    let this_year = Utc::now().year();
    if !(1900..=this_year).contains(&d.year) || !(0..=12).contains(&d.month) || !(0..=31).contains(&d.day) {
        return false;
    }
    if d.month == 0 {
        return d.day == 0;
    }
    if d.day == 0 {
        return true;
    }
    NaiveDate::from_ymd_opt(d.year, d.month as u32, d.day as u32).is_some_and(|date| date <= Utc::now().date_naive())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birth_dates_may_be_partial_but_must_exist() {
        assert!(is_plausible_birth_date(&Date { year: 1990, month: 2, day: 28 }));
        assert!(is_plausible_birth_date(&Date { year: 1990, month: 2, day: 0 }));
        assert!(is_plausible_birth_date(&Date { year: 1990, month: 0, day: 0 }));
        assert!(!is_plausible_birth_date(&Date { year: 1990, month: 2, day: 30 }));
        assert!(!is_plausible_birth_date(&Date { year: 1990, month: 0, day: 3 }));
        assert!(!is_plausible_birth_date(&Date { year: 1800, month: 1, day: 1 }));
        assert!(!is_plausible_birth_date(&Date { year: 9999, month: 1, day: 1 }));
    }

    #[test]
    fn duplicates_collapse_and_junk_alone_is_refused() {
        let id =
            |t: IdentifierType, v: &str| pb::Identifier { r#type: t as i32, value: v.into(), namespace: String::new() };
        let req = pb::ResolveIdentityRequest {
            identifiers: vec![id(IdentifierType::Email, "A@B.es"), id(IdentifierType::Email, "a@b.es ")],
            ..Default::default()
        };
        assert_eq!(ResolveCommand::from_request(req, "ES").unwrap().identifiers.len(), 1);
        let req = pb::ResolveIdentityRequest {
            identifiers: vec![id(IdentifierType::Email, "test@example.com")],
            ..Default::default()
        };
        assert!(ResolveCommand::from_request(req, "ES").is_err());
    }
}
