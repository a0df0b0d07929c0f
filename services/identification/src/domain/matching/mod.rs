//! Probabilistic record linkage (Fellegi–Sunter), pure and synchronous.
//!
//! - [`Record`] is the matchable view of a person, every field folded with
//!   [`fold`] (or [`Record::normalized`]).
//! - [`compare()`] puts each field of a pair of records into a comparison
//!   level ([`ComparisonVector`]); a missing value is the `null` level.
//! - [`MatchModel`] turns levels into weights `log2(m / u)`, sums them,
//!   turns the sum into a posterior probability and decides
//!   ([`Decision`]) by two thresholds, explaining every field
//!   ([`Scored`]). [`default_model`] works without training.
//! - [`train`] re-estimates `m`, `u` and the prior by expectation–
//!   maximisation from unlabelled comparison vectors of candidate pairs;
//!   [`train_on_records`] is the robust recipe for stored data (`u` from
//!   random pairs, then `m` and the prior by EM).
//! - [`blocking_keys`] gives the keys that select the candidates of a
//!   resolve, built on a [phonetic code](mod@phonetic) for Iberian names.
//! - [`generator`] makes FEBRL-style test data and [`pairwise_metrics`]
//!   measures a clustering against the truth.

pub mod blocking;
pub mod compare;
pub mod em;
pub mod generator;
pub mod metrics;
pub mod model;
pub mod nicknames;
pub mod phonetic;
pub mod rng;
pub mod text;
pub mod training;

#[cfg(test)]
mod quality_tests;

pub use blocking::{
    BlockIndex, CandidateVectors, DEFAULT_MAX_BLOCK, KeyKind, blocking_keys, candidate_pairs, candidate_vectors,
    candidate_vectors_by_kind, key_hash,
};
pub use compare::{ComparisonVector, FIELD_COUNT, Field, compare};
pub use em::{Trained, VectorCounts, train, train_counts, train_m, train_m_counts};
pub use generator::{Corruption, generate, generate_with};
pub use metrics::{Metrics, clusters_from_links, pairwise_metrics, pairwise_metrics_from_links};
pub use model::{Decision, FieldModel, FieldScore, MatchModel, ModelError, Scored, default_model};
pub use phonetic::phonetic;
pub use rng::SplitMix64;
pub use text::{fold, jaro_winkler};
pub use training::{
    LINK_PROBABILITY, REVIEW_PROBABILITY, TrainingOptions, estimate_u, train_on_records, train_sessions,
};

/// The matchable view of a person. Every text field is folded (see
/// [`fold`]); an empty string is a missing value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// Given name(s), e.g. `maria jose`.
    pub given_name: String,
    /// Family name(s), e.g. `garcia lopez` (two surnames) or `silva`.
    pub family_name: String,
    /// Date of birth `(year, month, day)`; month or day 0 when unknown.
    pub birth_date: Option<(i32, u32, u32)>,
    /// First address line (street, number, floor).
    pub street: String,
    /// Postal code.
    pub postcode: String,
    /// Town or city.
    pub locality: String,
    /// Phone number in E.164 (`+34600111222`), or empty.
    pub phone: String,
    /// Normalised e-mail address, or empty.
    pub email: String,
}

impl Record {
    /// Fold free-text fields (names, street, locality, postcode), keep only
    /// `+` and digits of the phone, lower-case and trim the e-mail, and drop
    /// impossible date parts (a month above 12 or a day above 31 becomes
    /// unknown; year 0 makes the date unknown).
    pub fn normalized(self) -> Record {
        let birth_date = self.birth_date.and_then(|(y, m, d)| {
            let m = if m <= 12 { m } else { 0 };
            let d = if d <= 31 { d } else { 0 };
            (y != 0).then_some((y, m, d))
        });
        Record {
            given_name: fold(&self.given_name),
            family_name: fold(&self.family_name),
            birth_date,
            street: fold(&self.street),
            postcode: fold(&self.postcode),
            locality: fold(&self.locality),
            phone: self.phone.chars().filter(|c| *c == '+' || c.is_ascii_digit()).collect(),
            email: self.email.trim().to_lowercase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_folds_every_field() {
        let r = Record {
            given_name: " José  Mª ".into(),
            family_name: "GARCÍA-LÓPEZ".into(),
            birth_date: Some((1980, 13, 40)),
            street: "C/ Mayor, 12".into(),
            postcode: "28 013".into(),
            locality: "Móstoles".into(),
            phone: "+34 600 11 12 22".into(),
            email: " Jose.Garcia@GMAIL.com ".into(),
        }
        .normalized();
        assert_eq!(r.given_name, "jose m");
        assert_eq!(r.family_name, "garcia lopez");
        assert_eq!(r.birth_date, Some((1980, 0, 0)));
        assert_eq!(r.street, "c mayor 12");
        assert_eq!(r.postcode, "28 013");
        assert_eq!(r.locality, "mostoles");
        assert_eq!(r.phone, "+34600111222");
        assert_eq!(r.email, "jose.garcia@gmail.com");
        assert_eq!(Record { birth_date: Some((0, 1, 1)), ..Record::default() }.normalized().birth_date, None);
    }
}
