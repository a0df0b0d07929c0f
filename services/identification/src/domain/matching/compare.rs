//! Field comparisons: each field of a pair of records falls into one
//! *comparison level* (exact, similar, …, different). Level 0 of every
//! field is `null`: the value is missing on at least one side, which is no
//! evidence either way (weight 0).

use super::Record;
use super::nicknames;
use super::phonetic::phonetic_first;
use super::text::{alphanumerics, digits, is_connector, jaro_winkler, significant_tokens};

/// Number of compared fields.
pub const FIELD_COUNT: usize = 8;

/// Level index of a missing value, in every field.
pub const NULL: u8 = 0;

/// A compared field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Given name(s).
    GivenName,
    /// Family name(s), possibly two surnames.
    FamilyName,
    /// Date of birth.
    BirthDate,
    /// First address line.
    Street,
    /// Postal code.
    Postcode,
    /// Town or city.
    Locality,
    /// Phone number (E.164).
    Phone,
    /// E-mail address.
    Email,
}

/// Level indices of [`Field::GivenName`].
pub mod given {
    /// Identical.
    pub const EXACT: u8 = 1;
    /// Jaro–Winkler ≥ 0.94, or one name's words all in the other (`maria` / `maria jose`).
    pub const SIMILAR: u8 = 2;
    /// Nickname or other-language form (`pepe` / `jose`, `jordi` / `jorge`).
    pub const NICKNAME: u8 = 3;
    /// Jaro–Winkler ≥ 0.88, or the same phonetic code.
    pub const FUZZY: u8 = 4;
    /// One side is only the initial of the other (`j` / `jose`).
    pub const INITIAL: u8 = 5;
    /// Anything else.
    pub const DIFFERENT: u8 = 6;
}

/// Level indices of [`Field::FamilyName`].
pub mod family {
    /// Identical.
    pub const EXACT: u8 = 1;
    /// Jaro–Winkler ≥ 0.94, or the same surnames in another order.
    pub const SIMILAR: u8 = 2;
    /// One surname in common (`garcia` / `garcia lopez`).
    pub const ONE_SURNAME: u8 = 3;
    /// Jaro–Winkler ≥ 0.85, the same phonetic code, or two surnames with Jaro–Winkler ≥ 0.92.
    pub const FUZZY: u8 = 4;
    /// Anything else.
    pub const DIFFERENT: u8 = 5;
}

/// Level indices of [`Field::BirthDate`].
pub mod birth_date {
    /// Same complete date.
    pub const EXACT: u8 = 1;
    /// Day and month transposed.
    pub const DAY_MONTH_SWAPPED: u8 = 2;
    /// Same year and month (day different or unknown on one side).
    pub const YEAR_MONTH: u8 = 3;
    /// One component off by one decimal digit, the other two equal.
    pub const ONE_DIGIT: u8 = 4;
    /// Anything else.
    pub const DIFFERENT: u8 = 5;
}

/// Level indices of [`Field::Street`].
pub mod street {
    /// Identical.
    pub const EXACT: u8 = 1;
    /// Street names alike (Jaro–Winkler ≥ 0.88 or ≥ 60 % of words shared) and the same house number.
    pub const SIMILAR: u8 = 2;
    /// Street names alike, but house numbers or street kinds (`calle` / `plaza`) different.
    pub const SAME_STREET: u8 = 3;
    /// Anything else.
    pub const DIFFERENT: u8 = 4;
}

/// Level indices of [`Field::Postcode`].
pub mod postcode {
    /// Identical (ignoring spaces and dashes).
    pub const EXACT: u8 = 1;
    /// Same first three characters.
    pub const PREFIX3: u8 = 2;
    /// Anything else.
    pub const DIFFERENT: u8 = 3;
}

/// Level indices of [`Field::Locality`].
pub mod locality {
    /// Identical.
    pub const EXACT: u8 = 1;
    /// Jaro–Winkler ≥ 0.90.
    pub const SIMILAR: u8 = 2;
    /// Anything else.
    pub const DIFFERENT: u8 = 3;
}

/// Level indices of [`Field::Phone`].
pub mod phone {
    /// Same digits.
    pub const EXACT: u8 = 1;
    /// Same last seven digits (prefix written differently).
    pub const LAST7: u8 = 2;
    /// Same length, one digit different or two adjacent digits swapped.
    pub const ONE_DIGIT: u8 = 3;
    /// Anything else.
    pub const DIFFERENT: u8 = 4;
}

/// Level indices of [`Field::Email`].
pub mod email {
    /// Identical.
    pub const EXACT: u8 = 1;
    /// Same local part at another domain (unless the local part is made of
    /// the names only: then the level is `null`).
    pub const SAME_LOCAL: u8 = 2;
    /// Same domain, local parts with Jaro–Winkler ≥ 0.9 (a typo).
    pub const SIMILAR: u8 = 3;
    /// Anything else.
    pub const DIFFERENT: u8 = 4;
}

impl Field {
    /// Every field, in the order of [`ComparisonVector`] and of the model.
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::GivenName,
        Field::FamilyName,
        Field::BirthDate,
        Field::Street,
        Field::Postcode,
        Field::Locality,
        Field::Phone,
        Field::Email,
    ];

    /// Position in [`Field::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable name used in explanations.
    pub const fn name(self) -> &'static str {
        match self {
            Field::GivenName => "given_name",
            Field::FamilyName => "family_name",
            Field::BirthDate => "birth_date",
            Field::Street => "street",
            Field::Postcode => "postcode",
            Field::Locality => "locality",
            Field::Phone => "phone",
            Field::Email => "email",
        }
    }

    /// Names of the levels; index 0 is always `null`.
    pub const fn levels(self) -> &'static [&'static str] {
        match self {
            Field::GivenName => &["null", "exact", "similar", "nickname", "fuzzy", "initial", "different"],
            Field::FamilyName => &["null", "exact", "similar", "one_surname", "fuzzy", "different"],
            Field::BirthDate => &["null", "exact", "day_month_swapped", "year_month", "one_digit", "different"],
            Field::Street => &["null", "exact", "similar", "same_street", "different"],
            Field::Postcode => &["null", "exact", "prefix3", "different"],
            Field::Locality => &["null", "exact", "similar", "different"],
            Field::Phone => &["null", "exact", "last7", "one_digit", "different"],
            Field::Email => &["null", "exact", "same_local", "similar", "different"],
        }
    }

    /// Number of levels including `null`.
    pub const fn level_count(self) -> usize {
        self.levels().len()
    }
}

/// The comparison level of every field for one pair of records: small,
/// `Copy` and hashable, so identical vectors can be counted together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComparisonVector([u8; FIELD_COUNT]);

impl ComparisonVector {
    /// A vector from level indices in [`Field::ALL`] order; `None` when a
    /// level is out of range for its field.
    pub fn new(levels: [u8; FIELD_COUNT]) -> Option<Self> {
        Field::ALL.iter().zip(levels).all(|(f, l)| usize::from(l) < f.level_count()).then_some(Self(levels))
    }

    /// Level of one field.
    pub fn level(self, field: Field) -> u8 {
        self.0[field.index()]
    }

    /// Name of the level of one field.
    pub fn level_name(self, field: Field) -> &'static str {
        field.levels().get(usize::from(self.level(field))).copied().unwrap_or("null")
    }

    /// All levels in [`Field::ALL`] order.
    pub fn levels(self) -> [u8; FIELD_COUNT] {
        self.0
    }

    /// The same vector with `field` set to `null` (no evidence).
    pub fn without(mut self, field: Field) -> Self {
        self.0[field.index()] = NULL;
        self
    }
}

/// Compare two records field by field. The locality is `null` when the
/// postcodes are equal, and so is the e-mail when only a local part made of
/// the names is shared, or two such local parts are merely alike (both
/// would repeat other fields' evidence).
pub fn compare(a: &Record, b: &Record) -> ComparisonVector {
    let (given, family) = compare_names(a, b);
    let postcode = compare_postcode(&a.postcode, &b.postcode);
    // The postcode implies the locality: comparing both would count one
    // fact twice.
    let locality = if postcode == postcode::EXACT { NULL } else { compare_locality(&a.locality, &b.locality) };
    // The same name-made local part at two providers repeats the names'
    // evidence: namesakes have it too.
    let email = match compare_email(&a.email, &b.email) {
        email::SAME_LOCAL if name_derived_local(email_local(&a.email), a, b) => NULL,
        // Two local parts made of the names that differ only in what is
        // left (`ana.santos90` / `ana.santos79`) are what namesakes hold.
        email::SIMILAR
            if name_derived_local(email_local(&a.email), a, b) && name_derived_local(email_local(&b.email), a, b) =>
        {
            NULL
        }
        level => level,
    };
    ComparisonVector([
        given,
        family,
        compare_birth_date(a.birth_date, b.birth_date),
        compare_street(&a.street, &b.street),
        postcode,
        locality,
        compare_phone(&a.phone, &b.phone),
        email,
    ])
}

/// Whether an e-mail local part is made of the person's names: once the
/// given and family name words (of either record) and separators are taken
/// out, at most two characters remain (`jose.garcia`, `jgarcia`,
/// `garcia80`), so that two namesakes may well hold it at different
/// providers.
fn name_derived_local(local: &str, a: &Record, b: &Record) -> bool {
    let mut rest = local.to_string();
    for name in [&a.given_name, &a.family_name, &b.given_name, &b.family_name] {
        for word in significant_tokens(name).filter(|w| w.len() >= 3) {
            rest = rest.replace(word, "");
        }
    }
    rest.len() < local.len() && rest.chars().filter(|c| c.is_alphanumeric()).count() <= 2
}

/// Given and family name levels, recognising a swap of the two fields
/// (`jose` / `garcia lopez` against `garcia lopez` / `jose`).
fn compare_names(a: &Record, b: &Record) -> (u8, u8) {
    let given = compare_given(&a.given_name, &b.given_name);
    let family = compare_family(&a.family_name, &b.family_name);
    let strong_given = |g: u8| matches!(g, given::EXACT | given::SIMILAR | given::NICKNAME);
    let strong_family = |f: u8| matches!(f, family::EXACT | family::SIMILAR | family::ONE_SURNAME);
    if strong_given(given) || strong_family(family) {
        return (given, family);
    }
    if given == given::DIFFERENT
        && let Some(levels) = surnames_for_given_name(a, b).or_else(|| surnames_for_given_name(b, a))
    {
        return levels;
    }
    if a.given_name.is_empty() || a.family_name.is_empty() || b.given_name.is_empty() || b.family_name.is_empty() {
        return (given, family);
    }
    if a.given_name == b.family_name && a.family_name == b.given_name {
        return (given::EXACT, family::EXACT);
    }
    // A swap needs the crossed names to be at least alike: they share a
    // first letter (typos rarely hit it), and the crossed family names
    // must not be different. Most pairs of strangers stop here.
    let first = |s: &str| s.as_bytes().first().copied();
    if first(&a.given_name) != first(&b.family_name) && first(&a.family_name) != first(&b.given_name) {
        return (given, family);
    }
    let strong = |g: u8, f: u8| strong_given(g) && strong_family(f);
    // Either record may be the swapped one: the given names are then
    // `a`'s given and `b`'s family field, or `a`'s family and `b`'s given
    // field, each pair compared as what it holds.
    let crossed = |given_pair: (&str, &str), family_pair: (&str, &str)| {
        let crossed_family = compare_family(family_pair.0, family_pair.1);
        if crossed_family == family::DIFFERENT {
            return None;
        }
        let crossed_given = compare_given(given_pair.0, given_pair.1);
        let weak_given = matches!(crossed_given, given::FUZZY | given::INITIAL);
        let weak_family = crossed_family == family::FUZZY;
        (strong(crossed_given, crossed_family)
            || (weak_given && strong(given::EXACT, crossed_family))
            || (weak_family && strong(crossed_given, family::EXACT)))
        .then_some((crossed_given, crossed_family))
    };
    crossed((&a.given_name, &b.family_name), (&a.family_name, &b.given_name))
        .or_else(|| crossed((&a.family_name, &b.given_name), (&a.given_name, &b.family_name)))
        .unwrap_or((given, family))
}

/// A record with no family name whose given name is the other's surnames
/// (`santos sousa` / nothing against `adriana` / `santos sousa`): the
/// surnames were written in the wrong field, and no given name was. Two
/// surnames at least, since a single one is often a given name too
/// (`martin`, `santos`). For given names found different.
fn surnames_for_given_name(a: &Record, b: &Record) -> Option<(u8, u8)> {
    if !a.family_name.is_empty() || b.family_name.is_empty() || significant_tokens(&a.given_name).count() < 2 {
        return None;
    }
    let family = compare_family(&a.given_name, &b.family_name);
    matches!(family, family::EXACT | family::SIMILAR).then_some((NULL, family))
}

/// Level of two given names.
pub fn compare_given(a: &str, b: &str) -> u8 {
    if a.is_empty() || b.is_empty() {
        return NULL;
    }
    if a == b {
        return given::EXACT;
    }
    let jw = jaro_winkler(a, b);
    if jw >= 0.94 || words_within(a, b) || words_within(b, a) {
        return given::SIMILAR;
    }
    if nicknames::are_equivalent(a, b) {
        return given::NICKNAME;
    }
    if jw >= 0.88 || (jw >= 0.75 && same_sound(a, b)) {
        return given::FUZZY;
    }
    if is_initial_of(a, b) || is_initial_of(b, a) {
        return given::INITIAL;
    }
    given::DIFFERENT
}

/// Whether the first significant words of two names sound alike: the
/// same phonetic code of at least three letters (short codes are shared by
/// unrelated names; callers also require a Jaro–Winkler similarity of at
/// least 0.75).
fn same_sound(a: &str, b: &str) -> bool {
    let code = phonetic_first(a);
    code.len() >= 3 && code == phonetic_first(b)
}

/// Whether every significant word of `a` is a word of `b`.
fn words_within(a: &str, b: &str) -> bool {
    let mut any = false;
    for word in significant_tokens(a) {
        if !significant_tokens(b).any(|w| w == word) {
            return false;
        }
        any = true;
    }
    any
}

/// Whether `a` is a single letter that starts `b`.
fn is_initial_of(a: &str, b: &str) -> bool {
    a.len() == 1 && b.len() > 1 && b.as_bytes().first() == a.as_bytes().first()
}

/// Level of two family names.
pub fn compare_family(a: &str, b: &str) -> u8 {
    if a.is_empty() || b.is_empty() {
        return NULL;
    }
    if a == b {
        return family::EXACT;
    }
    let jw = jaro_winkler(a, b);
    if jw >= 0.94 || (words_within(a, b) && words_within(b, a)) {
        return family::SIMILAR;
    }
    if significant_tokens(a).any(|x| x.len() > 1 && significant_tokens(b).any(|y| x == y)) {
        return family::ONE_SURNAME;
    }
    if jw >= 0.85
        || (jw >= 0.75 && same_sound(a, b))
        || significant_tokens(a).any(|x| {
            x.len() > 3
                && significant_tokens(b)
                    .any(|y| y.len() > 3 && x.as_bytes()[0] == y.as_bytes()[0] && jaro_winkler(x, y) >= 0.92)
        })
    {
        return family::FUZZY;
    }
    family::DIFFERENT
}

/// Level of two dates of birth `(year, month, day)`; month or day 0 is
/// unknown, year 0 makes the whole date unknown.
pub fn compare_birth_date(a: Option<(i32, u32, u32)>, b: Option<(i32, u32, u32)>) -> u8 {
    let (Some((ya, ma, da)), Some((yb, mb, db))) = (a, b) else {
        return NULL;
    };
    if ya == 0 || yb == 0 {
        return NULL;
    }
    let complete = ma != 0 && da != 0 && mb != 0 && db != 0;
    if complete && (ya, ma, da) == (yb, mb, db) {
        return birth_date::EXACT;
    }
    if complete && ya == yb && ma == db && da == mb {
        return birth_date::DAY_MONTH_SWAPPED;
    }
    if ya == yb && (ma == mb || ma == 0 || mb == 0) {
        return birth_date::YEAR_MONTH;
    }
    if complete
        && ((ma == mb && da == db && one_digit_apart(ya.unsigned_abs(), yb.unsigned_abs()))
            || (ya == yb && da == db && one_digit_apart(ma, mb)))
    {
        return birth_date::ONE_DIGIT;
    }
    birth_date::DIFFERENT
}

/// Whether two numbers differ in exactly one decimal digit.
fn one_digit_apart(mut a: u32, mut b: u32) -> bool {
    let mut differing = 0;
    while a > 0 || b > 0 {
        if a % 10 != b % 10 {
            differing += 1;
        }
        a /= 10;
        b /= 10;
    }
    differing == 1
}

/// Words that name the kind of street rather than the street, with the
/// kind they stand for (Spanish, Catalan and Portuguese words and usual
/// abbreviations of one kind share it: `c`, `calle`, `carrer`, `rua`).
const STREET_TYPES: &[(&str, &str)] = &[
    ("av", "avenida"),
    ("avd", "avenida"),
    ("avda", "avenida"),
    ("avenida", "avenida"),
    ("avinguda", "avenida"),
    ("c", "calle"),
    ("calle", "calle"),
    ("cami", "camino"),
    ("camino", "camino"),
    ("carrer", "calle"),
    ("carretera", "carretera"),
    ("cl", "calle"),
    ("ctra", "carretera"),
    ("estrada", "carretera"),
    ("largo", "largo"),
    ("passeig", "paseo"),
    ("paseo", "paseo"),
    ("pg", "paseo"),
    ("pl", "plaza"),
    ("placa", "plaza"),
    ("plaza", "plaza"),
    ("praca", "plaza"),
    ("pz", "plaza"),
    ("pza", "plaza"),
    ("r", "calle"),
    ("rambla", "rambla"),
    ("rda", "ronda"),
    ("ronda", "ronda"),
    ("rua", "calle"),
    ("travesia", "travesia"),
    ("travessa", "travesia"),
    ("urb", "urbanizacion"),
    ("urbanizacion", "urbanizacion"),
];

/// The kind of street a word names, if it is a street-type word.
fn street_type(token: &str) -> Option<&'static str> {
    STREET_TYPES.iter().find(|(word, _)| *word == token).map(|(_, kind)| *kind)
}

/// A folded street line split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreetParts<'a> {
    /// Kind of street (`calle`, `avenida`, …) when the line starts with one.
    pub kind: Option<&'static str>,
    /// The name (a slice, without the street type and leading connector words).
    pub name: &'a str,
    /// House number.
    pub number: Option<&'a str>,
}

/// Split a folded street. The house number is the first all-digit word
/// after a word with letters, so names that start with a number
/// (`rua 25 de abril 30`) keep it.
pub(crate) fn street_parts(s: &str) -> StreetParts<'_> {
    let mut kind = None;
    let mut start = None;
    let mut end = 0;
    let mut seen_word = false;
    let mut offset = 0;
    let mut number = None;
    for token in s.split(' ') {
        let token_start = offset;
        offset += token.len() + 1;
        if token.is_empty() {
            continue;
        }
        let numeric = token.bytes().all(|c| c.is_ascii_digit());
        if numeric && seen_word {
            number = Some(token);
            break;
        }
        if start.is_none() && !numeric {
            if let Some(k) = street_type(token) {
                kind = kind.or(Some(k));
                continue;
            }
            if is_connector(token) {
                continue;
            }
        }
        start.get_or_insert(token_start);
        end = token_start + token.len();
        seen_word |= !numeric;
    }
    StreetParts { kind, name: start.and_then(|st| s.get(st..end)).unwrap_or(""), number }
}

/// Level of two folded first address lines. Streets of different kinds
/// (`plaza mayor` / `calle mayor`) are different places, unless the whole
/// lines are near-identical (a typo in the street type).
pub fn compare_street(a: &str, b: &str) -> u8 {
    if a.is_empty() || b.is_empty() {
        return NULL;
    }
    if a == b {
        return street::EXACT;
    }
    let pa = street_parts(a);
    let pb = street_parts(b);
    // Whole-line similarity, computed only when needed (long strings).
    let mut whole_cache = None;
    let mut whole = || *whole_cache.get_or_insert_with(|| jaro_winkler(a, b));
    let names_alike = if pa.name.is_empty() || pb.name.is_empty() {
        whole() >= 0.88
    } else {
        pa.name == pb.name
            || jaro_winkler(pa.name, pb.name) >= 0.88
            || word_overlap(pa.name, pb.name) >= 0.6
            || whole() >= 0.94
    };
    if !names_alike {
        return street::DIFFERENT;
    }
    let same_number = !matches!((pa.number, pb.number), (Some(x), Some(y)) if x != y);
    let same_kind = match (pa.kind, pb.kind) {
        (Some(x), Some(y)) => x == y || whole() >= 0.94,
        _ => true,
    };
    if same_number && same_kind { street::SIMILAR } else { street::SAME_STREET }
}

/// Shared significant words over the larger word count.
fn word_overlap(a: &str, b: &str) -> f64 {
    let count_a = significant_tokens(a).count();
    let count_b = significant_tokens(b).count();
    if count_a == 0 || count_b == 0 {
        return 0.0;
    }
    let shared = significant_tokens(a).filter(|x| significant_tokens(b).any(|y| y == *x)).count();
    shared as f64 / count_a.max(count_b) as f64
}

/// Level of two postcodes (only letters and digits compared).
pub fn compare_postcode(a: &str, b: &str) -> u8 {
    let (x, y) = (alphanumerics(a), alphanumerics(b));
    if x.clone().next().is_none() || y.clone().next().is_none() {
        return NULL;
    }
    if x.clone().eq(y.clone()) {
        return postcode::EXACT;
    }
    let (px, py) = (x.take(3), y.take(3));
    if px.clone().count() == 3 && px.eq(py) {
        return postcode::PREFIX3;
    }
    postcode::DIFFERENT
}

/// Level of two folded localities.
pub fn compare_locality(a: &str, b: &str) -> u8 {
    if a.is_empty() || b.is_empty() {
        return NULL;
    }
    if a == b {
        return locality::EXACT;
    }
    if jaro_winkler(a, b) >= 0.90 {
        return locality::SIMILAR;
    }
    locality::DIFFERENT
}

/// Up to 24 digits of a phone number.
fn phone_digits(s: &str) -> ([u8; 24], usize) {
    let mut buf = [0u8; 24];
    let mut n = 0;
    for d in digits(s).take(24) {
        buf[n] = d;
        n += 1;
    }
    (buf, n)
}

/// Level of two phone numbers (only digits compared).
pub fn compare_phone(a: &str, b: &str) -> u8 {
    let (buf_a, len_a) = phone_digits(a);
    let (buf_b, len_b) = phone_digits(b);
    let (x, y) = (&buf_a[..len_a], &buf_b[..len_b]);
    if x.is_empty() || y.is_empty() {
        return NULL;
    }
    if x == y {
        return phone::EXACT;
    }
    if x.len() >= 7 && y.len() >= 7 && x[x.len() - 7..] == y[y.len() - 7..] {
        return phone::LAST7;
    }
    if x.len() == y.len() {
        let differing: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).collect();
        let swapped = differing.len() == 2
            && differing[1] == differing[0] + 1
            && x[differing[0]] == y[differing[1]]
            && x[differing[1]] == y[differing[0]];
        if differing.len() == 1 || swapped {
            return phone::ONE_DIGIT;
        }
    }
    phone::DIFFERENT
}

/// The part of an e-mail address before `@` (all of it without `@`).
fn email_local(s: &str) -> &str {
    s.split_once('@').map_or(s, |(l, _)| l)
}

/// Level of two normalised e-mail addresses.
pub fn compare_email(a: &str, b: &str) -> u8 {
    if a.is_empty() || b.is_empty() {
        return NULL;
    }
    if a == b {
        return email::EXACT;
    }
    let (local_a, domain_a) = a.split_once('@').unwrap_or((a, ""));
    let (local_b, domain_b) = b.split_once('@').unwrap_or((b, ""));
    if local_a == local_b && !local_a.is_empty() {
        return email::SAME_LOCAL;
    }
    if domain_a == domain_b && jaro_winkler(local_a, local_b) >= 0.9 {
        return email::SIMILAR;
    }
    email::DIFFERENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(given: &str, family: &str) -> Record {
        Record { given_name: given.into(), family_name: family.into(), ..Record::default() }
    }

    #[test]
    fn level_tables_are_consistent() {
        for field in Field::ALL {
            assert_eq!(field.levels()[0], "null");
            assert!(field.level_count() <= 8);
            assert_eq!(Field::ALL[field.index()], field);
        }
        assert_eq!(Field::GivenName.levels()[usize::from(given::DIFFERENT)], "different");
        assert_eq!(Field::FamilyName.levels()[usize::from(family::DIFFERENT)], "different");
        assert_eq!(Field::BirthDate.levels()[usize::from(birth_date::DIFFERENT)], "different");
        assert_eq!(Field::Street.levels()[usize::from(street::DIFFERENT)], "different");
        assert_eq!(Field::Postcode.levels()[usize::from(postcode::DIFFERENT)], "different");
        assert_eq!(Field::Locality.levels()[usize::from(locality::DIFFERENT)], "different");
        assert_eq!(Field::Phone.levels()[usize::from(phone::DIFFERENT)], "different");
        assert_eq!(Field::Email.levels()[usize::from(email::DIFFERENT)], "different");
        assert!(ComparisonVector::new([6, 5, 5, 4, 3, 3, 4, 4]).is_some());
        assert!(ComparisonVector::new([7, 0, 0, 0, 0, 0, 0, 0]).is_none());
        assert!(ComparisonVector::new([0, 0, 0, 0, 4, 0, 0, 0]).is_none());
    }

    #[test]
    fn given_name_levels() {
        assert_eq!(compare_given("", "jose"), NULL);
        assert_eq!(compare_given("jose", "jose"), given::EXACT);
        assert_eq!(compare_given("martha", "marhta"), given::SIMILAR);
        assert_eq!(compare_given("maria", "maria jose"), given::SIMILAR);
        assert_eq!(compare_given("pepe", "jose"), given::NICKNAME);
        assert_eq!(compare_given("xavi", "xavier"), given::NICKNAME);
        assert_eq!(compare_given("cristian", "cristobal"), given::FUZZY);
        assert_eq!(compare_given("j", "jose"), given::INITIAL);
        assert_eq!(compare_given("jose", "j"), given::INITIAL);
        assert_eq!(compare_given("isabel", "isvel"), given::FUZZY);
        assert_eq!(compare_given("jose", "maria"), given::DIFFERENT);
    }

    #[test]
    fn family_name_levels() {
        assert_eq!(compare_family("garcia", ""), NULL);
        assert_eq!(compare_family("garcia lopez", "garcia lopez"), family::EXACT);
        assert_eq!(compare_family("garcia lopez", "garcia lopes"), family::SIMILAR);
        assert_eq!(compare_family("garcia lopez", "lopez garcia"), family::SIMILAR);
        assert_eq!(compare_family("garcia lopez", "perez garcia"), family::ONE_SURNAME);
        assert_eq!(compare_family("lopez", "garcia lopez"), family::ONE_SURNAME);
        assert_eq!(compare_family("rodriguez", "rodrigues"), family::SIMILAR);
        assert_eq!(compare_family("fernandez", "hernandez"), family::FUZZY);
        assert_eq!(compare_family("garcia", "gracia"), family::SIMILAR);
        assert_eq!(compare_family("garcia lopez", "martin ruiz"), family::DIFFERENT);
    }

    #[test]
    fn swapped_names_count_as_exact() {
        let a = person("jose", "garcia lopez");
        let b = person("garcia lopez", "jose");
        let v = compare(&a, &b);
        assert_eq!(v.level(Field::GivenName), given::EXACT);
        assert_eq!(v.level(Field::FamilyName), family::EXACT);
        // A swap with a typo is still recognised.
        let c = person("garcia lopes", "jose");
        let v = compare(&a, &c);
        assert_eq!(v.level(Field::GivenName), given::EXACT);
        assert_eq!(v.level(Field::FamilyName), family::SIMILAR);
        // A swap with a typo in the given name.
        let e = person("olmedo ortega", "maria pilar");
        let f = person("maria pilar", "olomedo ortega");
        let v = compare(&e, &f);
        assert!(matches!(v.level(Field::GivenName), given::SIMILAR | given::FUZZY), "{v:?}");
        assert_eq!(v.level(Field::FamilyName), family::EXACT);
        let g = person("cristian", "oliveira");
        let h = person("oliveira", "cristobal");
        let v = compare(&g, &h);
        assert_eq!((v.level(Field::GivenName), v.level(Field::FamilyName)), (given::FUZZY, family::EXACT));
        // The swapped record may come first, and its crossed names are
        // compared as what they hold: `j` is the initial of `juan carlos`,
        // `menchu` a nickname of `carmen`.
        let i = person("cruz lozano", "j");
        let j = person("juan carlos", "cruz lozano");
        assert_eq!(compare_names(&i, &j), (given::INITIAL, family::EXACT));
        assert_eq!(compare_names(&j, &i), (given::INITIAL, family::EXACT));
        let k = person("prieto guerrero", "menchu");
        let l = person("carmen", "prieto guerrero");
        assert_eq!(compare_names(&k, &l), (given::NICKNAME, family::EXACT));
        assert_eq!(compare_names(&l, &k), (given::NICKNAME, family::EXACT));
        // Two different people stay different.
        let d = person("maria", "perez");
        let v = compare(&a, &d);
        assert_eq!(v.level(Field::GivenName), given::DIFFERENT);
        assert_eq!(v.level(Field::FamilyName), family::DIFFERENT);
    }

    #[test]
    fn surnames_written_for_the_given_name_are_the_family_name() {
        let a = person("santos sousa", "");
        let b = person("adriana", "santos sousa");
        assert_eq!(compare_names(&a, &b), (NULL, family::EXACT));
        assert_eq!(compare_names(&b, &a), (NULL, family::EXACT));
        let c = person("caztillo rodriguez", "");
        assert_eq!(compare_names(&c, &person("enrique", "castillo rodriguez")), (NULL, family::SIMILAR));
        // A single word may well be a given name.
        assert_eq!(compare_names(&person("martin", ""), &person("ana", "martin")), (given::DIFFERENT, NULL));
        // Other surnames stay a different given name.
        assert_eq!(compare_names(&person("ruiz ortega", ""), &person("ana", "santos sousa")), (given::DIFFERENT, NULL));
    }

    #[test]
    fn birth_date_levels() {
        let d = |y, m, dd| Some((y, m, dd));
        assert_eq!(compare_birth_date(None, d(1980, 5, 12)), NULL);
        assert_eq!(compare_birth_date(d(0, 5, 12), d(1980, 5, 12)), NULL);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1980, 5, 12)), birth_date::EXACT);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1980, 12, 5)), birth_date::DAY_MONTH_SWAPPED);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1980, 5, 21)), birth_date::YEAR_MONTH);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1980, 5, 0)), birth_date::YEAR_MONTH);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1980, 0, 0)), birth_date::YEAR_MONTH);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1986, 5, 12)), birth_date::ONE_DIGIT);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1980, 8, 12)), birth_date::ONE_DIGIT);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1968, 5, 12)), birth_date::DIFFERENT);
        assert_eq!(compare_birth_date(d(1980, 5, 12), d(1981, 6, 12)), birth_date::DIFFERENT);
    }

    #[test]
    fn street_levels() {
        assert_eq!(compare_street("", "calle mayor 12"), NULL);
        assert_eq!(compare_street("calle mayor 12", "calle mayor 12"), street::EXACT);
        assert_eq!(compare_street("calle mayor 12", "c mayor 12 3 b"), street::SIMILAR);
        assert_eq!(compare_street("calle mayor 12", "calle maior 12"), street::SIMILAR);
        assert_eq!(compare_street("avenida de la constitucion 3", "av constitucion 3"), street::SIMILAR);
        assert_eq!(compare_street("calle mayor 12", "calle mayor 14"), street::SAME_STREET);
        assert_eq!(compare_street("calle mayor 12", "calle de goya 12"), street::DIFFERENT);
        assert_eq!(compare_street("rua da liberdade 5", "carrer de balmes 5"), street::DIFFERENT);
        let parts = |s| {
            let p = street_parts(s);
            (p.kind, p.name, p.number)
        };
        assert_eq!(parts("calle de la paz 7 2"), (Some("calle"), "paz", Some("7")));
        assert_eq!(parts("rua 25 de abril 30 1 esq"), (Some("calle"), "25 de abril", Some("30")));
        assert_eq!(parts("largo 25 de abril"), (Some("largo"), "25 de abril", None));
        assert_eq!(parts("calle"), (Some("calle"), "", None));
        assert_eq!(parts("gran via 3"), (None, "gran via", Some("3")));
        assert_eq!(compare_street("carrer de balmes 5", "calle balmes 5"), street::SIMILAR);
        assert_eq!(compare_street("plaza mayor 5", "calle mayor 5"), street::SAME_STREET);
        assert_eq!(compare_street("cakle mayor 5", "calle mayor 5"), street::SIMILAR);
        assert_eq!(compare_street("largo 25 de abril 58", "largo 25 de abril 58 2 esq"), street::SIMILAR);
    }

    #[test]
    fn postcode_locality_phone_email_levels() {
        assert_eq!(compare_postcode("", "28001"), NULL);
        assert_eq!(compare_postcode("1000-001", "1000001"), postcode::EXACT);
        assert_eq!(compare_postcode("28001", "28045"), postcode::PREFIX3);
        assert_eq!(compare_postcode("28001", "08001"), postcode::DIFFERENT);

        assert_eq!(compare_locality("madrid", ""), NULL);
        assert_eq!(compare_locality("madrid", "madrid"), locality::EXACT);
        assert_eq!(compare_locality("vilanova i la geltru", "vilanova i la geltu"), locality::SIMILAR);
        assert_eq!(compare_locality("madrid", "sevilla"), locality::DIFFERENT);

        assert_eq!(compare_phone("", "+34600111222"), NULL);
        assert_eq!(compare_phone("+34600111222", "+34600111222"), phone::EXACT);
        assert_eq!(compare_phone("+34600111222", "600111222"), phone::LAST7);
        assert_eq!(compare_phone("+34600111222", "+34600111223"), phone::ONE_DIGIT);
        assert_eq!(compare_phone("+34600111222", "+34610111222"), phone::LAST7);
        assert_eq!(compare_phone("+34600111222", "+34600111232"), phone::ONE_DIGIT);
        assert_eq!(compare_phone("+34600111222", "+34600112122"), phone::ONE_DIGIT);
        assert_eq!(compare_phone("+34600111222", "+34699888777"), phone::DIFFERENT);

        assert_eq!(compare_email("", "a@b.es"), NULL);
        assert_eq!(compare_email("jose.garcia@gmail.com", "jose.garcia@gmail.com"), email::EXACT);
        assert_eq!(compare_email("jose.garcia@gmail.com", "jose.garcia@hotmail.com"), email::SAME_LOCAL);
        assert_eq!(compare_email("jose.garcia@gmail.com", "jose.garcai@gmail.com"), email::SIMILAR);
        assert_eq!(compare_email("jose.garcia@gmail.com", "mperez@sapo.pt"), email::DIFFERENT);
    }

    #[test]
    fn missing_values_are_null_everywhere() {
        let full = Record {
            given_name: "jose".into(),
            family_name: "garcia".into(),
            birth_date: Some((1980, 5, 12)),
            street: "calle mayor 12".into(),
            postcode: "28001".into(),
            locality: "madrid".into(),
            phone: "+34600111222".into(),
            email: "jose@gmail.com".into(),
        };
        let v = compare(&full, &Record::default());
        assert_eq!(v.levels(), [NULL; FIELD_COUNT]);
        let v = compare(&full, &full);
        assert_eq!(v.level(Field::Locality), NULL, "the postcode already says it");
        assert!(Field::ALL.iter().filter(|f| **f != Field::Locality).all(|&f| v.level(f) == 1));
        let mut elsewhere = full.clone();
        elsewhere.postcode = "28045".into();
        assert_eq!(compare(&full, &elsewhere).level(Field::Locality), locality::EXACT);
        // A shared local part made of the names is no evidence; one with digits is.
        let mut other_provider = full.clone();
        other_provider.email = "jose@hotmail.com".into();
        assert_eq!(compare(&full, &other_provider).level(Field::Email), NULL);
        let mut with_digits = full.clone();
        with_digits.email = "jose1980@gmail.com".into();
        other_provider.email = "jose1980@hotmail.com".into();
        assert_eq!(compare(&with_digits, &other_provider).level(Field::Email), email::SAME_LOCAL);
        with_digits.email = "garcia80@gmail.com".into();
        other_provider.email = "garcia80@hotmail.com".into();
        assert_eq!(compare(&with_digits, &other_provider).level(Field::Email), NULL);
        // Two local parts made of the names, merely alike: namesakes'.
        with_digits.email = "jose.garcia90@gmail.com".into();
        other_provider.email = "jose.garcia79@gmail.com".into();
        assert_eq!(compare(&with_digits, &other_provider).level(Field::Email), NULL);
        // A typo in a name word is still a similar address.
        other_provider.email = "jose.garzia90@gmail.com".into();
        assert_eq!(compare(&with_digits, &other_provider).level(Field::Email), email::SIMILAR);
    }
}
