//! The status snapshot, copied out of the hub.

use super::Hub;
use crate::observe::status::{NodeStatus, PoolStatus, Status};

impl Status {
    /// The status now, copied out of `hub`.
    pub(crate) fn capture(hub: &Hub) -> Self {
        let snapshot = hub.snapshot();
        let now = tokio::time::Instant::now();
        let nodes = hub
            .each_node()
            .filter(|(index, _)| !snapshot.nodes[*index].vacant)
            .map(|(index, node)| {
                let state = &snapshot.nodes[index];
                let pool = node.pool.status();
                let (closed_idle, closed_expired) = node.closed.counts();
                let limit = |limit: std::time::Duration| (!limit.is_zero()).then_some(limit);
                let suspect = hub.is_suspect(index);
                NodeStatus {
                    name: node.context.node.to_string(),
                    region: node.context.region.to_string(),
                    role: state.role,
                    fenced: state.fenced,
                    orphaned: state.orphaned,
                    timeline: state.timeline,
                    missing_capabilities: state
                        .missing
                        .iter()
                        .cloned()
                        .chain(hub.outcome_sql.missing(index))
                        .collect(),
                    last_replay: state.replayed_at,
                    wal_position: state.position,
                    lag: state.lag,
                    rtt: state.rtt,
                    healthy: snapshot.is_routable(index) && !suspect,
                    suspect,
                    last_error: state.last_error.as_deref().map(str::to_owned),
                    last_probe_age: state.last_probe.map(|at| now.saturating_duration_since(at)),
                    pool: PoolStatus {
                        max_size: pool.max_size,
                        size: pool.size,
                        available: pool.available,
                        waiting: pool.waiting,
                        idle_timeout: limit(node.lifetimes.idle_timeout),
                        max_lifetime: limit(node.lifetimes.max_lifetime),
                        closed_idle,
                        closed_expired,
                    },
                    discovered: index >= hub.configured(),
                }
            })
            .collect();
        Self {
            nodes,
            read_strategy: hub.config.read_strategy,
            local_region: hub.config.local_region.clone(),
            write_target: snapshot
                .primary
                .map(|index| hub.context(index).node.to_string()),
            split_brain: snapshot.split_brain,
            monitor_running: hub.monitor_running(),
            hedging: hub.hedge_counts(),
            writes_through_reads: hub.writes_through_reads(),
        }
    }
}
