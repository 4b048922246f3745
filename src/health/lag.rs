//! Replica freshness from WAL positions, on pgrouter's own clock.
//!
//! The monitor records the primary's WAL insert position at every probe, as of
//! the instant the probe was sent (the primary had at most that position
//! then). A replica that has replayed up to `r` has everything the primary
//! had the last time the primary was seen at or below `r`: it is *fresh as
//! of* that instant, and its staleness at any later moment is the time
//! since. A replica caught up with the primary's latest position is fresh as
//! of the primary's last probe — however idle the primary, and no fresher:
//! while the primary cannot be probed, every replica grows staler. A replica
//! behind everything recorded (it was behind when this manager started) is
//! fresh as of an unknown instant. Servers' clocks never enter into it.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::causal::lsn::Lsn;

/// Runs of equal primary positions: (position, first seen, last seen).
#[derive(Debug, Default)]
pub(crate) struct WalHistory {
    runs: VecDeque<(Lsn, Instant, Instant)>,
}

/// Runs kept; older ones are dropped (a replica behind all of them reports
/// the age of the oldest, a lower bound).
const CAPACITY: usize = 4096;

impl WalHistory {
    /// The primary was at `position` at `at`.
    pub(crate) fn record(&mut self, position: Lsn, at: Instant) {
        match self.runs.back_mut() {
            Some((last, _, seen)) if *last == position => *seen = at,
            _ => {
                self.runs.push_back((position, at, at));
                if self.runs.len() > CAPACITY {
                    self.runs.pop_front();
                }
            }
        }
    }

    /// The primary's latest recorded position.
    pub(crate) fn latest(&self) -> Option<Lsn> {
        self.runs.back().map(|(position, _, _)| *position)
    }

    /// The last instant the primary was seen at or below `replayed`: a
    /// replica that replayed that far had everything the primary had then.
    /// `None` when it is behind everything recorded.
    pub(crate) fn fresh_as_of(&self, replayed: Lsn) -> Option<Instant> {
        let first_ahead = self
            .runs
            .partition_point(|(position, _, _)| *position <= replayed);
        let behind = first_ahead.checked_sub(1)?;
        Some(self.runs[behind].2)
    }

    /// Forgets everything: positions from another primary or timeline say
    /// nothing about this one's.
    pub(crate) fn clear(&mut self) {
        self.runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn ms(start: Instant, at: Option<Instant>) -> Option<u64> {
        at.map(|at| at.duration_since(start).as_millis() as u64)
    }

    #[test]
    fn unknown_until_the_primary_is_seen() {
        assert_eq!(WalHistory::default().fresh_as_of(Lsn(5)), None);
    }

    #[test]
    fn caught_up_means_fresh_as_of_the_primarys_last_probe() {
        let t = Instant::now();
        let mut history = WalHistory::default();
        for ms in (0..10_000).step_by(250) {
            history.record(Lsn(100), at(t, ms));
        }
        assert_eq!(history.runs.len(), 1, "equal positions share a run");
        assert_eq!(ms(t, history.fresh_as_of(Lsn(100))), Some(9750));
        // Ahead of the primary's last position (it wrote since): the same.
        assert_eq!(ms(t, history.fresh_as_of(Lsn(150))), Some(9750));
    }

    #[test]
    fn a_paused_replica_is_fresh_as_of_the_primarys_last_visit_to_its_position() {
        let t = Instant::now();
        let mut history = WalHistory::default();
        history.record(Lsn(100), at(t, 0));
        history.record(Lsn(100), at(t, 1000));
        history.record(Lsn(200), at(t, 1250));
        history.record(Lsn(300), at(t, 1500));
        assert_eq!(ms(t, history.fresh_as_of(Lsn(100))), Some(1000));
        assert_eq!(ms(t, history.fresh_as_of(Lsn(150))), Some(1000));
        assert_eq!(ms(t, history.fresh_as_of(Lsn(200))), Some(1250));
        assert_eq!(ms(t, history.fresh_as_of(Lsn(300))), Some(1500));
        // Behind everything recorded: unknown, not "fresh since the start".
        assert_eq!(history.fresh_as_of(Lsn(50)), None);
        history.clear();
        assert_eq!(history.fresh_as_of(Lsn(300)), None);
    }

    #[test]
    fn history_is_bounded() {
        let t = Instant::now();
        let mut history = WalHistory::default();
        for i in 0..(CAPACITY as u64 + 10) {
            history.record(Lsn(i), at(t, i));
        }
        assert_eq!(history.runs.len(), CAPACITY);
        assert_eq!(history.latest(), Some(Lsn(CAPACITY as u64 + 9)));
    }
}
