//! [`ReadinessSettings`]: when [`DatabaseManager::readiness`](crate::DatabaseManager::readiness)
//! says this instance of the service can serve its traffic.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What readiness requires, and how recent call failures count. See
/// [`Readiness`](crate::status::Readiness) and the README's probe table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSettings {
    /// What this instance must be able to serve. Default:
    /// [`Requirement::ReadsAndWrites`].
    #[serde(default)]
    pub require: Requirement,
    /// How far back call outcomes are judged. Long enough for a
    /// Kubernetes probe period (10 s by default) to see the calls between
    /// two probes, short enough that a fault past is forgotten within one
    /// more. Default: 10 s.
    #[serde(default = "defaults::window", with = "humantime_serde")]
    pub window: Duration,
    /// Not ready while more than this share (0 to 1) of the calls in the
    /// window failed because the database could not serve them (an
    /// [`Error::is_unavailable`](crate::Error::is_unavailable) failure:
    /// no node, deadline, lost connection; a constraint violation or bad
    /// SQL does not count). Judged for reads and for writes separately.
    /// Default: 0.5 (more failures than successes: a client retrying
    /// through another instance does better).
    #[serde(default = "defaults::max_failure_ratio")]
    pub max_failure_ratio: f64,
    /// Failures are judged only once the window holds at least this many
    /// calls of the kind, so that one failed call of an idle instance does
    /// not take it out of rotation. Default: 5.
    #[serde(default = "defaults::min_calls")]
    pub min_calls: u32,
}

impl Default for ReadinessSettings {
    fn default() -> Self {
        Self {
            require: Requirement::default(),
            window: defaults::window(),
            max_failure_ratio: defaults::max_failure_ratio(),
            min_calls: defaults::min_calls(),
        }
    }
}

/// What an instance must be able to serve to be ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Requirement {
    /// Reads and writes: a primary known (or lost for less than
    /// [`Config::write_hold`](crate::Config::write_hold), while writes are
    /// held for a new one), and write failures count.
    #[default]
    ReadsAndWrites,
    /// Reads only: no primary is needed and write failures do not count,
    /// so that a read-only region's instances stay in rotation when the
    /// primary's region is lost (with
    /// [`Config::allow_orphaned_reads`](crate::Config::allow_orphaned_reads)
    /// if replicas cut off from their primary should still serve).
    Reads,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn window() -> Duration {
        Duration::from_secs(10)
    }

    pub(super) fn max_failure_ratio() -> f64 {
        0.5
    }

    pub(super) fn min_calls() -> u32 {
        5
    }
}
