//! Pure profile rules: field-mask updates, per-type identifier limits, and
//! what erasure leaves of a profile's events.

use crm_proto::identification::v1::{IdentifierType, Profile, ProfileEvent, profile_event::Kind};

use super::Normalized;

/// Paths an update mask may name.
pub const UPDATABLE_PATHS: &[&str] = &[
    "party_type",
    "name",
    "name.given_name",
    "name.family_name",
    "name.middle_name",
    "name.display_name",
    "birth_date",
    "addresses",
    "locale",
    "lifecycle_stage",
    "acquisition",
    "traits",
];

/// Copy the fields named by `paths` from `given` into `current`; returns
/// the top-level fields that changed. Paths must be in `UPDATABLE_PATHS`
/// (the caller validates them).
pub fn apply_mask(current: &mut Profile, given: &Profile, paths: &[String]) -> Vec<&'static str> {
    let before = current.clone();
    for path in paths {
        match path.as_str() {
            "party_type" => current.party_type = given.party_type,
            "name" => current.name = given.name.clone(),
            "birth_date" => current.birth_date = given.birth_date,
            "addresses" => current.addresses = given.addresses.clone(),
            "locale" => current.locale = given.locale.clone(),
            "lifecycle_stage" => current.lifecycle_stage = given.lifecycle_stage,
            "acquisition" => current.acquisition = given.acquisition.clone(),
            "traits" => current.traits = given.traits.clone(),
            sub if sub.starts_with("name.") => {
                let from = given.name.clone().unwrap_or_default();
                let name = current.name.get_or_insert_with(Default::default);
                match sub {
                    "name.given_name" => name.given_name = from.given_name,
                    "name.family_name" => name.family_name = from.family_name,
                    "name.middle_name" => name.middle_name = from.middle_name,
                    "name.display_name" => name.display_name = from.display_name,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let mut changed = Vec::new();
    let fields: [(&'static str, bool); 8] = [
        ("party_type", before.party_type != current.party_type),
        ("name", before.name != current.name),
        ("birth_date", before.birth_date != current.birth_date),
        ("addresses", before.addresses != current.addresses),
        ("locale", before.locale != current.locale),
        ("lifecycle_stage", before.lifecycle_stage != current.lifecycle_stage),
        ("acquisition", before.acquisition != current.acquisition),
        ("traits", before.traits != current.traits),
    ];
    for (name, differs) in fields {
        if differs {
            changed.push(name);
        }
    }
    changed
}

/// How many identifiers of a type one profile may hold: a second customer
/// number means a second person, while people do own several devices.
pub fn limit(kind: IdentifierType) -> usize {
    match kind {
        IdentifierType::CustomerNumber => 1,
        IdentifierType::ExternalId => 1,
        IdentifierType::LoyaltyCard => 3,
        IdentifierType::Email | IdentifierType::Phone => 5,
        IdentifierType::SocialHandle => 5,
        IdentifierType::DeviceId => 10,
        IdentifierType::Cookie => 50,
        IdentifierType::Unspecified => 0,
    }
}

/// The limit key: external ids and social handles are limited per namespace.
fn limit_key(n: &Normalized) -> (IdentifierType, &str) {
    match n.kind {
        IdentifierType::ExternalId | IdentifierType::SocialHandle => (n.kind, n.namespace.as_str()),
        _ => (n.kind, ""),
    }
}

/// Of `adding`, the identifiers that fit next to `held` within the
/// per-type limits (in order), and the ones that do not.
pub fn within_limits<'a>(held: &[Normalized], adding: &[&'a Normalized]) -> (Vec<&'a Normalized>, Vec<&'a Normalized>) {
    let mut fit = Vec::new();
    let mut over = Vec::new();
    for n in adding {
        let key = limit_key(n);
        let count = held.iter().filter(|h| limit_key(h) == key).count()
            + fit.iter().filter(|f: &&&Normalized| limit_key(f) == key).count();
        if count < limit(n.kind) { fit.push(*n) } else { over.push(*n) }
    }
    (fit, over)
}

/// Whether an identifier of a single-valued type (customer number, an
/// external id of a namespace) contradicts one the profile holds: the same
/// type with another value is another person.
pub fn contradicts(held: &[Normalized], candidate: &Normalized) -> bool {
    limit(candidate.kind) == 1
        && held.iter().any(|h| limit_key(h) == limit_key(candidate) && h.value != candidate.value)
}

/// What an event keeps once its profile is erased: ids, kinds and times;
/// no names, dates, addresses, traits or identifiers.
pub fn redact(mut event: ProfileEvent) -> ProfileEvent {
    let strip = |p: &mut Option<Profile>| {
        if let Some(profile) = p {
            *profile = tombstone(profile);
        }
    };
    match &mut event.kind {
        Some(Kind::ProfileCreated(c)) => strip(&mut c.profile),
        Some(Kind::ProfileUpdated(u)) => strip(&mut u.profile),
        Some(Kind::IdentifiersChanged(c)) => {
            c.added.clear();
            c.removed.clear();
        }
        Some(Kind::ProfileMerged(_) | Kind::ProfileUnmerged(_) | Kind::ProfileErased(_)) | None => {}
    }
    event
}

/// The non-identifying remains of a profile.
pub fn tombstone(p: &Profile) -> Profile {
    Profile {
        id: p.id.clone(),
        party_type: p.party_type,
        lifecycle_stage: p.lifecycle_stage,
        create_time: p.create_time,
        update_time: p.update_time,
        etag: p.etag.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::{
        common::v1::Date,
        identification::v1::{Identifier, IdentifiersChanged, PersonName, ProfileCreated},
    };

    fn n(kind: IdentifierType, ns: &str, v: &str) -> Normalized {
        Normalized { kind, namespace: ns.into(), value: v.into() }
    }

    #[test]
    fn masks_copy_only_what_they_name() {
        let mut current = Profile {
            name: Some(PersonName { given_name: "Ana".into(), family_name: "García".into(), ..Default::default() }),
            locale: "es-ES".into(),
            ..Default::default()
        };
        let given = Profile {
            name: Some(PersonName { given_name: "Anna".into(), family_name: "IGNORED".into(), ..Default::default() }),
            locale: "IGNORED".into(),
            birth_date: Some(Date { year: 1990, month: 1, day: 2 }),
            ..Default::default()
        };
        let changed = apply_mask(&mut current, &given, &["name.given_name".into(), "birth_date".into()]);
        assert_eq!(changed, ["name", "birth_date"]);
        let name = current.name.as_ref().unwrap();
        assert_eq!((name.given_name.as_str(), name.family_name.as_str()), ("Anna", "García"));
        assert_eq!(current.locale, "es-ES");
        // Naming a field with an empty value clears it.
        let changed = apply_mask(&mut current, &Profile::default(), &["locale".into()]);
        assert_eq!(changed, ["locale"]);
        assert!(current.locale.is_empty());
        assert!(apply_mask(&mut current, &Profile::default(), &["locale".into()]).is_empty());
    }

    #[test]
    fn limits_are_per_type_and_namespace() {
        let held = vec![n(IdentifierType::CustomerNumber, "", "C1"), n(IdentifierType::ExternalId, "erp", "1")];
        let c2 = n(IdentifierType::CustomerNumber, "", "C2");
        let crm = n(IdentifierType::ExternalId, "crm", "9");
        let erp2 = n(IdentifierType::ExternalId, "erp", "2");
        let (fit, over) = within_limits(&held, &[&c2, &crm, &erp2]);
        assert_eq!(fit, vec![&crm]);
        assert_eq!(over, vec![&c2, &erp2]);
        let cookies: Vec<Normalized> = (0..60).map(|i| n(IdentifierType::Cookie, "", &format!("c{i}"))).collect();
        let refs: Vec<&Normalized> = cookies.iter().collect();
        assert_eq!(within_limits(&[], &refs).0.len(), limit(IdentifierType::Cookie));
    }

    #[test]
    fn a_second_customer_number_contradicts() {
        let held = vec![n(IdentifierType::CustomerNumber, "", "C1"), n(IdentifierType::Email, "", "a@b.es")];
        assert!(contradicts(&held, &n(IdentifierType::CustomerNumber, "", "C2")));
        assert!(!contradicts(&held, &n(IdentifierType::CustomerNumber, "", "C1")));
        assert!(!contradicts(&held, &n(IdentifierType::Email, "", "other@b.es")), "several emails are fine");
        assert!(!contradicts(&held, &n(IdentifierType::ExternalId, "erp", "7")));
    }

    #[test]
    fn redaction_leaves_no_personal_data() {
        let profile = Profile {
            id: "p".into(),
            name: Some(PersonName { given_name: "Ana".into(), ..Default::default() }),
            birth_date: Some(Date { year: 1990, month: 1, day: 2 }),
            ..Default::default()
        };
        let created = ProfileEvent {
            profile_id: "p".into(),
            sequence: 3,
            kind: Some(Kind::ProfileCreated(ProfileCreated { profile: Some(profile) })),
            ..Default::default()
        };
        let r = redact(created);
        assert_eq!(r.sequence, 3);
        match r.kind {
            Some(Kind::ProfileCreated(c)) => {
                assert_eq!(c.profile, Some(Profile { id: "p".into(), ..Default::default() }))
            }
            other => panic!("{other:?}"),
        }
        let changed = ProfileEvent {
            kind: Some(Kind::IdentifiersChanged(IdentifiersChanged {
                added: vec![Identifier { r#type: 1, value: "a@b.es".into(), namespace: String::new() }],
                removed: vec![],
            })),
            ..Default::default()
        };
        match redact(changed).kind {
            Some(Kind::IdentifiersChanged(c)) => assert!(c.added.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
