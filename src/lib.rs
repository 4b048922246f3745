#![doc = include_str!("../README.md")]
// Lints: the `[workspace.lints]` table in Cargo.toml; no unsafe code at all here.
#![forbid(unsafe_code)]

#[cfg(feature = "bench")]
pub mod bench;
mod causal;
mod commit;
mod config;
mod connect;
mod failure;
mod health;
mod hedging;
mod hub;
mod manager;
mod observe;
mod routing;
mod topology;

#[cfg(feature = "tower")]
pub use causal::layer::{CausalLayer, CausalService, CAUSAL_TOKEN_HEADER};
pub use causal::lsn::{CausalToken, Lsn, TokenError};
pub use causal::scope::{causal_scope, current_causal_token};
pub use config::error::ConfigError;
pub use config::{
    Config, ConfigBuilder, DiscoverySettings, HealthSettings, HedgeSettings, NearestSettings,
    NodeConfig, OutcomeSettings, OutlierSettings, PoolSettings, ReadStrategy, ReadinessSettings,
    Requirement, RetrySettings, Role, StatementMode, TlsSettings,
};
pub use connect::connstr::ConnectionString;
pub use connect::credentials::{
    Credential, CredentialFuture, CredentialRequest, PasswordProvider, ProviderError,
    SharedPasswordProvider,
};
pub use failure::advice::RetryHint;
pub use failure::error::{Error, NodeContext};
pub use failure::retry::RetryDecision;
pub use health::capability::{Capability, MissingCapability};
pub use manager::{DatabaseManager, Read, Tx, TxFuture, Write};
pub use observe::events::{CommitOutcome, Event};
pub use observe::readiness::{CallCounts, NotReady, Readiness};
pub use observe::served::{ServedBy, Server};
pub use observe::status::{HedgeCounts, NodeStatus, PoolStatus, Status};
pub use topology::{Lag, Orphan};

pub use deadpool_postgres;
pub use tokio_postgres;
