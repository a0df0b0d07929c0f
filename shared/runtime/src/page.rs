//! Pagination: page sizes with a default and a ceiling, and opaque page
//! tokens that carry a keyset cursor.

use crate::error::FieldViolations;

/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// The page size to use for a requested one (0 → default; capped).
pub fn page_size(v: &mut FieldViolations, requested: i32) -> u64 {
    if requested < 0 {
        v.add("page_size", "must not be negative");
        return DEFAULT_PAGE_SIZE;
    }
    match requested as u64 {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Encode a keyset cursor as an opaque token.
pub fn encode_token(cursor: &str) -> String {
    let mut s = String::with_capacity(cursor.len() * 2 + 2);
    s.push_str("p1");
    for b in cursor.as_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decode a token made by `encode_token`; empty means the first page.
pub fn decode_token(v: &mut FieldViolations, token: &str) -> Option<String> {
    if token.is_empty() {
        return None;
    }
    let decoded = token
        .strip_prefix("p1")
        .filter(|h| h.len() % 2 == 0 && h.len() <= 1024)
        .and_then(|h| {
            (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok()).collect::<Option<Vec<u8>>>()
        })
        .and_then(|b| String::from_utf8(b).ok());
    if decoded.is_none() {
        v.add("page_token", "not a token returned by this service");
    }
    decoded
}

/// Cut `rows`, fetched one past `size` (a query with `LIMIT size + 1`), to
/// the page, and return the token of the next page, made by `token` from
/// the page's last row; empty when this page is the last.
pub fn next_token<T>(rows: &mut Vec<T>, size: u64, token: impl FnOnce(&T) -> String) -> String {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if rows.len() <= size {
        return String::new();
    }
    rows.truncate(size);
    rows.last().map(token).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let mut v = FieldViolations::new();
        let t = encode_token("2026-01-01|0190");
        assert_eq!(decode_token(&mut v, &t).as_deref(), Some("2026-01-01|0190"));
        assert_eq!(decode_token(&mut v, ""), None);
        assert!(v.is_empty());
    }

    #[test]
    fn forged_tokens_are_invalid() {
        let mut v = FieldViolations::new();
        assert_eq!(decode_token(&mut v, "garbage"), None);
        assert_eq!(decode_token(&mut v, "p1zz"), None);
        assert_eq!(v.violations().len(), 2);
    }

    #[test]
    fn page_sizes_have_a_default_and_a_ceiling() {
        let mut v = FieldViolations::new();
        assert_eq!(page_size(&mut v, 0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(&mut v, 10), 10);
        assert_eq!(page_size(&mut v, 100_000), MAX_PAGE_SIZE);
        assert!(v.is_empty());
        page_size(&mut v, -1);
        assert!(!v.is_empty());
    }

    #[test]
    fn a_row_past_the_page_makes_the_next_token() {
        let mut rows = vec![1, 2, 3];
        assert_eq!(next_token(&mut rows, 2, |r| r.to_string()), "2");
        assert_eq!(rows, [1, 2]);
        let mut rows = vec![1, 2];
        assert_eq!(next_token(&mut rows, 2, |r| r.to_string()), "", "the last page has no next token");
        assert_eq!(rows, [1, 2]);
    }
}
