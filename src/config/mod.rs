//! Configuration: plain `serde` data, validated once by [`Config::validate`].
//!
//! Every default is written in the field's documentation. Durations are
//! written in [humantime](https://docs.rs/humantime) form (`"250ms"`, `"5s"`).

pub(crate) mod builder;
pub(crate) mod clock;
pub(crate) mod discovery;
pub(crate) mod env;
pub(crate) mod error;
pub(crate) mod hedging;
pub(crate) mod readiness;
pub(crate) mod tls;
pub(crate) mod validate;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use builder::ConfigBuilder;
pub use discovery::DiscoverySettings;
pub use hedging::{HedgeSettings, OutlierSettings};
pub use readiness::{ReadinessSettings, Requirement};
pub use error::ConfigError;
pub use tls::TlsSettings;

pub use crate::connect::connstr::ConnectionString;
use crate::connect::credentials::SharedPasswordProvider;

/// Everything pgrouter needs: the nodes, where the service runs, and how to
/// route, pool, probe and retry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Every node: exactly one with [`Role::Primary`], any number of replicas.
    pub nodes: Vec<NodeConfig>,
    /// The region this service runs in (e.g. `eu-west-1`); used by
    /// [`ReadStrategy::RegionalPreferred`]. Default: empty (no local region).
    #[serde(default)]
    pub local_region: String,
    /// How reads choose a node. Default: [`ReadStrategy::RegionalPreferred`].
    #[serde(default)]
    pub read_strategy: ReadStrategy,
    /// The overall deadline of one call (checkout, statement and any retries),
    /// overridable per call. Default: 10 s.
    #[serde(default = "defaults::deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Default bound on a replica's staleness for reads: a replica serves a
    /// read only if, when the read is routed, it is known to have had
    /// everything the primary had no longer than this ago (unknown is too
    /// stale); the primary always may. Below `health.interval`, replicas
    /// qualify only part of each probe interval. Overridable per call.
    /// Default: none (any healthy replica).
    #[serde(default, with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    /// Whether orphaned replicas (not receiving WAL, or on another timeline
    /// than the primary: see [`Orphan`](crate::status::Orphan)) still serve reads
    /// that carry no staleness bound and no causal token. They never serve
    /// those that do. Default: false (after a failover, a replica left
    /// following the old primary would answer with old data for ever).
    #[serde(default)]
    pub allow_orphaned_reads: bool,
    /// How long a write waits for a primary while none is known (during a
    /// failover), never past its deadline. Zero: fail at once. Default: 5 s.
    #[serde(default = "defaults::write_hold", with = "humantime_serde")]
    pub write_hold: Duration,
    /// Settings of [`ReadStrategy::Nearest`].
    #[serde(default)]
    pub nearest: NearestSettings,
    /// Connection pool settings, the same for every node.
    #[serde(default)]
    pub pool: PoolSettings,
    /// TLS for every connection. Default: off.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Health monitor settings.
    #[serde(default)]
    pub health: HealthSettings,
    /// Write and transaction retry settings.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Hedged reads, and the budget that bounds them and read retries.
    #[serde(default)]
    pub hedging: HedgeSettings,
    /// Outlier detection on live reads.
    #[serde(default)]
    pub outliers: OutlierSettings,
    /// How a transaction whose `COMMIT` answer was lost is resolved.
    #[serde(default)]
    pub outcomes: OutcomeSettings,
    /// How statements are sent to every node that does not set its own
    /// [`NodeConfig::statement_mode`]. Default: [`StatementMode::Prepared`].
    #[serde(default)]
    pub statement_mode: StatementMode,
    /// When [`DatabaseManager::readiness`](crate::DatabaseManager::readiness)
    /// is ready.
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

/// One PostgreSQL server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A unique name, used in logs, errors and [`Status`](crate::status::Status).
    pub name: String,
    /// The region the node runs in (e.g. `us-east-1`).
    pub region: String,
    /// How to connect; the password never reaches logs or `Debug`.
    pub url: ConnectionString,
    /// The configured role. Default: [`Role::Replica`].
    #[serde(default)]
    pub role: Role,
    /// How statements are sent to this node (set
    /// [`StatementMode::Unnamed`] when it is reached through a
    /// transaction-pooling proxy such as PgBouncer). Default: none (the
    /// config's [`Config::statement_mode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_mode: Option<StatementMode>,
}

/// How pgrouter sends statements to a node's server; see the README's
/// "Behind a connection pooler".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StatementMode {
    /// Named server-side statements, prepared once per pooled connection
    /// and cached there (deadpool's `prepare_cached`): each later call is
    /// one round trip that sends no SQL text and reuses the server's plan.
    /// Fastest when every connection is a session of its own; breaks
    /// behind a proxy that pools by transaction (PgBouncer's
    /// `pool_mode = transaction`, RDS Proxy), where the next statement
    /// can land on a server connection that never saw the prepare.
    #[default]
    Prepared,
    /// Unnamed statements: each call sends its SQL text, parameter types
    /// and values in one round trip (parse, bind, execute, sync) and leaves
    /// no state on the server, so it is safe behind a transaction-pooling
    /// proxy. The server parses and plans every call. Parameter types are
    /// learnt once per node and statement text inside a transaction block
    /// (which a pooler keeps on one server connection) and cached per node;
    /// statements without parameters (no `$` in their text) need no such
    /// step.
    Unnamed,
}

impl StatementMode {
    /// Every mode, in documentation order.
    pub const ALL: [StatementMode; 2] = [StatementMode::Prepared, StatementMode::Unnamed];

    /// The name used in configuration and `DB_STATEMENT_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementMode::Prepared => "prepared",
            StatementMode::Unnamed => "unnamed",
        }
    }
}

impl fmt::Display for StatementMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatementMode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text.trim())
            .ok_or_else(|| ConfigError::InvalidValue {
                field: "statement_mode".to_owned(),
                value: text.to_owned(),
                reason: "expected prepared or unnamed",
            })
    }
}

/// A node's role in replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// The writer: every write and transaction goes here.
    Primary,
    /// A streaming replica: serves reads only.
    #[default]
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

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
pub struct NearestSettings {
    /// Nodes whose smoothed round trip is within this of the fastest are
    /// equally near. Default: 15 ms (as MongoDB's `localThresholdMS`).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Regions to try first, in order, before every region. Default: none.
    pub preferred_regions: Vec<String>,
}

impl Default for NearestSettings {
    fn default() -> Self {
        Self {
            window: defaults::nearest_window(),
            preferred_regions: Vec::new(),
        }
    }
}

/// Connection pool settings (one deadpool-postgres pool per node).
///
/// Every wait is bounded: deadpool's own timeouts default to none, and a pool
/// pointed at a silent server would otherwise hang for ever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct PoolSettings {
    /// Connections per node, 1 to 10000. Default: 16.
    pub max_size: usize,
    /// How long a checkout waits for a free connection. Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// How long creating a connection (TCP, TLS, startup) may take. Default: 3 s.
    #[serde(with = "humantime_serde")]
    pub create_timeout: Duration,
    /// How long checking an idle connection before reuse may take (a
    /// round trip; catches a peer that went silent). Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub recycle_timeout: Duration,
    /// A connection not handed out for this long is checked with a round
    /// trip (bounded by `recycle_timeout`) before reuse; busier connections
    /// are reused at once, and a silent peer behind one of them is bounded
    /// by the call deadline instead (which then drops the node's idle
    /// connections). Zero checks every checkout, as deadpool's `Verified`
    /// recycling does, at one extra round trip per call. Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub verify_idle_after: Duration,
    /// TCP connect timeout, unless the connection string sets one. Default: 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle time before TCP keepalives start, 1 s to 32767 s (whole
    /// seconds; the kernel's range). Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_idle: Duration,
    /// Linux `TCP_USER_TIMEOUT`: unacknowledged data for this long closes the
    /// connection; at most 2147483647 ms (the kernel's range). Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(2),
            create_timeout: Duration::from_secs(3),
            recycle_timeout: Duration::from_secs(1),
            verify_idle_after: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            keepalive_idle: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(10),
        }
    }
}

/// Health monitor settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct HealthSettings {
    /// How often a healthy node is probed, at least 1 ms. Default: 1 s: one
    /// round trip a second per node on the monitor's own connection, which
    /// keeps each replica's lag and replay position (what the staleness
    /// bound and causal tokens are checked against) at most about a second
    /// old, and finds a silent node without traffic within a second plus
    /// `probe_timeout`. The original sketch probed every 60 s
    /// ([`HealthSettings::original`]).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Bound on one probe (connect and the probe query). Default: 2 s, far
    /// above a cross-region round trip, so only a node that is really
    /// silent fails it.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// First re-probe of an unhealthy node, at least 1 ms; also the gap
    /// between the successes that confirm its recovery (or `interval`, if
    /// shorter). Default: 250 ms,
    /// so a short fault (a restart, a blip) costs well under a second of
    /// routing around the node.
    #[serde(with = "humantime_serde")]
    pub recovery_initial: Duration,
    /// Longest gap between re-probes of an unhealthy node; the gap doubles
    /// from `recovery_initial` up to this. Default: 1 s, as `interval`: a
    /// node that answers again is back in routing within about a second
    /// (`recovery_max + (rise - 1) * recovery_initial`), and a dead node
    /// costs one connection attempt a second.
    #[serde(with = "humantime_serde")]
    pub recovery_max: Duration,
    /// Consecutive failed probes that mark a healthy node down. Default: 1.
    pub fall: u32,
    /// Consecutive successful probes that bring an unhealthy node back
    /// (probes after the first success come every `interval`). Default: 2.
    pub rise: u32,
    /// While no primary is elected (it went down, a write saw it turn
    /// read-only or shut down, a failover is under way), every node is
    /// probed this often, at least 1 ms, so that a promoted replica takes
    /// writes within about this long of its promotion instead of within
    /// `interval`. Default: 20 ms.
    #[serde(with = "humantime_serde")]
    pub failover_probe_interval: Duration,
    /// How long that fast probing lasts at most, from the moment no primary
    /// is known; zero turns it off. It ends at once when a primary is
    /// elected. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub failover_watch: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            recovery_initial: Duration::from_millis(250),
            recovery_max: Duration::from_secs(1),
            fall: 1,
            rise: 2,
            failover_probe_interval: Duration::from_millis(20),
            failover_watch: Duration::from_secs(30),
        }
    }
}

impl HealthSettings {
    /// The cadence of the original sketch this library grew from (a
    /// Node.js `DatabaseManager`): `SELECT 1` every 60 s, an unhealthy node
    /// re-probed at 5 s doubling to 30 s. For a service that must keep its
    /// old probe load; the price is that a node that answers again stays
    /// out of routing for up to 35 s, a silent node without traffic is
    /// found only within a minute, and lag and positions are up to a minute
    /// old (reads with a staleness bound or a causal token go to the
    /// primary more often). The other fields are the defaults.
    pub fn original() -> Self {
        Self {
            interval: Duration::from_secs(60),
            recovery_initial: Duration::from_secs(5),
            recovery_max: Duration::from_secs(30),
            ..Self::default()
        }
    }
}

/// Retry settings for writes and transactions (reads retry once on another
/// node, see [`ReadStrategy`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct RetrySettings {
    /// Retries after the first attempt. Default: 3.
    pub max_retries: usize,
    /// First backoff delay. Default: 300 ms.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Largest backoff delay; delays double up to it. Default: 3 s.
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

/// How pgrouter finds out whether a transaction whose `COMMIT` answer was
/// lost committed; see the README's "Unknown outcomes, resolved".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutcomeSettings {
    /// Transactions (and [`exactly_once`](crate::Write::exactly_once)
    /// writes) learn their transaction id in the round trip of `BEGIN`,
    /// and a lost `COMMIT` is resolved by asking the server within the
    /// call's deadline instead of failing with
    /// [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown). Costs one
    /// transaction id per transaction, also for one that writes nothing.
    /// Default: true.
    pub resolve: bool,
    /// A table (`name` or `schema.name`) in which every resolved
    /// transaction also inserts a random id, so that a lost `COMMIT` can be
    /// resolved on a newly promoted primary (or a server restarted after a
    /// crash) too, where a transaction id may have been handed out again.
    /// Create it with [`OutcomeSettings::marker_table_sql`]; the role needs
    /// `INSERT`, `SELECT` and `DELETE` on it. Default: none (a lost
    /// `COMMIT` is resolved only by the server that ran it, or proven
    /// uncommitted by the new primary).
    pub marker_table: Option<String>,
    /// Markers older than this are deleted (by a background task, about
    /// every quarter of it). Keep it above the longest call deadline; at
    /// least 1 min. Default: 1 h.
    #[serde(with = "humantime_serde")]
    pub marker_retention: Duration,
}

impl Default for OutcomeSettings {
    fn default() -> Self {
        Self {
            resolve: true,
            marker_table: None,
            marker_retention: Duration::from_secs(3600),
        }
    }
}

impl OutcomeSettings {
    /// The `CREATE TABLE` statement for [`OutcomeSettings::marker_table`]
    /// (`None` without one): an id column and the time it was written.
    pub fn marker_table_sql(&self) -> Option<String> {
        self.marker_table.as_ref().map(|table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} \
                 (id text PRIMARY KEY, written timestamptz NOT NULL DEFAULT now())"
            )
        })
    }
}

mod defaults {
    use std::time::Duration;

    pub(super) fn deadline() -> Duration {
        Duration::from_secs(10)
    }

    pub(super) fn write_hold() -> Duration {
        Duration::from_secs(5)
    }

    pub(super) fn nearest_window() -> Duration {
        Duration::from_millis(15)
    }
}

impl Config {
    /// A configuration with these nodes and every other setting at its default.
    pub fn new(nodes: Vec<NodeConfig>) -> Self {
        Self {
            nodes,
            local_region: String::new(),
            read_strategy: ReadStrategy::default(),
            deadline: defaults::deadline(),
            max_staleness: None,
            allow_orphaned_reads: false,
            write_hold: defaults::write_hold(),
            nearest: NearestSettings::default(),
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
        validate::validate(self)
    }

    /// The statement mode of `node`: its own, else the config's.
    pub fn statement_mode_of(&self, node: &NodeConfig) -> StatementMode {
        node.statement_mode.unwrap_or(self.statement_mode)
    }

    /// Reads the original sketch's environment variables; see the README.
    pub fn from_env() -> Result<Self, ConfigError> {
        env::from_env(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup`
    /// (handy in tests and for other configuration sources).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        env::from_env(lookup)
    }
}

impl NodeConfig {
    /// A node with this name, region, connection string and role.
    pub fn new(
        name: impl Into<String>,
        region: impl Into<String>,
        url: impl Into<ConnectionString>,
        role: Role,
    ) -> Self {
        Self {
            name: name.into(),
            region: region.into(),
            url: url.into(),
            role,
            statement_mode: None,
        }
    }

    /// This node with its own statement mode (see
    /// [`NodeConfig::statement_mode`]).
    pub fn with_statement_mode(mut self, mode: StatementMode) -> Self {
        self.statement_mode = Some(mode);
        self
    }
}
