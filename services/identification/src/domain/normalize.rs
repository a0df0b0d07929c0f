//! Identifier normalisation: the same person's identifier written two ways
//! must compare equal, and junk must never link two people.

use crm_proto::identification::v1::IdentifierType;

/// A normalised identifier: the key of the unique index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Normalized {
    /// Type.
    pub kind: IdentifierType,
    /// Namespace (external ids, social handles); empty otherwise.
    pub namespace: String,
    /// Normalised value.
    pub value: String,
}

/// Why an identifier cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed for its type; the text says how.
    Invalid(&'static str),
    /// A placeholder or test value that would link strangers.
    Blocked,
}

/// Longest identifier value accepted.
pub const MAX_VALUE: usize = 256;

/// Values that people and systems type when they have nothing to give.
const JUNK: &[&str] = &[
    "null",
    "none",
    "nil",
    "n/a",
    "na",
    "unknown",
    "anonymous",
    "undefined",
    "test",
    "xxx",
    "-",
    "0",
    "noemail",
    "no-email",
    "sinemail",
    "nomail",
];

/// Email domains and addresses reserved for examples and tests.
const JUNK_EMAIL_DOMAINS: &[&str] = &["example.com", "example.org", "example.net", "test.com", "email.com", "invalid"];

fn is_junk(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    JUNK.contains(&v.as_str()) || (v.len() >= 5 && v.chars().all(|c| c == v.chars().next().unwrap_or(' ')))
}

/// Normalise `value` of type `kind` (with `namespace` where the type needs
/// one); `region` is the default country for phone numbers.
pub fn normalize(kind: IdentifierType, namespace: &str, value: &str, region: &str) -> Result<Normalized, Rejection> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Rejection::Invalid("required"));
    }
    if value.chars().count() > MAX_VALUE {
        return Err(Rejection::Invalid("too long"));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::Invalid("must not contain control characters"));
    }
    let needs_namespace = matches!(kind, IdentifierType::ExternalId | IdentifierType::SocialHandle);
    let namespace = namespace.trim().to_ascii_lowercase();
    if needs_namespace
        && (namespace.is_empty()
            || namespace.len() > 64
            || !namespace.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
    {
        return Err(Rejection::Invalid("namespace of 1..64 of a-z 0-9 _ . - is required for this type"));
    }
    let namespace = if needs_namespace { namespace } else { String::new() };
    // Placeholders are junk whatever the type's syntax says of them.
    let compact: String = value.chars().filter(|c| !c.is_whitespace() && !"-.+()".contains(*c)).collect();
    if is_junk(&compact) {
        return Err(Rejection::Blocked);
    }
    let value = match kind {
        IdentifierType::Unspecified => return Err(Rejection::Invalid("type is required")),
        IdentifierType::Email => email(value)?,
        IdentifierType::Phone => phone(value, region)?,
        IdentifierType::SocialHandle => value.trim_start_matches('@').to_lowercase(),
        IdentifierType::LoyaltyCard | IdentifierType::CustomerNumber => {
            value.chars().filter(|c| !c.is_whitespace() && *c != '-').collect::<String>().to_uppercase()
        }
        IdentifierType::ExternalId | IdentifierType::DeviceId | IdentifierType::Cookie => value.to_owned(),
    };
    if value.is_empty() {
        return Err(Rejection::Invalid("required"));
    }
    if is_junk(&value) {
        return Err(Rejection::Blocked);
    }
    Ok(Normalized { kind, namespace, value })
}

/// Lower-case, trimmed, syntactically plausible address.
fn email(value: &str) -> Result<String, Rejection> {
    let v = value.to_lowercase();
    let (local, domain) = v.rsplit_once('@').ok_or(Rejection::Invalid("not an email address"))?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| !c.is_whitespace() && c != '<' && c != '>' && c != ',' && c != ';');
    let domain_ok = domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if !local_ok || !domain_ok || v.len() > 254 {
        return Err(Rejection::Invalid("not an email address"));
    }
    if JUNK_EMAIL_DOMAINS.contains(&domain) || is_junk(local) {
        return Err(Rejection::Blocked);
    }
    Ok(v)
}

/// E.164, parsed with the region's numbering plan.
fn phone(value: &str, region: &str) -> Result<String, Rejection> {
    let region = region.parse::<phonenumber::country::Id>().ok();
    let number = phonenumber::parse(region, value).map_err(|_| Rejection::Invalid("not a phone number"))?;
    if !phonenumber::is_valid(&number) {
        return Err(Rejection::Invalid("not a valid phone number for its region"));
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Priority of identifier types when identifiers point at different
/// profiles: the strongest evidence of identity wins. Higher is stronger.
pub fn priority(kind: IdentifierType) -> u8 {
    match kind {
        IdentifierType::CustomerNumber => 9,
        IdentifierType::ExternalId => 8,
        IdentifierType::LoyaltyCard => 7,
        IdentifierType::Email => 6,
        IdentifierType::Phone => 5,
        IdentifierType::SocialHandle => 4,
        IdentifierType::DeviceId => 2,
        IdentifierType::Cookie => 1,
        IdentifierType::Unspecified => 0,
    }
}

/// Whether an identifier is anonymous (says nothing about who the person is).
pub fn is_anonymous(kind: IdentifierType) -> bool {
    matches!(kind, IdentifierType::DeviceId | IdentifierType::Cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(kind: IdentifierType, ns: &str, v: &str) -> Result<String, Rejection> {
        normalize(kind, ns, v, "ES").map(|n| n.value)
    }

    #[test]
    fn emails_fold_case_and_whitespace() {
        assert_eq!(n(IdentifierType::Email, "", "  Ana.Garcia@Correo.ES "), Ok("ana.garcia@correo.es".into()));
        assert_eq!(n(IdentifierType::Email, "", "ana@correo"), Err(Rejection::Invalid("not an email address")));
        assert_eq!(n(IdentifierType::Email, "", "ana"), Err(Rejection::Invalid("not an email address")));
        assert_eq!(n(IdentifierType::Email, "", "a b@c.es"), Err(Rejection::Invalid("not an email address")));
        assert_eq!(n(IdentifierType::Email, "", "a..b@c.es"), Err(Rejection::Invalid("not an email address")));
    }

    #[test]
    fn phones_become_e164_with_the_default_region() {
        assert_eq!(n(IdentifierType::Phone, "", "612 34 56 78"), Ok("+34612345678".into()));
        assert_eq!(n(IdentifierType::Phone, "", "+34 612-345-678"), Ok("+34612345678".into()));
        assert_eq!(n(IdentifierType::Phone, "", "0034612345678"), Ok("+34612345678".into()));
        assert_eq!(
            normalize(IdentifierType::Phone, "", "912 345 678", "PT").map(|n| n.value),
            Ok("+351912345678".into())
        );
        assert!(matches!(n(IdentifierType::Phone, "", "12"), Err(Rejection::Invalid(_))));
        assert!(matches!(n(IdentifierType::Phone, "", "not a phone"), Err(Rejection::Invalid(_))));
    }

    #[test]
    fn junk_is_blocked() {
        assert_eq!(n(IdentifierType::Email, "", "test@example.com"), Err(Rejection::Blocked));
        assert_eq!(n(IdentifierType::Email, "", "null@correo.es"), Err(Rejection::Blocked));
        assert_eq!(n(IdentifierType::CustomerNumber, "", "0000000"), Err(Rejection::Blocked));
        assert_eq!(n(IdentifierType::Cookie, "", "anonymous"), Err(Rejection::Blocked));
        assert_eq!(n(IdentifierType::ExternalId, "erp", "NULL"), Err(Rejection::Blocked));
        assert_eq!(n(IdentifierType::Phone, "", "000 000 000"), Err(Rejection::Blocked));
    }

    #[test]
    fn namespaces_are_required_where_they_disambiguate() {
        assert!(matches!(n(IdentifierType::ExternalId, "", "42"), Err(Rejection::Invalid(_))));
        assert_eq!(
            normalize(IdentifierType::ExternalId, " ERP ", "A-42", "ES"),
            Ok(Normalized { kind: IdentifierType::ExternalId, namespace: "erp".into(), value: "A-42".into() })
        );
        assert_eq!(normalize(IdentifierType::Email, "ignored", "a@b.es", "ES").map(|n| n.namespace), Ok(String::new()));
        assert_eq!(n(IdentifierType::SocialHandle, "instagram", "@Ana_G"), Ok("ana_g".into()));
        assert_eq!(n(IdentifierType::LoyaltyCard, "", "ab 12-34"), Ok("AB1234".into()));
    }

    #[test]
    fn priorities_put_strong_identifiers_first() {
        assert!(priority(IdentifierType::CustomerNumber) > priority(IdentifierType::Email));
        assert!(priority(IdentifierType::Email) > priority(IdentifierType::Phone));
        assert!(priority(IdentifierType::Phone) > priority(IdentifierType::Cookie));
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(local in "[a-zA-Z0-9._%+-]{1,20}", domain in "[a-zA-Z0-9-]{1,20}\\.(es|pt|com|cat)") {
            let raw = format!("{local}@{domain}");
            if let Ok(once) = normalize(IdentifierType::Email, "", &raw, "ES") {
                let twice = normalize(IdentifierType::Email, "", &once.value, "ES").unwrap();
                prop_assert_eq!(once, twice);
            }
        }

        #[test]
        fn email_case_and_padding_never_matter(local in "[a-z0-9]{2,20}", domain in "[a-z0-9]{2,20}\\.es", pad in " {0,3}") {
            let plain = normalize(IdentifierType::Email, "", &format!("{local}@{domain}"), "ES");
            let noisy = normalize(IdentifierType::Email, "", &format!("{pad}{}@{}{pad}", local.to_uppercase(), domain.to_uppercase()), "ES");
            prop_assert_eq!(plain, noisy);
        }

        #[test]
        fn arbitrary_input_never_panics(kind in 0i32..9, ns in ".{0,70}", value in ".{0,300}") {
            let kind = IdentifierType::try_from(kind).unwrap_or(IdentifierType::Unspecified);
            let _ = normalize(kind, &ns, &value, "ES");
        }

        #[test]
        fn spanish_mobiles_in_any_format_agree(d in 600_000_000u64..699_999_999) {
            let s = d.to_string();
            let spaced = format!("{} {} {} {}", &s[0..3], &s[3..5], &s[5..7], &s[7..9]);
            let a = normalize(IdentifierType::Phone, "", &s, "ES");
            let b = normalize(IdentifierType::Phone, "", &format!("+34{spaced}"), "ES");
            prop_assert_eq!(a, b);
        }
    }
}
