//! The retry schedule, and the public retry decision.
//!
//! What a failure means is decided in [`crate::failure::safety`]; this module turns
//! that into [`Error::retry_decision`] for callers, and into the backoff
//! loop state ([`Retrier`]) for writes and transactions.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::config::RetrySettings;
use crate::failure::error::Error;
use crate::failure::safety::{classify, Action};

/// What a failed attempt allows, to pgrouter's own loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryDecision {
    /// Safe to try again (after backoff). When the failure showed that the
    /// topology changed (`57P0x`, `25006`), pgrouter has already asked its
    /// monitor to probe the node.
    Retry,
    /// Retrying cannot help or is not safe.
    Fail,
}

impl Error {
    /// Whether pgrouter's own loops may try this call again now.
    /// `idempotent` says the caller accepts the statement running twice
    /// (reads always may). Read from the phase and cause kept in the error
    /// when it was built (see `safety.rs`).
    pub(crate) fn retry_decision(&self, idempotent: bool) -> RetryDecision {
        let action = self
            .point()
            .map_or(Action::Fail, |(phase, cause)| classify(phase, cause).action);
        if action.allows_retry(idempotent) {
            RetryDecision::Retry
        } else {
            RetryDecision::Fail
        }
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
        let connect = |source| Error::connect(context(), source);
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
            (Error::connection_lost(context(), pg_error()), Retry, Retry),
            (Error::outcome_unknown(context(), pg_error()), Fail, Retry),
            (Error::not_committed(context(), None), Retry, Retry),
            (Error::statement(context(), pg_error()), Fail, Fail),
            (
                Error::token_unavailable(context(), Some(pg_error())),
                Fail,
                Fail,
            ),
            // A closure's own tokio-postgres error that is not a lost
            // connection: a retry gets the same answer.
            (Error::from(pg_error()), Fail, Fail),
            (
                Error::timeout(context(), Duration::from_secs(1), true),
                Fail,
                Fail,
            ),
            (
                Error::row_count(context(), "exactly one row", 2),
                Fail,
                Fail,
            ),
            (
                Error::no_healthy_node(crate::ReadStrategy::PrimaryOnly),
                Fail,
                Fail,
            ),
            (Error::no_primary(Duration::from_secs(5)), Fail, Fail),
            (Error::split_brain(vec!["a".into(), "b".into()]), Fail, Fail),
            (
                Error::invalid_argument("deadline", "must be greater than zero"),
                Fail,
                Fail,
            ),
            (Error::aborted("business rule"), Fail, Fail),
            (
                Error::rolled_back(
                    context(),
                    tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE,
                ),
                Retry,
                Retry,
            ),
            (
                Error::rolled_back(context(), tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
                Fail,
                Fail,
            ),
            (Error::closed(), Fail, Fail),
            (Error::from(crate::error::ConfigError::NoNodes), Fail, Fail),
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
        Error::connect(
            context(),
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Create),
        )
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
