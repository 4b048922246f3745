//! The real side of the seam: each node's deadpool pool ([`Pools`]) and a
//! connection checked out of it ([`Pooled`]).

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use deadpool_postgres::{Object, PoolError, TimeoutType, Timeouts};
use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::session::{Columns, Connect, Counted, Failure, Params, PgError, Session};
use crate::causal::lsn::Lsn;
use crate::config::clock;
use crate::connect::node::Node;
use crate::connect::statements::{Block, Ready, Statements};
use crate::connect::tls::Connector;
use crate::failure::safety::Fate;
use crate::hub::{Expired, Hub};

/// Every node's pool, as the hub holds them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pools;

impl Connect for Pools {
    type Session = Pooled;

    async fn checkout(
        self,
        hub: &Hub,
        index: usize,
        deadline: Instant,
        started: Instant,
    ) -> Result<Pooled, Failure> {
        let Some(node) = hub.node(index) else {
            // A discovered node removed between the pick and now: as
            // unreachable, before anything was sent (a read retries
            // elsewhere).
            return Err(Failure::Pool(PoolError::Timeout(TimeoutType::Create)));
        };
        // The usual checkout (an idle connection, reused at once) completes
        // on its first poll: it is tried once without a timer, and without
        // deadpool's wait timer (a free slot is taken at once or not at
        // all). Only a checkout that has to wait (a connection being
        // created, an idle one being checked, or every slot taken) is put
        // under the deadline, and in the last case under the pool's wait
        // timeout as well; both are kept by the hub's deadline registry, not
        // by a timer of the checkout's own.
        let timeouts = node.pool.timeouts();
        let at_once = Timeouts {
            wait: Some(Duration::ZERO),
            ..timeouts
        };
        let untimed = Timeouts {
            wait: None,
            ..timeouts
        };
        // Pinned here and polled once by hand rather than through a helper:
        // deadpool's checkout future is large, and each layer would move it.
        let bounded = {
            let mut get = pin!(node.pool.timeout_get(&at_once));
            let (done, wait_ends) = match poll_fn(|cx| Poll::Ready(get.as_mut().poll(cx))).await {
                Poll::Ready(Err(PoolError::Timeout(TimeoutType::Wait))) => {
                    // Every slot taken: wait for one, in the same place (no
                    // box, no second future), without deadpool's wait timer.
                    get.set(node.pool.timeout_get(&untimed));
                    (None, wait_ends(timeouts, started, deadline))
                }
                Poll::Ready(done) => (Some(done), None),
                Poll::Pending => (None, None),
            };
            match done {
                Some(done) => Ok(done),
                None => match hub
                    .deadlines
                    .bound(wait_ends.unwrap_or(deadline), get)
                    .await
                {
                    // The wait timeout ran out first: deadpool's own error, as
                    // its timer would have made it.
                    Err(Expired) if wait_ends.is_some() => {
                        Ok(Err(PoolError::Timeout(TimeoutType::Wait)))
                    }
                    bounded => bounded,
                },
            }
        };
        node.metrics.pool_wait(started);
        match bounded {
            Ok(Ok(object)) => Ok(Pooled { object, node }),
            Ok(Err(source)) => Err(Failure::Pool(source)),
            Err(Expired) => Err(Failure::Deadline),
        }
    }

    async fn get(self, hub: &Hub, index: usize) -> Option<Pooled> {
        let node = hub.node(index)?;
        let object = node.pool.get().await.ok()?;
        Some(Pooled { object, node })
    }

    fn saturated(self, hub: &Hub, index: usize) -> bool {
        hub.node(index).is_some_and(|node| {
            let status = node.pool.status();
            status.size >= status.max_size && status.available == 0
        })
    }
}

/// When a checkout that found every slot taken at `started` stops waiting
/// for one because of the pool's wait timeout, if that comes before the
/// call's `deadline`.
fn wait_ends(timeouts: Timeouts, started: Instant, deadline: Instant) -> Option<Instant> {
    timeouts
        .wait
        .map(|wait| clock::after(started, wait))
        .filter(|ends| *ends < deadline)
}

/// A pooled connection, and the node it belongs to.
pub(crate) struct Pooled {
    object: Object,
    node: Arc<Node>,
}

impl Pooled {
    /// Ends the transaction open on it with `ROLLBACK` in the background
    /// (from a `Drop`), then returns it to its pool; a `ROLLBACK` not
    /// answered within `bound` (a statement still running, a silent node)
    /// has the statement cancelled and the connection closed, which ends
    /// the transaction too. Outside a runtime, only the latter.
    pub(crate) fn roll_back_in_background(self, connector: Connector, bound: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(Object::take(self.object));
            return;
        };
        drop(runtime.spawn(async move {
            let rollback = self.object.batch_execute("ROLLBACK");
            match tokio::time::timeout(bound, rollback).await {
                Ok(Ok(())) => drop(self),
                _ => {
                    connector.cancel_in_background(self.object.cancel_token());
                    drop(Object::take(self.object));
                }
            }
        }));
    }

    /// The connection.
    pub(crate) fn object(&self) -> &Object {
        &self.object
    }

    /// How statements reach its node.
    pub(crate) fn statements(&self) -> &Statements {
        &self.node.statements
    }
}

impl Session for Pooled {
    type Row = Row;
    type Prepared = Ready<'static>;

    async fn prepare(
        &self,
        sql: &str,
        params: Params<'_>,
        block: Block,
    ) -> Result<Ready<'static>, PgError> {
        let statements = &self.node.statements;
        let ready = statements.prepare(&self.object, sql, params, block).await;
        ready.map(detach)
    }

    async fn own(&self, sql: &str, types: &[Type]) -> Result<Ready<'static>, PgError> {
        let ready = self.node.statements.own(&self.object, sql, types).await;
        ready.map(detach)
    }

    async fn query<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Ready<'static>,
        params: Params<'a>,
    ) -> Result<Vec<Row>, PgError> {
        match statement {
            Ready::Named(_) => statement.query(&self.object, params).await,
            Ready::Unnamed(_, types) => {
                let ready = Ready::Unnamed(sql, Arc::clone(types));
                ready.query(&self.object, params).await
            }
        }
    }

    fn query_counted<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Ready<'static>,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Counted<Row>, PgError>> + Send + 'a {
        // No `async` wrapper: the statement's own future, one layer less.
        statement.query_counted(&self.object, sql, params)
    }

    async fn execute<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Ready<'static>,
        params: Params<'a>,
    ) -> Result<u64, PgError> {
        match statement {
            Ready::Named(_) => statement.execute(&self.object, params).await,
            Ready::Unnamed(_, types) => {
                let ready = Ready::Unnamed(sql, Arc::clone(types));
                ready.execute(&self.object, params).await
            }
        }
    }

    async fn query_one<'a>(
        &'a self,
        sql: &'a str,
        statement: &'a Ready<'static>,
        params: Params<'a>,
    ) -> Result<Row, PgError> {
        match statement {
            Ready::Named(_) => statement.query_one(&self.object, params).await,
            Ready::Unnamed(_, types) => {
                let ready = Ready::Unnamed(sql, Arc::clone(types));
                ready.query_one(&self.object, params).await
            }
        }
    }

    fn batch_execute(&self, sql: &str) -> impl Future<Output = Result<(), PgError>> + Send {
        self.object.batch_execute(sql)
    }

    fn forget_statements(&self) {
        self.object.statement_cache.clear();
    }

    fn settle(self, hub: &Hub, fate: Fate) {
        match fate {
            Fate::Keep => drop(self),
            Fate::Discard => drop(Object::take(self.object)),
            Fate::Cancel => {
                hub.connector
                    .cancel_in_background(self.object.cancel_token());
                drop(Object::take(self.object));
            }
            Fate::Drain => drain(hub, self.object),
        }
    }
}

/// Lets the statement still running on `object` end, in the background,
/// then returns the connection to its pool: the server answers requests
/// in order, so an empty query's answer comes after the statement's. No
/// cancel is sent first (a cancel that arrives after the statement ended
/// could hit the next caller's), and behind a transaction pooler, which
/// drops cancels, waiting is all there is. A statement that outlasts
/// `pool.recycle_timeout` is cancelled and its connection discarded.
fn drain(hub: &Hub, object: Object) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // Outside a runtime: nothing can wait; the session ends with it.
        drop(Object::take(object));
        return;
    };
    let bound = hub.config.pool.recycle_timeout;
    let connector = hub.connector.clone();
    let drained = Arc::clone(&hub.counters.drained);
    runtime.spawn(async move {
        let ended = tokio::time::timeout(bound, object.batch_execute("")).await;
        match ended {
            Ok(Ok(())) => {
                drained.kept.fetch_add(1, Ordering::Relaxed);
                drop(object);
            }
            _ => {
                tracing::debug!(
                    ?bound,
                    "a dropped statement did not end in time; cancelling it"
                );
                drained.discarded.fetch_add(1, Ordering::Relaxed);
                connector.cancel_in_background(object.cancel_token());
                drop(Object::take(object));
            }
        }
    });
}

impl Pooled {
    /// The deadpool connection, for the caller to use and drop.
    pub(crate) fn into_object(self) -> Object {
        self.object
    }
}

/// A statement ready to run, kept without its text: an unnamed statement
/// is given its text again when it runs (see `Session::Prepared`).
fn detach(ready: Ready<'_>) -> Ready<'static> {
    match ready {
        Ready::Named(statement) => Ready::Named(statement),
        Ready::Unnamed(_, types) => Ready::Unnamed("", types),
    }
}

impl Columns for Row {
    fn boolean(&self, index: usize) -> Result<bool, PgError> {
        self.try_get(index)
    }

    fn int4(&self, index: usize) -> Result<i32, PgError> {
        self.try_get(index)
    }

    fn int8(&self, index: usize) -> Result<i64, PgError> {
        self.try_get(index)
    }

    fn text(&self, index: usize) -> Result<&str, PgError> {
        self.try_get(index)
    }

    fn text_or_null(&self, index: usize) -> Result<Option<&str>, PgError> {
        self.try_get(index)
    }

    fn lsn(&self, index: usize) -> Result<Lsn, PgError> {
        self.try_get(index)
    }
}
