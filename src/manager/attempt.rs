//! One attempt on one node: checkout, prepare, run, all before a deadline,
//! and what a failure on the way means.
//!
//! Each step knows its [`Phase`]. A failure is classified by
//! [`classify`] (pure) and the verdict applied here, in one place for
//! reads, writes and transactions: the node blamed through the hub, the
//! connection kept, discarded or cancelled on the server, the typed error
//! built.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, PoolError, TimeoutType};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::{Client, Row};
use tracing::Instrument;

use crate::causal::lsn::{timeline_of_walfile, CausalToken, Lsn};
use crate::config::clock;
use crate::config::StatementMode;
use crate::connect::node::Node;
pub(crate) use crate::connect::statements::Params;
use crate::connect::statements::{lost_to_a_pooler, Block, Ready, Statements};
use crate::failure::error::{Error, NodeContext};
use crate::failure::safety::{
    classify, fair_share, Action, Cause, Fate, NodeFault, Phase, Verdict,
};
use crate::health::capability::degrades;
use crate::hub::Hub;

/// Read right after a write on the same connection: at least the end of
/// the write's commit record, and the timeline it is on (the current WAL
/// file's, which a promotion changes at once).
pub(crate) const TOKEN_SQL: &str =
    "SELECT pg_current_wal_insert_lsn(), pg_walfile_name(pg_current_wal_insert_lsn())";

/// A call's deadline, and the budget it was computed from (for errors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) budget: Duration,
}

impl Deadline {
    /// `budget` from now.
    pub(crate) fn start(budget: Duration) -> Self {
        Self {
            at: clock::after(Instant::now(), budget),
            budget,
        }
    }
}

/// What a statement returns: every row, or the number of rows affected.
pub(crate) trait Returns: Send + Sync + 'static {
    /// The result.
    type Output: Send;
    /// Runs the ready statement.
    fn run<'a>(
        client: &'a Client,
        statement: &'a Ready<'_>,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Self::Output, tokio_postgres::Error>> + Send + 'a;
}

/// Every row (`query`).
#[derive(Debug)]
pub(crate) struct Rows;

impl Returns for Rows {
    type Output = Vec<Row>;
    fn run<'a>(
        client: &'a Client,
        statement: &'a Ready<'_>,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        statement.query(client, params)
    }
}

/// The number of rows affected (`execute`).
#[derive(Debug)]
pub(crate) struct Count;

impl Returns for Count {
    type Output = u64;
    fn run<'a>(
        client: &'a Client,
        statement: &'a Ready<'_>,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        statement.execute(client, params)
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
    /// Count the statement in its node's live traffic (outlier detection,
    /// the hedge delay).
    pub(crate) tracked: bool,
}

/// What went wrong, with its source.
pub(crate) enum Failure {
    Pool(PoolError),
    Postgres(tokio_postgres::Error),
    Deadline,
}

/// A pooled connection a statement may be running on. If the call's future
/// is dropped before the attempt settles it (a caller's own timeout, a
/// `select!`), the statement is cancelled on the server and the connection
/// discarded: the pool never hands out a connection still busy with an
/// orphaned statement or an open transaction.
pub(crate) struct Busy<'h> {
    client: Option<Object>,
    hub: &'h Hub,
    node: Arc<Node>,
}

impl Busy<'_> {
    /// How statements reach this connection's node.
    pub(crate) fn statements(&self) -> &Statements {
        &self.node.statements
    }

    /// The connection, no longer guarded: the caller settles it.
    pub(crate) fn take(mut self) -> Object {
        match self.client.take() {
            Some(client) => client,
            None => unreachable!("a Busy connection is taken once, by value"),
        }
    }
}

impl std::ops::Deref for Busy<'_> {
    type Target = Object;
    fn deref(&self) -> &Object {
        match &self.client {
            Some(client) => client,
            None => unreachable!("a Busy connection is only emptied by take()"),
        }
    }
}

impl std::ops::DerefMut for Busy<'_> {
    fn deref_mut(&mut self) -> &mut Object {
        match &mut self.client {
            Some(client) => client,
            None => unreachable!("a Busy connection is only emptied by take()"),
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            tracing::debug!("call dropped mid-flight; cancelling its statement");
            self.hub
                .connector
                .cancel_in_background(client.cancel_token());
            drop(Object::take(client));
        }
    }
}

/// The statement's result and the token query's, or the deadline.
type RunResult<T> = Result<
    (
        Result<T, tokio_postgres::Error>,
        Result<Option<Row>, tokio_postgres::Error>,
    ),
    tokio::time::error::Elapsed,
>;

/// Where [`Attempt::prepare_and_run`] stopped.
enum Stage<T> {
    /// Preparing failed.
    PrepareFailed(tokio_postgres::Error),
    /// The deadline passed while preparing.
    PrepareTimedOut,
    /// The statement ran (or the deadline passed while it did).
    Ran(RunResult<T>),
}

/// The server no longer accepts a cached prepared statement: the schema
/// changed under it ("cached plan must not change result type"), or the
/// statement is gone ("prepared statement … does not exist"). Either way
/// nothing ran.
fn is_stale_statement(error: &tokio_postgres::Error) -> bool {
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
pub(crate) struct Attempt<'h> {
    hub: &'h Hub,
    index: usize,
    deadline: Deadline,
    started: Instant,
}

impl<'h> Attempt<'h> {
    /// An attempt on node `index` starting now.
    pub(crate) fn start(hub: &'h Hub, index: usize, deadline: Deadline) -> Self {
        Self {
            hub,
            index,
            deadline,
            started: Instant::now(),
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

    pub(crate) fn context(&self) -> NodeContext {
        self.hub.context(self.index)
    }

    /// A pooled connection to the node, before the deadline, guarded until
    /// the attempt settles it.
    pub(crate) async fn checkout(&self) -> Result<Busy<'h>, Error> {
        let Some(node) = self.hub.node(self.index) else {
            // A discovered node removed between the pick and now: as
            // unreachable, before anything was sent (a read retries
            // elsewhere).
            let gone = PoolError::Timeout(TimeoutType::Create);
            return Err(self.judge(Phase::Checkout, Failure::Pool(gone)).0);
        };
        let checkout = timeout_at(self.deadline.at, node.pool.get()).await;
        crate::observe::metrics::pool_wait(&node, self.started);
        match checkout {
            Ok(Ok(client)) => Ok(Busy {
                client: Some(client),
                hub: self.hub,
                node,
            }),
            Ok(Err(source)) => Err(self.judge(Phase::Checkout, Failure::Pool(source)).0),
            Err(_) => Err(self.judge(Phase::Checkout, Failure::Deadline).0),
        }
    }

    /// Runs the call once; with `call.token`, pipelines the causal token
    /// query behind it.
    pub(crate) async fn run<K: Returns>(
        &self,
        call: &Call<'_>,
    ) -> Result<(K::Output, Option<CausalToken>), Error> {
        if !call.tracked {
            let client = self.checkout().await?;
            return self.run_on::<K>(client, call).await;
        }
        // In flight on the node from here until it ends (answered, failed,
        // or dropped), its answer timed.
        let traffic = self.hub.traffic(self.index);
        let _in_flight = traffic.begin();
        let client = self.checkout().await?;
        traffic.sent(self.hub.nanos(self.started));
        let result = self.run_on::<K>(client, call).await;
        if matches!(result, Ok(_) | Err(Error::Database { .. })) {
            let now = Instant::now();
            traffic.answered(
                self.hub.nanos(now),
                now.saturating_duration_since(self.started),
            );
        }
        result
    }

    /// [`Attempt::run`] on a connection already checked out.
    async fn run_on<K: Returns>(
        &self,
        client: Busy<'h>,
        call: &Call<'_>,
    ) -> Result<(K::Output, Option<CausalToken>), Error> {
        // A cached statement the server no longer accepts (the schema
        // changed under it) ran nothing: prepare afresh and run once more.
        let mut fresh_plan = false;
        loop {
            match self.prepare_and_run::<K>(&client, call).await {
                Stage::PrepareFailed(error) => {
                    let error = Failure::Postgres(error);
                    return Err(self.fail(Phase::BeforeSend, client.take(), error));
                }
                Stage::PrepareTimedOut => {
                    return Err(self.fail(Phase::BeforeSend, client.take(), Failure::Deadline))
                }
                Stage::Ran(Ok((Err(error), _))) if !fresh_plan && is_stale_statement(&error) => {
                    tracing::debug!(%error, "cached statement rejected; preparing it again");
                    client.statement_cache.clear();
                    fresh_plan = true;
                }
                Stage::Ran(result) => return self.finish(client.take(), result),
            }
        }
    }

    /// Prepares (cached) and runs the statement, the token query right
    /// behind it; says where it stopped.
    async fn prepare_and_run<K: Returns>(
        &self,
        client: &Busy<'_>,
        call: &Call<'_>,
    ) -> Stage<K::Output> {
        let statements = client.statements();
        // The token query is prepared (once per connection) with the
        // statement, so its execution rides right behind the statement's.
        let prepare = async {
            let statement = statements
                .prepare(client, call.sql, call.params, Block::None)
                .await?;
            // A server that refuses the WAL functions costs the token
            // (reads then go to the primary), not the write.
            let token = match call.token {
                true => match statements.own(client, TOKEN_SQL, &[]).await {
                    Ok(statement) => Some(statement),
                    Err(error) if position_refused(&error) => None,
                    Err(error) => return Err(error),
                },
                false => None,
            };
            Ok((statement, token))
        };
        let (statement, token_statement) = match timeout_at(self.deadline.at, prepare).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(error)) => return Stage::PrepareFailed(error),
            Err(_) => return Stage::PrepareTimedOut,
        };
        let run = K::run(client, &statement, call.params);
        let token = async {
            match &token_statement {
                Some(statement) => statement.query_one(client, &[]).await.map(Some),
                None => Ok(None),
            }
        };
        // Biased: the statement is sent first, the token query right behind it.
        let both = async { tokio::join!(biased; run, token) };
        Stage::Ran(timeout_at(self.deadline.at, both).await)
    }

    /// The statement's outcome, its connection settled.
    fn finish<T>(
        &self,
        client: Object,
        result: RunResult<T>,
    ) -> Result<(T, Option<CausalToken>), Error> {
        match result {
            Ok((Ok(output), Ok(row))) => {
                drop(client);
                match row.map(|row| token_of(&row)).transpose() {
                    Ok(token) => Ok((output, token)),
                    Err(error) => Err(self.token_unavailable(error)),
                }
            }
            Ok((Ok(output), Err(error))) if position_refused(&error) => {
                drop(client);
                Ok((output, Some(CausalToken::PRIMARY)))
            }
            Ok((Ok(_), Err(error))) => Err(self.token_unavailable(error)),
            Ok((Err(error), _)) => Err(self.fail(Phase::Sent, client, Failure::Postgres(error))),
            Err(_) => Err(self.fail(Phase::Sent, client, Failure::Deadline)),
        }
    }

    /// [`Attempt::judge`], then settles the connection as the verdict says.
    pub(crate) fn fail(&self, phase: Phase, client: Object, failure: Failure) -> Error {
        let (error, fate) = self.judge(phase, failure);
        self.settle(client, fate);
        error
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
    pub(crate) fn settle(&self, client: Object, fate: Fate) {
        match fate {
            Fate::Keep => drop(client),
            Fate::Discard => drop(Object::take(client)),
            Fate::Cancel => {
                self.hub
                    .connector
                    .cancel_in_background(client.cancel_token());
                drop(Object::take(client));
            }
        }
    }

    pub(crate) fn token_unavailable(&self, source: tokio_postgres::Error) -> Error {
        Error::TokenUnavailable {
            context: self.context(),
            source: Some(source),
        }
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
        self.hub.node(self.index).is_some_and(|node| {
            let status = node.pool.status();
            status.size >= status.max_size && status.available == 0
        })
    }

    fn error(&self, phase: Phase, failure: Failure, cause: Cause, verdict: Verdict) -> Error {
        let context = self.context();
        match failure {
            Failure::Pool(PoolError::Closed) => Error::Closed,
            Failure::Pool(source) => Error::Connect { context, source },
            Failure::Deadline => Error::Timeout {
                context,
                deadline: self.deadline.budget,
                after_send: phase.may_be_applied(),
            },
            Failure::Postgres(source) if self.lost_to_a_pooler(&source) => {
                Error::StatementMode { context, source }
            }
            Failure::Postgres(source) => match cause {
                Cause::Server { .. } => Error::Database { context, source },
                Cause::Lost if verdict.action == Action::Retry => {
                    Error::ConnectionLost { context, source }
                }
                Cause::Lost => Error::OutcomeUnknown { context, source },
                _ => Error::Statement { context, source },
            },
        }
    }

    /// In prepared mode, a named statement of pgrouter's went missing
    /// (or its name was taken) on the server connection that got it.
    fn lost_to_a_pooler(&self, error: &tokio_postgres::Error) -> bool {
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

/// One statement attempt inside a span naming the node, its role and the
/// attempt's number.
pub(crate) async fn traced<K: Returns>(
    hub: &Hub,
    index: usize,
    number: u32,
    call: &Call<'_>,
) -> Result<(K::Output, Option<CausalToken>), Error> {
    let attempt = Attempt::start(hub, index, call.deadline);
    attempt
        .run::<K>(call)
        .instrument(span(hub, index, number))
        .await
}

/// The span of one attempt. Field values are only evaluated when the span
/// is enabled.
pub(crate) fn span(hub: &Hub, index: usize, number: u32) -> tracing::Span {
    tracing::debug_span!("pgrouter.attempt",
        node = %hub.context(index).node, role = %hub.snapshot().nodes[index].role, attempt = number)
}

/// The server refuses the WAL position functions (a managed platform such
/// as Aurora, or a role without the privilege): a write's token then sends
/// reads to the primary, as a node without positions does for routing.
pub(crate) fn position_refused(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(degrades)
}

/// The causal token in a `TOKEN_SQL` row.
pub(crate) fn token_of(row: &Row) -> Result<CausalToken, tokio_postgres::Error> {
    let lsn: Lsn = row.try_get(0)?;
    let walfile: &str = row.try_get(1)?;
    Ok(match timeline_of_walfile(walfile) {
        Some(timeline) => CausalToken::on_timeline(timeline, lsn),
        None => CausalToken::new(lsn),
    })
}

/// The only row, or [`Error::RowCount`].
pub(crate) fn exactly_one(context: &NodeContext, mut rows: Vec<Row>) -> Result<Row, Error> {
    match (rows.pop(), rows.len()) {
        (Some(row), 0) => Ok(row),
        (last, before) => Err(row_count(
            context,
            "exactly one row",
            before + usize::from(last.is_some()),
        )),
    }
}

/// The row, if any; more than one is [`Error::RowCount`].
pub(crate) fn at_most_one(context: &NodeContext, mut rows: Vec<Row>) -> Result<Option<Row>, Error> {
    if rows.len() > 1 {
        return Err(row_count(context, "at most one row", rows.len()));
    }
    Ok(rows.pop())
}

fn row_count(context: &NodeContext, expected: &'static str, actual: usize) -> Error {
    Error::RowCount {
        context: context.clone(),
        expected,
        actual,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::manager::attempt::Deadline;

    #[tokio::test(start_paused = true)]
    async fn a_huge_budget_is_a_far_deadline_not_a_panic() {
        let deadline = Deadline::start(Duration::MAX);
        assert!(deadline.at > Instant::now() + Duration::from_secs(86_400 * 365));
        assert_eq!(deadline.budget, Duration::MAX);
    }
}
