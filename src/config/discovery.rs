//! [`DiscoverySettings`]: topology discovery on Aurora.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;
use crate::topology::discovery::HostPattern;

/// Configured and discovered nodes together: one word of routing bits.
pub(crate) const MAX_NODES_WITH_DISCOVERY: usize = 64;

/// Topology discovery on Aurora (optional): readers listed by the write
/// target's `aurora_replica_status()` but not configured are added at run
/// time, each with its own pool and probe, and those that vanish from it
/// are removed, as the AWS JDBC wrapper does with
/// `clusterInstanceHostPattern`. See the
/// [platforms guide](crate::guide::platforms#topology-discovery-on-aurora).
///
/// ```
/// use pgrouter::config::DiscoverySettings;
///
/// let mut discovery = DiscoverySettings::new("?.abc123.us-east-1.rds.amazonaws.com");
/// discovery.max_nodes = 4;
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DiscoverySettings {
    /// The host of every instance, with `?` standing for its instance
    /// identifier, e.g. `?.abc123.us-east-1.rds.amazonaws.com` (exactly
    /// one `?`; a host name only: no scheme, port or path; or an absolute
    /// Unix-socket directory, `/run/pg/?`). A discovered instance's
    /// connection string is the primary's, with this host and the
    /// primary's first port. Required.
    pub instance_host_pattern: String,
    /// Discovered nodes at most, 1 to 64 less the configured nodes, so
    /// routing keeps its one-word fast path. Instances beyond it are not
    /// added (a warning says so). Default: 15 (Aurora's most readers).
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
    /// How long an instance must be absent from the write target's
    /// `aurora_replica_status()` (or its row older than 300 s) before it is
    /// removed: it gets no more calls and its pool is dropped; greater than
    /// zero. Default: 30 s.
    #[serde(default = "default_removal_grace", with = "humantime_serde")]
    pub removal_grace: Duration,
    /// The region of discovered nodes, not empty. Default: none (the
    /// primary's region).
    #[serde(default)]
    pub region: Option<String>,
}

impl DiscoverySettings {
    /// Discovery with this host pattern and every other setting at its
    /// default.
    pub fn new(instance_host_pattern: impl Into<String>) -> Self {
        Self {
            instance_host_pattern: instance_host_pattern.into(),
            max_nodes: 15,
            removal_grace: Duration::from_secs(30),
            region: None,
        }
    }

    /// Checks every field; the error names it (`discovery.max_nodes`).
    /// [`Config::validate`](super::Config::validate) also checks that
    /// `max_nodes` leaves room for the configured nodes.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        HostPattern::parse(
            "discovery.instance_host_pattern",
            &self.instance_host_pattern,
        )?;
        if !(1..=MAX_NODES_WITH_DISCOVERY).contains(&self.max_nodes) {
            return Err(self.too_many_nodes());
        }
        check::positive("discovery.removal_grace", self.removal_grace)?;
        if let Some(region) = &self.region {
            check::non_empty("discovery.region".to_owned(), region)?;
        }
        Ok(())
    }

    /// `max_nodes` out of range.
    pub(crate) fn too_many_nodes(&self) -> ConfigError {
        ConfigError::InvalidValue {
            field: "discovery.max_nodes".to_owned(),
            value: self.max_nodes.to_string(),
            reason: "must be from 1 to 64 less the configured nodes",
        }
    }
}

/// Serde's default for a missing `max_nodes`: [`DiscoverySettings::new`]'s.
fn default_max_nodes() -> usize {
    DiscoverySettings::new(String::new()).max_nodes
}

/// Serde's default for a missing `removal_grace`: [`DiscoverySettings::new`]'s.
fn default_removal_grace() -> Duration {
    DiscoverySettings::new(String::new()).removal_grace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pattern_is_required() {
        let json = r#"{"instance_host_pattern": "?.abc.rds.amazonaws.com"}"#;
        let parsed: DiscoverySettings = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, DiscoverySettings::new("?.abc.rds.amazonaws.com"));
        let json = r#"{"instance_host_pattern": "?.x", "removal_grace": "5s", "max_nodes": 3}"#;
        let parsed: DiscoverySettings = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.removal_grace, Duration::from_secs(5));
        assert_eq!(parsed.max_nodes, 3);
        let unknown = r#"{"instance_host_pattern": "?.x", "grace": "5s"}"#;
        assert!(serde_json::from_str::<DiscoverySettings>(unknown).is_err());
    }

    #[test]
    fn discovery_errors_name_the_field() {
        let field_of = |error: ConfigError| match error {
            ConfigError::InvalidValue { field, .. } | ConfigError::EmptyField { field } => field,
            other => panic!("{other:?}"),
        };
        let valid = || DiscoverySettings::new("?.abc.rds.amazonaws.com");
        valid().validate().unwrap();
        type Edit = fn(&mut DiscoverySettings);
        let cases: [(Edit, &str); 6] = [
            (
                |d| d.instance_host_pattern = "abc.rds.amazonaws.com".into(),
                "discovery.instance_host_pattern",
            ),
            (
                |d| d.instance_host_pattern = "?.?.amazonaws.com".into(),
                "discovery.instance_host_pattern",
            ),
            (|d| d.max_nodes = 0, "discovery.max_nodes"),
            (|d| d.max_nodes = 65, "discovery.max_nodes"),
            (
                |d| d.removal_grace = Duration::ZERO,
                "discovery.removal_grace",
            ),
            (|d| d.region = Some(" ".into()), "discovery.region"),
        ];
        for (edit, field) in cases {
            let mut discovery = valid();
            edit(&mut discovery);
            assert_eq!(field_of(discovery.validate().unwrap_err()), field);
        }
    }
}
