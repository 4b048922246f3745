//! Where a read goes: the read strategies, the freshness (staleness and
//! causal token) rule, the live view a decision reads, and the suspect set.

pub(crate) mod freshness;
pub(crate) mod node_set;
pub(crate) mod strategy;
pub(crate) mod view;
