//! Where a read goes: the read strategies, each strategy's candidates as
//! worked out per published snapshot, the freshness (staleness and causal
//! token) rule, the live view a decision reads, the suspect set, and
//! whether a statement sent as a read can write (then the primary takes it,
//! as a write).

pub(crate) mod candidates;
pub(crate) mod freshness;
pub(crate) mod node_set;
pub(crate) mod statement;
pub(crate) mod strategy;
pub(crate) mod view;
