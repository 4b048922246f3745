//! The retry schedule, and the public retry decision.
//!
//! What a failure means is decided in [`crate::failure::safety`]; this module turns
//! that into [`Error::retry_decision`] for callers, and into the backoff
//! loop state ([`Retrier`]) for writes and transactions.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::config::RetrySettings;
use crate::failure::error::Error;
use crate::failure::safety::{classify, code_kind, Action, Cause, Phase};

/// What a failed attempt allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Safe to try again (after backoff). When the failure showed that the
    /// topology changed (`57P0x`, `25006`), pgrouter has already asked its
    /// monitor to probe the node.
    Retry,
    /// Retrying cannot help or is not safe.
    Fail,
}

impl Error {
    /// Whether a call that failed with this error may be tried again.
    /// `idempotent` says the caller accepts the statement running twice
    /// (reads always may).
    ///
    /// The same rules as pgrouter's own retry loops: the error's variant
    /// says how far the call got (nothing sent, sent, `COMMIT` sent), its
    /// SQLSTATE what the server said.
    pub fn retry_decision(&self, idempotent: bool) -> RetryDecision {
        let action = failure_point(self)
            .map_or(Action::Fail, |(phase, cause)| classify(phase, cause).action);
        if action.allows_retry(idempotent) {
            RetryDecision::Retry
        } else {
            RetryDecision::Fail
        }
    }
}

/// How far the failed call got and why, read back from the error's variant
/// (each variant is built for one kind of phase, see `manager/attempt.rs`);
/// `None` for failures no retry can help: nothing of the node's, or the
/// deadline or the write hold already spent.
fn failure_point(error: &Error) -> Option<(Phase, Cause)> {
    match error {
        Error::Connect { source, .. } => Some((Phase::Checkout, Cause::of_pool(source))),
        Error::ConnectionLost { .. } => Some((Phase::BeforeSend, Cause::Lost)),
        Error::OutcomeUnknown { .. } => Some((Phase::Sent, Cause::Lost)),
        // Resolved: as if lost before COMMIT.
        Error::NotCommitted { .. } => Some((Phase::InTransaction, Cause::Lost)),
        Error::Database { source, .. } => Some((Phase::Sent, Cause::of_postgres(source))),
        // Raised by a transaction closure: nothing is committed yet.
        Error::Postgres(source) => Some((Phase::InTransaction, Cause::of_postgres(source))),
        Error::Statement { .. } => Some((Phase::BeforeSend, Cause::Local)),
        Error::RolledBack { code, .. } => Some((
            Phase::InTransaction,
            Cause::Server {
                kind: code_kind(code),
                closed: false,
            },
        )),
        _ => None,
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
        let wakes = Instant::now().checked_add(delay);
        if wakes.is_none_or(|wakes| wakes >= self.deadline) {
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

    /// A real tokio-postgres error with no SQLSTATE and no I/O cause (a
    /// connection string it refuses): what a variant is built around does
    /// not change how far the call got.
    fn pg_error() -> tokio_postgres::Error {
        match "no_such_option=1".parse::<tokio_postgres::Config>() {
            Err(error) => error,
            Ok(_) => unreachable!("tokio-postgres accepted an unknown option"),
        }
    }

    fn context() -> crate::failure::error::NodeContext {
        crate::failure::error::NodeContext {
            node: "n".into(),
            region: "r".into(),
        }
    }

    #[test]
    fn decisions_for_every_error_variant() {
        use deadpool_postgres::{PoolError, TimeoutType};
        use RetryDecision::{Fail, Retry};
        let connect = |source| Error::Connect {
            context: context(),
            source,
        };
        // (error, decision when it may not run twice, when it may)
        let table: Vec<(Error, RetryDecision, RetryDecision)> = vec![
            (
                connect(PoolError::Timeout(TimeoutType::Create)),
                Retry,
                Retry,
            ),
            (
                connect(PoolError::Timeout(TimeoutType::Recycle)),
                Retry,
                Retry,
            ),
            (connect(PoolError::Timeout(TimeoutType::Wait)), Retry, Retry),
            (connect(PoolError::Closed), Fail, Fail),
            (connect(PoolError::NoRuntimeSpecified), Fail, Fail),
            (
                Error::ConnectionLost {
                    context: context(),
                    source: pg_error(),
                },
                Retry,
                Retry,
            ),
            (
                Error::OutcomeUnknown {
                    context: context(),
                    source: pg_error(),
                },
                Fail,
                Retry,
            ),
            (
                Error::NotCommitted {
                    context: context(),
                    source: None,
                },
                Retry,
                Retry,
            ),
            (
                Error::Statement {
                    context: context(),
                    source: pg_error(),
                },
                Fail,
                Fail,
            ),
            (
                Error::TokenUnavailable {
                    context: context(),
                    source: Some(pg_error()),
                },
                Fail,
                Fail,
            ),
            // A closure's own tokio-postgres error that is not a lost
            // connection: a retry gets the same answer.
            (Error::Postgres(pg_error()), Fail, Fail),
            (
                Error::Timeout {
                    context: context(),
                    deadline: Duration::from_secs(1),
                    after_send: true,
                },
                Fail,
                Fail,
            ),
            (
                Error::RowCount {
                    context: context(),
                    expected: "exactly one row",
                    actual: 2,
                },
                Fail,
                Fail,
            ),
            (
                Error::NoHealthyNode {
                    strategy: crate::ReadStrategy::PrimaryOnly,
                },
                Fail,
                Fail,
            ),
            (
                Error::NoPrimary {
                    waited: Duration::from_secs(5),
                },
                Fail,
                Fail,
            ),
            (
                Error::SplitBrain {
                    claimants: vec!["a".into(), "b".into()],
                },
                Fail,
                Fail,
            ),
            (
                Error::InvalidArgument {
                    option: "deadline",
                    reason: "must be greater than zero",
                },
                Fail,
                Fail,
            ),
            (Error::aborted("business rule"), Fail, Fail),
            (
                Error::RolledBack {
                    context: context(),
                    code: tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE,
                },
                Retry,
                Retry,
            ),
            (
                Error::RolledBack {
                    context: context(),
                    code: tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
                },
                Fail,
                Fail,
            ),
            (Error::Closed, Fail, Fail),
            (
                Error::Config(crate::error::ConfigError::NoNodes),
                Fail,
                Fail,
            ),
        ];
        for (error, strict, idempotent) in &table {
            assert_eq!(error.retry_decision(false), *strict, "{error:?}");
            assert_eq!(error.retry_decision(true), *idempotent, "{error:?}");
        }
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

    /// A failure before anything was sent.
    fn transient() -> Error {
        Error::Connect {
            context: context(),
            source: deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Create),
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
