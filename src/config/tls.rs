//! [`TlsSettings`]: TLS for every connection.

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// TLS (rustls) for every connection: pools, probes and cancel requests.
///
/// When enabled, a server that does not offer TLS is an error (no fall back
/// to plain text), and its certificate must chain to a trusted root and name
/// the host in the connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsSettings {
    /// Encrypt and verify. Default: false.
    pub enabled: bool,
    /// A PEM file of CA certificates to trust instead of Mozilla's roots
    /// (`webpki-roots`), e.g. the Amazon RDS bundle or a Cloud SQL server CA.
    /// Read when the manager starts. Default: none.
    pub ca_file: Option<std::path::PathBuf>,
}

impl TlsSettings {
    /// Checks every field. Nothing can be wrong with them alone: the CA
    /// file is read when the manager starts, and each node's `sslmode` is
    /// checked against these settings with the node.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
