//! The hub: the state the handle and the health monitor share.
//!
//! The handle's call loops read it (the snapshot, the pools, the callers'
//! suspect flags) and report what they saw (a node failed, the topology
//! seems to have changed). The monitor probes, publishes the next snapshot
//! with its events, and answers the reports. Neither knows the other: both
//! hold the hub, and the hub knows neither.

mod deadlines;
mod drain;
mod hedging;
mod observe;
mod pools;
mod readiness;
mod status;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

pub(crate) use hedging::watch_outliers;
pub(crate) use pools::sweep_pools;

use crate::commit::dialect::OutcomeSql;
use crate::config::clock;
use crate::config::{Config, NodeConfig, ReadStrategy, Role};
use crate::connect::node::Node;
use crate::connect::tls::Connector;
use crate::failure::error::{Error, NodeContext};
use crate::failure::safety::NodeFault;
use crate::hedging::{Budget, Counters, Traffic};
use crate::observe::events::Event;
use crate::observe::metrics::HubMetrics;
use crate::observe::window::CallWindow;
use crate::routing::freshness::Freshness;
use crate::routing::node_set::{Members, NodeSet};
use crate::routing::strategy::{pick_primary, pick_read};
use crate::routing::view::LiveView;
use crate::topology::Snapshot;

pub(crate) use deadlines::{keep_deadlines, Expired};
pub(crate) use drain::{Held, Work};

/// Events kept for a subscriber that falls behind.
const EVENT_BUFFER: usize = 1024;

/// What the handle and the monitor share.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) config: Config,
    /// For cancel requests (each node's pool and probe have their own).
    pub(crate) connector: Connector,
    /// Every node, by index: the configured nodes first (fixed), then the
    /// discovery slots (`config.discovery`), filled and emptied by the
    /// monitor. A call that picked a node just before its slot was emptied
    /// finds none at checkout: unreachable, nothing sent (see
    /// `Attempt::checkout`). Calls already holding it keep it until they
    /// end; its pool is dropped with the last of them.
    nodes: Box<[Slot]>,
    /// How many of `nodes` are configured.
    configured: usize,
    /// The statements that resolve a lost `COMMIT`, fixed by the config.
    pub(crate) outcome_sql: OutcomeSql,
    /// The monitor's latest view of every node; replaced whole.
    snapshot: ArcSwap<Snapshot>,
    /// Nodes callers saw fail: out of routing until the monitor probes them.
    suspects: NodeSet,
    /// Nodes callers saw a topology hint from: probe soon, keep routing.
    probe_requests: NodeSet,
    /// Wakes the monitor when a caller reports a node.
    wake: Notify,
    /// Bumped after every published snapshot; writers holding for a
    /// primary wait on it.
    published: watch::Sender<u64>,
    /// Topology events for subscribers.
    events: broadcast::Sender<Event>,
    /// Calls in flight, and `close` waiting for them.
    drain: drain::Drain,
    /// Every statement's deadline, kept by one task (`keep_deadlines`)
    /// instead of a timer per statement.
    pub(crate) deadlines: Arc<deadlines::Deadlines>,
    /// Every node's live reads, by index (outlier detection, hedge delays).
    pub(crate) traffic: Box<[Traffic]>,
    /// When the hub was built: `traffic`'s times count from it.
    pub(crate) epoch: Instant,
    /// Hedges and read retries.
    pub(crate) budget: Budget,
    /// Hedges sent, won and refused; retries refused; outliers found.
    pub(crate) counters: Counters,
    /// Cleared when the monitor task ends for any reason but `close`.
    monitor_alive: AtomicBool,
    /// Reads that ended recently, and their failures (for readiness).
    pub(crate) read_outcomes: CallWindow,
    /// Writes and transactions that ended recently, and their failures.
    pub(crate) write_outcomes: CallWindow,
    /// Since when no primary, and since when no node for a read with the
    /// configured options, has been routable (`None` while one is).
    missing: Mutex<Missing>,
    /// Deployment-wide metric handles (nothing without the `metrics`
    /// feature).
    pub(crate) metrics: HubMetrics,
    /// Statements sent as reads that could write, run as writes instead.
    writes_through_reads: AtomicU64,
}

/// Building, and the lifecycle.
impl Drop for Hub {
    fn drop(&mut self) {
        // Its deadline keeper ends now, not at its next alarm.
        self.deadlines.release_keeper();
    }
}

impl Hub {
    /// Validates the configuration and builds every node's pool (no I/O).
    pub(crate) fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let nodes = config
            .nodes
            .iter()
            .map(|node| {
                let preferred = &config.nearest.preferred_regions;
                let node = &NodeConfig {
                    statement_mode: Some(config.statement_mode_of(node)),
                    ..node.clone()
                };
                Node::build(
                    node,
                    &config.pool,
                    &config.local_region,
                    preferred,
                    &config.tls,
                    config.password_provider.as_ref(),
                )
            })
            .collect::<Result<Box<[Node]>, _>>()?;
        warn_without_local_node(&config, &nodes);
        let configured = nodes.len();
        let slots = config.discovery.as_ref().map_or(0, |d| d.max_nodes);
        let count = configured + slots;
        let snapshot = Snapshot::initial(nodes.iter().map(Node::initial_state), slots)
            .with_nearest_window(config.nearest.window);
        let window = config.readiness.window;
        let nodes = nodes
            .into_vec()
            .into_iter()
            .map(|node| Slot::Configured(Arc::new(node)))
            .chain((0..slots).map(|_| Slot::Discovered(ArcSwapOption::empty())))
            .collect();
        let epoch = Instant::now();
        Ok(Self {
            traffic: (0..count).map(|_| Traffic::default()).collect(),
            epoch,
            budget: Budget::new(&config.hedging, epoch),
            counters: Counters::default(),
            snapshot: ArcSwap::from_pointee(snapshot),
            outcome_sql: OutcomeSql::new(config.outcomes.marker_table.as_deref(), count),
            config,
            connector: Connector::for_cancels(),
            nodes,
            configured,
            suspects: NodeSet::new(count),
            probe_requests: NodeSet::new(count),
            wake: Notify::new(),
            published: watch::Sender::new(0),
            events: broadcast::Sender::new(EVENT_BUFFER),
            drain: drain::Drain::default(),
            deadlines: Arc::default(),
            monitor_alive: AtomicBool::new(true),
            read_outcomes: CallWindow::since(window, epoch),
            write_outcomes: CallWindow::since(window, epoch),
            missing: Mutex::new(Missing::default()),
            metrics: HubMetrics::new(),
            writes_through_reads: AtomicU64::new(0),
        })
    }

    /// Later calls fail with [`Error::closed()`]; writes holding for a
    /// primary stop holding and fail with it too. Calls in flight go on
    /// (see [`Hub::finish_calls`]).
    pub(crate) fn close(&self) {
        self.drain.close();
        self.published.send_modify(|generation| *generation += 1);
    }

    /// Closes every node's pool: idle connections are dropped, and calls
    /// waiting for one fail.
    pub(crate) fn close_pools(&self) {
        for node in self.nodes.iter().filter_map(Slot::load) {
            node.pool.close();
        }
    }

    /// [`Error::closed()`] after `close`; [`Error::monitor_stopped()`] if the
    /// monitor died, rather than route on a topology nobody updates.
    pub(crate) fn ensure_open(&self) -> Result<(), Error> {
        if self.drain.is_closing() {
            return Err(Error::closed());
        }
        if !self.monitor_alive.load(Ordering::Acquire) {
            return Err(Error::monitor_stopped());
        }
        Ok(())
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.drain.is_closing()
    }

    /// Whether the monitor is still running (or was stopped by `close`).
    pub(crate) fn monitor_running(&self) -> bool {
        self.monitor_alive.load(Ordering::Acquire)
    }

    /// The monitor task ended: `asked` (close, or the last handle dropped),
    /// or not (a panic, or its runtime shut down).
    pub(crate) fn monitor_ended(&self, asked: bool) {
        if !asked {
            tracing::error!("the health monitor stopped; calls fail until a new manager is built");
        }
        self.monitor_alive.store(false, Ordering::Release);
        // Writers holding for a primary would wait for nothing.
        self.published.send_modify(|generation| *generation += 1);
    }

    /// The node's name and region, for errors and logs.
    pub(crate) fn context(&self, index: usize) -> NodeContext {
        match self.node(index) {
            Some(node) => node.context.clone(),
            None => NodeContext {
                node: Arc::from(format!("slot {index}")),
                region: Arc::from(""),
            },
        }
    }
}

/// Where a node lives: a configured node never changes (reached with no
/// atomic swap), a discovery slot is filled and emptied by the monitor.
#[derive(Debug)]
enum Slot {
    Configured(Arc<Node>),
    Discovered(ArcSwapOption<Node>),
}

impl Slot {
    fn load(&self) -> Option<Arc<Node>> {
        match self {
            Slot::Configured(node) => Some(Arc::clone(node)),
            Slot::Discovered(slot) => slot.load_full(),
        }
    }
}

/// The nodes: configured, and discovered.
impl Hub {
    /// Node `index`: `None` for an empty discovery slot (never filled, or
    /// its node removed; routing picks neither).
    pub(crate) fn node(&self, index: usize) -> Option<Arc<Node>> {
        self.nodes.get(index)?.load()
    }

    /// Every node and discovery slot.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// How many nodes are configured (indexes below it never change).
    pub(crate) fn configured(&self) -> usize {
        self.configured
    }

    /// Every node now (configured, and discovered ones in their slots),
    /// with its index.
    pub(crate) fn each_node(&self) -> impl Iterator<Item = (usize, Arc<Node>)> + '_ {
        (0..self.nodes.len()).filter_map(|index| Some((index, self.node(index)?)))
    }

    /// Puts `node` into discovery slot `index` (the monitor, before it
    /// publishes the slot filled): callers' old reports about the slot are
    /// forgotten.
    pub(crate) fn fill(&self, index: usize, node: Arc<Node>) {
        debug_assert!(index >= self.configured, "configured nodes never change");
        self.suspects.remove(index);
        self.probe_requests.remove(index);
        self.traffic[index].reset();
        match &self.nodes[index] {
            Slot::Discovered(slot) => slot.store(Some(node)),
            Slot::Configured(_) => debug_assert!(false, "configured nodes never change"),
        }
    }

    /// Empties discovery slot `index` (the monitor, after it published the
    /// slot vacant) and drops its idle connections. Calls still using the
    /// node keep it until they end; then its pool is dropped, and with it
    /// every connection. Returns the node.
    pub(crate) fn vacate(&self, index: usize) -> Option<Arc<Node>> {
        debug_assert!(index >= self.configured, "configured nodes never change");
        let Slot::Discovered(slot) = &self.nodes[index] else {
            return None;
        };
        let node = slot.swap(None)?;
        node.discard_idle();
        Some(node)
    }
}

/// Routing: what the call loops read.
impl Hub {
    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// `snapshot` with `suspects` and the call's freshness constraints.
    #[inline]
    fn view<'a>(
        &'a self,
        suspects: Members,
        snapshot: &'a Snapshot,
        freshness: Freshness,
    ) -> LiveView<'a> {
        // The clock is read only when a bound needs it, once per decision.
        let now = freshness.max_staleness.map(|_| Instant::now());
        LiveView::new(snapshot, suspects, freshness, &self.config.nearest, now)
    }

    /// The node a read goes to, skipping `exclude` (a node that just failed).
    pub(crate) fn pick_read(
        &self,
        strategy: ReadStrategy,
        freshness: Freshness,
        exclude: Option<usize>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        self.pick_read_with_role(strategy, freshness, exclude, rng)
            .map(|(index, _)| index)
    }

    /// [`Hub::pick_read`] of a call's first node, and that node's role in
    /// the same snapshot (one load for both).
    pub(crate) fn pick_first_read(
        &self,
        strategy: ReadStrategy,
        freshness: Freshness,
        rng: &mut fastrand::Rng,
    ) -> Option<(usize, Role)> {
        self.pick_read_with_role(strategy, freshness, None, rng)
    }

    /// The one decision behind both picks, over one load of the flags and
    /// the snapshot.
    #[inline]
    fn pick_read_with_role(
        &self,
        strategy: ReadStrategy,
        freshness: Freshness,
        exclude: Option<usize>,
        rng: &mut fastrand::Rng,
    ) -> Option<(usize, Role)> {
        // The flags before the snapshot (see `publish`), each loaded once.
        let suspects = self.suspects.load();
        let snapshot = self.snapshot.load();
        let view = self.view(suspects, &snapshot, freshness);
        let index = pick_read(strategy, &view, exclude, rng)?;
        Some((index, snapshot.nodes[index].role))
    }

    /// The write target now, if it is healthy.
    pub(crate) fn primary_index(&self) -> Option<usize> {
        let suspects = self.suspects.load();
        let snapshot = self.snapshot.load();
        pick_primary(&self.view(suspects, &snapshot, Freshness::default()))
    }

    /// Changes with every snapshot published.
    pub(crate) fn on_publish(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The write target, waiting up to `write_hold` (never past `deadline`)
    /// while none is known, e.g. during a failover.
    pub(crate) async fn await_primary(&self, deadline: Instant) -> Result<usize, Error> {
        if let Some(index) = self.primary_index() {
            return Ok(index);
        }
        // Subscribe, then look again: a snapshot published in between is
        // seen by the second look, a later one wakes the wait.
        let mut published = self.published.subscribe();
        if let Some(index) = self.primary_index() {
            return Ok(index);
        }
        let start = Instant::now();
        let until = deadline.min(clock::after(start, self.config.write_hold));
        while let Ok(Ok(())) = tokio::time::timeout_at(until, published.changed()).await {
            self.ensure_open()?;
            if let Some(index) = self.primary_index() {
                tracing::debug!(waited = ?start.elapsed(), "write waited for a primary");
                return Ok(index);
            }
        }
        Err(self.no_primary(start.elapsed()))
    }

    /// Why there is no write target: a split brain, or no primary at all.
    pub(crate) fn no_primary(&self, waited: Duration) -> Error {
        let snapshot = self.snapshot.load();
        if snapshot.split_brain {
            let claimants = snapshot
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, state)| state.fenced)
                .map(|(index, _)| self.context(index).node.to_string())
                .collect();
            return Error::split_brain(claimants);
        }
        Error::no_primary(waited)
    }
}

/// Reports: what callers saw, and what the monitor answers.
impl Hub {
    /// Applies what a failure says about node `index` (a verdict's
    /// [`NodeFault`]): take it out of routing, ask for a probe, drop its idle
    /// connections. Returns how many idle connections were dropped.
    pub(crate) fn blame(&self, index: usize, fault: NodeFault) -> usize {
        match fault {
            NodeFault::Blameless => 0,
            NodeFault::Reprobe => {
                if self.probe_requests.insert(index) {
                    self.wake.notify_one();
                }
                0
            }
            NodeFault::Suspect => {
                self.suspect(index);
                0
            }
            NodeFault::Silent => {
                self.suspect(index);
                self.node(index).map_or(0, |node| node.discard_idle())
            }
        }
    }

    fn suspect(&self, index: usize) {
        if self.suspects.insert(index) {
            tracing::debug!(node = %self.context(index).node, "node marked suspect");
            self.wake.notify_one();
        }
    }

    pub(crate) fn is_suspect(&self, index: usize) -> bool {
        self.suspects.contains(index)
    }

    /// Whether a caller asked for node `index` to be probed (and forget it).
    pub(crate) fn take_probe_request(&self, index: usize) -> bool {
        self.probe_requests.remove(index)
    }

    /// Resolves when a caller reports a node.
    pub(crate) async fn reported(&self) {
        self.wake.notified().await;
    }

    /// Gauges and transition counters from `next`, about to replace the
    /// current snapshot (with the `metrics` feature).
    fn publish_metrics(&self, next: &Snapshot) {
        if !cfg!(feature = "metrics") {
            return;
        }
        let old = self.snapshot.load();
        for (index, node) in self.each_node() {
            if let Some(state) = next.nodes.get(index).filter(|state| !state.vacant) {
                let pool = node.pool.status();
                node.metrics.set_state(pool, old.nodes.get(index), state);
            }
        }
        let failover = self.metrics.elected(next.primary);
        if let Some(node) = failover.and_then(|index| self.node(index)) {
            node.metrics.failover();
        }
    }

    /// Publishes the monitor's next snapshot and its events. `answered`: a
    /// suspect node this snapshot's probe checked, whose report is answered.
    /// Writers holding for a primary then look again.
    pub(crate) fn publish(&self, mut next: Snapshot, events: Vec<Event>, answered: Option<usize>) {
        // Derived masks always match the states published with them.
        next.derive_masks();
        // Reads left unanswered before a node came back (or before a probe
        // cleared it) say nothing about it now.
        let old = self.snapshot.load();
        for (index, (before, after)) in old.nodes.iter().zip(next.nodes.iter()).enumerate() {
            if after.up && (!before.up || answered == Some(index)) {
                self.traffic[index].forgive();
            }
        }
        drop(old);
        self.publish_metrics(&next);
        // The snapshot first, then the flag: a decision loads the flags
        // first, so it never pairs the old snapshot with a cleared flag.
        self.snapshot.store(Arc::new(next));
        for event in events {
            // No subscriber is not an error.
            let _ = self.events.send(event);
        }
        if let Some(index) = answered {
            self.suspects.remove(index);
        }
        // Wake writers holding for a primary: a cleared flag counts too.
        self.published.send_modify(|generation| *generation += 1);
        self.note_missing(Instant::now());
    }

    /// Notes whether a primary, and a node for a read with the configured
    /// options, are routable as of `now`: the start of an absence is kept
    /// until one is again. The monitor notes it after each round,
    /// readiness before it judges. Returns what is noted.
    pub(crate) fn note_missing(&self, now: Instant) -> Missing {
        let primary = self.primary_index().is_some();
        let freshness = Freshness {
            max_staleness: self.config.max_staleness,
            after: None,
        };
        let rng = &mut fastrand::Rng::new();
        let reader = self
            .pick_read(self.config.read_strategy, freshness, None, rng)
            .is_some();
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        let since = |present: bool, since: Option<Instant>| match present {
            true => None,
            false => Some(since.unwrap_or(now)),
        };
        missing.primary = since(primary, missing.primary);
        missing.reader = since(reader, missing.reader);
        *missing
    }

    /// Topology events from now on.
    /// Sends a call's event (a resolved `COMMIT`) to subscribers.
    pub(crate) fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// Sends the event `make` builds, only if someone listens.
    pub(crate) fn emit_with(&self, make: impl FnOnce() -> Event) {
        if self.events.receiver_count() > 0 {
            self.emit(make());
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Since when something routing needs has been missing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Missing {
    /// No routable primary since.
    pub(crate) primary: Option<Instant>,
    /// No node for a read with the configured strategy and bound since.
    pub(crate) reader: Option<Instant>,
}

fn warn_without_local_node(config: &Config, nodes: &[Node]) {
    if !config.local_region.is_empty() && !nodes.iter().any(|node| node.is_local) {
        tracing::warn!(
            local_region = %config.local_region,
            "no node in the local region; regional-preferred reads use any healthy node"
        );
    }
}
