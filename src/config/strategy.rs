//! [`ReadStrategy`]: where reads go, and the settings of
//! [`ReadStrategy::Nearest`] ([`NearestSettings`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// Where reads go. Writes and transactions always go to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReadStrategy {
    /// A healthy node in the service's own region (uniformly at random when
    /// there are several, primary and replicas alike); when none is healthy,
    /// any other healthy node, uniformly at random. Lowest latency; reads may
    /// see replication lag.
    #[default]
    RegionalPreferred,
    /// Any healthy node, uniformly at random, wherever it is. Spreads load
    /// evenly; pays cross-region latency on most reads.
    GlobalRandom,
    /// The primary only. Never stale; every read loads the writer and pays
    /// its latency.
    PrimaryOnly,
    /// The lowest-latency healthy nodes: uniformly among those whose smoothed
    /// probe round trip is within [`NearestSettings::window`] of the
    /// fastest. With [`NearestSettings::preferred_regions`], each region in
    /// order is tried first, then every region. Adapts to the network as
    /// measured; needs a probe or two before it knows.
    Nearest,
}

impl ReadStrategy {
    /// Every strategy, in documentation order.
    pub const ALL: [ReadStrategy; 4] = [
        ReadStrategy::RegionalPreferred,
        ReadStrategy::GlobalRandom,
        ReadStrategy::PrimaryOnly,
        ReadStrategy::Nearest,
    ];

    /// The name used in configuration and `DB_READ_STRATEGY`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadStrategy::RegionalPreferred => "regional-preferred",
            ReadStrategy::GlobalRandom => "global-random",
            ReadStrategy::PrimaryOnly => "primary-only",
            ReadStrategy::Nearest => "nearest",
        }
    }
}

impl fmt::Display for ReadStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReadStrategy {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == text.trim())
            .ok_or_else(|| ConfigError::UnknownStrategy {
                value: text.to_owned(),
            })
    }
}

/// Settings of [`ReadStrategy::Nearest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NearestSettings {
    /// Nodes whose smoothed round trip is within this of the fastest are
    /// equally near. Default: 15 ms (as MongoDB's `localThresholdMS`).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Regions to try first, in order, before every region; none empty.
    /// Default: none.
    pub preferred_regions: Vec<String>,
}

impl Default for NearestSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(15),
            preferred_regions: Vec::new(),
        }
    }
}

impl NearestSettings {
    /// Checks every field; the error names it
    /// (`nearest.preferred_regions[0]`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (index, region) in self.preferred_regions.iter().enumerate() {
            check::non_empty(format!("nearest.preferred_regions[{index}]"), region)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_by_name() {
        for strategy in ReadStrategy::ALL {
            assert_eq!(strategy.as_str().parse::<ReadStrategy>(), Ok(strategy));
        }
        assert!(matches!(
            "nearest-ish".parse::<ReadStrategy>(),
            Err(ConfigError::UnknownStrategy { value }) if value == "nearest-ish"
        ));
    }

    #[test]
    fn preferred_regions_are_named() {
        let nearest = NearestSettings {
            preferred_regions: vec!["eu-west-1".into(), " ".into()],
            ..NearestSettings::default()
        };
        let err = nearest.validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::EmptyField { field } if field == "nearest.preferred_regions[1]")
        );
    }
}
