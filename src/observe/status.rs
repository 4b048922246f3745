//! [`Status`]: a plain copy of what the manager knows, for health endpoints,
//! metrics and logs.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::causal::lsn::Lsn;
use crate::config::{ReadStrategy, Role};
use crate::health::capability::{Capability, MissingCapability};
use crate::topology::{Lag, Orphan};

/// Every node's state at one moment.
///
/// Serializes (for a health endpoint) with durations and times in
/// humantime form (`"1s 200ms"`, cut to microseconds; times in RFC 3339); it holds no connection string,
/// user or password.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// One entry per configured node, in configuration order, then one per
    /// discovered node in use.
    pub nodes: Vec<NodeStatus>,
    /// The default read strategy.
    pub read_strategy: ReadStrategy,
    /// The service's region.
    pub local_region: String,
    /// The write target now, if one is known.
    pub write_target: Option<String>,
    /// Several nodes claim to be primary and fencing cannot choose.
    pub split_brain: bool,
    /// Whether the health monitor runs. False after `close`, or if it died
    /// (then every call fails with [`Error::monitor_stopped()`](crate::error::ErrorKind::MonitorStopped)).
    pub monitor_running: bool,
    /// Hedged reads and the read budget, counted since the manager started.
    pub hedging: HedgeCounts,
    /// Statements sent through the read path (`query`, `query_one`,
    /// `query_opt`, [`read()`](crate::DatabaseManager::read)) that can write
    /// or lock (`INSERT … RETURNING`, `SELECT … FOR UPDATE`, `nextval`, …),
    /// which therefore ran on the primary under the write rules, counted
    /// since the manager started. Not zero: some code calls a read method
    /// for a write; [`write()`](crate::DatabaseManager::write) says what it
    /// means (see the [reads guide](crate::guide::reads#statements-that-write)).
    pub writes_through_reads: u64,
}

/// Hedged reads and the read budget, counted since the manager started
/// (each count also arrives as an [`Event`](crate::status::Event) to subscribers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct HedgeCounts {
    /// Reads sent to a second node after the hedge delay.
    pub sent: u64,
    /// Hedges whose answer was used.
    pub won: u64,
    /// Reads not hedged because the budget was empty.
    pub refused: u64,
    /// Reads not retried after a failure because the budget was empty.
    pub retries_refused: u64,
    /// Times a node was found an outlier and marked suspect.
    pub outliers: u64,
    /// Connections of statements whose call was dropped mid-flight (a
    /// losing hedge, a caller's own timeout) returned to their pool once
    /// the statement ended.
    pub connections_kept: u64,
    /// Such connections discarded instead: the statement outlasted
    /// [`PoolSettings::recycle_timeout`](crate::config::PoolSettings::recycle_timeout)
    /// and was cancelled on the server (each costs a reconnect).
    pub connections_discarded: u64,
}

/// One node's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// The node's region.
    pub region: String,
    /// The role it reported at its last probe (the configured role before).
    pub role: Role,
    /// Reports itself primary but is not the write target (stale or
    /// undecidable): it serves neither reads nor writes.
    pub fenced: bool,
    /// A replica that follows no live primary on the write target's
    /// timeline, and why: it serves no bounded or causal read, and no read at
    /// all unless [`Config::allow_orphaned_reads`](crate::Config::allow_orphaned_reads).
    pub orphaned: Option<Orphan>,
    /// Its timeline, when known.
    pub timeline: Option<u32>,
    /// Capabilities this node cannot report (found on first contact, kept
    /// for the manager's life), each with the server's reason and what its
    /// absence disables. The node is healthy without them.
    pub missing_capabilities: Vec<MissingCapability>,
    /// A replica's last replayed commit time, as its server's clock tells
    /// it (`pg_last_xact_replay_timestamp()`); informational, routing never
    /// uses it.
    #[serde(with = "humantime_serde")]
    pub last_replay: Option<SystemTime>,
    /// Primary: WAL insert position; replica: replayed position.
    pub wal_position: Option<Lsn>,
    /// A replica's lag behind the primary, once both have been probed.
    pub lag: Option<Lag>,
    /// Smoothed probe round trip.
    #[serde(serialize_with = "crate::observe::micros::option")]
    pub rtt: Option<Duration>,
    /// Whether routing may use it: the monitor has it up, it is not fenced
    /// (nor an orphan, unless orphans serve reads), and no caller has
    /// reported it since.
    pub healthy: bool,
    /// A caller reported a failure the monitor has not yet checked.
    pub suspect: bool,
    /// The last probe error, kept until the node is healthy again.
    pub last_error: Option<String>,
    /// Time since the last probe finished; `None` before the first.
    #[serde(serialize_with = "crate::observe::micros::option")]
    pub last_probe_age: Option<Duration>,
    /// The node's connection pool.
    pub pool: PoolStatus,
    /// Found by topology discovery, not configured (see
    /// [`DiscoverySettings`](crate::config::DiscoverySettings)); its name is its
    /// instance identifier.
    pub discovered: bool,
}

/// A node's pool, as deadpool reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Idle connections.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// Connections not handed out for this long are closed
    /// ([`PoolSettings::idle_timeout`](crate::config::PoolSettings::idle_timeout));
    /// `None`: never.
    #[serde(serialize_with = "crate::observe::micros::option")]
    pub idle_timeout: Option<Duration>,
    /// No connection is handed out past this age
    /// ([`PoolSettings::max_lifetime`](crate::config::PoolSettings::max_lifetime),
    /// each connection's own limit up to
    /// [`max_lifetime_jitter`](crate::config::PoolSettings::max_lifetime_jitter)
    /// earlier); `None`: no limit.
    #[serde(serialize_with = "crate::observe::micros::option")]
    pub max_lifetime: Option<Duration>,
    /// Connections closed for idling past `idle_timeout`, since the
    /// manager started.
    pub closed_idle: u64,
    /// Connections closed for reaching their lifetime, since the manager
    /// started.
    pub closed_expired: u64,
}

impl Status {
    /// The write target, if it is healthy.
    pub fn primary(&self) -> Option<&NodeStatus> {
        let target = self.write_target.as_deref()?;
        self.nodes
            .iter()
            .find(|node| node.name == target && node.healthy)
    }

    /// Whether writes can be sent now: a running monitor and a healthy
    /// primary. Not a readiness probe (it turns false for the moments of
    /// every promotion, when writes are only held, and says nothing of
    /// reads); use [`DatabaseManager::readiness`](crate::DatabaseManager::readiness).
    pub fn can_write(&self) -> bool {
        self.monitor_running && self.primary().is_some()
    }

    /// Whether reads can be served: a running monitor and at least one
    /// healthy node (fenced nodes are not healthy).
    pub fn can_read(&self) -> bool {
        self.monitor_running && self.nodes.iter().any(|node| node.healthy)
    }

    /// Whether node `name` cannot report `capability` (in any role).
    pub fn lacks(&self, name: &str, capability: Capability) -> bool {
        self.node(name).is_some_and(|node| {
            node.missing_capabilities
                .iter()
                .any(|missing| missing.capability == capability)
        })
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.name == name)
    }
}
