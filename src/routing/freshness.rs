//! The freshness rule: whether a node is fresh enough to serve a read that
//! carries a staleness bound or a causal token.
//!
//! Pure, over one node's state in the snapshot; the read strategies see
//! only the nodes this rule admits.

use std::time::Duration;

use tokio::time::Instant;

use crate::causal::lsn::CausalToken;
use crate::topology::NodeState;

/// What a read asks of the node that serves it, beyond being healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Replicas must lag by at most this much (known lag only).
    pub(crate) max_staleness: Option<Duration>,
    /// Replicas must have replayed at least this position.
    pub(crate) after: Option<CausalToken>,
}

impl Freshness {
    /// Whether the read asks anything at all.
    pub(crate) fn is_constrained(&self) -> bool {
        self.max_staleness.is_some() || self.after.is_some()
    }

    /// The oldest "fresh as of" instant the staleness bound accepts at
    /// `now` (the moment of the decision); `None` when there is no bound (or
    /// it reaches back further than an `Instant` can). Computed once per decision,
    /// so each node costs one comparison.
    pub(crate) fn cutoff(&self, now: Instant) -> Option<Instant> {
        self.max_staleness.and_then(|bound| now.checked_sub(bound))
    }

    /// The write target is always fresh. Any other node must show both: that
    /// it had everything the primary had no earlier than `cutoff` (see
    /// [`Freshness::cutoff`]: judged when the read is routed, not at the last
    /// probe), and a replay position at or past the token. Unknown is not
    /// fresh.
    pub(crate) fn admits(
        &self,
        node: &NodeState,
        is_write_target: bool,
        cutoff: Option<Instant>,
    ) -> bool {
        if is_write_target {
            return true;
        }
        let lag_ok = self.max_staleness.is_none() || {
            let as_of = node.fresh_as_of;
            as_of.is_some_and(|as_of| cutoff.is_none_or(|cutoff| as_of >= cutoff))
        };
        // A position proves something only on the token's timeline.
        let token_ok = self.after.is_none_or(|token| {
            let same_timeline = token.timeline().is_none_or(|t| node.timeline == Some(t));
            same_timeline
                && node
                    .position
                    .is_some_and(|position| position >= token.lsn())
        });
        // An orphan shows nothing about the primary's writes.
        let follows = !self.is_constrained() || node.orphaned.is_none();
        lag_ok && token_ok && follows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::lsn::Lsn;
    use crate::config::clock;
    use crate::config::Role;

    /// A replica fresh as of `ms_ago` before `now` (or unknown), at `position`.
    fn replica(now: Instant, ms_ago: Option<u64>, position: Option<u64>) -> NodeState {
        let mut node = NodeState::new(Role::Replica);
        node.fresh_as_of = ms_ago.map(|ms| now - Duration::from_millis(ms));
        node.position = position.map(Lsn);
        node
    }

    fn bound(ms: u64) -> Freshness {
        Freshness {
            max_staleness: Some(Duration::from_millis(ms)),
            after: None,
        }
    }

    fn token(lsn: u64) -> Freshness {
        Freshness {
            max_staleness: None,
            after: Some(CausalToken::new(Lsn(lsn))),
        }
    }

    #[test]
    fn staleness_bound_table() {
        let now = clock::after(Instant::now(), Duration::from_secs(60));
        // (fresh as of how long ago, bound, admitted)
        let table = [
            (Some(0), 100, true),
            (Some(100), 100, true),
            (Some(101), 100, false),
            (None, 100, false),
        ];
        for (ago, limit, admitted) in table {
            let node = replica(now, ago, Some(10));
            let freshness = bound(limit);
            assert_eq!(
                freshness.admits(&node, false, freshness.cutoff(now)),
                admitted,
                "{ago:?} vs {limit}"
            );
        }
    }

    #[test]
    fn staleness_grows_between_probes() {
        let probed = Instant::now();
        let node = replica(probed, Some(0), Some(10));
        let at = |ms| bound(100).cutoff(probed + Duration::from_millis(ms));
        assert!(bound(100).admits(&node, false, at(100)));
        assert!(
            !bound(100).admits(&node, false, at(101)),
            "no probe since: the replica may have stalled right after the last one"
        );
    }

    #[test]
    fn causal_token_table() {
        let now = Instant::now();
        // (replayed position, token, admitted)
        let table = [
            (Some(10), 10, true),
            (Some(11), 10, true),
            (Some(9), 10, false),
            (None, 10, false),
            (Some(u64::MAX - 1), u64::MAX, false),
        ];
        for (position, lsn, admitted) in table {
            let node = replica(now, Some(0), position);
            assert_eq!(
                token(lsn).admits(&node, false, None),
                admitted,
                "{position:?} vs {lsn}"
            );
        }
    }

    #[test]
    fn both_constraints_must_hold() {
        let now = clock::after(Instant::now(), Duration::from_secs(60));
        let both = Freshness {
            max_staleness: Some(Duration::from_millis(100)),
            after: Some(CausalToken::new(Lsn(10))),
        };
        let cutoff = both.cutoff(now);
        assert!(both.admits(&replica(now, Some(50), Some(10)), false, cutoff));
        assert!(!both.admits(&replica(now, Some(500), Some(10)), false, cutoff));
        assert!(!both.admits(&replica(now, Some(50), Some(9)), false, cutoff));
    }

    #[test]
    fn the_write_target_is_always_fresh() {
        let now = Instant::now();
        let unknown = replica(now, None, None);
        assert!(bound(1).admits(&unknown, true, bound(1).cutoff(now)));
        assert!(token(u64::MAX).admits(&unknown, true, None));
        assert!(CausalToken::PRIMARY.lsn() == Lsn(u64::MAX));
    }

    #[test]
    fn no_constraint_admits_everything() {
        let now = Instant::now();
        let any = Freshness::default();
        assert!(!any.is_constrained());
        assert!(any.admits(&replica(now, None, None), false, None));
        assert!(bound(5).is_constrained() && token(5).is_constrained());
        assert_eq!(any.cutoff(now), None);
        // A huge bound accepts any known freshness, and still no unknown one.
        let huge = bound(u64::MAX);
        let cutoff = huge.cutoff(now);
        assert!(huge.admits(&replica(now, Some(0), Some(10)), false, cutoff));
        assert!(!huge.admits(&replica(now, None, Some(10)), false, cutoff));
    }

    #[test]
    fn a_position_on_another_timeline_proves_nothing() {
        let now = Instant::now();
        let mut node = replica(now, Some(0), Some(500));
        node.timeline = Some(1);
        let on = |timeline| Freshness {
            max_staleness: None,
            after: Some(CausalToken::on_timeline(timeline, Lsn(100))),
        };
        assert!(on(1).admits(&node, false, Some(now)));
        assert!(
            !on(2).admits(&node, false, Some(now)),
            "ahead, but on timeline 1"
        );
        node.timeline = None;
        assert!(!on(1).admits(&node, false, Some(now)), "timeline unknown");
        // The older token form carries no timeline: the orphan check alone.
        assert!(token(100).admits(&node, false, Some(now)));
    }

    #[test]
    fn an_orphan_serves_no_constrained_read() {
        let now = Instant::now();
        let mut node = replica(now, Some(0), Some(500));
        node.orphaned = Some(crate::topology::Orphan::NotReceiving);
        assert!(!bound(1000).admits(&node, false, bound(1000).cutoff(now)));
        assert!(!token(100).admits(&node, false, None));
        assert!(
            Freshness::default().admits(&node, false, None),
            "routing decides those"
        );
    }
}
