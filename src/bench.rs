//! Hooks for this crate's benchmarks and allocation tests, behind the
//! non-default `bench` feature. They reach the code calls run; they are not
//! part of the stable API and may change in any release.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::config::clock;
use crate::config::{Config, NodeConfig, ReadStrategy, Role};
use crate::failure::error::Error;
use crate::failure::safety::{classify, code_kind, Cause, Phase};
use crate::hub::Hub;
use crate::observe::spans::{Observer, Reason};
use crate::routing::freshness::Freshness;
use crate::topology::Lag;

/// The read path's routing decision, over a synthetic topology: a real hub
/// (pools that never connect) with a published snapshot.
#[derive(Debug)]
pub struct RoutingBench {
    hub: Hub,
}

impl RoutingBench {
    /// `count` nodes in three regions ("local" first); node 0 is the
    /// primary; every node healthy, measured and caught up.
    pub fn new(count: usize) -> Result<Self, Error> {
        Self::build(count, false)
    }

    /// As [`RoutingBench::new`], but the last node (a replica, when
    /// `count` > 1) was last fresh an hour before: a read with a staleness
    /// bound of less finds not every node fresh and searches for those that
    /// are.
    pub fn with_a_stale_replica(count: usize) -> Result<Self, Error> {
        Self::build(count, true)
    }

    fn build(count: usize, stale: bool) -> Result<Self, Error> {
        let regions = ["local", "far-1", "far-2"];
        let nodes = (0..count)
            .map(|index| {
                let role = if index == 0 {
                    Role::Primary
                } else {
                    Role::Replica
                };
                NodeConfig::new(
                    format!("node{index}"),
                    regions[index % regions.len()],
                    "host=127.0.0.1 port=1 user=bench",
                    role,
                )
            })
            .collect();
        let mut config = Config::new(nodes);
        config.local_region = "local".to_owned();
        let hub = Hub::new(config)?;
        let mut snapshot = (**hub.snapshot()).clone();
        for (index, state) in snapshot.nodes.iter_mut().enumerate() {
            state.rtt = Some(Duration::from_millis(1 + (index as u64 % 7) * 10));
            state.lag = (index > 0).then_some(Lag::default());
            // Fresh as of a moment after the bench ends: caught up throughout.
            let now = tokio::time::Instant::now();
            let until = clock::after(now, Duration::from_secs(86_400));
            state.fresh_as_of = (index > 0).then_some(until);
            if stale && index > 0 && index + 1 == count {
                state.fresh_as_of = now.checked_sub(Duration::from_secs(3_600));
            }
        }
        hub.publish(snapshot, Vec::new(), None);
        Ok(Self { hub })
    }

    /// One routing decision: the call `Read` makes to choose its node.
    pub fn pick(
        &self,
        strategy: ReadStrategy,
        max_staleness: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let freshness = Freshness {
            max_staleness,
            after: None,
        };
        self.hub.pick_read(strategy, freshness, None, rng)
    }
}

impl RoutingBench {
    /// What a successful read on node 1 costs beyond routing and I/O: its
    /// call span (with whatever subscriber is installed, if any), the
    /// attempt's fields, and the end of the call (with the `metrics`
    /// feature, its counter and latency histogram).
    pub fn observe_read(&self, strategy: ReadStrategy, sql: &str) {
        let mut observer = Observer::read(&self.hub, strategy, sql);
        observer.attempt(&self.hub, 1, 1, Reason::Strategy);
        observer.finish(&self.hub, &Ok::<(), Error>(()));
    }
}

/// The classification of a server error on a sent statement, from its
/// SQLSTATE on (an attempt first reads the SQLSTATE off tokio-postgres's
/// error, which cannot be built here): whether a write that is not
/// idempotent may be retried.
pub fn retry_after_server_error(code: &SqlState) -> bool {
    let cause = Cause::Server {
        kind: code_kind(code),
        closed: false,
    };
    classify(Phase::Sent, cause).action.allows_retry(false)
}

/// Whether a statement sent as a read can write or lock, as the read path
/// asks before routing it (the scan of `routing/statement.rs`).
pub fn statement_writes(sql: &str) -> bool {
    matches!(
        crate::routing::statement::intent(sql),
        crate::routing::statement::Intent::Write(_)
    )
}
