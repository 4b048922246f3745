//! [`ReadinessSettings`]: when [`DatabaseManager::readiness`](crate::DatabaseManager::readiness)
//! says this instance of the service can serve its traffic.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// What readiness requires, and how recent call failures count. See
/// [`Readiness`](crate::status::Readiness) and the
/// [serving guide's probe table](crate::guide::serving#probes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReadinessSettings {
    /// What this instance must be able to serve. Default:
    /// [`Requirement::ReadsAndWrites`].
    pub require: Requirement,
    /// How far back call outcomes are judged. Long enough for a
    /// Kubernetes probe period (10 s by default) to see the calls between
    /// two probes, short enough that a fault past is forgotten within one
    /// more; greater than zero. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Not ready while more than this share (0 to 1) of the calls in the
    /// window failed because the database could not serve them (an
    /// [`Error::is_unavailable`](crate::Error::is_unavailable) failure:
    /// no node, deadline, lost connection; a constraint violation or bad
    /// SQL does not count). Judged for reads and for writes separately.
    /// Default: 0.5 (more failures than successes: a client retrying
    /// through another instance does better).
    pub max_failure_ratio: f64,
    /// Failures are judged only once the window holds at least this many
    /// calls of the kind, so that one failed call of an idle instance does
    /// not take it out of rotation. Default: 5.
    pub min_calls: u32,
}

impl Default for ReadinessSettings {
    fn default() -> Self {
        Self {
            require: Requirement::default(),
            window: Duration::from_secs(10),
            max_failure_ratio: 0.5,
            min_calls: 5,
        }
    }
}

impl ReadinessSettings {
    /// Checks every field; the error names it (`readiness.window`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check::positive("readiness.window", self.window)?;
        let ratio = self.max_failure_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(ConfigError::InvalidValue {
                field: "readiness.max_failure_ratio".to_owned(),
                value: ratio.to_string(),
                reason: "must be between 0 and 1",
            });
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_errors_name_the_field() {
        type Edit = fn(&mut ReadinessSettings);
        let cases: [Edit; 4] = [
            |r| r.window = Duration::ZERO,
            |r| r.max_failure_ratio = -0.1,
            |r| r.max_failure_ratio = 1.5,
            |r| r.max_failure_ratio = f64::NAN,
        ];
        for edit in cases {
            let mut readiness = ReadinessSettings::default();
            edit(&mut readiness);
            match readiness.validate() {
                Err(ConfigError::InvalidValue { field, .. }) => {
                    assert!(field.starts_with("readiness."), "{field}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn every_field_is_optional() {
        let parsed: ReadinessSettings = serde_json::from_str(r#"{"min_calls": 7}"#).unwrap();
        assert_eq!(parsed.min_calls, 7);
        assert_eq!(parsed.window, ReadinessSettings::default().window);
        assert!(serde_json::from_str::<ReadinessSettings>(r#"{"calls": 7}"#).is_err());
    }
}
