//! Hedged reads and outlier detection: the read budget (a token bucket, as
//! Finagle's `RetryBudget` and gRPC's retry throttling), each node's live
//! read traffic, and the pure decisions over them (the hedge delay, whether
//! a node is an outlier). The read loop applies them (`manager/read.rs`, the
//! hedged read in `manager/hedged.rs`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{HedgeSettings, OutlierSettings};

/// A token, in the thousandths the bucket counts in.
const TOKEN: u64 = 1000;
/// A node is an outlier only after this many of its recent 99th
/// percentile latencies without an answer.
const OUTLIER_P99S: u32 = 4;
/// The smallest step of the 99th percentile estimate: from zero, 1 ms is
/// about 40 answers away.
const MIN_STEP_MICROS: u32 = 16;

/// The budget of extra reads (hedges and retries): every read deposits a
/// share of a token, time adds a few, each extra read takes one whole.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Thousandths of a token.
    balance: AtomicU64,
    /// When time last added tokens, in nanoseconds since `epoch`.
    refilled: AtomicU64,
    epoch: Instant,
    /// Thousandths of a token each read deposits.
    deposit: u64,
    per_second: u64,
    cap: u64,
}

impl Budget {
    /// A full budget.
    pub(crate) fn new(settings: &HedgeSettings, epoch: Instant) -> Self {
        let cap = u64::from(settings.budget_burst) * TOKEN;
        Self {
            balance: AtomicU64::new(cap),
            refilled: AtomicU64::new(0),
            epoch,
            deposit: u64::from(settings.budget_percent.min(100)) * TOKEN / 100,
            per_second: u64::from(settings.budget_per_second),
            cap,
        }
    }

    /// A read's share (one relaxed load and, below the cap, one add).
    pub(crate) fn deposit(&self) {
        if self.deposit > 0 && self.balance.load(Relaxed) < self.cap {
            self.balance.fetch_add(self.deposit, Relaxed);
        }
    }

    /// Takes a token for an extra read, if one is left at `now`.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        self.refill(now);
        update(&self.balance, |balance| balance.checked_sub(TOKEN))
    }

    /// Whole tokens left (for tests and status).
    #[cfg(test)]
    fn tokens(&self) -> u64 {
        self.balance.load(Relaxed) / TOKEN
    }

    /// Adds the tokens time earned since the last refill.
    fn refill(&self, now: Instant) {
        let now = nanos_since(self.epoch, now);
        let last = self.refilled.load(Relaxed);
        let earned = u128::from(now.saturating_sub(last)) * u128::from(self.per_second)
            / u128::from(1_000_000_u64);
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        if earned == 0 {
            return;
        }
        // One caller adds what this stretch earned; the others find it done.
        if self
            .refilled
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
        {
            update(&self.balance, |balance| {
                Some(balance.saturating_add(earned).min(self.cap))
            });
        }
    }
}

/// Replaces `value` with what `change` makes of it, unless `change` says
/// `None`; whether it did.
fn update(value: &AtomicU64, change: impl Fn(u64) -> Option<u64>) -> bool {
    let mut current = value.load(Relaxed);
    while let Some(next) = change(current) {
        match value.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
    false
}

pub(crate) fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// One node's live reads: how many are in flight, since when it has left
/// reads unanswered, its last answer, and an estimate of its 99th
/// percentile latency. Times are nanoseconds since the hub's epoch, plus
/// one (zero: none).
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    in_flight: AtomicU32,
    /// When the oldest read sent since the last answer started.
    unanswered_since: AtomicU64,
    /// The last answer.
    answered: AtomicU64,
    /// The 99th percentile estimate, in microseconds.
    p99_micros: AtomicU32,
}

/// A read in flight on a node; leaving it (answered, failed or dropped)
/// ends it.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a Traffic);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Traffic {
    /// A read starts (it may still wait for a connection); also whether
    /// the node had none in flight (the outlier watch, idle while no read
    /// is, then wakes).
    pub(crate) fn begin(&self) -> (InFlight<'_>, bool) {
        let before = self.in_flight.fetch_add(1, Relaxed);
        (InFlight(self), before == 0)
    }

    /// Whether the node has reads in flight.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(Relaxed) > 0
    }

    /// A read that started `at` nanoseconds after the epoch got a
    /// connection: the node has it now. Reads still waiting for a
    /// connection are no evidence against the node (its pool may be cold).
    pub(crate) fn sent(&self, at: u64) {
        if self.unanswered_since.load(Relaxed) == 0 {
            // The first read since the last answer; a racing one may win.
            let _ =
                self.unanswered_since
                    .compare_exchange(0, at.saturating_add(1), Relaxed, Relaxed);
        }
    }

    /// Forgets the reads left unanswered: the monitor vouches for the node
    /// again (back up, or its suspect report answered by a probe).
    pub(crate) fn forgive(&self) {
        self.unanswered_since.store(0, Relaxed);
    }

    /// The node answered `at` nanoseconds after the epoch, `latency` after
    /// the read started. The percentile starts at zero (the hedge delay's
    /// floor then rules) and moves by a sixteenth, or 16 µs, at most: up
    /// fast, since nearly every slower answer raises it, down slowly
    /// (Frugal streaming: up with probability 0.99 on a slower answer, down
    /// with 0.01 on a faster one).
    pub(crate) fn answered(&self, at: u64, latency: Duration) {
        self.answered.store(at.saturating_add(1), Relaxed);
        if self.unanswered_since.load(Relaxed) != 0 {
            self.unanswered_since.store(0, Relaxed);
        }
        let sample = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let estimate = self.p99_micros.load(Relaxed);
        let step = (estimate / 16).max(MIN_STEP_MICROS);
        if sample > estimate && fastrand::u32(..100) != 0 {
            let up = estimate.saturating_add(step).min(sample);
            self.p99_micros.store(up, Relaxed);
        } else if sample < estimate && fastrand::u32(..100) == 0 {
            let down = estimate.saturating_sub(step).max(sample);
            self.p99_micros.store(down, Relaxed);
        }
    }

    /// The 99th percentile estimate.
    pub(crate) fn p99(&self) -> Duration {
        Duration::from_micros(u64::from(self.p99_micros.load(Relaxed)))
    }

    /// Forgets everything (a discovery slot filled with a new node).
    pub(crate) fn reset(&self) {
        self.unanswered_since.store(0, Relaxed);
        self.answered.store(0, Relaxed);
        self.p99_micros.store(0, Relaxed);
    }

    /// When the node last answered a read (nanoseconds since the epoch),
    /// if it has.
    pub(crate) fn last_answer(&self) -> Option<u64> {
        self.answered.load(Relaxed).checked_sub(1)
    }

    /// What this node looks like at `now` (nanoseconds since the epoch).
    pub(crate) fn observe(&self, now: u64) -> Observed {
        let since = |at: u64| Duration::from_nanos(now.saturating_sub(at));
        let answered = self.answered.load(Relaxed).checked_sub(1);
        let unanswered = self.unanswered_since.load(Relaxed).checked_sub(1);
        let quiet_after = match (answered, unanswered) {
            (Some(answered), Some(sent)) => {
                Some(Duration::from_nanos(sent.saturating_sub(answered)))
            }
            _ => None,
        };
        Observed {
            in_flight: self.in_flight.load(Relaxed),
            silent_for: unanswered.map_or(Duration::ZERO, since),
            answer_age: answered.map(since),
            quiet_after,
            p99: self.p99(),
        }
    }
}

/// One node's traffic at one moment, as [`is_outlier`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Reads in flight.
    pub(crate) in_flight: u32,
    /// How long since the oldest read that got a connection after its last
    /// answer started (zero when every such read was answered).
    pub(crate) silent_for: Duration,
    /// How long since it last answered; `None` if it never did.
    pub(crate) answer_age: Option<Duration>,
    /// How long it had been since its last answer when the oldest read
    /// still unanswered was sent: short when it went quiet in the middle of
    /// its traffic, long (or `None`) when it was idle, or cold, before.
    pub(crate) quiet_after: Option<Duration>,
    /// Its recent 99th percentile read latency (the hub never lets it be
    /// below the node's probe round trip: see `Hub::read_p99`).
    pub(crate) p99: Duration,
}

/// The hedge delay for a read whose first node has `p99`: the configured
/// delay, or `p99` with the floor.
pub(crate) fn hedge_delay(settings: &HedgeSettings, p99: Duration) -> Duration {
    settings.delay.unwrap_or(p99.max(settings.min_delay))
}

/// How long a node with reads in flight may stay silent: the configured
/// silence, and at least a few of its own 99th percentile latencies.
pub(crate) fn outlier_limit(settings: &OutlierSettings, p99: Duration) -> Duration {
    settings.silence.max(p99.saturating_mul(OUTLIER_P99S))
}

/// Whether a hedge from a slow first attempt would answer load rather than
/// one slow node, and so only add to it: the first node's pool has every
/// connection in use (the read is queueing in this client, not slow on its
/// server), the candidate's pool does too, or the candidate is as slow
/// itself (reads in flight there unanswered for longer than its own 99th
/// percentile).
pub(crate) fn hedge_adds_load(
    first_saturated: bool,
    candidate_saturated: bool,
    candidate: Observed,
) -> bool {
    let candidate_slow = candidate.in_flight > 0 && candidate.silent_for > candidate.p99;
    first_saturated || candidate_saturated || candidate_slow
}

/// What a node's peers look like, as [`is_outlier`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Peers {
    /// The youngest answer of any other node, to a read, a single-statement
    /// write or a probe.
    pub(crate) answer_age: Option<Duration>,
    /// Another node is out of routing on a caller's report already.
    pub(crate) one_out: bool,
    /// No other node is routable.
    pub(crate) none_left: bool,
}

/// Whether `node` is an outlier: reads in flight, none that got a
/// connection for longer than [`outlier_limit`] answered although it was
/// answering just before (a node idle or cold before is left to the probes
/// and the deadline), while a peer answered since: the peers' answers show
/// the fault is the node's, not this client's own (a stalled runtime, its
/// network down). As Envoy's `max_ejection_percent` does, one node at most
/// is out at a time this way, and never the last routable one, so a
/// client-side stall cannot take every node out.
pub(crate) fn is_outlier(settings: &OutlierSettings, node: Observed, peers: Peers) -> bool {
    let limit = outlier_limit(settings, node.p99);
    settings.enabled
        && node.in_flight > 0
        && node.silent_for >= limit
        && node.quiet_after.is_some_and(|gap| gap < limit)
        && peers.answer_age.is_some_and(|age| age < node.silent_for)
        && !peers.one_out
        && !peers.none_left
}

/// How many reads were hedged, won, refused, and how many retries the
/// budget refused.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) won: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) retries_refused: AtomicU64,
    pub(crate) outliers: AtomicU64,
    /// Shared with the tasks draining dropped statements' connections.
    pub(crate) drained: std::sync::Arc<Drained>,
    /// Wakes the outlier watch when a node gets a read in flight while it
    /// had none (the watch sleeps while no read is in flight).
    pub(crate) reads_started: tokio::sync::Notify,
}

/// Connections of statements whose call was dropped mid-flight (losing
/// hedges, callers' own timeouts).
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// The statement ended in time: back to the pool.
    pub(crate) kept: AtomicU64,
    /// It did not: cancelled, and the connection discarded.
    pub(crate) discarded: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(percent: u32, per_second: u32, burst: u32) -> HedgeSettings {
        HedgeSettings {
            budget_percent: percent,
            budget_per_second: per_second,
            budget_burst: burst,
            ..HedgeSettings::default()
        }
    }

    fn drain(budget: &Budget, now: Instant) -> usize {
        (0..10_000).take_while(|_| budget.withdraw(now)).count()
    }

    #[test]
    fn a_hedge_is_withheld_when_the_slowness_is_load() {
        let ms = Duration::from_millis;
        let node = |in_flight, silent_ms| Observed {
            in_flight,
            silent_for: ms(silent_ms),
            answer_age: Some(ms(1)),
            quiet_after: Some(ms(1)),
            p99: ms(10),
        };
        // (first saturated, candidate saturated, candidate, adds load)
        let table = [
            (false, false, node(0, 0), false),
            (false, false, node(3, 5), false),
            (false, false, node(3, 10), false),
            (false, false, node(3, 11), true),
            (true, false, node(0, 0), true),
            (false, true, node(0, 0), true),
            (false, false, node(0, 50), false),
        ];
        for (first, candidate_full, candidate, adds) in table {
            assert_eq!(
                hedge_adds_load(first, candidate_full, candidate),
                adds,
                "{first} {candidate_full} {candidate:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_allows_its_burst_then_refuses() {
        let budget = Budget::new(&settings(10, 10, 20), Instant::now());
        assert_eq!(drain(&budget, Instant::now()), 20);
        assert!(!budget.withdraw(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn time_refills_the_budget_at_its_rate_up_to_the_burst() {
        let budget = Budget::new(&settings(0, 10, 20), Instant::now());
        drain(&budget, Instant::now());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(
            !budget.withdraw(Instant::now()),
            "a tenth of a second earns one"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(budget.withdraw(Instant::now()));
        assert!(!budget.withdraw(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(drain(&budget, Instant::now()), 10);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(drain(&budget, Instant::now()), 20, "never past the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_earn_their_share() {
        let budget = Budget::new(&settings(10, 0, 5), Instant::now());
        drain(&budget, Instant::now());
        for _ in 0..25 {
            budget.deposit();
        }
        assert_eq!(budget.tokens(), 2, "25 reads at 10% earn 2.5 tokens");
        assert_eq!(drain(&budget, Instant::now()), 2);
        for _ in 0..1000 {
            budget.deposit();
        }
        assert!(budget.tokens() <= 5, "deposits stop at the burst");
        // No share and no rate: once spent, spent for good.
        let empty = Budget::new(&settings(0, 0, 1), Instant::now());
        assert!(empty.withdraw(Instant::now()));
        empty.deposit();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!empty.withdraw(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sick_cluster_gets_at_most_the_share_more_reads() {
        // 10 000 reads over 10 s, each wanting an extra read: 10% of them
        // plus 10 a second plus the burst, no more.
        let budget = Budget::new(&settings(10, 10, 100), Instant::now());
        let mut extra = 0;
        for _ in 0..10_000 {
            budget.deposit();
            extra += usize::from(budget.withdraw(Instant::now()));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(extra <= 1000 + 100 + 100, "{extra}");
        assert!(extra >= 1000, "{extra}");
    }

    fn observed(in_flight: u32, silent_ms: u64, p99_ms: u64) -> Observed {
        Observed {
            in_flight,
            silent_for: Duration::from_millis(silent_ms),
            answer_age: Some(Duration::from_millis(silent_ms + 1)),
            quiet_after: Some(Duration::from_millis(1)),
            p99: Duration::from_millis(p99_ms),
        }
    }

    #[test]
    fn outliers_as_a_table() {
        let on = OutlierSettings {
            silence: Duration::from_millis(50),
            ..OutlierSettings::default()
        };
        let ms = |ms| Peers {
            answer_age: Some(Duration::from_millis(ms)),
            ..Peers::default()
        };
        for (node, peers, outlier, why) in [
            (
                observed(3, 60, 1),
                ms(1),
                true,
                "silent 60 ms, peers answer",
            ),
            (observed(3, 40, 1), ms(1), false, "not silent long enough"),
            (observed(0, 600, 1), ms(1), false, "nothing in flight: idle"),
            (
                observed(3, 60, 1),
                Peers::default(),
                false,
                "no peer ever answered",
            ),
            (
                observed(3, 60, 1),
                Peers {
                    one_out: true,
                    ..ms(1)
                },
                false,
                "another node is out already",
            ),
            (
                observed(3, 60, 1),
                Peers {
                    none_left: true,
                    ..ms(1)
                },
                false,
                "the last routable node",
            ),
            (observed(3, 60, 1), ms(70), false, "no peer answered since"),
            (observed(3, 60, 1), ms(59), true, "a peer answered since"),
            (
                observed(3, 300, 100),
                ms(1),
                false,
                "slow node: 4 × p99 = 400 ms",
            ),
            (observed(3, 400, 100), ms(1), true, "silent past 4 × p99"),
        ] {
            assert_eq!(is_outlier(&on, node, peers), outlier, "{why}");
        }
        let idle_before = Observed {
            quiet_after: Some(Duration::from_secs(5)),
            ..observed(3, 60, 1)
        };
        assert!(
            !is_outlier(&on, idle_before, ms(1)),
            "idle before: not judged"
        );
        let never_answered = Observed {
            quiet_after: None,
            answer_age: None,
            ..observed(3, 60, 1)
        };
        assert!(!is_outlier(&on, never_answered, ms(1)), "cold: not judged");
        let off = OutlierSettings {
            enabled: false,
            ..on
        };
        assert!(!is_outlier(&off, observed(3, 60_000, 1), ms(1)));
    }

    #[test]
    fn the_hedge_delay_is_the_p99_with_a_floor_or_fixed() {
        let derived = HedgeSettings::default(); // floor 2 ms
        let ms = Duration::from_millis;
        assert_eq!(hedge_delay(&derived, ms(0)), ms(2));
        assert_eq!(hedge_delay(&derived, ms(30)), ms(30));
        let fixed = HedgeSettings {
            delay: Some(ms(7)),
            ..derived
        };
        assert_eq!(hedge_delay(&fixed, ms(30)), ms(7));
    }

    #[test]
    fn traffic_tracks_in_flight_silence_and_a_p99() {
        let traffic = Traffic::default();
        let ms = |ms: u64| ms * 1_000_000;
        let (first, _) = traffic.begin();
        traffic.sent(ms(10));
        let (second, _) = traffic.begin();
        traffic.sent(ms(20));
        let seen = traffic.observe(ms(100));
        assert_eq!(seen.in_flight, 2);
        assert_eq!(
            seen.silent_for,
            Duration::from_millis(90),
            "since the oldest began"
        );
        assert_eq!(seen.answer_age, None);
        drop(first);
        traffic.answered(ms(100), Duration::from_millis(90));
        let seen = traffic.observe(ms(130));
        assert_eq!(seen.in_flight, 1);
        assert_eq!(seen.silent_for, Duration::ZERO, "answered since");
        assert_eq!(seen.answer_age, Some(Duration::from_millis(30)));
        drop(second);
        // A read abandoned unanswered (a hedge won) still counts as silence.
        let (abandoned, _) = traffic.begin();
        traffic.sent(ms(200));
        drop(abandoned);
        let seen = traffic.observe(ms(260));
        assert_eq!(
            (seen.in_flight, seen.silent_for),
            (0, Duration::from_millis(60))
        );
        assert_eq!(seen.quiet_after, Some(Duration::from_millis(100)));
        // One waiting for a connection is no evidence; a probe's word clears it.
        let (waiting, _) = traffic.begin();
        assert_eq!(traffic.observe(ms(300)).in_flight, 1);
        traffic.forgive();
        assert_eq!(traffic.observe(ms(300)).silent_for, Duration::ZERO);
        drop(waiting);
        // The estimate settles near the 99th percentile of 1..=100 µs.
        let traffic = Traffic::default();
        for round in 0..2_000_u64 {
            for micros in 1..=100 {
                traffic.answered(round, Duration::from_micros(micros));
            }
        }
        let p99 = traffic.p99().as_micros();
        assert!((90..=100).contains(&p99), "{p99}");
    }
}
