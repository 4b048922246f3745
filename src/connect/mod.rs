//! Reaching a node: connection strings and libpq's `sslmode`, TLS,
//! credentials (static or from a provider), statement modes for
//! transaction poolers, and each node's pool with its connections'
//! lifetimes.

pub(crate) mod connstr;
pub(crate) mod credentials;
pub(crate) mod lifetime;
pub(crate) mod node;
pub(crate) mod sslmode;
pub(crate) mod statements;
pub(crate) mod tls;
