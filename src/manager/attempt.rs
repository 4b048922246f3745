//! One attempt on one node: checkout, prepare, run, all before a deadline,
//! and what a failure on the way means.
//!
//! Each step knows its [`Phase`]. A failure is classified by
//! [`classify`] (pure) and the verdict applied here, in one place for
//! reads, writes and transactions: the node blamed through the hub, the
//! connection kept, discarded or cancelled on the server, the typed error
//! built.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::session::{Connect, Counted, Failure, One, Params, PgError, Returns, RowOf, Session};
use super::token::{position_refused, token_of, TOKEN_SQL};
use crate::causal::lsn::CausalToken;
use crate::config::clock;
use crate::config::StatementMode;
use crate::connect::statements::{lost_to_a_pooler, Block};
use crate::failure::error::{Error, ErrorKind, NodeContext};
use crate::failure::safety::{
    classify, fair_share, Action, Cause, Fate, NodeFault, Phase, Verdict,
};
use crate::hedging::InFlight as TrafficInFlight;
use crate::hub::{Expired, Hub};

/// A call's deadline, and the budget it was computed from (for errors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) budget: Duration,
    /// When the call started (its first attempt starts then too: one
    /// clock read for both).
    pub(crate) started: Instant,
}

impl Deadline {
    /// `budget` from now.
    pub(crate) fn start(budget: Duration) -> Self {
        let started = Instant::now();
        Self {
            at: clock::after(started, budget),
            budget,
            started,
        }
    }
}

/// One routed statement.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) sql: &'a str,
    pub(crate) params: Params<'a>,
    pub(crate) deadline: Deadline,
    /// Also return the write's causal token.
    pub(crate) token: bool,
}

/// A pooled connection a statement may be running on. If the call's future
/// is dropped before the attempt settles it (a caller's own timeout, a
/// `select!`), the statement is cancelled on the server and the connection
/// discarded: the pool never hands out a connection still busy with an
/// orphaned statement or an open transaction.
pub(crate) struct Busy<'h, S: Session> {
    session: Option<S>,
    hub: &'h Hub,
    /// What a drop mid-flight does: `Cancel`, or `Drain` for a single
    /// statement outside a transaction (see [`Busy::single_statement`]).
    dropped: Fate,
}

impl<'h, S: Session> Busy<'h, S> {
    /// `session`, guarded until settled (dropped mid-flight: cancelled).
    pub(crate) fn new(hub: &'h Hub, session: S) -> Self {
        Self {
            session: Some(session),
            hub,
            dropped: Fate::Cancel,
        }
    }

    /// For one statement outside a transaction: dropped mid-flight, its
    /// connection waits for the statement to end and goes back to the pool
    /// (nothing is left open on it), as a losing hedge's does.
    pub(crate) fn single_statement(mut self) -> Self {
        self.dropped = Fate::Drain;
        self
    }

    /// Settles the connection where it lies (returned to its pool,
    /// discarded, or cancelled first): a kept connection is not moved on
    /// its way back. Guards nothing afterwards.
    pub(crate) fn settle(&mut self, fate: Fate) {
        match fate {
            // Dropped in place: deadpool's own drop returns it to the pool.
            Fate::Keep => self.session = None,
            fate => {
                if let Some(session) = self.session.take() {
                    session.settle(self.hub, fate);
                }
            }
        }
    }

    /// The connection, no longer guarded: the caller settles it.
    pub(crate) fn take(mut self) -> S {
        match self.session.take() {
            Some(session) => session,
            None => unreachable!("a Busy connection is taken once, by value"),
        }
    }
}

impl<S: Session> std::ops::Deref for Busy<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        match &self.session {
            Some(session) => session,
            None => unreachable!("a Busy connection is only emptied by take()"),
        }
    }
}

impl<S: Session> Drop for Busy<'_, S> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Stopped by `close()`: the pools are closing, nothing waits.
            let fate = match self.hub.is_closed() {
                true => Fate::Cancel,
                false => self.dropped,
            };
            tracing::debug!(?fate, "call dropped mid-flight");
            session.settle(self.hub, fate);
        }
    }
}

/// The statement's result and the token query's, or the deadline.
type RunResult<T, R> = Result<(Result<T, PgError>, Result<Option<R>, PgError>), Expired>;

/// Where [`Attempt::prepare_and_run`] stopped.
enum Stage<T, R> {
    /// Preparing failed.
    PrepareFailed(PgError),
    /// The deadline passed while preparing.
    PrepareTimedOut,
    /// The statement ran (or the deadline passed while it did).
    Ran(RunResult<T, R>),
    /// The statement succeeded (a write in autocommit: committed), and the
    /// deadline passed while its causal token query ran.
    TokenTimedOut,
}

/// The server no longer accepts a cached prepared statement: the schema
/// changed under it ("cached plan must not change result type"), or the
/// statement is gone ("prepared statement … does not exist"). Either way
/// nothing ran.
fn is_stale_statement(error: &PgError) -> bool {
    use tokio_postgres::error::SqlState;
    match error.as_db_error() {
        Some(db) if *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME => true,
        Some(db) => {
            *db.code() == SqlState::FEATURE_NOT_SUPPORTED
                && db
                    .message()
                    .contains("cached plan must not change result type")
        }
        None => false,
    }
}

/// One attempt's context: where, until when, since when.
#[derive(Clone, Copy)]
pub(crate) struct Attempt<'h, C> {
    hub: &'h Hub,
    connect: C,
    index: usize,
    deadline: Deadline,
    started: Instant,
}

impl<'h, C: Connect> Attempt<'h, C> {
    /// An attempt on node `index` starting now, its connection from `connect`.
    pub(crate) fn start(hub: &'h Hub, connect: C, index: usize, deadline: Deadline) -> Self {
        Self::started_at(hub, connect, index, deadline, Instant::now())
    }

    /// An attempt on node `index` that started at `started`.
    pub(crate) fn started_at(
        hub: &'h Hub,
        connect: C,
        index: usize,
        deadline: Deadline,
        started: Instant,
    ) -> Self {
        Self {
            hub,
            connect,
            index,
            deadline,
            started,
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline.at
    }

    /// The call's whole budget.
    pub(crate) fn budget(&self) -> Duration {
        self.deadline.budget
    }

    pub(crate) fn hub(&self) -> &'h Hub {
        self.hub
    }

    /// The node it runs on.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Where its connections come from.
    pub(crate) fn connect(&self) -> C {
        self.connect
    }

    pub(crate) fn context(&self) -> NodeContext {
        self.hub.context(self.index)
    }

    /// A pooled connection to the node, before the deadline, guarded until
    /// the attempt settles it.
    pub(crate) async fn checkout(&self) -> Result<Busy<'h, C::Session>, Error> {
        let checkout = self
            .connect
            .checkout(self.hub, self.index, self.deadline.at, self.started);
        match checkout.await {
            Ok(session) => Ok(Busy::new(self.hub, session)),
            Err(failure) => Err(self.judge(Phase::Checkout, failure).0),
        }
    }

    /// Runs the call once; with `call.token`, pipelines the causal token
    /// query behind it.
    pub(crate) async fn run<K: Returns>(
        &self,
        call: &Call<'_>,
    ) -> Result<(K::Output<RowOf<C>>, Option<CausalToken>), Error> {
        // Writes count in the live traffic too: the primary's answers are
        // evidence for outlier detection on the nodes that serve reads.
        let _in_flight = self.begin();
        // `checkout()`, inline: one future layer less on every call.
        let checkout = self
            .connect
            .checkout(self.hub, self.index, self.deadline.at, self.started);
        let mut client = self.checked_out(checkout.await)?;
        let started = self.sent();
        let result = self.run_on::<K>(&mut client, call).await;
        self.answered(started, result.as_ref().err());
        result
    }

    /// A read: [`Attempt::run`] without a causal token, checkout, prepare,
    /// run and settle in one future (every read is polled through it).
    pub(crate) async fn read<K: Returns>(
        self,
        call: &Call<'_>,
    ) -> Result<K::Output<RowOf<C>>, Error> {
        let _in_flight = self.begin();
        let checkout = self
            .connect
            .checkout(self.hub, self.index, self.deadline.at, self.started);
        let mut client = self.checked_out(checkout.await)?;
        let started = self.sent();
        // A cached statement the server no longer accepts (the schema
        // changed under it) ran nothing: prepare afresh and run once more.
        let mut fresh_plan = false;
        let result = loop {
            // Bounded by the registry, which sets nothing for a statement
            // found in the cache (ready at once).
            let prepare = client.prepare(call.sql, call.params, Block::None);
            let prepared = self.hub.deadlines.bound(self.deadline.at, prepare).await;
            let statement = match prepared {
                Ok(Ok(statement)) => statement,
                Ok(Err(error)) => {
                    let failure = Failure::Postgres(error);
                    break Err(self.fail(Phase::BeforeSend, &mut client, failure));
                }
                Err(_) => break Err(self.fail(Phase::BeforeSend, &mut client, Failure::Deadline)),
            };
            let ran = {
                // Pinned where it is made, and bounded through a reference,
                // by the hub's deadline registry (no timer of its own).
                let run = pin!(K::run(&*client, call.sql, &statement, call.params));
                self.hub.deadlines.bound(self.deadline.at, run).await
            };
            match ran {
                Ok(Ok(output)) => {
                    client.settle(Fate::Keep);
                    break Ok(output);
                }
                Ok(Err(error)) if !fresh_plan && is_stale_statement(&error) => {
                    tracing::debug!(%error, "cached statement rejected; preparing it again");
                    client.forget_statements();
                    fresh_plan = true;
                }
                Ok(Err(error)) => {
                    break Err(self.fail(Phase::Sent, &mut client, Failure::Postgres(error)))
                }
                Err(_) => break Err(self.fail(Phase::Sent, &mut client, Failure::Deadline)),
            }
        };
        self.answered(started, result.as_ref().err());
        result
    }

    /// Counts the attempt in flight on its node (live traffic) until the
    /// guard drops: answered, failed, or dropped.
    #[inline]
    fn begin(&self) -> TrafficInFlight<'h> {
        let (in_flight, first) = self.hub.traffic(self.index).begin();
        if first {
            self.hub.counters.reads_started.notify_one();
        }
        in_flight
    }

    /// The connection checked out, guarded until settled (dropped
    /// mid-flight: left to drain), or the checkout's error.
    #[inline]
    fn checked_out(
        &self,
        checkout: Result<C::Session, Failure>,
    ) -> Result<Busy<'h, C::Session>, Error> {
        match checkout {
            Ok(session) => Ok(Busy::new(self.hub, session).single_statement()),
            Err(failure) => Err(self.judge(Phase::Checkout, failure).0),
        }
    }

    /// The node has the statement now: its live traffic is told; returns
    /// the attempt's start stamp for [`Attempt::answered`].
    #[inline]
    fn sent(&self) -> u64 {
        let started = self.hub.nanos(self.started);
        self.hub.traffic(self.index).sent(started);
        started
    }

    /// An answer (a result, or the server's own error) came from the node:
    /// its live traffic is told, with the attempt's latency.
    fn answered(&self, started: u64, error: Option<&Error>) {
        if error.is_none_or(|error| *error.kind() == ErrorKind::Database) {
            let now = self.hub.nanos(Instant::now());
            let latency = Duration::from_nanos(now.saturating_sub(started));
            self.hub.traffic(self.index).answered(now, latency);
        }
    }

    /// [`Attempt::run`] on a connection already checked out, settled here
    /// (in place: it is not moved on the way).
    async fn run_on<K: Returns>(
        &self,
        client: &mut Busy<'h, C::Session>,
        call: &Call<'_>,
    ) -> Result<(K::Output<RowOf<C>>, Option<CausalToken>), Error> {
        // A cached statement the server no longer accepts (the schema
        // changed under it) ran nothing: prepare afresh and run once more.
        let mut fresh_plan = false;
        loop {
            match self.prepare_and_run::<K>(client, call).await {
                Stage::PrepareFailed(error) => {
                    let error = Failure::Postgres(error);
                    return Err(self.fail(Phase::BeforeSend, client, error));
                }
                Stage::PrepareTimedOut => {
                    return Err(self.fail(Phase::BeforeSend, client, Failure::Deadline))
                }
                Stage::Ran(Ok((Err(error), _))) if !fresh_plan && is_stale_statement(&error) => {
                    tracing::debug!(%error, "cached statement rejected; preparing it again");
                    client.forget_statements();
                    fresh_plan = true;
                }
                Stage::Ran(result) => return self.finish(client, result),
                Stage::TokenTimedOut => {
                    // The token query still runs on the connection.
                    client.settle(Fate::Discard);
                    return Err(self.token_unavailable(None));
                }
            }
        }
    }

    /// [`Attempt::judge`], then settles the connection (in place) as the
    /// verdict says.
    fn fail(&self, phase: Phase, client: &mut Busy<'h, C::Session>, failure: Failure) -> Error {
        let (error, fate) = self.judge(phase, failure);
        client.settle(fate);
        error
    }

    /// Prepares (cached) and runs the statement, the token query right
    /// behind it; says where it stopped.
    async fn prepare_and_run<K: Returns>(
        &self,
        client: &C::Session,
        call: &Call<'_>,
    ) -> Stage<K::Output<RowOf<C>>, RowOf<C>> {
        // The token query is prepared (once per connection) with the
        // statement, so its execution rides right behind the statement's.
        let prepare = async {
            let statement = client.prepare(call.sql, call.params, Block::None).await?;
            // A server that refuses the WAL functions costs the token
            // (reads then go to the primary), not the write.
            let token = match call.token {
                true => match client.own(TOKEN_SQL, &[]).await {
                    Ok(statement) => Some(statement),
                    Err(error) if position_refused(&error) => None,
                    Err(error) => return Err(error),
                },
                false => None,
            };
            Ok((statement, token))
        };
        let prepared = self.hub.deadlines.bound(self.deadline.at, prepare).await;
        let (statement, token_statement) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(error)) => return Stage::PrepareFailed(error),
            Err(_) => return Stage::PrepareTimedOut,
        };
        let Some(token_statement) = &token_statement else {
            // Pinned where it is made, and timed through a reference: the
            // statement's future (over a kilobyte) is not copied into the
            // timeout and again into this one.
            let run = pin!(K::run(client, call.sql, &statement, call.params));
            let ran = self.hub.deadlines.bound(self.deadline.at, run).await;
            return Stage::Ran(ran.map(|result| (result, Ok(None))));
        };
        // Biased: the statement is sent first, the token query right behind
        // it. Both futures are made inside the join, not moved into it: a
        // future captured and then awaited is stored twice in the read's
        // future, which is copied while polled.
        let succeeded = AtomicBool::new(false);
        let both = async {
            let run = async {
                let result = K::run(client, call.sql, &statement, call.params).await;
                succeeded.store(result.is_ok(), Ordering::Relaxed);
                result
            };
            let token = async {
                One::run(client, TOKEN_SQL, token_statement, &[])
                    .await
                    .map(Some)
            };
            tokio::join!(biased; run, token)
        };
        match self.hub.deadlines.bound(self.deadline.at, both).await {
            // Done, only the token is lost: never an unknown outcome.
            Err(_) if succeeded.load(Ordering::Relaxed) => Stage::TokenTimedOut,
            result => Stage::Ran(result),
        }
    }

    /// The statement's outcome, its connection settled.
    fn finish<T>(
        &self,
        client: &mut Busy<'h, C::Session>,
        result: RunResult<T, RowOf<C>>,
    ) -> Result<(T, Option<CausalToken>), Error> {
        match result {
            Ok((Ok(output), Ok(row))) => {
                client.settle(Fate::Keep);
                match row.map(|row| token_of(&row)).transpose() {
                    Ok(token) => Ok((output, token)),
                    Err(error) => Err(self.token_unavailable(Some(error))),
                }
            }
            Ok((Ok(output), Err(error))) if position_refused(&error) => {
                client.settle(Fate::Keep);
                Ok((output, Some(CausalToken::PRIMARY)))
            }
            Ok((Ok(_), Err(error))) => {
                client.settle(Fate::Keep);
                Err(self.token_unavailable(Some(error)))
            }
            Ok((Err(error), _)) => Err(self.fail(Phase::Sent, client, Failure::Postgres(error))),
            Err(_) => Err(self.fail(Phase::Sent, client, Failure::Deadline)),
        }
    }

    /// Classifies a failure in `phase`, applies what it says about the node,
    /// and returns the typed error and what to do with the connection.
    pub(crate) fn judge(&self, phase: Phase, failure: Failure) -> (Error, Fate) {
        let cause = self.cause(phase, &failure);
        let verdict = classify(phase, cause);
        let dropped = self.hub.blame(self.index, verdict.node);
        if let Failure::Deadline = failure {
            self.log_deadline(verdict, dropped);
        }
        (
            self.error(phase, failure, cause, verdict),
            verdict.connection,
        )
    }

    /// Returns the connection to the pool, discards it, or first cancels
    /// what may still run on it.
    pub(crate) fn settle(&self, client: C::Session, fate: Fate) {
        client.settle(self.hub, fate);
    }

    pub(crate) fn token_unavailable(&self, source: Option<PgError>) -> Error {
        Error::token_unavailable(self.context(), source)
    }

    fn cause(&self, phase: Phase, failure: &Failure) -> Cause {
        match failure {
            Failure::Pool(error) => Cause::of_pool(error),
            Failure::Postgres(error) => Cause::of_postgres(error),
            // Every connection busy with other calls: the wait was the
            // pool's, not the node's, as with the pool's own wait timeout.
            Failure::Deadline if phase == Phase::Checkout && self.pool_saturated() => {
                Cause::PoolExhausted
            }
            Failure::Deadline => Cause::Deadline {
                fair_share: fair_share(
                    self.started.elapsed(),
                    self.deadline.budget,
                    self.hub.config.health.probe_timeout,
                ),
            },
        }
    }

    /// Whether the node's pool has every connection open and in use.
    fn pool_saturated(&self) -> bool {
        self.connect.saturated(self.hub, self.index)
    }

    fn error(&self, phase: Phase, failure: Failure, cause: Cause, verdict: Verdict) -> Error {
        let context = self.context();
        match failure {
            Failure::Pool(deadpool_postgres::PoolError::Closed) => Error::closed(),
            Failure::Pool(source) => Error::connect(context, source),
            Failure::Deadline => {
                Error::timeout(context, self.deadline.budget, phase.may_be_applied())
            }
            Failure::Postgres(source) if self.lost_to_a_pooler(&source) => {
                Error::statement_mode(context, source)
            }
            Failure::Postgres(source) => match cause {
                Cause::Server { .. } => Error::database(context, source),
                Cause::Lost if verdict.action == Action::Retry => {
                    Error::connection_lost(context, source)
                }
                Cause::Lost => Error::outcome_unknown(context, source),
                _ => Error::statement(context, source),
            },
        }
    }

    /// In prepared mode, a named statement of pgrouter's went missing
    /// (or its name was taken) on the server connection that got it.
    fn lost_to_a_pooler(&self, error: &PgError) -> bool {
        let prepared = self
            .hub
            .node(self.index)
            .is_some_and(|node| node.statements.mode() == StatementMode::Prepared);
        prepared && lost_to_a_pooler(error)
    }

    fn log_deadline(&self, verdict: Verdict, dropped: usize) {
        let context = self.context();
        let (deadline, spent) = (self.deadline.budget, self.started.elapsed());
        if verdict.node == NodeFault::Silent {
            tracing::warn!(
                node = %context.node, region = %context.region,
                ?deadline, ?spent, dropped_idle = dropped, "call deadline exceeded"
            );
        } else {
            tracing::debug!(node = %context.node, ?deadline, ?spent,
                "call deadline exceeded after a short attempt; node not marked");
        }
    }
}

/// One statement attempt, started at `started`, inside a span naming the
/// node, its role and the attempt's number (when tracing wants that span: a disabled span is not
/// entered at every poll).
pub(crate) async fn traced<K: Returns, C: Connect>(
    hub: &Hub,
    connect: C,
    index: usize,
    number: u32,
    call: &Call<'_>,
    started: Instant,
) -> Result<(K::Output<RowOf<C>>, Option<CausalToken>), Error> {
    let attempt = Attempt::started_at(hub, connect, index, call.deadline, started);
    let span = span(hub, index, number);
    if span.is_disabled() {
        attempt.run::<K>(call).await
    } else {
        attempt.run::<K>(call).instrument(span).await
    }
}

/// The span of one attempt. Field values are only evaluated when the span
/// is enabled.
pub(crate) fn span(hub: &Hub, index: usize, number: u32) -> tracing::Span {
    tracing::debug_span!("pgrouter.attempt",
        node = %hub.context(index).node, role = %hub.snapshot().nodes[index].role, attempt = number)
}

/// The only row, or [`ErrorKind::RowCount`](crate::error::ErrorKind::RowCount).
pub(crate) fn exactly_one<R>(context: &NodeContext, answer: Counted<R>) -> Result<R, Error> {
    match answer {
        Counted {
            first: Some(row),
            rows: 1,
        } => Ok(row),
        Counted { rows, .. } => Err(row_count(context, "exactly one row", rows)),
    }
}

/// The row, if any; more than one is [`ErrorKind::RowCount`](crate::error::ErrorKind::RowCount).
pub(crate) fn at_most_one<R>(
    context: &NodeContext,
    answer: Counted<R>,
) -> Result<Option<R>, Error> {
    if answer.rows > 1 {
        return Err(row_count(context, "at most one row", answer.rows));
    }
    Ok(answer.first)
}

fn row_count(context: &NodeContext, expected: &'static str, actual: usize) -> Error {
    Error::row_count(context.clone(), expected, actual)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::manager::attempt::Deadline;

    #[tokio::test(start_paused = true)]
    async fn a_huge_budget_is_a_far_deadline_not_a_panic() {
        let deadline = Deadline::start(Duration::MAX);
        assert!(
            deadline.at
                > crate::config::clock::after(Instant::now(), Duration::from_secs(86_400 * 365))
        );
        assert_eq!(deadline.budget, Duration::MAX);
    }
}
