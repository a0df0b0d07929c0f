//! A phonetic code for Iberian names (Spanish, Catalan, Portuguese).
//!
//! Soundex and Metaphone were designed for English and put Spanish
//! homophones in different buckets (`Basques`/`Vázquez`, `Ximénez`/`Jiménez`).
//! This code maps a folded word (see [`super::fold`]) to a consonant
//! skeleton in which the spellings of one Iberian sound share a letter:
//!
//! | Sound                     | Spellings                                          | Code |
//! |---------------------------|----------------------------------------------------|------|
//! | initial vowel             | `a e i o u`, `y` before a consonant, after a silent `h` | `A` |
//! | /b/                       | `b`, `v`, `w`                                      | `B`  |
//! | /k/                       | `c` (not before `e i y`), `k`, `q`, `qu`           | `K`  |
//! | /s/, /θ/                  | `s`, `z`, `c` before `e i y`, `ç`                  | `S`  |
//! | /x/, /ʃ/                  | `j`, `g` before `e i y`, `x`                       | `J`  |
//! | /g/                       | `g` elsewhere, `gu` before `e i`, `gh`             | `G`  |
//! | /tʃ/                      | `ch`, `tx`                                         | `C`  |
//! | /ʝ/, /ʎ/                  | `ll`, `lh`, `y` before a vowel                     | `Y`  |
//! | /ɲ/, /n/                  | `n`, `ñ` (folded), `nh`, `ny` before a vowel       | `N`  |
//! | /t/, /d/                  | `t`, `d`                                           | `T`  |
//! | /f/                       | `f`, `ph`                                          | `F`  |
//! | others                    | `l m p r`                                          | same |
//!
//! `h` is silent, vowels after the first letter are dropped (they only
//! separate repeated consonants), `u` after `q` / before `e i` after `g` is
//! silent and runs of one code collapse (`rr` → `R`). The result keeps at
//! most [`MAX_CODE`] letters. Examples: `vazquez` → `BSKS`, `velazquez` →
//! `BLSKS`, `jimenez` and `ximenez` → `JMNS`, `yolanda` and `llolanda` →
//! `YLNT`, `carvalho` and `carvallo` → `KRBY`.

/// Longest code produced.
pub const MAX_CODE: usize = 10;

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

fn is_front_vowel(c: u8) -> bool {
    matches!(c, b'e' | b'i' | b'y')
}

/// Phonetic code of one folded word; non-letters are ignored. Empty when
/// the word has no letter.
pub fn phonetic(word: &str) -> String {
    let w: Vec<u8> = word
        .chars()
        .filter_map(|c| match c {
            'a'..='z' => Some(c as u8),
            'A'..='Z' => Some(c.to_ascii_lowercase() as u8),
            'ç' | 'Ç' => Some(b'9'), // a stand-in for the /s/ of a not-yet-folded cedilla
            'ñ' | 'Ñ' => Some(b'n'),
            _ => None,
        })
        .collect();
    let mut out = String::with_capacity(MAX_CODE);
    // The last code emitted; 0 after a vowel (vowels separate repeats).
    let mut last = 0u8;
    let at = |i: usize| w.get(i).copied().unwrap_or(0);
    let mut i = 0;
    while i < w.len() && out.len() < MAX_CODE {
        let c = w[i];
        let next = at(i + 1);
        let mut skip = 0;
        let code = match c {
            b'a' | b'e' | b'i' | b'o' | b'u' => {
                if out.is_empty() {
                    b'A'
                } else {
                    last = 0;
                    i += 1;
                    continue;
                }
            }
            b'y' => {
                if is_vowel(next) {
                    b'Y'
                } else if out.is_empty() {
                    b'A'
                } else {
                    last = 0;
                    i += 1;
                    continue;
                }
            }
            b'h' => {
                i += 1;
                continue;
            }
            b'b' | b'v' | b'w' => b'B',
            b'c' => {
                if next == b'h' {
                    skip = 1;
                    b'C'
                } else if is_front_vowel(next) {
                    b'S'
                } else {
                    b'K'
                }
            }
            b'9' | b's' | b'z' => b'S',
            b'k' => b'K',
            b'q' => {
                if next == b'u' {
                    skip = 1;
                }
                b'K'
            }
            b'g' => {
                if is_front_vowel(next) {
                    b'J'
                } else if next == b'u' && is_front_vowel(at(i + 2)) {
                    skip = 1;
                    b'G'
                } else {
                    if next == b'h' {
                        skip = 1;
                    }
                    b'G'
                }
            }
            b'j' | b'x' => b'J',
            b'l' => {
                if next == b'l' || next == b'h' {
                    skip = 1;
                    b'Y'
                } else {
                    b'L'
                }
            }
            b'n' => {
                if next == b'h' || (next == b'y' && is_vowel(at(i + 2))) {
                    skip = 1;
                }
                b'N'
            }
            b'p' => {
                if next == b'h' {
                    skip = 1;
                    b'F'
                } else {
                    b'P'
                }
            }
            b't' => {
                if next == b'x' {
                    skip = 1;
                    b'C'
                } else {
                    b'T'
                }
            }
            b'd' => b'T',
            b'f' => b'F',
            b'm' => b'M',
            b'r' => b'R',
            _ => {
                i += 1;
                continue;
            }
        };
        if code != last {
            out.push(code as char);
        }
        last = code;
        i += 1 + skip;
    }
    out
}

/// Phonetic code of the first significant word of a folded name (connector
/// words such as `de`, `la`, `i` skipped); empty when there is none.
pub fn phonetic_first(name: &str) -> String {
    super::text::significant_tokens(name).map(phonetic).find(|code| !code.is_empty()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::fold;
    use super::*;

    fn code(s: &str) -> String {
        phonetic(&fold(s))
    }

    #[test]
    fn spanish_homophones_share_a_code() {
        assert_ne!(code("Vázquez"), code("Velázquez"));
        assert_eq!(code("Vázquez"), code("Basques"));
        assert_eq!(code("Vázquez"), "BSKS");
        assert_eq!(code("Jiménez"), code("Ximénez"));
        assert_eq!(code("Yolanda"), code("Llolanda"));
        assert_eq!(code("Carvalho"), code("Carvallo"));
        assert_eq!(code("Xavier"), code("Javier"));
        assert_eq!(code("Hernández"), code("Ernandez"));
        assert_eq!(code("González"), code("Gonsales"));
        assert_eq!(code("Guillermo"), code("Guiyermo"));
        assert_eq!(code("Núñez"), code("Nunhes"));
        assert_eq!(code("Cecilia"), code("Sesilia"));
        assert_eq!(code("Ibarra"), code("Ybarra"));
        // An unfolded cedilla is still /s/.
        assert_eq!(phonetic("gonçalves"), phonetic("gonsalves"));
    }

    #[test]
    fn different_names_differ() {
        assert_ne!(code("Vidal"), code("Vila"));
        assert_ne!(code("Hernández"), code("Fernández"));
        assert_ne!(code("Martín"), code("Martínez"));
        assert_ne!(code("Pérez"), code("Peña"));
    }

    #[test]
    fn codes_are_bounded_and_ignore_non_letters() {
        assert!(code(&"abcdefghijklmnopqrstuvwxyz".repeat(4)).len() <= MAX_CODE);
        assert_eq!(code(""), "");
        assert_eq!(code("123 -"), "");
        assert_eq!(phonetic_first("de la fuente"), code("fuente"));
        assert_eq!(phonetic_first(""), "");
    }
}
