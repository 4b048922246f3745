//! Error classification and the retry schedule.
//!
//! The rules, from what was sent and from the SQLSTATE:
//! - nothing sent (checkout, connect, prepare, no healthy primary): retry;
//! - `40001` serialization failure, `40P01` deadlock: retry (a transaction
//!   is retried as a whole);
//! - `57P01`/`57P02`/`57P03` shutdown and `25006` read-only transaction: the
//!   topology changed; retry after asking the monitor to re-probe;
//! - class `23` integrity, `42` syntax/permission, `22` data, anything else
//!   the server rejects: never retried;
//! - connection lost after the statement was sent: the outcome is unknown;
//!   retried only when the caller marked the write idempotent.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use deadpool_postgres::PoolError;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;

use crate::config::RetrySettings;
use crate::error::Error;

/// What a failed attempt allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Safe to try again (after backoff).
    Retry,
    /// Safe to try again, and the topology probably changed: re-probe first.
    RetryAfterReprobe,
    /// Retrying cannot help or is not safe.
    Fail,
}

/// How a SQLSTATE bears on retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeKind {
    /// 40001, 40P01: run it again.
    Conflict,
    /// 57P01/57P02/57P03, 25006: the node is going away or is not the
    /// primary any more; nothing was applied.
    TopologyChanged,
    /// Everything else: a retry gets the same answer.
    Permanent,
}

pub(crate) fn code_kind(code: &SqlState) -> CodeKind {
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        CodeKind::Conflict
    } else if *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
    {
        CodeKind::TopologyChanged
    } else {
        CodeKind::Permanent
    }
}

impl Error {
    /// Whether a write that failed with this error may be retried.
    /// `idempotent` says the caller accepts the statement running twice.
    pub fn retry_decision(&self, idempotent: bool) -> RetryDecision {
        match self {
            // NoPrimary and SplitBrain already waited out the write hold.
            Error::NoHealthyNode { .. } | Error::ConnectionLost { .. } => RetryDecision::Retry,
            Error::Connect { source, .. } => pool_error_decision(source),
            Error::OutcomeUnknown { .. } if idempotent => RetryDecision::Retry,
            Error::Database { source, .. } | Error::Postgres(source) => {
                source
                    .code()
                    .map_or(RetryDecision::Fail, |code| match code_kind(code) {
                        CodeKind::Conflict => RetryDecision::Retry,
                        CodeKind::TopologyChanged => RetryDecision::RetryAfterReprobe,
                        CodeKind::Permanent => RetryDecision::Fail,
                    })
            }
            _ => RetryDecision::Fail,
        }
    }
}

fn pool_error_decision(error: &PoolError) -> RetryDecision {
    match error {
        PoolError::Closed | PoolError::NoRuntimeSpecified => RetryDecision::Fail,
        PoolError::Backend(source) => match source.code().map(code_kind) {
            Some(CodeKind::Permanent) => RetryDecision::Fail,
            Some(CodeKind::TopologyChanged) => RetryDecision::RetryAfterReprobe,
            _ => RetryDecision::Retry,
        },
        _ => RetryDecision::Retry,
    }
}

/// Whether a read that failed with this error should be tried once more on
/// another node: anything connection-level (reads are safe to repeat) and
/// conflicts such as a replica cancelling a query for recovery (40001).
pub(crate) fn read_retryable(error: &Error) -> bool {
    match error {
        Error::OutcomeUnknown { .. } => true,
        other => other.retry_decision(false) != RetryDecision::Fail,
    }
}

/// Whether the error means the node itself failed (so it becomes suspect),
/// rather than the statement or a busy pool.
pub(crate) fn is_node_failure(error: &PoolError) -> bool {
    use deadpool_postgres::TimeoutType;
    match error {
        PoolError::Timeout(TimeoutType::Wait) | PoolError::Closed => false,
        PoolError::Backend(source) => source
            .code()
            .is_none_or(|code| code_kind(code) == CodeKind::TopologyChanged),
        _ => true,
    }
}

/// The write backoff: exponential from `min_delay`, doubling up to
/// `max_delay`, `max_retries` delays in all, with optional jitter.
pub(crate) fn schedule(settings: &RetrySettings) -> ExponentialBackoff {
    let builder = ExponentialBuilder::new()
        .with_min_delay(settings.min_delay)
        .with_max_delay(settings.max_delay)
        .with_factor(2.0)
        .with_max_times(settings.max_retries);
    let builder = if settings.jitter {
        builder.with_jitter()
    } else {
        builder
    };
    builder.build()
}

/// The retry loop's state: the remaining delays, the deadline, and whether
/// the caller accepts a statement running twice.
#[derive(Debug)]
pub(crate) struct Retrier {
    delays: ExponentialBackoff,
    deadline: Instant,
    idempotent: bool,
    attempt: u32,
}

impl Retrier {
    pub(crate) fn new(settings: &RetrySettings, deadline: Instant, idempotent: bool) -> Self {
        Self {
            delays: schedule(settings),
            deadline,
            idempotent,
            attempt: 1,
        }
    }

    /// The attempt about to run (1 for the first).
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a failed attempt: whether to try again. When it may, it first
    /// sleeps for the next backoff delay. It gives up when the error is not
    /// retryable, when the schedule is spent, or when the delay would end
    /// past the deadline.
    pub(crate) async fn again(&mut self, error: &Error) -> bool {
        if error.retry_decision(self.idempotent) == RetryDecision::Fail {
            return false;
        }
        let Some(delay) = self.delays.next() else {
            return false;
        };
        if Instant::now() + delay >= self.deadline {
            return false;
        }
        tracing::debug!(attempt = self.attempt, ?delay, %error, "retrying after backoff");
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sqlstate_table() {
        let table = [
            ("40001", CodeKind::Conflict),
            ("40P01", CodeKind::Conflict),
            ("57P01", CodeKind::TopologyChanged),
            ("57P02", CodeKind::TopologyChanged),
            ("57P03", CodeKind::TopologyChanged),
            ("25006", CodeKind::TopologyChanged),
            ("23505", CodeKind::Permanent),
            ("23503", CodeKind::Permanent),
            ("23514", CodeKind::Permanent),
            ("23502", CodeKind::Permanent),
            ("42601", CodeKind::Permanent),
            ("42501", CodeKind::Permanent),
            ("42P01", CodeKind::Permanent),
            ("22012", CodeKind::Permanent),
            ("22P02", CodeKind::Permanent),
            ("57014", CodeKind::Permanent),
        ];
        for (code, kind) in table {
            assert_eq!(code_kind(&SqlState::from_code(code)), kind, "{code}");
        }
    }

    #[test]
    fn decisions_without_a_server_error() {
        let none = Error::NoHealthyNode {
            operation: crate::Operation::Write,
            strategy: crate::ReadStrategy::PrimaryOnly,
        };
        assert_eq!(none.retry_decision(false), RetryDecision::Retry);
        assert_eq!(Error::Closed.retry_decision(true), RetryDecision::Fail);
        assert_eq!(
            Error::aborted("business rule").retry_decision(true),
            RetryDecision::Fail
        );
        assert!(read_retryable(&none));
    }

    #[test]
    fn pool_errors() {
        use deadpool_postgres::TimeoutType;
        assert_eq!(
            pool_error_decision(&PoolError::Timeout(TimeoutType::Create)),
            RetryDecision::Retry
        );
        assert_eq!(pool_error_decision(&PoolError::Closed), RetryDecision::Fail);
        assert!(!is_node_failure(&PoolError::Timeout(TimeoutType::Wait)));
        assert!(is_node_failure(&PoolError::Timeout(TimeoutType::Create)));
        assert!(is_node_failure(&PoolError::Timeout(TimeoutType::Recycle)));
    }

    #[test]
    fn schedule_doubles_up_to_the_cap_and_stops() {
        let settings = RetrySettings {
            jitter: false,
            ..RetrySettings::default()
        };
        let delays: Vec<u128> = schedule(&settings).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [300, 600, 1200]);
        let settings = RetrySettings {
            max_retries: 6,
            jitter: false,
            ..RetrySettings::default()
        };
        let delays: Vec<u128> = schedule(&settings).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [300, 600, 1200, 2400, 3000, 3000]);
    }

    #[test]
    fn jitter_stays_within_one_delay() {
        let plain: Vec<Duration> = schedule(&RetrySettings {
            jitter: false,
            ..RetrySettings::default()
        })
        .collect();
        for _ in 0..50 {
            let jittered: Vec<Duration> = schedule(&RetrySettings::default()).collect();
            assert_eq!(jittered.len(), plain.len());
            for (j, p) in jittered.iter().zip(&plain) {
                assert!(*j >= *p && *j <= *p * 2, "{j:?} vs {p:?}");
            }
        }
    }

    fn transient() -> Error {
        Error::NoHealthyNode {
            operation: crate::Operation::Write,
            strategy: crate::ReadStrategy::PrimaryOnly,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retrier_sleeps_the_schedule_on_paused_time() {
        let settings = RetrySettings {
            jitter: false,
            ..RetrySettings::default()
        };
        let start = Instant::now();
        let mut retrier = Retrier::new(&settings, start + Duration::from_secs(60), false);
        let mut waits = Vec::new();
        while retrier.again(&transient()).await {
            waits.push(start.elapsed().as_millis());
        }
        // Tokio's timer rounds each sleep up to the next millisecond.
        let expected = [300, 900, 2100];
        assert_eq!(waits.len(), expected.len());
        for (waited, expected) in waits.iter().zip(expected) {
            assert!((expected..expected + 5).contains(waited), "{waits:?}");
        }
        assert_eq!(retrier.attempt(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn retrier_never_sleeps_past_the_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(1000);
        let mut retrier = Retrier::new(&RetrySettings::default(), deadline, false);
        while retrier.again(&transient()).await {}
        assert!(Instant::now() < deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn retrier_stops_at_once_on_a_permanent_error() {
        let start = Instant::now();
        let mut retrier = Retrier::new(
            &RetrySettings::default(),
            start + Duration::from_secs(60),
            true,
        );
        assert!(!retrier.again(&Error::aborted("no")).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(retrier.attempt(), 1);
    }
}
