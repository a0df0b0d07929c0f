//! Pure identification logic: identifier normalisation and guardrails,
//! how a touchpoint's attributes update a profile, and which profile a set
//! of matches points to. No I/O.

pub mod matching;
pub mod merge;
pub mod normalize;
pub mod profile;

use crm_proto::identification::v1::{IdentifierType, Profile, ProfileAttributes};

pub use normalize::{Normalized, Rejection, normalize};

/// Most addresses kept on a profile.
pub const MAX_ADDRESSES: usize = 5;

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

/// Of the profiles the identifiers matched, the one the strongest
/// identifier points to (ties: the first given). `matches` pairs each
/// matched identifier with its profile id.
pub fn choose_profile(matches: &[(Normalized, String)]) -> Option<&(Normalized, String)> {
    let mut best: Option<&(Normalized, String)> = None;
    for m in matches {
        if best.is_none_or(|b| normalize::priority(m.0.kind) > normalize::priority(b.0.kind)) {
            best = Some(m);
        }
    }
    best
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

    fn id(kind: IdentifierType, v: &str) -> Normalized {
        Normalized { kind, namespace: String::new(), value: v.into() }
    }

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

    #[test]
    fn the_strongest_identifier_decides() {
        let matches = vec![
            (id(IdentifierType::Cookie, "c"), "p-cookie".to_owned()),
            (id(IdentifierType::Email, "e"), "p-email".to_owned()),
            (id(IdentifierType::Phone, "p"), "p-phone".to_owned()),
        ];
        assert_eq!(choose_profile(&matches).map(|m| m.1.as_str()), Some("p-email"));
        assert!(choose_profile(&[]).is_none());
    }
}
