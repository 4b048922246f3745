//! One attempt on one node: checkout, prepare, run, all before a deadline.
//!
//! Failures are turned into typed errors by what was sent: a failure before
//! the statement ran is [`Error::Connect`] or [`Error::ConnectionLost`]; a
//! lost connection afterwards is [`Error::OutcomeUnknown`]. Node failures
//! mark the node suspect; a timeout also drops its idle connections and
//! cancels the statement on the server.

use std::time::Duration;

use deadpool_postgres::{Object, PoolError};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::Shared;
use crate::error::Error;
use crate::lsn::{CausalToken, Lsn};
use crate::retry::{code_kind, is_node_failure, CodeKind};

/// Read right after a write on the same connection: at least the end of
/// the write's commit record.
pub(crate) const TOKEN_SQL: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";

/// Statement parameters, as tokio-postgres takes them.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// Return the rows.
    Rows,
    /// Return the number of rows affected.
    Count,
}

/// What came back.
#[derive(Debug)]
pub(crate) enum Output {
    Rows(Vec<Row>),
    Count(u64),
}

/// One routed call: the statement and its deadline.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) sql: &'a str,
    pub(crate) params: Params<'a>,
    pub(crate) op: Op,
    pub(crate) deadline: Instant,
    pub(crate) budget: Duration,
    /// Also return the write's causal token.
    pub(crate) token: bool,
}

impl<'a> Call<'a> {
    pub(crate) fn new(sql: &'a str, params: Params<'a>, op: Op, budget: Duration) -> Self {
        Self {
            sql,
            params,
            op,
            deadline: Instant::now() + budget,
            budget,
            token: false,
        }
    }
}

/// Whether a statement error leaves the connection usable.
pub(crate) enum Fate {
    Keep,
    Discard,
}

impl Shared {
    /// Runs the call once on node `index`; with `call.token`, pipelines the
    /// causal token query behind it.
    pub(crate) async fn attempt(
        &self,
        index: usize,
        call: &Call<'_>,
    ) -> Result<(Output, Option<CausalToken>), Error> {
        let started = Instant::now();
        let client = self.checkout(index, call.deadline, call.budget).await?;
        // The token query is prepared (once per connection) with the
        // statement, so its execution rides right behind the statement's.
        let prepare = async {
            let statement = client.prepare_cached(call.sql).await?;
            let token = match call.token {
                true => Some(client.prepare_cached(TOKEN_SQL).await?),
                false => None,
            };
            Ok((statement, token))
        };
        let prepared = timeout_at(call.deadline, prepare).await;
        let (statement, token_statement) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(error)) => return Err(self.finish_failed(index, client, error, false)),
            Err(_) => return Err(self.finish_timed_out(index, client, call.budget, started)),
        };
        let run = async {
            match call.op {
                Op::Rows => client
                    .query(&statement, call.params)
                    .await
                    .map(Output::Rows),
                Op::Count => client
                    .execute(&statement, call.params)
                    .await
                    .map(Output::Count),
            }
        };
        let token = async {
            match &token_statement {
                Some(statement) => client.query_one(statement, &[]).await.map(Some),
                None => Ok(None),
            }
        };
        // Biased: the statement is sent first, the token query right behind it.
        let both = async { tokio::join!(biased; run, token) };
        match timeout_at(call.deadline, both).await {
            Ok((Ok(output), Ok(row))) => match row.map(|row| token_of(&row)).transpose() {
                Ok(token) => Ok((output, token)),
                Err(error) => Err(self.token_unavailable(index, error)),
            },
            Ok((Ok(_), Err(error))) => Err(self.token_unavailable(index, error)),
            Ok((Err(error), _)) => Err(self.finish_failed(index, client, error, true)),
            Err(_) => Err(self.finish_timed_out(index, client, call.budget, started)),
        }
    }

    pub(crate) fn token_unavailable(&self, index: usize, source: tokio_postgres::Error) -> Error {
        Error::TokenUnavailable {
            context: self.nodes[index].context.clone(),
            source,
        }
    }

    /// A pooled connection to node `index`, before `deadline`.
    pub(crate) async fn checkout(
        &self,
        index: usize,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Object, Error> {
        let node = &self.nodes[index];
        let started = Instant::now();
        match timeout_at(deadline, node.pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => {
                if is_node_failure(&source) {
                    self.report_failure(index);
                }
                if matches!(source, PoolError::Closed) {
                    return Err(Error::Closed);
                }
                Err(Error::Connect {
                    context: node.context.clone(),
                    source,
                })
            }
            Err(_) => Err(self.timed_out(index, budget, started)),
        }
    }

    /// Classifies a statement error, penalises the node if it failed, and
    /// returns or discards the connection.
    fn finish_failed(
        &self,
        index: usize,
        client: Object,
        error: tokio_postgres::Error,
        sent: bool,
    ) -> Error {
        let (error, fate) = self.classify_statement_error(index, error, sent);
        if let Fate::Discard = fate {
            drop(Object::take(client));
        }
        error
    }

    /// Maps a tokio-postgres error from node `index` to a typed error and
    /// says whether the connection is still good. `sent`: the statement may
    /// have reached the server.
    pub(crate) fn classify_statement_error(
        &self,
        index: usize,
        error: tokio_postgres::Error,
        sent: bool,
    ) -> (Error, Fate) {
        let context = self.nodes[index].context.clone();
        if let Some(code) = error.code() {
            if code_kind(code) == CodeKind::TopologyChanged {
                self.request_probe(index);
            }
            let fate = if error.is_closed() {
                Fate::Discard
            } else {
                Fate::Keep
            };
            return (
                Error::Database {
                    context,
                    source: error,
                },
                fate,
            );
        }
        if !is_connection_error(&error) {
            return (
                Error::Statement {
                    context,
                    source: error,
                },
                Fate::Keep,
            );
        }
        self.report_failure(index);
        let error = if sent {
            Error::OutcomeUnknown {
                context,
                source: error,
            }
        } else {
            Error::ConnectionLost {
                context,
                source: error,
            }
        };
        (error, Fate::Discard)
    }

    fn finish_timed_out(
        &self,
        index: usize,
        client: Object,
        budget: Duration,
        started: Instant,
    ) -> Error {
        self.connector.cancel_in_background(client.cancel_token());
        drop(Object::take(client));
        self.timed_out(index, budget, started)
    }

    /// The deadline passed on node `index`, whose attempt began at
    /// `started`. If the attempt had a fair share of the time (half the
    /// smaller of the probe timeout and the call's budget), mark the node
    /// suspect and drop its idle connections, so the next caller does not
    /// wait on each of them. A deadline spent mostly elsewhere (an earlier
    /// attempt on another node) is no evidence against this one.
    pub(crate) fn timed_out(&self, index: usize, budget: Duration, started: Instant) -> Error {
        let node = &self.nodes[index];
        let spent = started.elapsed();
        let fair_share = self.config.health.probe_timeout.min(budget) / 2;
        if spent >= fair_share {
            self.report_failure(index);
            let dropped = node.discard_idle();
            tracing::warn!(
                node = %node.context.node, region = %node.context.region,
                deadline = ?budget, ?spent, dropped_idle = dropped, "call deadline exceeded"
            );
        } else {
            tracing::debug!(node = %node.context.node, deadline = ?budget, ?spent,
                "call deadline exceeded after a short attempt; node not marked");
        }
        Error::Timeout {
            context: node.context.clone(),
            deadline: budget,
        }
    }
}

/// The causal token in a `TOKEN_SQL` row.
pub(crate) fn token_of(row: &Row) -> Result<CausalToken, tokio_postgres::Error> {
    let position: i64 = row.try_get(0)?;
    Ok(CausalToken::new(Lsn(position.unsigned_abs())))
}

/// A closed connection or an I/O failure, as opposed to a local usage error
/// (parameter count or type, row conversion).
pub(crate) fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}
