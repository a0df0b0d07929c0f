//! The household guardrail. People who live together share an address,
//! often a landline and surnames, so on those fields a spouse, a parent or
//! child, a sibling or a twin looks like a duplicate of the same person, and
//! field-independent weights would add that agreement up as overwhelming
//! evidence. What tells them apart is personal: the given name and the
//! birth date (and a personal e-mail address).
//!
//! A record contradicts another (is taken for a housemate, not the same
//! person) unless the same e-mail vouches for it, when:
//! - the birth dates are different (a parent and child may share a given
//!   name);
//! - or the given names are different, unless the birth date pins the
//!   person down and the names still look alike: the dates agree (exactly,
//!   with day and month transposed, in year and month, or with one digit
//!   off) and the names start with the same letter and keep a Jaro–Winkler
//!   similarity of at least [`MISTYPED_NAME`]. A badly mistyped `ana` /
//!   `aqa` or `clara` / `clfa` born the same day is the same person, while
//!   twins bear names that differ from the first letter (`ana` / `beatriz`)
//!   or throughout (`marta` / `merce`).
//!
//! A missing value contradicts nothing.

use super::{
    Record,
    compare::{ComparisonVector, Field, birth_date, compare, email, given},
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
    if matches!(level(Field::Email), email::EXACT | email::SAME_LOCAL) {
        return false;
    }
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
    birth_level == birth_date::DIFFERENT || (given_level == given::DIFFERENT && !(date_agrees && alike()))
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
    fn missing_values_contradict_nothing() {
        let carmen = person("carmen", "sanchez ramirez", Some((1975, 7, 15)), "");
        assert!(!contradicts_person(&person("carmen", "sanchez ramirez", None, ""), &carmen));
        assert!(!contradicts_person(&person("", "sanchez ramirez", Some((1975, 7, 15)), ""), &carmen));
    }

    #[test]
    fn the_same_personal_email_vouches() {
        let head = person("juan", "garcia lopez", Some((1970, 3, 4)), "jgl@example.com");
        assert!(!contradicts_person(&person("lucia", "garcia lopez", Some((1972, 8, 19)), "jgl@example.com"), &head));
    }
}
