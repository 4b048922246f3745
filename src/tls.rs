//! How connections are made: plain TCP, or TLS with rustls verifying the
//! server's certificate. Chosen once from [`TlsSettings`]; pools, probes and
//! cancel requests all go through the same [`Connector`].

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{CancelToken, Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::TlsSettings;
use crate::error::ConfigError;

/// How long a cancel request for a timed-out statement may take.
const CANCEL_BOUND: Duration = Duration::from_secs(2);

/// Plain or TLS; cheap to clone.
#[derive(Clone)]
pub(crate) enum Connector {
    Plain,
    Tls(MakeRustlsConnect),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Plain => "Connector::Plain",
            Connector::Tls(_) => "Connector::Tls",
        })
    }
}

impl Connector {
    /// Builds the connector; a CA file that cannot be read or holds no
    /// certificate is a [`ConfigError::Tls`].
    pub(crate) fn new(settings: &TlsSettings) -> Result<Self, ConfigError> {
        if !settings.enabled {
            return Ok(Connector::Plain);
        }
        let roots = root_store(settings)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| tls_error(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector::Tls(MakeRustlsConnect::new(config)))
    }

    /// With TLS on, a server that cannot do TLS is an error, never a
    /// silent fall back to plain text.
    pub(crate) fn require(&self, config: &mut tokio_postgres::Config) {
        if let Connector::Tls(_) = self {
            config.ssl_mode(SslMode::Require);
        }
    }

    /// A deadpool manager connecting this way.
    pub(crate) fn manager(&self, pg: tokio_postgres::Config, config: ManagerConfig) -> Manager {
        match self {
            Connector::Plain => Manager::from_config(pg, NoTls, config),
            Connector::Tls(tls) => Manager::from_config(pg, tls.clone(), config),
        }
    }

    /// One connection, its driver spawned.
    pub(crate) async fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        // A failed driver shows up in the client as a closed connection.
        match self {
            Connector::Plain => {
                let (client, connection) = pg.connect(NoTls).await?;
                Ok((client, tokio::spawn(async move { drop(connection.await) })))
            }
            Connector::Tls(tls) => {
                let (client, connection) = pg.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(async move { drop(connection.await) })))
            }
        }
    }

    /// Asks the server, in the background and bounded, to stop the
    /// statement a dropped future left running.
    pub(crate) fn cancel_in_background(&self, token: CancelToken) {
        // Also called from `Drop`: outside a runtime there is nowhere to
        // send it from (the discarded connection still ends the session).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let connector = self.clone();
        runtime.spawn(async move {
            let cancel = async {
                match connector {
                    Connector::Plain => token.cancel_query(NoTls).await,
                    Connector::Tls(tls) => token.cancel_query(tls).await,
                }
            };
            let _ = tokio::time::timeout(CANCEL_BOUND, cancel).await;
        });
    }
}

fn root_store(settings: &TlsSettings) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = &settings.ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let shown = path.display();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| tls_error(format!("tls.ca_file {shown}: {error}")))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|error| tls_error(format!("tls.ca_file {shown}: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| tls_error(format!("tls.ca_file {shown}: {error}")))?;
    }
    if roots.is_empty() {
        return Err(tls_error(format!(
            "tls.ca_file {shown}: no certificate in it"
        )));
    }
    Ok(roots)
}

fn tls_error(reason: String) -> ConfigError {
    ConfigError::Tls { reason }
}
