//! [`RetrySettings`]: how writes and transactions are retried.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// Retry settings for writes and transactions (reads retry once on another
/// node, see [`ReadStrategy`](super::ReadStrategy)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct RetrySettings {
    /// Retries after the first attempt. Default: 3.
    pub max_retries: usize,
    /// First backoff delay, greater than zero. Default: 300 ms.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Largest backoff delay, at least `min_delay`; delays double up to it.
    /// Default: 3 s.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Add random jitter (up to the current delay) to each delay. Default: true.
    pub jitter: bool,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 3,
            min_delay: Duration::from_millis(300),
            max_delay: Duration::from_secs(3),
            jitter: true,
        }
    }
}

impl RetrySettings {
    /// Checks every field; the error names it (`retry.min_delay`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check::positive("retry.min_delay", self.min_delay)?;
        check::positive("retry.max_delay", self.max_delay)?;
        check::ordered(
            ("retry.min_delay", self.min_delay),
            ("retry.max_delay", self.max_delay),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(edit: impl FnOnce(&mut RetrySettings)) -> ConfigError {
        let mut retry = RetrySettings::default();
        edit(&mut retry);
        retry.validate().expect_err("settings should be rejected")
    }

    #[test]
    fn zero_values_are_rejected_by_field() {
        let err = error_of(|r| r.min_delay = Duration::ZERO);
        assert!(
            matches!(&err, ConfigError::InvalidValue { field, .. } if field == "retry.min_delay")
        );
    }

    #[test]
    fn inverted_ranges_are_rejected() {
        let err = error_of(|r| r.min_delay = Duration::from_secs(10));
        assert!(matches!(&err, ConfigError::InvertedRange { low, .. } if low == "retry.min_delay"));
    }
}
