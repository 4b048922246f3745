//! The monitor task: wait for the next due probe (or a caller's report),
//! probe, update each node's tracker, publish a new snapshot.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::probe::ProbeConnection;
use super::tracker::{Tracker, Transition};
use crate::manager::Shared;
use crate::node::Node;
use crate::topology::Snapshot;

/// Owns the probe connections and trackers; the single writer of snapshots.
#[derive(Debug)]
pub(crate) struct Monitor {
    shared: Arc<Shared>,
    trackers: Vec<Tracker>,
    probes: Vec<ProbeConnection>,
}

/// One probe's result for one node.
struct Outcome {
    index: usize,
    suspected: bool,
    result: Result<(), String>,
}

impl Monitor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        let count = shared.nodes.len();
        Self {
            shared,
            trackers: vec![Tracker::new(now); count],
            probes: (0..count).map(|_| ProbeConnection::default()).collect(),
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
        self.trackers
            .iter()
            .map(Tracker::next_probe)
            .min()
            .unwrap_or_else(|| Instant::now() + self.shared.config.health.interval)
    }

    /// Probes the due nodes concurrently, then publishes one new snapshot.
    async fn round(&mut self) {
        let now = Instant::now();
        let suspected = self.collect_reports(now);
        let outcomes = self.probe_due(now, &suspected).await;
        if outcomes.is_empty() {
            return;
        }
        self.publish(&outcomes);
        for outcome in outcomes.iter().filter(|o| o.suspected) {
            self.shared.nodes[outcome.index].take_suspect();
        }
    }

    /// Nodes that callers reported (suspect or a topology hint) are due now.
    fn collect_reports(&mut self, now: Instant) -> Vec<bool> {
        let nodes = &self.shared.nodes;
        let mut suspected = Vec::with_capacity(nodes.len());
        for (node, tracker) in nodes.iter().zip(&mut self.trackers) {
            let suspect = node.is_suspect();
            if suspect | node.take_probe_request() {
                tracker.probe_now(now);
            }
            suspected.push(suspect);
        }
        suspected
    }

    async fn probe_due(&mut self, now: Instant, suspected: &[bool]) -> Vec<Outcome> {
        let timeout = self.shared.config.health.probe_timeout;
        let nodes = &self.shared.nodes;
        let probes = self
            .probes
            .iter_mut()
            .enumerate()
            .filter(|(index, _)| self.trackers[*index].is_due(now))
            .map(|(index, probe)| async move {
                let result = probe.probe(&nodes[index].probe_config, timeout).await;
                Outcome {
                    index,
                    suspected: suspected[index],
                    result,
                }
            });
        join_all(probes).await
    }

    fn publish(&mut self, outcomes: &[Outcome]) {
        let finished = Instant::now();
        let settings = &self.shared.config.health;
        let mut next: Snapshot = (**self.shared.snapshot.load()).clone();
        for outcome in outcomes {
            let tracker = &mut self.trackers[outcome.index];
            let state = &mut next.nodes[outcome.index];
            let transition = match &outcome.result {
                Ok(()) => tracker.on_success(finished, settings),
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
                on_transition(
                    &self.shared.nodes[outcome.index],
                    transition,
                    &outcome.result,
                );
            }
        }
        self.shared.snapshot.store(Arc::new(next));
    }
}

fn on_transition(node: &Node, transition: Transition, result: &Result<(), String>) {
    let context = &node.context;
    match transition {
        Transition::WentDown => {
            let dropped = node.discard_idle();
            let error = result
                .as_ref()
                .err()
                .map(String::as_str)
                .unwrap_or_default();
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
