//! Which node takes writes when one, none or several report primary.
//!
//! A node that reports itself primary on a timeline lower than the highest
//! any node has shown is a stale primary (it was failed over and came back):
//! it is fenced and never written to. Among the rest, the one on the highest
//! timeline wins; when that cannot be decided (equal or unknown timelines),
//! nobody gets writes.

/// The outcome of one election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Election {
    /// The write target.
    pub(crate) primary: Option<usize>,
    /// Claimants that must take neither writes nor reads.
    pub(crate) fenced: Vec<usize>,
    /// Several claimants and no way to choose.
    pub(crate) split_brain: bool,
}

/// A healthy node that reports itself primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) index: usize,
    /// Its timeline, when known.
    pub(crate) timeline: Option<u32>,
    /// Its system identifier, when known: timelines compare only within one
    /// system (a rebuilt or upgraded cluster starts again at timeline 1).
    pub(crate) system: Option<u64>,
    /// The highest timeline any node of its system has shown.
    pub(crate) highest: u32,
}

/// Elects the write target among `claims`.
pub(crate) fn elect(claims: &[Claim]) -> Election {
    let (current, stale): (Vec<&Claim>, Vec<&Claim>) = claims
        .iter()
        .partition(|claim| claim.timeline.is_none_or(|t| t >= claim.highest));
    let mut fenced: Vec<usize> = stale.iter().map(|claim| claim.index).collect();
    let primary = match current.as_slice() {
        [] => None,
        [only] => Some(only.index),
        several => {
            // Timelines of different systems say nothing about each other.
            let one_system = several.iter().all(|c| c.system == several[0].system);
            let best = several.iter().filter_map(|c| c.timeline).max();
            let on_best: Vec<usize> = several
                .iter()
                .filter(|c| c.timeline == best && best.is_some())
                .map(|c| c.index)
                .collect();
            match on_best.as_slice() {
                [winner] if one_system && several.iter().all(|c| c.timeline.is_some()) => {
                    Some(*winner)
                }
                _ => None,
            }
        }
    };
    let split_brain = primary.is_none() && current.len() > 1;
    fenced.extend(
        current
            .iter()
            .map(|claim| claim.index)
            .filter(|index| Some(*index) != primary),
    );
    fenced.sort_unstable();
    Election {
        primary,
        fenced,
        split_brain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims of one system, `highest` the highest timeline it has shown.
    fn claims(nodes: &[(usize, Option<u32>)], highest: u32) -> Vec<Claim> {
        nodes
            .iter()
            .map(|&(index, timeline)| Claim {
                index,
                timeline,
                system: Some(7),
                highest,
            })
            .collect()
    }

    #[test]
    fn one_claimant_wins() {
        let election = elect(&claims(&[(2, Some(1))], 1));
        assert_eq!(election.primary, Some(2));
        assert!(election.fenced.is_empty() && !election.split_brain);
    }

    #[test]
    fn nobody_claims() {
        let election = elect(&[]);
        assert_eq!(election.primary, None);
        assert!(!election.split_brain);
    }

    #[test]
    fn the_higher_timeline_wins_and_the_other_is_fenced() {
        let election = elect(&claims(&[(0, Some(1)), (1, Some(2))], 2));
        assert_eq!(election.primary, Some(1));
        assert_eq!(election.fenced, [0]);
        assert!(!election.split_brain);
    }

    #[test]
    fn a_lone_stale_primary_is_fenced() {
        // The new primary (timeline 2) is unreachable; the old one is back.
        let election = elect(&claims(&[(0, Some(1))], 2));
        assert_eq!(election.primary, None);
        assert_eq!(election.fenced, [0]);
    }

    #[test]
    fn equal_or_unknown_timelines_refuse_writes() {
        for nodes in [
            vec![(0, Some(2)), (1, Some(2))],
            vec![(0, None), (1, Some(2))],
            vec![(0, None), (1, None)],
        ] {
            let election = elect(&claims(&nodes, 2));
            assert_eq!(election.primary, None, "{nodes:?}");
            assert!(election.split_brain, "{nodes:?}");
            assert_eq!(election.fenced, [0, 1], "{nodes:?}");
        }
    }

    #[test]
    fn a_rebuilt_cluster_is_judged_by_its_own_timelines() {
        // Seen on timeline 3 before; rebuilt (new system) on timeline 1.
        let rebuilt = Claim {
            index: 0,
            timeline: Some(1),
            system: Some(8),
            highest: 1,
        };
        assert_eq!(elect(&[rebuilt]).primary, Some(0));
        // Two systems claiming at once: no way to choose.
        let old = Claim {
            index: 1,
            timeline: Some(3),
            system: Some(7),
            highest: 3,
        };
        let election = elect(&[rebuilt, old]);
        assert_eq!(election.primary, None);
        assert!(election.split_brain);
    }
}
