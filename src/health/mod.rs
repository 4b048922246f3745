//! The health monitor: one background task that probes every node, keeps
//! each node's state machine, and publishes the next topology snapshot.

mod assess;
mod aurora;
mod checks;
#[cfg(test)]
pub(crate) mod fake;
mod fencing;
mod lag;
mod monitor;
mod probe;
mod tracker;

pub(crate) use monitor::Monitor;
