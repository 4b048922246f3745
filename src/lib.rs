#![doc = include_str!("../README.md")]
// Lints: the `[workspace.lints]` table in Cargo.toml; no unsafe code at all here.
#![forbid(unsafe_code)]

#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub mod causal;
mod commit;
pub mod config;
mod connect;
mod failure;
mod health;
mod hedging;
mod hub;
mod manager;
mod observe;
mod routing;
mod topology;

pub use causal::CausalToken;
pub use config::{Config, ReadStrategy, Role};
pub use failure::error::Error;
pub use manager::{DatabaseManager, ReadBuilder, Tx, TxFuture, WriteBuilder};
pub use observe::call_info::CallInfo;

pub use deadpool_postgres;
pub use tokio_postgres;

/// What a [`DatabaseManager`] reports about the deployment: the status
/// snapshot, readiness, topology events and what each node can report.
pub mod status {
    pub use crate::health::capability::{Capability, MissingCapability};
    pub use crate::observe::call_info::Server;
    pub use crate::observe::events::{CommitOutcome, Event};
    pub use crate::observe::readiness::{CallCounts, NotReady, Readiness};
    pub use crate::observe::status::{HedgeCounts, NodeStatus, PoolStatus, Status};
    pub use crate::topology::{Lag, Orphan};
}

/// Errors, and what a caller should do next about one.
pub mod error {
    pub use crate::config::error::ConfigError;
    pub use crate::failure::advice::RetryHint;
    pub use crate::failure::error::{Error, NodeContext};
    pub use crate::failure::retry::RetryDecision;
}

/// Passwords from a provider (an IAM token generator, a secret store)
/// instead of the connection strings.
pub mod auth {
    pub use crate::connect::credentials::{
        Credential, CredentialFuture, CredentialRequest, PasswordProvider, ProviderError,
        SharedPasswordProvider,
    };
}
