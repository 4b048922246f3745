//! Topology events a service can subscribe to
//! ([`DatabaseManager::subscribe`](crate::DatabaseManager::subscribe)).

use std::time::Duration;

use crate::topology::{Lag, Orphan, Snapshot};

/// Something changed in the deployment, as the health monitor saw it, or
/// a call resolved a lost `COMMIT`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The write target changed (a failover, or the first primary found).
    /// `None` means no primary is known.
    PrimaryChanged {
        /// The previous primary.
        from: Option<String>,
        /// The new primary.
        to: Option<String>,
    },
    /// Several nodes claim to be primary and fencing cannot choose: writes
    /// are refused until it can.
    SplitBrain {
        /// Every claimant.
        claimants: Vec<String>,
    },
    /// A node stopped answering probes.
    NodeDown {
        /// The node.
        node: String,
        /// The probe's error.
        error: String,
    },
    /// A node answers probes again.
    NodeUp {
        /// The node.
        node: String,
    },
    /// A replica follows no live primary on the write target's timeline any
    /// more (see [`Orphan`]).
    ReplicaOrphaned {
        /// The replica.
        node: String,
        /// Why.
        reason: Orphan,
    },
    /// An orphaned replica follows the write target again.
    ReplicaRejoined {
        /// The replica.
        node: String,
    },
    /// A replica's lag rose above [`Config::max_staleness`](crate::Config::max_staleness).
    LagExceeded {
        /// The replica.
        node: String,
        /// Its lag now.
        lag: Lag,
        /// The bound.
        bound: Duration,
    },
    /// A replica's lag fell back within the bound.
    LagRecovered {
        /// The replica.
        node: String,
        /// Its lag now.
        lag: Lag,
        /// The bound.
        bound: Duration,
    },
    /// Topology discovery found an instance not configured, built its
    /// pool and probes it; it takes calls once it answers as healthy (see
    /// [`DiscoverySettings`](crate::config::DiscoverySettings)).
    NodeAdded {
        /// The node: the instance identifier.
        node: String,
        /// The host its connections go to.
        host: String,
    },
    /// A discovered instance vanished from the cluster's list for the
    /// removal grace (or a configured node now reports it): it takes no
    /// more calls and its pool is dropped.
    NodeRemoved {
        /// The node: the instance identifier.
        node: String,
    },
    /// The answer to a transaction's `COMMIT` was lost, and pgrouter asked
    /// what became of it (see
    /// [`OutcomeSettings`](crate::config::OutcomeSettings)).
    CommitResolved {
        /// The node that ran the transaction.
        node: String,
        /// What it found.
        outcome: CommitOutcome,
        /// How long finding out took.
        took: Duration,
    },
    /// A read had no answer within the hedge delay and was sent to another
    /// node too (see [`HedgeSettings`](crate::config::HedgeSettings)).
    HedgeSent {
        /// The node the read went to first.
        from: String,
        /// The node the hedge went to.
        to: String,
    },
    /// A hedge answered first: its answer was used, the first statement
    /// cancelled.
    HedgeWon {
        /// The node that answered the hedge.
        node: String,
    },
    /// The read budget had no token left: a read was not hedged
    /// (`retry: false`), or not retried after a failure (`retry: true`).
    ReadBudgetExhausted {
        /// The read's first node.
        node: String,
        /// A retry (true) or a hedge (false).
        retry: bool,
    },
    /// A node with reads in flight answered none of them for a while,
    /// while other nodes answered: it was marked suspect (see
    /// [`OutlierSettings`](crate::config::OutlierSettings)).
    OutlierDetected {
        /// The node.
        node: String,
        /// How long it had not answered.
        silent_for: Duration,
    },
}

/// What became of a transaction whose `COMMIT` answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitOutcome {
    /// It committed: the call returned `Ok`.
    Committed,
    /// It did not commit: the call ran it again (deadline allowing).
    NotCommitted,
    /// The deadline passed first: the call failed with an unknown outcome.
    Unknown,
}

/// The events between two consecutive snapshots, also logged.
pub(crate) fn diff(
    old: &Snapshot,
    new: &Snapshot,
    name: impl Fn(usize) -> String,
    bound: Option<Duration>,
) -> Vec<Event> {
    let mut events = Vec::new();
    if old.primary != new.primary {
        let (from, to) = (old.primary.map(&name), new.primary.map(&name));
        tracing::warn!(from = ?from, to = ?to, "primary changed");
        events.push(Event::PrimaryChanged { from, to });
    }
    if new.split_brain && !old.split_brain {
        let claimants: Vec<String> = new
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.fenced)
            .map(|(index, _)| name(index))
            .collect();
        tracing::error!(
            ?claimants,
            "several nodes claim to be primary; writes refused until fencing can choose"
        );
        events.push(Event::SplitBrain { claimants });
    }
    for (index, (before, after)) in old.nodes.iter().zip(new.nodes.iter()).enumerate() {
        // A slot filled or emptied says so (`NodeAdded`, `NodeRemoved`:
        // the monitor sends those); nothing else about it.
        if before.vacant || after.vacant {
            continue;
        }
        match (before.up, after.up) {
            (true, false) => events.push(Event::NodeDown {
                node: name(index),
                error: after.last_error.as_deref().unwrap_or_default().to_owned(),
            }),
            (false, true) => events.push(Event::NodeUp { node: name(index) }),
            _ => {}
        }
        match (before.orphaned, after.orphaned) {
            (None, Some(reason)) if after.up => {
                tracing::warn!(node = %name(index), %reason, "replica orphaned");
                events.push(Event::ReplicaOrphaned {
                    node: name(index),
                    reason,
                });
            }
            (Some(_), None) => {
                tracing::info!(node = %name(index), "replica follows the primary again");
                events.push(Event::ReplicaRejoined { node: name(index) });
            }
            _ => {}
        }
        if let Some(event) = bound.and_then(|bound| lag_event(before.lag, after.lag, bound)) {
            events.push(event.named(name(index)));
        }
    }
    events
}

/// An event without its node's name yet.
enum LagCrossing {
    Exceeded(Lag, Duration),
    Recovered(Lag, Duration),
}

impl LagCrossing {
    fn named(self, node: String) -> Event {
        match self {
            LagCrossing::Exceeded(lag, bound) => {
                tracing::warn!(node = %node, lag = ?lag.time, lag_bytes = lag.bytes, ?bound, "replica lag above bound");
                Event::LagExceeded { node, lag, bound }
            }
            LagCrossing::Recovered(lag, bound) => {
                tracing::info!(node = %node, lag = ?lag.time, ?bound, "replica lag back within bound");
                Event::LagRecovered { node, lag, bound }
            }
        }
    }
}

fn lag_event(before: Option<Lag>, after: Option<Lag>, bound: Duration) -> Option<LagCrossing> {
    let over = |lag: Option<Lag>| lag.map(|lag| lag.time > bound);
    match (over(before), over(after), after) {
        (Some(false) | None, Some(true), Some(lag)) => Some(LagCrossing::Exceeded(lag, bound)),
        (Some(true), Some(false), Some(lag)) => Some(LagCrossing::Recovered(lag, bound)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::topology::NodeState;

    fn lag(ms: u64) -> Option<Lag> {
        Some(Lag {
            bytes: ms * 10,
            time: Duration::from_millis(ms),
        })
    }

    /// Node names as the events give them, and the snapshot of three
    /// nodes (node0 the primary) before any probe.
    fn setup() -> (fn(usize) -> String, Snapshot) {
        let role = |index| match index {
            0 => Role::Primary,
            _ => Role::Replica,
        };
        let states = (0..3).map(|index| NodeState::configured(role(index), false, None));
        (|index| format!("node{index}"), Snapshot::initial(states, 0))
    }

    #[test]
    fn nothing_changed_nothing_to_say() {
        let (name, old) = setup();
        assert!(diff(&old, &old.clone(), name, Some(Duration::from_secs(1))).is_empty());
    }

    #[test]
    fn a_new_write_target_is_a_primary_change() {
        let (name, old) = setup();
        let mut new = old.clone();
        new.primary = Some(1);
        assert_eq!(
            diff(&old, &new, name, None),
            [Event::PrimaryChanged {
                from: Some("node0".into()),
                to: Some("node1".into())
            }]
        );
        new.primary = None;
        assert_eq!(
            diff(&old, &new, name, None),
            [Event::PrimaryChanged {
                from: Some("node0".into()),
                to: None
            }]
        );
    }

    #[test]
    fn split_brain_names_every_claimant_once() {
        let (name, old) = setup();
        let mut new = old.clone();
        new.primary = None;
        new.split_brain = true;
        new.nodes[0].fenced = true;
        new.nodes[2].fenced = true;
        let events = diff(&old, &new, name, None);
        let claimants = vec!["node0".to_owned(), "node2".to_owned()];
        assert!(
            events.contains(&Event::SplitBrain { claimants }),
            "{events:?}"
        );
        // Still split: no second event.
        let again = diff(&new, &new.clone(), name, None);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn down_and_up_carry_the_probe_error() {
        let (name, old) = setup();
        let mut down = old.clone();
        down.nodes[1].up = false;
        down.nodes[1].last_error = Some("connection refused".into());
        assert_eq!(
            diff(&old, &down, name, None),
            [Event::NodeDown {
                node: "node1".into(),
                error: "connection refused".into()
            }]
        );
        assert_eq!(
            diff(&down, &old, name, None),
            [Event::NodeUp {
                node: "node1".into()
            }]
        );
    }

    #[test]
    fn lag_events_fire_on_crossing_the_bound_only() {
        let (name, mut old) = setup();
        let bound = Some(Duration::from_millis(100));
        let with_lag = |snapshot: &Snapshot, ms: Option<u64>| {
            let mut next = snapshot.clone();
            next.nodes[2].lag = ms.and_then(lag);
            next
        };
        old = with_lag(&old, Some(50));
        let over = with_lag(&old, Some(150));
        assert_eq!(
            diff(&old, &over, name, bound),
            [Event::LagExceeded {
                node: "node2".into(),
                lag: lag(150).unwrap(),
                bound: Duration::from_millis(100)
            }]
        );
        assert!(diff(&over, &with_lag(&over, Some(900)), name, bound).is_empty());
        assert_eq!(
            diff(&over, &old, name, bound),
            [Event::LagRecovered {
                node: "node2".into(),
                lag: lag(50).unwrap(),
                bound: Duration::from_millis(100)
            }]
        );
        // Lag first measured above the bound counts as crossing it.
        let unknown = with_lag(&old, None);
        assert_eq!(diff(&unknown, &over, name, bound).len(), 1);
        // Without a bound, no lag events at all.
        assert!(diff(&old, &over, name, None).is_empty());
        // At the bound is within it.
        assert!(diff(&old, &with_lag(&old, Some(100)), name, bound).is_empty());
    }

    #[test]
    fn orphaned_and_rejoined() {
        let (name, old) = setup();
        let mut orphaned = old.clone();
        orphaned.nodes[2].orphaned = Some(Orphan::NotReceiving);
        assert_eq!(
            diff(&old, &orphaned, name, None),
            [Event::ReplicaOrphaned {
                node: "node2".into(),
                reason: Orphan::NotReceiving
            }]
        );
        assert!(diff(&orphaned, &orphaned.clone(), name, None).is_empty());
        assert_eq!(
            diff(&orphaned, &old, name, None),
            [Event::ReplicaRejoined {
                node: "node2".into()
            }]
        );
    }
}
