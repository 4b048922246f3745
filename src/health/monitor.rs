//! The monitor task: each node is probed on its own schedule (its tracker's,
//! a caller's report, the failover watch), every probe in flight on its
//! own, and each answer published as it lands. A node that does not answer
//! delays only its own verdict: the others are probed again while its probe
//! waits out its timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::assess::Assessor;
use super::probe::{AuroraView, Probe, ProbeConnection, ProbeReport};
use super::tracker::{jittered, Tracker, Transition};
use crate::config::clock;
use crate::config::{HealthSettings, Role};
use crate::connect::node::Node;
use crate::health::capability::Capability;
use crate::hub::Hub;
use crate::observe::events;
use crate::topology::{NodeState, Snapshot};
use discovery::Discovery;

/// Weight of a new round trip in the smoothed one.
const RTT_ALPHA: f64 = 0.3;

/// Owns the probes and trackers; the single writer of snapshots.
#[derive(Debug)]
pub(crate) struct Monitor<P = ProbeConnection> {
    hub: Arc<Hub>,
    /// One per node; `None` for an empty discovery slot, or while the
    /// node's probe is in flight (it owns the probe until it lands).
    probes: Vec<Option<P>>,
    /// Per node, bumped when discovery fills or empties the slot: a probe
    /// that lands after its slot changed is dropped.
    generations: Vec<u64>,
    judge: Judge,
    /// Topology discovery, when configured (`discovery.rs`).
    discovery: Option<Discovery<P>>,
    /// The failover watch: every node probed each
    /// `health.failover_probe_interval` while no primary is elected.
    watch: Watch,
}

/// While no primary is elected, probe every node at a short interval, for
/// at most `health.failover_watch`, so a promoted replica takes writes
/// within about that interval of its promotion. The gap backs off as the
/// watch ages (see [`watch_gap`]), so a fleet's long failover is no storm.
#[derive(Debug, Default)]
struct Watch {
    /// When the watch ends (stays set, expired, until a primary is elected
    /// again, so one failover gets one watch).
    until: Option<Instant>,
    /// When the watch started.
    started: Option<Instant>,
    /// When the last watched round started.
    last_round: Option<Instant>,
    /// The gap from the last round to the next.
    gap: Duration,
    /// Draws for the jitter of the gaps.
    rng: fastrand::Rng,
}

impl Watch {
    /// Whether the watch is on at `now`.
    fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Starts the watch when no primary is elected (once per failover), and
    /// ends it when one is.
    fn update(&mut self, elected: bool, now: Instant, settings: &HealthSettings) {
        match (elected, self.until) {
            (true, Some(_)) => {
                tracing::debug!("failover watch over: a primary is elected");
                self.until = None;
                self.started = None;
                self.last_round = None;
            }
            (false, None) if !settings.failover_watch.is_zero() => {
                tracing::info!(every = ?settings.failover_probe_interval,
                    for_at_most = ?settings.failover_watch,
                    "no primary elected: probing every node fast until one is");
                self.until = Some(clock::after(now, settings.failover_watch));
                self.started = Some(now);
                // The first watched round one watch interval on: the other
                // nodes' answers of this moment (a promotion among them)
                // are still landing.
                self.last_round = Some(now);
                self.gap = watch_gap(Duration::ZERO, settings, self.rng.f64());
            }
            _ => {}
        }
    }

    /// The next watched round, if the watch is on.
    fn next_round(&self, now: Instant) -> Option<Instant> {
        if !self.active(now) {
            return None;
        }
        Some(match self.last_round {
            Some(last) => clock::after(last, self.gap),
            None => now,
        })
    }

    /// Starts a watched round at `now`: the next one is due after a gap
    /// for the watch's age.
    fn round(&mut self, now: Instant, settings: &HealthSettings) {
        self.last_round = Some(now);
        let age = self.started.map_or(Duration::ZERO, |at| now - at);
        self.gap = watch_gap(age, settings, self.rng.f64());
    }
}

/// The failover watch's gap between rounds at `age` into the watch:
/// `failover_probe_interval` while that is longer than `failover_backoff`
/// of `age`, then that share of `age`, never longer than `interval` (nor
/// shorter than `failover_probe_interval`); jittered by `probe_jitter`
/// with the uniform `draw`. A promotion at any moment of the watch is seen
/// within one such gap.
fn watch_gap(age: Duration, settings: &HealthSettings, draw: f64) -> Duration {
    let grown = Duration::try_from_secs_f64(age.as_secs_f64() * settings.failover_backoff)
        .unwrap_or(Duration::MAX);
    let gap = grown
        .min(settings.interval)
        .max(settings.failover_probe_interval);
    jittered(gap, settings.probe_jitter, draw)
}

/// Per-node state machines and the topology judge: what `publish` updates
/// while other probes are still in flight.
#[derive(Debug)]
struct Judge {
    trackers: Vec<Tracker>,
    assessor: Assessor,
    /// What each node's last probe said of its Aurora cluster (`None`
    /// off Aurora, or after a failed probe).
    aurora: Vec<Option<AuroraView>>,
}

/// A probe on its way: the node, the probe, and the slot's generation.
struct Launch<P> {
    index: usize,
    probe: P,
    generation: u64,
    suspected: bool,
}

/// A probe that landed: the probe (back to its slot) and what it found.
struct Landed<P> {
    probe: P,
    generation: u64,
    outcome: Outcome,
}

/// One probe's result for one node.
struct Outcome {
    index: usize,
    /// A caller had reported the node before this probe started.
    suspected: bool,
    /// When the probe was sent.
    sent: Instant,
    result: Result<ProbeReport, String>,
}

/// Tells the hub when the monitor task ends, unwinding included.
struct Alive {
    hub: Arc<Hub>,
    /// Shut down as asked (close, or the last handle dropped).
    asked: bool,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.hub.monitor_ended(self.asked);
    }
}

impl Monitor<ProbeConnection> {
    /// A monitor with a real probe connection per node.
    pub(crate) fn connect(hub: Arc<Hub>) -> Self {
        let probes = hub.each_node().map(|(_, node)| probe_for(&node)).collect();
        Self::new(hub, probes).discovering(Box::new(|_, node| probe_for(node)))
    }
}

/// A probe connection to `node`.
fn probe_for(node: &Node) -> ProbeConnection {
    ProbeConnection::new(
        node.connector.clone(),
        node.probe_config.clone(),
        node.context.clone(),
        node.role,
    )
}

impl<P: Probe> Monitor<P> {
    /// A monitor with one probe per configured node of `hub`, in the same
    /// order (discovery slots start empty), and no discovery.
    pub(crate) fn new(hub: Arc<Hub>, probes: Vec<P>) -> Self {
        let now = Instant::now();
        let count = hub.len();
        let serve_orphans = hub.config.allow_orphaned_reads;
        debug_assert_eq!(probes.len(), hub.configured(), "one probe per node");
        let mut probes: Vec<Option<P>> = probes.into_iter().map(Some).collect();
        probes.resize_with(count, || None);
        Self {
            hub,
            probes,
            generations: vec![0; count],
            judge: Judge {
                // Each its own, not clones: each draws its own jitter.
                trackers: (0..count).map(|_| Tracker::new(now)).collect(),
                assessor: Assessor::new(serve_orphans),
                aurora: vec![None; count],
            },
            discovery: None,
            watch: Watch::default(),
        }
    }

    /// Probes every node once (all are due at start) and publishes each
    /// answer; returns when every probe has landed.
    pub(crate) async fn first_round(&mut self) {
        let timeout = self.hub.config.health.probe_timeout;
        let mut flights: FuturesUnordered<_> = self
            .due(Instant::now())
            .into_iter()
            .map(|launch| fly(launch, timeout))
            .collect();
        while let Some(landed) = flights.next().await {
            self.land(landed);
        }
        self.discover();
    }

    /// Runs until `shutdown` is cancelled. However it ends (a panic
    /// included), the hub learns it.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut alive = Alive {
            hub: Arc::clone(&self.hub),
            asked: false,
        };
        let timeout = self.hub.config.health.probe_timeout;
        let mut flights = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(landed) = flights.next(), if !flights.is_empty() => {
                    self.land(landed);
                    self.discover();
                    let elected = self.hub.primary_index().is_some();
                    self.watch
                        .update(elected, Instant::now(), &self.hub.config.health);
                }
                () = self.hub.reported() => {}
                () = tokio::time::sleep_until(self.next_due()) => {}
            }
            // Every due probe whose node has none in flight.
            let due = self.due(Instant::now());
            flights.extend(due.into_iter().map(|launch| fly(launch, timeout)));
        }
        alive.asked = true;
        tracing::debug!("health monitor stopped");
    }

    /// When the next probe is due: the earliest tracker of a node whose
    /// probe is not in flight, or the failover watch's next round.
    fn next_due(&self) -> Instant {
        let watched = self.watch.next_round(Instant::now());
        let scheduled = self
            .judge
            .trackers
            .iter()
            .zip(&self.probes)
            .filter(|(_, probe)| probe.is_some())
            .map(|(tracker, _)| tracker.next_probe())
            .min()
            .unwrap_or_else(|| clock::after(Instant::now(), self.hub.config.health.interval));
        watched.map_or(scheduled, |watched| watched.min(scheduled))
    }

    /// Takes out the probes due at `now` (reports and the failover watch
    /// make nodes due at once); nodes with a probe in flight wait for it.
    fn due(&mut self, now: Instant) -> Vec<Launch<P>> {
        let health = &self.hub.config.health;
        if self.watch.next_round(now).is_some_and(|at| at <= now) {
            // A failover is under way: every node is a candidate now.
            self.watch.round(now, health);
            for tracker in &mut self.judge.trackers {
                tracker.probe_now(now);
            }
        }
        let mut due = Vec::new();
        for (index, slot) in self.probes.iter_mut().enumerate() {
            if slot.is_none() {
                // Empty, or in flight: a report waits for the landing.
                continue;
            }
            let tracker = &mut self.judge.trackers[index];
            let suspected = self.hub.is_suspect(index);
            if suspected | self.hub.take_probe_request(index) {
                tracker.probe_now(now);
            }
            if let Some(probe) = slot.take_if(|_| tracker.is_due(now)) {
                due.push(Launch {
                    index,
                    probe,
                    generation: self.generations[index],
                    suspected,
                });
            }
        }
        due
    }

    /// Puts a landed probe back in its slot and publishes what it found,
    /// unless discovery changed the slot meanwhile.
    fn land(&mut self, landed: Landed<P>) {
        let index = landed.outcome.index;
        if self.generations[index] != landed.generation {
            return;
        }
        self.probes[index] = Some(landed.probe);
        self.judge.publish(&self.hub, &landed.outcome);
    }
}

/// Runs one probe, bounded by `timeout`. A caller could not use a
/// suspected node: its probe proves a new connection works, not only the
/// probe's old one.
async fn fly<P: Probe>(launch: Launch<P>, timeout: Duration) -> Landed<P> {
    let Launch {
        index,
        mut probe,
        generation,
        suspected,
    } = launch;
    if suspected {
        probe.reconnect();
    }
    let sent = Instant::now();
    let result = match tokio::time::timeout(timeout, probe.probe()).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {timeout:?}")),
    };
    Landed {
        probe,
        generation,
        outcome: Outcome {
            index,
            suspected,
            sent,
            result,
        },
    }
}

impl Judge {
    /// Applies one outcome, judges the topology, and publishes the snapshot
    /// with its events (answering the caller's report, if there was one).
    fn publish(&mut self, hub: &Hub, outcome: &Outcome) {
        let finished = Instant::now();
        let previous = hub.snapshot();
        let mut next: Snapshot = (**previous).clone();
        self.apply(hub, &mut next.nodes[outcome.index], outcome, finished);
        self.assessor
            .assess(&mut next, &[outcome.index], outcome.sent, finished);
        let name = |index| hub.context(index).node.to_string();
        let events = events::diff(&previous, &next, name, hub.config.max_staleness);
        drop(previous);
        let answered = outcome.suspected.then_some(outcome.index);
        hub.publish(next, events, answered);
    }

    fn apply(&mut self, hub: &Hub, state: &mut NodeState, outcome: &Outcome, finished: Instant) {
        let settings = &hub.config.health;
        let tracker = &mut self.trackers[outcome.index];
        let transition = match &outcome.result {
            Ok(report) => {
                self.aurora[outcome.index] = report.aurora.clone();
                record_report(state, report);
                tracker.on_success(finished, settings)
            }
            Err(error) => {
                self.aurora[outcome.index] = None;
                state.last_error = Some(Arc::from(error.as_str()));
                tracker.on_failure(finished, outcome.suspected, settings)
            }
        };
        state.up = tracker.is_up();
        state.last_probe = Some(finished);
        if transition == Some(Transition::CameUp) {
            state.last_error = None;
        }
        if let (Some(transition), Some(node)) = (transition, hub.node(outcome.index)) {
            let error = outcome.result.as_ref().err().map(String::as_str);
            on_transition(&node, transition, error);
        }
    }
}

fn record_report(state: &mut NodeState, report: &ProbeReport) {
    state.role = if report.in_recovery {
        Role::Replica
    } else {
        Role::Primary
    };
    // A fact missing from one answer keeps its last value, unless the node
    // cannot report it at all (then an old value would never be corrected).
    let kept = |capability| !report.lacks(capability);
    state.timeline = report
        .timeline
        .or(state.timeline.filter(|_| kept(Capability::Timeline)));
    state.system = report
        .system
        .or(state.system.filter(|_| kept(Capability::SystemId)));
    state.position = report.position;
    // Unknown is not orphaned: a replica that cannot show its receiver
    // still shows its replay position, and staleness judges that.
    state.receiving = report.receiving.unwrap_or(true);
    state.replayed_at = report.replayed_at;
    state.platform_fresh_as_of = report.platform_fresh_as_of;
    state.missing = Arc::clone(&report.missing);
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

mod discovery;
#[cfg(test)]
mod tests;
