#![doc = include_str!("../README.md")]
// Lints: the `[workspace.lints]` table in Cargo.toml; no unsafe code at all here.
#![forbid(unsafe_code)]

mod advice;
#[cfg(feature = "bench")]
pub mod bench;
mod call_window;
mod capability;
mod causal;
#[cfg(feature = "tower")]
mod causal_layer;
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
mod metrics;
mod node;
mod node_set;
mod observe;
mod outcome;
mod readiness;
mod retry;
mod safety;
mod served;
mod sslmode;
mod statements;
mod status;
mod strategy;
mod tls;
mod topology;
mod view;

pub use advice::RetryHint;
pub use capability::{Capability, MissingCapability};
pub use causal::{causal_scope, current_causal_token};
#[cfg(feature = "tower")]
pub use causal_layer::{CausalLayer, CausalService, CAUSAL_TOKEN_HEADER};
pub use config::{
    Config, ConfigBuilder, DiscoverySettings, HealthSettings, HedgeSettings, NearestSettings,
    NodeConfig, OutcomeSettings, OutlierSettings, PoolSettings, ReadStrategy, ReadinessSettings,
    Requirement, RetrySettings, Role, StatementMode, TlsSettings,
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
pub use readiness::{CallCounts, NotReady, Readiness};
pub use retry::RetryDecision;
pub use served::{ServedBy, Server};
pub use status::{HedgeCounts, NodeStatus, PoolStatus, Status};
pub use topology::{Lag, Orphan};

pub use deadpool_postgres;
pub use tokio_postgres;
