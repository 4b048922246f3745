//! The health monitor: one background task that probes every node, keeps
//! each node's state machine, and publishes the next topology snapshot.

pub(crate) mod assess;
pub(crate) mod aurora;
pub(crate) mod capability;
pub(crate) mod checks;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod fencing;
pub(crate) mod lag;
pub(crate) mod monitor;
pub(crate) mod probe;
pub(crate) mod tracker;

pub(crate) use monitor::Monitor;
