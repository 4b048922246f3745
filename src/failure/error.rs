//! [`Error`], the error of every call (bad configuration is a
//! [`ConfigError`], in `config/error.rs`).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::config::error::ConfigError;
use crate::config::ReadStrategy;

/// Where a node-level failure happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeContext {
    /// The node's configured name.
    pub node: Arc<str>,
    /// The node's region.
    pub region: Arc<str>,
}

impl fmt::Display for NodeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({})", self.node, self.region)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No node may serve this read right now: none is healthy, or none
    /// that the strategy, the staleness bound and the causal token allow.
    /// (Writes that find no primary fail with [`Error::NoPrimary`].)
    #[error("no healthy node for a read with strategy {strategy}")]
    NoHealthyNode {
        /// The strategy in force.
        strategy: ReadStrategy,
    },
    /// No primary was known, also after holding the write for
    /// [`Config::write_hold`](crate::Config::write_hold) (or until the
    /// deadline). Nothing was sent.
    #[error("no primary is known (waited {waited:?}); the write was not sent")]
    NoPrimary {
        /// How long the write waited for one.
        waited: Duration,
    },
    /// Several nodes claim to be primary and fencing cannot choose (equal
    /// or unknown timelines): writes are refused rather than risk both.
    #[error("split brain: {claimants:?} all claim to be primary; writes refused")]
    SplitBrain {
        /// Every claimant.
        claimants: Vec<String>,
    },
    /// A per-call option makes no sense (e.g. a zero deadline).
    #[error("invalid {option}: {reason}")]
    InvalidArgument {
        /// The option.
        option: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// The write was applied, but its causal token could not be read
    /// afterwards. Do not repeat the write.
    #[error("{context}: the write was applied but its causal token could not be read")]
    TokenUnavailable {
        /// The node.
        context: NodeContext,
        /// tokio-postgres's error; `None` when the deadline passed first.
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// No connection could be had (pool wait, connect, or a dead idle
    /// connection). Nothing was sent, so a retry is safe; whether it can help
    /// depends on the cause (a refused password cannot), see
    /// [`Error::retry_decision`].
    #[error("{context}: could not get a connection")]
    Connect {
        /// The node.
        context: NodeContext,
        /// deadpool's error.
        #[source]
        source: deadpool_postgres::PoolError,
    },
    /// The call's deadline passed. When it passed after the statement or
    /// `COMMIT` was sent (`after_send`), the write may or may not have been
    /// applied: [`Error::is_outcome_unknown`] is true, as for
    /// [`Error::OutcomeUnknown`].
    #[error("{context}: deadline of {deadline:?} exceeded{}",
        if *after_send { " after the statement was sent; its outcome is unknown" } else { "" })]
    Timeout {
        /// The node being waited on.
        context: NodeContext,
        /// The deadline in force.
        deadline: Duration,
        /// The statement (or `COMMIT`) had been sent.
        after_send: bool,
    },
    /// The server answered with an error (it has a SQLSTATE, see [`Error::code`]).
    #[error("{context}: {}", pg_message(source))]
    Database {
        /// The node.
        context: NodeContext,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The connection failed before anything could be applied: while
    /// preparing the statement, at `BEGIN`, or inside a transaction before
    /// `COMMIT` was sent. Nothing was committed: safe to retry.
    #[error("{context}: connection failed before the statement ran")]
    ConnectionLost {
        /// The node.
        context: NodeContext,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The answer to `COMMIT` was lost (the connection broke, or the time
    /// set aside for it passed), and pgrouter found out that the
    /// transaction did not commit: nothing was applied, and it never will
    /// be. Safe to retry, as pgrouter does while the deadline allows.
    #[error("{context}: the answer to COMMIT was lost, and the transaction did not commit")]
    NotCommitted {
        /// The node that ran the transaction.
        context: NodeContext,
        /// tokio-postgres's error, when the connection broke.
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// The marker table set in
    /// [`OutcomeSettings::marker_table`](crate::config::OutcomeSettings::marker_table)
    /// could not be written at `BEGIN` (it does not exist, or the role may
    /// not insert into it). Nothing was applied.
    #[error("{context}: cannot insert into the outcome marker table {table} (set in outcomes.marker_table): {}", pg_message(source))]
    MarkerTable {
        /// The node.
        context: NodeContext,
        /// The table, as configured.
        table: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// In [`StatementMode::Prepared`](crate::config::StatementMode::Prepared), the
    /// server connection that got a named statement pgrouter had prepared
    /// did not know it (SQLSTATE 26000), or already had one of that name
    /// (42P05): the node is reached through a proxy that pools by
    /// transaction (PgBouncer's `pool_mode = transaction`, RDS Proxy) and
    /// hands each round trip to any server connection. Set the node's
    /// `statement_mode` to `unnamed`. The statement did not run.
    #[error("{context}: a named prepared statement was lost between server connections ({}); set statement_mode = unnamed for node {} (a transaction-pooling proxy drops named statements)", pg_message(source), context.node)]
    StatementMode {
        /// The node.
        context: NodeContext,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// tokio-postgres refused the call locally (parameter count or types,
    /// row conversion). Nothing was applied; retrying cannot help.
    #[error("{context}: {}", pg_message(source))]
    Statement {
        /// The node.
        context: NodeContext,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The connection failed after a write was sent: it may or may not have
    /// been applied. Not retried unless the write was marked idempotent.
    #[error("{context}: connection lost after the statement was sent; its outcome is unknown")]
    OutcomeUnknown {
        /// The node.
        context: NodeContext,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// `query_one` / `query_opt` got the wrong number of rows.
    #[error("{context}: expected {expected}, got {actual} rows")]
    RowCount {
        /// The node.
        context: NodeContext,
        /// "exactly one row" or "at most one row".
        expected: &'static str,
        /// Rows returned.
        actual: usize,
    },
    /// A statement inside a transaction closure failed; the runner adds the
    /// node and classifies it. Produced by `?` on a `tokio_postgres::Error`.
    #[error("{}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A transaction closure returned `Ok`, but one of its statements had
    /// failed with `code` (the closure swallowed the error), so PostgreSQL
    /// rolled the transaction back: nothing was committed. Retried like the
    /// error itself would be (a serialization failure or deadlock runs the
    /// closure again).
    #[error("{context}: a statement failed ({}) and the transaction was rolled back; nothing was committed", code.code())]
    RolledBack {
        /// The node.
        context: NodeContext,
        /// The swallowed error's SQLSTATE.
        code: SqlState,
    },
    /// A transaction closure gave up with its own error; the transaction was
    /// rolled back and not retried.
    #[error("transaction aborted: {0}")]
    Aborted(#[source] Box<dyn StdError + Send + Sync + 'static>),
    /// [`DatabaseManager::close`](crate::DatabaseManager::close) was called.
    #[error("the database manager is closed")]
    Closed,
    /// The health monitor task ended (it panicked, or its Tokio runtime shut
    /// down): no call is routed on a topology nobody updates any more.
    /// Build a new manager.
    #[error("the health monitor stopped; the topology is no longer known")]
    MonitorStopped,
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// "ERROR 23505: duplicate key value violates …" for a server error;
/// tokio-postgres's text and its cause for anything else.
fn pg_message(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match StdError::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

impl Error {
    /// Wraps an application error so a transaction closure can return it.
    pub fn aborted(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Error::Aborted(error.into())
    }

    /// The SQLSTATE the server sent, if any.
    pub fn code(&self) -> Option<&SqlState> {
        if let Error::RolledBack { code, .. } = self {
            return Some(code);
        }
        self.postgres().and_then(tokio_postgres::Error::code)
    }

    /// The node involved, if any.
    pub fn node(&self) -> Option<&str> {
        self.context().map(|context| &*context.node)
    }

    /// The node and region involved, if any.
    pub fn context(&self) -> Option<&NodeContext> {
        match self {
            Error::Connect { context, .. }
            | Error::Timeout { context, .. }
            | Error::Database { context, .. }
            | Error::ConnectionLost { context, .. }
            | Error::OutcomeUnknown { context, .. }
            | Error::NotCommitted { context, .. }
            | Error::MarkerTable { context, .. }
            | Error::StatementMode { context, .. }
            | Error::Statement { context, .. }
            | Error::TokenUnavailable { context, .. }
            | Error::RowCount { context, .. }
            | Error::RolledBack { context, .. } => Some(context),
            _ => None,
        }
    }

    /// True when the write may have been applied although the call failed:
    /// the connection was lost, or the deadline passed, after the statement
    /// or `COMMIT` was sent.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::OutcomeUnknown { .. }
                | Error::Timeout {
                    after_send: true,
                    ..
                }
        )
    }

    /// True for a deadline that passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    pub(crate) fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Database { source, .. }
            | Error::ConnectionLost { source, .. }
            | Error::OutcomeUnknown { source, .. }
            | Error::Statement { source, .. }
            | Error::TokenUnavailable {
                source: Some(source),
                ..
            }
            | Error::NotCommitted {
                source: Some(source),
                ..
            }
            | Error::MarkerTable { source, .. }
            | Error::StatementMode { source, .. }
            | Error::Postgres(source) => Some(source),
            _ => None,
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
    assert_send_sync::<ConfigError>();
};
