// The README is the front page. Its guide links are reference links: on
// GitHub they resolve through the README's own definitions (docs/*.md);
// here, the definitions below come first, and the first definition of a
// label wins, so on docs.rs they resolve to the `guide` modules.
#![doc = "[guide]: crate::guide"]
#![doc = "[guide-getting-started]: crate::guide::getting_started"]
#![doc = "[guide-configuration]: crate::guide::configuration"]
#![doc = "[guide-reads]: crate::guide::reads"]
#![doc = "[guide-writes]: crate::guide::writes"]
#![doc = "[guide-failover]: crate::guide::failover"]
#![doc = "[guide-serving]: crate::guide::serving"]
#![doc = "[guide-observability]: crate::guide::observability"]
#![doc = "[guide-platforms]: crate::guide::platforms"]
#![doc = "[guide-testing]: crate::guide::testing"]
#![doc = "[guide-migrating]: crate::guide::migrating"]
#![doc = include_str!("../README.md")]
// Lints: the `[workspace.lints]` table in Cargo.toml; no unsafe code at all here.
#![forbid(unsafe_code)]
// On docs.rs (`--cfg docsrs`), feature-gated items say which feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

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
pub use manager::{DatabaseManager, Queries, ReadBuilder, Tx, TxFuture, WriteBuilder};
pub use observe::call_info::CallInfo;

pub use deadpool_postgres;
pub use tokio_postgres;

/// Guides: how pgrouter behaves and how to run it, one page each. They hold
/// no items; their examples are compiled (and run, where they need no
/// server) as doctests.
///
/// - [Getting started](guide::getting_started): from an empty project to a
///   routed service.
/// - [Configuration](guide::configuration): every setting, its default and why.
/// - [Reads](guide::reads): read strategies, staleness and read-your-writes.
/// - [Writes](guide::writes): writes, retries and unknown outcomes.
/// - [Failover](guide::failover): failover, fencing and the write hold.
/// - [Serving](guide::serving): axum, probes, readiness, errors as HTTP, the
///   causal-token layer.
/// - [Observability](guide::observability): logs, spans, metrics, events,
///   status.
/// - [Managed platforms](guide::platforms): RDS, Aurora, Aurora Global,
///   Cloud SQL, poolers and RDS Proxy, IAM tokens, TLS bundles.
/// - [Testing your service](guide::testing): testcontainers and the test kit.
/// - [Migrating](guide::migrating) from the Node.js `DatabaseManager`.
pub mod guide {
    #[doc = include_str!("../docs/getting_started.md")]
    pub mod getting_started {}
    #[doc = include_str!("../docs/configuration.md")]
    pub mod configuration {}
    #[doc = include_str!("../docs/reads.md")]
    pub mod reads {}
    #[doc = include_str!("../docs/writes.md")]
    pub mod writes {}
    #[doc = include_str!("../docs/failover.md")]
    pub mod failover {}
    #[doc = include_str!("../docs/serving.md")]
    pub mod serving {}
    #[doc = include_str!("../docs/observability.md")]
    pub mod observability {}
    #[doc = include_str!("../docs/platforms.md")]
    pub mod platforms {}
    #[doc = include_str!("../docs/testing.md")]
    pub mod testing {}
    #[doc = include_str!("../docs/migrating.md")]
    pub mod migrating {}
}

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
    pub use crate::failure::error::{Error, ErrorKind, NodeContext};
}

/// `LISTEN` / `NOTIFY` that follows the primary through a failover:
/// [`DatabaseManager::listen`].
pub mod listen {
    pub use crate::manager::listen::{Listener, Notice};
}

/// Passwords from a provider (an IAM token generator, a secret store)
/// instead of the connection strings.
pub mod auth {
    pub use crate::connect::credentials::{
        Credential, CredentialFuture, CredentialRequest, PasswordProvider, ProviderError,
        SharedPasswordProvider,
    };
}
