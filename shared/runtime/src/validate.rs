//! Request validation shared by every service: ids, enums, bounded text,
//! timestamps and free attribute maps, each failure a field violation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_proto::common::v1::{TraitValue, trait_value};

use crate::{error::FieldViolations, ids::is_valid_id, time::from_timestamp};

/// Longest free-text value accepted in a short field (names, codes).
pub const MAX_SHORT_TEXT: usize = 256;
/// Most entries in a free attribute or trait map.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// Longest string attribute value.
pub const MAX_ATTRIBUTE_VALUE: usize = 4096;

/// A required id: a canonical UUID.
pub fn id(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "required");
    } else if !is_valid_id(value) {
        v.add(field, "must be a lower-case hyphenated UUID");
    }
}

/// A required id on its own, as in Get requests: INVALID_ARGUMENT unless
/// it is a canonical UUID.
pub fn require_id(field: &str, value: &str) -> Result<(), crate::error::RuntimeError> {
    let mut v = FieldViolations::new();
    id(&mut v, field, value);
    v.finish()
}

/// An enum value: unknown numbers are invalid; UNSPECIFIED (0) is invalid
/// when `required`, else `None`.
pub fn enumeration<T: TryFrom<i32>>(v: &mut FieldViolations, field: &str, raw: i32, required: bool) -> Option<T> {
    if raw == 0 {
        if required {
            v.add(field, "required");
        }
        return None;
    }
    match T::try_from(raw) {
        Ok(t) => Some(t),
        Err(_) => {
            v.add(field, format!("unknown value {raw}"));
            None
        }
    }
}

/// Text of at most `max` characters without control characters; empty is
/// a violation when `required`.
pub fn text(v: &mut FieldViolations, field: &str, value: &str, max: usize, required: bool) {
    if value.is_empty() {
        if required {
            v.add(field, "required");
        }
        return;
    }
    if value.chars().count() > max {
        v.add(field, format!("at most {max} characters"));
    } else if value.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
}

/// An optional timestamp within years 1900..=9999; `None` if unset or invalid.
pub fn timestamp(
    v: &mut FieldViolations,
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    let t = value?;
    match from_timestamp(t) {
        Some(d) if (-2_208_988_800..=253_402_300_799).contains(&t.seconds) => Some(d),
        _ => {
            v.add(field, "not a valid instant");
            None
        }
    }
}

/// A free attribute map: bounded size, keys `[A-Za-z0-9_.:-]`, bounded values.
pub fn attributes(v: &mut FieldViolations, field: &str, map: &BTreeMap<String, TraitValue>) {
    if map.len() > MAX_ATTRIBUTES {
        v.add(field, format!("at most {MAX_ATTRIBUTES} entries"));
        return;
    }
    for (key, value) in map {
        let ok_key = !key.is_empty()
            && key.len() <= MAX_ATTRIBUTE_KEY
            && key.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
        if !ok_key {
            v.add(format!("{field}[{key:.64}]"), format!("keys are 1..{MAX_ATTRIBUTE_KEY} of A-Z a-z 0-9 _ . : -"));
            continue;
        }
        match &value.kind {
            None => v.add(format!("{field}[{key}]"), "value required"),
            Some(trait_value::Kind::StringValue(s)) if s.chars().count() > MAX_ATTRIBUTE_VALUE => {
                v.add(format!("{field}[{key}]"), format!("at most {MAX_ATTRIBUTE_VALUE} characters"))
            }
            Some(trait_value::Kind::DoubleValue(d)) if !d.is_finite() => {
                v.add(format!("{field}[{key}]"), "must be finite")
            }
            Some(trait_value::Kind::TimestampValue(t)) => {
                timestamp(v, &format!("{field}[{key}]"), Some(t));
            }
            Some(_) => {}
        }
    }
}

/// Most lines in one order.
pub const MAX_ORDER_LINES: usize = 500;
/// Largest quantity on one line.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Largest unit price or cost, in minor units (10^12: ten billion in a
/// two-decimal currency).
pub const MAX_UNIT_AMOUNT: i64 = 1_000_000_000_000;

/// Whether `code` looks like an ISO 4217 currency code (three upper-case letters).
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// An order's currency and lines (`crm.interaction.v1.OrderLine`), with
/// field names under `prefix` (e.g. "" or "purchase.").
pub fn order(
    v: &mut FieldViolations,
    prefix: &str,
    currency_code: &str,
    lines: &[crm_proto::interaction::v1::OrderLine],
) {
    v.require(is_currency_code(currency_code), format!("{prefix}currency_code"), "an ISO 4217 code such as EUR");
    if lines.is_empty() {
        v.add(format!("{prefix}lines"), "at least one line");
    } else if lines.len() > MAX_ORDER_LINES {
        v.add(format!("{prefix}lines"), format!("at most {MAX_ORDER_LINES} lines"));
    }
    for (i, l) in lines.iter().enumerate().take(MAX_ORDER_LINES) {
        let f = |name: &str| format!("{prefix}lines[{i}].{name}");
        text(v, &f("sku"), &l.sku, 64, true);
        text(v, &f("category"), &l.category, 64, false);
        v.require((1..=MAX_QUANTITY).contains(&l.quantity), f("quantity"), format!("between 1 and {MAX_QUANTITY}"));
        v.require(
            (0..=MAX_UNIT_AMOUNT).contains(&l.unit_price_minor),
            f("unit_price_minor"),
            format!("between 0 and {MAX_UNIT_AMOUNT}"),
        );
        v.require(
            (0..=MAX_UNIT_AMOUNT).contains(&l.unit_cost_minor),
            f("unit_cost_minor"),
            format!("between 0 and {MAX_UNIT_AMOUNT}"),
        );
    }
}

/// A feed position: not negative.
pub fn sequence(v: &mut FieldViolations, field: &str, value: i64) {
    v.require(value >= 0, field, "must not be negative");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::common::v1::Channel;

    #[test]
    fn enums_reject_unknown_and_missing_values() {
        let mut v = FieldViolations::new();
        assert_eq!(enumeration::<Channel>(&mut v, "channel", 1, true), Some(Channel::Web));
        assert_eq!(enumeration::<Channel>(&mut v, "channel", 0, false), None);
        assert!(v.is_empty());
        assert_eq!(enumeration::<Channel>(&mut v, "channel", 0, true), None);
        assert_eq!(enumeration::<Channel>(&mut v, "channel", 999, false), None);
        assert_eq!(v.violations().len(), 2);
    }

    #[test]
    fn text_is_bounded_and_clean() {
        let mut v = FieldViolations::new();
        text(&mut v, "a", "fine", 10, true);
        text(&mut v, "b", "", 10, false);
        assert!(v.is_empty());
        text(&mut v, "c", "", 10, true);
        text(&mut v, "d", &"x".repeat(11), 10, true);
        text(&mut v, "e", "bell\u{7}", 10, true);
        assert_eq!(v.violations().iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["c", "d", "e"]);
    }

    #[test]
    fn attributes_are_bounded() {
        let mut v = FieldViolations::new();
        let mut m = BTreeMap::new();
        m.insert("ok_key".to_owned(), TraitValue { kind: Some(trait_value::Kind::IntValue(1)) });
        attributes(&mut v, "attributes", &m);
        assert!(v.is_empty());
        m.insert("bad key".to_owned(), TraitValue { kind: Some(trait_value::Kind::IntValue(1)) });
        m.insert("nan".to_owned(), TraitValue { kind: Some(trait_value::Kind::DoubleValue(f64::NAN)) });
        m.insert("empty".to_owned(), TraitValue { kind: None });
        attributes(&mut v, "attributes", &m);
        assert_eq!(v.violations().len(), 3);
    }

    #[test]
    fn orders_name_each_bad_line_field() {
        use crm_proto::interaction::v1::OrderLine;
        let good =
            OrderLine { sku: "A".into(), quantity: 1, unit_price_minor: 1, unit_cost_minor: 0, ..Default::default() };
        let mut v = FieldViolations::new();
        order(&mut v, "", "EUR", std::slice::from_ref(&good));
        assert!(v.is_empty());
        let bad = OrderLine {
            sku: String::new(),
            quantity: 0,
            unit_price_minor: -1,
            unit_cost_minor: MAX_UNIT_AMOUNT + 1,
            ..good
        };
        order(&mut v, "purchase.", "eur", &[bad]);
        let fields: Vec<&str> = v.violations().iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "purchase.currency_code",
                "purchase.lines[0].sku",
                "purchase.lines[0].quantity",
                "purchase.lines[0].unit_price_minor",
                "purchase.lines[0].unit_cost_minor"
            ]
        );
        let mut v = FieldViolations::new();
        order(&mut v, "", "EUR", &[]);
        assert_eq!(v.violations()[0].0, "lines");
    }

    #[test]
    fn currency_codes() {
        assert!(is_currency_code("EUR"));
        assert!(!is_currency_code("eur"));
        assert!(!is_currency_code("EURO"));
        assert!(!is_currency_code(""));
    }

    #[test]
    fn ids_must_be_canonical_uuids() {
        let mut v = FieldViolations::new();
        id(&mut v, "id", &crate::ids::new_id());
        assert!(v.is_empty());
        id(&mut v, "id", "");
        id(&mut v, "id", "abc");
        assert_eq!(v.violations().len(), 2);
    }
}
