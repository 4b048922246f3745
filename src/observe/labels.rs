//! The vocabulary spans and metrics share: the kind of call, why it went
//! to its node, how it ended, the statement's first keyword, a role's name.

use crate::config::Role;
use crate::failure::error::{Error, ErrorKind};
use crate::failure::safety::{code_kind, CodeKind};

/// The kind of call, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Read,
    Write,
    Transaction,
}

// Without the `metrics` feature only the span uses these.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
impl Operation {
    pub(crate) const ALL: [Operation; 3] =
        [Operation::Read, Operation::Write, Operation::Transaction];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Transaction => "transaction",
        }
    }
}

/// Why a call went to the node it went to (`pgrouter.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The read strategy's pick among the eligible nodes.
    Strategy,
    /// Another eligible node, after a failure on the first.
    RetryElsewhere,
    /// Another eligible node that answered a hedge before the first did.
    Hedge,
    /// The write target (the primary now).
    WriteTarget,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Strategy => "strategy",
            Reason::RetryElsewhere => "retry elsewhere",
            Reason::Hedge => "hedge",
            Reason::WriteTarget => "write target",
        }
    }
}

/// How a call ended, or (for retries) why an attempt failed: the values of
/// the `outcome` metric label and of the span's `error.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Succeeded at the first attempt.
    Ok,
    /// Succeeded after at least one retry.
    Retried,
    /// The connection was lost after the statement (or `COMMIT`) was sent,
    /// and nothing could show whether it was applied.
    Unknown,
    /// A lost `COMMIT` shown not to have committed, with no time to run it
    /// again.
    NotCommitted,
    /// The call's deadline passed.
    Timeout,
    /// No connection could be had (refused, reset, connect timeout, pool).
    Connect,
    /// The connection was lost before anything was applied.
    ConnectionLost,
    /// 40001 or 40P01: serialization failure or deadlock.
    Conflict,
    /// 57P01/57P02/57P03 or 25006: the node went away or is not primary.
    TopologyChanged,
    /// SQLSTATE class 23.
    Integrity,
    /// SQLSTATE class 22.
    Data,
    /// SQLSTATE class 42.
    SyntaxOrAccess,
    /// Any other SQLSTATE.
    Server,
    /// tokio-postgres refused the call locally (parameters, conversion).
    Client,
    /// No eligible node for a read.
    NoHealthyNode,
    /// No primary within the write hold.
    NoPrimary,
    /// Several primaries and fencing cannot choose.
    SplitBrain,
    /// A per-call option was out of range.
    InvalidArgument,
    /// The write's causal token could not be read.
    TokenUnavailable,
    /// The outcome marker table failed.
    MarkerTable,
    /// `COMMIT` was answered `ROLLBACK`.
    RolledBack,
    /// The transaction closure returned its own error.
    Aborted,
    /// The manager is closed, or its monitor stopped.
    Closed,
    /// Anything else.
    Other,
}

impl Outcome {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    /// How many there are (metric handle tables are indexed by them).
    pub(crate) const COUNT: usize = Outcome::Other as usize + 1;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retried => "retried",
            Outcome::Unknown => "outcome_unknown",
            Outcome::NotCommitted => "not_committed",
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect",
            Outcome::ConnectionLost => "connection_lost",
            Outcome::Conflict => "conflict",
            Outcome::TopologyChanged => "topology_changed",
            Outcome::Integrity => "integrity",
            Outcome::Data => "data",
            Outcome::SyntaxOrAccess => "syntax_or_access",
            Outcome::Server => "server",
            Outcome::Client => "client",
            Outcome::NoHealthyNode => "no_healthy_node",
            Outcome::NoPrimary => "no_primary",
            Outcome::SplitBrain => "split_brain",
            Outcome::InvalidArgument => "invalid_argument",
            Outcome::TokenUnavailable => "token_unavailable",
            Outcome::MarkerTable => "marker_table",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
            Outcome::Closed => "closed",
            Outcome::Other => "other",
        }
    }

    /// The class of a failure.
    pub(crate) fn of_error(error: &Error) -> Outcome {
        match error.kind() {
            ErrorKind::OutcomeUnknown => Outcome::Unknown,
            ErrorKind::NotCommitted => Outcome::NotCommitted,
            ErrorKind::Timeout { .. } => Outcome::Timeout,
            ErrorKind::Connect => Outcome::Connect,
            ErrorKind::ConnectionLost => Outcome::ConnectionLost,
            ErrorKind::Database => error.postgres().map_or(Outcome::Other, Self::of_postgres),
            ErrorKind::Statement => Outcome::Client,
            ErrorKind::NoHealthyNode { .. } => Outcome::NoHealthyNode,
            ErrorKind::NoPrimary { .. } => Outcome::NoPrimary,
            ErrorKind::SplitBrain { .. } => Outcome::SplitBrain,
            ErrorKind::InvalidArgument { .. } => Outcome::InvalidArgument,
            ErrorKind::TokenUnavailable => Outcome::TokenUnavailable,
            ErrorKind::MarkerTable { .. } => Outcome::MarkerTable,
            ErrorKind::RolledBack { .. } => Outcome::RolledBack,
            ErrorKind::Aborted => Outcome::Aborted,
            ErrorKind::Closed | ErrorKind::MonitorStopped => Outcome::Closed,
            _ => Outcome::Other,
        }
    }

    fn of_postgres(error: &tokio_postgres::Error) -> Outcome {
        let Some(code) = error.code() else {
            return Outcome::Client;
        };
        match code_kind(code) {
            CodeKind::Conflict => return Outcome::Conflict,
            CodeKind::TopologyChanged => return Outcome::TopologyChanged,
            CodeKind::Permanent => {}
        }
        match code.code().get(..2) {
            Some("23") => Outcome::Integrity,
            Some("22") => Outcome::Data,
            Some("42") => Outcome::SyntaxOrAccess,
            _ => Outcome::Server,
        }
    }
}

/// The statement's first keyword, upper case, when it is one of the
/// common ones (`db.operation.name`): a cheap look at the first word,
/// past whitespace and comments, never the text itself.
pub(crate) fn operation_name(sql: &str) -> Option<&'static str> {
    const KNOWN: [&str; 20] = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES", "TABLE", "CALL", "COPY",
        "SHOW", "SET", "EXPLAIN", "CREATE", "ALTER", "DROP", "TRUNCATE", "LOCK", "DO", "REFRESH",
    ];
    let word = first_word(sql);
    KNOWN
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(word))
}

/// The first run of ASCII letters after whitespace and comments.
fn first_word(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, next)| next);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The role as the span and metrics name it.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReadStrategy;

    #[test]
    fn operation_names_from_the_first_keyword_only() {
        let cases = [
            ("SELECT 1", Some("SELECT")),
            ("  select * from t", Some("SELECT")),
            ("-- note\n/* c */ insert into t values (1)", Some("INSERT")),
            ("with x as (select 1) delete from t", Some("WITH")),
            ("UPDATE\tt SET a = 1", Some("UPDATE")),
            ("(SELECT 1)", None),
            ("selectx 1", None),
            ("vacuum", None),
            ("", None),
            ("-- only a comment", None),
            ("/* unterminated", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(operation_name(sql), expected, "{sql:?}");
        }
    }

    #[test]
    fn outcome_names_are_distinct_and_counted() {
        let all = [
            Outcome::Ok,
            Outcome::Retried,
            Outcome::Unknown,
            Outcome::NotCommitted,
            Outcome::Timeout,
            Outcome::Connect,
            Outcome::ConnectionLost,
            Outcome::Conflict,
            Outcome::TopologyChanged,
            Outcome::Integrity,
            Outcome::Data,
            Outcome::SyntaxOrAccess,
            Outcome::Server,
            Outcome::Client,
            Outcome::NoHealthyNode,
            Outcome::NoPrimary,
            Outcome::SplitBrain,
            Outcome::InvalidArgument,
            Outcome::TokenUnavailable,
            Outcome::MarkerTable,
            Outcome::RolledBack,
            Outcome::Aborted,
            Outcome::Closed,
            Outcome::Other,
        ];
        assert_eq!(all.len(), Outcome::COUNT);
        let names: std::collections::HashSet<_> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::COUNT);
        for (index, outcome) in all.iter().enumerate() {
            assert_eq!(*outcome as usize, index);
        }
    }

    #[test]
    fn errors_without_a_node_have_their_own_outcomes() {
        let no_node = Error::no_healthy_node(ReadStrategy::PrimaryOnly);
        assert_eq!(Outcome::of_error(&no_node), Outcome::NoHealthyNode);
        assert_eq!(Outcome::of_error(&Error::closed()), Outcome::Closed);
        assert_eq!(Outcome::of_error(&Error::aborted("rule")), Outcome::Aborted);
    }
}
