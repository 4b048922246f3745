//! Reads: routed by a strategy, retried once on another node after a
//! connection-level failure.

use std::time::Duration;

use tokio_postgres::Row;
use tracing::Instrument;

use super::attempt::{Call, Op, Output, Params};
use super::Shared;
use crate::config::ReadStrategy;
use crate::error::{Error, Operation};
use crate::lsn::CausalToken;
use crate::retry::read_retryable;
use crate::topology::Freshness;

/// Less than this left of the deadline, a read is not tried elsewhere.
const RETRY_FLOOR: Duration = Duration::from_millis(5);

/// Per-call read options. `None` fields use the configuration's value.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Overrides [`Config::read_strategy`](crate::Config::read_strategy).
    pub strategy: Option<ReadStrategy>,
    /// Overrides [`Config::deadline`](crate::Config::deadline).
    pub deadline: Option<Duration>,
    /// Overrides [`Config::max_staleness`](crate::Config::max_staleness).
    pub max_staleness: Option<Duration>,
    /// Only nodes known to have replayed this write may serve the read.
    pub after: Option<CausalToken>,
}

impl ReadOptions {
    /// The defaults: everything as configured, no causal token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the read strategy.
    pub fn strategy(mut self, strategy: ReadStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Overrides the deadline.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Overrides the staleness bound.
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = Some(bound);
        self
    }

    /// Requires a node that has replayed `token`.
    pub fn after(mut self, token: CausalToken) -> Self {
        self.after = Some(token);
        self
    }

    /// Checks the options against the configuration's defaults.
    fn resolve(&self, shared: &Shared) -> Result<(Duration, Freshness), Error> {
        let zero = |option| Error::InvalidArgument {
            option,
            reason: "must be greater than zero",
        };
        let budget = self.deadline.unwrap_or(shared.config.deadline);
        if budget.is_zero() {
            return Err(zero("deadline"));
        }
        let max_staleness = self.max_staleness.or(shared.config.max_staleness);
        if max_staleness.is_some_and(|bound| bound.is_zero()) {
            return Err(zero("max_staleness"));
        }
        let freshness = Freshness {
            max_staleness,
            after: self.after,
        };
        Ok((budget, freshness))
    }
}

/// A read being set up; see [`DatabaseManager::read`](crate::DatabaseManager::read).
///
/// A read is tried on the node the strategy picks among the eligible ones:
/// healthy, not fenced, and, for a replica, within the staleness bound (lag
/// known and at most the bound) and past the causal token (replay position
/// known and at or after it). The primary is always fresh enough, so when
/// every replica is too stale or behind the token, the read goes to the
/// primary; it never waits for a replica to catch up.
///
/// If the attempt fails before a result arrives for a connection-level
/// reason (checkout, connect, lost connection) or a recovery conflict
/// (40001), it is tried once more on another eligible node. Both attempts
/// share one deadline.
#[derive(Debug, Clone)]
#[must_use = "a read does nothing until query, query_one or query_opt is awaited"]
pub struct Read<'a> {
    shared: &'a Shared,
    options: ReadOptions,
}

impl<'a> Read<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            options: ReadOptions::default(),
        }
    }

    /// Uses this strategy for this call.
    pub fn strategy(mut self, strategy: ReadStrategy) -> Self {
        self.options.strategy = Some(strategy);
        self
    }

    /// Bounds this call (checkout, statement and retry) by `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.options.deadline = Some(deadline);
        self
    }

    /// Reads only from replicas lagging by at most `bound` (or the primary).
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.options.max_staleness = Some(bound);
        self
    }

    /// Reads only from a node known to have replayed the write that gave
    /// `token` (read-your-writes).
    pub fn after(mut self, token: CausalToken) -> Self {
        self.options.after = Some(token);
        self
    }

    /// Replaces every option.
    pub fn options(mut self, options: ReadOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs the statement and returns every row.
    pub async fn query(self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.rows(sql, params).await.map(|(_, rows)| rows)
    }

    /// Runs the statement and returns its only row; any other count is
    /// [`Error::RowCount`].
    pub async fn query_one(self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        let shared = self.shared;
        let (index, rows) = self.rows(sql, params).await?;
        shared.exactly_one(index, rows)
    }

    /// Runs the statement and returns its row, if any; more than one row is
    /// [`Error::RowCount`].
    pub async fn query_opt(self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        let shared = self.shared;
        let (index, rows) = self.rows(sql, params).await?;
        shared.at_most_one(index, rows)
    }

    async fn rows(self, sql: &str, params: Params<'_>) -> Result<(usize, Vec<Row>), Error> {
        let shared = self.shared;
        let (budget, freshness) = self.options.resolve(shared)?;
        let strategy = self.options.strategy.unwrap_or(shared.config.read_strategy);
        let call = Call::new(sql, params, Op::Rows, budget);
        let span = tracing::debug_span!("pgrouter.read", %strategy);
        match shared
            .read(strategy, freshness, &call)
            .instrument(span)
            .await?
        {
            (index, Output::Rows(rows)) => Ok((index, rows)),
            (index, Output::Count(_)) => Ok((index, Vec::new())),
        }
    }
}

impl Shared {
    /// Picks a node, runs the call, and on a retryable failure runs it once
    /// more on another node.
    async fn read(
        &self,
        strategy: ReadStrategy,
        freshness: Freshness,
        call: &Call<'_>,
    ) -> Result<(usize, Output), Error> {
        self.ensure_open()?;
        let mut rng = fastrand::Rng::new();
        let no_node = || Error::NoHealthyNode {
            operation: Operation::Read,
            strategy,
        };
        let first = self
            .pick_read(strategy, freshness, None, &mut rng)
            .ok_or_else(no_node)?;
        let error = match self.traced_attempt(first, 1, call).await {
            Ok((output, _)) => return Ok((first, output)),
            Err(error) => error,
        };
        if !read_retryable(&error) || !self.time_for_another_attempt(call) {
            return Err(error);
        }
        let Some(second) = self.pick_read(strategy, freshness, Some(first), &mut rng) else {
            return Err(error);
        };
        tracing::debug!(from = %self.nodes[first].context.node, to = %self.nodes[second].context.node,
            %error, "retrying read on another node");
        let (output, _) = self.traced_attempt(second, 2, call).await?;
        Ok((second, output))
    }

    /// Whether any useful part of the deadline is left for another node (a
    /// healthy one answers in well under a millisecond on a local network).
    /// If it runs out there, `timed_out` does not hold it against that node.
    fn time_for_another_attempt(&self, call: &Call<'_>) -> bool {
        let left = call
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        left >= RETRY_FLOOR
    }

    /// One attempt inside a span naming the node, its role and the attempt.
    pub(crate) async fn traced_attempt(
        &self,
        index: usize,
        attempt: u32,
        call: &Call<'_>,
    ) -> Result<(Output, Option<CausalToken>), Error> {
        let node = &self.nodes[index];
        // Field values are only evaluated when the span is enabled.
        let span = tracing::debug_span!("pgrouter.attempt",
            node = %node.context.node, role = %self.snapshot.load().nodes[index].role, attempt);
        self.attempt(index, call).instrument(span).await
    }

    pub(crate) fn exactly_one(&self, index: usize, mut rows: Vec<Row>) -> Result<Row, Error> {
        if rows.len() != 1 {
            return Err(self.row_count(index, "exactly one row", rows.len()));
        }
        rows.pop()
            .ok_or_else(|| self.row_count(index, "exactly one row", 0))
    }

    pub(crate) fn at_most_one(
        &self,
        index: usize,
        mut rows: Vec<Row>,
    ) -> Result<Option<Row>, Error> {
        if rows.len() > 1 {
            return Err(self.row_count(index, "at most one row", rows.len()));
        }
        Ok(rows.pop())
    }

    fn row_count(&self, index: usize, expected: &'static str, actual: usize) -> Error {
        Error::RowCount {
            context: self.nodes[index].context.clone(),
            expected,
            actual,
        }
    }
}
