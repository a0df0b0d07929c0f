//! What this process's writes changed, for decisions read outside a write.
//!
//! A write that decides on what it reads (a resolve: who holds these
//! identifiers, who shares these blocking keys) can read and decide before
//! it is queued, beside the other writes (`Store::reads`), and
//! leave the one writer only its statements — if, once its turn comes,
//! nothing it read has changed since. This module tells that:
//!
//! - every write run gets a number, in the order the writes begin;
//! - a write names what it changed as tokens (`WriteTxn::touches`: hashes
//!   of what it wrote, such as an identifier's value or a profile's id);
//!   a write that names nothing changed everything, as far as anyone
//!   reading outside it can tell — so a write nobody taught about tokens
//!   only costs the readers a read again, never a stale answer;
//! - a read takes a [`WriteMark`] before it starts (`Store::settled`): the
//!   number below which every write has ended (committed or rolled back),
//!   so the read sees all of those;
//! - the write that uses the read asks `WriteTxn::changed_since` with the
//!   tokens it read: whether any write numbered after the mark named one
//!   of them (or everything). If so it reads again, inside the write.
//!
//! A write rolled back still counts as a change (a needless read again,
//! never a missed one). Writes of other processes on the same database are
//! not seen: between replicas the unique keys decide, as they do for two
//! writes in one.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
};

/// Writes whose tokens are kept: a mark older than this many writes is
/// taken as changed (its read is done again), so the tokens of old writes
/// can be forgotten.
const KEPT_WRITES: u64 = 200_000;

/// Where a read outside a write began (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteMark(u64);

/// The token of something a write changes or a read depends on: a hash of
/// its parts (a kind, then the values that name it). Two different things
/// may share a token: that only makes a read done again.
pub fn token(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// What a write declared it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Touched {
    /// Nothing declared: anything may have changed.
    #[default]
    Undeclared,
    /// Only what these tokens name.
    Only(Vec<u64>),
    /// Declared: anything may have changed, whatever else it declares.
    Everything,
}

impl Touched {
    /// Add `tokens` to what is declared (nothing if everything is).
    pub(crate) fn add(&mut self, tokens: impl IntoIterator<Item = u64>) {
        match self {
            Touched::Undeclared => *self = Touched::Only(tokens.into_iter().collect()),
            Touched::Only(all) => all.extend(tokens),
            Touched::Everything => {}
        }
    }
}

/// The process's record of recent writes (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    /// The last number handed out.
    last: u64,
    /// Writes begun and not ended.
    open: BTreeSet<u64>,
    /// The last write that changed everything.
    everything: u64,
    /// Each token's last write.
    tokens: HashMap<u64, u64>,
    /// Tokens of writes up to here are forgotten.
    floor: u64,
    /// Prune the tokens once there are this many.
    prune_at: usize,
}

impl Changes {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic elsewhere while holding the lock leaves the log as it
        // was between two whole updates: go on with it.
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every write numbered up to the mark has ended.
    pub(crate) fn settled(&self) -> WriteMark {
        let log = self.log();
        WriteMark(log.open.first().map_or(log.last, |first| first - 1))
    }

    /// Number a write that begins now; it stays open until
    /// [`end`](Self::end).
    pub(crate) fn begin(&self) -> u64 {
        let mut log = self.log();
        let n = log.next();
        log.open.insert(n);
        n
    }

    /// Record what write `n` changed.
    pub(crate) fn record(&self, n: u64, touched: Touched) {
        self.log().record(n, touched);
    }

    /// Writes `ns` ended (committed or rolled back).
    pub(crate) fn end(&self, ns: &[u64]) {
        let mut log = self.log();
        for n in ns {
            log.open.remove(n);
        }
    }

    /// A write that ended already (committed outside the group commit)
    /// changed `touched`.
    pub(crate) fn ended(&self, touched: Touched) {
        let mut log = self.log();
        let n = log.next();
        log.record(n, touched);
    }

    /// Whether a write numbered after `mark` changed anything `tokens` name.
    pub(crate) fn changed_since(&self, mark: WriteMark, tokens: &[u64]) -> bool {
        let log = self.log();
        mark.0 < log.everything
            || mark.0 < log.floor
            || tokens.iter().any(|t| log.tokens.get(t).is_some_and(|&n| n > mark.0))
    }
}

impl Log {
    /// Hand out the next number.
    fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    fn record(&mut self, n: u64, touched: Touched) {
        match touched {
            Touched::Undeclared | Touched::Everything => self.everything = self.everything.max(n),
            Touched::Only(tokens) => {
                for t in tokens {
                    let at = self.tokens.entry(t).or_default();
                    *at = (*at).max(n);
                }
                self.prune();
            }
        }
    }

    /// Forget the tokens of all but the last `KEPT_WRITES` writes once
    /// there are many.
    fn prune(&mut self) {
        if self.tokens.len() < self.prune_at.max(1 << 16) {
            return;
        }
        let floor = self.last.saturating_sub(KEPT_WRITES);
        self.tokens.retain(|_, n| *n > floor);
        self.floor = self.floor.max(floor);
        // At least twice as many before the next pass: pruning stays
        // proportional to the writes recorded.
        self.prune_at = self.tokens.len() * 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(tokens: &[&str]) -> Touched {
        Touched::Only(tokens.iter().map(|t| token(&[t])).collect())
    }

    fn read(tokens: &[&str]) -> Vec<u64> {
        tokens.iter().map(|t| token(&[t])).collect()
    }

    #[test]
    fn a_read_sees_a_change_to_what_it_read_after_its_mark_only() {
        let c = Changes::default();
        let before = c.begin();
        c.record(before, only(&["a"]));
        c.end(&[before]);
        let mark = c.settled();
        assert!(!c.changed_since(mark, &read(&["a", "b"])), "a change before the mark was read");
        let n = c.begin();
        c.record(n, only(&["c"]));
        assert!(!c.changed_since(mark, &read(&["a", "b"])), "another token");
        c.record(n, only(&["b"]));
        assert!(c.changed_since(mark, &read(&["a", "b"])));
        assert!(!c.changed_since(mark, &[]), "a read of nothing");
    }

    #[test]
    fn a_write_that_names_nothing_changed_everything() {
        let c = Changes::default();
        let mark = c.settled();
        let n = c.begin();
        c.record(n, Touched::default());
        assert!(c.changed_since(mark, &read(&["x"])));
        assert!(c.changed_since(mark, &[]));
        c.end(&[n]);
        assert!(!c.changed_since(c.settled(), &read(&["x"])));
        c.ended(Touched::Everything);
        assert!(c.changed_since(mark, &read(&["y"])));
    }

    #[test]
    fn the_mark_stays_below_writes_still_open() {
        let c = Changes::default();
        let first = c.begin();
        let second = c.begin();
        // A write outside the group commit ends while the batch is open.
        c.ended(only(&["k"]));
        assert_eq!(c.settled(), WriteMark(first - 1), "what the open writes do is not yet seen");
        c.end(&[first, second]);
        assert_eq!(c.settled(), WriteMark(3));
        // A read marked while the batch was open sees its changes as new.
        let mark = WriteMark(first - 1);
        c.record(second, only(&["z"]));
        assert!(c.changed_since(mark, &read(&["z"])));
        assert!(c.changed_since(mark, &read(&["k"])));
    }

    #[test]
    fn everything_declared_stays_everything() {
        let mut t = Touched::default();
        t.add([1]);
        assert_eq!(t, Touched::Only(vec![1]));
        t = Touched::Everything;
        t.add([2]);
        assert_eq!(t, Touched::Everything);
    }

    #[test]
    fn a_mark_older_than_the_tokens_kept_reads_again() {
        let c = Changes::default();
        let mark = c.settled();
        for i in 0..(KEPT_WRITES + 70_000) {
            let n = c.begin();
            c.record(n, Touched::Only(vec![i]));
            c.end(&[n]);
        }
        let log = c.log();
        assert!(log.tokens.len() < (KEPT_WRITES as usize) * 2, "tokens are forgotten");
        assert!(log.floor > 0);
        drop(log);
        assert!(c.changed_since(mark, &[u64::MAX]), "what was forgotten counts as changed");
        let recent = c.settled();
        assert!(!c.changed_since(recent, &[u64::MAX]));
    }

    #[test]
    fn tokens_tell_their_parts_apart() {
        assert_ne!(token(&["ab", "c"]), token(&["a", "bc"]));
        assert_eq!(token(&["p", "1"]), token(&["p", "1"]));
    }
}
