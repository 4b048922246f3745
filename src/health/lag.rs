//! Replica lag from WAL positions, on pgrouter's own clock.
//!
//! The monitor records the primary's flushed position at every probe. A
//! replica that has replayed up to `r` has everything the primary had the
//! last time the primary was seen at or below `r`; its time lag is the time
//! since then. A replica that has replayed the primary's latest position has
//! zero lag, however long the primary has been idle. Servers' clocks never
//! enter into it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::lsn::Lsn;

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

    /// How far behind a replica that replayed up to `replayed` is, at `now`.
    pub(crate) fn lag_time(&self, replayed: Lsn, now: Instant) -> Option<Duration> {
        let latest = self.latest()?;
        if replayed >= latest {
            return Some(Duration::ZERO);
        }
        let first_ahead = self
            .runs
            .partition_point(|(position, _, _)| *position <= replayed);
        let since = match first_ahead.checked_sub(1) {
            Some(behind) => self.runs[behind].2,
            None => self.runs[0].1,
        };
        Some(now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn unknown_until_the_primary_is_seen() {
        assert_eq!(WalHistory::default().lag_time(Lsn(5), Instant::now()), None);
    }

    #[test]
    fn caught_up_on_an_idle_primary_is_zero() {
        let t = Instant::now();
        let mut history = WalHistory::default();
        for ms in (0..10_000).step_by(250) {
            history.record(Lsn(100), at(t, ms));
        }
        assert_eq!(history.runs.len(), 1, "equal positions share a run");
        assert_eq!(
            history.lag_time(Lsn(100), at(t, 60_000)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_paused_replica_lags_since_the_primary_last_stood_where_it_is() {
        let t = Instant::now();
        let mut history = WalHistory::default();
        history.record(Lsn(100), at(t, 0));
        history.record(Lsn(100), at(t, 1000));
        history.record(Lsn(200), at(t, 1250));
        history.record(Lsn(300), at(t, 1500));
        assert_eq!(
            history.lag_time(Lsn(100), at(t, 2000)),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(
            history.lag_time(Lsn(150), at(t, 2000)),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(
            history.lag_time(Lsn(200), at(t, 2000)),
            Some(Duration::from_millis(750))
        );
        assert_eq!(
            history.lag_time(Lsn(300), at(t, 2000)),
            Some(Duration::ZERO)
        );
        // Behind everything recorded: at least since the oldest sample.
        assert_eq!(
            history.lag_time(Lsn(50), at(t, 2000)),
            Some(Duration::from_millis(2000))
        );
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
