//! The household guardrail. People who live together share an address,
//! often a landline and surnames, so on those fields a spouse, a parent or
//! child, a sibling or a twin looks like a duplicate of the same person, and
//! field-independent weights would add that agreement up as overwhelming
//! evidence. What tells them apart is personal: the given name and the
//! birth date (and a personal e-mail address or mobile number).
//!
//! A record contradicts another (is taken for a housemate, not the same
//! person) unless the same e-mail vouches for it, or the same mobile number
//! with a family name that is not different (a mobile is personal, a fixed
//! line the household's; a mobile handed on to a stranger vouches for
//! nothing), when:
//! - the birth dates are different (a parent and child may share a given
//!   name), unless given and family name agree (the given name exactly or
//!   but for a typo that changes its length by at most one letter, unlike
//!   `victor` / `victoria`), so does the street or the phone, and the
//!   years are less than a generation apart: housemates do not share a
//!   full name unless they are a father and a son, so that is one person
//!   with a mistyped birth date;
//! - the family names are different, the given names not identical (or
//!   one missing) and the birth dates do not agree (a spouse called `maria`
//!   beside `mariana`; someone of another surname known only by the
//!   address, which is the household's);
//! - or the given names are different, unless the birth date pins the
//!   person down and the names still look alike: the dates agree (exactly,
//!   with day and month transposed, in year and month, or with one digit
//!   off) and the names start with the same letter and keep a Jaro–Winkler
//!   similarity of at least [`MISTYPED_NAME`]. A badly mistyped `ana` /
//!   `aqa` or `clara` / `clfa` born the same day is the same person, while
//!   twins bear names that differ from the first letter (`ana` / `beatriz`)
//!   or throughout (`marta` / `merce`).
//!
//! A missing value contradicts nothing by itself.

use super::{
    Record,
    compare::{ComparisonVector, Field, birth_date, compare, email, family, given, phone, street},
    text::{first_significant_letter, jaro_winkler},
};

/// Jaro–Winkler similarity from which two given names with the same initial
/// and birth date are taken for a mistyped one rather than for twins.
pub const MISTYPED_NAME: f64 = 0.7;

/// Whether `touch` describes someone other than `profile` on the personal
/// fields (see the module documentation).
pub fn contradicts_person(touch: &Record, profile: &Record) -> bool {
    contradicts_levels(compare(touch, profile), touch, profile)
}

/// [`contradicts_person`] for an already computed comparison.
pub fn contradicts_levels(levels: ComparisonVector, touch: &Record, profile: &Record) -> bool {
    let level = |f: Field| levels.level(f);
    let given_level = level(Field::GivenName);
    let birth_level = level(Field::BirthDate);
    let date_agrees = matches!(
        birth_level,
        birth_date::EXACT | birth_date::DAY_MONTH_SWAPPED | birth_date::YEAR_MONTH | birth_date::ONE_DIGIT
    );
    let alike = || {
        first_significant_letter(&touch.given_name)
            .is_some_and(|a| first_significant_letter(&profile.given_name) == Some(a))
            && jaro_winkler(&touch.given_name, &profile.given_name) >= MISTYPED_NAME
    };
    let family_level = level(Field::FamilyName);
    // A typo changes a name's length by at most one letter; `victor` and
    // `victoria` are siblings' names.
    let one_typo_apart = || touch.given_name.len().abs_diff(profile.given_name.len()) <= 1;
    // The same full name at the same address or landline, born less than
    // a generation apart: a mistyped birth date, not a housemate (housemates
    // do not share given and family name, but a father and a son may).
    let same_name_at_home = || {
        !a_generation_apart(touch, profile)
            && (given_level == given::EXACT || (given_level == given::SIMILAR && one_typo_apart()))
            && matches!(family_level, family::EXACT | family::SIMILAR)
            && (matches!(level(Field::Street), street::EXACT | street::SIMILAR)
                || matches!(level(Field::Phone), phone::EXACT | phone::LAST7))
    };
    let contradicted = (birth_level == birth_date::DIFFERENT && !same_name_at_home())
        || (given_level == given::DIFFERENT && !(date_agrees && alike()))
        || (family_level == family::DIFFERENT && given_level != given::EXACT && !date_agrees);
    // What is personal vouches: the same e-mail, or the same mobile number
    // with the family name not different (a number the carrier gave a
    // stranger after its first holder let it go vouches for nothing; the
    // mobile is looked up last: it parses the number).
    contradicted
        && !(matches!(level(Field::Email), email::EXACT | email::SAME_LOCAL)
            || (level(Field::Phone) == phone::EXACT && family_level != family::DIFFERENT && is_mobile(&touch.phone)))
}

/// Whether an E.164 number is a mobile one by its country's numbering
/// plan: a mobile is personal, while a fixed line is the household's.
/// Numbers whose plan does not tell the two apart (`FixedLineOrMobile`)
/// are not taken for mobiles.
pub fn is_mobile(e164: &str) -> bool {
    phonenumber::parse(None, e164)
        .is_ok_and(|n| n.number_type(&phonenumber::metadata::DATABASE) == phonenumber::Type::Mobile)
}

/// Years between two births from which they are taken for a parent and a
/// child rather than for one mistyped date.
pub const GENERATION_YEARS: u32 = 12;

/// Born a generation apart, unless the two dates are at most two mistyped
/// digits apart (`1907-05-07` / `1987-07-07`), day and month swapped or
/// not (`1970-03-04` / `1990-04-03`). A parent's and a child's dates differ
/// in more digits but for about one pair in a few hundred.
fn a_generation_apart(a: &Record, b: &Record) -> bool {
    let (Some(da), Some(db)) = (a.birth_date, b.birth_date) else { return false };
    // The decimal digits of YYYYMMDD, compared place by place.
    let digits = |(y, m, d): (i32, u32, u32)| y.unsigned_abs() % 10_000 * 10_000 + m % 100 * 100 + d % 100;
    let apart = |x: u32, y: u32| (0..8).filter(|i| x / 10u32.pow(*i) % 10 != y / 10u32.pow(*i) % 10).count();
    let (y, m, d) = db;
    let typos = apart(digits(da), digits(db)).min(apart(digits(da), digits((y, d, m))));
    da.0.abs_diff(db.0) >= GENERATION_YEARS && typos > 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(given: &str, family: &str, born: Option<(i32, u32, u32)>, email: &str) -> Record {
        Record {
            given_name: given.into(),
            family_name: family.into(),
            birth_date: born,
            street: "calle mayor 5".into(),
            postcode: "28013".into(),
            locality: "madrid".into(),
            phone: "+34911234567".into(),
            email: email.into(),
        }
        .normalized()
    }

    #[test]
    fn a_spouse_or_child_is_someone_else() {
        let head = person("juan", "garcia lopez", Some((1970, 3, 4)), "");
        assert!(contradicts_person(&person("lucia", "martin ruiz", Some((1972, 8, 19)), ""), &head));
        assert!(contradicts_person(&person("pablo", "garcia martin", Some((1999, 1, 2)), ""), &head));
        // A different name and no birth date to go by.
        assert!(contradicts_person(&person("lucia", "garcia lopez", None, ""), &head));
    }

    #[test]
    fn a_sibling_with_a_similar_name_is_someone_else() {
        let maria = person("maria", "garcia lopez", Some((1980, 5, 6)), "");
        assert!(contradicts_person(&person("mario", "garcia lopez", Some((1984, 11, 23)), ""), &maria));
    }

    #[test]
    fn a_twin_is_someone_else() {
        let ana = person("ana", "garcia lopez", Some((1990, 7, 7)), "");
        assert!(contradicts_person(&person("beatriz", "garcia lopez", Some((1990, 7, 7)), ""), &ana));
        let marta = person("marta", "soler serra", Some((1955, 11, 8)), "");
        assert!(contradicts_person(&person("merce", "soler serra", Some((1955, 11, 8)), ""), &marta));
    }

    #[test]
    fn a_mistyped_name_with_the_same_birth_date_is_the_same_person() {
        let ana = person("ana", "garcia lopez", Some((1990, 3, 7)), "");
        for born in [(1990, 3, 7), (1990, 7, 3), (1990, 3, 1), (1991, 3, 7)] {
            assert!(!contradicts_person(&person("aqa", "garcia lopez", Some(born), ""), &ana), "{born:?}");
        }
        // Born another year, the initial does not help.
        assert!(contradicts_person(&person("aqa", "garcia lopez", Some((1996, 9, 21)), ""), &ana));
    }

    #[test]
    fn a_housemate_of_another_age_is_someone_else_even_with_the_same_name() {
        let mother = person("mariana", "ferreira vieira", Some((1965, 11, 3)), "");
        assert!(contradicts_person(&person("mariana", "antunes ferreira", Some((1995, 8, 10)), ""), &mother));
    }

    #[test]
    fn the_same_full_name_at_home_with_another_birth_date_is_a_typo() {
        let head = person("juan", "garcia lopez", Some((1970, 3, 4)), "");
        assert!(!contradicts_person(&person("juan", "garcia lopez", Some((1976, 8, 4)), ""), &head));
        let antonio = person("antonio", "garcia lopez", Some((1970, 3, 4)), "");
        assert!(!contradicts_person(&person("antonyo", "garcia lopez", Some((1976, 8, 4)), ""), &antonio));
        // Siblings with alike names.
        let victor = person("victor", "campos molina", Some((1975, 4, 30)), "");
        assert!(contradicts_person(&person("victoria", "campos molina", Some((1979, 5, 31)), ""), &victor));
        // A generation apart, a father and his son.
        assert!(contradicts_person(&person("juan", "garcia lopez", Some((1996, 9, 21)), ""), &head));
        assert!(contradicts_person(&person("juan", "garcia lopez", Some((2001, 3, 14)), ""), &head));
        // But a date two digits off, or one off with day and month swapped, is mistyped.
        assert!(!contradicts_person(&person("juan", "garcia lopez", Some((1950, 3, 5)), ""), &head));
        assert!(!contradicts_person(&person("juan", "garcia lopez", Some((1990, 4, 3)), ""), &head));
        // Elsewhere, it is a namesake of another age.
        let mut elsewhere = person("juan", "garcia lopez", Some((1976, 8, 4)), "");
        elsewhere.street = "avenida de america 3".into();
        elsewhere.phone.clear();
        assert!(contradicts_person(&elsewhere, &head));
    }

    #[test]
    fn a_spouse_with_a_similar_given_name_is_someone_else() {
        let maria = person("maria", "ferreira", None, "");
        assert!(contradicts_person(&person("mariana", "lourenco santos", None, ""), &maria));
        // The same given name and a different family name is left to the
        // weights, and so is a similar one born the same day.
        assert!(!contradicts_person(&person("maria", "lourenco santos", None, ""), &maria));
        let born = person("maria", "ferreira", Some((1980, 2, 3)), "");
        assert!(!contradicts_person(&person("mariana", "lourenco santos", Some((1980, 2, 3)), ""), &born));
    }

    #[test]
    fn someone_of_another_surname_known_only_by_the_address_is_someone_else() {
        let head = person("juan", "garcia lopez", Some((1970, 3, 4)), "");
        // No given name and no birth date: the address and the landline
        // are the household's.
        assert!(contradicts_person(&person("", "martin ruiz", None, ""), &head));
        assert!(contradicts_person(&person("", "martin ruiz", Some((1972, 8, 19)), ""), &head));
        // A birth date that agrees, or the same e-mail, is personal.
        assert!(!contradicts_person(&person("", "martin ruiz", Some((1970, 3, 4)), ""), &head));
        let with_mail = person("juan", "garcia lopez", None, "jgl@example.com");
        assert!(!contradicts_person(&person("", "martin ruiz", None, "jgl@example.com"), &with_mail));
    }

    #[test]
    fn missing_values_contradict_nothing() {
        let carmen = person("carmen", "sanchez ramirez", Some((1975, 7, 15)), "");
        assert!(!contradicts_person(&person("carmen", "sanchez ramirez", None, ""), &carmen));
        assert!(!contradicts_person(&person("", "sanchez ramirez", Some((1975, 7, 15)), ""), &carmen));
    }

    #[test]
    fn the_same_mobile_vouches_but_not_the_same_landline() {
        // A given name mistyped beyond recognition, born the same day at
        // the same address: a twin, unless the mobile is the same.
        let mut sara = person("sara", "herrera castillo", Some((1970, 1, 1)), "");
        let mut zaa = person("zaa", "herrera castillo", Some((1970, 1, 1)), "");
        assert!(contradicts_person(&zaa, &sara), "a landline is shared by the household");
        sara.phone = "+34613109270".into();
        zaa.phone = "+34613109270".into();
        assert!(!contradicts_person(&zaa, &sara));
        // Portugal's mobiles start with 9, its fixed lines with 2.
        sara.phone = "+351962311446".into();
        zaa.phone = "+351962311446".into();
        assert!(!contradicts_person(&zaa, &sara));
        sara.phone = "+351227297861".into();
        zaa.phone = "+351227297861".into();
        assert!(contradicts_person(&zaa, &sara));
        // Nor does a mobile given up and handed to someone of another family.
        let mut stranger = person("lucia", "martin ruiz", Some((1970, 1, 1)), "");
        sara.phone = "+34613109270".into();
        stranger.phone = "+34613109270".into();
        assert!(contradicts_person(&stranger, &sara));
        // A mobile one digit apart vouches for nothing.
        zaa.phone = "+34613109271".into();
        sara.phone = "+34613109270".into();
        assert!(contradicts_person(&zaa, &sara));
    }

    #[test]
    fn mobiles_are_told_from_fixed_lines_by_the_numbering_plan() {
        assert!(is_mobile("+34612345678"));
        assert!(is_mobile("+34712345678"));
        assert!(is_mobile("+351912345678"));
        assert!(!is_mobile("+34911234567"));
        assert!(!is_mobile("+351212345678"));
        assert!(!is_mobile(""));
        assert!(!is_mobile("not a number"));
    }

    #[test]
    fn the_same_personal_email_vouches() {
        let head = person("juan", "garcia lopez", Some((1970, 3, 4)), "jgl@example.com");
        assert!(!contradicts_person(&person("lucia", "garcia lopez", Some((1972, 8, 19)), "jgl@example.com"), &head));
    }
}
