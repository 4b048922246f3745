//! What a caller should do with an [`Error`]: repeat the call or not, and
//! which HTTP status class answers it. Pure; no HTTP crate.

use tokio_postgres::error::SqlState;

use crate::failure::error::{Error, ErrorKind};
use crate::failure::retry::RetryDecision;

/// Whether repeating a failed call (later, or through another instance of
/// the service) is safe and useful. See [`Error::retry_hint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RetryHint {
    /// Nothing was applied, and the cause may pass (no node, no primary, a
    /// deadline, a lost connection, a serialization conflict): repeat it.
    Retryable,
    /// Repeating gets the same answer (a constraint violation, bad SQL, a
    /// refused password) or would repeat a write that was applied.
    NotRetryable,
    /// A write may or may not have been applied: read before repeating it,
    /// or repeat it only if it is idempotent. (A read whose deadline passed
    /// after it was sent says this too, as [`Error::is_outcome_unknown`]
    /// does; a read is safe to repeat.)
    OutcomeUnknown,
}

impl Error {
    /// Whether repeating the call is safe and useful; for an HTTP client,
    /// whether the request may be sent again.
    ///
    /// pgrouter has already retried what it could within the call's
    /// deadline, so [`RetryHint::Retryable`] means "later, or elsewhere".
    pub fn retry_hint(&self) -> RetryHint {
        if self.is_outcome_unknown() {
            return RetryHint::OutcomeUnknown;
        }
        match self.kind() {
            ErrorKind::NoHealthyNode { .. }
            | ErrorKind::NoPrimary { .. }
            | ErrorKind::SplitBrain { .. }
            | ErrorKind::Timeout { .. }
            | ErrorKind::Closed
            | ErrorKind::MonitorStopped => RetryHint::Retryable,
            // The write was applied: never repeat it.
            ErrorKind::TokenUnavailable => RetryHint::NotRetryable,
            // As pgrouter's own loops decide, for a statement that must not
            // run twice.
            _ => match self.retry_decision(false) {
                RetryDecision::Retry => RetryHint::Retryable,
                RetryDecision::Fail => RetryHint::NotRetryable,
            },
        }
    }

    /// The HTTP status a service answers this error with, if it has no
    /// reason of its own to choose another:
    ///
    /// | status | errors |
    /// |---|---|
    /// | 503 Service Unavailable | no healthy node or no primary (also split brain, a closed manager, a stopped monitor; a write `close` stopped in flight says [`RetryHint::OutcomeUnknown`]), no connection, a connection lost before anything was applied, a `COMMIT` shown not to have committed, and server answers that say the node is going away or is read-only now (57P0x, 25006), or short of resources (class 53), or a connection failure (class 08) |
    /// | 504 Gateway Timeout | the call's deadline passed ([`ErrorKind::Timeout`]; when it passed after the statement was sent, [`Error::retry_hint`] says the outcome is unknown), or the server cancelled the statement (57014, `statement_timeout`) |
    /// | 502 Bad Gateway | the connection was lost after a write was sent: its outcome is unknown ([`ErrorKind::OutcomeUnknown`]) |
    /// | 409 Conflict | integrity violations (class 23: unique, foreign key, check, not null, exclusion), and serialization failures and deadlocks (40001, 40P01) that outlasted pgrouter's retries: the request conflicts with others, and nothing was applied |
    /// | 400 Bad Request | data exceptions (class 22: a value out of range, invalid text for a type), usually input the service passed through |
    /// | 500 Internal Server Error | everything else: SQL the server rejects (class 42), a wrong row count, parameters tokio-postgres refuses, an invalid option, a transaction the application aborted, a write whose causal token could not be read |
    ///
    /// 5xx statuses with [`RetryHint::Retryable`] are the ones worth a
    /// `Retry-After`.
    pub fn http_status(&self) -> u16 {
        match self.kind() {
            ErrorKind::NoHealthyNode { .. }
            | ErrorKind::NoPrimary { .. }
            | ErrorKind::SplitBrain { .. }
            | ErrorKind::Connect
            | ErrorKind::ConnectionLost
            | ErrorKind::NotCommitted
            | ErrorKind::Closed
            | ErrorKind::MonitorStopped => 503,
            ErrorKind::Timeout { .. } => 504,
            ErrorKind::OutcomeUnknown => 502,
            ErrorKind::Database | ErrorKind::RolledBack { .. } => {
                self.code().map_or(500, status_of_code)
            }
            _ => 500,
        }
    }

    /// Whether this failure says the service cannot serve now (a 502, 503
    /// or 504 from [`Error::http_status`]), rather than that this request
    /// was wrong: what readiness counts as a failed call.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.http_status(), 502..=504)
    }
}

/// The status for a server's SQLSTATE.
fn status_of_code(code: &SqlState) -> u16 {
    let class = code.code().get(..2).unwrap_or("");
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return 409;
    }
    if *code == SqlState::QUERY_CANCELED {
        return 504;
    }
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        return 503;
    }
    match class {
        "23" => 409,
        "22" => 400,
        "08" | "53" | "57" => 503,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ReadStrategy;

    fn context() -> crate::failure::error::NodeContext {
        crate::failure::error::NodeContext {
            node: "node0".into(),
            region: "r".into(),
        }
    }

    #[test]
    fn statuses_and_hints_of_routing_failures() {
        let cases = [
            (
                Error::no_healthy_node(ReadStrategy::RegionalPreferred),
                503,
                RetryHint::Retryable,
            ),
            (
                Error::no_primary(Duration::from_secs(5)),
                503,
                RetryHint::Retryable,
            ),
            (Error::split_brain(vec![]), 503, RetryHint::Retryable),
            (Error::closed(), 503, RetryHint::Retryable),
            (Error::stopped_by_close(false), 503, RetryHint::Retryable),
            (
                Error::stopped_by_close(true),
                503,
                RetryHint::OutcomeUnknown,
            ),
            (Error::monitor_stopped(), 503, RetryHint::Retryable),
            (
                Error::timeout(context(), Duration::from_secs(1), false),
                504,
                RetryHint::Retryable,
            ),
            (
                Error::timeout(context(), Duration::from_secs(1), true),
                504,
                RetryHint::OutcomeUnknown,
            ),
            (
                Error::token_unavailable(context(), None),
                500,
                RetryHint::NotRetryable,
            ),
            (
                Error::row_count(context(), "exactly one row", 0),
                500,
                RetryHint::NotRetryable,
            ),
            (
                Error::invalid_argument("deadline", "must be greater than zero"),
                500,
                RetryHint::NotRetryable,
            ),
            (Error::aborted("no"), 500, RetryHint::NotRetryable),
        ];
        for (error, status, hint) in cases {
            assert_eq!(error.http_status(), status, "{error}");
            assert_eq!(error.retry_hint(), hint, "{error}");
            assert_eq!(error.is_unavailable(), (502..=504).contains(&status));
        }
    }

    #[test]
    fn statuses_and_hints_of_server_answers() {
        let cases = [
            (SqlState::UNIQUE_VIOLATION, 409, RetryHint::NotRetryable),
            (
                SqlState::FOREIGN_KEY_VIOLATION,
                409,
                RetryHint::NotRetryable,
            ),
            (SqlState::CHECK_VIOLATION, 409, RetryHint::NotRetryable),
            (
                SqlState::T_R_SERIALIZATION_FAILURE,
                409,
                RetryHint::Retryable,
            ),
            (SqlState::T_R_DEADLOCK_DETECTED, 409, RetryHint::Retryable),
            (
                SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
                400,
                RetryHint::NotRetryable,
            ),
            (SqlState::SYNTAX_ERROR, 500, RetryHint::NotRetryable),
            (
                SqlState::INSUFFICIENT_PRIVILEGE,
                500,
                RetryHint::NotRetryable,
            ),
            (SqlState::ADMIN_SHUTDOWN, 503, RetryHint::Retryable),
            (
                SqlState::READ_ONLY_SQL_TRANSACTION,
                503,
                RetryHint::Retryable,
            ),
            (SqlState::TOO_MANY_CONNECTIONS, 503, RetryHint::NotRetryable),
            (SqlState::QUERY_CANCELED, 504, RetryHint::NotRetryable),
            (SqlState::RAISE_EXCEPTION, 500, RetryHint::NotRetryable),
        ];
        for (code, status, hint) in cases {
            let error = Error::rolled_back(context(), code.clone());
            assert_eq!(error.http_status(), status, "{}", code.code());
            assert_eq!(error.retry_hint(), hint, "{}", code.code());
        }
    }
}
