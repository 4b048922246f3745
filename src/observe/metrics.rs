//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` cargo feature; without it every hook here is an empty inline
//! function and the per-node and per-hub tables are zero-sized.
//!
//! Handles are registered with the recorder installed at the time: the
//! per-node gauges and histograms when the node is built, each call counter
//! series the first time it is used. Install the recorder (an exporter)
//! before building the [`DatabaseManager`](crate::DatabaseManager).
//!
//! Families (the observability guide's table documents each):
//! - `pgrouter_calls_total{operation, node, role, outcome}`, one per call;
//! - `pgrouter_retries_total{operation, node, reason}`, one per retry;
//! - `pgrouter_call_duration_seconds{operation, node, role}`;
//! - `pgrouter_pool_wait_seconds{node}`, one per checkout;
//! - `pgrouter_failovers_total{node}`, `pgrouter_fencings_total{node}`;
//! - gauges from each published snapshot: `pgrouter_node_up`,
//!   `pgrouter_node_fenced`, `pgrouter_pool_connections`,
//!   `pgrouter_pool_idle_connections`, `pgrouter_pool_waiters`,
//!   `pgrouter_pool_max_connections`, `pgrouter_replica_lag_bytes`,
//!   `pgrouter_replica_lag_seconds`, `pgrouter_probe_rtt_seconds`.
//!
//! - hedged reads: `pgrouter_hedges_total{node, outcome}` (`sent`: a hedge
//!   sent to `node`; `won`: the hedge on `node` answered first; `refused`:
//!   the read budget refused a hedge of a read on `node`),
//!   `pgrouter_read_retries_refused_total{node}` (the budget refused to try
//!   a read that failed on `node` elsewhere) and
//!   `pgrouter_outliers_total{node}` (live traffic took `node` out);
//! - `pgrouter_writes_through_reads_total{keyword}`: statements sent as
//!   reads that can write or lock, run on the primary as writes (`keyword`
//!   is the word that showed it: `INSERT`, `SHARE`, `nextval`, …).

/// What happened to a read beyond its first attempt, as hedging counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Hedge {
    /// A hedge was sent to the node.
    Sent,
    /// The hedge on the node answered first.
    Won,
    /// The budget refused a hedge of a read on the node.
    Refused,
    /// The budget refused to retry elsewhere a read that failed on the node.
    RetryRefused,
    /// Live traffic found the node an outlier.
    Outlier,
}

#[cfg(feature = "metrics")]
pub(crate) use enabled::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::*;

#[cfg(not(feature = "metrics"))]
mod disabled {
    use deadpool_postgres::Status as PoolStatus;
    use tokio::time::Instant;

    use crate::config::Role;
    use crate::observe::labels::{Operation, Outcome};
    use crate::topology::NodeState;

    /// Nothing to time without the feature.
    #[derive(Debug)]
    pub(crate) struct CallTimer;

    impl CallTimer {
        #[inline(always)]
        pub(crate) fn start() -> Self {
            CallTimer
        }
    }

    /// No handles without the feature.
    #[derive(Debug)]
    pub(crate) struct NodeMetrics;

    impl NodeMetrics {
        #[inline(always)]
        pub(crate) fn new(_node: &str) -> Self {
            NodeMetrics
        }
    }

    /// No handles without the feature.
    #[derive(Debug)]
    pub(crate) struct HubMetrics;

    impl HubMetrics {
        #[inline(always)]
        pub(crate) fn new() -> Self {
            HubMetrics
        }

        #[inline(always)]
        pub(crate) fn elected(&self, _primary: Option<usize>) -> Option<usize> {
            None
        }

        #[inline(always)]
        pub(crate) fn write_through_read(&self, _why: &'static str) {}
    }

    impl NodeMetrics {
        #[inline(always)]
        pub(crate) fn set_state(
            &self,
            _pool: PoolStatus,
            _old: Option<&NodeState>,
            _new: &NodeState,
        ) {
        }

        #[inline(always)]
        pub(crate) fn failover(&self) {}

        #[inline(always)]
        pub(crate) fn pool_wait(&self, _started: Instant) {}

        #[inline(always)]
        pub(crate) fn hedge(&self, _event: super::Hedge) {}
    }

    #[inline(always)]
    pub(crate) fn call(
        _node: Option<(&NodeMetrics, Role)>,
        _hub: &HubMetrics,
        _operation: Operation,
        _outcome: Outcome,
        _timer: &CallTimer,
    ) {
    }

    #[inline(always)]
    pub(crate) fn retry(_node: &NodeMetrics, _operation: Operation, _reason: Outcome) {}
}

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, SharedString};
    use tokio::time::Instant;

    use deadpool_postgres::Status as PoolStatus;

    use crate::config::Role;
    use crate::observe::labels::{role_name, Operation, Outcome};
    use crate::topology::NodeState;

    const OPERATIONS: usize = Operation::ALL.len();
    const ROLES: usize = 2;

    fn role_index(role: Role) -> usize {
        match role {
            Role::Primary => 0,
            Role::Replica => 1,
        }
    }

    /// When the call started.
    #[derive(Debug)]
    pub(crate) struct CallTimer(Instant);

    impl CallTimer {
        pub(crate) fn start() -> Self {
            CallTimer(Instant::now())
        }
    }

    /// One node's handles: registered once, so a call records through an
    /// atomic, never a label lookup or an allocation.
    #[derive(Debug)]
    pub(crate) struct NodeMetrics {
        node: SharedString,
        calls: Box<[OnceLock<Counter>]>,
        retries: Box<[OnceLock<Counter>]>,
        durations: Box<[OnceLock<Histogram>]>,
        pool_wait: Histogram,
        failovers: Counter,
        fencings: Counter,
        up: Gauge,
        fenced: Gauge,
        pool_size: Gauge,
        pool_idle: Gauge,
        pool_waiters: Gauge,
        pool_max: Gauge,
        rtt: Gauge,
        lag_bytes: OnceLock<Gauge>,
        lag_seconds: OnceLock<Gauge>,
        /// `pgrouter_hedges_total` sent, won, refused.
        hedges: [Counter; 3],
        retries_refused: Counter,
        outliers: Counter,
    }

    fn slots<T>(count: usize) -> Box<[OnceLock<T>]> {
        (0..count).map(|_| OnceLock::new()).collect()
    }

    impl NodeMetrics {
        /// The node's handles, registered with the recorder installed now.
        pub(crate) fn new(node: &str) -> Self {
            let node = SharedString::from(node.to_owned());
            let n = || node.clone();
            Self {
                calls: slots(OPERATIONS * ROLES * Outcome::COUNT),
                retries: slots(OPERATIONS * Outcome::COUNT),
                durations: slots(OPERATIONS * ROLES),
                pool_wait: histogram!("pgrouter_pool_wait_seconds", "node" => n()),
                failovers: counter!("pgrouter_failovers_total", "node" => n()),
                fencings: counter!("pgrouter_fencings_total", "node" => n()),
                up: gauge!("pgrouter_node_up", "node" => n()),
                fenced: gauge!("pgrouter_node_fenced", "node" => n()),
                pool_size: gauge!("pgrouter_pool_connections", "node" => n()),
                pool_idle: gauge!("pgrouter_pool_idle_connections", "node" => n()),
                pool_waiters: gauge!("pgrouter_pool_waiters", "node" => n()),
                pool_max: gauge!("pgrouter_pool_max_connections", "node" => n()),
                rtt: gauge!("pgrouter_probe_rtt_seconds", "node" => n()),
                lag_bytes: OnceLock::new(),
                lag_seconds: OnceLock::new(),
                hedges: ["sent", "won", "refused"].map(|outcome| {
                    counter!("pgrouter_hedges_total", "node" => n(), "outcome" => outcome)
                }),
                retries_refused: counter!("pgrouter_read_retries_refused_total", "node" => n()),
                outliers: counter!("pgrouter_outliers_total", "node" => n()),
                node,
            }
        }

        fn call(&self, operation: Operation, role: Role, outcome: Outcome) -> &Counter {
            let slot =
                (operation as usize * ROLES + role_index(role)) * Outcome::COUNT + outcome as usize;
            self.calls[slot].get_or_init(|| {
                counter!("pgrouter_calls_total",
                    "operation" => operation.as_str(), "node" => self.node.clone(),
                    "role" => role_name(role), "outcome" => outcome.as_str())
            })
        }

        fn retry(&self, operation: Operation, reason: Outcome) -> &Counter {
            let slot = operation as usize * Outcome::COUNT + reason as usize;
            self.retries[slot].get_or_init(|| {
                counter!("pgrouter_retries_total",
                    "operation" => operation.as_str(), "node" => self.node.clone(),
                    "reason" => reason.as_str())
            })
        }

        fn duration(&self, operation: Operation, role: Role) -> &Histogram {
            let slot = operation as usize * ROLES + role_index(role);
            self.durations[slot].get_or_init(|| {
                histogram!("pgrouter_call_duration_seconds",
                    "operation" => operation.as_str(), "node" => self.node.clone(),
                    "role" => role_name(role))
            })
        }

        fn lag(&self) -> (&Gauge, &Gauge) {
            let bytes = self
                .lag_bytes
                .get_or_init(|| gauge!("pgrouter_replica_lag_bytes", "node" => self.node.clone()));
            let seconds = self.lag_seconds.get_or_init(
                || gauge!("pgrouter_replica_lag_seconds", "node" => self.node.clone()),
            );
            (bytes, seconds)
        }

        /// The node's gauges from its state in a newly published snapshot
        /// (and its pool's status then).
        pub(crate) fn set_state(&self, pool: PoolStatus, old: Option<&NodeState>, new: &NodeState) {
            self.up.set(f64::from(u8::from(new.up)));
            self.fenced.set(f64::from(u8::from(new.fenced)));
            if new.fenced && !old.is_some_and(|old| old.fenced) {
                self.fencings.increment(1);
            }
            let status = pool;
            self.pool_size.set(status.size as f64);
            self.pool_idle.set(status.available as f64);
            self.pool_waiters.set(status.waiting as f64);
            self.pool_max.set(status.max_size as f64);
            if let Some(rtt) = new.rtt {
                self.rtt.set(rtt.as_secs_f64());
            }
            match (new.lag, new.role) {
                (Some(lag), Role::Replica) => {
                    let (bytes, seconds) = self.lag();
                    bytes.set(lag.bytes as f64);
                    seconds.set(lag.time.as_secs_f64());
                }
                // Unknown now: say so rather than keep an old value.
                _ if self.lag_bytes.get().is_some() => {
                    let (bytes, seconds) = self.lag();
                    bytes.set(f64::NAN);
                    seconds.set(f64::NAN);
                }
                _ => {}
            }
        }
    }

    /// Metrics of the deployment as a whole: calls that reached no node,
    /// and the primary last elected (to count failovers).
    #[derive(Debug)]
    pub(crate) struct HubMetrics {
        unrouted: Box<[OnceLock<Counter>]>,
        /// The last elected primary's index, `usize::MAX` before the first.
        last_primary: AtomicUsize,
    }

    impl HubMetrics {
        pub(crate) fn new() -> Self {
            Self {
                unrouted: slots(OPERATIONS * Outcome::COUNT),
                last_primary: AtomicUsize::new(usize::MAX),
            }
        }

        fn unrouted(&self, operation: Operation, outcome: Outcome) -> &Counter {
            let slot = operation as usize * Outcome::COUNT + outcome as usize;
            self.unrouted[slot].get_or_init(|| {
                counter!("pgrouter_calls_total",
                    "operation" => operation.as_str(), "node" => "", "role" => "",
                    "outcome" => outcome.as_str())
            })
        }

        /// A statement sent as a read ran as a write; `why` is the word
        /// that showed it could write (a fixed set: a bounded label).
        pub(crate) fn write_through_read(&self, why: &'static str) {
            counter!("pgrouter_writes_through_reads_total", "keyword" => why).increment(1);
        }

        /// The primary of a snapshot about to be published: the node to
        /// count a failover on when it is not the primary last elected.
        pub(crate) fn elected(&self, primary: Option<usize>) -> Option<usize> {
            let primary = primary?;
            let before = self.last_primary.swap(primary, Ordering::Relaxed);
            (before != usize::MAX && before != primary).then_some(primary)
        }
    }

    impl NodeMetrics {
        /// A failover made this node the primary.
        pub(crate) fn failover(&self) {
            self.failovers.increment(1);
        }

        /// A checkout that started at `started` ended (with a connection
        /// or not).
        pub(crate) fn pool_wait(&self, started: Instant) {
            self.pool_wait.record(started.elapsed().as_secs_f64());
        }

        /// A hedging event on this node.
        pub(crate) fn hedge(&self, event: super::Hedge) {
            let counter = match event {
                super::Hedge::Sent => &self.hedges[0],
                super::Hedge::Won => &self.hedges[1],
                super::Hedge::Refused => &self.hedges[2],
                super::Hedge::RetryRefused => &self.retries_refused,
                super::Hedge::Outlier => &self.outliers,
            };
            counter.increment(1);
        }
    }

    /// A call ended: counted on the node of its last attempt (or as
    /// unrouted), its duration observed.
    pub(crate) fn call(
        node: Option<(&NodeMetrics, Role)>,
        hub: &HubMetrics,
        operation: Operation,
        outcome: Outcome,
        timer: &CallTimer,
    ) {
        match node {
            Some((metrics, role)) => {
                metrics.call(operation, role, outcome).increment(1);
                let seconds = timer.0.elapsed().as_secs_f64();
                metrics.duration(operation, role).record(seconds);
            }
            None => hub.unrouted(operation, outcome).increment(1),
        }
    }

    /// An attempt on this node failed with `reason` and the call retries.
    pub(crate) fn retry(node: &NodeMetrics, operation: Operation, reason: Outcome) {
        node.retry(operation, reason).increment(1);
    }
}
