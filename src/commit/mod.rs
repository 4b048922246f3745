//! The outcome of a COMMIT whose answer was lost: the pure judgement
//! over what the server reports, and the resolution that asks it.

pub(crate) mod dialect;
pub(crate) mod judge;
pub(crate) mod resolve;
