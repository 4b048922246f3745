//! What one routing decision sees: the published snapshot, the callers'
//! suspect flags as loaded once for this decision, and the call's freshness
//! constraints, through the [`NodeView`] the strategies decide over.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::NearestSettings;
use crate::routing::freshness::Freshness;
use crate::routing::node_set::Members;
use crate::routing::strategy::NodeView;
use crate::topology::Snapshot;

/// A snapshot seen together with the callers' suspect flags (loaded once,
/// so one decision sees one state) and a call's freshness constraints.
#[derive(Debug, Clone)]
pub(crate) struct LiveView<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) suspects: Members,
    pub(crate) freshness: Freshness,
    pub(crate) nearest: &'a NearestSettings,
    /// The oldest freshness the staleness bound accepts, as of the moment of
    /// the decision (see `Freshness::cutoff`).
    pub(crate) cutoff: Option<Instant>,
}

impl LiveView<'_> {
    fn is_fresh(&self, index: usize) -> bool {
        let is_write_target = self.snapshot.primary == Some(index);
        self.freshness
            .admits(&self.snapshot.nodes[index], is_write_target, self.cutoff)
    }
}

impl NodeView for LiveView<'_> {
    fn len(&self) -> usize {
        self.snapshot.nodes.len()
    }

    fn is_up(&self, index: usize) -> bool {
        self.snapshot.is_routable(index) && !self.suspects.contains(index) && self.is_fresh(index)
    }

    fn is_local(&self, index: usize) -> bool {
        self.snapshot.nodes[index].is_local
    }

    fn usable_mask(&self) -> Option<u64> {
        if self.snapshot.nodes.len() > 64 {
            return None;
        }
        let mut usable = self.snapshot.routable & !self.suspects.first_word();
        if self.freshness.is_constrained() {
            let mut rest = usable;
            while rest != 0 {
                let index = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if !self.is_fresh(index) {
                    usable &= !(1 << index);
                }
            }
        }
        Some(usable)
    }

    fn local_mask(&self) -> u64 {
        self.snapshot.local
    }

    fn is_primary(&self, index: usize) -> bool {
        self.snapshot.primary == Some(index)
    }

    fn rtt(&self, index: usize) -> Option<Duration> {
        self.snapshot.nodes[index].rtt
    }

    fn rtt_ns(&self, index: usize) -> u64 {
        self.snapshot.rtt_ns.get(index).copied().unwrap_or(u64::MAX)
    }

    fn sorted_rtts(&self) -> Option<(&[u64], &[u8])> {
        let len = self.snapshot.nodes.len().min(64);
        Some((&self.snapshot.rtt_ns[..len], &self.snapshot.by_rtt[..len]))
    }

    fn level_mask(&self, level: usize, usable: u64) -> u64 {
        self.snapshot
            .levels
            .get(level)
            .map_or(0, |mask| mask & usable)
    }

    fn region_rank(&self, index: usize) -> Option<usize> {
        self.snapshot.nodes[index].region_rank
    }

    fn preferred_levels(&self) -> usize {
        self.nearest.preferred_regions.len()
    }

    fn window(&self) -> Duration {
        self.nearest.window
    }
}
