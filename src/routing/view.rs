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
        // A staleness bound alone: one dense comparison a node; the write
        // target is always fresh.
        if let (Some(cutoff), None) = (self.cutoff, self.freshness.after) {
            if let Some(fresh) = self.snapshot.fresh_mask(cutoff) {
                let target = self.snapshot.primary.map_or(0, |index| 1u64 << index);
                return Some(usable & (fresh | target));
            }
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{clock, Role};
    use crate::routing::freshness::Freshness;
    use crate::topology::{NodeState, Orphan, Snapshot};

    /// The dense staleness mask says what the freshness rule says, node by
    /// node, for states before, at and after the epoch, unknown and
    /// orphaned, and cutoffs all around them.
    #[test]
    fn the_dense_mask_agrees_with_the_rule() {
        let mut rng = fastrand::Rng::with_seed(7);
        let states = (0..40).map(|_| NodeState::new(Role::Replica));
        let mut snapshot = Snapshot::initial(states, 0);
        let epoch = snapshot.epoch;
        let at = |ms: i64| match ms {
            ..0 => epoch.checked_sub(Duration::from_millis(ms.unsigned_abs())),
            _ => Some(clock::after(
                epoch,
                Duration::from_millis(ms.unsigned_abs()),
            )),
        };
        for round in 0..200 {
            for node in snapshot.nodes.iter_mut() {
                node.fresh_as_of = match rng.u8(..8) {
                    0 => None,
                    _ => at(rng.i64(-50..50)),
                };
                node.orphaned = (rng.u8(..6) == 0).then_some(Orphan::NotReceiving);
            }
            snapshot.derive_masks();
            let cutoff = at(rng.i64(0..50)).unwrap_or(epoch);
            let bound = Freshness {
                max_staleness: Some(Duration::from_millis(1)),
                after: None,
            };
            let mask = snapshot.fresh_mask(cutoff).expect("at or after the epoch");
            for (index, node) in snapshot.nodes.iter().enumerate() {
                let admitted = bound.admits(node, false, Some(cutoff));
                assert_eq!(
                    mask >> index & 1 == 1,
                    admitted,
                    "round {round}, node {index}"
                );
            }
        }
        let before = epoch.checked_sub(Duration::from_millis(1));
        if let Some(before) = before {
            assert_eq!(
                snapshot.fresh_mask(before),
                None,
                "the rule is asked instead"
            );
        }
    }
}
