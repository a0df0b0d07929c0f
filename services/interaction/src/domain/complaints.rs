//! Complaints and defection: the complaint life cycle and the breakdown of
//! defection causes.

use crm_proto::interaction::v1::{ComplaintStatus, DefectionReason};

fn status_name(s: ComplaintStatus) -> &'static str {
    match s {
        ComplaintStatus::Unspecified => "unspecified",
        ComplaintStatus::Open => "open",
        ComplaintStatus::InProgress => "in progress",
        ComplaintStatus::Resolved => "resolved",
        ComplaintStatus::Rejected => "rejected",
    }
}

/// Whether a complaint may go from `from` to `to`: open → in progress →
/// resolved or rejected; an open complaint may be resolved or rejected at
/// once; resolved and rejected are final. The error says why not.
pub fn transition(from: ComplaintStatus, to: ComplaintStatus) -> Result<(), String> {
    use ComplaintStatus as S;
    let allowed = matches!(
        (from, to),
        (S::Open, S::InProgress | S::Resolved | S::Rejected) | (S::InProgress, S::Resolved | S::Rejected)
    );
    if allowed {
        Ok(())
    } else if from == to {
        Err(format!("the complaint is already {}", status_name(from)))
    } else {
        Err(format!("a complaint cannot go from {} to {}", status_name(from), status_name(to)))
    }
}

/// Defections of one reason, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CauseCount {
    /// Reason.
    pub reason: DefectionReason,
    /// Defections.
    pub count: i64,
    /// Of which manageable.
    pub manageable: i64,
}

/// One line of the breakdown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cause {
    /// Reason.
    pub reason: DefectionReason,
    /// Defections.
    pub count: i64,
    /// Of which manageable.
    pub manageable: i64,
    /// Share of all defections, 0..1.
    pub share: f64,
}

/// The breakdown of `counts` (one entry per reason or several, added up):
/// causes with defections, most frequent first (ties by reason), and the
/// total.
pub fn breakdown(counts: &[CauseCount]) -> (Vec<Cause>, i64) {
    let mut merged: Vec<CauseCount> = Vec::new();
    for c in counts.iter().filter(|c| c.count > 0) {
        match merged.iter_mut().find(|m| m.reason == c.reason) {
            Some(m) => {
                m.count += c.count;
                m.manageable += c.manageable;
            }
            None => merged.push(*c),
        }
    }
    let total: i64 = merged.iter().map(|c| c.count).sum();
    merged.sort_by(|a, b| b.count.cmp(&a.count).then((a.reason as i32).cmp(&(b.reason as i32))));
    let causes = merged
        .into_iter()
        .map(|c| Cause {
            reason: c.reason,
            count: c.count,
            manageable: c.manageable,
            share: c.count as f64 / total as f64,
        })
        .collect();
    (causes, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ComplaintStatus as S;

    #[test]
    fn complaints_move_forward_only() {
        for (from, to) in [
            (S::Open, S::InProgress),
            (S::Open, S::Resolved),
            (S::Open, S::Rejected),
            (S::InProgress, S::Resolved),
            (S::InProgress, S::Rejected),
        ] {
            assert!(transition(from, to).is_ok(), "{from:?} → {to:?}");
        }
        for (from, to) in [
            (S::InProgress, S::Open),
            (S::Resolved, S::Open),
            (S::Resolved, S::InProgress),
            (S::Resolved, S::Rejected),
            (S::Rejected, S::Resolved),
            (S::Open, S::Open),
            (S::Open, S::Unspecified),
        ] {
            assert!(transition(from, to).is_err(), "{from:?} → {to:?}");
        }
        assert_eq!(transition(S::Resolved, S::Resolved).unwrap_err(), "the complaint is already resolved");
        assert_eq!(transition(S::Rejected, S::Open).unwrap_err(), "a complaint cannot go from rejected to open");
    }

    #[test]
    fn causes_most_frequent_first_with_shares() {
        use DefectionReason as R;
        let (causes, total) = breakdown(&[
            CauseCount { reason: R::Moved, count: 1, manageable: 0 },
            CauseCount { reason: R::Service, count: 2, manageable: 2 },
            CauseCount { reason: R::Price, count: 2, manageable: 1 },
            CauseCount { reason: R::Other, count: 0, manageable: 0 },
        ]);
        assert_eq!(total, 5);
        assert_eq!(causes.iter().map(|c| c.reason).collect::<Vec<_>>(), [R::Price, R::Service, R::Moved]);
        assert_eq!(causes.iter().map(|c| c.share).collect::<Vec<_>>(), [0.4, 0.4, 0.2]);
        assert_eq!(causes[1].manageable, 2);
    }

    #[test]
    fn no_defections_no_causes() {
        assert_eq!(breakdown(&[]), (vec![], 0));
    }

    #[test]
    fn repeated_reasons_are_added_up() {
        use DefectionReason as R;
        let (causes, total) = breakdown(&[
            CauseCount { reason: R::Price, count: 1, manageable: 1 },
            CauseCount { reason: R::Price, count: 2, manageable: 0 },
        ]);
        assert_eq!(total, 3);
        assert_eq!(causes, [Cause { reason: R::Price, count: 3, manageable: 1, share: 1.0 }]);
    }
}
