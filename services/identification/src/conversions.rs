//! Protobuf ↔ domain for identification: requests are validated while
//! they are converted.

use crm_proto::{
    common::v1::{Channel, Date},
    identification::v1::{self as pb, IdentifierType, LifecycleStage, PartyType},
};
use crm_runtime::{
    error::{FieldViolations, RuntimeError},
    idempotency::{check_request_id, fingerprint},
    page, validate,
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

/// A validated ListProfiles.
#[derive(Debug, Clone)]
pub struct ProfileQuery {
    /// Page size.
    pub page_size: u64,
    /// Keyset cursor: the last id of the previous page.
    pub after_id: Option<String>,
    /// Only this stage.
    pub lifecycle_stage: Option<LifecycleStage>,
    /// Only this target group.
    pub target_group: Option<String>,
    /// Only updated at or after, µs.
    pub updated_since_us: Option<i64>,
    /// Only with this trait key.
    pub trait_key: Option<String>,
}

impl TryFrom<pb::ListProfilesRequest> for ProfileQuery {
    type Error = RuntimeError;

    fn try_from(req: pb::ListProfilesRequest) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        let page_size = page::page_size(&mut v, req.page_size);
        let after_id = page::decode_token(&mut v, &req.page_token);
        let lifecycle_stage =
            validate::enumeration::<LifecycleStage>(&mut v, "lifecycle_stage", req.lifecycle_stage, false);
        validate::text(&mut v, "target_group", &req.target_group, 128, false);
        let updated_since_us =
            validate::timestamp(&mut v, "updated_since", req.updated_since.as_ref()).map(|t| t.timestamp_micros());
        if !req.trait_key.is_empty() && !is_trait_key(&req.trait_key) {
            v.add("trait_key", "1..64 of A-Z a-z 0-9 _ . : -");
        }
        v.finish()?;
        Ok(ProfileQuery {
            page_size,
            after_id,
            lifecycle_stage,
            target_group: (!req.target_group.is_empty()).then_some(req.target_group),
            updated_since_us,
            trait_key: (!req.trait_key.is_empty()).then_some(req.trait_key),
        })
    }
}

/// Whether `k` is a valid trait key.
pub fn is_trait_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= validate::MAX_ATTRIBUTE_KEY
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

/// A validated UpdateProfile.
#[derive(Debug, Clone)]
pub struct UpdateCommand {
    /// The profile with new values (its id names it; its etag, if set, must match).
    pub profile: pb::Profile,
    /// Paths to update.
    pub paths: Vec<String>,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint.
    pub fingerprint: i64,
}

impl TryFrom<pb::UpdateProfileRequest> for UpdateCommand {
    type Error = RuntimeError;

    fn try_from(req: pb::UpdateProfileRequest) -> Result<Self, RuntimeError> {
        let fp = fingerprint(&req.encode_to_vec());
        let mut v = FieldViolations::new();
        let profile = req.profile.unwrap_or_default();
        validate::id(&mut v, "profile.id", &profile.id);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            v.add("update_mask", "name the fields to update");
        }
        for (i, p) in paths.iter().enumerate() {
            if !crate::domain::profile::UPDATABLE_PATHS.contains(&p.as_str()) {
                v.add(
                    format!("update_mask.paths[{i}]"),
                    format!("one of {}", crate::domain::profile::UPDATABLE_PATHS.join(", ")),
                );
            }
        }
        let as_attributes = pb::ProfileAttributes {
            party_type: profile.party_type,
            name: profile.name.clone(),
            birth_date: profile.birth_date,
            address: None,
            locale: profile.locale.clone(),
            traits: profile.traits.clone(),
        };
        check_attributes(&mut v, "profile", &as_attributes);
        if profile.addresses.len() > crate::domain::MAX_ADDRESSES {
            v.add("profile.addresses", format!("at most {}", crate::domain::MAX_ADDRESSES));
        }
        for (i, a) in profile.addresses.iter().enumerate().take(crate::domain::MAX_ADDRESSES) {
            let one = pb::ProfileAttributes { address: Some(a.clone()), ..Default::default() };
            let mut inner = FieldViolations::new();
            check_attributes(&mut inner, "x", &one);
            for (field, why) in inner.violations() {
                v.add(field.replacen("x.address", &format!("profile.addresses[{i}]"), 1), why.clone());
            }
        }
        validate::enumeration::<LifecycleStage>(&mut v, "profile.lifecycle_stage", profile.lifecycle_stage, false);
        if let Some(a) = &profile.acquisition {
            validate::enumeration::<Channel>(&mut v, "profile.acquisition.channel", a.channel, false);
            validate::text(&mut v, "profile.acquisition.campaign", &a.campaign, 128, false);
            validate::text(&mut v, "profile.acquisition.target_group", &a.target_group, 128, false);
        }
        validate::text(&mut v, "profile.etag", &profile.etag, 64, false);
        check_request_id(&mut v, &req.request_id);
        v.finish()?;
        Ok(UpdateCommand { profile, paths, request_id: req.request_id, fingerprint: fp })
    }
}

/// Validated identifiers to add to or remove from a profile.
#[derive(Debug, Clone)]
pub struct IdentifiersCommand {
    /// The profile.
    pub profile_id: String,
    /// Normalised identifiers.
    pub identifiers: Vec<Normalized>,
    /// Idempotency key.
    pub request_id: String,
    /// Fingerprint.
    pub fingerprint: i64,
}

impl IdentifiersCommand {
    /// Validate and normalise (`region`: default phone region). Placeholder
    /// values are refused here: nobody should attach them on purpose.
    pub fn new(
        profile_id: String,
        ids: &[pb::Identifier],
        request_id: String,
        fp: i64,
        region: &str,
    ) -> Result<Self, RuntimeError> {
        let mut v = FieldViolations::new();
        validate::id(&mut v, "profile_id", &profile_id);
        if ids.is_empty() {
            v.add("identifiers", "at least one identifier");
        } else if ids.len() > MAX_IDENTIFIERS {
            v.add("identifiers", format!("at most {MAX_IDENTIFIERS}"));
        }
        let mut identifiers: Vec<Normalized> = Vec::new();
        for (i, id) in ids.iter().enumerate().take(MAX_IDENTIFIERS) {
            let Some(kind) =
                validate::enumeration::<IdentifierType>(&mut v, &format!("identifiers[{i}].type"), id.r#type, true)
            else {
                continue;
            };
            match normalize(kind, &id.namespace, &id.value, region) {
                Ok(n) if !identifiers.contains(&n) => identifiers.push(n),
                Ok(_) => {}
                Err(Rejection::Invalid(why)) => v.add(format!("identifiers[{i}]"), why),
                Err(Rejection::Blocked) => v.add(format!("identifiers[{i}]"), "a placeholder or test value"),
            }
        }
        check_request_id(&mut v, &request_id);
        v.finish()?;
        Ok(IdentifiersCommand { profile_id, identifiers, request_id, fingerprint: fp })
    }
}

/// Whether a birth date is accepted: a full or partial calendar date
/// (year required; month and day may be 0) between 1900 and today.
pub fn is_plausible_birth_date(d: &Date) -> bool {
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
