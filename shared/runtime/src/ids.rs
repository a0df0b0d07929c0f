//! Resource ids: UUIDv7 strings, time-ordered so keyset pagination by id is
//! creation order.

/// A new UUIDv7 id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `s` is a well-formed UUID in canonical (hyphenated, lower-case) form.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_increasing() {
        let a = new_id();
        let b = new_id();
        assert!(is_valid_id(&a));
        assert!(a < b, "UUIDv7 ids sort by creation");
    }

    #[test]
    fn rejects_malformed_ids() {
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("not-an-id"));
        assert!(!is_valid_id("0190A8E2-7C3B-7000-8000-000000000000"));
        assert!(!is_valid_id("0190a8e27c3b70008000000000000000"));
    }
}
