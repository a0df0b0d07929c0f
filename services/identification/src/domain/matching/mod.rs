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
pub mod frequencies;
pub mod generator;
pub mod household;
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
    BlockIndex, CandidateVectors, DEFAULT_MAX_BLOCK, KeyKind, MAX_CANDIDATES, blocking_keys, candidate_pairs,
    candidate_vectors, candidate_vectors_by_kind, key_hash,
};
pub use compare::{ComparisonVector, FIELD_COUNT, Field, compare};
pub use em::{MPrior, Trained, VectorCounts, train, train_counts, train_m, train_m_counts};
pub use frequencies::NameFrequencies;
pub use generator::{Corruption, generate, generate_with};
pub use household::contradicts_person;
pub use metrics::{Metrics, clusters_from_links, pairwise_metrics, pairwise_metrics_from_links};
pub use model::{Decision, FieldModel, FieldScore, MatchModel, ModelError, Scored, default_model};
pub use phonetic::phonetic;
pub use rng::SplitMix64;
pub use text::{fold, jaro_winkler};
pub use training::{
    LINK_PROBABILITY, M_PRIOR_MIN_PAIRS, M_PRIOR_PER_RECORD, MAX_CANDIDATE_PAIRS, MIN_UPPER, REVIEW_PROBABILITY,
    TrainingOptions, estimate_lambda, estimate_u, refresh_on_records, train_on_records, train_sessions,
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

impl Record {
    /// A compact, self-describing encoding for storage: each text field as
    /// a little-endian `u32` length and its bytes, then the birth date as a
    /// presence byte and three numbers.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        for field in self.texts() {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        match self.birth_date {
            Some((y, m, d)) => {
                out.push(1);
                out.extend_from_slice(&y.to_le_bytes());
                out.extend_from_slice(&m.to_le_bytes());
                out.extend_from_slice(&d.to_le_bytes());
            }
            None => out.push(0),
        }
        out
    }

    /// Decode [`Record::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Record> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let mut texts: [String; 7] = Default::default();
        for text in &mut texts {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            *text = String::from_utf8(take(len)?.to_vec()).ok()?;
        }
        let birth_date = match take(1)?[0] {
            0 => None,
            1 => Some((
                i32::from_le_bytes(take(4)?.try_into().ok()?),
                u32::from_le_bytes(take(4)?.try_into().ok()?),
                u32::from_le_bytes(take(4)?.try_into().ok()?),
            )),
            _ => return None,
        };
        if !rest.is_empty() {
            return None;
        }
        let [given_name, family_name, street, postcode, locality, phone, email] = texts;
        Some(Record { given_name, family_name, birth_date, street, postcode, locality, phone, email })
    }

    /// A stable, non-zero 63-bit fingerprint of the record (FNV-1a of its
    /// encoding), to keep each distinct record once.
    pub fn fingerprint(&self) -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.to_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ((h >> 1) as i64).max(1)
    }

    fn texts(&self) -> [&str; 7] {
        [&self.given_name, &self.family_name, &self.street, &self.postcode, &self.locality, &self.phone, &self.email]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_bytes() {
        let r = Record {
            given_name: "maria jose".into(),
            family_name: "garcia lopez".into(),
            birth_date: Some((1980, 2, 0)),
            street: "c mayor 12".into(),
            postcode: "28013".into(),
            locality: "mostoles".into(),
            phone: "+34600111222".into(),
            email: "mj@example.com".into(),
        };
        assert_eq!(Record::from_bytes(&r.to_bytes()), Some(r.clone()));
        let empty = Record::default();
        assert_eq!(Record::from_bytes(&empty.to_bytes()), Some(empty.clone()));
        assert_ne!(r.fingerprint(), empty.fingerprint());
        assert!(r.fingerprint() > 0 && empty.fingerprint() > 0);
        let bytes = r.to_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(Record::from_bytes(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Record::from_bytes(&longer), None);
    }

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
