//! [`HedgeSettings`] (hedged reads and the retry budget) and
//! [`OutlierSettings`] (outlier detection on live reads).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// Hedged reads, and the budget that bounds them and read retries; see the
/// [reads guide](crate::guide::reads#hedged-reads-and-outlier-detection).
///
/// A read with no answer within the hedge delay is sent once more to
/// another eligible node; the first answer wins and the other statement is
/// cancelled on its server. Only a read that may run twice is hedged: one
/// whose first node is a replica (in recovery, it writes nothing), or one
/// marked [`idempotent`](crate::ReadBuilder::idempotent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct HedgeSettings {
    /// Hedge reads. Default: false: a hedge doubles a slow read's work,
    /// and on a saturated service that cost outweighed what it saved
    /// (BENCHMARKS.md, "Hedged reads"; measured when a losing hedge also
    /// discarded its connection, which it no longer does); it stays off
    /// until a service-level load test shows it never hurts. Outlier
    /// detection, on by default, still takes a silent node out of routing.
    pub enabled: bool,
    /// A fixed hedge delay, greater than zero. Default: none: the first node's recent 99th
    /// percentile read latency (estimated from every read it answered), at
    /// least `min_delay`.
    #[serde(with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// The shortest derived hedge delay, greater than zero. Default: 2 ms.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// The budget's share of reads, 0 to 100: every read adds this
    /// percentage of a token, every hedge and every read retry takes a
    /// whole one; with none left, the read is neither hedged nor retried.
    /// Default: 10 (a cluster in trouble gets at most about 10% more reads,
    /// plus `budget_per_second`).
    pub budget_percent: u32,
    /// Tokens added each second whatever the traffic, so a quiet service
    /// can still retry. Default: 10.
    pub budget_per_second: u32,
    /// Tokens the budget holds at most (and starts with), at least 1.
    /// Default: 100.
    pub budget_burst: u32,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            delay: None,
            min_delay: Duration::from_millis(2),
            budget_percent: 10,
            budget_per_second: 10,
            budget_burst: 100,
        }
    }
}

/// Outlier detection on live reads, as Envoy's outlier detection and
/// Finagle's failure accrual do: a node with reads in flight that has
/// answered none of them for a while, while another node answered within
/// that time, is marked suspect at once (out of routing, probed now)
/// instead of at the first read's deadline. One node at most is out at a
/// time this way, and never the last routable one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct OutlierSettings {
    /// Detect outliers. Default: true.
    pub enabled: bool,
    /// How long a node with reads in flight may go without answering any,
    /// greater than zero; never less than four times its recent 99th
    /// percentile read latency, so slow queries alone do not make a node an
    /// outlier. One task looks every quarter of it while any read is in
    /// flight (no timer in each read). Default: 100 ms.
    #[serde(with = "humantime_serde")]
    pub silence: Duration,
}

impl HedgeSettings {
    /// Checks every field; the error names it (`hedging.budget_percent`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check::positive("hedging.min_delay", self.min_delay)?;
        if let Some(delay) = self.delay {
            check::positive("hedging.delay", delay)?;
        }
        if self.budget_percent > 100 {
            return Err(ConfigError::InvalidValue {
                field: "hedging.budget_percent".to_owned(),
                value: self.budget_percent.to_string(),
                reason: "must be from 0 to 100",
            });
        }
        check::at_least_one("hedging.budget_burst", u64::from(self.budget_burst))
    }
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            silence: Duration::from_millis(100),
        }
    }
}

impl OutlierSettings {
    /// Checks every field; the error names it (`outliers.silence`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check::positive("outliers.silence", self.silence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_hedging_and_outlier_settings_name_the_field() {
        let field_of = |error: ConfigError| match error {
            ConfigError::InvalidValue { field, .. } => field,
            other => panic!("{other:?}"),
        };
        for (field, edit) in [
            (
                "hedging.min_delay",
                (|h| h.min_delay = Duration::ZERO) as fn(&mut HedgeSettings),
            ),
            ("hedging.delay", |h| h.delay = Some(Duration::ZERO)),
            ("hedging.budget_percent", |h| h.budget_percent = 101),
            ("hedging.budget_burst", |h| h.budget_burst = 0),
        ] {
            let mut hedging = HedgeSettings::default();
            edit(&mut hedging);
            assert_eq!(field_of(hedging.validate().unwrap_err()), field);
        }
        let outliers = OutlierSettings {
            silence: Duration::ZERO,
            ..OutlierSettings::default()
        };
        assert_eq!(
            field_of(outliers.validate().unwrap_err()),
            "outliers.silence"
        );
        let extremes = HedgeSettings {
            delay: Some(Duration::MAX),
            budget_percent: 100,
            budget_per_second: u32::MAX,
            budget_burst: u32::MAX,
            ..HedgeSettings::default()
        };
        extremes.validate().unwrap();
        let outliers = OutlierSettings {
            silence: Duration::MAX,
            ..OutlierSettings::default()
        };
        outliers.validate().unwrap();
    }
}
