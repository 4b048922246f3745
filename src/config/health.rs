//! [`HealthSettings`]: how often the monitor probes each node, and how a
//! node goes down and comes back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// The shortest gap between two probes of a node: faster than this, a
/// monitor probing unreachable nodes only burns CPU.
const MIN_PROBE_GAP: Duration = Duration::from_millis(1);

/// Health monitor settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct HealthSettings {
    /// How often a healthy node is probed, at least 1 ms. Default: 1 s: one
    /// round trip a second per node on the monitor's own connection, which
    /// keeps each replica's lag and replay position (what the staleness
    /// bound and causal tokens are checked against) at most about a second
    /// old, and finds a silent node without traffic within a second plus
    /// `probe_timeout`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Bound on one probe (connect and the probe query). Default: 2 s, far
    /// above a cross-region round trip, so only a node that is really
    /// silent fails it.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// First re-probe of an unhealthy node, at least 1 ms; also the gap
    /// between the successes that confirm its recovery (or `interval`, if
    /// shorter). Default: 250 ms,
    /// so a short fault (a restart, a blip) costs well under a second of
    /// routing around the node.
    #[serde(with = "humantime_serde")]
    pub recovery_initial: Duration,
    /// Longest gap between re-probes of an unhealthy node; the gap doubles
    /// from `recovery_initial` up to this. Default: 1 s, as `interval`: a
    /// node that answers again is back in routing within about a second
    /// (`recovery_max + (rise - 1) * recovery_initial`), and a dead node
    /// costs one connection attempt a second.
    #[serde(with = "humantime_serde")]
    pub recovery_max: Duration,
    /// Consecutive failed probes that mark a healthy node down, at least 1.
    /// Default: 1.
    pub fall: u32,
    /// Consecutive successful probes that bring an unhealthy node back
    /// (probes after the first success come every `interval`), at least 1.
    /// Default: 2.
    pub rise: u32,
    /// While no primary is elected (it went down, a write saw it turn
    /// read-only or shut down, a failover is under way), every node is
    /// probed this often, at least 1 ms, so that a promoted replica takes
    /// writes within about this long of its promotion instead of within
    /// `interval`; as the watch ages its gap grows (`failover_backoff`).
    /// Each pod of a fleet probes each node at this pace: per 100 pods,
    /// 5,000 probes a second per node at 20 ms. Default: 20 ms.
    #[serde(with = "humantime_serde")]
    pub failover_probe_interval: Duration,
    /// How long that fast probing lasts at most, from the moment no primary
    /// is known; zero turns it off. It ends at once when a primary is
    /// elected. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub failover_watch: Duration,
    /// How the failover watch backs off: its gap between rounds grows to
    /// this share of the time since it started (from
    /// `failover_probe_interval`, never past `interval`), so that a fleet of
    /// pods waiting out a long failover does not keep every node under
    /// fast probes. A promotion is seen within `failover_probe_interval`
    /// while the watch is young (the first 400 ms by default), and within
    /// this share of the failover's age later on (a promotion 10 s after
    /// the primary was lost: within 500 ms). Between 0 and 1; 0 keeps
    /// every round at `failover_probe_interval`. Default: 0.05, which
    /// probes each node about 110 times over a 30 s watch instead of
    /// 1,500.
    pub failover_backoff: f64,
    /// Spreads the probes of the pods of a fleet: every gap before a
    /// probe (the interval, a recovery re-probe, a failover-watch round)
    /// is shortened by a random share of up to this much, never
    /// lengthened, so no promise above slips. Pods that a failover lined
    /// up (all of them see the new primary within milliseconds, then probe
    /// every `interval` from there) drift apart again instead of probing
    /// every node in the same instant, second after second. Between 0 and
    /// 0.5; 0 keeps every gap exact. Default: 0.2 (a probe every 0.8 to
    /// 1 s; about 11 % more probes than exact gaps).
    pub probe_jitter: f64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            recovery_initial: Duration::from_millis(250),
            recovery_max: Duration::from_secs(1),
            fall: 1,
            rise: 2,
            failover_probe_interval: Duration::from_millis(20),
            failover_watch: Duration::from_secs(30),
            failover_backoff: 0.05,
            probe_jitter: 0.2,
        }
    }
}

impl HealthSettings {
    /// Checks every field; the error names it (`health.interval`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("health.interval", self.interval),
            ("health.probe_timeout", self.probe_timeout),
            ("health.recovery_initial", self.recovery_initial),
            ("health.recovery_max", self.recovery_max),
            (
                "health.failover_probe_interval",
                self.failover_probe_interval,
            ),
        ] {
            check::positive(field, value)?;
        }
        for (field, value) in [
            ("health.interval", self.interval),
            ("health.recovery_initial", self.recovery_initial),
            (
                "health.failover_probe_interval",
                self.failover_probe_interval,
            ),
        ] {
            if value < MIN_PROBE_GAP {
                return Err(check::invalid(field, value, "must be at least 1ms"));
            }
        }
        check::ordered(
            ("health.recovery_initial", self.recovery_initial),
            ("health.recovery_max", self.recovery_max),
        )?;
        check::at_least_one("health.fall", u64::from(self.fall))?;
        check::at_least_one("health.rise", u64::from(self.rise))?;
        check::share(
            "health.failover_backoff",
            self.failover_backoff,
            1.0,
            "must be between 0 and 1",
        )?;
        check::share(
            "health.probe_jitter",
            self.probe_jitter,
            0.5,
            "must be between 0 and 0.5",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(edit: impl FnOnce(&mut HealthSettings)) -> ConfigError {
        let mut health = HealthSettings::default();
        edit(&mut health);
        health.validate().expect_err("settings should be rejected")
    }

    #[test]
    fn zero_values_are_rejected_by_field() {
        type Edit = fn(&mut HealthSettings);
        let cases: [(&str, Edit); 4] = [
            ("health.interval", |h| h.interval = Duration::ZERO),
            ("health.probe_timeout", |h| h.probe_timeout = Duration::ZERO),
            ("health.rise", |h| h.rise = 0),
            ("health.fall", |h| h.fall = 0),
        ];
        for (name, edit) in cases {
            match error_of(edit) {
                ConfigError::InvalidValue { field, .. } => assert_eq!(field, name),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn probes_are_at_least_a_millisecond_apart() {
        let err = error_of(|h| h.failover_probe_interval = Duration::from_micros(999));
        assert!(
            matches!(&err, ConfigError::InvalidValue { field, .. } if field == "health.failover_probe_interval"),
            "{err}"
        );
    }

    #[test]
    fn shares_out_of_range_are_rejected_by_field() {
        type Edit = fn(&mut HealthSettings);
        let cases: [(&str, Edit); 5] = [
            ("health.failover_backoff", |h| h.failover_backoff = -0.1),
            ("health.failover_backoff", |h| h.failover_backoff = 1.5),
            ("health.failover_backoff", |h| h.failover_backoff = f64::NAN),
            ("health.probe_jitter", |h| h.probe_jitter = 0.6),
            ("health.probe_jitter", |h| h.probe_jitter = f64::INFINITY),
        ];
        for (name, edit) in cases {
            match error_of(edit) {
                ConfigError::InvalidValue { field, .. } => assert_eq!(field, name),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
        let off = HealthSettings {
            failover_backoff: 0.0,
            probe_jitter: 0.0,
            ..HealthSettings::default()
        };
        assert!(off.validate().is_ok(), "zero turns each off");
    }

    #[test]
    fn inverted_ranges_are_rejected() {
        let err = error_of(|h| h.recovery_initial = Duration::from_secs(60));
        assert!(
            matches!(&err, ConfigError::InvertedRange { high, .. } if high == "health.recovery_max")
        );
    }
}
