//! [`DiscoverySettings`]: topology discovery on Aurora.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Topology discovery on Aurora (optional): readers listed by the write
/// target's `aurora_replica_status()` but not configured are added at run
/// time, each with its own pool and probe, and those that vanish from it
/// are removed, as the AWS JDBC wrapper does with
/// `clusterInstanceHostPattern`. See the README's Aurora section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySettings {
    /// The host of every instance, with `?` standing for its instance
    /// identifier, e.g. `?.abc123.us-east-1.rds.amazonaws.com` (exactly
    /// one `?`; a host name only: no scheme, port or path; or an absolute
    /// Unix-socket directory, `/run/pg/?`). A discovered instance's
    /// connection string is the primary's, with this host and the
    /// primary's first port.
    pub instance_host_pattern: String,
    /// Discovered nodes at most, 1 to 64 less the configured nodes, so
    /// routing keeps its one-word fast path. Instances beyond it are not
    /// added (a warning says so). Default: 15 (Aurora's most readers).
    #[serde(default = "defaults::max_nodes")]
    pub max_nodes: usize,
    /// How long an instance must be absent from the write target's
    /// `aurora_replica_status()` (or its row older than 300 s) before it is
    /// removed: it gets no more calls and its pool is dropped. Default: 30 s.
    #[serde(default = "defaults::removal_grace", with = "humantime_serde")]
    pub removal_grace: Duration,
    /// The region of discovered nodes. Default: the primary's region.
    #[serde(default)]
    pub region: Option<String>,
}

impl DiscoverySettings {
    /// Discovery with this host pattern and every other setting at its
    /// default.
    pub fn new(instance_host_pattern: impl Into<String>) -> Self {
        Self {
            instance_host_pattern: instance_host_pattern.into(),
            max_nodes: defaults::max_nodes(),
            removal_grace: defaults::removal_grace(),
            region: None,
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub(super) fn max_nodes() -> usize {
        15
    }

    pub(super) fn removal_grace() -> Duration {
        Duration::from_secs(30)
    }
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
}
