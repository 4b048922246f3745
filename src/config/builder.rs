//! A builder that writes into the same [`Config`] serde reads.

use std::time::Duration;

use super::{
    Config, DiscoverySettings, HealthSettings, HedgeSettings, NodeConfig, OutcomeSettings,
    OutlierSettings, PoolSettings, ReadStrategy, RetrySettings, Role, StatementMode,
};
use crate::config::error::ConfigError;
use crate::connect::connstr::ConnectionString;
use crate::connect::credentials::{PasswordProvider, SharedPasswordProvider};

/// Builds a [`Config`]; [`ConfigBuilder::build`] validates it.
///
/// ```
/// use std::time::Duration;
/// use pgrouter::{Config, ReadStrategy};
///
/// let config = Config::builder()
///     .primary("writer", "us-east-1", "postgres://app@10.0.0.1/orders")
///     .replica("reader-eu", "eu-west-1", "postgres://app@10.1.0.1/orders")
///     .local_region("eu-west-1")
///     .read_strategy(ReadStrategy::RegionalPreferred)
///     .deadline(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(config.nodes.len(), 2);
/// # Ok::<(), pgrouter::ConfigError>(())
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
    /// Adds a node.
    pub fn node(mut self, node: NodeConfig) -> Self {
        self.config.nodes.push(node);
        self
    }

    /// Adds the primary.
    pub fn primary(
        self,
        name: impl Into<String>,
        region: impl Into<String>,
        url: impl Into<ConnectionString>,
    ) -> Self {
        self.node(NodeConfig::new(name, region, url, Role::Primary))
    }

    /// Adds a replica.
    pub fn replica(
        self,
        name: impl Into<String>,
        region: impl Into<String>,
        url: impl Into<ConnectionString>,
    ) -> Self {
        self.node(NodeConfig::new(name, region, url, Role::Replica))
    }

    /// Sets the service's own region.
    pub fn local_region(mut self, region: impl Into<String>) -> Self {
        self.config.local_region = region.into();
        self
    }

    /// Sets the read strategy.
    pub fn read_strategy(mut self, strategy: ReadStrategy) -> Self {
        self.config.read_strategy = strategy;
        self
    }

    /// Sets the default per-call deadline.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = deadline;
        self
    }

    /// Sets the default bound on replica lag for reads.
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.config.max_staleness = Some(bound);
        self
    }

    /// Sets how long writes wait for a primary during a failover.
    pub fn write_hold(mut self, hold: Duration) -> Self {
        self.config.write_hold = hold;
        self
    }

    /// Sets the nearest strategy's latency window and region preference.
    pub fn nearest(mut self, window: Duration, preferred_regions: &[&str]) -> Self {
        self.config.nearest.window = window;
        self.config.nearest.preferred_regions =
            preferred_regions.iter().map(|r| (*r).to_owned()).collect();
        self
    }

    /// Sets connections per node.
    pub fn pool_max_size(mut self, size: usize) -> Self {
        self.config.pool.max_size = size;
        self
    }

    /// Replaces every pool setting.
    pub fn pool(mut self, pool: PoolSettings) -> Self {
        self.config.pool = pool;
        self
    }

    /// Sets the probe interval and the bound on one probe.
    pub fn health_interval(mut self, interval: Duration, probe_timeout: Duration) -> Self {
        self.config.health.interval = interval;
        self.config.health.probe_timeout = probe_timeout;
        self
    }

    /// Sets the re-probe backoff of an unhealthy node.
    pub fn recovery_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.health.recovery_initial = initial;
        self.config.health.recovery_max = max;
        self
    }

    /// Replaces every health setting.
    pub fn health(mut self, health: HealthSettings) -> Self {
        self.config.health = health;
        self
    }

    /// Sets write retries and their backoff range.
    pub fn write_retries(
        mut self,
        max_retries: usize,
        min_delay: Duration,
        max_delay: Duration,
    ) -> Self {
        self.config.retry.max_retries = max_retries;
        self.config.retry.min_delay = min_delay;
        self.config.retry.max_delay = max_delay;
        self
    }

    /// Replaces every retry setting.
    pub fn retry(mut self, retry: RetrySettings) -> Self {
        self.config.retry = retry;
        self
    }

    /// The marker table that lets a lost `COMMIT` be resolved on a newly
    /// promoted primary too ([`OutcomeSettings::marker_table`]).
    pub fn marker_table(mut self, table: impl Into<String>) -> Self {
        self.config.outcomes.marker_table = Some(table.into());
        self
    }

    /// Replaces every outcome-resolution setting.
    pub fn outcomes(mut self, outcomes: OutcomeSettings) -> Self {
        self.config.outcomes = outcomes;
        self
    }

    /// Replaces every hedging setting ([`HedgeSettings`]).
    pub fn hedging(mut self, hedging: HedgeSettings) -> Self {
        self.config.hedging = hedging;
        self
    }

    /// Replaces every outlier-detection setting ([`OutlierSettings`]).
    pub fn outliers(mut self, outliers: OutlierSettings) -> Self {
        self.config.outliers = outliers;
        self
    }

    /// Sets how statements are sent to every node that does not set its
    /// own ([`Config::statement_mode`]).
    pub fn statement_mode(mut self, mode: StatementMode) -> Self {
        self.config.statement_mode = mode;
        self
    }

    /// Discovers Aurora readers as `discovery` says ([`DiscoverySettings`]).
    pub fn discovery(mut self, discovery: DiscoverySettings) -> Self {
        self.config.discovery = Some(discovery);
        self
    }

    /// Records each statement's text in its call span (`db.query.text`);
    /// see [`Config::record_query_text`].
    pub fn record_query_text(mut self, record: bool) -> Self {
        self.config.record_query_text = record;
        self
    }

    /// Every node's new connections take their password from `provider`
    /// (see [`PasswordProvider`]), replacing any in the connection strings.
    pub fn password_provider(mut self, provider: impl PasswordProvider) -> Self {
        self.config.password_provider = Some(SharedPasswordProvider::new(provider));
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}
