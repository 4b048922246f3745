//! What the read loop asks of the hub for hedging and outlier detection
//! (the state and the pure decisions are in `hedging/`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::failure::safety::NodeFault;
use crate::hedging::{is_outlier, nanos_since, Observed, Peers, Traffic};
use crate::observe::events::Event;
use crate::observe::metrics::Hedge;
use crate::observe::status::HedgeCounts;

/// Hedging and outlier detection: what the read loop asks of the hub.
impl Hub {
    /// Node `index`'s live read traffic.
    pub(crate) fn traffic(&self, index: usize) -> &Traffic {
        &self.traffic[index]
    }

    /// `at` as nanoseconds since the hub's epoch.
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        nanos_since(self.epoch, at)
    }

    /// Node `index`'s 99th percentile read latency: its reads' estimate,
    /// and never below its probes' round trip. The estimate starts at zero
    /// and takes some hundred answers to reach a far node's round trip;
    /// until then a hedge delay or an outlier limit taken from it alone
    /// would hedge, or eject, a healthy node 150 ms away.
    pub(crate) fn read_p99(&self, index: usize) -> Duration {
        self.floored(index, self.traffic[index].p99())
    }

    /// `estimate`, never below node `index`'s probe round trip.
    fn floored(&self, index: usize, estimate: Duration) -> Duration {
        let rtt = self.snapshot().nodes.get(index).and_then(|node| node.rtt);
        estimate.max(rtt.unwrap_or_default())
    }

    /// Node `index`'s live reads at `at` (nanoseconds since the epoch),
    /// its p99 as [`Hub::read_p99`] gives it.
    pub(crate) fn traffic_of(&self, index: usize, at: u64) -> Observed {
        let mut node = self.traffic[index].observe(at);
        node.p99 = self.floored(index, node.p99);
        node
    }

    /// Node `index`, and what its peers look like, at `now`.
    pub(crate) fn observe(&self, index: usize, now: Instant) -> (Observed, Peers) {
        let at = self.nanos(now);
        let node = self.traffic_of(index, at);
        let reads = self
            .traffic
            .iter()
            .enumerate()
            .filter(|(peer, _)| *peer != index)
            .filter_map(|(_, traffic)| traffic.observe(at).answer_age);
        let snapshot = self.snapshot();
        let others = || (0..snapshot.nodes.len()).filter(|peer| *peer != index);
        let probes = others()
            .map(|peer| &snapshot.nodes[peer])
            .filter(|state| state.up && state.last_error.is_none())
            .filter_map(|state| state.last_probe)
            .map(|probed| now.saturating_duration_since(probed));
        let peers = Peers {
            answer_age: reads.chain(probes).min(),
            one_out: others().any(|peer| self.is_suspect(peer)),
            none_left: !others().any(|peer| snapshot.is_routable(peer) && !self.is_suspect(peer)),
        };
        (node, peers)
    }

    /// The counters, copied.
    pub(crate) fn hedge_counts(&self) -> HedgeCounts {
        let counters = &self.counters;
        HedgeCounts {
            sent: counters.sent.load(Relaxed),
            won: counters.won.load(Relaxed),
            refused: counters.refused.load(Relaxed),
            retries_refused: counters.retries_refused.load(Relaxed),
            outliers: counters.outliers.load(Relaxed),
            connections_kept: counters.drained.kept.load(Relaxed),
            connections_discarded: counters.drained.discarded.load(Relaxed),
        }
    }

    /// A hedge of a read on `from` sent to `to`.
    pub(crate) fn hedge_sent(&self, from: usize, to: usize) {
        self.counters.sent.fetch_add(1, Relaxed);
        self.count_hedge(to, Hedge::Sent);
        tracing::debug!(from = %self.context(from).node, to = %self.context(to).node, "read hedged");
        self.emit_with(|| Event::HedgeSent {
            from: self.context(from).node.to_string(),
            to: self.context(to).node.to_string(),
        });
    }

    /// The hedge on `node` answered first.
    pub(crate) fn hedge_won(&self, node: usize) {
        self.counters.won.fetch_add(1, Relaxed);
        self.count_hedge(node, Hedge::Won);
        self.emit_with(|| Event::HedgeWon {
            node: self.context(node).node.to_string(),
        });
    }

    /// The budget refused a hedge (`retry` false) or a retry of a read
    /// whose first node was `node`.
    pub(crate) fn extra_read_refused(&self, node: usize, retry: bool) {
        let counter = match retry {
            true => &self.counters.retries_refused,
            false => &self.counters.refused,
        };
        counter.fetch_add(1, Relaxed);
        let event = match retry {
            true => Hedge::RetryRefused,
            false => Hedge::Refused,
        };
        self.count_hedge(node, event);
        tracing::debug!(node = %self.context(node).node, retry, "read budget exhausted");
        self.emit_with(|| Event::ReadBudgetExhausted {
            node: self.context(node).node.to_string(),
            retry,
        });
    }

    /// Node `index` was found an outlier: marked suspect (out of routing,
    /// probed now).
    pub(crate) fn outlier_found(&self, index: usize, observed: Observed) {
        self.counters.outliers.fetch_add(1, Relaxed);
        self.count_hedge(index, Hedge::Outlier);
        let node = self.context(index).node;
        tracing::warn!(node = %node, silent_for = ?observed.silent_for,
            in_flight = observed.in_flight, "node answers no reads while others do; marked suspect");
        self.blame(index, NodeFault::Suspect);
        self.emit_with(|| Event::OutlierDetected {
            node: node.to_string(),
            silent_for: observed.silent_for,
        });
    }

    /// Every node with reads in flight, not yet suspect, checked against
    /// the outlier rule at `now`; an outlier is marked suspect.
    fn find_outliers(&self, now: Instant) {
        for index in 0..self.len() {
            if !self.traffic[index].busy() || self.is_suspect(index) {
                continue;
            }
            let (observed, peers) = self.observe(index, now);
            if is_outlier(&self.config.outliers, observed, peers) {
                self.outlier_found(index, observed);
            }
        }
    }

    /// Counts a hedging event on node `index` (with the `metrics` feature).
    fn count_hedge(&self, index: usize, event: Hedge) {
        if !cfg!(feature = "metrics") {
            return;
        }
        if let Some(node) = self.node(index) {
            node.metrics.hedge(event);
        }
    }
}

/// The outlier watch: while any node has reads in flight, the outlier rule
/// is checked every quarter of `outliers.silence` (at least 1 ms), one
/// task for every read instead of a timer in each; idle otherwise, until a
/// read starts on a node that had none. Runs until `shutdown`.
pub(crate) async fn watch_outliers(hub: Arc<Hub>, shutdown: CancellationToken) {
    let every = (hub.config.outliers.silence / 4).max(Duration::from_millis(1));
    loop {
        let busy = (0..hub.len()).any(|index| hub.traffic[index].busy());
        if !busy {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = hub.counters.reads_started.notified() => {}
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        hub.find_outliers(Instant::now());
    }
}
