//! The immutable snapshot of every node's state that routing reads.
//!
//! The health monitor is the single writer: it builds the next [`Snapshot`]
//! and publishes it whole through the hub. Routing loads the current one (no
//! lock, no allocation) and sees it through a live view (`routing/view.rs`).

pub(crate) mod discovery;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::causal::lsn::Lsn;
use crate::config::Role;
use crate::health::capability::MissingCapability;
use crate::routing::candidates::{ReadSets, Topology};

/// How far a replica is behind the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Lag {
    /// WAL bytes the primary has written that the replica has not replayed
    /// (0 where only the platform reports lag, in time: Aurora).
    pub bytes: u64,
    /// How long before the last probe the replica was last known to have
    /// everything the primary had: the time since the primary was last seen
    /// at or below the replica's replay position (for a caught-up replica,
    /// since the primary's last probe). Measured on pgrouter's clock, so
    /// never skewed by the servers' clocks. Reads with a staleness bound
    /// judge the same quantity again when they are routed.
    #[serde(serialize_with = "crate::observe::micros::serialize")]
    pub time: Duration,
}

/// Why a replica is orphaned: it serves neither bounded nor causal reads
/// (nothing shows it has the primary's latest writes), nor, unless
/// [`Config::allow_orphaned_reads`](crate::Config::allow_orphaned_reads)
/// says so, any read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
#[non_exhaustive]
pub enum Orphan {
    /// Its WAL receiver does not run: it is not streaming from any primary
    /// (e.g. its primary died and it was not repointed).
    NotReceiving,
    /// It is on another timeline than the write target: it follows an old
    /// primary, or one that was failed over, and its positions compare with
    /// nothing the primary writes.
    OtherTimeline {
        /// The replica's timeline.
        timeline: u32,
        /// The write target's timeline.
        primary_timeline: u32,
    },
}

impl std::fmt::Display for Orphan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Orphan::NotReceiving => f.write_str("its WAL receiver is not running"),
            Orphan::OtherTimeline {
                timeline,
                primary_timeline,
            } => write!(
                f,
                "it is on timeline {timeline}, the primary on timeline {primary_timeline}"
            ),
        }
    }
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
    /// Its cluster's system identifier (`pg_control_system()`), when known.
    pub(crate) system: Option<u64>,
    /// Primary: WAL insert position; replica: replayed position.
    pub(crate) position: Option<Lsn>,
    /// A replica's WAL receiver runs (a primary: true).
    pub(crate) receiving: bool,
    /// A replica that follows no live primary on the write target's timeline.
    pub(crate) orphaned: Option<Orphan>,
    /// A replica's last replayed commit time, on the server's clock (status
    /// only).
    pub(crate) replayed_at: Option<SystemTime>,
    /// Capabilities the node turned out not to have.
    pub(crate) missing: Arc<[MissingCapability]>,
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
    /// A replica whose platform reports lag in time (Aurora): fresh as of
    /// its last probe's send instant less that lag.
    pub(crate) platform_fresh_as_of: Option<Instant>,
    /// A discovery slot with no node in it (never filled, or its instance
    /// was removed): never routed to, not in status.
    pub(crate) vacant: bool,
    /// The node is in the service's region.
    pub(crate) is_local: bool,
    /// The node's region's place in `nearest.preferred_regions`.
    pub(crate) region_rank: Option<usize>,
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
    /// Orphaned replicas serve unbounded reads (the configuration opts in).
    pub(crate) serve_orphans: bool,
    /// Node `i`'s smoothed round trip in nanoseconds, `u64::MAX` while not
    /// measured (nodes 0 to 63): the nearest strategy reads these densely.
    pub(crate) rtt_ns: [u64; 64],
    /// The node indexes (nodes 0 to 63) ordered by `rtt_ns`, fastest first,
    /// unmeasured last: the nearest strategy stops at the window's edge.
    pub(crate) by_rtt: [u8; 64],
    /// Entry `k`, bit `i`: node `i` is in the `k`-th preferred region.
    pub(crate) levels: Box<[u64]>,
    /// The `fresh_as_of` of nodes 0 to 63 that count for a staleness bound
    /// (`None` when unknown, or for an orphan), freshest first, `None`
    /// last.
    pub(crate) fresh_sorted: [Option<Instant>; 64],
    /// How many entries of `fresh_sorted` are known (not `None`).
    pub(crate) fresh_known: usize,
    /// Entry `k`: the nodes of the `k` freshest entries of `fresh_sorted`,
    /// as a mask; the nodes fresh as of a cutoff are the prefix that
    /// reaches it (see [`Snapshot::fresh_mask`]).
    pub(crate) fresh_prefix: [u64; 65],
    /// The oldest `fresh_as_of` of the routable nodes other than the
    /// write target (nodes 0 to 63); `None` when one of them has none or
    /// is an orphan, or when there are none. A staleness bound whose
    /// cutoff is at or before it finds every routable node fresh with one
    /// comparison.
    pub(crate) stalest: Option<Instant>,
    /// The nearest strategy's window, once the hub has said it (`reads`
    /// then has the nearest strategy's sets).
    pub(crate) nearest_window: Option<Duration>,
    /// Each read strategy's candidates (nodes 0 to 63), derived with the
    /// masks above.
    pub(crate) reads: ReadSets,
}

impl NodeState {
    /// A node before its first probe: up, in its configured role.
    pub(crate) fn new(role: Role) -> Self {
        Self {
            up: true,
            role,
            fenced: false,
            timeline: None,
            system: None,
            position: None,
            receiving: true,
            orphaned: None,
            replayed_at: None,
            missing: Arc::from([]),
            lag: None,
            fresh_as_of: None,
            rtt: None,
            last_error: None,
            last_probe: None,
            platform_fresh_as_of: None,
            vacant: false,
            is_local: false,
            region_rank: None,
        }
    }

    /// A configured node's state before its first probe: up in its
    /// configured `role`.
    pub(crate) fn configured(role: Role, is_local: bool, region_rank: Option<usize>) -> Self {
        Self {
            is_local,
            region_rank,
            ..Self::new(role)
        }
    }

    /// A discovery slot with no node in it.
    pub(crate) fn vacant() -> Self {
        Self {
            up: false,
            vacant: true,
            ..Self::new(Role::Replica)
        }
    }
}

impl Snapshot {
    /// The state before any probe: every node up in its configured role, so
    /// a service can start while the first probes run; then `vacant`
    /// discovery slots.
    pub(crate) fn initial(configured: impl Iterator<Item = NodeState>, vacant: usize) -> Self {
        let states: Box<[NodeState]> = configured
            .chain(std::iter::repeat_with(NodeState::vacant).take(vacant))
            .collect();
        let primary = states
            .iter()
            .position(|state| !state.vacant && state.role == Role::Primary);
        let mut snapshot = Self {
            nodes: states,
            primary,
            split_brain: false,
            routable: 0,
            local: 0,
            serve_orphans: false,
            rtt_ns: [u64::MAX; 64],
            by_rtt: [0; 64],
            levels: Box::from([]),
            fresh_sorted: [None; 64],
            fresh_known: 0,
            fresh_prefix: [0; 65],
            stalest: None,
            nearest_window: None,
            reads: ReadSets::default(),
        };
        snapshot.derive_masks();
        snapshot
    }

    /// This snapshot with the nearest strategy's `window`, so that its sets
    /// are worked out at every publish.
    pub(crate) fn with_nearest_window(mut self, window: Duration) -> Self {
        self.nearest_window = Some(window);
        self.derive_masks();
        self
    }

    /// Recomputes what is derived from the node states after they changed:
    /// the masks, the dense freshness stamps and round trips, and each
    /// read strategy's candidates.
    pub(crate) fn derive_masks(&mut self) {
        let routable = mask_of((0..self.nodes.len()).map(|i| self.is_routable(i)));
        self.routable = routable;
        // An orphan shows nothing about the primary's writes.
        let fresh: [Option<Instant>; 64] = std::array::from_fn(|index| {
            let node = self.nodes.get(index)?;
            node.fresh_as_of.filter(|_| node.orphaned.is_none())
        });
        let dense = self.nodes.len().min(64);
        let mut by_fresh: [u8; 64] = std::array::from_fn(|i| u8::try_from(i).unwrap_or(u8::MAX));
        by_fresh[..dense]
            .sort_unstable_by_key(|&index| std::cmp::Reverse(fresh[usize::from(index)]));
        self.fresh_known = fresh[..dense].iter().flatten().count();
        let mut mask = 0;
        for (k, &index) in by_fresh[..dense].iter().enumerate() {
            self.fresh_sorted[k] = fresh[usize::from(index)];
            mask |= 1u64 << index;
            self.fresh_prefix[k + 1] = mask;
        }
        self.local = mask_of(self.nodes.iter().map(|node| node.is_local && !node.vacant));
        for (slot, node) in self.rtt_ns.iter_mut().zip(self.nodes.iter()) {
            *slot = node.rtt.map_or(u64::MAX, |rtt| {
                u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX - 1)
            });
        }
        for (position, slot) in self.by_rtt.iter_mut().enumerate() {
            *slot = u8::try_from(position).unwrap_or(u8::MAX);
        }
        let rtts = self.rtt_ns;
        self.by_rtt[..dense].sort_by_key(|&index| rtts[usize::from(index)]);
        let levels = self
            .nodes
            .iter()
            .filter_map(|node| node.region_rank)
            .max()
            .map_or(0, |highest| highest + 1);
        if self.levels.len() != levels {
            self.levels = vec![0; levels].into_boxed_slice();
        }
        for (level, mask) in self.levels.iter_mut().enumerate() {
            *mask = mask_of(
                self.nodes
                    .iter()
                    .map(|node| !node.vacant && node.region_rank == Some(level)),
            );
        }
        let target = self
            .primary
            .filter(|&index| index < 64)
            .map_or(0, |index| 1u64 << index);
        self.stalest = self.oldest_freshness(routable & !target);
        self.reads = ReadSets::build(Topology {
            routable,
            local: self.local,
            primary: self.primary,
            levels: &self.levels,
            rtt_ns: &self.rtt_ns[..dense],
            by_rtt: &self.by_rtt[..dense],
            window: self.nearest_window,
        });
    }

    /// The oldest `fresh_as_of` of the nodes of `mask` (0 to 63); `None`
    /// when one of them has none or is an orphan, or when `mask` is empty.
    fn oldest_freshness(&self, mask: u64) -> Option<Instant> {
        let mut oldest: Option<Instant> = None;
        for (index, node) in self.nodes.iter().enumerate().take(64) {
            if mask >> index & 1 == 1 {
                let as_of = node.fresh_as_of.filter(|_| node.orphaned.is_none())?;
                oldest = Some(oldest.map_or(as_of, |oldest| oldest.min(as_of)));
            }
        }
        oldest
    }

    /// Bit `i`: node `i` was fresh as of `cutoff` or later, and is not an
    /// orphan (nodes 0 to 63). The stalest few known entries one by one (a
    /// replica or two lagging: as many comparisons), the rest by a binary
    /// search.
    #[inline]
    pub(crate) fn fresh_mask(&self, cutoff: Instant) -> u64 {
        let sorted = &self.fresh_sorted[..self.fresh_known.min(64)];
        let is_fresh = |as_of: &Option<Instant>| *as_of >= Some(cutoff);
        // Every entry from `stale` on is stale.
        let mut stale = sorted.len();
        for as_of in sorted.iter().rev().take(4) {
            if is_fresh(as_of) {
                return self.fresh_prefix[stale];
            }
            stale -= 1;
        }
        let fresh = sorted[..stale].partition_point(is_fresh);
        self.fresh_prefix[fresh]
    }

    /// Filled, up, not fenced, and not an orphan (unless orphans serve
    /// reads).
    pub(crate) fn is_routable(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        !node.vacant && node.up && !node.fenced && (node.orphaned.is_none() || self.serve_orphans)
    }
}

/// Bit `i` set when the `i`-th flag is (only the first 64 count).
fn mask_of(flags: impl Iterator<Item = bool>) -> u64 {
    flags
        .take(64)
        .enumerate()
        .fold(0, |mask, (index, flag)| mask | (u64::from(flag) << index))
}
