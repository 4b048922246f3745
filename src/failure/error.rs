//! [`Error`], the error of every call: what happened ([`ErrorKind`]), on
//! which node (said once), how far the call had got and why (the phase and
//! cause the retry rules read), and the underlying error as its source.
//! Bad configuration is a [`ConfigError`] (in `config/error.rs`).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::config::error::ConfigError;
use crate::config::ReadStrategy;
use crate::failure::safety::{code_kind, Cause, Phase};

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

/// Why a call failed: opaque, with accessors, as tokio-postgres's own
/// error is. [`Error::kind`] says what happened, [`Error::context`] where,
/// [`Error::retry_hint`] whether repeating the call is safe and useful (or
/// its outcome unknown), and [`Error::http_status`] how a service answers
/// it; the underlying error is the [`source`](StdError::source).
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    /// The node the failure happened on, when it is one node's.
    node: Option<NodeContext>,
    /// How far the call had got and why, for the retry rules; `None` for
    /// failures no retry of this call can help (no node, a spent deadline
    /// or write hold, a closed manager).
    point: Option<(Phase, Cause)>,
    source: Option<Source>,
}

enum Source {
    Postgres(tokio_postgres::Error),
    Pool(deadpool_postgres::PoolError),
    Config(ConfigError),
    Other(Box<dyn StdError + Send + Sync + 'static>),
}

/// What happened. Nothing here repeats the node ([`Error::node`]) or the
/// underlying error (the source).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No node may serve this read right now: none is healthy, or none
    /// that the strategy, the staleness bound and the causal token allow.
    /// (Writes that find no primary fail with [`ErrorKind::NoPrimary`].)
    NoHealthyNode {
        /// The strategy in force.
        strategy: ReadStrategy,
    },
    /// No primary was known, also after holding the write for
    /// [`Config::write_hold`](crate::Config::write_hold) (or until the
    /// deadline). Nothing was sent.
    NoPrimary {
        /// How long the write waited for one.
        waited: Duration,
    },
    /// Several nodes claim to be primary and fencing cannot choose (equal
    /// or unknown timelines): writes are refused rather than risk both.
    SplitBrain {
        /// Every claimant.
        claimants: Vec<String>,
    },
    /// A per-call option makes no sense (e.g. a zero deadline).
    InvalidArgument {
        /// The option.
        option: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// The write was applied, but its causal token could not be read
    /// afterwards. Do not repeat the write.
    TokenUnavailable,
    /// No connection could be had (pool wait, connect, or a dead idle
    /// connection). Nothing was sent, so a retry is safe; whether it can
    /// help depends on the cause (a refused password cannot).
    Connect,
    /// The call's deadline passed. When it passed after the statement or
    /// `COMMIT` was sent (`after_send`), the write may or may not have been
    /// applied: [`Error::is_outcome_unknown`] is true, as for
    /// [`ErrorKind::OutcomeUnknown`].
    Timeout {
        /// The deadline in force.
        deadline: Duration,
        /// The statement (or `COMMIT`) had been sent.
        after_send: bool,
    },
    /// The server answered with an error (it has a SQLSTATE, see
    /// [`Error::code`]).
    Database,
    /// The connection failed before anything could be applied: while
    /// preparing the statement, at `BEGIN`, or inside a transaction before
    /// `COMMIT` was sent. Nothing was committed: safe to retry.
    ConnectionLost,
    /// The answer to `COMMIT` was lost (the connection broke, or the time
    /// set aside for it passed), and pgrouter found out that the
    /// transaction did not commit: nothing was applied, and it never will
    /// be. Safe to retry, as pgrouter does while the deadline allows.
    NotCommitted,
    /// The marker table set in
    /// [`OutcomeSettings::marker_table`](crate::config::OutcomeSettings::marker_table)
    /// could not be written at `BEGIN` (it does not exist, or the role may
    /// not insert into it). Nothing was applied.
    MarkerTable {
        /// The table, as configured.
        table: String,
    },
    /// In [`StatementMode::Prepared`](crate::config::StatementMode::Prepared), the
    /// server connection that got a named statement pgrouter had prepared
    /// did not know it (SQLSTATE 26000), or already had one of that name
    /// (42P05): the node is reached through a proxy that pools by
    /// transaction (PgBouncer's `pool_mode = transaction`, RDS Proxy) and
    /// hands each round trip to any server connection. Set the node's
    /// `statement_mode` to `unnamed`. The statement did not run.
    StatementMode,
    /// tokio-postgres refused the call locally (parameter count or types,
    /// row conversion). Nothing was applied; retrying cannot help.
    Statement,
    /// The connection failed after a write was sent: it may or may not have
    /// been applied. Not retried unless the write was marked idempotent.
    OutcomeUnknown,
    /// `query_one` / `query_opt` got the wrong number of rows.
    RowCount {
        /// "exactly one row" or "at most one row".
        expected: &'static str,
        /// Rows returned.
        actual: usize,
    },
    /// A transaction closure returned `Ok`, but one of its statements had
    /// failed with `code` (the closure swallowed the error), so PostgreSQL
    /// rolled the transaction back: nothing was committed. Retried like the
    /// error itself would be (a serialization failure or deadlock runs the
    /// closure again).
    RolledBack {
        /// The swallowed error's SQLSTATE.
        code: SqlState,
    },
    /// A transaction closure gave up with its own error (the source); the
    /// transaction was rolled back and not retried.
    Aborted,
    /// [`DatabaseManager::close`](crate::DatabaseManager::close) was called:
    /// the call came after it and was refused before anything was sent, or
    /// it was still in flight when
    /// [`Config::close_timeout`](crate::Config::close_timeout) ran out and
    /// was stopped (its statement cancelled). A write or transaction stopped
    /// that way may have been applied: [`Error::is_outcome_unknown`] says
    /// so.
    Closed,
    /// The health monitor task ended (it panicked, or its Tokio runtime shut
    /// down): no call is routed on a topology nobody updates any more.
    /// Build a new manager.
    MonitorStopped,
    /// The configuration is invalid (the source is the [`ConfigError`]).
    Config,
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
    fn new(kind: ErrorKind) -> Self {
        Error(Box::new(Inner {
            kind,
            node: None,
            point: None,
            source: None,
        }))
    }

    fn on(mut self, node: NodeContext) -> Self {
        self.0.node = Some(node);
        self
    }

    fn at(mut self, phase: Phase, cause: Cause) -> Self {
        self.0.point = Some((phase, cause));
        self
    }

    fn caused_by(mut self, source: Source) -> Self {
        self.0.source = Some(source);
        self
    }

    /// Wraps an application error so a transaction closure can return it.
    pub fn aborted(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self::new(ErrorKind::Aborted).caused_by(Source::Other(error.into()))
    }

    /// What happened.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// The name of the node the failure happened on, if it was one node's.
    pub fn node(&self) -> Option<&str> {
        self.context().map(|context| &*context.node)
    }

    /// The node and region the failure happened on, if it was one node's.
    pub fn context(&self) -> Option<&NodeContext> {
        self.0.node.as_ref()
    }

    /// The SQLSTATE the server sent, if any.
    pub fn code(&self) -> Option<&SqlState> {
        if let ErrorKind::RolledBack { code } = &self.0.kind {
            return Some(code);
        }
        self.postgres().and_then(tokio_postgres::Error::code)
    }

    /// The server's error, if the server sent one.
    pub fn as_db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        self.postgres().and_then(tokio_postgres::Error::as_db_error)
    }

    /// The configuration error, for [`ErrorKind::Config`].
    pub fn as_config_error(&self) -> Option<&ConfigError> {
        match &self.0.source {
            Some(Source::Config(error)) => Some(error),
            _ => None,
        }
    }

    /// True when the write may have been applied although the call failed:
    /// the connection was lost, or the deadline passed, after the statement
    /// or `COMMIT` was sent. [`Error::retry_hint`] then says
    /// [`RetryHint::OutcomeUnknown`](crate::error::RetryHint::OutcomeUnknown).
    pub fn is_outcome_unknown(&self) -> bool {
        match self.0.kind {
            ErrorKind::OutcomeUnknown
            | ErrorKind::Timeout {
                after_send: true, ..
            } => true,
            // A write stopped by `close` past its timeout.
            ErrorKind::Closed => self
                .0
                .point
                .is_some_and(|(phase, _)| phase.may_be_applied()),
            _ => false,
        }
    }

    /// True for a deadline that passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Timeout { .. })
    }

    /// How far the call had got and why, when a retry of it could help.
    pub(crate) fn point(&self) -> Option<(Phase, Cause)> {
        self.0.point
    }

    pub(crate) fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match &self.0.source {
            Some(Source::Postgres(source)) => Some(source),
            Some(Source::Pool(deadpool_postgres::PoolError::Backend(source))) => Some(source),
            _ => None,
        }
    }

    /// The tokio-postgres error a transaction closure raised with `?`
    /// (no node yet: the runner classifies it on its node), or the error
    /// back.
    pub(crate) fn into_raised(self) -> Result<tokio_postgres::Error, Self> {
        match *self.0 {
            Inner {
                kind: ErrorKind::Database,
                node: None,
                source: Some(Source::Postgres(source)),
                ..
            } => Ok(source),
            inner => Err(Error(Box::new(inner))),
        }
    }

    /// The tokio-postgres error inside, consuming the error.
    pub(crate) fn into_postgres(self) -> Option<tokio_postgres::Error> {
        match self.0.source {
            Some(Source::Postgres(source)) => Some(source),
            _ => None,
        }
    }
}

/// The errors pgrouter builds, one constructor each, with the phase and
/// cause the retry rules read.
impl Error {
    pub(crate) fn no_healthy_node(strategy: ReadStrategy) -> Self {
        Self::new(ErrorKind::NoHealthyNode { strategy })
    }

    pub(crate) fn no_primary(waited: Duration) -> Self {
        Self::new(ErrorKind::NoPrimary { waited })
    }

    pub(crate) fn split_brain(claimants: Vec<String>) -> Self {
        Self::new(ErrorKind::SplitBrain { claimants })
    }

    pub(crate) fn invalid_argument(option: &'static str, reason: &'static str) -> Self {
        Self::new(ErrorKind::InvalidArgument { option, reason })
    }

    pub(crate) fn closed() -> Self {
        Self::new(ErrorKind::Closed)
    }

    /// A call still in flight when `close`'s timeout ran out, stopped:
    /// `write` for a write or transaction, which may have been applied (its
    /// statement or `COMMIT` may have been sent).
    pub(crate) fn stopped_by_close(write: bool) -> Self {
        let phase = if write { Phase::Sent } else { Phase::Checkout };
        Self::new(ErrorKind::Closed).at(phase, Cause::PoolClosed)
    }

    pub(crate) fn monitor_stopped() -> Self {
        Self::new(ErrorKind::MonitorStopped)
    }

    pub(crate) fn token_unavailable(
        node: NodeContext,
        source: Option<tokio_postgres::Error>,
    ) -> Self {
        let error = Self::new(ErrorKind::TokenUnavailable).on(node);
        match source {
            Some(source) => error.caused_by(Source::Postgres(source)),
            None => error,
        }
    }

    /// No connection: nothing was sent.
    pub(crate) fn connect(node: NodeContext, source: deadpool_postgres::PoolError) -> Self {
        let cause = Cause::of_pool(&source);
        Self::new(ErrorKind::Connect)
            .on(node)
            .at(Phase::Checkout, cause)
            .caused_by(Source::Pool(source))
    }

    /// The deadline passed (no retry of this call can help).
    pub(crate) fn timeout(node: NodeContext, deadline: Duration, after_send: bool) -> Self {
        Self::new(ErrorKind::Timeout {
            deadline,
            after_send,
        })
        .on(node)
    }

    /// A server error to the statement.
    pub(crate) fn database(node: NodeContext, source: tokio_postgres::Error) -> Self {
        let cause = Cause::of_postgres(&source);
        Self::new(ErrorKind::Database)
            .on(node)
            .at(Phase::Sent, cause)
            .caused_by(Source::Postgres(source))
    }

    /// The connection failed before anything could be applied.
    pub(crate) fn connection_lost(node: NodeContext, source: tokio_postgres::Error) -> Self {
        Self::new(ErrorKind::ConnectionLost)
            .on(node)
            .at(Phase::BeforeSend, Cause::Lost)
            .caused_by(Source::Postgres(source))
    }

    /// A statement of a transaction from `begin()` lost the connection:
    /// its `COMMIT` cannot be sent, and nothing was committed.
    pub(crate) fn lost_in_transaction(node: NodeContext) -> Self {
        Self::new(ErrorKind::ConnectionLost)
            .on(node)
            .at(Phase::InTransaction, Cause::Lost)
    }

    /// The connection failed after the statement was sent.
    pub(crate) fn outcome_unknown(node: NodeContext, source: tokio_postgres::Error) -> Self {
        Self::new(ErrorKind::OutcomeUnknown)
            .on(node)
            .at(Phase::Sent, Cause::Lost)
            .caused_by(Source::Postgres(source))
    }

    /// A lost `COMMIT`, resolved as not committed: as if lost before it.
    pub(crate) fn not_committed(node: NodeContext, source: Option<tokio_postgres::Error>) -> Self {
        let error = Self::new(ErrorKind::NotCommitted)
            .on(node)
            .at(Phase::InTransaction, Cause::Lost);
        match source {
            Some(source) => error.caused_by(Source::Postgres(source)),
            None => error,
        }
    }

    pub(crate) fn marker_table(
        node: NodeContext,
        table: String,
        source: tokio_postgres::Error,
    ) -> Self {
        Self::new(ErrorKind::MarkerTable { table })
            .on(node)
            .caused_by(Source::Postgres(source))
    }

    pub(crate) fn statement_mode(node: NodeContext, source: tokio_postgres::Error) -> Self {
        Self::new(ErrorKind::StatementMode)
            .on(node)
            .caused_by(Source::Postgres(source))
    }

    /// tokio-postgres refused the call locally.
    pub(crate) fn statement(node: NodeContext, source: tokio_postgres::Error) -> Self {
        Self::new(ErrorKind::Statement)
            .on(node)
            .at(Phase::BeforeSend, Cause::Local)
            .caused_by(Source::Postgres(source))
    }

    pub(crate) fn row_count(node: NodeContext, expected: &'static str, actual: usize) -> Self {
        Self::new(ErrorKind::RowCount { expected, actual }).on(node)
    }

    /// A statement failed inside a transaction and the closure went on:
    /// nothing is committed yet.
    pub(crate) fn rolled_back(node: NodeContext, code: SqlState) -> Self {
        let cause = Cause::Server {
            kind: code_kind(&code),
            closed: false,
        };
        Self::new(ErrorKind::RolledBack { code })
            .on(node)
            .at(Phase::InTransaction, cause)
    }
}

/// `?` on a statement inside a transaction closure: nothing is committed
/// yet; the runner adds the node and classifies it.
impl From<tokio_postgres::Error> for Error {
    fn from(source: tokio_postgres::Error) -> Self {
        let cause = Cause::of_postgres(&source);
        Self::new(ErrorKind::Database)
            .at(Phase::InTransaction, cause)
            .caused_by(Source::Postgres(source))
    }
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Self::new(ErrorKind::Config).caused_by(Source::Config(error))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug.field("kind", &self.0.kind);
        if let Some(node) = &self.0.node {
            debug.field("node", node);
        }
        if let Some(source) = &self.0.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Postgres(error) => fmt::Debug::fmt(error, f),
            Source::Pool(error) => fmt::Debug::fmt(error, f),
            Source::Config(error) => fmt::Debug::fmt(error, f),
            Source::Other(error) => fmt::Debug::fmt(error, f),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(node) = &self.0.node {
            write!(f, "{node}: ")?;
        }
        let pg = || self.postgres().map(pg_message).unwrap_or_default();
        match &self.0.kind {
            ErrorKind::NoHealthyNode { strategy } => {
                write!(f, "no healthy node for a read with strategy {strategy}")
            }
            ErrorKind::NoPrimary { waited } => write!(
                f,
                "no primary is known (waited {waited:?}); the write was not sent"
            ),
            ErrorKind::SplitBrain { claimants } => write!(
                f,
                "split brain: {claimants:?} all claim to be primary; writes refused"
            ),
            ErrorKind::InvalidArgument { option, reason } => {
                write!(f, "invalid {option}: {reason}")
            }
            ErrorKind::TokenUnavailable => {
                f.write_str("the write was applied but its causal token could not be read")
            }
            ErrorKind::Connect => f.write_str("could not get a connection"),
            ErrorKind::Timeout {
                deadline,
                after_send,
            } => {
                write!(f, "deadline of {deadline:?} exceeded")?;
                if *after_send {
                    f.write_str(" after the statement was sent; its outcome is unknown")?;
                }
                Ok(())
            }
            ErrorKind::Database | ErrorKind::Statement => f.write_str(&pg()),
            ErrorKind::ConnectionLost => f.write_str("connection failed before the statement ran"),
            ErrorKind::NotCommitted => {
                f.write_str("the answer to COMMIT was lost, and the transaction did not commit")
            }
            ErrorKind::MarkerTable { table } => write!(
                f,
                "cannot insert into the outcome marker table {table} (set in \
                 outcomes.marker_table): {}",
                pg()
            ),
            ErrorKind::StatementMode => {
                let node = self.0.node.as_ref().map_or("", |node| &*node.node);
                write!(
                    f,
                    "a named prepared statement was lost between server connections ({}); \
                     set statement_mode = unnamed for node {node} (a transaction-pooling \
                     proxy drops named statements)",
                    pg()
                )
            }
            ErrorKind::OutcomeUnknown => {
                f.write_str("connection lost after the statement was sent; its outcome is unknown")
            }
            ErrorKind::RowCount { expected, actual } => {
                write!(f, "expected {expected}, got {actual} rows")
            }
            ErrorKind::RolledBack { code } => write!(
                f,
                "a statement failed ({}) and the transaction was rolled back; nothing was \
                 committed",
                code.code()
            ),
            ErrorKind::Aborted => match &self.0.source {
                Some(Source::Other(error)) => write!(f, "transaction aborted: {error}"),
                _ => f.write_str("transaction aborted"),
            },
            ErrorKind::Closed => match self.0.point {
                None => f.write_str("the database manager is closed"),
                Some(_) if self.is_outcome_unknown() => f.write_str(
                    "the database manager closed while the write was in flight: \
                     it may or may not have been applied",
                ),
                Some(_) => f.write_str("the database manager closed while the call was in flight"),
            },
            ErrorKind::MonitorStopped => {
                f.write_str("the health monitor stopped; the topology is no longer known")
            }
            ErrorKind::Config => match &self.0.source {
                Some(Source::Config(error)) => fmt::Display::fmt(error, f),
                _ => f.write_str("invalid configuration"),
            },
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self.0.source.as_ref()? {
            Source::Postgres(error) => Some(error),
            Source::Pool(error) => Some(error),
            // Displayed as the error itself (transparent), as before.
            Source::Config(error) => error.source(),
            Source::Other(error) => Some(&**error),
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
    assert_send_sync::<ConfigError>();
};
