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
    /// `interval`. Default: 20 ms.
    #[serde(with = "humantime_serde")]
    pub failover_probe_interval: Duration,
    /// How long that fast probing lasts at most, from the moment no primary
    /// is known; zero turns it off. It ends at once when a primary is
    /// elected. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub failover_watch: Duration,
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
        check::at_least_one("health.rise", u64::from(self.rise))
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
    fn inverted_ranges_are_rejected() {
        let err = error_of(|h| h.recovery_initial = Duration::from_secs(60));
        assert!(
            matches!(&err, ConfigError::InvertedRange { high, .. } if high == "health.recovery_max")
        );
    }
}
