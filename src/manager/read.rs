//! Reads: routed by a strategy, tried once more on another node after a
//! failure a retry can fix.

use std::pin::pin;
use std::time::Duration;

use tokio_postgres::Row;
use tracing::Instrument;

use super::attempt::{at_most_one, exactly_one, Call, Deadline};
use super::pooled::Pools;
use super::session::{Connect, FirstRow, Params, Returns, RowOf, Rows};
use super::write::WriteBuilder;
use crate::causal::lsn::CausalToken;
use crate::causal::scope as causal;
use crate::config::clock;
use crate::config::{ReadStrategy, Role};
use crate::failure::error::{Error, ErrorKind};
use crate::failure::retry::RetryDecision;
use crate::hub::{Expired, Hub, Work};
use crate::manager::hedged::{tracked, Route, Settled, Watch};
use crate::observe::call_info::{self, CallInfo};
use crate::observe::spans::{Observer, Reason};
use crate::routing::freshness::Freshness;
use crate::routing::statement::{intent, Intent};

/// Less than this left of the deadline, a read is not tried elsewhere.
const RETRY_FLOOR: Duration = Duration::from_millis(5);

/// A read being set up; see [`DatabaseManager::read`](crate::DatabaseManager::read).
/// Options left unset use the configuration's values.
///
/// A statement that can write or lock (`INSERT … RETURNING`, `SELECT … FOR
/// UPDATE`, `nextval(…)`, a data-modifying CTE, DDL, …) is not a read: it
/// runs on the primary as a [`write()`](crate::DatabaseManager::write) with
/// the same deadline, slot and idempotent mark (see the
/// [reads guide](crate::guide::reads#statements-that-write); a function of
/// your own that writes is yours to send with `write()`).
///
/// A read is tried on the node the strategy picks among the eligible ones:
/// healthy, not fenced, and, for a replica, within the staleness bound (lag
/// known and at most the bound) and past the causal token (replay position
/// known and at or after it). The primary is always fresh enough, so when
/// every replica is too stale or behind the token, the read goes to the
/// primary; it never waits for a replica to catch up.
///
/// If the attempt fails at the connection level (checkout, connect, a lost
/// connection) or with a recovery conflict (40001), it is tried once more on
/// another eligible node. Both attempts share one deadline. The one
/// exception: a connection to the *primary* lost after the statement was
/// sent is [`ErrorKind::OutcomeUnknown`](crate::error::ErrorKind::OutcomeUnknown), never a second run, since a "read"
/// may write through a function pgrouter cannot see; a replica in recovery
/// writes nothing.
///
/// A read sent to a replica (or marked [`idempotent`](ReadBuilder::idempotent))
/// with no answer within the hedge delay is also sent to another eligible
/// node; the first answer wins and the other statement is cancelled on its
/// server (see [`HedgeSettings`](crate::config::HedgeSettings)). Hedges and retries
/// both take a token from the read budget; with none left, the read waits
/// for its first attempt.
#[derive(Clone)]
#[must_use = "a read does nothing until query, query_one or query_opt is awaited"]
pub struct ReadBuilder<'a> {
    hub: &'a Hub,
    strategy: Option<ReadStrategy>,
    deadline: Option<Duration>,
    max_staleness: Option<Duration>,
    after: Option<CausalToken>,
    info: Option<&'a CallInfo>,
    idempotent: bool,
}

impl std::fmt::Debug for ReadBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBuilder")
            .field("strategy", &self.strategy)
            .field("deadline", &self.deadline)
            .field("max_staleness", &self.max_staleness)
            .field("after", &self.after)
            .field("info", &self.info)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

impl<'a> ReadBuilder<'a> {
    pub(crate) fn new(hub: &'a Hub) -> Self {
        Self {
            hub,
            strategy: None,
            deadline: None,
            max_staleness: None,
            after: None,
            info: None,
            idempotent: false,
        }
    }

    /// Uses this strategy for this call instead of
    /// [`Config::read_strategy`](crate::Config::read_strategy).
    pub fn strategy(mut self, strategy: ReadStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Bounds this call (checkout, statement and retry) by `deadline`
    /// instead of [`Config::deadline`](crate::Config::deadline). Zero is
    /// [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Reads only from replicas lagging by at most `bound` (or the
    /// primary), instead of
    /// [`Config::max_staleness`](crate::Config::max_staleness). Zero is
    /// [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument).
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = Some(bound);
        self
    }

    /// Reads only from a node known to have replayed the write that gave
    /// `token` (read-your-writes). Without it, a read made inside a
    /// [`causal_scope`](crate::causal::causal_scope) uses the scope's token;
    /// with or without it, a read in a scope whose
    /// [window on the primary](crate::config::CausalSettings::primary_window)
    /// is open goes to the primary.
    pub fn after(mut self, token: CausalToken) -> Self {
        self.after = Some(token);
        self
    }

    /// Records in `slot` which node served the read, if it succeeds (see
    /// [`CallInfo`]).
    pub fn info(mut self, slot: &'a CallInfo) -> Self {
        self.info = Some(slot);
        self
    }

    /// Marks the statement safe to run twice (it writes nothing, or
    /// nothing that matters twice): sent to the primary, it may then be
    /// hedged, and retried after a lost connection, as a read sent to a
    /// replica always may. A statement that writes must not be marked.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Runs the statement and returns every row.
    pub async fn query(self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        let read = self.routed::<Rows, _>(Pools, sql, params);
        read.await.map(|(_, rows)| rows)
    }

    /// Runs the statement and returns its only row; any other count is
    /// [`ErrorKind::RowCount`](crate::error::ErrorKind::RowCount).
    pub async fn query_one(self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        let hub = self.hub;
        let (index, rows) = self.routed::<FirstRow, _>(Pools, sql, params).await?;
        exactly_one(&hub.context(index), rows)
    }

    /// Runs the statement and returns its row, if any; more than one row is
    /// [`ErrorKind::RowCount`](crate::error::ErrorKind::RowCount).
    pub async fn query_opt(self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        let hub = self.hub;
        let (index, rows) = self.routed::<FirstRow, _>(Pools, sql, params).await?;
        at_most_one(&hub.context(index), rows)
    }

    /// The read, its connections from `connect`: the node that answered,
    /// and every row.
    #[cfg(test)]
    pub(crate) async fn rows<C: Connect>(
        self,
        connect: C,
        sql: &str,
        params: Params<'_>,
    ) -> Result<(usize, Vec<RowOf<C>>), Error> {
        self.routed::<Rows, C>(connect, sql, params).await
    }

    /// The read, its connections from `connect`: the node that answered,
    /// and its answer as `K` returns it. A statement that can write or lock
    /// runs as a write.
    pub(crate) async fn routed<K: Returns, C: Connect>(
        self,
        connect: C,
        sql: &str,
        params: Params<'_>,
    ) -> Result<(usize, K::Output<RowOf<C>>), Error> {
        if let Intent::Write(why) = intent(sql) {
            // Boxed: the read future grows by a pointer, not by a write's.
            return Box::pin(self.on_primary::<K, C>(connect, sql, params, why)).await;
        }
        let strategy = self.strategy.unwrap_or(self.hub.config.read_strategy);
        let mut observer = Observer::read(self.hub, strategy, sql);
        let (budget, freshness) = match self.resolve() {
            Ok(resolved) => resolved,
            Err(error) => return Err(observer.rejected(self.hub, error)),
        };
        let call = Call {
            sql,
            params,
            deadline: Deadline::start(budget),
            token: false,
        };
        // The call's span is entered at every poll only if tracing wants it.
        let span = observer.span().clone();
        let (hub, idempotent) = (self.hub, self.idempotent);
        let result = if span.is_disabled() {
            let routed = route::<K, C>(
                hub,
                connect,
                strategy,
                freshness,
                &call,
                idempotent,
                &mut observer,
            );
            hub.in_flight(Work::Read, pin!(routed)).await
        } else {
            let routed = route::<K, C>(
                hub,
                connect,
                strategy,
                freshness,
                &call,
                idempotent,
                &mut observer,
            );
            hub.in_flight(Work::Read, pin!(routed.instrument(span)))
                .await
        };
        observer.finish(self.hub, &result);
        match &result {
            Ok((index, _)) => {
                // Ended at its node's last answer (its own, or a later one):
                // the readiness window's one-second buckets need no clock
                // read of their own.
                let hub = self.hub;
                match hub.traffic(*index).last_answer() {
                    Some(at) => hub.read_outcomes.record_at(at, false),
                    None => hub.read_outcomes.record(false),
                }
                call_info::record(self.info, hub, *index, None);
            }
            Err(error) => self.hub.read_outcomes.record(error.is_unavailable()),
        }
        result
    }

    /// A statement that can write or lock (`why` says which word showed
    /// it), on the primary under the write rules: held for a primary during
    /// a failover, never sent twice unless marked idempotent, retried only
    /// where a write may be. The read's deadline, slot and idempotent mark
    /// carry over; strategy, staleness bound and causal token do not apply
    /// (the primary satisfies every one).
    async fn on_primary<K: Returns, C: Connect>(
        self,
        connect: C,
        sql: &str,
        params: Params<'_>,
        why: &'static str,
    ) -> Result<(usize, K::Output<RowOf<C>>), Error> {
        self.hub.write_through_read(why);
        let mut write = WriteBuilder::new(self.hub);
        if let Err(error) = self.resolve() {
            let observer = Observer::write(self.hub, sql, false);
            return Err(observer.rejected(self.hub, error));
        }
        if let Some(deadline) = self.deadline {
            write = write.deadline(deadline);
        }
        write.idempotent = self.idempotent;
        write.info = self.info;
        let served = write.run::<K, C>(connect, sql, params).await?;
        Ok((served.index, served.output))
    }

    /// The deadline and freshness in force, checked.
    fn resolve(&self) -> Result<(Duration, Freshness), Error> {
        let zero = |option| Error::invalid_argument(option, "must be greater than zero");
        let budget = self.deadline.unwrap_or(self.hub.config.deadline);
        if budget.is_zero() {
            return Err(zero("deadline"));
        }
        let max_staleness = self.max_staleness.or(self.hub.config.max_staleness);
        if max_staleness.is_some_and(|bound| bound.is_zero()) {
            return Err(zero("max_staleness"));
        }
        let freshness = Freshness {
            max_staleness,
            after: causal::read_after(self.after),
        };
        Ok((budget, freshness))
    }
}

impl ReadBuilder<'_> {
    /// A pooled connection of the node this read would go to (strategy,
    /// staleness bound, causal token), for what one statement cannot do:
    /// `COPY … TO`, a streaming `query_raw`, portals, statements prepared
    /// by hand. If its node cannot give one, another eligible node's. The
    /// deadline bounds the checkout only; what runs on the connection is
    /// not retried, hedged or bounded by pgrouter. Dropping it returns it
    /// to its pool. The node chosen is recorded in [`info`](Self::info).
    ///
    /// ```no_run
    /// # async fn run(db: pgrouter::DatabaseManager) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let client = db.read().max_staleness(Duration::from_secs(1)).client().await?;
    /// let rows = client.query("SELECT id FROM orders", &[]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn client(self) -> Result<deadpool_postgres::Client, Error> {
        let strategy = self.strategy.unwrap_or(self.hub.config.read_strategy);
        let (budget, freshness) = self.resolve()?;
        super::dedicated::for_read(self.hub, strategy, budget, freshness, self.info).await
    }
}

/// Picks a node, runs the call, and on a retryable failure runs it once
/// more on another node. A "read" may write through a function the
/// statement scanner cannot see: a statement sent to the primary follows the rules of a write
/// that is not idempotent, and is never sent again once it was sent (unless
/// the caller marked it idempotent); one sent to a replica (in recovery at
/// its last probe, so it can have written nothing) may be, as a hedge after
/// the hedge delay or as a retry after a failure, each within the budget.
async fn route<K: Returns, C: Connect>(
    hub: &Hub,
    connect: C,
    strategy: ReadStrategy,
    freshness: Freshness,
    call: &Call<'_>,
    idempotent: bool,
    observer: &mut Observer,
) -> Result<(usize, K::Output<RowOf<C>>), Error> {
    hub.ensure_open()?;
    let mut rng = fastrand::Rng::new();
    let (first, role) = hub
        .pick_first_read(strategy, freshness, &mut rng)
        .ok_or_else(|| Error::no_healthy_node(strategy))?;
    observer.attempt(hub, first, 1, Reason::Strategy);
    hub.budget.deposit();
    // A server in recovery applies no write: a statement sent to a replica
    // may run again elsewhere. One sent to the primary may have written.
    let may_resend = idempotent || role == Role::Replica;
    let mut attempt = pin!(tracked::<K, C>(hub, connect, first, 1, call));
    let settled = match Watch::plan(hub, first, may_resend) {
        None => Settled::First(attempt.await),
        Some(watch) => {
            // The first look is kept in the hub's deadline registry, as the
            // deadline is: no timer of the read's own.
            let look = clock::after(call.deadline.started, watch.hedge_after);
            match hub.deadlines.bound(look, attempt.as_mut()).await {
                Ok(result) => Settled::First(result),
                Err(Expired) => {
                    let route = Route {
                        strategy,
                        freshness,
                        first,
                    };
                    // Boxed: the slow path adds nothing to the read future.
                    let watched =
                        watch.run::<K, C, _>(hub, connect, route, attempt.as_mut(), call, &mut rng);
                    Box::pin(watched).await
                }
            }
        }
    };
    let error = match settled {
        Settled::First(Ok(rows)) => return Ok((first, rows)),
        Settled::Hedged(result) => {
            match &result {
                Ok((index, _)) if *index != first => {
                    observer.attempt(hub, *index, 2, Reason::Hedge);
                }
                _ => {}
            }
            return result;
        }
        Settled::First(Err(error)) => error,
    };
    // Nothing was sent when no connection could be had: another node may
    // take it even where this one refused for good (a full `max_connections`).
    let elsewhere = *error.kind() == ErrorKind::Connect
        || error.retry_decision(may_resend) == RetryDecision::Retry;
    if !elsewhere || !time_for_another_attempt(call) {
        return Err(error);
    }
    let Some(second) = hub.pick_read(strategy, freshness, Some(first), &mut rng) else {
        return Err(error);
    };
    if !hub.budget.withdraw(tokio::time::Instant::now()) {
        hub.extra_read_refused(first, true);
        return Err(error);
    }
    tracing::debug!(from = %hub.context(first).node, to = %hub.context(second).node,
        %error, "retrying read on another node");
    observer.retry(hub, &error);
    observer.attempt(hub, second, 2, Reason::RetryElsewhere);
    // Boxed: the slow path adds nothing to the read future.
    let rows = Box::pin(tracked::<K, C>(hub, connect, second, 2, call)).await?;
    Ok((second, rows))
}

/// Whether any useful part of the deadline is left for another node (a
/// healthy one answers in well under a millisecond on a local network).
/// If it runs out there, the fair-share rule does not hold it against that
/// node.
fn time_for_another_attempt(call: &Call<'_>) -> bool {
    let left = call
        .deadline
        .at
        .saturating_duration_since(tokio::time::Instant::now());
    left >= RETRY_FLOOR
}
