//! The immutable snapshot of every node's state that routing reads.
//!
//! The health monitor is the single writer: it builds the next [`Snapshot`]
//! and publishes it whole through `arc-swap`. Routing loads the current one
//! (no lock, no allocation) and combines it with each node's `suspect` flag.

use std::sync::Arc;
use tokio::time::Instant;

use crate::config::Role;
use crate::node::Node;
use crate::strategy::NodeView;

/// What the monitor last concluded about one node.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    /// Whether the monitor considers the node usable.
    pub(crate) up: bool,
    /// The role the node plays now.
    pub(crate) role: Role,
    /// The last probe error, kept until the node is up again.
    pub(crate) last_error: Option<Arc<str>>,
    /// When the last probe finished.
    pub(crate) last_probe: Option<Instant>,
}

/// Every node's state, indexed like the manager's nodes.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) nodes: Box<[NodeState]>,
}

impl Snapshot {
    /// The state before any probe: every node up in its configured role, so
    /// a service can start while the first probes run.
    pub(crate) fn initial(nodes: &[Node]) -> Self {
        let states = nodes
            .iter()
            .map(|node| NodeState {
                up: true,
                role: node.role,
                last_error: None,
                last_probe: None,
            })
            .collect();
        Self { nodes: states }
    }
}

/// A snapshot seen together with the callers' suspect flags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveView<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) nodes: &'a [Node],
}

impl NodeView for LiveView<'_> {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn is_up(&self, index: usize) -> bool {
        self.snapshot.nodes[index].up && !self.nodes[index].is_suspect()
    }

    fn is_local(&self, index: usize) -> bool {
        self.nodes[index].is_local
    }

    fn is_primary(&self, index: usize) -> bool {
        self.snapshot.nodes[index].role == Role::Primary
    }
}
