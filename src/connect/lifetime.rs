//! How long a pooled connection lives: closed after idling for
//! [`PoolSettings::idle_timeout`], or once older than its own share of
//! [`PoolSettings::max_lifetime`] (less a jitter drawn per connection, so
//! connections opened together do not close together).
//!
//! The decision ([`Lifetimes::expired`]) is pure. It is applied in two
//! places: the pool's pre-recycle hook, at every checkout of an idle
//! connection (the hook already runs there; the check costs a comparison
//! or two and no clock read beyond the one the hook made before), and a
//! sweep over each node's idle connections (`Pool::retain`), which is what
//! closes connections that nobody checks out.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::config::PoolSettings;

/// The sweep runs at least this often.
const SWEEP_MAX: Duration = Duration::from_secs(30);
/// And at most this often.
const SWEEP_MIN: Duration = Duration::from_millis(100);

/// A node pool's limits on its connections' idle time and age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    /// Zero: none.
    pub(crate) idle_timeout: Duration,
    /// Zero: none.
    pub(crate) max_lifetime: Duration,
    /// Below `max_lifetime` when that is set.
    pub(crate) jitter: Duration,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Not handed out for `idle_timeout`.
    Idle,
    /// Older than its lifetime.
    Lifetime,
}

impl Expiry {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Expiry::Idle => "connection idle past pool.idle_timeout",
            Expiry::Lifetime => "connection older than pool.max_lifetime",
        }
    }
}

impl Lifetimes {
    /// The pool settings' limits.
    pub(crate) fn new(settings: &PoolSettings) -> Self {
        Self {
            idle_timeout: settings.idle_timeout,
            max_lifetime: settings.max_lifetime,
            jitter: settings.max_lifetime_jitter.min(settings.max_lifetime),
        }
    }

    /// Whether a connection created at `created` and last handed out at
    /// `used` must be closed at `now`.
    pub(crate) fn expired_at(
        &self,
        created: Instant,
        used: Instant,
        now: Instant,
    ) -> Option<Expiry> {
        let age = now.saturating_duration_since(created);
        let idle = now.saturating_duration_since(used);
        self.expired(age, idle, || seed_of(created))
    }

    /// [`Lifetimes::expired_at`], and if not expired, how long the
    /// connection has idled (the pre-recycle hook asks both; two clock
    /// subtractions, not three).
    pub(crate) fn idle_or_expired(
        &self,
        created: Instant,
        used: Instant,
        now: Instant,
    ) -> Result<Duration, Expiry> {
        let idle = now.saturating_duration_since(used);
        let age = match self.max_lifetime.is_zero() {
            true => idle,
            false => now.saturating_duration_since(created),
        };
        match self.expired(age, idle, || seed_of(created)) {
            Some(expiry) => Err(expiry),
            None => Ok(idle),
        }
    }

    /// Whether a connection `age` old, last handed out `idle` ago, must be
    /// closed. `seed` stands for the connection (the same at every check),
    /// asked only when its age falls within the jitter.
    pub(crate) fn expired(
        &self,
        age: Duration,
        idle: Duration,
        seed: impl FnOnce() -> u64,
    ) -> Option<Expiry> {
        let earliest = self.max_lifetime.saturating_sub(self.jitter);
        if !self.max_lifetime.is_zero() && age >= earliest && age >= self.lifetime(seed()) {
            return Some(Expiry::Lifetime);
        }
        if !self.idle_timeout.is_zero() && idle >= self.idle_timeout {
            return Some(Expiry::Idle);
        }
        None
    }

    /// The lifetime of the connection `seed` stands for: `max_lifetime`
    /// less the seed's share of the jitter (uniform over seeds).
    pub(crate) fn lifetime(&self, seed: u64) -> Duration {
        let jitter = self.jitter.as_nanos();
        let cut = (jitter * u128::from(seed)) >> 64;
        let cut = Duration::from_nanos(u64::try_from(cut).unwrap_or(u64::MAX));
        self.max_lifetime.saturating_sub(cut)
    }

    /// How often the sweep runs: a quarter of the shortest limit, within
    /// 100 ms and 30 s; `None` without limits (no sweep).
    pub(crate) fn sweep_every(&self) -> Option<Duration> {
        let earliest_lifetime = self.max_lifetime.saturating_sub(self.jitter);
        [self.idle_timeout, earliest_lifetime]
            .into_iter()
            .filter(|limit| !limit.is_zero())
            .min()
            .map(|limit| (limit / 4).clamp(SWEEP_MIN, SWEEP_MAX))
    }
}

/// A number standing for the connection created at `created`: the same at
/// every check, spread over `u64` across connections.
fn seed_of(created: Instant) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(created)
}

/// Connections a node's pool closed for their limits, since it was built.
#[derive(Debug, Default)]
pub(crate) struct Closed {
    idle: AtomicU64,
    lifetime: AtomicU64,
}

impl Closed {
    pub(crate) fn count(&self, expiry: Expiry) {
        let counter = match expiry {
            Expiry::Idle => &self.idle,
            Expiry::Lifetime => &self.lifetime,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// (closed for idling, closed for their age).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.idle.load(Relaxed), self.lifetime.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle: u64, lifetime: u64, jitter: u64) -> Lifetimes {
        Lifetimes {
            idle_timeout: Duration::from_secs(idle),
            max_lifetime: Duration::from_secs(lifetime),
            jitter: Duration::from_secs(jitter),
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn each_limit_closes_at_its_bound() {
        let limits = limits(10, 100, 0);
        let never = || -> u64 { unreachable!("no jitter to draw below its window") };
        assert_eq!(limits.expired(s(5), s(9), never), None);
        assert_eq!(limits.expired(s(5), s(10), never), Some(Expiry::Idle));
        assert_eq!(limits.expired(s(100), s(0), || 0), Some(Expiry::Lifetime));
        assert_eq!(limits.expired(s(99), s(0), never), None);
        // Past both: its age is what it is closed for.
        assert_eq!(limits.expired(s(200), s(50), || 7), Some(Expiry::Lifetime));
    }

    #[test]
    fn the_hooks_question_answers_as_the_sweeps() {
        let start = Instant::now();
        for limits in [
            limits(10, 100, 0),
            limits(0, 0, 0),
            limits(10, 0, 0),
            limits(0, 100, 20),
        ] {
            for (age, idle) in [(5, 3), (50, 9), (50, 10), (99, 0), (100, 0), (200, 150)] {
                let now = start + s(age);
                let used = now - s(idle);
                let sweep = limits.expired_at(start, used, now);
                let hook = limits.idle_or_expired(start, used, now);
                assert_eq!(hook.err(), sweep, "{limits:?} age {age} idle {idle}");
                if sweep.is_none() {
                    assert_eq!(hook, Ok(s(idle)));
                }
            }
        }
    }

    #[test]
    fn zero_is_no_limit() {
        let none = limits(0, 0, 0);
        assert_eq!(none.sweep_every(), None);
        let old = Duration::from_secs(86_400 * 365);
        assert_eq!(none.expired(old, old, || u64::MAX), None);
        let lifetime_only = limits(0, 60, 0);
        assert_eq!(lifetime_only.expired(s(1), old, || 0), None);
        let idle_only = limits(60, 0, 0);
        assert_eq!(idle_only.expired(old, s(1), || 0), None);
    }

    #[test]
    fn the_jitter_spreads_lifetimes_below_the_bound_never_past_it() {
        let limits = limits(0, 100, 20);
        assert_eq!(limits.lifetime(0), s(100));
        assert!(limits.lifetime(u64::MAX) >= s(80));
        assert!(limits.lifetime(u64::MAX) < s(80) + Duration::from_micros(1));
        assert_eq!(limits.lifetime(1 << 63), s(90));
        // Below the window no seed is drawn; within it, the seed decides.
        assert_eq!(limits.expired(s(79), s(0), || unreachable!()), None);
        assert_eq!(limits.expired(s(85), s(0), || 1 << 63), None);
        assert_eq!(
            limits.expired(s(95), s(0), || 1 << 63),
            Some(Expiry::Lifetime)
        );
        // Connections created a microsecond apart: their lifetimes spread
        // over the whole jitter, not bunched at one end.
        let start = Instant::now();
        let mut lifetimes: Vec<Duration> = (0..1_000)
            .map(|n| limits.lifetime(seed_of(start + Duration::from_micros(n))))
            .collect();
        lifetimes.sort();
        assert!(lifetimes[0] >= s(80) && lifetimes[999] <= s(100));
        assert!(
            lifetimes[100] < s(84) && lifetimes[900] > s(96),
            "{lifetimes:?}"
        );
        let quartiles = [lifetimes[250], lifetimes[500], lifetimes[750]];
        assert!(
            quartiles[0] < s(88) && quartiles[2] > s(92),
            "{quartiles:?}"
        );
        // And one connection's lifetime is the same at every check.
        let created = start + s(3);
        assert_eq!(
            limits.lifetime(seed_of(created)),
            limits.lifetime(seed_of(created))
        );
    }

    #[test]
    fn the_decision_from_instants() {
        let limits = limits(10, 100, 0);
        let created = Instant::now();
        let used = created + s(50);
        assert_eq!(limits.expired_at(created, used, used + s(5)), None);
        assert_eq!(
            limits.expired_at(created, used, used + s(10)),
            Some(Expiry::Idle)
        );
        assert_eq!(
            limits.expired_at(created, created + s(99), created + s(100)),
            Some(Expiry::Lifetime)
        );
        // A clock that reads earlier than the connection's times: nothing.
        assert_eq!(limits.expired_at(used, used, created), None);
    }

    #[test]
    fn the_sweep_runs_at_a_quarter_of_the_shortest_limit_within_bounds() {
        assert_eq!(
            limits(1, 2, 0).sweep_every(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            limits(0, 2, 1).sweep_every(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(limits(600, 1800, 180).sweep_every(), Some(SWEEP_MAX));
        let tiny = Lifetimes {
            idle_timeout: Duration::from_millis(100),
            max_lifetime: Duration::ZERO,
            jitter: Duration::ZERO,
        };
        assert_eq!(tiny.sweep_every(), Some(SWEEP_MIN));
    }

    #[test]
    fn settings_become_limits() {
        let settings = PoolSettings::default();
        let limits = Lifetimes::new(&settings);
        assert_eq!(limits.idle_timeout, s(600));
        assert_eq!(limits.max_lifetime, s(1800));
        assert_eq!(limits.jitter, s(180));
        let closed = Closed::default();
        closed.count(Expiry::Idle);
        closed.count(Expiry::Lifetime);
        closed.count(Expiry::Lifetime);
        assert_eq!(closed.counts(), (1, 2));
    }
}
