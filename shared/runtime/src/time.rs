//! Conversions between protobuf timestamps and chrono instants.

use chrono::{DateTime, TimeZone, Utc};

/// A protobuf timestamp from a chrono instant.
pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// A chrono instant from a protobuf timestamp, or `None` if out of range.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Utc.timestamp_opt(t.seconds, t.nanos as u32).single()
}

/// Now, truncated to microseconds (what both stores keep).
pub fn now() -> DateTime<Utc> {
    let n = Utc::now();
    Utc.timestamp_micros(n.timestamp_micros()).single().unwrap_or(n)
}
