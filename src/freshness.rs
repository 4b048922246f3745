//! The freshness rule: whether a node is fresh enough to serve a read that
//! carries a staleness bound or a causal token.
//!
//! Pure, over one node's state in the snapshot; the read strategies see
//! only the nodes this rule admits.

use std::time::Duration;

use tokio::time::Instant;

use crate::lsn::CausalToken;
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

    /// The write target is always fresh. Any other node must show both,
    /// now: that it had everything the primary had no longer than the bound
    /// ago (judged at `now`, the moment of the decision, not at the last
    /// probe), and a replay position at or past the token. Unknown is not
    /// fresh, and neither is a bound with no `now` to judge it at.
    pub(crate) fn admits(
        &self,
        node: &NodeState,
        is_write_target: bool,
        now: Option<Instant>,
    ) -> bool {
        if is_write_target {
            return true;
        }
        let lag_ok = self.max_staleness.is_none_or(|bound| {
            let as_of = now.zip(node.fresh_as_of);
            as_of.is_some_and(|(now, as_of)| now.saturating_duration_since(as_of) <= bound)
        });
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
    use crate::config::Role;
    use crate::lsn::Lsn;

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
        let now = Instant::now() + Duration::from_secs(60);
        // (fresh as of how long ago, bound, admitted)
        let table = [
            (Some(0), 100, true),
            (Some(100), 100, true),
            (Some(101), 100, false),
            (None, 100, false),
        ];
        for (ago, limit, admitted) in table {
            let node = replica(now, ago, Some(10));
            assert_eq!(
                bound(limit).admits(&node, false, Some(now)),
                admitted,
                "{ago:?} vs {limit}"
            );
        }
    }

    #[test]
    fn staleness_grows_between_probes() {
        let probed = Instant::now();
        let node = replica(probed, Some(0), Some(10));
        assert!(bound(100).admits(&node, false, Some(probed + Duration::from_millis(100))));
        assert!(
            !bound(100).admits(&node, false, Some(probed + Duration::from_millis(101))),
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
                token(lsn).admits(&node, false, Some(now)),
                admitted,
                "{position:?} vs {lsn}"
            );
        }
    }

    #[test]
    fn both_constraints_must_hold() {
        let now = Instant::now() + Duration::from_secs(60);
        let both = Freshness {
            max_staleness: Some(Duration::from_millis(100)),
            after: Some(CausalToken::new(Lsn(10))),
        };
        assert!(both.admits(&replica(now, Some(50), Some(10)), false, Some(now)));
        assert!(!both.admits(&replica(now, Some(500), Some(10)), false, Some(now)));
        assert!(!both.admits(&replica(now, Some(50), Some(9)), false, Some(now)));
    }

    #[test]
    fn the_write_target_is_always_fresh() {
        let now = Instant::now();
        let unknown = replica(now, None, None);
        assert!(bound(1).admits(&unknown, true, Some(now)));
        assert!(token(u64::MAX).admits(&unknown, true, Some(now)));
        assert!(CausalToken::PRIMARY.lsn() == Lsn(u64::MAX));
    }

    #[test]
    fn no_constraint_admits_everything() {
        let now = Instant::now();
        let any = Freshness::default();
        assert!(!any.is_constrained());
        assert!(any.admits(&replica(now, None, None), false, None));
        assert!(bound(5).is_constrained() && token(5).is_constrained());
        let fresh = replica(now, Some(0), Some(10));
        assert!(
            !bound(5).admits(&fresh, false, None),
            "a bound needs a clock"
        );
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
        assert!(!bound(1000).admits(&node, false, Some(now)));
        assert!(!token(100).admits(&node, false, Some(now)));
        assert!(
            Freshness::default().admits(&node, false, None),
            "routing decides those"
        );
    }
}
