//! The call loops' timed rules on a paused clock, over scripted pools
//! (`manager/fake.rs`) and a monitor probing scripted nodes
//! (`health/fake.rs`): read retries and their budget, hedges, the write
//! hold, write retries by class, deadlines after a statement was sent,
//! lost-`COMMIT` resolution. Each test pins its rule to the millisecond,
//! in microseconds of real time.

mod causal;
mod close;
mod commit;
mod reads;
mod transactions;
mod writes;
mod written_reads;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::fake::{self as probes, Answer};
use crate::health::Monitor;
use crate::hub::Hub;

/// The scripted primary, as its probe sees it.
pub(super) const PRIMARY: Answer = Answer::Primary {
    timeline: 1,
    position: 100,
};
/// A scripted replica, as its probe sees it.
pub(super) const REPLICA: Answer = Answer::Replica {
    timeline: 1,
    replayed: 100,
};

/// Two nodes: node 0 the primary, node 1 a replica in the service's own
/// region, so a read goes to node 1 first and elsewhere to node 0. Probes
/// as `health/fake.rs` sets them (every 1 s, timeout 500 ms); the write
/// backoff without jitter: 300, 600, 1200 ms.
pub(super) fn two_nodes() -> Config {
    let mut config = probes::config(2);
    config.local_region = "region1".to_owned();
    config.retry.jitter = false;
    config
}

/// A hub whose monitor probed the scripted nodes once and keeps running,
/// as `DatabaseManager::new` starts one.
pub(super) struct Harness {
    pub(super) hub: Arc<Hub>,
    pub(super) nodes: probes::World,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    pub(super) async fn start(config: Config, answers: &[Answer]) -> Self {
        let hub = Arc::new(Hub::new(config).expect("a valid test configuration"));
        let nodes = probes::World::new(answers);
        let mut monitor = Monitor::new(Arc::clone(&hub), nodes.probers());
        monitor.first_round().await;
        let shutdown = CancellationToken::new();
        tokio::spawn(monitor.run(shutdown.clone()));
        tokio::spawn(crate::hub::keep_deadlines(
            Arc::clone(&hub.deadlines),
            hub.config.deadline,
        ));
        if hub.config.outliers.enabled {
            let watch = crate::hub::watch_outliers(Arc::clone(&hub), shutdown.clone());
            tokio::spawn(watch);
        }
        Self {
            hub,
            nodes,
            shutdown,
        }
    }

    /// Both nodes answering their probes: node 0 primary, node 1 replica.
    pub(super) async fn healthy(config: Config) -> Self {
        Self::start(config, &[PRIMARY, REPLICA]).await
    }
}
