//! Term-frequency adjustment of the name weights (ID-4). Two strangers
//! called `maria` agree on the given name far more often than two called
//! `leocadia`, so agreeing on a common name is weaker evidence of one person
//! than agreeing on a rare one. The model's `m` and `u` give the weight of a
//! level averaged over all names; this module moves it for the name actually
//! shared, the way Splink's term-frequency adjustments do:
//!
//! `adjustment = log2(p̄ / p(value))`
//!
//! where `p(value)` is the share of records holding the value and `p̄` the
//! share averaged over records (`Σ p²`: the frequency of the value a random
//! pair of strangers agrees on, on average), so that the adjustment averages
//! to about zero over agreeing strangers. It applies to
//! - the `exact` given name level, by the frequency of the whole given name;
//! - the `exact` family name level, by the share of family names of as many
//!   words times the product of the frequencies of its surname words (two
//!   surnames are drawn about independently, and the product stays
//!   meaningful for combinations seen once);
//! - the `one_surname` family name level, by the frequency of the shared
//!   surname word.
//!
//! It is bounded by [`MAX_DOWN`] and [`MAX_UP`] bits: frequencies of rare
//! values are poorly estimated, and the fields are not independent.
//! Frequencies are counted from the stored records when the matcher is
//! trained ([`NameFrequencies::count`]) and kept with the model.

use std::collections::HashMap;

use super::Record;
use super::compare::{Field, family, given};
use super::text::significant_tokens;

/// Largest reduction of a name weight, in bits (a very common name).
pub const MAX_DOWN: f64 = 4.0;
/// Largest increase of a name weight, in bits (a rare name).
pub const MAX_UP: f64 = 2.0;
/// Values seen fewer times are not kept: a value not kept counts as seen
/// once.
pub const MIN_COUNT: u32 = 2;
/// At most this many values of each table are kept (the most frequent).
pub const MAX_VALUES: usize = 100_000;

/// How often each value of one kind occurs among the stored records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frequencies {
    /// Occurrences of each value seen at least [`MIN_COUNT`] times.
    pub(crate) counts: HashMap<String, u32>,
    /// Occurrences of all values.
    total: u64,
    /// `p̄`: the mean frequency of a value over the occurrences (`Σ p²`).
    mean: f64,
}

impl Frequencies {
    /// Count `values`.
    fn count<'a>(values: impl Iterator<Item = &'a str>) -> Frequencies {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        let mut total = 0u64;
        for v in values {
            *counts.entry(v).or_default() += 1;
            total += 1;
        }
        if total == 0 {
            return Frequencies::default();
        }
        let n = total as f64;
        let mean = counts.values().map(|&c| (c as f64 / n).powi(2)).sum();
        let mut kept: Vec<(&str, u64)> = counts.into_iter().filter(|&(_, c)| c >= u64::from(MIN_COUNT)).collect();
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        kept.truncate(MAX_VALUES);
        let counts = kept.into_iter().map(|(v, c)| (v.to_owned(), u32::try_from(c).unwrap_or(u32::MAX))).collect();
        Frequencies { counts, total, mean }
    }

    /// Share of the occurrences holding `value` (a value not kept counts as
    /// seen once); `None` when nothing was counted.
    pub fn share(&self, value: &str) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let count = self.counts.get(value).copied().unwrap_or(1).max(1);
        Some(f64::from(count) / self.total as f64)
    }

    /// The mean share `p̄`.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Occurrences counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The values kept with their counts, most frequent first.
    pub fn values(&self) -> Vec<(&str, u32)> {
        let mut v: Vec<(&str, u32)> = self.counts.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// Rebuild from stored parts; `None` when they are inconsistent.
    pub fn from_parts(total: u64, mean: f64, values: Vec<(String, u32)>) -> Option<Frequencies> {
        let valid = mean.is_finite()
            && (0.0..=1.0).contains(&mean)
            && values.iter().all(|(_, c)| *c >= 1 && u64::from(*c) <= total)
            && (total > 0 || (values.is_empty() && mean == 0.0));
        valid.then(|| Frequencies { counts: values.into_iter().collect(), total, mean })
    }
}

/// Name frequencies of a base: whole given names and surname words.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NameFrequencies {
    /// Whole given names.
    pub given: Frequencies,
    /// Surname words (significant tokens of family names).
    pub surnames: Frequencies,
    /// Share of family names of one, two, and three or more words.
    pub family_words: [f64; 3],
    /// `p̄` of whole family names (see [`NameFrequencies::family_share`]).
    pub family_mean: f64,
}

impl NameFrequencies {
    /// Count the names of `records`.
    pub fn count(records: &[Record]) -> NameFrequencies {
        let given = Frequencies::count(records.iter().map(|r| r.given_name.as_str()).filter(|g| !g.is_empty()));
        let surnames = Frequencies::count(records.iter().flat_map(|r| significant_tokens(&r.family_name)));
        let mut words = [0u64; 3];
        for r in records {
            match significant_tokens(&r.family_name).count() {
                0 => {}
                n => words[n.min(3) - 1] += 1,
            }
        }
        let named: u64 = words.iter().sum();
        let family_words = words.map(|n| if named == 0 { 0.0 } else { n as f64 / named as f64 });
        let mut family = NameFrequencies { given, surnames, family_words, family_mean: 0.0 };
        let shares: Vec<f64> = records.iter().filter_map(|r| family.family_share(&r.family_name)).collect();
        if !shares.is_empty() {
            family.family_mean = shares.iter().sum::<f64>() / shares.len() as f64;
        }
        family
    }

    /// Whether nothing was counted (no adjustment).
    pub fn is_empty(&self) -> bool {
        self.given.total == 0 && self.surnames.total == 0
    }

    /// Share of a whole family name: the share of family names of as many
    /// words times the product of its words' shares.
    pub fn family_share(&self, family_name: &str) -> Option<f64> {
        let words = significant_tokens(family_name).count();
        if words == 0 {
            return None;
        }
        let of_length = self.family_words[words.min(3) - 1];
        let product: Option<f64> = significant_tokens(family_name).map(|w| self.surnames.share(w)).product();
        product.map(|p| p * of_length).filter(|p| *p > 0.0)
    }

    /// The adjustment, in bits, of the weight of `field` at `level` for the
    /// values of `a` and `b` (see the module documentation); 0 for other
    /// fields and levels, and when the agreeing value is not the field's
    /// own on both sides (swapped names).
    pub fn adjustment(&self, field: Field, level: u8, a: &Record, b: &Record) -> f64 {
        let ratio = match (field, level) {
            (Field::GivenName, given::EXACT) if a.given_name == b.given_name => {
                self.given.share(&a.given_name).map(|p| self.given.mean / p)
            }
            (Field::FamilyName, family::EXACT) if a.family_name == b.family_name => {
                self.family_share(&a.family_name).map(|p| self.family_mean / p)
            }
            (Field::FamilyName, family::ONE_SURNAME) => significant_tokens(&a.family_name)
                .filter(|x| x.len() > 1 && significant_tokens(&b.family_name).any(|y| y == *x))
                .filter_map(|w| self.surnames.share(w))
                .reduce(f64::min)
                .map(|p| self.surnames.mean / p),
            _ => None,
        };
        match ratio {
            Some(r) if r > 0.0 && r.is_finite() => r.log2().clamp(-MAX_DOWN, MAX_UP),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(given: &str, family: &str) -> Record {
        Record { given_name: given.into(), family_name: family.into(), ..Record::default() }
    }

    /// 100 records: `maria` 40 times, 30 other names twice, `leocadia` once…
    fn base() -> Vec<Record> {
        let mut records = Vec::new();
        for i in 0..40 {
            records.push(person("maria", if i % 2 == 0 { "garcia lopez" } else { "garcia" }));
        }
        for i in 0..59 {
            records.push(person(&format!("name{}", i / 2), &format!("surname{i} other{i}")));
        }
        records.push(person("leocadia", "zubizarreta"));
        records
    }

    #[test]
    fn shares_follow_the_counts() {
        let f = NameFrequencies::count(&base());
        assert_eq!(f.given.total(), 100);
        assert_eq!(f.given.share("maria"), Some(0.4));
        assert_eq!(f.given.share("name3"), Some(0.02));
        // Seen once or never: kept as once.
        assert_eq!(f.given.share("leocadia"), Some(0.01));
        assert_eq!(f.given.share("nobody"), Some(0.01));
        assert!(f.given.values().iter().all(|(v, _)| *v != "leocadia"));
        // Σ p² = 0.4² + 29·0.02² + 0.01² + 0.01²
        let mean = 0.16 + 29.0 * 0.0004 + 0.0002;
        assert!((f.given.mean() - mean).abs() < 1e-12, "{}", f.given.mean());
        assert_eq!(NameFrequencies::count(&[]), NameFrequencies::default());
        assert!(NameFrequencies::default().is_empty());
        assert!(!f.is_empty());
    }

    #[test]
    fn common_names_weigh_less_and_rare_ones_more() {
        let f = NameFrequencies::count(&base());
        let (maria, leocadia) = (person("maria", "garcia"), person("leocadia", "zubizarreta"));
        let common = f.adjustment(Field::GivenName, given::EXACT, &maria, &maria);
        let rare = f.adjustment(Field::GivenName, given::EXACT, &leocadia, &leocadia);
        assert!(common < 0.0 && rare > 0.0, "{common} {rare}");
        assert!((-MAX_DOWN..=MAX_UP).contains(&common) && (-MAX_DOWN..=MAX_UP).contains(&rare));
        assert_eq!(rare, MAX_UP, "bounded");
        let family_common = f.adjustment(Field::FamilyName, family::EXACT, &maria, &maria);
        let family_rare = f.adjustment(Field::FamilyName, family::EXACT, &leocadia, &leocadia);
        assert!(family_common < 0.0 && family_rare > 0.0, "{family_common} {family_rare}");
        // One surname in common: by that word.
        let one = f.adjustment(
            Field::FamilyName,
            family::ONE_SURNAME,
            &person("ana", "garcia lopez"),
            &person("eva", "garcia ruiz"),
        );
        assert!(one < 0.0, "{one}");
    }

    #[test]
    fn other_levels_and_swapped_names_are_not_adjusted() {
        let f = NameFrequencies::count(&base());
        let maria = person("maria", "garcia");
        assert_eq!(f.adjustment(Field::GivenName, given::SIMILAR, &maria, &person("marie", "garcia")), 0.0);
        assert_eq!(f.adjustment(Field::Street, 1, &maria, &maria), 0.0);
        // Exact by a swap of given and family name: the values differ.
        assert_eq!(f.adjustment(Field::GivenName, given::EXACT, &maria, &person("garcia", "maria")), 0.0);
        // Nothing counted: no adjustment.
        assert_eq!(NameFrequencies::default().adjustment(Field::GivenName, given::EXACT, &maria, &maria), 0.0);
    }

    #[test]
    fn parts_round_trip_and_are_checked() {
        let f = NameFrequencies::count(&base()).given;
        let values = f.values().into_iter().map(|(v, c)| (v.to_owned(), c)).collect();
        assert_eq!(Frequencies::from_parts(f.total(), f.mean(), values), Some(f.clone()));
        assert_eq!(Frequencies::from_parts(10, 0.5, vec![("a".into(), 11)]), None);
        assert_eq!(Frequencies::from_parts(10, f64::NAN, vec![]), None);
        assert_eq!(Frequencies::from_parts(0, 0.0, vec![]), Some(Frequencies::default()));
    }
}
