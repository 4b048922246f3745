//! The freshness rule: whether a node is fresh enough to serve a read that
//! carries a staleness bound or a causal token.
//!
//! Pure, over one node's state in the snapshot; the read strategies see
//! only the nodes this rule admits.

use std::time::Duration;

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

    /// The write target is always fresh. Any other node must show both:
    /// a known lag within the bound, and a known replay position at or past
    /// the token. Unknown is not fresh.
    pub(crate) fn admits(&self, node: &NodeState, is_write_target: bool) -> bool {
        if is_write_target {
            return true;
        }
        let lag_ok = self
            .max_staleness
            .is_none_or(|bound| node.lag.is_some_and(|lag| lag.time <= bound));
        let token_ok = self.after.is_none_or(|token| {
            node.position
                .is_some_and(|position| position >= token.lsn())
        });
        lag_ok && token_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::lsn::Lsn;
    use crate::topology::Lag;

    fn replica(lag_ms: Option<u64>, position: Option<u64>) -> NodeState {
        let mut node = NodeState::new(Role::Replica);
        node.lag = lag_ms.map(|ms| Lag {
            bytes: 0,
            time: Duration::from_millis(ms),
        });
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
        // (lag, bound, admitted)
        let table = [
            (Some(0), 100, true),
            (Some(100), 100, true),
            (Some(101), 100, false),
            (None, 100, false),
        ];
        for (lag, limit, admitted) in table {
            let node = replica(lag, Some(10));
            assert_eq!(
                bound(limit).admits(&node, false),
                admitted,
                "{lag:?} vs {limit}"
            );
        }
    }

    #[test]
    fn causal_token_table() {
        // (replayed position, token, admitted)
        let table = [
            (Some(10), 10, true),
            (Some(11), 10, true),
            (Some(9), 10, false),
            (None, 10, false),
            (Some(u64::MAX - 1), u64::MAX, false),
        ];
        for (position, lsn, admitted) in table {
            let node = replica(Some(0), position);
            assert_eq!(
                token(lsn).admits(&node, false),
                admitted,
                "{position:?} vs {lsn}"
            );
        }
    }

    #[test]
    fn both_constraints_must_hold() {
        let both = Freshness {
            max_staleness: Some(Duration::from_millis(100)),
            after: Some(CausalToken::new(Lsn(10))),
        };
        assert!(both.admits(&replica(Some(50), Some(10)), false));
        assert!(!both.admits(&replica(Some(500), Some(10)), false));
        assert!(!both.admits(&replica(Some(50), Some(9)), false));
    }

    #[test]
    fn the_write_target_is_always_fresh() {
        let unknown = replica(None, None);
        assert!(bound(1).admits(&unknown, true));
        assert!(token(u64::MAX).admits(&unknown, true));
        assert!(CausalToken::PRIMARY.lsn() == Lsn(u64::MAX));
    }

    #[test]
    fn no_constraint_admits_everything() {
        let any = Freshness::default();
        assert!(!any.is_constrained());
        assert!(any.admits(&replica(None, None), false));
        assert!(bound(5).is_constrained() && token(5).is_constrained());
    }
}
