//! [`DatabaseManager`]: the public, cheaply cloned handle.

mod attempt;
mod read;
mod transaction;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

use attempt::Params;
pub use read::{Read, ReadOptions};
pub use transaction::TxFuture;
pub use write::{Write, WriteOptions};

use crate::config::{Config, ReadStrategy};
use crate::error::{Error, Operation};
use crate::events::Event;
use crate::health::Monitor;
use crate::node::Node;
use crate::status::Status;
use crate::strategy::{pick_primary, pick_read};
use crate::suspects::Suspects;
use crate::tls::Connector;
use crate::topology::{Freshness, LiveView, Snapshot};

/// Events kept for a subscriber that falls behind.
const EVENT_BUFFER: usize = 1024;

/// One handle to every node of a primary-and-replicas deployment.
///
/// Reads go where the [`ReadStrategy`] says; writes and transactions go to
/// the primary, retried only when that is safe (see the crate docs). A
/// background health monitor probes every node; a caller that sees a
/// connection failure marks the node suspect at once.
///
/// Cloning is cheap (an `Arc`); every clone drives the same pools. The
/// monitor stops on [`DatabaseManager::close`], or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct DatabaseManager {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

/// What the handle and the monitor share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Plain or TLS, for pools, probes and cancel requests.
    pub(crate) connector: Connector,
    pub(crate) nodes: Box<[Node]>,
    /// The nodes callers reported, one bit each (the nodes' own flags).
    pub(crate) suspects: Arc<Suspects>,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Wakes the monitor when a caller reports a node.
    pub(crate) wake: Notify,
    /// Bumped after every published snapshot; writers holding for a
    /// primary wait on it.
    pub(crate) published: watch::Sender<u64>,
    /// Topology events for subscribers.
    pub(crate) events: broadcast::Sender<Event>,
    closed: AtomicBool,
}

impl std::fmt::Debug for DatabaseManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseManager")
            .field("nodes", &self.inner.shared.nodes)
            .field("read_strategy", &self.inner.shared.config.read_strategy)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl DatabaseManager {
    /// Validates the configuration, builds one pool per node, probes every
    /// node once (bounded by the probe timeout) and starts the monitor.
    ///
    /// Nodes that are down do not make this fail: they start unhealthy and
    /// the monitor brings them in when they answer. Must be called inside a
    /// Tokio runtime.
    pub async fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let connector = Connector::new(&config.tls)?;
        let suspects = Arc::new(Suspects::new(config.nodes.len()));
        let nodes = config
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let preferred = &config.nearest.preferred_regions;
                Node::build(
                    node,
                    &config.pool,
                    &config.local_region,
                    preferred,
                    &connector,
                    (index, &suspects),
                )
            })
            .collect::<Result<Box<[Node]>, _>>()?;
        warn_without_local_node(&config, &nodes);
        let snapshot = ArcSwap::from_pointee(Snapshot::initial(&nodes));
        let shared = Arc::new(Shared {
            config,
            connector,
            nodes,
            suspects,
            snapshot,
            wake: Notify::new(),
            published: watch::Sender::new(0),
            events: broadcast::Sender::new(EVENT_BUFFER),
            closed: AtomicBool::new(false),
        });
        let mut monitor = Monitor::new(Arc::clone(&shared));
        monitor.first_round().await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(monitor.run(shutdown.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                shutdown,
                monitor: Mutex::new(Some(task)),
            }),
        })
    }

    /// [`Config::from_env`] followed by [`DatabaseManager::new`].
    pub async fn from_env() -> Result<Self, Error> {
        Self::new(Config::from_env()?).await
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Topology events from now on: primary changed, split brain, node down
    /// or up, lag bound crossed. A subscriber that falls more than 1024
    /// events behind gets `RecvError::Lagged` and then the newest events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.shared.events.subscribe()
    }

    /// A plain copy of every node's state.
    pub fn status(&self) -> Status {
        Status::capture(&self.inner.shared)
    }

    /// A read with the default options; see [`Read::query`].
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.read().query(sql, params).await
    }

    /// A read of exactly one row; see [`Read::query_one`].
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.read().query_one(sql, params).await
    }

    /// A read of at most one row; see [`Read::query_opt`].
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.read().query_opt(sql, params).await
    }

    /// A write on the primary, returning rows affected; see [`Write::execute`].
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.write().execute(sql, params).await
    }

    /// Starts a read with per-call options (strategy, deadline).
    pub fn read(&self) -> Read<'_> {
        Read::new(&self.inner.shared)
    }

    /// Starts a write with per-call options (idempotent, deadline).
    pub fn write(&self) -> Write<'_> {
        Write::new(&self.inner.shared)
    }

    /// The pool of the node the read strategy picks now (the original's
    /// read pool). Calls through it bypass pgrouter's deadlines and retries.
    pub fn read_pool(&self) -> Result<Pool, Error> {
        let shared = &self.inner.shared;
        shared.ensure_open()?;
        let strategy = shared.config.read_strategy;
        let index = shared
            .pick_read(
                strategy,
                Freshness::default(),
                None,
                &mut fastrand::Rng::new(),
            )
            .ok_or(Error::NoHealthyNode {
                operation: Operation::Read,
                strategy,
            })?;
        Ok(shared.nodes[index].pool.clone())
    }

    /// The primary's pool (the original's write pool).
    pub fn write_pool(&self) -> Result<Pool, Error> {
        let shared = &self.inner.shared;
        shared.ensure_open()?;
        let index = shared
            .primary_index()
            .ok_or_else(|| shared.no_primary(Duration::ZERO))?;
        Ok(shared.nodes[index].pool.clone())
    }

    /// The pool of the node with this configured name.
    pub fn pool(&self, node: &str) -> Option<Pool> {
        let nodes = &self.inner.shared.nodes;
        nodes
            .iter()
            .find(|n| n.name() == node)
            .map(|n| n.pool.clone())
    }

    /// Stops the monitor, waits for it, and closes every pool. Later calls
    /// fail with [`Error::Closed`]. Calling it again does nothing.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        let task = self.lock_monitor().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        for node in shared.nodes.iter() {
            node.pool.close();
        }
    }

    /// Whether the monitor task is still running.
    pub fn is_monitor_running(&self) -> bool {
        self.lock_monitor()
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    }

    fn lock_monitor(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        // A poisoned lock only means a panic elsewhere; the handle is still valid.
        self.inner
            .monitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Shared {
    pub(crate) fn ensure_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub(crate) fn pick_read(
        &self,
        strategy: ReadStrategy,
        freshness: Freshness,
        exclude: Option<usize>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let snapshot = self.snapshot.load();
        pick_read(strategy, &self.view(&snapshot, freshness), exclude, rng)
    }

    /// The write target now, if it is healthy.
    pub(crate) fn primary_index(&self) -> Option<usize> {
        let snapshot = self.snapshot.load();
        pick_primary(&self.view(&snapshot, Freshness::default()))
    }

    fn view<'a>(&'a self, snapshot: &'a Snapshot, freshness: Freshness) -> LiveView<'a> {
        LiveView {
            snapshot,
            nodes: &self.nodes,
            suspects: &self.suspects,
            freshness,
            nearest: &self.config.nearest,
        }
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
        let until = deadline.min(start + self.config.write_hold);
        while let Ok(Ok(())) = tokio::time::timeout_at(until, published.changed()).await {
            if let Some(index) = self.primary_index() {
                tracing::debug!(waited = ?start.elapsed(), "write waited for a primary");
                return Ok(index);
            }
        }
        Err(self.no_primary(start.elapsed()))
    }

    pub(crate) fn no_primary(&self, waited: Duration) -> Error {
        let snapshot = self.snapshot.load();
        if snapshot.split_brain {
            let claimants = snapshot
                .nodes
                .iter()
                .zip(self.nodes.iter())
                .filter(|(state, _)| state.fenced)
                .map(|(_, node)| node.name().to_owned())
                .collect();
            return Error::SplitBrain { claimants };
        }
        Error::NoPrimary { waited }
    }

    /// A caller saw the node fail: take it out of routing and wake the monitor.
    pub(crate) fn report_failure(&self, index: usize) {
        if self.nodes[index].mark_suspect() {
            tracing::debug!(node = %self.nodes[index].context.node, "node marked suspect");
            self.wake.notify_one();
        }
    }

    /// A caller saw a sign that the topology changed: probe the node now.
    pub(crate) fn request_probe(&self, index: usize) {
        if self.nodes[index].request_probe() {
            self.wake.notify_one();
        }
    }
}

fn warn_without_local_node(config: &Config, nodes: &[Node]) {
    if !config.local_region.is_empty() && !nodes.iter().any(|node| node.is_local) {
        tracing::warn!(
            local_region = %config.local_region,
            "no node in the local region; regional-preferred reads use any healthy node"
        );
    }
}

const _: () = {
    const fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<DatabaseManager>();
};
