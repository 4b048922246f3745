//! Read strategies as pure functions over a view of the nodes.
//!
//! Nothing here waits, locks or allocates: a decision counts the eligible
//! nodes and picks one uniformly with the caller's random number generator.

use crate::config::ReadStrategy;

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
}

/// Chooses the node for a read, skipping `exclude` (a node that just failed).
/// `None` when no node is eligible.
pub(crate) fn pick_read(
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
    }
}

/// The node writes go to: the primary, when it is up.
pub(crate) fn pick_primary(view: &impl NodeView) -> Option<usize> {
    (0..view.len()).find(|&index| view.is_primary(index) && view.is_up(index))
}

/// Uniform choice among the indexes in `0..len` that satisfy `eligible`.
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

    /// A plain view for tests and benches: (up, local, primary) per node.
    #[derive(Debug, Clone)]
    pub(crate) struct FixedView(pub(crate) Vec<(bool, bool, bool)>);

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
    }

    const UP: bool = true;
    const DOWN: bool = false;
    const LOCAL: bool = true;
    const REMOTE: bool = false;

    /// primary (remote), replica (local), replica (remote)
    fn three(up: [bool; 3]) -> FixedView {
        FixedView(vec![
            (up[0], REMOTE, true),
            (up[1], LOCAL, false),
            (up[2], REMOTE, false),
        ])
    }

    fn picks(strategy: ReadStrategy, view: &FixedView, exclude: Option<usize>) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = vec![0; view.len()];
        for _ in 0..3000 {
            if let Some(index) = pick_read(strategy, view, exclude, &mut rng) {
                counts[index] += 1;
            }
        }
        counts
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
        let view = FixedView(vec![(UP, REMOTE, true), (UP, REMOTE, false)]);
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
        let empty = FixedView(Vec::new());
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
}
