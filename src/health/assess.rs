//! From probed node states to the topology: the write target, fencing and
//! every replica's lag.

use tokio::time::Instant;

use std::collections::HashMap;

use super::fencing::{elect, Claim};
use super::lag::WalHistory;
use crate::config::Role;
use crate::topology::{Lag, Orphan, Snapshot};

/// What the monitor remembers across rounds to judge the topology.
#[derive(Debug, Default)]
pub(crate) struct Assessor {
    /// Orphaned replicas serve unbounded reads.
    serve_orphans: bool,
    history: WalHistory,
    /// The primary (node, timeline) `history` belongs to.
    history_of: Option<(usize, Option<u32>)>,
    /// The highest timeline each system (by identifier) has shown.
    highest_timeline: HashMap<Option<u64>, u32>,
}

impl Assessor {
    /// An assessor with no memory yet; `serve_orphans` from
    /// `Config::allow_orphaned_reads`.
    pub(crate) fn new(serve_orphans: bool) -> Self {
        Self {
            serve_orphans,
            ..Self::default()
        }
    }

    /// Fills in `primary`, `split_brain`, `fenced`, `lag` and `fresh_as_of`
    /// of `next`, whose nodes in `probed` were probed by a probe sent at
    /// `sent` and answered by `now`.
    pub(crate) fn assess(
        &mut self,
        next: &mut Snapshot,
        probed: &[usize],
        sent: Instant,
        now: Instant,
    ) {
        self.elect(next);
        self.find_orphans(next);
        if let Some(primary) = next.primary.filter(|p| probed.contains(p)) {
            let owner = Some((primary, next.nodes[primary].timeline));
            if self.history_of != owner {
                // A new primary or timeline: old positions prove nothing.
                self.history.clear();
                self.history_of = owner;
            }
            if let Some(position) = next.nodes[primary].position {
                // It had at most this position when the probe was sent.
                self.history.record(position, sent);
            }
        }
        self.measure_lag(next, now);
        next.derive_masks();
    }

    fn elect(&mut self, next: &mut Snapshot) {
        // Every node's timeline is evidence for its system, replicas' too: a
        // replica that shows timeline 2 fences a primary back on timeline 1
        // even while the new primary cannot be reached.
        for node in next.nodes.iter() {
            if let Some(timeline) = node.timeline {
                let highest = self.highest_timeline.entry(node.system).or_default();
                *highest = (*highest).max(timeline);
            }
        }
        let claims: Vec<Claim> = next
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.up && node.role == Role::Primary)
            .map(|(index, node)| Claim {
                index,
                timeline: node.timeline,
                system: node.system,
                highest: self
                    .highest_timeline
                    .get(&node.system)
                    .copied()
                    .unwrap_or(0),
            })
            .collect();
        let election = elect(&claims);
        for (index, node) in next.nodes.iter_mut().enumerate() {
            node.fenced = election.fenced.contains(&index);
        }
        next.primary = election.primary;
        next.split_brain = election.split_brain;
    }

    /// Replicas that do not follow the write target, on its timeline.
    ///
    /// An orphan is judged against a primary that exists: while none is
    /// elected (the primary died, or cannot be told apart from another),
    /// every replica has stopped receiving and none is the odd one out, so
    /// they all serve reads within whatever staleness bound a call sets
    /// (their lag keeps growing from the last primary's history).
    fn find_orphans(&self, next: &mut Snapshot) {
        next.serve_orphans = self.serve_orphans;
        let Some(primary) = next.primary else {
            for node in next.nodes.iter_mut() {
                node.orphaned = None;
            }
            return;
        };
        let primary_timeline = next.nodes[primary].timeline;
        for node in next.nodes.iter_mut() {
            node.orphaned = match (node.role, node.timeline, primary_timeline) {
                (Role::Primary, ..) => None,
                _ if !node.receiving => Some(Orphan::NotReceiving),
                (_, Some(timeline), Some(primary_timeline)) if timeline != primary_timeline => {
                    Some(Orphan::OtherTimeline {
                        timeline,
                        primary_timeline,
                    })
                }
                _ => None,
            };
        }
    }

    fn measure_lag(&self, next: &mut Snapshot, now: Instant) {
        let latest = self.history.latest();
        for node in next.nodes.iter_mut() {
            // An orphan's positions say nothing about the primary's writes.
            let replayed = node
                .position
                .filter(|_| node.role == Role::Replica && node.orphaned.is_none());
            node.fresh_as_of = replayed.and_then(|r| self.history.fresh_as_of(r));
            node.lag = match (replayed, latest, node.fresh_as_of) {
                (Some(replayed), Some(latest), Some(fresh_as_of)) => Some(Lag {
                    bytes: latest.bytes_since(replayed),
                    time: now.saturating_duration_since(fresh_as_of),
                }),
                _ => None,
            };
            // No positions, but the platform reports the lag in time.
            let platform = node
                .platform_fresh_as_of
                .filter(|_| node.role == Role::Replica && node.orphaned.is_none());
            if let (None, Some(fresh_as_of)) = (replayed, platform) {
                node.fresh_as_of = Some(fresh_as_of);
                node.lag = Some(Lag {
                    bytes: 0,
                    time: now.saturating_duration_since(fresh_as_of),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::causal::lsn::Lsn;
    use crate::health::fake::config;
    use crate::hub::Hub;

    /// A snapshot of three nodes, all up; `primaries` report primary on
    /// these timelines, the rest are replicas at `replayed`.
    fn snapshot(primaries: &[(usize, u32, u64)], replayed: u64) -> Snapshot {
        let hub = Hub::new(config(3)).expect("a valid test configuration");
        let mut next = (**hub.snapshot()).clone();
        for (index, node) in next.nodes.iter_mut().enumerate() {
            node.role = Role::Replica;
            node.timeline = Some(1);
            node.position = Some(Lsn(replayed));
            if let Some((_, timeline, position)) = primaries.iter().find(|p| p.0 == index) {
                node.role = Role::Primary;
                node.timeline = Some(*timeline);
                node.position = Some(Lsn(*position));
            }
        }
        next
    }

    #[test]
    fn lag_from_the_primarys_history() {
        let t = Instant::now();
        let mut assessor = Assessor::default();
        let mut next = snapshot(&[(0, 1, 100)], 100);
        assessor.assess(&mut next, &[0], t, t);
        assert_eq!(next.primary, Some(0));
        assert_eq!(next.nodes[1].lag, Some(Lag::default()));
        assert_eq!(next.nodes[0].lag, None, "the primary has no lag");

        // The primary moves on; the replicas stay at 100.
        let later = t + Duration::from_secs(2);
        let mut next = snapshot(&[(0, 1, 300)], 100);
        assessor.assess(&mut next, &[0], later, later);
        let lag = next.nodes[2].lag.expect("measured");
        assert_eq!(lag.bytes, 200);
        assert_eq!(lag.time, Duration::from_secs(2));
    }

    #[test]
    fn a_primary_on_a_lower_timeline_stays_fenced_once_a_higher_one_was_seen() {
        let t = Instant::now();
        let mut assessor = Assessor::default();
        let mut both = snapshot(&[(0, 1, 100), (1, 2, 200)], 100);
        both.nodes[2].timeline = Some(2);
        assessor.assess(&mut both, &[0, 1], t, t);
        assert_eq!(both.primary, Some(1));
        assert!(both.nodes[0].fenced && !both.split_brain);
        assert_eq!(both.routable, 0b110, "fenced nodes are not routable");

        // The new primary goes away; the old one alone is still fenced.
        let mut alone = snapshot(&[(0, 1, 100)], 100);
        alone.nodes[1].up = false;
        assessor.assess(&mut alone, &[0, 1], t, t);
        assert_eq!(alone.primary, None);
        assert!(alone.nodes[0].fenced);
        assert_eq!(alone.routable, 0b100);
    }

    #[test]
    fn equal_timelines_are_a_split_brain() {
        let mut assessor = Assessor::default();
        let mut next = snapshot(&[(0, 2, 100), (2, 2, 100)], 100);
        assessor.assess(&mut next, &[0, 2], Instant::now(), Instant::now());
        assert_eq!(next.primary, None);
        assert!(next.split_brain);
        assert!(next.nodes[0].fenced && next.nodes[2].fenced);
    }

    #[test]
    fn a_down_node_claims_nothing() {
        let mut assessor = Assessor::default();
        let mut next = snapshot(&[(0, 1, 100)], 100);
        next.nodes[0].up = false;
        assessor.assess(&mut next, &[0], Instant::now(), Instant::now());
        assert_eq!(next.primary, None);
        assert!(!next.split_brain && !next.nodes[0].fenced);
    }

    #[test]
    fn replicas_that_follow_no_live_primary_on_its_timeline_are_orphans() {
        let mut assessor = Assessor::default();
        let mut next = snapshot(&[(0, 2, 100)], 100);
        next.nodes[1].timeline = Some(2);
        next.nodes[2].timeline = Some(2);
        assessor.assess(&mut next, &[0, 1, 2], Instant::now(), Instant::now());
        assert_eq!(next.nodes[1].orphaned, None);
        assert_eq!(next.routable, 0b111);

        // node1 stops receiving; node2 is left on timeline 1.
        let mut next = snapshot(&[(0, 2, 100)], 100);
        next.nodes[1].timeline = Some(2);
        next.nodes[1].receiving = false;
        assessor.assess(&mut next, &[0, 1, 2], Instant::now(), Instant::now());
        assert_eq!(next.nodes[1].orphaned, Some(Orphan::NotReceiving));
        assert_eq!(
            next.nodes[2].orphaned,
            Some(Orphan::OtherTimeline {
                timeline: 1,
                primary_timeline: 2
            })
        );
        assert_eq!(next.routable, 0b001, "orphans serve no read");
        assert!(next.nodes[1].fresh_as_of.is_none() && next.nodes[1].lag.is_none());

        // Opted in: they serve unbounded reads (the freshness rule still
        // keeps them from bounded and causal ones).
        let mut lenient = Assessor::new(true);
        let mut next = snapshot(&[(0, 2, 100)], 100);
        lenient.assess(&mut next, &[0, 1, 2], Instant::now(), Instant::now());
        assert!(next.nodes[2].orphaned.is_some());
        assert_eq!(next.routable, 0b111);
    }

    #[test]
    fn without_a_primary_no_replica_is_an_orphan_and_their_lag_keeps_growing() {
        let t = Instant::now();
        let mut assessor = Assessor::default();
        let mut next = snapshot(&[(0, 1, 100)], 100);
        assessor.assess(&mut next, &[0, 1, 2], t, t);
        assert_eq!(next.routable, 0b111);

        // The primary dies: both replicas stop receiving.
        let later = t + Duration::from_secs(3);
        let mut next = snapshot(&[], 100);
        next.nodes[0].up = false;
        for node in &mut next.nodes[1..] {
            node.receiving = false;
        }
        assessor.assess(&mut next, &[0, 1, 2], later, later);
        assert_eq!(next.primary, None);
        assert!(next.nodes.iter().all(|node| node.orphaned.is_none()));
        assert_eq!(next.routable, 0b110, "the replicas serve reads");
        let lag = next.nodes[1]
            .lag
            .expect("measured from the last primary's history");
        assert_eq!(lag.time, Duration::from_secs(3), "a bounded read sees it");

        // A new primary is elected: the replica still not receiving from
        // it is an orphan again.
        let mut next = snapshot(&[(2, 2, 200)], 100);
        next.nodes[0].up = false;
        next.nodes[1].receiving = false;
        assessor.assess(&mut next, &[0, 1, 2], later, later);
        assert_eq!(next.nodes[1].orphaned, Some(Orphan::NotReceiving));
        assert_eq!(next.routable, 0b100);
    }
}
