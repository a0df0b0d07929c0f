//! Consistency tokens: a projection read with `min_sequence` waits, within
//! the request's deadline, until the projection has applied that position.

use std::time::Duration;

use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::error::RuntimeError;

/// Longest wait when the caller sent no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// Wait until `applied` reaches `min` (no wait if `min <= 0`), at most
/// `budget`. Returns the applied position.
pub async fn wait_for(mut applied: watch::Receiver<i64>, min: i64, budget: Duration) -> Result<i64, RuntimeError> {
    let now = *applied.borrow();
    if min <= now {
        return Ok(now);
    }
    let outcome = tokio::time::timeout(budget, applied.wait_for(|&a| a >= min)).await.map(|r| r.map(|a| *a));
    match outcome {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(_)) => Err(RuntimeError::Unavailable("projection is not running".into())),
        Err(_) => Err(RuntimeError::DeadlineExceeded(format!(
            "projection has applied sequence {} but {} was required; retry later",
            *applied.borrow(),
            min
        ))),
    }
}

/// Time kept to answer in before the caller's deadline: a tenth of it, and
/// at least this much, so that the answer is DEADLINE_EXCEEDED from the
/// handler rather than the transport cancelling the call on a busy host.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// How long a request may wait: its `grpc-timeout` less a margin to answer
/// in (see [`ANSWER_MARGIN`]), capped by `cap`.
pub fn wait_budget(metadata: &MetadataMap, cap: Duration) -> Duration {
    match metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout) {
        Some(d) => d.saturating_sub((d / 10).max(ANSWER_MARGIN)).min(cap),
        None => cap,
    }
}

/// Parse a `grpc-timeout` header value ("100m", "5S", …).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_at_once_when_already_applied() {
        let (_tx, rx) = watch::channel(7);
        assert_eq!(wait_for(rx.clone(), 0, Duration::ZERO).await.unwrap(), 7);
        assert_eq!(wait_for(rx, 7, Duration::ZERO).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn waits_until_the_position_is_applied() {
        let (tx, rx) = watch::channel(1);
        let waiter = tokio::spawn(wait_for(rx, 3, Duration::from_secs(5)));
        tx.send(2).unwrap();
        tx.send(3).unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), 3);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let (_tx, rx) = watch::channel(1);
        let err = wait_for(rx, 2, Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(err, RuntimeError::DeadlineExceeded(_)));
    }

    #[test]
    fn the_wait_leaves_a_margin_to_answer_before_the_deadline() {
        let budget = |timeout: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", timeout.parse().unwrap());
            wait_budget(&m, Duration::from_secs(5))
        };
        assert_eq!(budget("300m"), Duration::from_millis(200));
        assert_eq!(budget("2S"), Duration::from_millis(1800));
        assert_eq!(budget("50m"), Duration::ZERO);
        assert_eq!(budget("1H"), Duration::from_secs(5));
        assert_eq!(wait_budget(&MetadataMap::new(), Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("12q"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }
}
