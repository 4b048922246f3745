//! What one routing decision sees: the published snapshot, the callers'
//! suspect flags as loaded once for this decision, and the call's freshness
//! constraints, through the [`NodeView`] the strategies decide over.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::NearestSettings;
use crate::routing::candidates::ReadSets;
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
    /// The staleness bound's cutoff, as of the moment of the decision.
    cutoff: Cutoff,
}

/// The oldest freshness a staleness bound accepts (see `Freshness::cutoff`),
/// in the form that judges it cheapest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cutoff {
    /// A bound alone, at most 64 nodes, and every routable node but the
    /// write target fresh as of this cutoff or later (the snapshot's
    /// `stalest`), as while nothing lags: nothing to judge per node.
    AllFresh(Instant),
    /// A bound alone, at most 64 nodes, some routable node possibly not
    /// fresh enough: the fresh nodes are a binary search away (see
    /// [`Snapshot::fresh_mask`]).
    Search(Instant),
    /// `None` without a bound, or when it reaches back further than an
    /// `Instant` can; or with a causal token beside the bound, or beyond
    /// 64 nodes: judged node by node by [`Freshness::admits`].
    At(Option<Instant>),
}

impl<'a> LiveView<'a> {
    /// The view of `snapshot` for a read with `freshness`; `now` is the
    /// moment of the decision, read once by the caller when the read has
    /// a staleness bound (else `None`; a bound without it admits every
    /// node whose freshness is known).
    #[inline(always)]
    pub(crate) fn new(
        snapshot: &'a Snapshot,
        suspects: Members,
        freshness: Freshness,
        nearest: &'a NearestSettings,
        now: Option<Instant>,
    ) -> Self {
        let cutoff = match now {
            Some(now) if freshness.max_staleness.is_some() => {
                Self::cutoff(snapshot, &freshness, now)
            }
            _ => Cutoff::At(None),
        };
        Self {
            snapshot,
            suspects,
            freshness,
            nearest,
            cutoff,
        }
    }

    /// The bound's cutoff at `now`: one subtraction from the clock's
    /// reading, then, for a bound alone, one comparison with the stalest
    /// routable node.
    #[inline]
    fn cutoff(snapshot: &Snapshot, freshness: &Freshness, now: Instant) -> Cutoff {
        let cutoff = freshness.cutoff(now);
        let (Some(at), None) = (cutoff, freshness.after) else {
            return Cutoff::At(cutoff);
        };
        if snapshot.nodes.len() > 64 {
            return Cutoff::At(cutoff);
        }
        match snapshot.stalest.is_some_and(|stalest| at <= stalest) {
            true => Cutoff::AllFresh(at),
            false => Cutoff::Search(at),
        }
    }

    /// The nodes of `mask` the freshness rule admits, node by node.
    #[inline(never)]
    fn fresh_of(&self, mask: u64) -> u64 {
        let mut fresh = mask;
        let mut rest = mask;
        while rest != 0 {
            let index = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if !self.is_fresh(index) {
                fresh &= !(1 << index);
            }
        }
        fresh
    }

    fn is_fresh(&self, index: usize) -> bool {
        let is_write_target = self.snapshot.primary == Some(index);
        match self.cutoff {
            Cutoff::AllFresh(at) | Cutoff::Search(at) => {
                self.freshness
                    .admits(&self.snapshot.nodes[index], is_write_target, Some(at))
            }
            Cutoff::At(cutoff) => {
                self.freshness
                    .admits(&self.snapshot.nodes[index], is_write_target, cutoff)
            }
        }
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

    #[inline(always)]
    fn usable_mask(&self) -> Option<u64> {
        if self.snapshot.nodes.len() > 64 {
            return None;
        }
        let mut usable = self.snapshot.routable & !self.suspects.first_word();
        match self.cutoff {
            // A staleness bound alone, every routable node fresh enough.
            Cutoff::AllFresh(_) => {}
            // A bound alone: a binary search over the sorted freshness.
            // The write target is always fresh.
            Cutoff::Search(at) => {
                usable &= self.snapshot.fresh_mask(at) | self.snapshot.reads.primary;
            }
            Cutoff::At(_) if self.freshness.is_constrained() => usable = self.fresh_of(usable),
            Cutoff::At(_) => {}
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

    #[inline]
    fn read_sets(&self) -> Option<&ReadSets> {
        Some(&self.snapshot.reads)
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

    use super::*;
    use crate::causal::lsn::{CausalToken, Lsn};
    use crate::config::{clock, ReadStrategy, Role};
    use crate::routing::strategy::pick_read;
    use crate::topology::{NodeState, Orphan};

    /// The dense staleness mask says what the freshness rule says, node by
    /// node, for unknown and orphaned nodes and cutoffs all around them.
    #[test]
    fn the_dense_mask_agrees_with_the_rule() {
        let mut rng = fastrand::Rng::with_seed(7);
        let states = (0..40).map(|_| NodeState::new(Role::Replica));
        let mut snapshot = Snapshot::initial(states, 0);
        let base = clock::after(Instant::now(), Duration::from_secs(60));
        let at = |ms: i64| match ms {
            ..0 => base - Duration::from_millis(ms.unsigned_abs()),
            _ => base + Duration::from_millis(ms.unsigned_abs()),
        };
        for round in 0..200 {
            for node in snapshot.nodes.iter_mut() {
                node.fresh_as_of = match rng.u8(..8) {
                    0 => None,
                    _ => Some(at(rng.i64(-50..50))),
                };
                node.orphaned = (rng.u8(..6) == 0).then_some(Orphan::NotReceiving);
            }
            snapshot.derive_masks();
            let cutoff = at(rng.i64(-60..60));
            let bound = Freshness {
                max_staleness: Some(Duration::from_millis(1)),
                after: None,
            };
            let mask = snapshot.fresh_mask(cutoff);
            for (index, node) in snapshot.nodes.iter().enumerate() {
                let admitted = bound.admits(node, false, Some(cutoff));
                assert_eq!(
                    mask >> index & 1 == 1,
                    admitted,
                    "round {round}, node {index}"
                );
            }
        }
    }

    /// A snapshot of `len` nodes (node 0 the primary, every third local,
    /// two preferred regions), with random health, freshness, orphans and
    /// round trips around `now`.
    fn random_snapshot(rng: &mut fastrand::Rng, len: usize, now: Instant) -> Snapshot {
        let states = (0..len).map(|index| {
            let role = if index == 0 {
                Role::Primary
            } else {
                Role::Replica
            };
            let rank = match rng.u8(..3) {
                0 => None,
                rank => Some(usize::from(rank - 1)),
            };
            NodeState::configured(role, index % 3 == 1, rank)
        });
        let mut snapshot =
            Snapshot::initial(states, 0).with_nearest_window(Duration::from_millis(15));
        for node in snapshot.nodes.iter_mut() {
            node.up = rng.u8(..8) != 0;
            node.fresh_as_of = match rng.u8(..8) {
                0 => None,
                // Mostly fresh: the bound below is 1 s.
                1 => Some(now - Duration::from_millis(rng.u64(1_000..2_000))),
                _ => Some(now - Duration::from_millis(rng.u64(..1_000))),
            };
            node.orphaned = (rng.u8(..10) == 0).then_some(Orphan::NotReceiving);
            node.rtt = match rng.u8(..6) {
                0 => None,
                _ => Some(Duration::from_millis(rng.u64(1..60))),
            };
        }
        snapshot.derive_masks();
        snapshot
    }

    /// The view's usable nodes agree with the freshness rule node by node,
    /// for bounds alone (with and without the shortcut for "every routable
    /// node fresh").
    #[test]
    fn usable_nodes_agree_with_the_rule() {
        let mut rng = fastrand::Rng::with_seed(17);
        let now = clock::after(Instant::now(), Duration::from_secs(3_600));
        let nearest = NearestSettings::default();
        let (mut all_fresh, mut searches) = (0, 0);
        for round in 0..2_000 {
            let len = rng.usize(1..=40);
            let snapshot = random_snapshot(&mut rng, len, now);
            let suspects = rng.u64(..) & rng.u64(..);
            let freshness = Freshness {
                max_staleness: match rng.u8(..4) {
                    0 => None,
                    1 => Some(Duration::from_millis(rng.u64(..3_000))),
                    _ => Some(Duration::from_secs(1)),
                },
                after: None,
            };
            let view = LiveView::new(
                &snapshot,
                Members::Word(suspects),
                freshness,
                &nearest,
                Some(now),
            );
            match view.cutoff {
                Cutoff::AllFresh(_) => all_fresh += 1,
                Cutoff::Search(_) => searches += 1,
                Cutoff::At(_) => assert!(freshness.max_staleness.is_none()),
            }
            let usable = view.usable_mask().expect("at most 64 nodes");
            let cutoff = freshness.cutoff(now);
            for (index, node) in snapshot.nodes.iter().enumerate() {
                let expected = snapshot.is_routable(index)
                    && suspects >> index & 1 == 0
                    && freshness.admits(node, snapshot.primary == Some(index), cutoff);
                assert_eq!(
                    usable >> index & 1 == 1,
                    expected,
                    "round {round}, node {index}"
                );
                assert_eq!(view.is_up(index), expected, "round {round}, node {index}");
            }
        }
        assert!(all_fresh > 100 && searches > 100, "{all_fresh} {searches}");
    }

    /// A bound alone finds every routable node fresh with one comparison
    /// while each of them is known fresh enough and none is an orphan.
    #[test]
    fn every_node_fresh_is_one_comparison() {
        let now = clock::after(Instant::now(), Duration::from_secs(3_600));
        let nearest = NearestSettings::default();
        let bound = Freshness {
            max_staleness: Some(Duration::from_secs(1)),
            after: None,
        };
        let states = (0..4).map(|index| match index {
            0 => NodeState::new(Role::Primary),
            _ => NodeState::new(Role::Replica),
        });
        let mut snapshot = Snapshot::initial(states, 0);
        let cutoff = |snapshot: &Snapshot| {
            LiveView::new(snapshot, Members::Word(0), bound, &nearest, Some(now)).cutoff
        };
        for node in snapshot.nodes[1..].iter_mut() {
            node.fresh_as_of = Some(now - Duration::from_millis(200));
        }
        snapshot.nodes[3].fresh_as_of = Some(now - Duration::from_millis(1_000));
        snapshot.derive_masks();
        assert_eq!(snapshot.stalest, Some(now - Duration::from_millis(1_000)));
        assert!(matches!(cutoff(&snapshot), Cutoff::AllFresh(_)));
        // One replica a millisecond too stale: the search.
        snapshot.nodes[3].fresh_as_of = Some(now - Duration::from_millis(1_001));
        snapshot.derive_masks();
        assert!(matches!(cutoff(&snapshot), Cutoff::Search(_)));
        // ... unless it is not routable.
        snapshot.nodes[3].up = false;
        snapshot.derive_masks();
        assert!(matches!(cutoff(&snapshot), Cutoff::AllFresh(_)));
        // An orphan, or a replica of unknown freshness: the search.
        snapshot.nodes[2].orphaned = Some(Orphan::NotReceiving);
        snapshot.serve_orphans = true;
        snapshot.derive_masks();
        assert_eq!(snapshot.stalest, None);
        assert!(matches!(cutoff(&snapshot), Cutoff::Search(_)));
        snapshot.nodes[2].orphaned = None;
        snapshot.nodes[1].fresh_as_of = None;
        snapshot.derive_masks();
        assert!(matches!(cutoff(&snapshot), Cutoff::Search(_)));
        // The primary's freshness does not count: it is always fresh.
        snapshot.nodes[1].fresh_as_of = Some(now);
        snapshot.derive_masks();
        assert!(matches!(cutoff(&snapshot), Cutoff::AllFresh(_)));
    }

    /// A bound that reaches back further than an `Instant` can, or a causal
    /// token beside it, is judged node by node; a bound alone is searched.
    #[test]
    fn other_bounds_are_judged_per_node() {
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut snapshot = random_snapshot(&mut rng, 5, now);
        // A routable replica of unknown freshness: not every node is fresh.
        snapshot.nodes[1].up = true;
        snapshot.nodes[1].fresh_as_of = None;
        snapshot.derive_masks();
        let nearest = NearestSettings::default();
        let view = |freshness| {
            LiveView::new(&snapshot, Members::Word(0), freshness, &nearest, Some(now)).cutoff
        };
        let long = Duration::from_secs(86_400 * 2);
        let bounded = |bound| Freshness {
            max_staleness: Some(bound),
            after: None,
        };
        assert_eq!(view(bounded(long)), Cutoff::Search(now - long));
        assert_eq!(view(bounded(Duration::MAX)), Cutoff::At(None));
        let token = Freshness {
            after: Some(CausalToken::new(Lsn(1))),
            ..bounded(Duration::from_secs(1))
        };
        assert!(matches!(view(token), Cutoff::At(Some(_))));
        assert_eq!(view(Freshness::default()), Cutoff::At(None));
        assert_eq!(view(bounded(Duration::ZERO)), Cutoff::Search(now));
    }

    /// The same view without its candidate sets: the decision works them
    /// out from the masks.
    struct Unplanned<'a>(&'a LiveView<'a>);

    impl NodeView for Unplanned<'_> {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn is_up(&self, index: usize) -> bool {
            self.0.is_up(index)
        }
        fn is_local(&self, index: usize) -> bool {
            self.0.is_local(index)
        }
        fn is_primary(&self, index: usize) -> bool {
            self.0.is_primary(index)
        }
        fn rtt(&self, index: usize) -> Option<Duration> {
            self.0.rtt(index)
        }
        fn region_rank(&self, index: usize) -> Option<usize> {
            self.0.region_rank(index)
        }
        fn preferred_levels(&self) -> usize {
            self.0.preferred_levels()
        }
        fn window(&self) -> Duration {
            self.0.window()
        }
        fn usable_mask(&self) -> Option<u64> {
            self.0.usable_mask()
        }
        fn local_mask(&self) -> u64 {
            self.0.local_mask()
        }
        fn sorted_rtts(&self) -> Option<(&[u64], &[u8])> {
            self.0.sorted_rtts()
        }
        fn level_mask(&self, level: usize, usable: u64) -> u64 {
            self.0.level_mask(level, usable)
        }
    }

    /// With the snapshot's candidate sets, every strategy chooses what it
    /// chooses without them, draw for draw: suspects, stale nodes, an
    /// excluded node, preferred regions, and a window the sets were not
    /// worked out for.
    #[test]
    fn the_sets_choose_what_the_masks_choose() {
        let mut rng = fastrand::Rng::with_seed(29);
        let now = clock::after(Instant::now(), Duration::from_secs(3_600));
        for round in 0..3_000u64 {
            let len = rng.usize(1..=64);
            let snapshot = random_snapshot(&mut rng, len, now);
            let nearest = NearestSettings {
                window: match rng.u8(..5) {
                    0 => Duration::from_millis(3),
                    _ => Duration::from_millis(15),
                },
                preferred_regions: match rng.u8(..3) {
                    0 => Vec::new(),
                    1 => vec!["a".into()],
                    _ => vec!["a".into(), "b".into()],
                },
            };
            let suspects = match rng.u8(..3) {
                0 => rng.u64(..) & rng.u64(..) & rng.u64(..),
                _ => 0,
            };
            let freshness = Freshness {
                max_staleness: (rng.bool()).then(|| Duration::from_secs(1)),
                after: None,
            };
            let exclude = rng.bool().then(|| rng.usize(..len));
            let view = LiveView::new(
                &snapshot,
                Members::Word(suspects),
                freshness,
                &nearest,
                Some(now),
            );
            for strategy in ReadStrategy::ALL {
                let (mut a, mut b) = (
                    fastrand::Rng::with_seed(round),
                    fastrand::Rng::with_seed(round),
                );
                for _ in 0..4 {
                    assert_eq!(
                        pick_read(strategy, &view, exclude, &mut a),
                        pick_read(strategy, &Unplanned(&view), exclude, &mut b),
                        "round {round}, {strategy}"
                    );
                }
            }
        }
    }
}
