//! Blocking: short keys such that two records of one person share at least
//! one key with very high probability, while a key is shared by few records
//! of different people. A resolve scores only the records that share a key
//! with the incoming one.
//!
//! Keys (prefix, then the parts separated by `:`), where *G* and *F* are the
//! [phonetic codes](mod@super::phonetic) of the first given and first family
//! name, *g* and *f* their initials, *{G,F}* the two codes in sorted order
//! (so a swap of given and family name keeps the key), *date* the birth
//! date as `yyyy` followed by the smaller and the larger of month and day
//! (so a transposed day and month keeps the key) and *S* the code of the
//! longest word of the street name:
//!
//! | Key                                | Survives changes to                          |
//! |------------------------------------|----------------------------------------------|
//! | `nd:G:date`, `nd:F:date`           | the other name, address, phone, e-mail       |
//! | `ny:{G,F}:yyyy`                    | day and month, address, phone, e-mail        |
//! | `nm:{G,F}:mmdd`                    | the year, address, phone, e-mail             |
//! | `df:date:f`                        | spelling of both names but the family initial |
//! | `nn:G:{F1,F2}` (two surnames, sorted) | birth date, address, phone, e-mail        |
//! | `pc:postcode:G:f`, `pc:postcode:F:g` | birth date, one name's spelling, phone, e-mail |
//! | `nl:{G,F}:locality`                | birth date, street, postcode, phone, e-mail (a move within the town) |
//! | `ad:locality:S:number`, `ap:postcode:S:number` | names, birth date, phone, e-mail |
//! | `sn:S:number:F`                    | birth date, postcode and locality, phone, e-mail |
//! | `ph:last 7 digits`                 | everything but the phone                     |
//! | `em:local part`                    | everything but the e-mail local part         |
//!
//! Keys hold only phonetic codes, initials, dates, postcodes, localities and
//! phone / e-mail fragments: store them next to the profile, never in logs.

use std::collections::{HashMap, HashSet};

use super::Record;
use super::compare::{Field, compare, street_parts};
use super::em::VectorCounts;
use super::phonetic::{phonetic, phonetic_first};
use super::rng::mix64;
use super::text::{alphanumerics, digits, first_significant_letter, significant_tokens};

/// Blocks larger than this are skipped when building training pairs: a key
/// shared by that many records (a placeholder e-mail, a call-centre phone)
/// does not identify anyone, and would cost a quadratic number of pairs.
pub const DEFAULT_MAX_BLOCK: usize = 500;

/// The most candidates a resolve scores: those sharing the most blocking
/// keys with it (the earliest first among equals). A touchpoint with a
/// common name in a big town finds hundreds; the right one, when it is
/// there, shares more keys than nearly all of them (at a million generated
/// people, 64 lose no F1 against all, where reading and scoring them all
/// sets the concurrency-1 tail: BENCHMARKS.md, identification).
pub const MAX_CANDIDATES: usize = 64;

/// The blocking keys of a record (see the module documentation), sorted,
/// without duplicates. A record with nothing usable has no key.
pub fn blocking_keys(r: &Record) -> Vec<String> {
    let mut keys = Vec::with_capacity(12);
    let given = phonetic_first(&r.given_name);
    let family = phonetic_first(&r.family_name);
    let given_initial = first_significant_letter(&r.given_name);
    let family_initial = first_significant_letter(&r.family_name);
    let (lo, hi) = if given <= family { (&given, &family) } else { (&family, &given) };
    let both = !given.is_empty() && !family.is_empty();
    let (year, month, day) = r.birth_date.unwrap_or((0, 0, 0));
    let complete_date = year > 0 && month > 0 && day > 0;
    let (md_lo, md_hi) = (month.min(day), month.max(day));
    let postcode: String = alphanumerics(&r.postcode).map(char::from).collect();

    if complete_date {
        let date = format!("{year:04}{md_lo:02}{md_hi:02}");
        for code in [&given, &family] {
            if !code.is_empty() {
                keys.push(format!("nd:{code}:{date}"));
            }
        }
        if let Some(f) = family_initial {
            keys.push(format!("df:{date}:{f}"));
        }
        if both {
            keys.push(format!("nm:{lo}:{hi}:{md_lo:02}{md_hi:02}"));
        }
    }
    if both && year > 0 {
        keys.push(format!("ny:{lo}:{hi}:{year:04}"));
    }
    // Two surnames make the name alone selective.
    let surnames: Vec<String> = significant_tokens(&r.family_name).map(phonetic).filter(|c| !c.is_empty()).collect();
    if !given.is_empty() && surnames.len() >= 2 {
        let (a, b) = (&surnames[0], &surnames[1]);
        let (s1, s2) = if a <= b { (a, b) } else { (b, a) };
        keys.push(format!("nn:{given}:{s1}:{s2}"));
    }
    if !postcode.is_empty() {
        for (code, other_initial) in [(&given, family_initial), (&family, given_initial)] {
            if let (false, Some(initial)) = (code.is_empty(), other_initial) {
                keys.push(format!("pc:{postcode}:{code}:{initial}"));
            }
        }
    }
    // A name is selective within a town, where most people move.
    if both && !r.locality.is_empty() {
        keys.push(format!("nl:{lo}:{hi}:{}", r.locality));
    }
    if let Some((street, number)) = street_key(&r.street) {
        if !r.locality.is_empty() {
            keys.push(format!("ad:{}:{street}:{number}", r.locality));
        }
        if !postcode.is_empty() {
            keys.push(format!("ap:{postcode}:{street}:{number}"));
        }
        // The street and the family name survive a mistyped postcode and
        // locality together.
        if !family.is_empty() {
            keys.push(format!("sn:{street}:{number}:{family}"));
        }
    }
    let phone: Vec<u8> = digits(&r.phone).collect();
    if phone.len() >= 7 {
        let last7: String = phone[phone.len() - 7..].iter().map(|&d| char::from(d)).collect();
        keys.push(format!("ph:{last7}"));
    }
    let local = r.email.split_once('@').map_or(r.email.as_str(), |(l, _)| l);
    if local.len() >= 2 {
        keys.push(format!("em:{local}"));
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Phonetic code of the longest word of the street name, and the house
/// number.
fn street_key(street: &str) -> Option<(String, &str)> {
    let parts = street_parts(street);
    let number = parts.number?;
    let word = parts
        .name
        .split(' ')
        .filter(|t| t.len() > 2 && !t.bytes().all(|c| c.is_ascii_digit()))
        .max_by_key(|t| t.len())?;
    let code = phonetic(word);
    (!code.is_empty()).then_some((code, number))
}

/// 64-bit hash of a key, for in-memory indexes (collisions only add
/// candidates, never lose one).
pub fn key_hash(key: &str) -> u64 {
    mix64(key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)))
}

/// An in-memory blocking index: key → records holding it.
#[derive(Clone, Debug, Default)]
pub struct BlockIndex {
    blocks: HashMap<u64, Vec<u32>>,
}

impl BlockIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index record `id` under its keys.
    pub fn insert(&mut self, id: u32, keys: &[String]) {
        for key in keys {
            self.blocks.entry(key_hash(key)).or_default().push(id);
        }
    }

    /// Records sharing at least one key, sorted and without duplicates;
    /// blocks larger than `max_block` are ignored. Of more than `most`, the
    /// `most` sharing the most keys (the earliest first among equals).
    pub fn candidates(&self, keys: &[String], max_block: usize, most: usize) -> Vec<u32> {
        let mut out: Vec<u32> = keys
            .iter()
            .filter_map(|k| self.blocks.get(&key_hash(k)))
            .filter(|block| block.len() <= max_block)
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        if out.len() > most {
            let mut shared: Vec<(usize, u32)> = out.chunk_by(|a, b| a == b).map(|same| (same.len(), same[0])).collect();
            shared.sort_unstable_by_key(|&(n, id)| (std::cmp::Reverse(n), id));
            out = shared.into_iter().take(most).map(|(_, id)| id).collect();
            out.sort_unstable();
        }
        out.dedup();
        out
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// The kind of a blocking key (its prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// `nd:` a name code and the birth date.
    NameDate,
    /// `ny:` both name codes and the birth year.
    NameYear,
    /// `nm:` both name codes, month and day of birth.
    NameMonthDay,
    /// `df:` birth date and family initial.
    DateFamilyInitial,
    /// `nn:` given name code and the codes of two surnames.
    FullName,
    /// `pc:` postcode, a name code and the other name's initial.
    PostcodeName,
    /// `nl:` both name codes and the locality.
    NameLocality,
    /// `sn:` street, house number and family name code.
    StreetName,
    /// `ad:` locality, street and house number.
    LocalityStreet,
    /// `ap:` postcode, street and house number.
    PostcodeStreet,
    /// `ph:` last seven phone digits.
    Phone,
    /// `em:` e-mail local part.
    Email,
}

impl KeyKind {
    /// Every kind.
    pub const ALL: [KeyKind; 12] = [
        KeyKind::NameDate,
        KeyKind::NameYear,
        KeyKind::NameMonthDay,
        KeyKind::DateFamilyInitial,
        KeyKind::FullName,
        KeyKind::PostcodeName,
        KeyKind::NameLocality,
        KeyKind::StreetName,
        KeyKind::LocalityStreet,
        KeyKind::PostcodeStreet,
        KeyKind::Phone,
        KeyKind::Email,
    ];

    /// The key prefix, without the colon.
    pub const fn prefix(self) -> &'static str {
        match self {
            KeyKind::NameDate => "nd",
            KeyKind::NameYear => "ny",
            KeyKind::NameMonthDay => "nm",
            KeyKind::DateFamilyInitial => "df",
            KeyKind::FullName => "nn",
            KeyKind::PostcodeName => "pc",
            KeyKind::NameLocality => "nl",
            KeyKind::StreetName => "sn",
            KeyKind::LocalityStreet => "ad",
            KeyKind::PostcodeStreet => "ap",
            KeyKind::Phone => "ph",
            KeyKind::Email => "em",
        }
    }

    /// The kind of a key produced by [`blocking_keys`].
    pub fn of(key: &str) -> Option<KeyKind> {
        let prefix = key.split(':').next()?;
        KeyKind::ALL.into_iter().find(|k| k.prefix() == prefix)
    }

    /// Fields on which two records sharing such a key agree, or tend to
    /// agree even when they are different people, because of the key:
    /// among pairs selected by it these fields say little about whether the
    /// pair is a match. People at one address or sharing a landline are
    /// often one household, with the same surnames and landline.
    pub const fn conditioned_fields(self) -> &'static [Field] {
        const HOUSEHOLD: &[Field] = &[Field::FamilyName, Field::Street, Field::Postcode, Field::Locality, Field::Phone];
        match self {
            KeyKind::NameDate | KeyKind::NameYear | KeyKind::NameMonthDay => {
                &[Field::GivenName, Field::FamilyName, Field::BirthDate]
            }
            KeyKind::FullName => &[Field::GivenName, Field::FamilyName],
            // Only the initial of the family name is fixed: the session that
            // observes family names.
            KeyKind::DateFamilyInitial => &[Field::BirthDate],
            KeyKind::PostcodeName => {
                &[Field::GivenName, Field::FamilyName, Field::Street, Field::Postcode, Field::Locality, Field::Phone]
            }
            // People of one name in one town: the postcode follows the town.
            KeyKind::NameLocality => &[Field::GivenName, Field::FamilyName, Field::Postcode, Field::Locality],
            KeyKind::LocalityStreet | KeyKind::PostcodeStreet | KeyKind::StreetName | KeyKind::Phone => HOUSEHOLD,
            // Local parts are often made of the names.
            KeyKind::Email => &[Field::Email, Field::GivenName, Field::FamilyName],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Hashed keys of a record with their kind, sorted by hash, deduplicated.
type HashedKeys = Vec<(u64, u8)>;

/// Hashed keys of every record, computed on `threads` threads.
fn hashed_keys(records: &[Record], threads: usize) -> Vec<HashedKeys> {
    let hash_one = |r: &Record| {
        let mut h: HashedKeys = blocking_keys(r)
            .iter()
            .filter_map(|k| KeyKind::of(k).map(|kind| (key_hash(k), kind.index() as u8)))
            .collect();
        h.sort_unstable();
        h.dedup();
        h
    };
    let threads = threads.clamp(1, 64);
    if threads == 1 || records.len() < 10_000 {
        return records.iter().map(hash_one).collect();
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            records.chunks(chunk).map(|part| s.spawn(move || part.iter().map(hash_one).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// The blocks of a set of records, for enumerating candidate pairs.
struct Blocks {
    keys: Vec<HashedKeys>,
    /// (key hash, record) sorted by hash: a block is a run of one hash.
    entries: Vec<(u64, u32)>,
    /// Runs of at least 2 and at most `max_block` entries: start, end, kind.
    runs: Vec<(usize, usize, u8)>,
}

/// Flag on the kind of a key whose block is too large to use.
const OVERSIZED: u8 = 0x80;

/// The [`pair_hash`] bound that keeps every pair.
const ALL_PAIRS: u64 = u64::MAX;

/// Pairs of the blocks visited to estimate how many distinct pairs they hold.
const PILOT_PAIRS: usize = 1_000_000;

/// The [`pair_hash`] bound below which about `n` of `of` pairs fall.
fn hash_bound(n: u128, of: u128) -> u64 {
    u64::try_from(n * u128::from(u64::MAX) / of.max(1)).unwrap_or(ALL_PAIRS)
}

/// A hash of a pair of record positions `i < j`, uniform over `u64`: the
/// sampling of [`candidate_vectors_by_kind`] keeps the pairs below a bound.
fn pair_hash(i: u32, j: u32) -> u64 {
    mix64((u64::from(i) << 32 | u64::from(j)) ^ 0x5851_f42d_4c95_7f2d)
}

impl Blocks {
    fn build(records: &[Record], max_block: usize, threads: usize) -> Blocks {
        let keys = hashed_keys(records, threads);
        let mut entries: Vec<(u64, u32)> =
            keys.iter().enumerate().flat_map(|(i, ks)| ks.iter().map(move |&(h, _)| (h, i as u32))).collect();
        entries.sort_unstable();
        let mut runs = Vec::new();
        let mut oversized = HashSet::new();
        let mut start = 0;
        while start < entries.len() {
            let (hash, first) = entries[start];
            let mut end = start + 1;
            while end < entries.len() && entries[end].0 == hash {
                end += 1;
            }
            let len = end - start;
            if len > max_block {
                oversized.insert(hash);
            } else if len >= 2 {
                let kind = keys[first as usize].iter().find(|(h, _)| *h == hash).map_or(0, |&(_, k)| k);
                runs.push((start, end, kind));
            }
            start = end;
        }
        // Mark the keys of oversized blocks in place (high bit of the kind).
        let mut keys = keys;
        if !oversized.is_empty() {
            for record in &mut keys {
                for (hash, kind) in record.iter_mut() {
                    if oversized.contains(hash) {
                        *kind |= OVERSIZED;
                    }
                }
            }
        }
        Blocks { keys, entries, runs }
    }

    /// Whether `hash` is the smallest usable key shared by records `i` and
    /// `j`, so that a pair sharing several keys is visited once.
    fn is_canonical(&self, hash: u64, i: u32, j: u32) -> bool {
        let (a, b) = (&self.keys[i as usize], &self.keys[j as usize]);
        let (mut x, mut y) = (0, 0);
        while x < a.len() && y < b.len() {
            match a[x].0.cmp(&b[y].0) {
                std::cmp::Ordering::Less => x += 1,
                std::cmp::Ordering::Greater => y += 1,
                std::cmp::Ordering::Equal => {
                    if a[x].1 & OVERSIZED == 0 {
                        return a[x].0 == hash;
                    }
                    x += 1;
                    y += 1;
                }
            }
        }
        false
    }

    /// The kinds of the usable keys shared by records `i` and `j`, as a bit set.
    fn shared_kinds(&self, i: u32, j: u32) -> u32 {
        let (a, b) = (&self.keys[i as usize], &self.keys[j as usize]);
        let (mut x, mut y) = (0, 0);
        let mut kinds = 0u32;
        while x < a.len() && y < b.len() {
            match a[x].0.cmp(&b[y].0) {
                std::cmp::Ordering::Less => x += 1,
                std::cmp::Ordering::Greater => y += 1,
                std::cmp::Ordering::Equal => {
                    if a[x].1 & OVERSIZED == 0 {
                        kinds |= 1 << a[x].1;
                    }
                    x += 1;
                    y += 1;
                }
            }
        }
        kinds
    }

    /// Visit the pairs of the runs `t, t + step, t + 2·step, …`, each pair
    /// once overall (from the first key it shares), with the kind of that key;
    /// only the pairs whose [`pair_hash`] is at most `keep` ([`ALL_PAIRS`]:
    /// every pair).
    fn visit(&self, t: usize, step: usize, keep: u64, mut visit: impl FnMut(u32, u32, u8)) {
        for &(start, end, kind) in self.runs.iter().skip(t).step_by(step.max(1)) {
            let run = &self.entries[start..end];
            let hash = run[0].0;
            for (k, &(_, i)) in run.iter().enumerate() {
                for &(_, j) in &run[k + 1..] {
                    let (i, j) = (i.min(j), i.max(j));
                    if (keep == ALL_PAIRS || pair_hash(i, j) <= keep) && self.is_canonical(hash, i, j) {
                        visit(i, j, kind);
                    }
                }
            }
        }
    }

    /// The [`pair_hash`] bound that keeps about `max_pairs` distinct pairs
    /// ([`ALL_PAIRS`] when there are no more). A pair sharing several keys
    /// is in several blocks, so how many distinct pairs the blocks hold is
    /// estimated from a pilot sample of about [`PILOT_PAIRS`] of them.
    fn keep_at_most(&self, max_pairs: usize) -> u64 {
        let in_blocks: u128 = self
            .runs
            .iter()
            .map(|&(start, end, _)| {
                let n = (end - start) as u128;
                n * (n - 1) / 2
            })
            .sum();
        if in_blocks <= max_pairs as u128 {
            return ALL_PAIRS;
        }
        let pilot = hash_bound(PILOT_PAIRS.min(max_pairs) as u128, in_blocks);
        let mut seen: u128 = 0;
        self.visit(0, 1, pilot, |_, _, _| seen += 1);
        let distinct = seen * u128::from(u64::MAX) / u128::from(pilot.max(1));
        if distinct <= max_pairs as u128 { ALL_PAIRS } else { hash_bound(max_pairs as u128, distinct) }
    }

    /// Count comparison vectors on `threads` threads, comparing every pair
    /// once: with `per_kind`, one set per key kind (pairs sharing a key of
    /// that kind), then one set per key kind of the pairs whose first shared
    /// key is of that kind (so every pair once); otherwise only the set of
    /// all pairs.
    fn count(&self, records: &[Record], threads: usize, per_kind: bool, keep: u64) -> Vec<VectorCounts> {
        let threads = threads.clamp(1, 64);
        let kinds = KeyKind::ALL.len();
        let slots = if per_kind { 2 * kinds } else { 1 };
        let work = |t: usize| {
            let mut counts = vec![VectorCounts::new(); slots];
            // Every pair once (from its first shared key), compared once.
            self.visit(t, threads, keep, |i, j, first| {
                let v = compare(&records[i as usize], &records[j as usize]);
                if per_kind {
                    let shared = self.shared_kinds(i, j);
                    for (kind, set) in counts.iter_mut().take(kinds).enumerate() {
                        if shared & (1 << kind) != 0 {
                            set.add(v);
                        }
                    }
                    counts[kinds + usize::from(first)].add(v);
                } else {
                    counts[0].add(v);
                }
            });
            counts
        };
        let parts: Vec<Vec<VectorCounts>> = if threads == 1 {
            vec![work(0)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || work(t))).collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            })
        };
        let mut total = vec![VectorCounts::new(); slots];
        for part in parts {
            for (t, p) in total.iter_mut().zip(&part) {
                t.merge(p);
            }
        }
        total
    }
}

/// All candidate pairs `(i, j)`, `i < j`, of a set of records: pairs sharing
/// a blocking key in a block of at most `max_block` records, each once,
/// sorted.
pub fn candidate_pairs(records: &[Record], max_block: usize) -> Vec<(u32, u32)> {
    let blocks = Blocks::build(records, max_block, 1);
    let mut pairs = Vec::new();
    blocks.visit(0, 1, ALL_PAIRS, |i, j, _| pairs.push((i, j)));
    pairs.sort_unstable();
    pairs
}

/// The comparison vectors of all candidate pairs (see [`candidate_pairs`]),
/// counted, computed on `threads` threads: the input of
/// [`super::train_counts`].
pub fn candidate_vectors(records: &[Record], max_block: usize, threads: usize) -> VectorCounts {
    let blocks = Blocks::build(records, max_block, threads);
    blocks.count(records, threads, false, ALL_PAIRS).pop().unwrap_or_default()
}

/// Candidate comparison vectors by the kind of key that selected them.
#[derive(Clone, Debug, Default)]
pub struct CandidateVectors {
    /// Per key kind, in [`KeyKind::ALL`] order, the vectors of the pairs
    /// sharing a key of that kind (a pair sharing keys of several kinds
    /// counts once in each).
    pub by_kind: Vec<(KeyKind, VectorCounts)>,
    /// Every candidate pair once, under the kind of the first key (in hash
    /// order) it shares, in [`KeyKind::ALL`] order.
    pub by_first_kind: Vec<(KeyKind, VectorCounts)>,
}

impl CandidateVectors {
    /// Every candidate pair once.
    pub fn all(&self) -> VectorCounts {
        let mut all = VectorCounts::new();
        for (_, counts) in &self.by_first_kind {
            all.merge(counts);
        }
        all
    }
}

/// The comparison vectors of the candidate pairs, per key kind and overall,
/// computed on `threads` threads with one comparison per pair. When the
/// blocks hold more than about `max_pairs` pairs, a uniform sample of about
/// that many: each pair is kept or left out by a hash of the two records'
/// positions alone, whichever key it is found by, so every kind's share of
/// levels (and of matches) is estimated without bias, and training time is
/// bounded however large the base grows.
pub fn candidate_vectors_by_kind(
    records: &[Record],
    max_block: usize,
    threads: usize,
    max_pairs: usize,
) -> CandidateVectors {
    let blocks = Blocks::build(records, max_block, threads);
    let keep = blocks.keep_at_most(max_pairs);
    let mut by_kind = blocks.count(records, threads, true, keep);
    let by_first_kind = by_kind.split_off(KeyKind::ALL.len());
    CandidateVectors {
        by_kind: KeyKind::ALL.into_iter().zip(by_kind).collect(),
        by_first_kind: KeyKind::ALL.into_iter().zip(by_first_kind).collect(),
    }
}

#[cfg(test)]
mod tests {
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

    fn shares_key(a: &Record, b: &Record) -> bool {
        let kb = blocking_keys(b);
        blocking_keys(a).iter().any(|k| kb.contains(k))
    }

    #[test]
    fn keys_are_typed_and_deduplicated() {
        let keys = blocking_keys(&jose());
        assert!(keys.contains(&"nd:JS:19800512".to_string()), "{keys:?}");
        assert!(keys.contains(&"nd:GRS:19800512".to_string()), "{keys:?}");
        assert!(keys.contains(&"ny:GRS:JS:1980".to_string()), "{keys:?}");
        assert!(keys.contains(&"nm:GRS:JS:0512".to_string()), "{keys:?}");
        assert!(keys.contains(&"pc:28013:JS:g".to_string()), "{keys:?}");
        assert!(keys.contains(&"pc:28013:GRS:j".to_string()), "{keys:?}");
        assert!(keys.contains(&"df:19800512:g".to_string()), "{keys:?}");
        assert!(keys.contains(&"nn:JS:GRS:LPS".to_string()), "{keys:?}");
        assert!(keys.contains(&"ad:madrid:MYR:12".to_string()), "{keys:?}");
        assert!(keys.contains(&"ap:28013:MYR:12".to_string()), "{keys:?}");
        assert!(keys.contains(&"nl:GRS:JS:madrid".to_string()), "{keys:?}");
        assert!(keys.contains(&"sn:MYR:12:GRS".to_string()), "{keys:?}");
        assert!(keys.contains(&"ph:0111222".to_string()), "{keys:?}");
        assert!(keys.contains(&"em:jose.garcia".to_string()), "{keys:?}");
        let prefixes: HashSet<&str> = keys.iter().filter_map(|k| k.split(':').next()).collect();
        assert_eq!(prefixes.len(), KeyKind::ALL.len());
        assert!(blocking_keys(&Record::default()).is_empty());
    }

    #[test]
    fn corrupted_duplicates_share_a_key() {
        let a = jose();
        let mut swapped = a.clone();
        swapped.given_name = a.family_name.clone();
        swapped.family_name = a.given_name.clone();
        swapped.phone.clear();
        swapped.email.clear();
        swapped.birth_date = Some((1980, 12, 5));
        assert!(shares_key(&a, &swapped));

        let mut moved = a.clone();
        moved.street = "avenida de america 3".into();
        moved.postcode = "08001".into();
        moved.phone.clear();
        moved.email.clear();
        moved.given_name = "pepe".into();
        assert!(shares_key(&a, &moved));

        let mut typo = a.clone();
        typo.family_name = "garzia".into();
        typo.given_name = "joze".into();
        typo.phone.clear();
        typo.email.clear();
        assert!(shares_key(&a, &typo));
    }

    /// Whether `a` and `b` share a key, and only of `kind`.
    fn share_only(a: &Record, b: &Record, kind: KeyKind) -> bool {
        let kb = blocking_keys(b);
        let shared: Vec<String> = blocking_keys(a).into_iter().filter(|k| kb.contains(k)).collect();
        !shared.is_empty() && shared.iter().all(|k| KeyKind::of(k) == Some(kind))
    }

    #[test]
    fn a_move_within_the_town_without_a_birth_date_keeps_the_name_key() {
        // One surname: the full name alone is no key.
        let a = Record { birth_date: None, family_name: "garcia".into(), ..jose() };
        let moved = Record {
            street: "avenida de america 3".into(),
            postcode: "28002".into(),
            phone: String::new(),
            email: String::new(),
            ..a.clone()
        };
        assert!(share_only(&a, &moved, KeyKind::NameLocality));
        // Another town: nothing in common.
        assert!(!shares_key(&a, &Record { locality: "getafe".into(), postcode: "28901".into(), ..moved }));
    }

    #[test]
    fn a_mistyped_postcode_and_locality_keep_the_street_and_name_key() {
        let a = Record { birth_date: None, ..jose() };
        let typos = Record {
            given_name: "a".into(),
            postcode: "28031".into(),
            locality: "marrid".into(),
            phone: String::new(),
            email: String::new(),
            ..a.clone()
        };
        assert!(share_only(&a, &typos, KeyKind::StreetName));
    }

    #[test]
    fn candidate_pairs_are_unique() {
        let a = jose();
        let mut b = a.clone();
        b.email = "other@x.es".into();
        let c = Record { given_name: "ana".into(), family_name: "silva".into(), ..Record::default() };
        let records = vec![a.clone(), b, c, a];
        let pairs = candidate_pairs(&records, DEFAULT_MAX_BLOCK);
        assert_eq!(pairs, vec![(0, 1), (0, 3), (1, 3)]);
        let counts = candidate_vectors(&records, DEFAULT_MAX_BLOCK, 2);
        assert_eq!(counts.total(), 3);
        let vectors = candidate_vectors_by_kind(&records, DEFAULT_MAX_BLOCK, 1, usize::MAX);
        assert_eq!(vectors.all(), counts);
        let by_kind = vectors.by_kind;
        assert_eq!(by_kind.len(), KeyKind::ALL.len());
        // The three copies share a name-and-date key: each pair is counted for that kind.
        let name_date = &by_kind[KeyKind::NameDate as usize];
        assert_eq!((name_date.0, name_date.1.total()), (KeyKind::NameDate, 3));
        let email = &by_kind[KeyKind::Email as usize];
        assert_eq!(email.1.total(), 1, "only records 0 and 3 share the e-mail");
        for key in blocking_keys(&records[0]) {
            assert!(KeyKind::of(&key).is_some(), "{key}");
        }
        // With a tiny block limit every block is skipped.
        assert!(candidate_pairs(&records, 1).is_empty());

        let mut index = BlockIndex::new();
        for (i, r) in records.iter().enumerate() {
            index.insert(i as u32, &blocking_keys(r));
        }
        assert_eq!(index.candidates(&blocking_keys(&records[0]), DEFAULT_MAX_BLOCK, MAX_CANDIDATES), vec![0, 1, 3]);
        assert!(!index.is_empty());
    }

    /// Of more candidates than asked for, those sharing the most keys are
    /// kept, the earliest first among equals.
    #[test]
    fn a_crowd_of_candidates_keeps_those_sharing_the_most_keys() {
        let keys: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut index = BlockIndex::new();
        for id in 0..10 {
            index.insert(id, &keys[..1]);
        }
        index.insert(20, &keys[..3]);
        index.insert(21, &keys[1..2]);
        index.insert(22, &keys[1..3]);
        assert_eq!(index.candidates(&keys, 100, 100).len(), 13);
        assert_eq!(index.candidates(&keys, 100, 4), vec![0, 1, 20, 22]);
        assert_eq!(index.candidates(&keys, 100, 1), vec![20]);
        // A block above the limit is skipped before any is ranked.
        assert_eq!(index.candidates(&keys, 9, 2), vec![20, 22]);
    }
}
