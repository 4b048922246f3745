//! From probed node states to the topology: the write target, fencing and
//! every replica's lag.

use tokio::time::Instant;

use super::fencing::elect;
use super::lag::WalHistory;
use crate::config::Role;
use crate::topology::{Lag, Snapshot};

/// What the monitor remembers across rounds to judge the topology.
#[derive(Debug, Default)]
pub(crate) struct Assessor {
    history: WalHistory,
    highest_timeline: u32,
}

impl Assessor {
    /// Fills in `primary`, `split_brain`, `fenced` and `lag` of `next`, whose
    /// nodes in `probed` were probed just now.
    pub(crate) fn assess(&mut self, next: &mut Snapshot, probed: &[usize], now: Instant) {
        self.elect(next);
        if let Some(primary) = next.primary.filter(|p| probed.contains(p)) {
            if let Some(position) = next.nodes[primary].position {
                self.history.record(position, now);
            }
        }
        self.measure_lag(next, now);
        next.derive_masks();
    }

    fn elect(&mut self, next: &mut Snapshot) {
        let seen = next.nodes.iter().filter_map(|node| node.timeline).max();
        self.highest_timeline = self.highest_timeline.max(seen.unwrap_or(0));
        let claims: Vec<(usize, Option<u32>)> = next
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.up && node.role == Role::Primary)
            .map(|(index, node)| (index, node.timeline))
            .collect();
        let election = elect(&claims, self.highest_timeline);
        for (index, node) in next.nodes.iter_mut().enumerate() {
            node.fenced = election.fenced.contains(&index);
        }
        next.primary = election.primary;
        next.split_brain = election.split_brain;
    }

    fn measure_lag(&self, next: &mut Snapshot, now: Instant) {
        let latest = self.history.latest();
        for node in next.nodes.iter_mut() {
            node.lag = match (node.role, node.position, latest) {
                (Role::Replica, Some(replayed), Some(latest)) => Some(Lag {
                    bytes: latest.bytes_since(replayed),
                    time: self.history.lag_time(replayed, now).unwrap_or_default(),
                }),
                _ => None,
            };
        }
    }
}
