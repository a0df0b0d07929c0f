//! String tools for matching: accent folding, Jaro–Winkler similarity and
//! token helpers. Everything works on folded text (see [`fold`]).

/// Fold a value for matching: lower-case, strip diacritics (Spanish,
/// Portuguese, Catalan and the other Latin-1 / Latin Extended-A letters),
/// join the Catalan *ela geminada* (`l·l` → `ll`) and apostrophes
/// (`d'Ors` → `dors`), turn every other punctuation or symbol into a space
/// and collapse runs of whitespace. Letters of other scripts are kept
/// (lower-cased), so folding never loses the identity of a name.
///
/// ```
/// use crm_identification::domain::matching::fold;
/// assert_eq!(fold("  José-María  Núñez d'Alòs "), "jose maria nunez dalos");
/// assert_eq!(fold("Col·legi Gonçalves"), "collegi goncalves");
/// ```
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        let mapped: &str = match c {
            'a'..='z' | '0'..='9' => {
                push_folded(&mut out, &mut pending_space, c);
                continue;
            }
            // Joiners: the Catalan middle dot, apostrophes, combining marks, ordinal indicators.
            '·' | '\'' | '’' | '‘' | '`' | '´' | 'º' | 'ª' | '\u{0300}'..='\u{036f}' => continue,
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
            'ç' | 'ć' | 'č' | 'ĉ' | 'ċ' => "c",
            'ď' | 'đ' | 'ð' => "d",
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
            'ğ' | 'ĝ' | 'ġ' | 'ģ' => "g",
            'ĥ' | 'ħ' => "h",
            'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
            'ĵ' => "j",
            'ķ' => "k",
            'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
            'ñ' | 'ń' | 'ņ' | 'ň' => "n",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
            'ŕ' | 'ŗ' | 'ř' => "r",
            'ś' | 'ŝ' | 'ş' | 'š' => "s",
            'ţ' | 'ť' | 'ŧ' => "t",
            'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
            'ŵ' => "w",
            'ý' | 'ÿ' | 'ŷ' => "y",
            'ź' | 'ż' | 'ž' => "z",
            'ß' => "ss",
            'æ' => "ae",
            'œ' => "oe",
            'þ' => "th",
            c if c.is_alphanumeric() => {
                push_folded(&mut out, &mut pending_space, c);
                continue;
            }
            _ => {
                pending_space = !out.is_empty();
                continue;
            }
        };
        for m in mapped.chars() {
            push_folded(&mut out, &mut pending_space, m);
        }
    }
    out
}

fn push_folded(out: &mut String, pending_space: &mut bool, c: char) {
    if *pending_space {
        out.push(' ');
        *pending_space = false;
    }
    out.push(c);
}

/// Jaro–Winkler similarity in `[0, 1]` (1 = identical), with the standard
/// scaling factor 0.1, a common prefix of at most four characters and the
/// prefix bonus applied to every Jaro value. Two empty strings are
/// identical; one empty string against a non-empty one scores 0.
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    if a == b {
        return 1.0;
    }
    if a.is_ascii() && b.is_ascii() {
        jw_slices(a.as_bytes(), b.as_bytes())
    } else {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        jw_slices(&a, &b)
    }
}

/// Jaro similarity (without the Winkler prefix bonus).
pub fn jaro(a: &str, b: &str) -> f64 {
    if a == b {
        return 1.0;
    }
    if a.is_ascii() && b.is_ascii() {
        jaro_slices(a.as_bytes(), b.as_bytes())
    } else {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        jaro_slices(&a, &b)
    }
}

fn jw_slices<T: PartialEq + Copy + Into<u32>>(a: &[T], b: &[T]) -> f64 {
    let j = jaro_slices(a, b);
    let prefix = a.iter().zip(b).take(4).take_while(|(x, y)| x == y).count();
    j + prefix as f64 * 0.1 * (1.0 - j)
}

fn jaro_slices<T: PartialEq + Copy + Into<u32>>(a: &[T], b: &[T]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    if a.len() <= 64 && b.len() <= 64 {
        jaro_bitmask(a, b)
    } else {
        let mut a_flags = vec![false; a.len()];
        let mut b_flags = vec![false; b.len()];
        let matches = mark_matches(a, b, &mut a_flags, &mut b_flags);
        finish_jaro(a, b, matches, &a_flags, &b_flags)
    }
}

/// Jaro of two byte strings of at most 64 bytes, bit-parallel: for every
/// byte value the positions where it occurs in `b` are a bit mask, so the
/// first unmatched occurrence within the window is one `AND` and a
/// trailing-zero count away. Falls back to [`jaro_short`] for other inputs.
fn jaro_bitmask<T: PartialEq + Copy + Into<u32>>(a: &[T], b: &[T]) -> f64 {
    // Byte classes: `a`–`z`, `0`–`9`, space and `.@_-`; anything else takes the slow path.
    fn class(c: u32) -> Option<usize> {
        match c {
            0x61..=0x7a => Some((c - 0x61) as usize),
            0x30..=0x39 => Some((c - 0x30) as usize + 26),
            0x20 => Some(36),
            0x2e => Some(37),
            0x40 => Some(38),
            0x5f => Some(39),
            0x2d => Some(40),
            _ => None,
        }
    }
    let mut positions = [0u64; 41];
    for (j, &y) in b.iter().enumerate() {
        match class(y.into()) {
            Some(k) => positions[k] |= 1 << j,
            None => return jaro_short(a, b),
        }
    }
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let b_all = if b.len() == 64 { u64::MAX } else { (1u64 << b.len()) - 1 };
    let mut b_free = b_all;
    let mut a_flags = 0u64;
    let mut matches = 0usize;
    for (i, &x) in a.iter().enumerate() {
        let Some(k) = class(x.into()) else {
            return jaro_short(a, b);
        };
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        if lo >= hi {
            continue;
        }
        let span = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
        let candidates = positions[k] & b_free & span;
        if candidates != 0 {
            b_free &= !(candidates & candidates.wrapping_neg());
            a_flags |= 1 << i;
            matches += 1;
        }
    }
    if matches == 0 {
        return 0.0;
    }
    let mut b_used = b_all & !b_free;
    let mut half_transpositions = 0usize;
    for (i, x) in a.iter().enumerate() {
        if a_flags >> i & 1 == 0 {
            continue;
        }
        let k = b_used.trailing_zeros() as usize;
        b_used &= b_used - 1;
        if *x != b[k] {
            half_transpositions += 1;
        }
    }
    jaro_formula(a.len(), b.len(), matches, half_transpositions)
}

/// Jaro on short inputs with bitmask flags (no allocation).
fn jaro_short<T: PartialEq>(a: &[T], b: &[T]) -> f64 {
    let mut a_flags = 0u64;
    let mut b_flags = 0u64;
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let mut matches = 0usize;
    for (i, x) in a.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        for (j, y) in b.iter().enumerate().take(hi).skip(lo) {
            if b_flags >> j & 1 == 0 && x == y {
                a_flags |= 1 << i;
                b_flags |= 1 << j;
                matches += 1;
                break;
            }
        }
    }
    if matches == 0 {
        return 0.0;
    }
    let mut k = 0usize;
    let mut half_transpositions = 0usize;
    for (i, x) in a.iter().enumerate() {
        if a_flags >> i & 1 == 0 {
            continue;
        }
        while b_flags >> k & 1 == 0 {
            k += 1;
        }
        if *x != b[k] {
            half_transpositions += 1;
        }
        k += 1;
    }
    jaro_formula(a.len(), b.len(), matches, half_transpositions)
}

fn mark_matches<T: PartialEq>(a: &[T], b: &[T], a_flags: &mut [bool], b_flags: &mut [bool]) -> usize {
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let mut matches = 0usize;
    for (i, x) in a.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        for j in lo..hi {
            if !b_flags[j] && *x == b[j] {
                a_flags[i] = true;
                b_flags[j] = true;
                matches += 1;
                break;
            }
        }
    }
    matches
}

fn finish_jaro<T: PartialEq>(a: &[T], b: &[T], matches: usize, a_flags: &[bool], b_flags: &[bool]) -> f64 {
    if matches == 0 {
        return 0.0;
    }
    let mut k = 0usize;
    let mut half_transpositions = 0usize;
    for (i, x) in a.iter().enumerate() {
        if !a_flags[i] {
            continue;
        }
        while !b_flags[k] {
            k += 1;
        }
        if *x != b[k] {
            half_transpositions += 1;
        }
        k += 1;
    }
    jaro_formula(a.len(), b.len(), matches, half_transpositions)
}

fn jaro_formula(la: usize, lb: usize, matches: usize, half_transpositions: usize) -> f64 {
    let m = matches as f64;
    let t = (half_transpositions / 2) as f64;
    (m / la as f64 + m / lb as f64 + (m - t) / m) / 3.0
}

/// Little words that carry no identity in names and street names
/// (Spanish, Catalan and Portuguese articles, prepositions and
/// conjunctions).
pub(crate) const CONNECTORS: &[&str] =
    &["d", "da", "das", "de", "del", "dels", "do", "dos", "e", "el", "els", "i", "l", "la", "las", "les", "los", "y"];

/// First letter of the first significant word of a name.
pub(crate) fn first_significant_letter(name: &str) -> Option<char> {
    name.split(' ').find(|t| !t.is_empty() && !is_connector(t)).and_then(|t| t.chars().next())
}

/// Whether a token is a connector word (see [`CONNECTORS`]).
pub(crate) fn is_connector(token: &str) -> bool {
    CONNECTORS.contains(&token)
}

/// The significant tokens of a folded value: whitespace-separated, without
/// connector words.
pub(crate) fn significant_tokens(s: &str) -> impl Iterator<Item = &str> + Clone {
    s.split(' ').filter(|t| !t.is_empty() && !is_connector(t))
}

/// Keep only ASCII digits.
pub(crate) fn digits(s: &str) -> impl Iterator<Item = u8> + Clone + '_ {
    s.bytes().filter(u8::is_ascii_digit)
}

/// Keep only ASCII letters and digits (postcodes written with or without a
/// dash or a space compare equal).
pub(crate) fn alphanumerics(s: &str) -> impl Iterator<Item = u8> + Clone + '_ {
    s.bytes().filter(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.0015
    }

    #[test]
    fn jaro_winkler_matches_published_values() {
        assert!(close(jaro_winkler("MARTHA", "MARHTA"), 0.961), "{}", jaro_winkler("MARTHA", "MARHTA"));
        assert!(close(jaro_winkler("DWAYNE", "DUANE"), 0.840), "{}", jaro_winkler("DWAYNE", "DUANE"));
        assert!(close(jaro_winkler("DIXON", "DICKSONX"), 0.813), "{}", jaro_winkler("DIXON", "DICKSONX"));
        assert!(close(jaro("MARTHA", "MARHTA"), 0.944));
        assert!(close(jaro("DWAYNE", "DUANE"), 0.822));
        assert!(close(jaro("DIXON", "DICKSONX"), 0.767));
    }

    #[test]
    fn jaro_winkler_edge_cases() {
        assert_eq!(jaro_winkler("", ""), 1.0);
        assert_eq!(jaro_winkler("abc", ""), 0.0);
        assert_eq!(jaro_winkler("abc", "xyz"), 0.0);
        assert_eq!(jaro_winkler("same", "same"), 1.0);
        // Symmetric.
        assert_eq!(jaro_winkler("garcia", "gracia"), jaro_winkler("gracia", "garcia"));
        // Non-ASCII goes through the char path and agrees with the folded value's ordering.
        assert!(jaro_winkler("núñez", "nuñez") > 0.85);
        // Long strings (beyond the 64-character bitmask) agree with the short path.
        let long_a = "a".repeat(40) + &"b".repeat(40);
        let long_b = "a".repeat(40) + &"c".repeat(40);
        let j = jaro_winkler(&long_a, &long_b);
        assert!(j > 0.5 && j < 1.0, "{j}");
    }

    #[test]
    fn bit_parallel_jaro_agrees_with_the_reference() {
        let mut rng = super::super::rng::SplitMix64::new(5);
        let alphabet = b"abcde xyz.@019";
        for _ in 0..20_000 {
            let len_a = rng.below(20);
            let len_b = rng.below(20);
            let a: Vec<u8> = (0..len_a).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            let b: Vec<u8> = (0..len_b).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            let fast = jaro_slices(&a, &b);
            let reference = if a.is_empty() && b.is_empty() {
                1.0
            } else if a.is_empty() || b.is_empty() {
                0.0
            } else {
                jaro_short(&a, &b)
            };
            assert!((fast - reference).abs() < 1e-12, "{:?} {:?}: {fast} vs {reference}", a, b);
        }
        // 64-byte strings use the whole mask; other bytes take the slow path.
        let long_a = "ab".repeat(32);
        let long_b = "ba".repeat(32);
        assert!((jaro(&long_a, &long_b) - jaro_short(long_a.as_bytes(), long_b.as_bytes())).abs() < 1e-12);
        assert!((jaro("a#b", "a#c") - jaro_short(b"a#b", b"a#c")).abs() < 1e-12);
    }

    #[test]
    fn fold_strips_accents_and_punctuation() {
        assert_eq!(fold("ÁÀÂÃÄ éèêë íìîï óòôõö úùûü ç ñ"), "aaaaa eeee iiii ooooo uuuu c n");
        assert_eq!(fold("Núñez-García"), "nunez garcia");
        assert_eq!(fold("Paral·lel"), "parallel");
        assert_eq!(fold("  O'Donnell,   Seán  "), "odonnell sean");
        assert_eq!(fold("C/ Mayor, 12 - 3º B"), "c mayor 12 3 b");
        assert_eq!(fold("Conceição"), "conceicao");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("e\u{301}"), "e");
        assert_eq!(fold("...!!"), "");
        assert_eq!(fold("Ελένη"), "ελένη");
    }
}
