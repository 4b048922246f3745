//! How connections are made: plain TCP, or TLS with rustls, as each node's
//! `sslmode` says (libpq's meanings; see `sslmode.rs`). Every node has its
//! own [`Connector`] for its pool and its probe; cancel requests go through
//! [`Connector::for_cancels`].

pub(crate) mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Connect, Manager, ManagerConfig};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::{CancelToken, Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::connect::credentials::{self, CredentialCache};
use crate::connect::sslmode::{NodeTls, Roots, SslMode};

/// How long a cancel request for a timed-out statement may take.
const CANCEL_BOUND: Duration = Duration::from_secs(2);

/// One node's way of connecting; cheap to clone.
#[derive(Clone)]
pub(crate) struct Connector {
    mode: SslMode,
    /// `None` only for `disable`.
    tls: Option<MakeRustlsConnect>,
    /// The node's password provider and its cached answer, if any.
    credentials: Option<Arc<CredentialCache>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({})", self.mode.name())
    }
}

/// A connection and the task driving it.
type Connected = (Client, JoinHandle<()>);

impl Connector {
    /// The connector for one node's TLS settings; reads its certificate
    /// and key files now, so a bad one is an error naming the parameter and
    /// the file, before any connection.
    pub(crate) fn new(tls: &NodeTls) -> Result<Self, String> {
        let tls_config = match tls.mode {
            SslMode::Disable => None,
            _ => Some(verify::client_config(tls)?),
        };
        Ok(Self {
            mode: tls.mode,
            tls: tls_config.map(MakeRustlsConnect::new),
            credentials: None,
        })
    }

    /// Every connection asks `cache` for its password.
    pub(crate) fn with_credentials(mut self, cache: CredentialCache) -> Self {
        self.credentials = Some(Arc::new(cache));
        self
    }

    /// For cancel requests: TLS when the connection's own settings asked
    /// for it, certificate unverified. A cancel request carries only the
    /// session's cancel key (libpq before 17 sends it in plain text).
    pub(crate) fn for_cancels() -> Self {
        let any = NodeTls {
            mode: SslMode::Require,
            roots: Roots::Bundled,
            roots_from: "sslrootcert",
            client: None,
        };
        let tls = verify::client_config(&any).ok().map(MakeRustlsConnect::new);
        Self {
            mode: SslMode::Require,
            tls,
            credentials: None,
        }
    }

    /// Sets tokio-postgres's own `sslmode` for the first attempt: it knows
    /// only disable, prefer and require; verification is this connector's.
    pub(crate) fn configure(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(match self.mode {
            SslMode::Disable | SslMode::Allow => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        });
    }

    /// A deadpool manager connecting this way.
    pub(crate) fn manager(&self, pg: tokio_postgres::Config, config: ManagerConfig) -> Manager {
        Manager::from_connect(pg, self.clone(), config)
    }

    /// One connection, its driver spawned, with the provider's password if
    /// the node has a provider: a cached password the server rejects is
    /// refreshed once and the connection tried again.
    pub(crate) async fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<Connected, tokio_postgres::Error> {
        self.connect_with(pg, None).await
    }

    /// [`Connector::connect`], the notifications (`NOTIFY`) the server
    /// sends on it handed to `notices` (a pool's connections drop them).
    pub(crate) async fn connect_listening(
        &self,
        pg: &tokio_postgres::Config,
        notices: Notices,
    ) -> Result<Connected, tokio_postgres::Error> {
        self.connect_with(pg, Some(notices)).await
    }

    async fn connect_with(
        &self,
        pg: &tokio_postgres::Config,
        notices: Option<Notices>,
    ) -> Result<Connected, tokio_postgres::Error> {
        let Some(cache) = &self.credentials else {
            return self.connect_as(pg, notices).await;
        };
        let lease = match cache.current().await {
            Ok(lease) => lease,
            Err(error) => return credentials::failed_connection(error).await,
        };
        match self.connect_as(&lease.apply(pg), notices.clone()).await {
            Err(error) if lease.cached && credentials::rejected(&error) => {
                let fresh = match cache.refresh(lease.generation).await {
                    Ok(fresh) => fresh,
                    Err(error) => return credentials::failed_connection(error).await,
                };
                self.connect_as(&fresh.apply(pg), notices).await
            }
            other => other,
        }
    }

    /// One connection with these settings. `allow` tries plain text first
    /// and TLS only when the server refuses it (as libpq does); every other
    /// mode makes one attempt, and never a weaker one than asked.
    async fn connect_as(
        &self,
        pg: &tokio_postgres::Config,
        notices: Option<Notices>,
    ) -> Result<Connected, tokio_postgres::Error> {
        match (&self.tls, self.mode) {
            (Some(tls), SslMode::Allow) => match plain(pg, notices.clone()).await {
                // The server refused plain text (pg_hba.conf `hostssl`).
                Err(error) if error.as_db_error().is_some() => {
                    let mut pg = pg.clone();
                    pg.ssl_mode(WireMode::Require);
                    encrypted(&pg, tls, notices).await
                }
                other => other,
            },
            (Some(tls), _) => encrypted(pg, tls, notices).await,
            (None, _) => plain(pg, notices).await,
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
                match connector.tls {
                    None => token.cancel_query(NoTls).await,
                    Some(tls) => token.cancel_query(tls).await,
                }
            };
            let _ = tokio::time::timeout(CANCEL_BOUND, cancel).await;
        });
    }
}

impl Connect for Connector {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Pin<Box<dyn Future<Output = Result<Connected, tokio_postgres::Error>> + Send + '_>> {
        let pg = pg.clone();
        Box::pin(async move { Connector::connect(self, &pg).await })
    }
}

async fn plain(
    pg: &tokio_postgres::Config,
    notices: Option<Notices>,
) -> Result<Connected, tokio_postgres::Error> {
    let (client, connection) = pg.connect(NoTls).await?;
    Ok((client, drive(connection, notices)))
}

async fn encrypted(
    pg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    notices: Option<Notices>,
) -> Result<Connected, tokio_postgres::Error> {
    let (client, connection) = pg.connect(tls.clone()).await?;
    Ok((client, drive(connection, notices)))
}

/// Where a listening connection's notifications go.
pub(crate) type Notices = tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>;

/// Spawns the task driving `connection`; its notifications go to
/// `notices`, if given, else nowhere. A failed driver shows up in the
/// client as a closed connection.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notices: Option<Notices>,
) -> JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Some(notices) = notices else {
            drop(connection.await);
            return;
        };
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                // The listener gone: nothing left to hand it to.
                let _ = notices.send(notification);
            }
        }
    })
}
