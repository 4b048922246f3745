//! One node's health state machine: pure, driven by probe results and time.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::config::clock;
use crate::config::HealthSettings;

/// A change of a node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The node was up and is now down.
    WentDown,
    /// The node was down and is now up.
    CameUp,
}

/// Counts consecutive results and schedules the next probe.
///
/// - Up: probed every `interval`; `fall` consecutive failures (or one
///   failure after a caller reported the node suspect) take it down.
/// - Down: re-probed after `recovery_initial`, the gap doubling up to
///   `recovery_max`; after a success, the next probe comes after
///   `recovery_initial` (or `interval`, if shorter), and `rise` consecutive
///   successes bring it back (so a node that answers again is back within
///   about `recovery_max + (rise - 1) * recovery_initial`).
///
/// Every gap is shortened by a random share of up to `probe_jitter` (see
/// [`jittered`]), so the pods of a fleet do not probe in step.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    up: bool,
    failures: u32,
    successes: u32,
    recovery_attempt: u32,
    next_probe: Instant,
    /// This node's draws for the jitter (seeded apart per tracker).
    rng: fastrand::Rng,
}

impl Tracker {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            up: true,
            failures: 0,
            successes: 0,
            recovery_attempt: 0,
            next_probe: now,
            rng: fastrand::Rng::new(),
        }
    }

    /// Schedules the next probe `gap` (jittered) after `now`.
    fn next_after(&mut self, now: Instant, gap: Duration, settings: &HealthSettings) {
        let gap = jittered(gap, settings.probe_jitter, self.rng.f64());
        self.next_probe = clock::after(now, gap);
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    pub(crate) fn next_probe(&self) -> Instant {
        self.next_probe
    }

    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.next_probe <= now
    }

    /// Probe at once (a caller saw a failure or a topology change).
    pub(crate) fn probe_now(&mut self, now: Instant) {
        self.next_probe = now;
    }

    pub(crate) fn on_success(
        &mut self,
        now: Instant,
        settings: &HealthSettings,
    ) -> Option<Transition> {
        self.failures = 0;
        self.successes = self.successes.saturating_add(1);
        if self.up {
            self.next_after(now, settings.interval, settings);
            return None;
        }
        if self.successes < settings.rise {
            // Confirming a recovery: soon, never later than a whole interval.
            let gap = settings.recovery_initial.min(settings.interval);
            self.next_after(now, gap, settings);
            return None;
        }
        self.next_after(now, settings.interval, settings);
        self.up = true;
        self.recovery_attempt = 0;
        Some(Transition::CameUp)
    }

    pub(crate) fn on_failure(
        &mut self,
        now: Instant,
        suspected: bool,
        settings: &HealthSettings,
    ) -> Option<Transition> {
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if self.up && !suspected && self.failures < settings.fall {
            self.next_after(now, settings.interval, settings);
            return None;
        }
        let delay = recovery_delay(self.recovery_attempt, settings);
        self.next_after(now, delay, settings);
        self.recovery_attempt = self.recovery_attempt.saturating_add(1);
        if !self.up {
            return None;
        }
        self.up = false;
        Some(Transition::WentDown)
    }
}

/// `gap` shortened by `jitter * draw` of itself (`draw` in `[0, 1)`, a
/// uniform draw; `jitter` at most 0.5, as validated): never longer than
/// `gap`, so a bound that holds for exact gaps holds for jittered ones.
pub(crate) fn jittered(gap: Duration, jitter: f64, draw: f64) -> Duration {
    if jitter <= 0.0 {
        return gap;
    }
    let factor = 1.0 - (jitter * draw).clamp(0.0, 1.0);
    Duration::try_from_secs_f64(gap.as_secs_f64() * factor).map_or(gap, |shorter| shorter.min(gap))
}

/// `recovery_initial * 2^attempt`, capped at `recovery_max`: backon's
/// exponential schedule without its jitter (the tracker jitters every gap
/// its own way, see [`jittered`]) or an end. Its arithmetic is in `f32` seconds,
/// so a delay that is not a power-of-two multiple of a second may be off by
/// nanoseconds.
pub(crate) fn recovery_delay(attempt: u32, settings: &HealthSettings) -> Duration {
    // Past 64 doublings every delay is the cap; the schedule is walked from
    // its start, so the walk stays short.
    let steps = usize::try_from(attempt.min(64)).unwrap_or(64);
    ExponentialBuilder::new()
        .with_min_delay(settings.recovery_initial)
        .with_max_delay(settings.recovery_max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(steps)
        .unwrap_or(settings.recovery_max)
        .min(settings.recovery_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HealthSettings {
        HealthSettings {
            interval: Duration::from_secs(1),
            fall: 2,
            rise: 2,
            probe_jitter: 0.0,
            ..HealthSettings::default()
        }
    }

    #[test]
    fn jitter_only_shortens_a_gap_by_up_to_its_share() {
        let gap = Duration::from_secs(1);
        assert_eq!(jittered(gap, 0.0, 0.99), gap, "no jitter, no draw used");
        assert_eq!(jittered(gap, 0.2, 0.0), gap);
        assert_eq!(jittered(gap, 0.2, 0.5), Duration::from_millis(900));
        let shortest = jittered(gap, 0.2, 0.999_999);
        assert!(shortest > Duration::from_millis(800) && shortest < gap);
        assert_eq!(jittered(Duration::MAX, 0.2, 0.0), Duration::MAX);
        assert!(jittered(Duration::MAX, 0.5, 0.9) < Duration::MAX);
        assert_eq!(jittered(Duration::ZERO, 0.5, 0.9), Duration::ZERO);
    }

    #[test]
    fn a_jittered_tracker_probes_within_its_share_and_not_in_step() {
        let s = HealthSettings {
            probe_jitter: 0.2,
            ..settings()
        };
        let t0 = Instant::now();
        let gaps: Vec<Duration> = (0..50)
            .map(|_| {
                let mut tracker = Tracker::new(t0);
                tracker.on_success(t0, &s);
                tracker.next_probe() - t0
            })
            .collect();
        assert!(
            gaps.iter()
                .all(|gap| *gap > Duration::from_millis(800) && *gap <= s.interval),
            "{gaps:?}"
        );
        assert!(
            gaps.iter().any(|gap| *gap != gaps[0]),
            "trackers draw apart: {gaps:?}"
        );
    }

    #[test]
    fn recovery_backoff_doubles_to_the_cap() {
        let s = HealthSettings::default();
        let delays: Vec<u128> = (0..5).map(|a| recovery_delay(a, &s).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 1000, 1000]);
        assert_eq!(recovery_delay(u32::MAX, &s), s.recovery_max);
        let slow = HealthSettings {
            recovery_initial: Duration::from_secs(5),
            recovery_max: Duration::from_secs(30),
            ..HealthSettings::default()
        };
        let delays: Vec<u64> = (0..5).map(|a| recovery_delay(a, &slow).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 30, 30]);
        let extreme = HealthSettings {
            recovery_initial: Duration::from_millis(1),
            recovery_max: Duration::MAX,
            ..HealthSettings::default()
        };
        assert!(recovery_delay(u32::MAX, &extreme) >= Duration::from_secs(86_400 * 365));
    }

    #[test]
    fn fall_consecutive_failures_take_a_node_down() {
        let s = settings();
        let t0 = Instant::now();
        let mut tracker = Tracker::new(t0);
        assert_eq!(tracker.on_failure(t0, false, &s), None);
        assert!(tracker.is_up());
        assert_eq!(tracker.next_probe(), t0 + s.interval);
        assert_eq!(tracker.on_success(t0, &s), None);
        assert_eq!(tracker.on_failure(t0, false, &s), None);
        assert_eq!(
            tracker.on_failure(t0, false, &s),
            Some(Transition::WentDown)
        );
        assert_eq!(tracker.next_probe(), t0 + s.recovery_initial);
    }

    #[test]
    fn a_suspect_node_goes_down_on_its_first_failed_probe() {
        let s = settings();
        let t0 = Instant::now();
        let mut tracker = Tracker::new(t0);
        assert_eq!(tracker.on_failure(t0, true, &s), Some(Transition::WentDown));
    }

    #[test]
    fn rise_consecutive_successes_bring_it_back_with_backoff_between_failures() {
        let s = HealthSettings {
            fall: 1,
            ..settings()
        };
        let t0 = Instant::now();
        let mut tracker = Tracker::new(t0);
        tracker.on_failure(t0, false, &s);
        tracker.on_failure(t0, false, &s);
        assert_eq!(tracker.next_probe(), t0 + s.recovery_initial * 2);
        assert_eq!(tracker.on_success(t0, &s), None);
        assert_eq!(
            tracker.next_probe(),
            t0 + s.recovery_initial.min(s.interval),
            "a recovery is confirmed at the recovery pace, never slower than the interval"
        );
        assert!(!tracker.is_up());
        assert_eq!(tracker.on_success(t0, &s), Some(Transition::CameUp));
        assert_eq!(tracker.next_probe(), t0 + s.interval);
        assert!(tracker.is_up());
        tracker.on_failure(t0, false, &s);
        assert_eq!(
            tracker.next_probe(),
            t0 + s.recovery_initial,
            "backoff restarts"
        );
    }

    #[test]
    fn probe_now_makes_it_due() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(t0);
        tracker.on_success(t0, &settings());
        assert!(!tracker.is_due(t0));
        tracker.probe_now(t0);
        assert!(tracker.is_due(t0));
    }
}
