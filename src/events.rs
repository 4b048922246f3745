//! Topology events a service can subscribe to
//! ([`DatabaseManager::subscribe`](crate::DatabaseManager::subscribe)).

use std::time::Duration;

use crate::node::Node;
use crate::topology::{Lag, Snapshot};

/// Something changed in the deployment, as the health monitor saw it.
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
}

/// The events between two consecutive snapshots, also logged.
pub(crate) fn diff(
    old: &Snapshot,
    new: &Snapshot,
    nodes: &[Node],
    bound: Option<Duration>,
) -> Vec<Event> {
    let name = |index: usize| nodes[index].name().to_owned();
    let mut events = Vec::new();
    if old.primary != new.primary {
        let (from, to) = (old.primary.map(name), new.primary.map(name));
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
        match (before.up, after.up) {
            (true, false) => events.push(Event::NodeDown {
                node: name(index),
                error: after.last_error.as_deref().unwrap_or_default().to_owned(),
            }),
            (false, true) => events.push(Event::NodeUp { node: name(index) }),
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
