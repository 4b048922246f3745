//! The immutable snapshot of every node's state that routing reads.
//!
//! The health monitor is the single writer: it builds the next [`Snapshot`]
//! and publishes it whole through the hub. Routing loads the current one (no
//! lock, no allocation) and sees it through a live view (`src/view.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Role;
use crate::lsn::Lsn;
use crate::node::Node;

/// How far a replica is behind the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Lag {
    /// WAL bytes the primary has flushed that the replica has not replayed.
    pub bytes: u64,
    /// How long before the last probe the replica was last known to have
    /// everything the primary had: the time since the primary was last seen
    /// at or below the replica's replay position (for a caught-up replica,
    /// since the primary's last probe). Measured on pgrouter's clock, so
    /// never skewed by the servers' clocks. Reads with a staleness bound
    /// judge the same quantity again when they are routed.
    pub time: Duration,
}

/// What the monitor last concluded about one node.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    /// Whether the monitor considers the node usable.
    pub(crate) up: bool,
    /// The role the node reported (the configured role until it is probed).
    pub(crate) role: Role,
    /// Reports itself primary but is not the write target (a stale or
    /// undecidable primary): it serves neither reads nor writes.
    pub(crate) fenced: bool,
    /// The node's timeline, when known.
    pub(crate) timeline: Option<u32>,
    /// Primary: flushed WAL position; replica: replayed position.
    pub(crate) position: Option<Lsn>,
    /// Replicas only, once a primary position is known.
    pub(crate) lag: Option<Lag>,
    /// Replicas only: the instant as of which the replica is known to have
    /// everything the primary had (see `health/lag.rs`); `None` when that
    /// cannot be shown. Staleness is judged from it at decision time.
    pub(crate) fresh_as_of: Option<Instant>,
    /// Smoothed probe round trip.
    pub(crate) rtt: Option<Duration>,
    /// The last probe error, kept until the node is up again.
    pub(crate) last_error: Option<Arc<str>>,
    /// When the last probe finished.
    pub(crate) last_probe: Option<Instant>,
}

/// Every node's state, indexed like the manager's nodes.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) nodes: Box<[NodeState]>,
    /// The write target: the node that reports itself primary on the
    /// highest timeline seen.
    pub(crate) primary: Option<usize>,
    /// Several nodes claim to be primary and fencing cannot choose.
    pub(crate) split_brain: bool,
    /// Bit `i`: node `i` is up and not fenced (nodes 0 to 63).
    pub(crate) routable: u64,
    /// Bit `i`: node `i` is in the service's region (nodes 0 to 63).
    pub(crate) local: u64,
}

impl NodeState {
    /// A node before its first probe: up, in its configured role.
    pub(crate) fn new(role: Role) -> Self {
        Self {
            up: true,
            role,
            fenced: false,
            timeline: None,
            position: None,
            lag: None,
            fresh_as_of: None,
            rtt: None,
            last_error: None,
            last_probe: None,
        }
    }
}

impl Snapshot {
    /// The state before any probe: every node up in its configured role, so
    /// a service can start while the first probes run.
    pub(crate) fn initial(nodes: &[Node]) -> Self {
        let states = nodes.iter().map(|node| NodeState::new(node.role)).collect();
        let mut snapshot = Self {
            nodes: states,
            primary: nodes.iter().position(|node| node.role == Role::Primary),
            split_brain: false,
            routable: 0,
            local: mask_of(nodes.iter().map(|node| node.is_local)),
        };
        snapshot.derive_masks();
        snapshot
    }

    /// Recomputes `routable` after node states changed.
    pub(crate) fn derive_masks(&mut self) {
        self.routable = mask_of(self.nodes.iter().map(|node| node.up && !node.fenced));
    }
}

/// Bit `i` set when the `i`-th flag is (only the first 64 count).
fn mask_of(flags: impl Iterator<Item = bool>) -> u64 {
    flags
        .take(64)
        .enumerate()
        .fold(0, |mask, (index, flag)| mask | (u64::from(flag) << index))
}
