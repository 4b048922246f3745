#![doc = include_str!("../README.md")]
// Lints: the `[workspace.lints]` table in Cargo.toml; no unsafe code at all here.
#![forbid(unsafe_code)]

#[cfg(feature = "bench")]
pub mod bench;
mod capability;
mod clock;
mod config;
mod connstr;
mod credentials;
mod discovery;
mod error;
mod events;
mod freshness;
mod health;
mod hedge;
mod hub;
mod lsn;
mod manager;
mod node;
mod node_set;
mod outcome;
mod retry;
mod safety;
mod sslmode;
mod statements;
mod status;
mod strategy;
mod tls;
mod topology;
mod view;

pub use capability::{Capability, MissingCapability};
pub use config::{
    Config, ConfigBuilder, DiscoverySettings, HealthSettings, HedgeSettings, NearestSettings,
    NodeConfig, OutcomeSettings, OutlierSettings, PoolSettings, ReadStrategy, RetrySettings, Role,
    StatementMode, TlsSettings,
};
pub use connstr::ConnectionString;
pub use credentials::{
    Credential, CredentialFuture, CredentialRequest, PasswordProvider, ProviderError,
    SharedPasswordProvider,
};
pub use error::{ConfigError, Error, NodeContext};
pub use events::{CommitOutcome, Event};
pub use lsn::{CausalToken, Lsn, TokenError};
pub use manager::{DatabaseManager, Read, Tx, TxFuture, Write};
pub use retry::RetryDecision;
pub use status::{HedgeCounts, NodeStatus, PoolStatus, Status};
pub use topology::{Lag, Orphan};

pub use deadpool_postgres;
pub use tokio_postgres;
