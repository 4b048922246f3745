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

/// `claims`: (node index, its timeline) of every healthy node reporting
/// itself primary. `highest_timeline`: the highest timeline seen so far.
pub(crate) fn elect(claims: &[(usize, Option<u32>)], highest_timeline: u32) -> Election {
    let (current, stale): (Vec<_>, Vec<_>) = claims
        .iter()
        .partition(|(_, timeline)| timeline.is_none_or(|t| t >= highest_timeline));
    let mut fenced: Vec<usize> = stale.iter().map(|(index, _)| *index).collect();
    let primary = match current.as_slice() {
        [] => None,
        [(only, _)] => Some(*only),
        several => {
            let best = several.iter().filter_map(|(_, t)| *t).max();
            let on_best: Vec<usize> = several
                .iter()
                .filter(|(_, t)| *t == best && best.is_some())
                .map(|(index, _)| *index)
                .collect();
            match on_best.as_slice() {
                [winner] if several.iter().all(|(_, t)| t.is_some()) => Some(*winner),
                _ => None,
            }
        }
    };
    let split_brain = primary.is_none() && current.len() > 1;
    fenced.extend(
        current
            .iter()
            .map(|(index, _)| *index)
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

    #[test]
    fn one_claimant_wins() {
        let election = elect(&[(2, Some(1))], 1);
        assert_eq!(election.primary, Some(2));
        assert!(election.fenced.is_empty() && !election.split_brain);
    }

    #[test]
    fn nobody_claims() {
        let election = elect(&[], 3);
        assert_eq!(election.primary, None);
        assert!(!election.split_brain);
    }

    #[test]
    fn the_higher_timeline_wins_and_the_other_is_fenced() {
        let election = elect(&[(0, Some(1)), (1, Some(2))], 2);
        assert_eq!(election.primary, Some(1));
        assert_eq!(election.fenced, [0]);
        assert!(!election.split_brain);
    }

    #[test]
    fn a_lone_stale_primary_is_fenced() {
        // The new primary (timeline 2) is unreachable; the old one is back.
        let election = elect(&[(0, Some(1))], 2);
        assert_eq!(election.primary, None);
        assert_eq!(election.fenced, [0]);
    }

    #[test]
    fn equal_or_unknown_timelines_refuse_writes() {
        for claims in [
            vec![(0, Some(2)), (1, Some(2))],
            vec![(0, None), (1, Some(2))],
            vec![(0, None), (1, None)],
        ] {
            let election = elect(&claims, 2);
            assert_eq!(election.primary, None, "{claims:?}");
            assert!(election.split_brain, "{claims:?}");
            assert_eq!(election.fenced, [0, 1], "{claims:?}");
        }
    }
}
