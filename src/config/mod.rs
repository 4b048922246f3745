//! Configuration: plain `serde` data, validated once by [`Config::validate`].
//!
//! [`Config`] holds the nodes and one settings struct per capability, each
//! in a file of its own beside its validation: [`PoolSettings`],
//! [`HealthSettings`], [`RetrySettings`], [`HedgeSettings`] and
//! [`OutlierSettings`], [`OutcomeSettings`], [`NearestSettings`], [`CausalSettings`],
//! [`TlsSettings`], [`ReadinessSettings`] and [`DiscoverySettings`]. Every
//! default is written in the field's documentation, and every settings
//! struct is `#[non_exhaustive]`: start from its `Default` and set the
//! fields you need, so a new setting never breaks your code. Durations are
//! written in [humantime](https://docs.rs/humantime) form (`"250ms"`,
//! `"5s"`).
//!
//! ```
//! use std::time::Duration;
//! use pgrouter::config::{Config, PoolSettings};
//!
//! let mut pool = PoolSettings::default();
//! pool.max_size = 8;
//! let config = Config::builder()
//!     .primary("writer", "us-east-1", "postgres://app@10.0.0.1/orders")
//!     .deadline(Duration::from_secs(2))
//!     .pool(pool)
//!     .build()?;
//! assert_eq!(config.pool.max_size, 8);
//! # Ok::<(), pgrouter::config::ConfigError>(())
//! ```

pub(crate) mod builder;
pub(crate) mod causal;
pub(crate) mod check;
pub(crate) mod clock;
pub(crate) mod discovery;
pub(crate) mod env;
pub(crate) mod error;
pub(crate) mod health;
pub(crate) mod hedging;
pub(crate) mod node;
pub(crate) mod outcomes;
pub(crate) mod pool;
pub(crate) mod readiness;
pub(crate) mod retry;
pub(crate) mod strategy;
pub(crate) mod tls;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use builder::ConfigBuilder;
pub use causal::{CausalSettings, ReadYourWrites};
pub use discovery::DiscoverySettings;
pub use error::ConfigError;
pub use health::HealthSettings;
pub use hedging::{HedgeSettings, OutlierSettings};
pub use node::{NodeConfig, Role, StatementMode};
pub use outcomes::OutcomeSettings;
pub use pool::PoolSettings;
pub use readiness::{ReadinessSettings, Requirement};
pub use retry::RetrySettings;
pub use strategy::{NearestSettings, ReadStrategy};
pub use tls::TlsSettings;

pub use crate::connect::connstr::ConnectionString;
use crate::connect::credentials::SharedPasswordProvider;

/// Everything pgrouter needs: the nodes, where the service runs, and how to
/// route, pool, probe and retry.
///
/// Start from [`Config::new`] (or [`Config::builder`]) and set fields; in a
/// file, only `nodes` is required.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Every node: exactly one with [`Role::Primary`], any number of
    /// replicas. Required.
    pub nodes: Vec<NodeConfig>,
    /// The region this service runs in (e.g. `eu-west-1`); used by
    /// [`ReadStrategy::RegionalPreferred`]. Default: empty (no local region).
    #[serde(default)]
    pub local_region: String,
    /// How reads choose a node. Default: [`ReadStrategy::RegionalPreferred`].
    #[serde(default)]
    pub read_strategy: ReadStrategy,
    /// The overall deadline of one call (checkout, statement and any retries),
    /// overridable per call; greater than zero. Default: 10 s.
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Default bound on a replica's staleness for reads: a replica serves a
    /// read only if, when the read is routed, it is known to have had
    /// everything the primary had no longer than this ago (unknown is too
    /// stale); the primary always may. Below `health.interval`, replicas
    /// qualify only part of each probe interval. Overridable per call;
    /// greater than zero. Default: none (any healthy replica).
    #[serde(default, with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    /// Whether orphaned replicas (not receiving WAL, or on another timeline
    /// than the primary: see [`Orphan`](crate::status::Orphan)) still serve reads
    /// that carry no staleness bound and no causal token. They never serve
    /// those that do. Default: false (after a failover, a replica left
    /// following the old primary would answer with old data for ever).
    /// While no primary is elected, no replica is an orphan: they all serve
    /// reads within the call's staleness bound, whatever this says.
    #[serde(default)]
    pub allow_orphaned_reads: bool,
    /// How long a write waits for a primary while none is known (during a
    /// failover), never past its deadline. Zero: fail at once. Default: 5 s.
    #[serde(default = "default_write_hold", with = "humantime_serde")]
    pub write_hold: Duration,
    /// How long [`DatabaseManager::close`](crate::DatabaseManager::close)
    /// lets the calls in flight finish before it stops them (with
    /// [`ErrorKind::Closed`](crate::error::ErrorKind::Closed)); new calls are
    /// refused at once. Keep the readiness grace, the HTTP drain and this
    /// within the pod's `terminationGracePeriodSeconds` (30 s by default).
    /// Zero: stop them at once. Default: 5 s.
    #[serde(default = "default_close_timeout", with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Settings of [`ReadStrategy::Nearest`]. Default: each field's default.
    #[serde(default)]
    pub nearest: NearestSettings,
    /// How reads in a causal scope see the scope's writes: positions, or
    /// the primary for a window after each write. Default: each field's
    /// default (positions where the primary reports them, else 2 s on the
    /// primary).
    #[serde(default)]
    pub causal: CausalSettings,
    /// Connection pool settings, the same for every node. Default: each
    /// field's default.
    #[serde(default)]
    pub pool: PoolSettings,
    /// TLS for every connection. Default: off.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Health monitor settings. Default: each field's default.
    #[serde(default)]
    pub health: HealthSettings,
    /// Write and transaction retry settings. Default: each field's default.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Hedged reads, and the budget that bounds them and read retries.
    /// Default: each field's default (no hedging).
    #[serde(default)]
    pub hedging: HedgeSettings,
    /// Outlier detection on live reads. Default: each field's default (on).
    #[serde(default)]
    pub outliers: OutlierSettings,
    /// How a transaction whose `COMMIT` answer was lost is resolved.
    /// Default: each field's default.
    #[serde(default)]
    pub outcomes: OutcomeSettings,
    /// How statements are sent to every node that does not set its own
    /// [`NodeConfig::statement_mode`]. Default: [`StatementMode::Prepared`].
    #[serde(default)]
    pub statement_mode: StatementMode,
    /// When [`DatabaseManager::readiness`](crate::DatabaseManager::readiness)
    /// is ready. Default: each field's default.
    #[serde(default)]
    pub readiness: ReadinessSettings,
    /// Topology discovery on Aurora. Default: none (the configured nodes
    /// only).
    #[serde(default)]
    pub discovery: Option<DiscoverySettings>,
    /// Whether a read's or write's span records the statement's text
    /// (`db.query.text`). Parameters are never recorded. Default: false
    /// (statements can carry literals the service would not log).
    #[serde(default)]
    pub record_query_text: bool,
    /// Where every node's new connections get their password (an IAM token
    /// generator, a secret store), instead of the connection strings; set
    /// with [`ConfigBuilder::password_provider`]. Not serde data: never
    /// read from or written to a file. Default: none.
    #[serde(skip)]
    pub password_provider: Option<SharedPasswordProvider>,
}

impl Config {
    /// A configuration with these nodes and every other setting at its
    /// default: the one place those defaults are set (serde fills a missing
    /// field from here too).
    pub fn new(nodes: Vec<NodeConfig>) -> Self {
        Self {
            nodes,
            local_region: String::new(),
            read_strategy: ReadStrategy::default(),
            deadline: Duration::from_secs(10),
            max_staleness: None,
            allow_orphaned_reads: false,
            write_hold: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            nearest: NearestSettings::default(),
            causal: CausalSettings::default(),
            pool: PoolSettings::default(),
            tls: TlsSettings::default(),
            health: HealthSettings::default(),
            retry: RetrySettings::default(),
            hedging: HedgeSettings::default(),
            outliers: OutlierSettings::default(),
            outcomes: OutcomeSettings::default(),
            statement_mode: StatementMode::default(),
            readiness: ReadinessSettings::default(),
            discovery: None,
            record_query_text: false,
            password_provider: None,
        }
    }

    /// Starts a builder that writes into a [`Config`].
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Checks every field once; the error names the field and the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        node::validate_nodes(&self.nodes, &self.tls)?;
        check::positive("deadline", self.deadline)?;
        if self.max_staleness.is_some_and(|bound| bound.is_zero()) {
            return Err(check::invalid(
                "max_staleness",
                Duration::ZERO,
                "must be greater than zero (use the primary-only strategy for no staleness)",
            ));
        }
        self.nearest.validate()?;
        self.causal.validate()?;
        self.pool.validate()?;
        self.tls.validate()?;
        self.health.validate()?;
        self.retry.validate()?;
        self.hedging.validate()?;
        self.outliers.validate()?;
        self.outcomes.validate()?;
        self.readiness.validate()?;
        self.validate_discovery()
    }

    /// Discovery's own settings, and room for its nodes beside the
    /// configured ones.
    fn validate_discovery(&self) -> Result<(), ConfigError> {
        let Some(discovery) = &self.discovery else {
            return Ok(());
        };
        discovery.validate()?;
        let room = discovery::MAX_NODES_WITH_DISCOVERY.saturating_sub(self.nodes.len());
        if discovery.max_nodes > room {
            return Err(discovery.too_many_nodes());
        }
        Ok(())
    }

    /// The statement mode of `node`: its own, else the config's.
    pub fn statement_mode_of(&self, node: &NodeConfig) -> StatementMode {
        node.statement_mode.unwrap_or(self.statement_mode)
    }

    /// Reads the Node.js original's environment variables (one primary, at
    /// most one replica); see the
    /// [configuration guide](crate::guide::configuration#environment-variables).
    pub fn from_env() -> Result<Self, ConfigError> {
        env::from_env(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup`
    /// (handy in tests and for other configuration sources).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        env::from_env(lookup)
    }
}

/// Serde's default for a missing `deadline`: [`Config::new`]'s.
fn default_deadline() -> Duration {
    Config::new(Vec::new()).deadline
}

/// Serde's default for a missing `write_hold`: [`Config::new`]'s.
fn default_write_hold() -> Duration {
    Config::new(Vec::new()).write_hold
}

/// Serde's default for a missing `close_timeout`: [`Config::new`]'s.
fn default_close_timeout() -> Duration {
    Config::new(Vec::new()).close_timeout
}

#[cfg(test)]
mod tests;
