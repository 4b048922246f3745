//! Writes: always the primary, retried with backoff only when that is safe.

use std::time::Duration;

use tokio_postgres::Row;
use tracing::Instrument;

use super::attempt::{Call, Op, Output, Params};
use super::Shared;
use crate::error::Error;
use crate::lsn::CausalToken;
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

impl WriteOptions {
    /// The defaults: not idempotent, the configured deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the write (or transaction) safe to run twice.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Bounds the call, retries and write hold included.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline in force, checked.
    pub(crate) fn budget(&self, default: Duration) -> Result<Duration, Error> {
        match self.deadline {
            Some(deadline) if deadline.is_zero() => Err(Error::InvalidArgument {
                option: "deadline",
                reason: "must be greater than zero",
            }),
            Some(deadline) => Ok(deadline),
            None => Ok(default),
        }
    }
}

/// A write being set up; see [`DatabaseManager::write`](crate::DatabaseManager::write).
///
/// Runs on the node that is primary now, waiting up to
/// [`Config::write_hold`](crate::Config::write_hold) for one during a
/// failover. Retried with exponential backoff and jitter (see
/// [`RetrySettings`](crate::RetrySettings)) while the deadline allows, but
/// only after failures a retry can fix: nothing sent (checkout, connect),
/// 40001, 40P01, 57P01/57P02/57P03, 25006 (the last four also trigger an
/// immediate re-probe). Constraint violations (class 23), syntax and
/// permission (42), data (22) and every other server error return at once.
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

    /// Bounds this call, retries and write hold included, by `deadline`.
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
        self.run(sql, params, Op::Count, false)
            .await
            .map(|s| s.count())
    }

    /// Like [`Write::execute`], and returns the write's [`CausalToken`] for
    /// read-your-writes. The token query (prepared once per connection) is
    /// sent right behind the statement on the same connection, not after its
    /// answer.
    pub async fn execute_with_token(
        self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<(u64, CausalToken), Error> {
        let served = self.run(sql, params, Op::Count, true).await?;
        let token = served.token;
        Ok((served.count(), token.unwrap_or(CausalToken::PRIMARY)))
    }

    /// Runs the statement (e.g. with `RETURNING`) and returns every row.
    pub async fn query(self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.run(sql, params, Op::Rows, false)
            .await
            .map(|s| s.rows())
    }

    /// Like [`Write::query`], and returns the write's [`CausalToken`].
    pub async fn query_with_token(
        self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<(Vec<Row>, CausalToken), Error> {
        let served = self.run(sql, params, Op::Rows, true).await?;
        let token = served.token;
        Ok((served.rows(), token.unwrap_or(CausalToken::PRIMARY)))
    }

    /// Runs the statement and returns its only row.
    pub async fn query_one(self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        let shared = self.shared;
        let served = self.run(sql, params, Op::Rows, false).await?;
        shared.exactly_one(served.index, served.rows())
    }

    /// Runs the statement and returns its row, if any.
    pub async fn query_opt(self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        let shared = self.shared;
        let served = self.run(sql, params, Op::Rows, false).await?;
        shared.at_most_one(served.index, served.rows())
    }

    async fn run(
        self,
        sql: &str,
        params: Params<'_>,
        op: Op,
        token: bool,
    ) -> Result<Served, Error> {
        let budget = self.options.budget(self.shared.config.deadline)?;
        let mut call = Call::new(sql, params, op, budget);
        call.token = token;
        let span = tracing::debug_span!("pgrouter.write");
        self.shared
            .write(&call, self.options.idempotent)
            .instrument(span)
            .await
    }
}

/// What a write returned, and where.
struct Served {
    index: usize,
    output: Output,
    token: Option<CausalToken>,
}

impl Served {
    fn count(self) -> u64 {
        match self.output {
            Output::Count(count) => count,
            Output::Rows(rows) => rows.len() as u64,
        }
    }

    fn rows(self) -> Vec<Row> {
        match self.output {
            Output::Rows(rows) => rows,
            Output::Count(_) => Vec::new(),
        }
    }
}

impl Shared {
    async fn write(&self, call: &Call<'_>, idempotent: bool) -> Result<Served, Error> {
        self.ensure_open()?;
        let mut retrier = Retrier::new(&self.config.retry, call.deadline, idempotent);
        loop {
            let result = match self.await_primary(call.deadline).await {
                Ok(index) => self
                    .traced_attempt(index, retrier.attempt(), call)
                    .await
                    .map(|(output, token)| Served {
                        index,
                        output,
                        token,
                    }),
                Err(error) => Err(error),
            };
            match result {
                Ok(served) => return Ok(served),
                Err(error) if retrier.again(&error).await => continue,
                Err(error) => return Err(error),
            }
        }
    }
}
