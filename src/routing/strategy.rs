//! Read strategies as pure functions over a view of the nodes.
//!
//! Nothing here waits, locks or allocates. Up to 64 nodes a view hands over a
//! bitmask of the usable nodes and a decision is a few bit operations, over
//! candidate sets worked out when the snapshot was published (see
//! `candidates.rs`) where the view has them; larger views (and the tests'
//! plain views) are walked node by node. Either way one eligible node is
//! picked uniformly with the caller's random number generator.

use std::time::Duration;

use crate::config::ReadStrategy;
use crate::routing::candidates::{bits, choose_bit, near_sorted, ReadSets};

/// What a routing decision may know about the nodes.
pub(crate) trait NodeView {
    /// How many nodes there are.
    fn len(&self) -> usize;
    /// Whether the node may take calls now.
    fn is_up(&self, index: usize) -> bool;
    /// Whether the node is in the service's own region.
    fn is_local(&self, index: usize) -> bool;
    /// Whether the node is the primary now.
    fn is_primary(&self, index: usize) -> bool;
    /// The node's smoothed round trip, once measured.
    fn rtt(&self, index: usize) -> Option<Duration>;
    /// The node's region's place in the preferred regions, if listed.
    fn region_rank(&self, index: usize) -> Option<usize>;
    /// How many preferred regions there are.
    fn preferred_levels(&self) -> usize;
    /// The nearest strategy's latency window.
    fn window(&self) -> Duration;
    /// Bit `i` set when node `i` is up, for views that can say so at once
    /// (at most 64 nodes); `None` to decide node by node.
    fn usable_mask(&self) -> Option<u64> {
        None
    }
    /// Bit `i` set when node `i` is local (with [`NodeView::usable_mask`]).
    fn local_mask(&self) -> u64 {
        0
    }
    /// [`NodeView::rtt`] in nanoseconds, `u64::MAX` when not measured; a
    /// view may keep these in a dense array.
    fn rtt_ns(&self, index: usize) -> u64 {
        self.rtt(index).map_or(u64::MAX, |rtt| {
            u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX - 1)
        })
    }
    /// Every node's [`NodeView::rtt_ns`] in one dense slice, and the node
    /// indexes ordered by it, fastest first (at most 64 nodes), for views
    /// that keep them so; `None` to ask node by node.
    fn sorted_rtts(&self) -> Option<(&[u64], &[u8])> {
        None
    }
    /// The nodes of `usable` in the `level`-th preferred region.
    fn level_mask(&self, level: usize, usable: u64) -> u64 {
        bits(usable)
            .filter(|&index| self.region_rank(index) == Some(level))
            .fold(0, |mask, index| mask | (1 << index))
    }
    /// Each strategy's candidates while every node is usable, for views
    /// that keep them (with [`NodeView::usable_mask`], whose nodes must all
    /// be among `routable`); `None` to work them out per decision.
    fn read_sets(&self) -> Option<&ReadSets> {
        None
    }
}

/// Chooses the node for a read, skipping `exclude` (a node that just failed).
/// `None` when no node is eligible.
#[inline(always)]
pub(crate) fn pick_read(
    strategy: ReadStrategy,
    view: &impl NodeView,
    exclude: Option<usize>,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    if let Some(mask) = view.usable_mask() {
        let excluded = exclude
            .filter(|&index| index < 64)
            .map_or(0, |index| 1 << index);
        let usable = mask & !excluded;
        return match view.read_sets() {
            Some(sets) => pick_from_sets(strategy, view, sets, usable, rng),
            None => pick_read_masked(strategy, view, usable, rng),
        };
    }
    pick_read_walked(strategy, view, exclude, rng)
}

/// [`pick_read`] node by node, for views without a bitmask.
#[inline(never)]
fn pick_read_walked(
    strategy: ReadStrategy,
    view: &impl NodeView,
    exclude: Option<usize>,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let usable = |index: usize| view.is_up(index) && Some(index) != exclude;
    match strategy {
        ReadStrategy::RegionalPreferred => pick_uniform(view.len(), rng, |index| {
            usable(index) && view.is_local(index)
        })
        .or_else(|| pick_uniform(view.len(), rng, usable)),
        ReadStrategy::GlobalRandom => pick_uniform(view.len(), rng, usable),
        ReadStrategy::PrimaryOnly => pick_primary(view).filter(|&index| Some(index) != exclude),
        ReadStrategy::Nearest => pick_nearest(view, rng, usable),
    }
}

/// [`pick_read`] over the view's candidate sets: each strategy's set
/// intersected with the usable nodes, then one draw. What
/// [`pick_read_masked`] chooses, draw for draw, without working out per
/// decision what the snapshot already knows.
#[inline(always)]
fn pick_from_sets(
    strategy: ReadStrategy,
    view: &impl NodeView,
    sets: &ReadSets,
    usable: u64,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    match strategy {
        ReadStrategy::RegionalPreferred => sets
            .local
            .choose(usable, rng)
            .or_else(|| sets.routable.choose(usable, rng)),
        ReadStrategy::GlobalRandom => sets.routable.choose(usable, rng),
        ReadStrategy::PrimaryOnly => {
            (usable & sets.primary != 0).then(|| sets.primary.trailing_zeros() as usize)
        }
        ReadStrategy::Nearest if sets.window != Some(view.window()) => {
            pick_read_masked(strategy, view, usable, rng)
        }
        ReadStrategy::Nearest => {
            let preferred = sets.levels.iter().take(view.preferred_levels());
            preferred
                .chain(std::iter::once(&sets.everywhere))
                .find_map(|level| {
                    let in_level = usable & level.members;
                    if in_level & level.fastest != 0 {
                        // The level's fastest is usable: its near nodes
                        // are the set's, less those not usable now.
                        return level.near.choose(in_level, rng);
                    }
                    // It is not (or no node of the level is): walk.
                    let window = u64::try_from(view.window().as_nanos()).unwrap_or(u64::MAX);
                    choose_bit(near_of(view, in_level, window)?, rng)
                })
        }
    }
}

/// [`pick_read`] over a bitmask of usable nodes: a few instructions instead
/// of a walk over every node.
#[inline(never)]
fn pick_read_masked(
    strategy: ReadStrategy,
    view: &impl NodeView,
    usable: u64,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    match strategy {
        ReadStrategy::RegionalPreferred => {
            choose_bit(usable & view.local_mask(), rng).or_else(|| choose_bit(usable, rng))
        }
        ReadStrategy::GlobalRandom => choose_bit(usable, rng),
        ReadStrategy::PrimaryOnly => (0..view.len())
            .find(|&index| view.is_primary(index))
            .filter(|&index| usable & (1 << index) != 0),
        ReadStrategy::Nearest => {
            let levels = view.preferred_levels();
            let window = u64::try_from(view.window().as_nanos()).unwrap_or(u64::MAX);
            (0..=levels).find_map(|level| {
                let in_level = match level == levels {
                    true => usable,
                    false => view.level_mask(level, usable),
                };
                choose_bit(near_of(view, in_level, window)?, rng)
            })
        }
    }
}

/// The nodes of `in_level` within `window` (ns) of its fastest (see
/// `near_sorted`), from the view's sorted round trips if it keeps them;
/// `None` when `in_level` is empty.
#[inline(never)]
fn near_of(view: &impl NodeView, in_level: u64, window: u64) -> Option<u64> {
    match view.sorted_rtts() {
        Some((rtts, order)) => near_sorted(rtts, order, in_level, window),
        None => near_by_node(view, in_level, window),
    }
}

/// [`near_sorted`], asking the view node by node.
fn near_by_node(view: &impl NodeView, in_level: u64, window: u64) -> Option<u64> {
    let fastest = bits(in_level).map(|i| view.rtt_ns(i)).min()?;
    Some(match fastest {
        u64::MAX => in_level,
        fastest => {
            let limit = fastest.saturating_add(window).min(u64::MAX - 1);
            bits(in_level)
                .filter(|&i| view.rtt_ns(i) <= limit)
                .fold(0u64, |mask, index| mask | (1 << index))
        }
    })
}

/// Level by level (each preferred region in order, then every region):
/// among the usable nodes of the level, uniformly among those within the
/// window of the fastest. Nodes not yet measured count only when no node of
/// the level is.
fn pick_nearest(
    view: &impl NodeView,
    rng: &mut fastrand::Rng,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let levels = view.preferred_levels();
    (0..=levels).find_map(|level| {
        let in_level = |index: usize| {
            usable(index) && (level == levels || view.region_rank(index) == Some(level))
        };
        let fastest = (0..view.len())
            .filter(|&i| in_level(i))
            .filter_map(|i| view.rtt(i))
            .min();
        let near = |i: usize| in_level(i) && is_near(fastest, view.rtt(i), view.window());
        pick_uniform(view.len(), rng, near)
    })
}

/// Within `window` of the fastest; unmeasured nodes count only when no node
/// of the level is measured.
fn is_near(fastest: Option<Duration>, rtt: Option<Duration>, window: Duration) -> bool {
    match (fastest, rtt) {
        (Some(fastest), Some(rtt)) => rtt <= fastest.saturating_add(window),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// The node writes go to: the primary, when it is up.
pub(crate) fn pick_primary(view: &impl NodeView) -> Option<usize> {
    (0..view.len()).find(|&index| view.is_primary(index) && view.is_up(index))
}

/// Uniform choice among the indexes in `0..len` that satisfy `eligible`:
/// count, then walk again to the chosen one.
fn pick_uniform(
    len: usize,
    rng: &mut fastrand::Rng,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let count = (0..len).filter(|&index| eligible(index)).count();
    if count == 0 {
        return None;
    }
    let chosen = rng.usize(..count);
    (0..len).filter(|&index| eligible(index)).nth(chosen)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain view for tests: (up, local, primary) per node, plus round
    /// trips and region ranks for the nearest strategy.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct FixedView(
        pub(crate) Vec<(bool, bool, bool)>,
        pub(crate) Vec<(Option<u64>, Option<usize>)>,
        pub(crate) usize,
    );

    impl NodeView for FixedView {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn is_up(&self, index: usize) -> bool {
            self.0[index].0
        }
        fn is_local(&self, index: usize) -> bool {
            self.0[index].1
        }
        fn is_primary(&self, index: usize) -> bool {
            self.0[index].2
        }
        fn rtt(&self, index: usize) -> Option<Duration> {
            self.1
                .get(index)
                .and_then(|n| n.0)
                .map(Duration::from_millis)
        }
        fn region_rank(&self, index: usize) -> Option<usize> {
            self.1.get(index).and_then(|n| n.1)
        }
        fn preferred_levels(&self) -> usize {
            self.2
        }
        fn window(&self) -> Duration {
            Duration::from_millis(15)
        }
    }

    const UP: bool = true;
    const DOWN: bool = false;
    const LOCAL: bool = true;
    const REMOTE: bool = false;

    /// primary (remote), replica (local), replica (remote)
    fn three(up: [bool; 3]) -> FixedView {
        FixedView(
            vec![
                (up[0], REMOTE, true),
                (up[1], LOCAL, false),
                (up[2], REMOTE, false),
            ],
            Vec::new(),
            0,
        )
    }

    /// The same view, answering with bitmasks: the fast path; with
    /// candidate sets worked out as a snapshot's are, the fastest.
    struct Masked<'a>(&'a FixedView, Option<ReadSets>);

    impl<'a> Masked<'a> {
        /// With sets over `routable`: the up nodes, or every node (then
        /// the down ones are left out per decision).
        fn planned(view: &'a FixedView, routable: u64) -> Self {
            let len = view.len();
            let rtt_ns: Vec<u64> = (0..len).map(|i| view.rtt_ns(i)).collect();
            let mut by_rtt: Vec<u8> = (0..len as u8).collect();
            by_rtt.sort_by_key(|&i| rtt_ns[usize::from(i)]);
            let levels: Vec<u64> = (0..view.preferred_levels())
                .map(|level| mask(len, |i| view.region_rank(i) == Some(level)))
                .collect();
            let sets = ReadSets::build(crate::routing::candidates::Topology {
                routable,
                local: mask(len, |i| view.is_local(i)),
                primary: (0..len).find(|&i| view.is_primary(i)),
                levels: &levels,
                rtt_ns: &rtt_ns,
                by_rtt: &by_rtt,
                window: Some(view.window()),
            });
            Self(view, Some(sets))
        }
    }

    impl NodeView for Masked<'_> {
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
            (self.len() <= 64).then(|| mask(self.len(), |i| self.is_up(i)))
        }
        fn local_mask(&self) -> u64 {
            mask(self.len(), |i| self.is_local(i))
        }
        fn read_sets(&self) -> Option<&ReadSets> {
            self.1.as_ref()
        }
    }

    fn mask(len: usize, flag: impl Fn(usize) -> bool) -> u64 {
        (0..len).filter(|&i| flag(i)).fold(0, |m, i| m | (1 << i))
    }

    fn counts(strategy: ReadStrategy, view: &impl NodeView, exclude: Option<usize>) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = vec![0; view.len()];
        for _ in 0..3000 {
            if let Some(index) = pick_read(strategy, view, exclude, &mut rng) {
                counts[index] += 1;
            }
        }
        counts
    }

    /// Choices node by node; every test also checks that the bitmask path
    /// chooses among the same nodes with about the same frequencies, and
    /// that the candidate sets choose exactly what the bitmasks do.
    fn picks(strategy: ReadStrategy, view: &FixedView, exclude: Option<usize>) -> Vec<usize> {
        let walked = counts(strategy, view, exclude);
        let masked = counts(strategy, &Masked(view, None), exclude);
        let up = mask(view.len(), |i| view.is_up(i));
        let every = mask(view.len(), |_| true);
        for routable in [up, every] {
            let planned = counts(strategy, &Masked::planned(view, routable), exclude);
            assert_eq!(planned, masked, "{strategy}, routable {routable:b}");
        }
        for (w, m) in walked.iter().zip(&masked) {
            assert_eq!(
                *w == 0,
                *m == 0,
                "{strategy}: walked {walked:?}, masked {masked:?}"
            );
            assert!(
                w.abs_diff(*m) < 300,
                "{strategy}: walked {walked:?}, masked {masked:?}"
            );
        }
        walked
    }

    #[test]
    fn regional_preferred_stays_local_while_the_local_node_is_up() {
        assert_eq!(
            picks(ReadStrategy::RegionalPreferred, &three([UP; 3]), None),
            [0, 3000, 0]
        );
    }

    #[test]
    fn regional_preferred_falls_back_to_any_healthy_node() {
        let counts = picks(
            ReadStrategy::RegionalPreferred,
            &three([UP, DOWN, UP]),
            None,
        );
        assert_eq!(counts[1], 0);
        assert!(counts[0] > 1300 && counts[2] > 1300, "{counts:?}");
    }

    #[test]
    fn regional_preferred_without_a_local_node_uses_every_healthy_node() {
        let view = FixedView(vec![(UP, REMOTE, true), (UP, REMOTE, false)], Vec::new(), 0);
        let counts = picks(ReadStrategy::RegionalPreferred, &view, None);
        assert!(counts[0] > 1300 && counts[1] > 1300, "{counts:?}");
    }

    #[test]
    fn regional_preferred_skips_the_excluded_local_node() {
        let counts = picks(ReadStrategy::RegionalPreferred, &three([UP; 3]), Some(1));
        assert_eq!(counts[1], 0);
        assert_eq!(counts[0] + counts[2], 3000);
    }

    #[test]
    fn global_random_is_uniform_over_healthy_nodes() {
        let counts = picks(ReadStrategy::GlobalRandom, &three([UP; 3]), None);
        for count in &counts {
            assert!((850..1150).contains(count), "{counts:?}");
        }
        assert_eq!(
            picks(ReadStrategy::GlobalRandom, &three([UP, DOWN, DOWN]), None),
            [3000, 0, 0]
        );
    }

    #[test]
    fn no_healthy_node_gives_none() {
        let mut rng = fastrand::Rng::with_seed(1);
        for strategy in ReadStrategy::ALL {
            assert_eq!(pick_read(strategy, &three([DOWN; 3]), None, &mut rng), None);
        }
        let empty = FixedView::default();
        assert_eq!(
            pick_read(ReadStrategy::GlobalRandom, &empty, None, &mut rng),
            None
        );
    }

    #[test]
    fn primary_only_uses_the_primary_or_nothing() {
        assert_eq!(
            picks(ReadStrategy::PrimaryOnly, &three([UP; 3]), None),
            [3000, 0, 0]
        );
        assert_eq!(
            picks(ReadStrategy::PrimaryOnly, &three([DOWN, UP, UP]), None),
            [0, 0, 0]
        );
        assert_eq!(
            picks(ReadStrategy::PrimaryOnly, &three([UP; 3]), Some(0)),
            [0, 0, 0]
        );
    }

    #[test]
    fn writes_go_to_the_primary_when_up() {
        assert_eq!(pick_primary(&three([UP; 3])), Some(0));
        assert_eq!(pick_primary(&three([DOWN, UP, UP])), None);
    }

    #[test]
    fn same_seed_same_choices() {
        let view = three([UP; 3]);
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..20)
                .map(|_| pick_read(ReadStrategy::GlobalRandom, &view, None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }

    /// Four up nodes with these round trips (ms) and region ranks.
    fn measured(nodes: [(Option<u64>, Option<usize>); 4], levels: usize) -> FixedView {
        FixedView(vec![(UP, REMOTE, false); 4], nodes.to_vec(), levels)
    }

    #[test]
    fn nearest_picks_within_the_window_of_the_fastest() {
        let view = measured(
            [
                (Some(80), None),
                (Some(5), None),
                (Some(18), None),
                (Some(21), None),
            ],
            0,
        );
        let counts = picks(ReadStrategy::Nearest, &view, None);
        assert_eq!(counts[0] + counts[3], 0, "{counts:?}");
        assert!(counts[1] > 1300 && counts[2] > 1300, "{counts:?}");
    }

    #[test]
    fn nearest_tries_preferred_regions_in_order() {
        // Node 0 is slow but in the first preferred region.
        let view = measured(
            [
                (Some(80), Some(0)),
                (Some(5), Some(1)),
                (Some(5), None),
                (None, Some(1)),
            ],
            2,
        );
        assert_eq!(picks(ReadStrategy::Nearest, &view, None), [3000, 0, 0, 0]);
        // Without it, the second region; node 3 is not measured yet.
        assert_eq!(
            picks(ReadStrategy::Nearest, &view, Some(0)),
            [0, 3000, 0, 0]
        );
    }

    #[test]
    fn nearest_falls_back_to_every_region_and_to_unmeasured_nodes() {
        let view = measured(
            [
                (None, None),
                (None, None),
                (Some(40), Some(0)),
                (None, None),
            ],
            1,
        );
        let counts = picks(ReadStrategy::Nearest, &view, Some(2));
        assert_eq!(counts[2], 0);
        assert!(
            counts[0] > 800 && counts[1] > 800 && counts[3] > 800,
            "{counts:?}"
        );
        let mut view = view;
        view.0.iter_mut().for_each(|node| node.0 = DOWN);
        assert_eq!(picks(ReadStrategy::Nearest, &view, None), [0; 4]);
    }

    #[test]
    fn large_topologies_are_uniform_too() {
        let view = FixedView(vec![(UP, REMOTE, false); 100], Vec::new(), 0);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut counts = vec![0; 100];
        for _ in 0..20_000 {
            counts[pick_read(ReadStrategy::GlobalRandom, &view, Some(5), &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[5], 0);
        assert!(
            counts
                .iter()
                .enumerate()
                .all(|(i, &c)| i == 5 || (100..320).contains(&c)),
            "{counts:?}"
        );
    }

    /// A view of round trips alone, for the nearest rule's two paths.
    struct Rtts(Vec<u64>);

    impl NodeView for Rtts {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn is_up(&self, _: usize) -> bool {
            true
        }
        fn is_local(&self, _: usize) -> bool {
            false
        }
        fn is_primary(&self, _: usize) -> bool {
            false
        }
        fn rtt(&self, index: usize) -> Option<Duration> {
            (self.0[index] != u64::MAX).then(|| Duration::from_nanos(self.0[index]))
        }
        fn region_rank(&self, _: usize) -> Option<usize> {
            None
        }
        fn preferred_levels(&self) -> usize {
            0
        }
        fn window(&self) -> Duration {
            Duration::from_millis(15)
        }
    }

    #[test]
    fn the_sorted_near_rule_agrees_with_the_node_by_node_one() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5_000 {
            let len = rng.usize(1..=64);
            let rtts: Vec<u64> = (0..len)
                .map(|_| match rng.u8(..4) {
                    0 => u64::MAX,
                    _ => rng.u64(..40_000_000),
                })
                .collect();
            let all = if len == 64 {
                u64::MAX
            } else {
                (1u64 << len) - 1
            };
            let in_level = rng.u64(..) & all;
            let window = rng.u64(..20_000_000);
            let view = Rtts(rtts.clone());
            let by_node = near_by_node(&view, in_level, window);
            let mut order: Vec<u8> = (0..len as u8).collect();
            order.sort_by_key(|&index| rtts[usize::from(index)]);
            let sorted = near_sorted(&rtts, &order, in_level, window);
            assert_eq!(sorted, by_node, "{rtts:?} {in_level:b}");
            // And both agree with `is_near` itself.
            if let Some(near) = by_node {
                let fastest = bits(in_level).filter_map(|i| view.rtt(i)).min();
                for i in bits(in_level) {
                    let expected = is_near(fastest, view.rtt(i), Duration::from_nanos(window));
                    assert_eq!(near >> i & 1 == 1, expected, "node {i}");
                }
            }
        }
    }
}
