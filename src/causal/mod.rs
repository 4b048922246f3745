//! Causal consistency: WAL positions, the causal token a write returns, the
//! task-local scope that carries one through a request (and the window on
//! the primary a write without a position opens in it), and (with the
//! `tower` feature) the layer that reads and writes it as an HTTP header.

#[cfg(feature = "tower")]
pub(crate) mod layer;
pub(crate) mod lsn;
pub(crate) mod scope;
pub(crate) mod window;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{CausalLayer, CausalService, CAUSAL_TOKEN_HEADER};
pub use lsn::{CausalToken, Lsn, TokenError};
pub use scope::{causal_scope, current_causal_token};
