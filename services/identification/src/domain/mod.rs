//! Pure identification logic: identifier normalisation and guardrails,
//! how a touchpoint's attributes update a profile, and which profile a set
//! of matches points to. No I/O.

pub mod matching;
pub mod merge;
pub mod normalize;
pub mod profile;

use crm_proto::identification::v1::{IdentifierType, PersonName, Profile, ProfileAttributes};

pub use normalize::{Normalized, Rejection, normalize};

/// Most addresses kept on a profile.
pub const MAX_ADDRESSES: usize = 5;

/// What a touchpoint recognised only by probabilistic evidence may change:
/// the fields the profile lacks (its spelling of a name may be the typo).
pub fn fill_attributes(profile: &mut Profile, attrs: &ProfileAttributes) -> Vec<&'static str> {
    let mut gaps = ProfileAttributes::default();
    let name = profile.name.clone().unwrap_or_default();
    if let Some(given) = &attrs.name {
        let keep = |have: &String, new: &String| if have.is_empty() { new.clone() } else { have.clone() };
        gaps.name = Some(PersonName {
            given_name: keep(&name.given_name, &given.given_name),
            family_name: keep(&name.family_name, &given.family_name),
            middle_name: keep(&name.middle_name, &given.middle_name),
            display_name: keep(&name.display_name, &given.display_name),
        });
    }
    if profile.birth_date.is_none_or(|d| d.year == 0) {
        gaps.birth_date = attrs.birth_date;
    }
    if profile.addresses.is_empty() {
        gaps.address = attrs.address.clone();
    }
    if profile.locale.is_empty() {
        gaps.locale.clone_from(&attrs.locale);
    }
    gaps.traits = attrs
        .traits
        .iter()
        .filter(|(k, _)| !profile.traits.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    apply_attributes(profile, &gaps)
}

/// Apply what a touchpoint said about the person; returns the names of the
/// fields that changed. Given values win (the latest contact is the most
/// recent evidence); absent ones never erase what is known.
pub fn apply_attributes(profile: &mut Profile, attrs: &ProfileAttributes) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if attrs.party_type != 0 && attrs.party_type != profile.party_type {
        profile.party_type = attrs.party_type;
        changed.push("party_type");
    }
    if let Some(given) = &attrs.name {
        let name = profile.name.get_or_insert_with(Default::default);
        let mut name_changed = false;
        for (new, old) in [
            (&given.given_name, &mut name.given_name),
            (&given.family_name, &mut name.family_name),
            (&given.middle_name, &mut name.middle_name),
            (&given.display_name, &mut name.display_name),
        ] {
            if !new.is_empty() && new != old {
                old.clone_from(new);
                name_changed = true;
            }
        }
        if name_changed {
            changed.push("name");
        }
    }
    if let Some(date) = &attrs.birth_date
        && date.year != 0
        && profile.birth_date.as_ref() != Some(date)
    {
        profile.birth_date = Some(*date);
        changed.push("birth_date");
    }
    if let Some(address) = &attrs.address
        && *address != Default::default()
        && profile.addresses.first() != Some(address)
    {
        profile.addresses.retain(|a| a != address);
        profile.addresses.insert(0, address.clone());
        profile.addresses.truncate(MAX_ADDRESSES);
        changed.push("addresses");
    }
    if !attrs.locale.is_empty() && attrs.locale != profile.locale {
        profile.locale.clone_from(&attrs.locale);
        changed.push("locale");
    }
    let mut traits_changed = false;
    for (k, v) in &attrs.traits {
        if profile.traits.get(k) != Some(v) {
            profile.traits.insert(k.clone(), v.clone());
            traits_changed = true;
        }
    }
    if traits_changed {
        changed.push("traits");
    }
    changed
}

/// Whether every identifier is anonymous (cookie, device).
pub fn all_anonymous(ids: &[Normalized]) -> bool {
    ids.iter().all(|n| normalize::is_anonymous(n.kind))
}

/// The identifier type of a stored code.
pub fn identifier_type(code: i32) -> IdentifierType {
    IdentifierType::try_from(code).unwrap_or(IdentifierType::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::{
        common::v1::{Date, TraitValue, trait_value},
        identification::v1::{PersonName, PostalAddress},
    };

    #[test]
    fn given_values_update_and_absent_ones_keep() {
        let mut p = Profile {
            name: Some(PersonName { given_name: "Ana".into(), family_name: "García".into(), ..Default::default() }),
            locale: "es-ES".into(),
            ..Default::default()
        };
        let attrs = ProfileAttributes {
            name: Some(PersonName { family_name: "García López".into(), ..Default::default() }),
            birth_date: Some(Date { year: 1990, month: 5, day: 17 }),
            ..Default::default()
        };
        assert_eq!(apply_attributes(&mut p, &attrs), ["name", "birth_date"]);
        let name = p.name.as_ref().unwrap();
        assert_eq!((name.given_name.as_str(), name.family_name.as_str()), ("Ana", "García López"));
        assert_eq!(p.locale, "es-ES");
        assert!(apply_attributes(&mut p, &attrs).is_empty(), "applying the same again changes nothing");
    }

    #[test]
    fn new_addresses_go_first_and_old_ones_are_kept() {
        let a = PostalAddress { locality: "Girona".into(), ..Default::default() };
        let b = PostalAddress { locality: "Porto".into(), ..Default::default() };
        let mut p = Profile::default();
        apply_attributes(&mut p, &ProfileAttributes { address: Some(a.clone()), ..Default::default() });
        apply_attributes(&mut p, &ProfileAttributes { address: Some(b.clone()), ..Default::default() });
        assert_eq!(p.addresses, vec![b.clone(), a.clone()]);
        apply_attributes(&mut p, &ProfileAttributes { address: Some(a.clone()), ..Default::default() });
        assert_eq!(p.addresses, vec![a, b]);
    }

    #[test]
    fn traits_merge() {
        let mut p = Profile::default();
        let t = |v: i64| TraitValue { kind: Some(trait_value::Kind::IntValue(v)) };
        let attrs = ProfileAttributes { traits: [("kids".to_owned(), t(2))].into(), ..Default::default() };
        assert_eq!(apply_attributes(&mut p, &attrs), ["traits"]);
        assert!(apply_attributes(&mut p, &attrs).is_empty());
    }
}
