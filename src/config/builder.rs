//! A builder that writes into the same [`Config`] serde reads: one setter
//! per field.

use std::time::Duration;

use super::error::ConfigError;
use super::{
    CausalSettings, Config, DiscoverySettings, HealthSettings, HedgeSettings, NearestSettings,
    NodeConfig, OutcomeSettings, OutlierSettings, PoolSettings, ReadStrategy, ReadinessSettings,
    RetrySettings, Role, StatementMode, TlsSettings,
};
use crate::connect::connstr::ConnectionString;
use crate::connect::credentials::{PasswordProvider, SharedPasswordProvider};

/// Builds a [`Config`], one setter per field; [`ConfigBuilder::build`]
/// validates it. Nodes are added one at a time ([`ConfigBuilder::node`],
/// or its shorthands [`ConfigBuilder::primary`] and
/// [`ConfigBuilder::replica`]); a settings struct is set whole, from its
/// `Default` with the fields you need changed.
///
/// ```
/// use std::time::Duration;
/// use pgrouter::config::HealthSettings;
/// use pgrouter::{Config, ReadStrategy};
///
/// let mut health = HealthSettings::default();
/// health.interval = Duration::from_millis(500);
/// let config = Config::builder()
///     .primary("writer", "us-east-1", "postgres://app@10.0.0.1/orders")
///     .replica("reader-eu", "eu-west-1", "postgres://app@10.1.0.1/orders")
///     .local_region("eu-west-1")
///     .read_strategy(ReadStrategy::RegionalPreferred)
///     .deadline(Duration::from_secs(2))
///     .health(health)
///     .build()?;
/// assert_eq!(config.nodes.len(), 2);
/// # Ok::<(), pgrouter::config::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            config: Config::new(Vec::new()),
        }
    }
}

impl ConfigBuilder {
    /// Adds `node` to [`Config::nodes`].
    pub fn node(mut self, node: NodeConfig) -> Self {
        self.config.nodes.push(node);
        self
    }

    /// Adds a node with [`Role::Primary`] to [`Config::nodes`].
    pub fn primary(
        self,
        name: impl Into<String>,
        region: impl Into<String>,
        url: impl Into<ConnectionString>,
    ) -> Self {
        self.node(NodeConfig::new(name, region, url, Role::Primary))
    }

    /// Adds a node with [`Role::Replica`] to [`Config::nodes`].
    pub fn replica(
        self,
        name: impl Into<String>,
        region: impl Into<String>,
        url: impl Into<ConnectionString>,
    ) -> Self {
        self.node(NodeConfig::new(name, region, url, Role::Replica))
    }

    /// Sets [`Config::local_region`].
    pub fn local_region(mut self, region: impl Into<String>) -> Self {
        self.config.local_region = region.into();
        self
    }

    /// Sets [`Config::read_strategy`].
    pub fn read_strategy(mut self, strategy: ReadStrategy) -> Self {
        self.config.read_strategy = strategy;
        self
    }

    /// Sets [`Config::deadline`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = deadline;
        self
    }

    /// Sets [`Config::max_staleness`] to `Some(bound)`.
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.config.max_staleness = Some(bound);
        self
    }

    /// Sets [`Config::allow_orphaned_reads`].
    pub fn allow_orphaned_reads(mut self, allow: bool) -> Self {
        self.config.allow_orphaned_reads = allow;
        self
    }

    /// Sets [`Config::write_hold`].
    pub fn write_hold(mut self, hold: Duration) -> Self {
        self.config.write_hold = hold;
        self
    }

    /// Sets [`Config::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Sets [`Config::nearest`].
    pub fn nearest(mut self, nearest: NearestSettings) -> Self {
        self.config.nearest = nearest;
        self
    }

    /// Sets [`Config::causal`].
    pub fn causal(mut self, causal: CausalSettings) -> Self {
        self.config.causal = causal;
        self
    }

    /// Sets [`Config::pool`].
    pub fn pool(mut self, pool: PoolSettings) -> Self {
        self.config.pool = pool;
        self
    }

    /// Sets [`Config::tls`].
    pub fn tls(mut self, tls: TlsSettings) -> Self {
        self.config.tls = tls;
        self
    }

    /// Sets [`Config::health`].
    pub fn health(mut self, health: HealthSettings) -> Self {
        self.config.health = health;
        self
    }

    /// Sets [`Config::retry`].
    pub fn retry(mut self, retry: RetrySettings) -> Self {
        self.config.retry = retry;
        self
    }

    /// Sets [`Config::hedging`].
    pub fn hedging(mut self, hedging: HedgeSettings) -> Self {
        self.config.hedging = hedging;
        self
    }

    /// Sets [`Config::outliers`].
    pub fn outliers(mut self, outliers: OutlierSettings) -> Self {
        self.config.outliers = outliers;
        self
    }

    /// Sets [`Config::outcomes`].
    pub fn outcomes(mut self, outcomes: OutcomeSettings) -> Self {
        self.config.outcomes = outcomes;
        self
    }

    /// Sets [`Config::statement_mode`].
    pub fn statement_mode(mut self, mode: StatementMode) -> Self {
        self.config.statement_mode = mode;
        self
    }

    /// Sets [`Config::readiness`].
    pub fn readiness(mut self, readiness: ReadinessSettings) -> Self {
        self.config.readiness = readiness;
        self
    }

    /// Sets [`Config::discovery`] to `Some(discovery)`.
    pub fn discovery(mut self, discovery: DiscoverySettings) -> Self {
        self.config.discovery = Some(discovery);
        self
    }

    /// Sets [`Config::record_query_text`].
    pub fn record_query_text(mut self, record: bool) -> Self {
        self.config.record_query_text = record;
        self
    }

    /// Sets [`Config::password_provider`] to `provider` (see
    /// [`PasswordProvider`]).
    pub fn password_provider(mut self, provider: impl PasswordProvider) -> Self {
        self.config.password_provider = Some(SharedPasswordProvider::new(provider));
        self
    }

    /// Validates ([`Config::validate`]) and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setter_writes_its_field() {
        let pool = PoolSettings {
            max_size: 4,
            ..PoolSettings::default()
        };
        let readiness = ReadinessSettings {
            min_calls: 1,
            ..ReadinessSettings::default()
        };
        let tls = TlsSettings {
            enabled: true,
            ..TlsSettings::default()
        };
        let config = Config::builder()
            .primary("a", "r1", "host=a")
            .replica("b", "r2", "host=b")
            .allow_orphaned_reads(true)
            .pool(pool.clone())
            .readiness(readiness)
            .tls(tls.clone())
            .build()
            .unwrap();
        assert_eq!(config.nodes.len(), 2);
        assert!(config.allow_orphaned_reads);
        assert_eq!(
            (config.pool, config.readiness, config.tls),
            (pool, readiness, tls)
        );
    }

    #[test]
    fn build_validates() {
        let error = Config::builder().build().unwrap_err();
        assert_eq!(error, ConfigError::NoNodes);
    }
}
