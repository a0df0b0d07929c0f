//! A synthetic data generator in the style of FEBRL's `generate.py`
//! (Christen 2005): original person records drawn from Spanish, Catalan and
//! Portuguese name, street and locality lists with realistic frequencies,
//! then duplicates of some originals with several random corruptions each
//! (typos, spelling variants, nicknames, missing values, swapped fields,
//! transposed dates, moves, changed contact details). Some originals share
//! a household (address, landline, surnames; twins share the birth date),
//! the hardest non-matches. There is no national id or any other unique
//! key. Deterministic for a seed.
//!
//! Two different originals can be accidentally alike (same name and birth
//! date), as in real data; ground truth is the cluster id, not the values.

mod data;

use std::collections::HashSet;

use crm_proto::identification::v1::IdentifierType;

use super::Record;
use super::nicknames;
use super::rng::SplitMix64;
use super::text::is_connector;
use data::{Lang, Locality};

/// How originals are filled in and duplicates corrupted. Corruption kinds
/// have relative weights; each duplicate gets between 1 and
/// `max_modifications` of them (uniformly), at most `max_per_field` on one
/// field. The defaults follow FEBRL's `dataset4` (up to 4 modifications
/// per record, 2 per field) with CRM-like kinds.
#[derive(Clone, Debug, PartialEq)]
pub struct Corruption {
    /// Most corruptions applied to one duplicate.
    pub max_modifications: usize,
    /// Most corruptions applied to one field of a duplicate.
    pub max_per_field: usize,
    /// Share of originals with a phone.
    pub phone_rate: f64,
    /// Share of originals with an e-mail address.
    pub email_rate: f64,
    /// Share of originals with a postal address.
    pub address_rate: f64,
    /// Share of originals with a birth date.
    pub birth_date_rate: f64,
    /// Share of originals who live with an earlier original (a spouse, a
    /// child, a sibling or a twin): same address, often the same landline
    /// and surnames. These are the hardest non-matches.
    pub household_rate: f64,
    /// Typo (insert, delete, substitute, transpose; keyboard neighbours) in the given name.
    pub given_typo: f64,
    /// Spelling variant of the given name (`b`/`v`, `ll`/`y`, silent `h`…).
    pub given_spelling: f64,
    /// Nickname or other-language form of the given name.
    pub nickname: f64,
    /// Given name reduced to its initial.
    pub initial: f64,
    /// Given name missing.
    pub given_missing: f64,
    /// Typo in the family name.
    pub family_typo: f64,
    /// Spelling variant of the family name.
    pub family_spelling: f64,
    /// Only one of two surnames kept.
    pub surname_dropped: f64,
    /// The two surnames in the other order.
    pub surnames_swapped: f64,
    /// Family name missing.
    pub family_missing: f64,
    /// Given and family name swapped.
    pub names_swapped: f64,
    /// Day and month of birth transposed.
    pub day_month_transposed: f64,
    /// One digit of the birth date changed.
    pub birth_date_digit: f64,
    /// Birth date missing (or only its day).
    pub birth_date_missing: f64,
    /// Typo in the street.
    pub street_typo: f64,
    /// Street missing.
    pub street_missing: f64,
    /// The person moved: new street, postcode and often locality.
    pub moved: f64,
    /// One postcode digit changed or two transposed.
    pub postcode_digit: f64,
    /// Postcode missing.
    pub postcode_missing: f64,
    /// Typo in the locality.
    pub locality_typo: f64,
    /// Locality missing.
    pub locality_missing: f64,
    /// One phone digit changed or two transposed.
    pub phone_digit: f64,
    /// A different phone number.
    pub phone_changed: f64,
    /// Phone missing.
    pub phone_missing: f64,
    /// Typo in the e-mail local part.
    pub email_typo: f64,
    /// Same e-mail local part at another provider.
    pub email_provider: f64,
    /// A different e-mail address.
    pub email_changed: f64,
    /// E-mail missing.
    pub email_missing: f64,
}

impl Default for Corruption {
    fn default() -> Self {
        Corruption {
            max_modifications: 4,
            max_per_field: 2,
            phone_rate: 0.85,
            email_rate: 0.75,
            address_rate: 0.95,
            birth_date_rate: 0.92,
            household_rate: 0.1,
            given_typo: 0.07,
            given_spelling: 0.02,
            nickname: 0.05,
            initial: 0.01,
            given_missing: 0.01,
            family_typo: 0.08,
            family_spelling: 0.03,
            surname_dropped: 0.04,
            surnames_swapped: 0.01,
            family_missing: 0.01,
            names_swapped: 0.03,
            day_month_transposed: 0.03,
            birth_date_digit: 0.04,
            birth_date_missing: 0.03,
            street_typo: 0.07,
            street_missing: 0.02,
            moved: 0.06,
            postcode_digit: 0.04,
            postcode_missing: 0.01,
            locality_typo: 0.03,
            locality_missing: 0.01,
            phone_digit: 0.02,
            phone_changed: 0.04,
            phone_missing: 0.04,
            email_typo: 0.02,
            email_provider: 0.02,
            email_changed: 0.03,
            email_missing: 0.04,
        }
    }
}

/// Corruption kinds, in the order of [`Corruption::weights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    GivenTypo,
    GivenSpelling,
    Nickname,
    Initial,
    GivenMissing,
    FamilyTypo,
    FamilySpelling,
    SurnameDropped,
    SurnamesSwapped,
    FamilyMissing,
    NamesSwapped,
    DayMonthTransposed,
    BirthDateDigit,
    BirthDateMissing,
    StreetTypo,
    StreetMissing,
    Moved,
    PostcodeDigit,
    PostcodeMissing,
    LocalityTypo,
    LocalityMissing,
    PhoneDigit,
    PhoneChanged,
    PhoneMissing,
    EmailTypo,
    EmailProvider,
    EmailChanged,
    EmailMissing,
}

const KINDS: [Kind; 28] = [
    Kind::GivenTypo,
    Kind::GivenSpelling,
    Kind::Nickname,
    Kind::Initial,
    Kind::GivenMissing,
    Kind::FamilyTypo,
    Kind::FamilySpelling,
    Kind::SurnameDropped,
    Kind::SurnamesSwapped,
    Kind::FamilyMissing,
    Kind::NamesSwapped,
    Kind::DayMonthTransposed,
    Kind::BirthDateDigit,
    Kind::BirthDateMissing,
    Kind::StreetTypo,
    Kind::StreetMissing,
    Kind::Moved,
    Kind::PostcodeDigit,
    Kind::PostcodeMissing,
    Kind::LocalityTypo,
    Kind::LocalityMissing,
    Kind::PhoneDigit,
    Kind::PhoneChanged,
    Kind::PhoneMissing,
    Kind::EmailTypo,
    Kind::EmailProvider,
    Kind::EmailChanged,
    Kind::EmailMissing,
];

/// Field slots for the per-field modification limit.
const GIVEN: usize = 0;
const FAMILY: usize = 1;
const BIRTH: usize = 2;
const STREET: usize = 3;
const POSTCODE: usize = 4;
const LOCALITY: usize = 5;
const PHONE: usize = 6;
const EMAIL: usize = 7;

impl Kind {
    /// The fields a corruption modifies.
    fn fields(self) -> &'static [usize] {
        match self {
            Kind::GivenTypo | Kind::GivenSpelling | Kind::Nickname | Kind::Initial | Kind::GivenMissing => &[GIVEN],
            Kind::FamilyTypo
            | Kind::FamilySpelling
            | Kind::SurnameDropped
            | Kind::SurnamesSwapped
            | Kind::FamilyMissing => &[FAMILY],
            Kind::NamesSwapped => &[GIVEN, FAMILY],
            Kind::DayMonthTransposed | Kind::BirthDateDigit | Kind::BirthDateMissing => &[BIRTH],
            Kind::StreetTypo | Kind::StreetMissing => &[STREET],
            Kind::Moved => &[STREET, POSTCODE, LOCALITY],
            Kind::PostcodeDigit | Kind::PostcodeMissing => &[POSTCODE],
            Kind::LocalityTypo | Kind::LocalityMissing => &[LOCALITY],
            Kind::PhoneDigit | Kind::PhoneChanged | Kind::PhoneMissing => &[PHONE],
            Kind::EmailTypo | Kind::EmailProvider | Kind::EmailChanged | Kind::EmailMissing => &[EMAIL],
        }
    }
}

impl Corruption {
    fn weights(&self) -> [f64; 28] {
        [
            self.given_typo,
            self.given_spelling,
            self.nickname,
            self.initial,
            self.given_missing,
            self.family_typo,
            self.family_spelling,
            self.surname_dropped,
            self.surnames_swapped,
            self.family_missing,
            self.names_swapped,
            self.day_month_transposed,
            self.birth_date_digit,
            self.birth_date_missing,
            self.street_typo,
            self.street_missing,
            self.moved,
            self.postcode_digit,
            self.postcode_missing,
            self.locality_typo,
            self.locality_missing,
            self.phone_digit,
            self.phone_changed,
            self.phone_missing,
            self.email_typo,
            self.email_provider,
            self.email_changed,
            self.email_missing,
        ]
    }
}

/// Generate `originals` original records and, for each, a Poisson number
/// of corrupted duplicates with mean `duplicates_per_original` (at most 9),
/// with the default [`Corruption`]. See [`generate_with`].
pub fn generate(originals: usize, duplicates_per_original: f64, seed: u64) -> Vec<(u64, Record)> {
    generate_with(originals, duplicates_per_original, seed, &Corruption::default())
}

/// Generate records as `(cluster id, record)`: first the originals, cluster
/// ids `0..originals` in order, then all duplicates in random order, each
/// carrying the cluster id of its original. Some originals share a
/// household with another (see [`Corruption::household_rate`]). Every
/// value is folded like
/// [`super::fold`] output; phones are E.164; e-mails are unique among
/// originals.
pub fn generate_with(
    originals: usize,
    duplicates_per_original: f64,
    seed: u64,
    corruption: &Corruption,
) -> Vec<(u64, Record)> {
    let mut g = Generator::new(seed, corruption.clone());
    let mut out: Vec<(u64, Record)> = Vec::with_capacity(originals * 2);
    let mut people = Vec::with_capacity(originals);
    for id in 0..originals {
        let person = if id > 0 && g.rng.chance(g.corruption.household_rate) {
            let head = g.rng.below(id);
            g.household_member(&people[head])
        } else {
            g.person()
        };
        out.push((id as u64, person.record.clone()));
        people.push(person);
    }
    let mut duplicates = Vec::new();
    let mean = duplicates_per_original.max(0.0);
    for (id, person) in people.iter().enumerate() {
        let n = g.rng.poisson(mean).min(9);
        for _ in 0..n {
            duplicates.push((id as u64, g.duplicate(person)));
        }
    }
    g.rng.shuffle(&mut duplicates);
    out.extend(duplicates);
    out
}

/// An original person with what the generator needs to corrupt it.
#[derive(Clone, Debug)]
struct Person {
    record: Record,
    lang: Lang,
}

struct Generator {
    rng: SplitMix64,
    corruption: Corruption,
    emails: HashSet<String>,
    phones: HashSet<String>,
    locality_weights: Vec<f64>,
}

/// Zipf-like weights: rank `r` (from 0) weighs `1 / (r + 8)`.
fn pick_ranked<'a>(rng: &mut SplitMix64, items: &'a [&'a str]) -> &'a str {
    let weights: Vec<f64> = (0..items.len()).map(|r| 1.0 / (r as f64 + 8.0)).collect();
    items[rng.weighted(&weights)]
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Whether the service accepts `e164` as a phone identifier.
fn is_valid_phone(e164: &str) -> bool {
    crate::domain::normalize(IdentifierType::Phone, "", e164, "ES").is_ok()
}

impl Generator {
    fn new(seed: u64, corruption: Corruption) -> Self {
        Generator {
            rng: SplitMix64::new(seed),
            corruption,
            emails: HashSet::new(),
            phones: HashSet::new(),
            locality_weights: data::LOCALITIES.iter().map(|l| l.weight).collect(),
        }
    }

    fn person(&mut self) -> Person {
        let locality = data::LOCALITIES[self.rng.weighted(&self.locality_weights)];
        let lang = locality.lang;
        // Most people carry names of their region; some of another one.
        let name_lang = if self.rng.chance(0.85) {
            lang
        } else {
            *self.rng.pick(&[Lang::Es, Lang::Ca, Lang::Pt]).unwrap_or(&Lang::Es)
        };
        let female = self.rng.chance(0.5);
        let given = self.given_name(name_lang, female);
        let family = self.family_name(name_lang);
        let c = &self.corruption;
        let (has_dob, has_address, has_phone, has_email) =
            (c.birth_date_rate, c.address_rate, c.phone_rate, c.email_rate);
        let birth_date = self.rng.chance(has_dob).then(|| self.birth_date());
        let mut record = Record { given_name: given, family_name: family, birth_date, ..Record::default() };
        if self.rng.chance(has_address) {
            self.set_address(&mut record, locality);
        }
        if self.rng.chance(has_phone) {
            record.phone = self.phone(lang);
        }
        if self.rng.chance(has_email) {
            record.email = self.email(&record, lang);
        }
        Person { record, lang }
    }

    /// Someone living with `head`: same address, a spouse (other surnames,
    /// similar age), a child (one surname in common, 20–40 years younger)
    /// or a sibling (same surnames; one in ten a twin with the same birth
    /// date). A landline is usually shared.
    fn household_member(&mut self, head: &Person) -> Person {
        let lang = head.lang;
        let head_record = &head.record;
        let given = {
            let female = self.rng.chance(0.5);
            let mut given = self.given_name(lang, female);
            while given == head_record.given_name {
                given = self.given_name(lang, !female);
            }
            given
        };
        let head_year = head_record.birth_date.map(|(y, _, _)| y);
        let relation = self.rng.weighted(&[0.5, 0.35, 0.15]);
        let child_year = head_year.map(|y| y + self.rng.between(20, 40) as i32).filter(|y| *y <= 2005);
        let surnames: Vec<&str> = head_record.family_name.split(' ').filter(|t| !is_connector(t)).collect();
        let (family, birth_date) = match (relation, child_year) {
            (1, Some(year)) => {
                let inherited = if lang == Lang::Pt { surnames.last() } else { surnames.first() };
                let inherited = inherited.copied().unwrap_or("garcia");
                let other = self.surname(lang);
                let family =
                    if lang == Lang::Pt { format!("{other} {inherited}") } else { format!("{inherited} {other}") };
                (family, Some(self.date_in(year)))
            }
            (2, _) => {
                let twin = self.rng.chance(0.1);
                let date = match (twin, head_record.birth_date, head_year) {
                    (true, Some(date), _) => Some(date),
                    (_, _, Some(y)) => {
                        let gap = self.rng.between(1, 10) as i32;
                        let year = if self.rng.chance(0.5) { y + gap } else { y - gap };
                        Some(self.date_in(year.clamp(1940, 2005)))
                    }
                    _ => Some(self.birth_date()),
                };
                (head_record.family_name.clone(), date)
            }
            _ => {
                let date = match head_year {
                    Some(y) => {
                        let year = y + self.rng.between(0, 16) as i32 - 8;
                        Some(self.date_in(year.clamp(1940, 2005)))
                    }
                    None => Some(self.birth_date()),
                };
                (self.family_name(lang), date)
            }
        };
        let c = &self.corruption;
        let (has_dob, has_phone, has_email) = (c.birth_date_rate, c.phone_rate, c.email_rate);
        let mut record = Record {
            given_name: given,
            family_name: family,
            birth_date: birth_date.filter(|_| self.rng.chance(has_dob)),
            street: head_record.street.clone(),
            postcode: head_record.postcode.clone(),
            locality: head_record.locality.clone(),
            ..Record::default()
        };
        let landline = head_record.phone.starts_with("+349") || head_record.phone.starts_with("+3512");
        if landline && self.rng.chance(0.7) {
            record.phone = head_record.phone.clone();
        } else if self.rng.chance(has_phone) {
            record.phone = self.phone(lang);
        }
        if self.rng.chance(has_email) {
            record.email = self.email(&record, lang);
        }
        Person { record, lang }
    }

    fn date_in(&mut self, year: i32) -> (i32, u32, u32) {
        let month = self.rng.between(1, 12);
        (year, month, self.rng.between(1, days_in_month(year, month)))
    }

    fn given_name(&mut self, lang: Lang, female: bool) -> String {
        let list = match (lang, female) {
            (Lang::Es, false) => data::GIVEN_ES_MALE,
            (Lang::Es, true) => data::GIVEN_ES_FEMALE,
            (Lang::Ca, false) => data::GIVEN_CA_MALE,
            (Lang::Ca, true) => data::GIVEN_CA_FEMALE,
            (Lang::Pt, false) => data::GIVEN_PT_MALE,
            (Lang::Pt, true) => data::GIVEN_PT_FEMALE,
        };
        if lang == Lang::Es && self.rng.chance(0.15) {
            return pick_ranked(&mut self.rng, data::GIVEN_COMPOUND_ES).to_string();
        }
        pick_ranked(&mut self.rng, list).to_string()
    }

    fn surname(&mut self, lang: Lang) -> &'static str {
        match lang {
            Lang::Es => pick_ranked(&mut self.rng, data::FAMILY_ES),
            // Catalans carry Spanish surnames too.
            Lang::Ca if self.rng.chance(0.5) => pick_ranked(&mut self.rng, data::FAMILY_ES),
            Lang::Ca => pick_ranked(&mut self.rng, data::FAMILY_CA),
            Lang::Pt => pick_ranked(&mut self.rng, data::FAMILY_PT),
        }
    }

    fn family_name(&mut self, lang: Lang) -> String {
        let first = self.surname(lang);
        let two = match lang {
            Lang::Es | Lang::Ca => self.rng.chance(0.9),
            Lang::Pt => self.rng.chance(0.6),
        };
        if !two {
            return first.to_string();
        }
        let second = self.surname(lang);
        if lang == Lang::Ca && self.rng.chance(0.1) {
            format!("{first} i {second}")
        } else {
            format!("{first} {second}")
        }
    }

    fn birth_date(&mut self) -> (i32, u32, u32) {
        let year = self.rng.between(1940, 2005) as i32;
        let month = self.rng.between(1, 12);
        let day = self.rng.between(1, days_in_month(year, month));
        (year, month, day)
    }

    fn postcode(&mut self, locality: Locality) -> String {
        let base = locality.first + self.rng.below(locality.count as usize) as u32;
        match locality.lang {
            Lang::Es | Lang::Ca => format!("{base:05}"),
            Lang::Pt => format!("{base:04}-{:03}", self.rng.between(1, 999)),
        }
    }

    fn street(&mut self, lang: Lang) -> String {
        let (types, names) = match lang {
            Lang::Es => (data::STREET_TYPES_ES, data::STREETS_ES),
            Lang::Ca => (data::STREET_TYPES_CA, data::STREETS_CA),
            Lang::Pt => (data::STREET_TYPES_PT, data::STREETS_PT),
        };
        let kind = self.rng.pick(types).copied().unwrap_or("calle");
        // Half the streets have common names, the others are named after people.
        let name = if self.rng.chance(0.5) {
            pick_ranked(&mut self.rng, names).to_string()
        } else {
            let female = self.rng.chance(0.3);
            let given = self.given_name(lang, female);
            let family = self.surname(lang);
            let saint = match (lang, female) {
                (Lang::Pt, false) => "sao",
                (Lang::Ca, false) => "sant",
                (Lang::Es, false) => "san",
                (_, true) => "santa",
            };
            match self.rng.below(3) {
                0 => format!("de {family}"),
                1 => format!("de {given} {family}"),
                _ => format!("de {saint} {given}"),
            }
        };
        // House numbers: mostly small.
        let number = 1 + (self.rng.next_f64().powi(2) * 200.0) as u32;
        let mut street = format!("{kind} {name} {number}");
        if self.rng.chance(0.5) {
            let floor = self.rng.between(1, 8);
            match lang {
                Lang::Pt => {
                    let side = self.rng.pick(&["esq", "dto"]).copied().unwrap_or("esq");
                    street.push_str(&format!(" {floor} {side}"));
                }
                _ => {
                    let door = self.rng.pick(&["a", "b", "c", "d", "1", "2"]).copied().unwrap_or("a");
                    street.push_str(&format!(" {floor} {door}"));
                }
            }
        }
        street
    }

    fn set_address(&mut self, record: &mut Record, locality: Locality) {
        record.street = self.street(locality.lang);
        record.postcode = self.postcode(locality);
        record.locality = locality.name.to_string();
    }

    /// A new number of the language's country, a mobile three times in four.
    fn phone(&mut self, lang: Lang) -> String {
        loop {
            let mobile = self.rng.chance(0.75);
            let phone = match (lang, mobile) {
                (Lang::Pt, true) => {
                    format!("+3519{}{:07}", self.rng.pick(&[1, 2, 3, 6]).unwrap_or(&1), self.rng.below(10_000_000))
                }
                (Lang::Pt, false) => format!("+3512{:08}", self.rng.below(100_000_000)),
                (_, true) => {
                    format!("+34{}{:08}", self.rng.pick(&[6, 6, 6, 7]).unwrap_or(&6), self.rng.below(100_000_000))
                }
                (_, false) => format!("+349{:08}", self.rng.below(100_000_000)),
            };
            // Only numbers the numbering plan assigns: people give their
            // real number, and the service refuses the others.
            if is_valid_phone(&phone) && self.phones.insert(phone.clone()) {
                return phone;
            }
        }
    }

    fn provider(&mut self, lang: Lang) -> &'static str {
        let providers = if lang == Lang::Pt { data::PROVIDERS_PT } else { data::PROVIDERS_ES };
        let weights: Vec<f64> = providers.iter().map(|p| p.1).collect();
        providers[self.rng.weighted(&weights)].0
    }

    fn email_local(&mut self, record: &Record) -> String {
        let word = |s: &str, n: usize| -> String {
            s.split(' ').filter(|t| !t.is_empty() && !is_connector(t)).nth(n).unwrap_or("").to_string()
        };
        let given = if record.given_name.is_empty() { "cliente".to_string() } else { word(&record.given_name, 0) };
        let family = if record.family_name.is_empty() { "mail".to_string() } else { word(&record.family_name, 0) };
        let family2 = word(&record.family_name, 1);
        let yy = record.birth_date.map_or(self.rng.below(100) as i32, |(y, _, _)| y % 100);
        let initial = given.chars().next().unwrap_or('x');
        match self.rng.below(8) {
            0 => format!("{given}.{family}"),
            1 => format!("{given}{family}"),
            2 => format!("{initial}{family}"),
            3 => format!("{given}.{family}{yy:02}"),
            4 => format!("{given}_{family}"),
            5 => format!("{family}.{given}"),
            6 if !family2.is_empty() => format!("{given}{family}{family2}"),
            _ => format!("{given}{}", self.rng.between(1, 999)),
        }
    }

    fn email(&mut self, record: &Record, lang: Lang) -> String {
        let mut local = self.email_local(record);
        loop {
            let email = format!("{local}@{}", self.provider(lang));
            if self.emails.insert(email.clone()) {
                return email;
            }
            local.push(char::from(b'0' + self.rng.below(10) as u8));
        }
    }

    /// A corrupted copy of an original.
    fn duplicate(&mut self, person: &Person) -> Record {
        let mut record = person.record.clone();
        let weights = self.corruption.weights();
        let wanted = 1 + self.rng.below(self.corruption.max_modifications.max(1));
        let mut per_field = [0usize; 8];
        let mut done = 0;
        let mut attempts = 0;
        while done < wanted && attempts < 50 {
            attempts += 1;
            let kind = KINDS[self.rng.weighted(&weights)];
            if kind.fields().iter().any(|&f| per_field[f] >= self.corruption.max_per_field) {
                continue;
            }
            if self.apply(kind, &mut record, person.lang) {
                for &f in kind.fields() {
                    per_field[f] += 1;
                }
                done += 1;
            }
        }
        record
    }

    /// Apply one corruption; `false` when it does not apply to this record
    /// (nothing to drop, no nickname…) and another must be drawn.
    fn apply(&mut self, kind: Kind, r: &mut Record, lang: Lang) -> bool {
        match kind {
            Kind::GivenTypo => self.typo(&mut r.given_name),
            Kind::GivenSpelling => self.spelling(&mut r.given_name),
            Kind::Nickname => {
                let first = r.given_name.split(' ').next().unwrap_or("").to_string();
                let alternatives = nicknames::alternatives(&first);
                let Some(&nick) = self.rng.pick(&alternatives) else {
                    return false;
                };
                // A compound name is often shortened to the nickname alone.
                r.given_name =
                    if self.rng.chance(0.5) { nick.to_string() } else { r.given_name.replacen(&first, nick, 1) };
                true
            }
            Kind::Initial => match r.given_name.chars().next() {
                Some(c) if r.given_name.len() > 1 => {
                    r.given_name = c.to_string();
                    true
                }
                _ => false,
            },
            Kind::GivenMissing => take(&mut r.given_name),
            Kind::FamilyTypo => self.typo(&mut r.family_name),
            Kind::FamilySpelling => self.spelling(&mut r.family_name),
            Kind::SurnameDropped => {
                let words: Vec<&str> = r.family_name.split(' ').filter(|t| !is_connector(t)).collect();
                if words.len() < 2 {
                    return false;
                }
                // Spaniards keep the first surname, Portuguese often the last.
                let keep = if lang == Lang::Pt && self.rng.chance(0.7) { words[words.len() - 1] } else { words[0] };
                r.family_name = keep.to_string();
                true
            }
            Kind::SurnamesSwapped => {
                let words: Vec<&str> = r.family_name.split(' ').filter(|t| !is_connector(t)).collect();
                if words.len() != 2 || words[0] == words[1] {
                    return false;
                }
                r.family_name = format!("{} {}", words[1], words[0]);
                true
            }
            Kind::FamilyMissing => take(&mut r.family_name),
            Kind::NamesSwapped => {
                if r.given_name.is_empty() || r.family_name.is_empty() {
                    return false;
                }
                std::mem::swap(&mut r.given_name, &mut r.family_name);
                true
            }
            Kind::DayMonthTransposed => match r.birth_date {
                Some((y, m, d)) if d <= 12 && d != m && d > 0 => {
                    r.birth_date = Some((y, d, m));
                    true
                }
                _ => false,
            },
            Kind::BirthDateDigit => {
                let Some((y, m, d)) = r.birth_date else {
                    return false;
                };
                for _ in 0..20 {
                    let (mut y2, mut m2, mut d2) = (y, m, d);
                    match self.rng.below(3) {
                        0 => {
                            y2 = change_digit(y as u32, if self.rng.chance(0.5) { 0 } else { 1 }, &mut self.rng) as i32
                        }
                        1 => m2 = change_digit(m, self.rng.below(2), &mut self.rng),
                        _ => d2 = change_digit(d, self.rng.below(2), &mut self.rng),
                    }
                    if (1..=12).contains(&m2) && d2 >= 1 && d2 <= days_in_month(y2, m2) && (y2, m2, d2) != (y, m, d) {
                        r.birth_date = Some((y2, m2, d2));
                        return true;
                    }
                }
                false
            }
            Kind::BirthDateMissing => match r.birth_date {
                Some((y, m, _)) if self.rng.chance(0.3) => {
                    r.birth_date = Some((y, m, 0));
                    true
                }
                Some(_) => {
                    r.birth_date = None;
                    true
                }
                None => false,
            },
            Kind::StreetTypo => self.typo(&mut r.street),
            Kind::StreetMissing => take(&mut r.street),
            Kind::Moved => {
                let locality = if self.rng.chance(0.5) {
                    data::LOCALITIES.iter().find(|l| l.name == r.locality).copied()
                } else {
                    None
                };
                let locality = locality.unwrap_or_else(|| data::LOCALITIES[self.rng.weighted(&self.locality_weights)]);
                let before = r.clone();
                self.set_address(r, locality);
                *r != before
            }
            Kind::PostcodeDigit => {
                let digits: Vec<usize> =
                    r.postcode.bytes().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect();
                if digits.len() < 2 {
                    return false;
                }
                let mut bytes = r.postcode.clone().into_bytes();
                if self.rng.chance(0.6) {
                    // Transpose two adjacent digits.
                    let k = self.rng.below(digits.len() - 1);
                    bytes.swap(digits[k], digits[k + 1]);
                } else {
                    let i = digits[self.rng.below(digits.len())];
                    bytes[i] = b'0' + ((bytes[i] - b'0' + 1 + self.rng.below(9) as u8) % 10);
                }
                let changed = String::from_utf8(bytes).unwrap_or_default();
                if changed == r.postcode || changed.is_empty() {
                    return false;
                }
                r.postcode = changed;
                true
            }
            Kind::PostcodeMissing => take(&mut r.postcode),
            Kind::LocalityTypo => self.typo(&mut r.locality),
            Kind::LocalityMissing => take(&mut r.locality),
            Kind::PhoneDigit => {
                if r.phone.len() < 8 {
                    return false;
                }
                // Keep the country code: change within the last 9 digits.
                let mut bytes = r.phone.clone().into_bytes();
                let start = bytes.len() - 9;
                if self.rng.chance(0.4) {
                    let i = start + self.rng.below(8);
                    bytes.swap(i, i + 1);
                } else {
                    let i = start + self.rng.below(9);
                    bytes[i] = b'0' + ((bytes[i] - b'0' + 1 + self.rng.below(9) as u8) % 10);
                }
                let changed = String::from_utf8(bytes).unwrap_or_default();
                if changed == r.phone || changed.is_empty() {
                    return false;
                }
                r.phone = changed;
                true
            }
            Kind::PhoneChanged => {
                r.phone = self.phone(lang);
                true
            }
            Kind::PhoneMissing => take(&mut r.phone),
            Kind::EmailTypo => {
                let Some((local, domain)) = r.email.split_once('@') else {
                    return false;
                };
                let (mut local, domain) = (local.to_string(), domain.to_string());
                if !self.typo(&mut local) {
                    return false;
                }
                // Never someone else's address.
                let email = format!("{local}@{domain}");
                if !self.emails.insert(email.clone()) {
                    return false;
                }
                r.email = email;
                true
            }
            Kind::EmailProvider => {
                let Some((local, domain)) = r.email.split_once('@') else {
                    return false;
                };
                let (local, domain) = (local.to_string(), domain.to_string());
                let provider = self.provider(lang);
                let email = format!("{local}@{provider}");
                if provider == domain || !self.emails.insert(email.clone()) {
                    return false;
                }
                r.email = email;
                true
            }
            Kind::EmailChanged => {
                let before = r.email.clone();
                r.email = self.email(r, lang);
                r.email != before
            }
            Kind::EmailMissing => take(&mut r.email),
        }
    }

    /// A FEBRL-style typo, rarely on the first character: insert, delete,
    /// substitute (keyboard neighbour in the row 40 %, column 30 %, any
    /// letter 30 %) or transpose. Spaces are left alone.
    fn typo(&mut self, value: &mut String) -> bool {
        let mut bytes = value.clone().into_bytes();
        let positions: Vec<usize> =
            (0..bytes.len()).filter(|&i| bytes[i] != b' ' && (i > 0 || self.rng.chance(0.1))).collect();
        let Some(&i) = self.rng.pick(&positions) else {
            return false;
        };
        match self.rng.weighted(&[0.15, 0.3, 0.4, 0.15]) {
            0 => {
                let c = self.neighbour(bytes[i]);
                bytes.insert(i + 1, c);
            }
            1 => {
                if bytes.len() < 3 {
                    return false;
                }
                bytes.remove(i);
            }
            2 => bytes[i] = self.neighbour(bytes[i]),
            _ => {
                if i + 1 >= bytes.len() || bytes[i + 1] == b' ' {
                    return false;
                }
                bytes.swap(i, i + 1);
            }
        }
        let changed = String::from_utf8(bytes).unwrap_or_default();
        if changed == *value || changed.trim().is_empty() || changed.contains("  ") {
            return false;
        }
        *value = changed;
        true
    }

    fn neighbour(&mut self, c: u8) -> u8 {
        let x = self.rng.next_f64();
        let pool = if x < 0.4 {
            data::row_neighbours(c)
        } else if x < 0.7 {
            data::column_neighbours(c)
        } else {
            b""
        };
        match self.rng.pick(pool) {
            Some(&n) => n,
            None if c.is_ascii_digit() => b'0' + self.rng.below(10) as u8,
            None => b'a' + self.rng.below(26) as u8,
        }
    }

    /// Replace one spelling by a homophone (`v` → `b`, `ll` → `y`…).
    fn spelling(&mut self, value: &mut String) -> bool {
        let options: Vec<(usize, &str, &str)> = data::HOMOPHONES
            .iter()
            .flat_map(|&(from, to)| value.match_indices(from).map(move |(i, _)| (i, from, to)))
            .collect();
        let Some(&(i, from, to)) = self.rng.pick(&options) else {
            return false;
        };
        let changed = format!("{}{}{}", &value[..i], to, &value[i + from.len()..]);
        if changed == *value || changed.trim().is_empty() {
            return false;
        }
        *value = changed;
        true
    }
}

/// Empty a value; `false` when it already was.
fn take(value: &mut String) -> bool {
    if value.is_empty() {
        return false;
    }
    value.clear();
    true
}

/// Change decimal digit `position` (0 = units) of `n` to another digit.
fn change_digit(n: u32, position: usize, rng: &mut SplitMix64) -> u32 {
    let scale = 10u32.pow(position as u32);
    let digit = n / scale % 10;
    let new = (digit + 1 + rng.below(9) as u32) % 10;
    n - digit * scale + new * scale
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::fold;
    use super::*;

    #[test]
    fn deterministic_for_a_seed() {
        let a = generate(300, 1.0, 11);
        let b = generate(300, 1.0, 11);
        let c = generate(300, 1.0, 12);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn originals_first_then_duplicates() {
        let records = generate(2000, 1.0, 5);
        for (i, (cluster, _)) in records.iter().take(2000).enumerate() {
            assert_eq!(*cluster, i as u64);
        }
        let duplicates = records.len() - 2000;
        assert!((1800..2200).contains(&duplicates), "{duplicates} duplicates");
        assert!(records.iter().all(|(c, _)| *c < 2000));
        // Duplicates differ from their original.
        let changed = records[2000..].iter().filter(|(c, r)| *r != records[*c as usize].1).count();
        assert!(changed as f64 > 0.97 * duplicates as f64, "{changed} of {duplicates} changed");
    }

    #[test]
    fn values_are_plausible_and_folded() {
        let records = generate(3000, 0.5, 9);
        let mut emails = HashMap::new();
        for (cluster, r) in &records[..3000] {
            assert_eq!(fold(&r.given_name), r.given_name);
            assert_eq!(fold(&r.family_name), r.family_name);
            assert_eq!(fold(&r.street), r.street);
            assert_eq!(fold(&r.locality), r.locality);
            assert!(!r.given_name.is_empty() && !r.family_name.is_empty());
            if let Some((y, m, d)) = r.birth_date {
                assert!((1940..=2005).contains(&y));
                assert!((1..=12).contains(&m));
                assert!(d >= 1 && d <= days_in_month(y, m));
            }
            assert!(
                r.phone.is_empty()
                    || (r.phone.starts_with("+34") && r.phone.len() == 12)
                    || (r.phone.starts_with("+351") && r.phone.len() == 13),
                "{}",
                r.phone
            );
            // An original's number is one its numbering plan assigns.
            assert!(r.phone.is_empty() || is_valid_phone(&r.phone), "{}", r.phone);
            assert!(r.email.is_empty() || r.email.contains('@'));
            if !r.email.is_empty() {
                assert!(emails.insert(r.email.clone(), *cluster).is_none(), "duplicate email {}", r.email);
            }
            assert!(r.postcode.is_empty() || r.postcode.len() == 5 || r.postcode.len() == 8, "{}", r.postcode);
        }
        // Households: originals sharing an address.
        let mut addresses: HashMap<(&str, &str), usize> = HashMap::new();
        for (_, r) in records[..3000].iter().filter(|(_, r)| !r.street.is_empty()) {
            *addresses.entry((r.street.as_str(), r.postcode.as_str())).or_default() += 1;
        }
        let shared = addresses.values().filter(|&&n| n > 1).count();
        assert!((150..450).contains(&shared), "{shared} shared addresses");
        let given: HashSet<&str> = records.iter().map(|(_, r)| r.given_name.as_str()).collect();
        let family: HashSet<&str> = records.iter().flat_map(|(_, r)| r.family_name.split(' ')).collect();
        assert!(given.len() >= 150, "{} given names", given.len());
        assert!(family.len() >= 150, "{} family names", family.len());
    }

    #[test]
    fn reference_lists_are_large_enough() {
        let given: HashSet<&str> = [
            data::GIVEN_ES_MALE,
            data::GIVEN_ES_FEMALE,
            data::GIVEN_CA_MALE,
            data::GIVEN_CA_FEMALE,
            data::GIVEN_PT_MALE,
            data::GIVEN_PT_FEMALE,
        ]
        .concat()
        .into_iter()
        .collect();
        let family: HashSet<&str> = [data::FAMILY_ES, data::FAMILY_CA, data::FAMILY_PT].concat().into_iter().collect();
        assert!(given.len() >= 150, "{}", given.len());
        assert!(family.len() >= 150, "{}", family.len());
        for name in given.iter().chain(&family) {
            assert_eq!(fold(name), *name);
        }
    }

    #[test]
    fn every_corruption_kind_applies() {
        let mut g = Generator::new(3, Corruption::default());
        let mut applied = [0usize; 28];
        for _ in 0..400 {
            let person = g.person();
            for (k, kind) in KINDS.iter().enumerate() {
                let mut r = person.record.clone();
                if g.apply(*kind, &mut r, person.lang) {
                    applied[k] += 1;
                    assert_ne!(r, person.record, "{kind:?} left the record unchanged");
                }
            }
        }
        for (k, n) in applied.iter().enumerate() {
            assert!(*n > 0, "{:?} never applied", KINDS[k]);
        }
    }
}
