//! Writes: always the primary, retried with backoff only when that is safe.

use std::time::Duration;

use tokio_postgres::Row;
use tracing::Instrument;

use super::attempt::{Call, Op, Output, Params};
use super::Shared;
use crate::config::ReadStrategy;
use crate::error::{Error, Operation};
use crate::retry::Retrier;

/// Per-call write options.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct WriteOptions {
    /// The statement may run twice without harm (an upsert, a delete by
    /// key). Then a connection lost after sending is retried instead of
    /// failing with [`Error::OutcomeUnknown`]. Default: false.
    pub idempotent: bool,
    /// Overrides [`Config::deadline`](crate::Config::deadline).
    pub deadline: Option<Duration>,
}

/// A write being set up; see [`DatabaseManager::write`](crate::DatabaseManager::write).
///
/// Runs on the primary. Retried with exponential backoff and jitter (see
/// [`RetrySettings`](crate::RetrySettings)) while the deadline allows, but
/// only after failures a retry can fix: nothing sent (checkout, connect, no
/// healthy primary), 40001, 40P01, 57P01/57P02/57P03, 25006. Constraint
/// violations (class 23), syntax and permission (42), data (22) and every
/// other server error return at once.
#[derive(Debug, Clone)]
#[must_use = "a write does nothing until execute or a query method is awaited"]
pub struct Write<'a> {
    shared: &'a Shared,
    options: WriteOptions,
}

impl<'a> Write<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            options: WriteOptions::default(),
        }
    }

    /// Marks the statement safe to run twice.
    pub fn idempotent(mut self) -> Self {
        self.options.idempotent = true;
        self
    }

    /// Bounds this call, retries included, by `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.options.deadline = Some(deadline);
        self
    }

    /// Replaces every option.
    pub fn options(mut self, options: WriteOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs the statement and returns the number of rows affected.
    pub async fn execute(self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        match self.run(sql, params, Op::Count).await? {
            (_, Output::Count(count)) => Ok(count),
            (_, Output::Rows(rows)) => Ok(rows.len() as u64),
        }
    }

    /// Runs the statement (e.g. with `RETURNING`) and returns every row.
    pub async fn query(self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.rows(sql, params).await.map(|(_, rows)| rows)
    }

    /// Runs the statement and returns its only row.
    pub async fn query_one(self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        let shared = self.shared;
        let (index, rows) = self.rows(sql, params).await?;
        shared.exactly_one(index, rows)
    }

    /// Runs the statement and returns its row, if any.
    pub async fn query_opt(self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        let shared = self.shared;
        let (index, rows) = self.rows(sql, params).await?;
        shared.at_most_one(index, rows)
    }

    async fn rows(self, sql: &str, params: Params<'_>) -> Result<(usize, Vec<Row>), Error> {
        match self.run(sql, params, Op::Rows).await? {
            (index, Output::Rows(rows)) => Ok((index, rows)),
            (index, Output::Count(_)) => Ok((index, Vec::new())),
        }
    }

    async fn run(self, sql: &str, params: Params<'_>, op: Op) -> Result<(usize, Output), Error> {
        let budget = self.options.deadline.unwrap_or(self.shared.config.deadline);
        let call = Call::new(sql, params, op, budget);
        let span = tracing::debug_span!("pgrouter.write");
        self.shared
            .write(&call, self.options.idempotent)
            .instrument(span)
            .await
    }
}

impl Shared {
    async fn write(&self, call: &Call<'_>, idempotent: bool) -> Result<(usize, Output), Error> {
        self.ensure_open()?;
        let mut retrier = Retrier::new(&self.config.retry, call.deadline, idempotent);
        loop {
            let result = match self.primary_index() {
                Some(index) => self
                    .traced_attempt(index, retrier.attempt(), call)
                    .await
                    .map(|output| (index, output)),
                None => Err(no_primary()),
            };
            match result {
                Ok(served) => return Ok(served),
                Err(error) if retrier.again(&error).await => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

pub(crate) fn no_primary() -> Error {
    Error::NoHealthyNode {
        operation: Operation::Write,
        strategy: ReadStrategy::PrimaryOnly,
    }
}
