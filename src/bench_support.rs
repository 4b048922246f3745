//! Hooks for this crate's benchmarks and allocation tests. Not part of the
//! public API: hidden from the docs, may change in any release.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_postgres::error::SqlState;

use crate::config::{NearestSettings, NodeConfig, PoolSettings, ReadStrategy, Role};
use crate::node::Node;
use crate::retry::{code_kind, CodeKind};
use crate::strategy::pick_read;
use crate::suspects::Suspects;
use crate::tls::Connector;
use crate::topology::{Freshness, Lag, LiveView, Snapshot};

/// The routing hot path over a synthetic topology: real `Node`s (pools that
/// never connect), a published snapshot, the same view and decision code as
/// a read.
#[derive(Debug)]
pub struct RoutingBench {
    nodes: Box<[Node]>,
    suspects: Arc<Suspects>,
    snapshot: ArcSwap<Snapshot>,
    nearest: NearestSettings,
}

impl RoutingBench {
    /// `count` nodes in three regions ("local" first); node 0 is the
    /// primary; every node healthy, measured and caught up.
    pub fn new(count: usize) -> Self {
        let regions = ["local", "far-1", "far-2"];
        let suspects = Arc::new(Suspects::new(count));
        let nodes: Box<[Node]> = (0..count)
            .map(|index| {
                let role = if index == 0 {
                    Role::Primary
                } else {
                    Role::Replica
                };
                let config = NodeConfig::new(
                    format!("node{index}"),
                    regions[index % regions.len()],
                    "host=127.0.0.1 port=1 user=bench",
                    role,
                );
                Node::build(
                    &config,
                    &PoolSettings::default(),
                    "local",
                    &[],
                    &Connector::Plain,
                    (index, &suspects),
                )
                .expect("a valid synthetic node")
            })
            .collect();
        let mut snapshot = Snapshot::initial(&nodes);
        for (index, state) in snapshot.nodes.iter_mut().enumerate() {
            state.rtt = Some(Duration::from_millis(1 + (index as u64 % 7) * 10));
            state.lag = (index > 0).then_some(Lag::default());
        }
        Self {
            nodes,
            suspects,
            snapshot: ArcSwap::from_pointee(snapshot),
            nearest: NearestSettings::default(),
        }
    }

    /// One routing decision, exactly as a read makes it.
    pub fn pick(
        &self,
        strategy: ReadStrategy,
        max_staleness: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let snapshot = self.snapshot.load();
        let view = LiveView {
            snapshot: &snapshot,
            nodes: &self.nodes,
            suspects: &self.suspects,
            freshness: Freshness {
                max_staleness,
                after: None,
            },
            nearest: &self.nearest,
        };
        pick_read(strategy, &view, None, rng)
    }
}

/// Whether a SQLSTATE is retryable: `(conflict, topology changed)`.
pub fn classify_code(code: &SqlState) -> (bool, bool) {
    let kind = code_kind(code);
    (
        kind == CodeKind::Conflict,
        kind == CodeKind::TopologyChanged,
    )
}
