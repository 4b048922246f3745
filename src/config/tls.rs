//! [`TlsSettings`]: TLS for every connection.

use serde::{Deserialize, Serialize};

/// TLS (rustls) for every connection: pools, probes and cancel requests.
///
/// When enabled, a server that does not offer TLS is an error (no fall back
/// to plain text), and its certificate must chain to a trusted root and name
/// the host in the connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Encrypt and verify. Default: false.
    pub enabled: bool,
    /// A PEM file of CA certificates to trust instead of Mozilla's roots
    /// (`webpki-roots`), e.g. the Amazon RDS bundle or a Cloud SQL server CA.
    /// Default: none.
    pub ca_file: Option<std::path::PathBuf>,
}
