//! [`DatabaseManager`]: the public, cheaply cloned handle.

pub(crate) mod attempt;
mod begin;
mod dedicated;
mod explicit;
mod hedged;
pub(crate) mod listen;
mod opening;
mod pooled;
mod primary;
mod queries;
mod read;
pub(crate) mod session;
pub(crate) mod token;
mod transaction;
mod tx;
mod watch;
mod write;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

pub use queries::Queries;
pub use read::ReadBuilder;
use session::Params;
pub use tx::{Tx, TxFuture};
pub use write::WriteBuilder;

use crate::config::Config;
use crate::failure::error::Error;
use crate::health::Monitor;
use crate::hub::Hub;
use crate::observe::events::Event;
use crate::observe::readiness::Readiness;
use crate::observe::status::Status;
use crate::routing::freshness::Freshness;

/// One handle to every node of a primary-and-replicas deployment.
///
/// Reads go where the [`ReadStrategy`](crate::ReadStrategy) says; writes and transactions go to
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
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DatabaseManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseManager")
            .field("nodes", &self.inner.hub.each_node().collect::<Vec<_>>())
            .field("read_strategy", &self.inner.hub.config.read_strategy)
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
    /// node once (bounded by the probe timeout) and starts the monitor and
    /// the task that keeps every statement's deadline (one for the manager,
    /// instead of a timer per statement; it ends when the manager is
    /// dropped, after `close`, so calls still draining keep their
    /// deadlines).
    ///
    /// Nodes that are down do not make this fail: they start unhealthy and
    /// the monitor brings them in when they answer. Must be called inside a
    /// Tokio runtime.
    pub async fn new(config: Config) -> Result<Self, Error> {
        let hub = Arc::new(Hub::new(config)?);
        let mut monitor = Monitor::connect(Arc::clone(&hub));
        monitor.first_round().await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(monitor.run(shutdown.clone()));
        let keeper = crate::hub::keep_deadlines(Arc::clone(&hub.deadlines), hub.config.deadline);
        drop(tokio::spawn(keeper));
        if hub.config.outliers.enabled {
            let watch = crate::hub::watch_outliers(Arc::clone(&hub), shutdown.clone());
            drop(tokio::spawn(watch));
        }
        if let Some(every) = hub.sweep_every() {
            let sweep = crate::hub::sweep_pools(Arc::clone(&hub), every, shutdown.clone());
            drop(tokio::spawn(sweep));
        }
        if hub.config.outcomes.marker_table.is_some() {
            drop(tokio::spawn(crate::commit::resolve::prune_markers(
                Arc::clone(&hub),
                shutdown.clone(),
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                hub,
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
        &self.inner.hub.config
    }

    /// Topology events from now on: primary changed, split brain, node down
    /// or up, lag bound crossed. A subscriber that falls more than 1024
    /// events behind gets `RecvError::Lagged` and then the newest events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.hub.subscribe()
    }

    /// A plain copy of every node's state.
    pub fn status(&self) -> Status {
        Status::capture(&self.inner.hub)
    }

    /// Whether this instance of the service can serve its traffic now, for
    /// a readiness probe (see [`Readiness`] and the
    /// [serving guide's probe table](crate::guide::serving#probes)):
    /// it stays ready while writes are held for a new primary within
    /// [`Config::write_hold`], and turns not ready when no node can serve a
    /// read, or when recent calls are failing. Cheap: no I/O.
    pub fn readiness(&self) -> Readiness {
        self.inner.hub.readiness()
    }

    /// A read with the default options; see [`ReadBuilder::query`].
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.read().query(sql, params).await
    }

    /// A read of exactly one row; see [`ReadBuilder::query_one`].
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.read().query_one(sql, params).await
    }

    /// A read of at most one row; see [`ReadBuilder::query_opt`].
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.read().query_opt(sql, params).await
    }

    /// A write on the primary, returning rows affected; see [`WriteBuilder::execute`].
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.write().execute(sql, params).await
    }

    /// Starts a read with per-call options: strategy, deadline, staleness
    /// bound, causal token.
    pub fn read(&self) -> ReadBuilder<'_> {
        ReadBuilder::new(&self.inner.hub)
    }

    /// Starts a write or transaction with per-call options: idempotent,
    /// deadline.
    pub fn write(&self) -> WriteBuilder<'_> {
        WriteBuilder::new(&self.inner.hub)
    }

    /// A transaction with the default options; see [`WriteBuilder::transaction`].
    pub async fn transaction<T, F>(&self, body: F) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        self.write().transaction(body).await
    }

    /// A transaction with the default options, handed over; see
    /// [`WriteBuilder::begin`].
    pub async fn begin(&self) -> Result<Tx<'_>, Error> {
        self.write().begin().await
    }

    /// The pool of the node the read strategy picks now (the original's
    /// read pool). Calls through it bypass pgrouter's deadlines and retries.
    pub fn read_pool(&self) -> Result<Pool, Error> {
        let hub = &self.inner.hub;
        hub.ensure_open()?;
        let strategy = hub.config.read_strategy;
        let index = hub
            .pick_read(
                strategy,
                Freshness::default(),
                None,
                &mut fastrand::Rng::new(),
            )
            .ok_or_else(|| Error::no_healthy_node(strategy))?;
        let node = hub
            .node(index)
            .ok_or_else(|| Error::no_healthy_node(strategy))?;
        Ok(node.pool.clone())
    }

    /// The primary's pool (the original's write pool).
    pub fn write_pool(&self) -> Result<Pool, Error> {
        let hub = &self.inner.hub;
        hub.ensure_open()?;
        let index = hub
            .primary_index()
            .ok_or_else(|| hub.no_primary(Duration::ZERO))?;
        let node = hub
            .node(index)
            .ok_or_else(|| hub.no_primary(Duration::ZERO))?;
        Ok(node.pool.clone())
    }

    /// The pool of the node with this name (a configured node's, or a
    /// discovered instance's identifier while it is in use).
    pub fn pool(&self, node: &str) -> Option<Pool> {
        let hub = &self.inner.hub;
        let snapshot = hub.snapshot();
        hub.each_node()
            .filter(|(index, _)| !snapshot.nodes[*index].vacant)
            .find(|(_, n)| n.name() == node)
            .map(|(_, n)| n.pool.clone())
    }

    /// Listens for `NOTIFY` on `channel`, on the node that is primary now
    /// (waiting for one up to the write hold, within the deadline), on a
    /// connection of its own. After a failover, or when that connection is
    /// lost, the listener listens again on the node that is primary then
    /// and hands over a [`Notice::Gap`](crate::listen::Notice::Gap) first:
    /// notifications sent in between may be lost, as PostgreSQL delivers
    /// only to sessions listening when the notifying transaction commits.
    ///
    /// ```no_run
    /// # async fn run(db: pgrouter::DatabaseManager) -> Result<(), pgrouter::Error> {
    /// use pgrouter::listen::Notice;
    ///
    /// let mut listener = db.listen("orders").await?;
    /// while let Some(notice) = listener.recv().await {
    ///     match notice {
    ///         Notice::Notification(n) => println!("order {}", n.payload()),
    ///         Notice::Gap { node } => println!("listening on {node}: reconcile"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn listen(&self, channel: &str) -> Result<listen::Listener, Error> {
        let shutdown = self.inner.shutdown.child_token();
        listen::listen(&self.inner.hub, channel, shutdown).await
    }

    /// Closes gracefully: refuses new calls at once (they fail with
    /// [`ErrorKind::Closed`](crate::error::ErrorKind::Closed), nothing sent),
    /// lets the calls in flight finish for up to
    /// [`Config::close_timeout`], stops the ones still running then (their
    /// statements cancelled; they fail with `ErrorKind::Closed`, a write
    /// with [`Error::is_outcome_unknown`]), then stops the monitor, waits
    /// for it, and closes every pool. Returns as soon as the last call in
    /// flight ended, and never much later than the timeout. Readiness is
    /// not ready from the start. Writes holding for a primary (none known)
    /// fail at once. Connections taken straight from
    /// [`read_pool`](Self::read_pool) or [`write_pool`](Self::write_pool)
    /// are not waited for. Calling it again waits for the same drain.
    pub async fn close(&self) {
        let hub = &self.inner.hub;
        hub.close();
        hub.finish_calls(hub.config.close_timeout).await;
        self.inner.shutdown.cancel();
        let task = self
            .inner
            .monitor
            .lock()
            // A poisoned lock only means a panic elsewhere; the handle is still valid.
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.hub.close_pools();
    }
}

const _: () = {
    const fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<DatabaseManager>();
};

/// The call futures are `Send` for a `'static` handle, so a service can
/// spawn them. Generic call loops can lose it to a compiler limitation
/// (rust-lang/rust#100013) with no error until a caller spawns one.
#[cfg(test)]
#[allow(dead_code)]
mod send_checks {
    use super::DatabaseManager;

    fn spawnable<T: Send + 'static>(_: T) {}

    fn read(db: DatabaseManager) {
        spawnable(async move { db.read().query_one("SELECT 1", &[]).await });
    }

    fn write(db: DatabaseManager) {
        spawnable(async move { db.write().execute("SELECT 1", &[]).await });
    }

    fn write_with_token(db: DatabaseManager) {
        spawnable(async move {
            let info = crate::CallInfo::with_token();
            db.write().info(&info).execute("SELECT 1", &[]).await
        });
    }

    fn exactly_once(db: DatabaseManager) {
        spawnable(async move { db.write().exactly_once().query("SELECT 1", &[]).await });
    }

    async fn load(db: &impl crate::Queries) -> Result<Option<tokio_postgres::Row>, crate::Error> {
        db.query_opt("SELECT 1", &[]).await
    }

    fn repository_code(db: DatabaseManager) {
        spawnable(async move {
            load(&db).await?;
            load(&db.read()).await?;
            load(&db.write()).await?;
            let tx = db.begin().await?;
            load(&tx).await?;
            tx.commit().await?;
            db.transaction(|tx| Box::pin(async move { load(tx).await }))
                .await
        });
    }

    fn explicit(db: DatabaseManager) {
        spawnable(async move {
            let tx = db.begin().await?;
            tx.execute("SELECT 1", &[]).await?;
            tx.commit().await
        });
    }

    fn transaction(db: DatabaseManager) {
        spawnable(async move {
            db.transaction(|tx| Box::pin(async move { tx.execute("SELECT 1", &[]).await }))
                .await
        });
    }
}
