//! [`CallWindow`]: how many calls ended, and how many of them failed, over
//! a recent sliding window. Lock-free and allocation-free per call: one
//! clock read and two atomic operations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets the window is cut into: it slides by a tenth of its length.
const BUCKETS: usize = 10;

/// Calls and failures in one bucket: failures in the high 32 bits, calls in
/// the low 32, so one `fetch_add` records a call.
const FAILED: u64 = 1 << 32;
const CALL: u64 = 1;

/// Calls that ended, and failures among them, over the last window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Tally {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
}

/// A ring of time buckets, each stamped with the bucket number it counts.
/// A bucket found stamped with an older number is reset by the first call
/// that lands in it; a call racing that reset may be lost, which a
/// readiness judgement over hundreds of calls does not notice.
#[derive(Debug)]
pub(crate) struct CallWindow {
    base: Instant,
    bucket_ns: u64,
    /// Bucket number each slot counts (`u64::MAX`: never used).
    stamps: [AtomicU64; BUCKETS],
    counts: [AtomicU64; BUCKETS],
}

impl CallWindow {
    /// A window of `length` (at least one nanosecond per bucket).
    #[cfg(test)]
    pub(crate) fn new(length: Duration) -> Self {
        Self::since(length, Instant::now())
    }

    /// A window of `length` whose times count from `base`.
    pub(crate) fn since(length: Duration, base: Instant) -> Self {
        let bucket_ns = u64::try_from(length.as_nanos() / BUCKETS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            base,
            bucket_ns,
            stamps: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one call that ended now; `failed` if it failed.
    pub(crate) fn record(&self, failed: bool) {
        self.record_in(self.bucket_at(Instant::now()), failed);
    }

    /// Counts one call that ended `at` nanoseconds after the window's base
    /// (a clock read the caller already made).
    pub(crate) fn record_at(&self, at: u64, failed: bool) {
        self.record_in(at / self.bucket_ns, failed);
    }

    fn record_in(&self, bucket: u64, failed: bool) {
        let slot = (bucket % BUCKETS as u64) as usize;
        let stamp = self.stamps[slot].load(Ordering::Acquire);
        if stamp != bucket
            && self.stamps[slot]
                .compare_exchange(stamp, bucket, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.counts[slot].store(0, Ordering::Release);
        }
        let add = if failed { FAILED + CALL } else { CALL };
        self.counts[slot].fetch_add(add, Ordering::AcqRel);
    }

    /// The calls of the last window, as of `now`.
    pub(crate) fn tally(&self, now: Instant) -> Tally {
        let current = self.bucket_at(now);
        let oldest = current.saturating_sub(BUCKETS as u64 - 1);
        let mut tally = Tally::default();
        for slot in 0..BUCKETS {
            let stamp = self.stamps[slot].load(Ordering::Acquire);
            if stamp == u64::MAX || stamp < oldest || stamp > current {
                continue;
            }
            let counts = self.counts[slot].load(Ordering::Acquire);
            tally.calls += counts & (FAILED - 1);
            tally.failed += counts >> 32;
        }
        tally
    }

    fn bucket_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_nanos();
        // Past 584 years in: the last bucket but one (`u64::MAX` is unused).
        u64::try_from(since).map_or(u64::MAX - 1, |since| since / self.bucket_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_the_last_window_only() {
        let window = CallWindow::new(Duration::from_secs(10));
        for _ in 0..3 {
            window.record(false);
        }
        window.record(true);
        assert_eq!(
            window.tally(Instant::now()),
            Tally {
                calls: 4,
                failed: 1
            }
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        window.record(true);
        assert_eq!(window.tally(Instant::now()).failed, 2);
        // The first calls age out after the window; the later one stays.
        tokio::time::advance(Duration::from_millis(5_500)).await;
        assert_eq!(
            window.tally(Instant::now()),
            Tally {
                calls: 1,
                failed: 1
            }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(window.tally(Instant::now()), Tally::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_bucket_starts_from_zero() {
        let window = CallWindow::new(Duration::from_secs(1));
        window.record(true);
        // Exactly one lap later, the same slot is used for a new bucket.
        tokio::time::advance(Duration::from_secs(1)).await;
        window.record(false);
        assert_eq!(
            window.tally(Instant::now()),
            Tally {
                calls: 1,
                failed: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_recorded_at_a_stamp_counts_where_a_clock_read_would() {
        let base = Instant::now();
        let window = CallWindow::since(Duration::from_secs(10), base);
        tokio::time::advance(Duration::from_secs(4)).await;
        window.record(false);
        let stamp = u64::try_from(Instant::now().duration_since(base).as_nanos()).unwrap();
        window.record_at(stamp, true);
        assert_eq!(
            window.tally(Instant::now()),
            Tally {
                calls: 2,
                failed: 1
            }
        );
        // Both age out together.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(window.tally(Instant::now()), Tally::default());
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_lengths_do_not_panic() {
        for length in [Duration::ZERO, Duration::from_nanos(3), Duration::MAX] {
            let window = CallWindow::new(length);
            window.record(true);
            assert!(window.tally(Instant::now()).calls <= 1);
        }
    }
}
