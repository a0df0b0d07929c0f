//! The Fellegi–Sunter model: per field and level, the probability `m` of
//! the level among pairs of records of one person and `u` among pairs of
//! different people; the prior `lambda` that a candidate pair is a match;
//! two thresholds on the total match weight.

use std::fmt;

use super::Record;
use super::compare::{ComparisonVector, FIELD_COUNT, Field, NULL, compare};
use super::frequencies::{Frequencies, NameFrequencies};

/// Smallest probability a model holds (and largest is `1 - MIN_PROBABILITY`),
/// so that no weight is infinite.
pub const MIN_PROBABILITY: f64 = 1e-6;

/// `m` and `u` of the non-null levels of one field: index `i` is level
/// `i + 1` of [`Field::levels`] (the `null` level has no parameters; its
/// weight is 0).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldModel {
    /// The field.
    pub field: Field,
    /// P(level | same person), summing to 1.
    pub m: Vec<f64>,
    /// P(level | different people), summing to 1.
    pub u: Vec<f64>,
}

impl FieldModel {
    /// Weight `log2(m / u)` of a level; 0 for `null` or an unknown level.
    pub fn weight(&self, level: u8) -> f64 {
        if level == NULL {
            return 0.0;
        }
        let i = usize::from(level) - 1;
        match (self.m.get(i), self.u.get(i)) {
            (Some(m), Some(u)) => (m / u).log2(),
            _ => 0.0,
        }
    }
}

/// A Fellegi–Sunter match model.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchModel {
    /// One entry per field, in [`Field::ALL`] order.
    pub fields: [FieldModel; FIELD_COUNT],
    /// Prior probability that a candidate pair (two records sharing a
    /// blocking key) is the same person.
    pub lambda: f64,
    /// Total weight at or above which a pair links automatically.
    pub upper: f64,
    /// Total weight at or above which (and below `upper`) a pair goes to
    /// review; below it the records are different people.
    pub lower: f64,
    /// Name frequencies of the base the model was trained on, which move
    /// the weight of an agreeing name by how common it is (see
    /// [`super::frequencies`]); empty: no adjustment.
    pub frequencies: NameFrequencies,
}

/// What one field contributed to a score.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldScore {
    /// Field name ([`Field::name`]).
    pub field: &'static str,
    /// Comparison level name.
    pub level: &'static str,
    /// `log2(m / u)` of that level (0 when the value is missing).
    pub weight: f64,
}

/// The score of a pair of records, with its explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// Sum of the field weights (bits of evidence).
    pub total_weight: f64,
    /// Posterior probability that the pair is one person, given the
    /// model's prior.
    pub probability: f64,
    /// Contribution of every field, in [`Field::ALL`] order.
    pub fields: Vec<FieldScore>,
    /// The comparison levels scored.
    pub vector: ComparisonVector,
}

/// What to do with a scored pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Same person: link automatically.
    Link,
    /// Unsure: an operator decides.
    Review,
    /// Different people.
    NoMatch,
}

/// Why a stored model cannot be read.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelError {
    /// Not a serialised model.
    BadMagic,
    /// Written by a newer or unknown format version.
    UnsupportedVersion(u16),
    /// Shorter than its header says.
    Truncated,
    /// Longer than its header says.
    TrailingBytes,
    /// Corrupted: the checksum does not match.
    Checksum,
    /// Fields or levels differ from this build's comparison levels.
    SchemaMismatch(&'static str),
    /// A probability is not finite, out of range, or a distribution does not
    /// sum to 1.
    InvalidProbability(&'static str),
    /// A threshold is not finite, or `lower > upper`.
    InvalidThresholds,
    /// A name frequency table is inconsistent.
    InvalidFrequencies,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::BadMagic => write!(f, "not a serialised match model"),
            ModelError::UnsupportedVersion(v) => write!(f, "unsupported match model version {v}"),
            ModelError::Truncated => write!(f, "match model truncated"),
            ModelError::TrailingBytes => write!(f, "unexpected bytes after the match model"),
            ModelError::Checksum => write!(f, "match model checksum mismatch"),
            ModelError::SchemaMismatch(field) => write!(f, "match model levels of {field} differ from this version"),
            ModelError::InvalidProbability(field) => write!(f, "invalid m/u probabilities for {field}"),
            ModelError::InvalidThresholds => write!(f, "invalid match thresholds"),
            ModelError::InvalidFrequencies => write!(f, "invalid name frequencies"),
        }
    }
}

impl std::error::Error for ModelError {}

/// `log2(p / (1 - p))`.
pub fn logit2(p: f64) -> f64 {
    (p / (1.0 - p)).log2()
}

fn field_model(field: Field, m: &[f64], u: &[f64]) -> FieldModel {
    FieldModel { field, m: m.to_vec(), u: u.to_vec() }
}

/// A model that works without training: `m` from expectation–maximisation
/// on generated Spanish / Portuguese / Catalan data ([`super::generator`],
/// 100,000 originals, [`super::train_on_records`]), `u` from random pairs of
/// the same data with the identifier levels (phone, e-mail, exact street
/// and birth date) set for a base of about a million people, rounded.
/// Links from 17 bits of evidence, reviews from 6 (see
/// [`MatchModel::upper`]). This model has no name frequencies, so an exact
/// full name counts alike for the commonest and the rarest: 17 bits are
/// more than an exact full name alone (16.7), which namesakes share in a
/// large base loaded before the first training.
pub fn default_model() -> MatchModel {
    MatchModel {
        fields: [
            field_model(
                Field::GivenName,
                &[0.58, 0.145, 0.065, 0.105, 0.04, 0.065],
                &[0.006, 0.005, 0.0025, 0.003, 0.0025, 0.981],
            ),
            field_model(Field::FamilyName, &[0.56, 0.25, 0.115, 0.064, 0.011], &[0.0005, 0.0003, 0.021, 0.012, 0.9662]),
            field_model(
                Field::BirthDate,
                &[0.77, 0.034, 0.078, 0.095, 0.023],
                &[0.00005, 0.000004, 0.0013, 0.0007, 0.997946],
            ),
            field_model(Field::Street, &[0.57, 0.122, 0.024, 0.284], &[0.00001, 0.00002, 0.0086, 0.99137]),
            field_model(Field::Postcode, &[0.66, 0.128, 0.212], &[0.0011, 0.03, 0.9689]),
            field_model(Field::Locality, &[0.62, 0.06, 0.32], &[0.03, 0.0025, 0.9675]),
            field_model(Field::Phone, &[0.754, 0.014, 0.053, 0.179], &[0.000002, 0.000001, 0.000001, 0.999996]),
            field_model(Field::Email, &[0.777, 0.009, 0.086, 0.128], &[0.000002, 0.000001, 0.0002, 0.999797]),
        ],
        lambda: 0.3,
        upper: 17.0,
        lower: 6.0,
        frequencies: NameFrequencies::default(),
    }
}

impl Default for MatchModel {
    fn default() -> Self {
        default_model()
    }
}

const MAGIC: &[u8; 6] = b"CRMFSM";
/// Format version written with name frequencies; models without them are
/// written as [`VERSION_1`], so that a build without frequencies reads them.
const VERSION: u16 = 2;
/// The format before name frequencies (still read).
const VERSION_1: u16 = 1;
/// Longest value a frequency table stores (longer ones are left out).
const MAX_VALUE_BYTES: usize = 255;

/// FNV-1a 64 of a byte string (checksum of a serialised model).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A cursor over a serialised model.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        if self.bytes.len() < n {
            return Err(ModelError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ModelError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ModelError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn f64(&mut self) -> Result<f64, ModelError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(f64::from_le_bytes(a))
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A frequency table written by [`write_frequencies`].
    fn frequencies(&mut self) -> Result<Frequencies, ModelError> {
        let total = self.u64()?;
        let mean = self.f64()?;
        let n = self.u32()? as usize;
        let mut values = Vec::with_capacity(n.min(self.bytes.len() / 5));
        for _ in 0..n {
            let len = usize::from(self.u8()?);
            let value = std::str::from_utf8(self.take(len)?).map_err(|_| ModelError::InvalidFrequencies)?.to_owned();
            values.push((value, self.u32()?));
        }
        Frequencies::from_parts(total, mean, values).ok_or(ModelError::InvalidFrequencies)
    }
}

/// A frequency table: total (u64), mean share (f64), value count (u32),
/// then each value as its length (u8), its bytes and its count (u32).
fn write_frequencies(out: &mut Vec<u8>, f: &Frequencies) {
    let values: Vec<(&str, u32)> = f.values().into_iter().filter(|(v, _)| v.len() <= MAX_VALUE_BYTES).collect();
    out.extend_from_slice(&f.total().to_le_bytes());
    out.extend_from_slice(&f.mean().to_le_bytes());
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for (value, count) in values {
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
}

impl MatchModel {
    /// The model of one field.
    pub fn field(&self, field: Field) -> &FieldModel {
        &self.fields[field.index()]
    }

    /// Compare two records (the model only supplies the level scheme).
    pub fn compare(&self, a: &Record, b: &Record) -> ComparisonVector {
        compare(a, b)
    }

    /// Weight of one field level.
    pub fn weight(&self, field: Field, level: u8) -> f64 {
        self.field(field).weight(level)
    }

    /// Total weight of a comparison vector.
    pub fn total_weight(&self, vector: ComparisonVector) -> f64 {
        Field::ALL.iter().map(|&f| self.weight(f, vector.level(f))).sum()
    }

    /// Posterior probability of a match for a total weight, given `lambda`.
    pub fn probability(&self, total_weight: f64) -> f64 {
        let log_odds = total_weight + logit2(self.lambda);
        1.0 / (1.0 + (-log_odds).exp2())
    }

    /// Score a pair of records, with the explanation: the weights of the
    /// levels, those of agreeing names adjusted by how common the name is
    /// ([`super::frequencies`]).
    pub fn score(&self, a: &Record, b: &Record) -> Scored {
        let mut scored = self.score_vector(compare(a, b));
        if self.frequencies.is_empty() {
            return scored;
        }
        for (f, field) in scored.fields.iter_mut().zip(Field::ALL) {
            f.weight += self.frequencies.adjustment(field, scored.vector.level(field), a, b);
        }
        scored.total_weight = scored.fields.iter().map(|f| f.weight).sum();
        scored.probability = self.probability(scored.total_weight);
        scored
    }

    /// Score a comparison vector, with the explanation.
    pub fn score_vector(&self, vector: ComparisonVector) -> Scored {
        let fields: Vec<FieldScore> = Field::ALL
            .iter()
            .map(|&f| FieldScore {
                field: f.name(),
                level: vector.level_name(f),
                weight: self.weight(f, vector.level(f)),
            })
            .collect();
        let total_weight = fields.iter().map(|f| f.weight).sum();
        Scored { total_weight, probability: self.probability(total_weight), fields, vector }
    }

    /// Link, review or no match, by the thresholds.
    pub fn decide(&self, scored: &Scored) -> Decision {
        self.decide_weight(scored.total_weight)
    }

    /// Link, review or no match for a total weight.
    pub fn decide_weight(&self, total_weight: f64) -> Decision {
        if total_weight >= self.upper {
            Decision::Link
        } else if total_weight >= self.lower {
            Decision::Review
        } else {
            Decision::NoMatch
        }
    }

    /// Set the thresholds from posterior probabilities at the model's prior:
    /// link when P(match) ≥ `link_probability`, review when
    /// P(match) ≥ `review_probability`. Both must lie in (0, 1) with
    /// `review_probability ≤ link_probability`; otherwise nothing changes
    /// and `false` is returned.
    pub fn calibrate(&mut self, link_probability: f64, review_probability: f64) -> bool {
        let valid = |p: f64| p > 0.0 && p < 1.0;
        if !valid(link_probability) || !valid(review_probability) || review_probability > link_probability {
            return false;
        }
        let prior = logit2(self.lambda);
        self.upper = logit2(link_probability) - prior;
        self.lower = logit2(review_probability) - prior;
        true
    }

    /// Check every probability and threshold.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (fm, field) in self.fields.iter().zip(Field::ALL) {
            if fm.field != field || fm.m.len() + 1 != field.level_count() || fm.u.len() != fm.m.len() {
                return Err(ModelError::SchemaMismatch(field.name()));
            }
            for dist in [&fm.m, &fm.u] {
                let in_range = dist.iter().all(|p| p.is_finite() && *p > 0.0 && *p < 1.0);
                let sum: f64 = dist.iter().sum();
                if !in_range || (sum - 1.0).abs() > 1e-3 {
                    return Err(ModelError::InvalidProbability(field.name()));
                }
            }
        }
        if !(self.lambda.is_finite() && self.lambda > 0.0 && self.lambda < 1.0) {
            return Err(ModelError::InvalidProbability("lambda"));
        }
        if !self.upper.is_finite() || !self.lower.is_finite() || self.lower > self.upper {
            return Err(ModelError::InvalidThresholds);
        }
        Ok(())
    }

    /// Serialise: magic `CRMFSM`, format version (u16), field count (u8),
    /// per field its level count (u8) and `m`, `u` pairs (f64), then
    /// `lambda`, `upper`, `lower` (f64), then (version 2) the name
    /// frequencies: the given name and surname tables (see
    /// `write_frequencies`), the shares of family names of one, two and
    /// three or more words and the family name mean share (f64), and an
    /// FNV-1a checksum (u64) of all preceding bytes; little-endian
    /// throughout. A model without frequencies is written as version 1.
    pub fn to_bytes(&self) -> Vec<u8> {
        let with_frequencies = !self.frequencies.is_empty();
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        let version = if with_frequencies { VERSION } else { VERSION_1 };
        out.extend_from_slice(&version.to_le_bytes());
        out.push(FIELD_COUNT as u8);
        for fm in &self.fields {
            out.push(fm.m.len() as u8);
            for (m, u) in fm.m.iter().zip(&fm.u) {
                out.extend_from_slice(&m.to_le_bytes());
                out.extend_from_slice(&u.to_le_bytes());
            }
        }
        for v in [self.lambda, self.upper, self.lower] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if with_frequencies {
            write_frequencies(&mut out, &self.frequencies.given);
            write_frequencies(&mut out, &self.frequencies.surnames);
            for v in self.frequencies.family_words.iter().chain([&self.frequencies.family_mean]) {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let checksum = fnv1a(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Read a model written by [`MatchModel::to_bytes`] (either version),
    /// checking format, length, checksum, level scheme and every
    /// probability.
    pub fn from_bytes(bytes: &[u8]) -> Result<MatchModel, ModelError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(ModelError::BadMagic);
        }
        let mut r = Reader { bytes: &bytes[MAGIC.len()..] };
        let version = r.u16()?;
        if version != VERSION && version != VERSION_1 {
            return Err(ModelError::UnsupportedVersion(version));
        }
        if usize::from(r.u8()?) != FIELD_COUNT {
            return Err(ModelError::SchemaMismatch("field count"));
        }
        let mut fields = Vec::with_capacity(FIELD_COUNT);
        for field in Field::ALL {
            let levels = usize::from(r.u8()?);
            if levels + 1 != field.level_count() {
                return Err(ModelError::SchemaMismatch(field.name()));
            }
            let (mut m, mut u) = (Vec::with_capacity(levels), Vec::with_capacity(levels));
            for _ in 0..levels {
                m.push(r.f64()?);
                u.push(r.f64()?);
            }
            fields.push(FieldModel { field, m, u });
        }
        let (lambda, upper, lower) = (r.f64()?, r.f64()?, r.f64()?);
        let frequencies = if version == VERSION {
            let (given, surnames) = (r.frequencies()?, r.frequencies()?);
            let family_words = [r.f64()?, r.f64()?, r.f64()?];
            let family_mean = r.f64()?;
            if !family_words.iter().chain([&family_mean]).all(|p| p.is_finite() && (0.0..=1.0).contains(p)) {
                return Err(ModelError::InvalidFrequencies);
            }
            NameFrequencies { given, surnames, family_words, family_mean }
        } else {
            NameFrequencies::default()
        };
        let body_len = bytes.len() - r.bytes.len();
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(r.take(8)?);
        if !r.bytes.is_empty() {
            return Err(ModelError::TrailingBytes);
        }
        if u64::from_le_bytes(checksum) != fnv1a(&bytes[..body_len]) {
            return Err(ModelError::Checksum);
        }
        let fields: [FieldModel; FIELD_COUNT] =
            fields.try_into().map_err(|_| ModelError::SchemaMismatch("field count"))?;
        let model = MatchModel { fields, lambda, upper, lower, frequencies };
        model.validate()?;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::super::compare::{email, family, given};
    use super::*;

    fn jose() -> Record {
        Record {
            given_name: "jose".into(),
            family_name: "garcia lopez".into(),
            birth_date: Some((1980, 5, 12)),
            street: "calle mayor 12".into(),
            postcode: "28013".into(),
            locality: "madrid".into(),
            phone: "+34600111222".into(),
            email: "jose.garcia@gmail.com".into(),
        }
    }

    #[test]
    fn default_model_is_valid_and_ordered() {
        let model = default_model();
        model.validate().unwrap();
        for field in Field::ALL {
            let fm = model.field(field);
            // Agreement is evidence for a match, full disagreement against.
            assert!(fm.weight(1) > 0.0, "{}", field.name());
            assert!(fm.weight((field.level_count() - 1) as u8) < 0.0, "{}", field.name());
            assert_eq!(fm.weight(NULL), 0.0);
        }
    }

    #[test]
    fn weight_signs_follow_agreement() {
        let model = default_model();
        assert!(model.weight(Field::GivenName, given::EXACT) > 0.0);
        assert!(model.weight(Field::GivenName, given::NICKNAME) > 0.0);
        assert!(model.weight(Field::GivenName, given::DIFFERENT) < 0.0);
        assert!(model.weight(Field::FamilyName, family::DIFFERENT) < 0.0);
        assert!(model.weight(Field::Email, email::EXACT) > 0.0);
        assert_eq!(model.weight(Field::Phone, NULL), 0.0);

        let a = jose();
        let same = model.score(&a, &a);
        assert!(same.total_weight > model.upper);
        assert!(same.probability > 0.999);
        assert_eq!(model.decide(&same), Decision::Link);
        assert_eq!(same.fields.len(), FIELD_COUNT);
        // Every field agrees; the locality is implied by the equal postcodes.
        for f in &same.fields {
            if f.field == "locality" {
                assert_eq!((f.level, f.weight), ("null", 0.0));
            } else {
                assert!(f.level == "exact" && f.weight > 0.0, "{f:?}");
            }
        }

        let stranger = Record {
            given_name: "ana".into(),
            family_name: "silva".into(),
            birth_date: Some((1955, 1, 30)),
            street: "rua da liberdade 4".into(),
            postcode: "1250-096".into(),
            locality: "lisboa".into(),
            phone: "+351912345678".into(),
            email: "ana.silva@sapo.pt".into(),
        };
        let different = model.score(&a, &stranger);
        assert!(different.total_weight < model.lower);
        assert!(different.probability < 1e-6);
        assert_eq!(model.decide(&different), Decision::NoMatch);

        let unknown = model.score(&a, &Record::default());
        assert_eq!(unknown.total_weight, 0.0);
        assert!(unknown.fields.iter().all(|f| f.level == "null" && f.weight == 0.0));
        assert!((unknown.probability - model.lambda).abs() < 1e-12);
    }

    #[test]
    fn calibrate_maps_probabilities_to_weights() {
        let mut model = default_model();
        assert!(model.calibrate(0.99, 0.5));
        assert!((model.probability(model.upper) - 0.99).abs() < 1e-9);
        assert!((model.probability(model.lower) - 0.5).abs() < 1e-9);
        assert!(!model.calibrate(0.5, 0.99));
        assert!(!model.calibrate(1.0, 0.5));
    }

    #[test]
    fn serialisation_round_trips() {
        let mut model = default_model();
        model.lambda = 0.0123;
        model.upper = 9.5;
        let bytes = model.to_bytes();
        assert_eq!(MatchModel::from_bytes(&bytes).unwrap(), model);
    }

    fn with_frequencies() -> MatchModel {
        let records: Vec<Record> = ["maria", "maria", "maria", "leocadia", "jose", "jose"]
            .iter()
            .zip(["garcia lopez", "garcia", "garcia ruiz", "zubizarreta", "lopez garcia", "silva"])
            .map(|(g, f)| Record { given_name: (*g).into(), family_name: f.into(), ..Record::default() })
            .collect();
        MatchModel { frequencies: NameFrequencies::count(&records), ..default_model() }
    }

    #[test]
    fn serialisation_round_trips_name_frequencies() {
        let model = with_frequencies();
        let bytes = model.to_bytes();
        assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), VERSION);
        assert_eq!(MatchModel::from_bytes(&bytes).unwrap(), model);
        for n in 0..bytes.len() {
            assert!(MatchModel::from_bytes(&bytes[..n]).is_err());
        }
        // Without frequencies the old format is written, and read back.
        let plain = default_model().to_bytes();
        assert_eq!(u16::from_le_bytes([plain[6], plain[7]]), VERSION_1);
        assert_eq!(MatchModel::from_bytes(&plain).unwrap(), default_model());
    }

    #[test]
    fn a_stored_model_of_the_first_format_is_read() {
        // Bytes of a version 1 model, as stored before name frequencies: the
        // header, the default levels, lambda, thresholds and the checksum.
        let model = default_model();
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"CRMFSM");
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.push(FIELD_COUNT as u8);
        for fm in &model.fields {
            v1.push(fm.m.len() as u8);
            for (m, u) in fm.m.iter().zip(&fm.u) {
                v1.extend_from_slice(&m.to_le_bytes());
                v1.extend_from_slice(&u.to_le_bytes());
            }
        }
        for v in [model.lambda, model.upper, model.lower] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        let checksum = fnv1a(&v1);
        v1.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(MatchModel::from_bytes(&v1).unwrap(), model);
    }

    #[test]
    fn scores_adjust_agreeing_names_by_frequency() {
        let model = with_frequencies();
        let person = |g: &str, f: &str| Record {
            given_name: g.into(),
            family_name: f.into(),
            birth_date: Some((1980, 5, 12)),
            ..Record::default()
        };
        let (maria, leocadia) = (person("maria", "garcia"), person("leocadia", "zubizarreta"));
        let plain = default_model();
        let common = model.score(&maria, &maria);
        let rare = model.score(&leocadia, &leocadia);
        assert!(common.total_weight < plain.score(&maria, &maria).total_weight);
        assert!(rare.total_weight > plain.score(&leocadia, &leocadia).total_weight);
        // The explanation carries the adjusted weights and adds up.
        let sum: f64 = common.fields.iter().map(|f| f.weight).sum();
        assert!((sum - common.total_weight).abs() < 1e-12);
        assert!((common.probability - model.probability(common.total_weight)).abs() < 1e-12);
        // Fields other than names are unchanged.
        assert_eq!(
            common.fields[Field::BirthDate.index()],
            plain.score(&maria, &maria).fields[Field::BirthDate.index()]
        );
    }

    #[test]
    fn serialisation_rejects_garbage() {
        let bytes = default_model().to_bytes();
        assert_eq!(MatchModel::from_bytes(b""), Err(ModelError::BadMagic));
        assert_eq!(MatchModel::from_bytes(b"hello world"), Err(ModelError::BadMagic));
        assert_eq!(MatchModel::from_bytes(&bytes[..bytes.len() - 1]), Err(ModelError::Truncated));
        assert_eq!(MatchModel::from_bytes(&bytes[..20]), Err(ModelError::Truncated));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(MatchModel::from_bytes(&longer), Err(ModelError::TrailingBytes));
        let mut flipped = bytes.clone();
        flipped[30] ^= 0x10;
        assert_eq!(MatchModel::from_bytes(&flipped), Err(ModelError::Checksum));
        let mut version = bytes.clone();
        version[6] = 9;
        assert_eq!(MatchModel::from_bytes(&version), Err(ModelError::UnsupportedVersion(9)));
        let mut levels = bytes.clone();
        levels[9] = 3;
        assert_eq!(MatchModel::from_bytes(&levels), Err(ModelError::SchemaMismatch("given_name")));
        // Well-formed bytes of an invalid model (a probability of 2).
        let mut bad = default_model();
        bad.fields[0].m[0] = 2.0;
        assert_eq!(MatchModel::from_bytes(&bad.to_bytes()), Err(ModelError::InvalidProbability("given_name")));
        let mut bad = default_model();
        bad.lower = bad.upper + 1.0;
        assert_eq!(MatchModel::from_bytes(&bad.to_bytes()), Err(ModelError::InvalidThresholds));
        // Every truncation fails cleanly.
        for n in 0..bytes.len() {
            assert!(MatchModel::from_bytes(&bytes[..n]).is_err());
        }
    }
}
