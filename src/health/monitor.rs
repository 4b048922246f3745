//! The monitor task: wait for the next due probe (or a caller's report),
//! probe, update each node's tracker, publish a new snapshot.

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::assess::Assessor;
use super::probe::{ProbeConnection, ProbeReport};
use super::tracker::{Tracker, Transition};
use crate::config::Role;
use crate::events;
use crate::manager::Shared;
use crate::node::Node;
use crate::topology::{NodeState, Snapshot};

/// Weight of a new round trip in the smoothed one.
const RTT_ALPHA: f64 = 0.3;

/// Owns the probe connections and trackers; the single writer of snapshots.
#[derive(Debug)]
pub(crate) struct Monitor {
    shared: Arc<Shared>,
    probes: Vec<ProbeConnection>,
    judge: Judge,
}

/// Per-node state machines and the topology judge: what `publish` updates
/// while other probes are still in flight.
#[derive(Debug)]
struct Judge {
    trackers: Vec<Tracker>,
    assessor: Assessor,
}

/// One probe's result for one node.
struct Outcome {
    index: usize,
    suspected: bool,
    result: Result<ProbeReport, String>,
}

impl Monitor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        let count = shared.nodes.len();
        Self {
            shared,
            probes: (0..count).map(|_| ProbeConnection::default()).collect(),
            judge: Judge {
                trackers: vec![Tracker::new(now); count],
                assessor: Assessor::default(),
            },
        }
    }

    /// Probes every node once (all are due at start) and publishes the result.
    pub(crate) async fn first_round(&mut self) {
        self.round().await;
    }

    /// Runs until `shutdown` is cancelled.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(self.next_due()) => {}
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.round() => {}
            }
        }
        tracing::debug!("health monitor stopped");
    }

    fn next_due(&self) -> Instant {
        self.judge
            .trackers
            .iter()
            .map(Tracker::next_probe)
            .min()
            .unwrap_or_else(|| Instant::now() + self.shared.config.health.interval)
    }

    /// Probes the due nodes concurrently and publishes each result as it
    /// arrives, so a silent node's probe never holds back the others.
    async fn round(&mut self) {
        let now = Instant::now();
        let suspected = self.collect_reports(now);
        let shared = &self.shared;
        let timeout = shared.config.health.probe_timeout;
        let judge = &mut self.judge;
        let mut probes: FuturesUnordered<_> = self
            .probes
            .iter_mut()
            .enumerate()
            .filter(|(index, _)| judge.trackers[*index].is_due(now))
            .map(|(index, probe)| (index, probe, suspected[index]))
            .map(|(index, probe, suspected)| async move {
                let node = &shared.nodes[index];
                let result = probe
                    .probe(&shared.connector, &node.probe_config, timeout)
                    .await;
                Outcome {
                    index,
                    suspected,
                    result,
                }
            })
            .collect();
        while let Some(outcome) = probes.next().await {
            judge.publish(shared, &outcome);
            if outcome.suspected {
                shared.nodes[outcome.index].take_suspect();
            }
            // Wake writers waiting for a primary: a cleared suspect flag counts.
            shared.published.send_modify(|generation| *generation += 1);
        }
    }

    /// Nodes that callers reported (suspect or a topology hint) are due now.
    fn collect_reports(&mut self, now: Instant) -> Vec<bool> {
        let nodes = &self.shared.nodes;
        let mut suspected = Vec::with_capacity(nodes.len());
        for (node, tracker) in nodes.iter().zip(&mut self.judge.trackers) {
            let suspect = node.is_suspect();
            if suspect | node.take_probe_request() {
                tracker.probe_now(now);
            }
            suspected.push(suspect);
        }
        suspected
    }
}

impl Judge {
    /// Applies one outcome, judges the topology, publishes the snapshot and
    /// sends the events.
    fn publish(&mut self, shared: &Shared, outcome: &Outcome) {
        let finished = Instant::now();
        let previous = shared.snapshot.load_full();
        let mut next: Snapshot = (*previous).clone();
        self.apply(shared, &mut next.nodes[outcome.index], outcome, finished);
        self.assessor.assess(&mut next, &[outcome.index], finished);
        let events = events::diff(&previous, &next, &shared.nodes, shared.config.max_staleness);
        shared.snapshot.store(Arc::new(next));
        for event in events {
            // No subscriber is not an error.
            let _ = shared.events.send(event);
        }
    }

    fn apply(
        &mut self,
        shared: &Shared,
        state: &mut NodeState,
        outcome: &Outcome,
        finished: Instant,
    ) {
        let settings = &shared.config.health;
        let tracker = &mut self.trackers[outcome.index];
        let transition = match &outcome.result {
            Ok(report) => {
                record_report(state, report);
                tracker.on_success(finished, settings)
            }
            Err(error) => {
                state.last_error = Some(Arc::from(error.as_str()));
                tracker.on_failure(finished, outcome.suspected, settings)
            }
        };
        state.up = tracker.is_up();
        state.last_probe = Some(finished);
        if transition == Some(Transition::CameUp) {
            state.last_error = None;
        }
        if let Some(transition) = transition {
            let error = outcome.result.as_ref().err().map(String::as_str);
            on_transition(&shared.nodes[outcome.index], transition, error);
        }
    }
}

fn record_report(state: &mut NodeState, report: &ProbeReport) {
    state.role = if report.in_recovery {
        Role::Replica
    } else {
        Role::Primary
    };
    state.timeline = report.timeline.or(state.timeline);
    state.position = report.position;
    state.rtt = Some(match state.rtt {
        Some(smoothed) => smoothed.mul_f64(1.0 - RTT_ALPHA) + report.rtt.mul_f64(RTT_ALPHA),
        None => report.rtt,
    });
}

fn on_transition(node: &Node, transition: Transition, error: Option<&str>) {
    let context = &node.context;
    match transition {
        Transition::WentDown => {
            let dropped = node.discard_idle();
            let error = error.unwrap_or_default();
            tracing::warn!(
                node = %context.node, region = %context.region, from = "up", to = "down",
                error, dropped_idle = dropped, "node health changed"
            );
        }
        Transition::CameUp => tracing::info!(
            node = %context.node, region = %context.region, from = "down", to = "up",
            "node health changed"
        ),
    }
}
