//! Passwords per connection: a [`PasswordProvider`] asked for each new
//! connection (pool and probe alike), its answer cached per node until the
//! expiry it gives, and asked again once when the server rejects a cached
//! one (the password was rotated, or an IAM token outlived its 15 minutes).
//!
//! The secret lives in a [`SecretString`]: it never reaches `Debug`, logs or
//! errors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

/// What a [`PasswordProvider`] may fail with.
pub type ProviderError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The future a [`PasswordProvider`] returns.
pub type CredentialFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Credential, ProviderError>> + Send + 'a>>;

/// A password for new connections, and how long it may be reused.
///
/// `Debug` shows neither the password nor its length.
#[derive(Clone)]
pub struct Credential {
    password: SecretString,
    valid_for: Option<Duration>,
}

impl Credential {
    /// A password reused until the server rejects it.
    pub fn new(password: impl Into<String>) -> Self {
        Self {
            password: SecretString::from(password.into()),
            valid_for: None,
        }
    }

    /// Reused for new connections for at most `lifetime` from when the
    /// provider answered; asked for again after that. An RDS IAM token
    /// lives 15 minutes: say somewhat less (e.g. 14 minutes), so that a
    /// connection is never opened with a token about to expire.
    pub fn valid_for(mut self, lifetime: Duration) -> Self {
        self.valid_for = Some(lifetime);
        self
    }

    /// How long it may be reused, if the provider said.
    pub fn lifetime(&self) -> Option<Duration> {
        self.valid_for
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("password", &"<redacted>")
            .field("valid_for", &self.valid_for)
            .finish()
    }
}

/// What a [`PasswordProvider`] is asked for: which node, and how the
/// connection reaches it (what an RDS IAM token is signed for).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialRequest {
    /// The node's configured name.
    pub node: String,
    /// The node's configured region.
    pub region: String,
    /// The first host of the node's connection string (`None` for a Unix
    /// socket only).
    pub host: Option<String>,
    /// The first port of the node's connection string (5432 when none).
    pub port: u16,
    /// The user of the node's connection string, if it names one.
    pub user: Option<String>,
}

/// Gives the password for a node's new connections. pgrouter calls it when
/// a node has no cached password, when the cached one expired, and once
/// more when the server rejects a cached one (SQLSTATE `28P01` or `28000`);
/// one call at a time per node. Set it with the config builder's
/// `password_provider`; it replaces any password in the connection strings.
///
/// Its call is part of opening a connection, so it is bounded by
/// `pool.create_timeout` (and the probe's by `health.probe_timeout`). A
/// failure fails that connection (as a connection-level error, naming the
/// node); its message must not contain the secret.
///
/// Any `Fn(CredentialRequest) -> impl Future<Output = Result<Credential,
/// ProviderError>>` closure is a provider:
///
/// ```
/// use std::time::Duration;
/// use pgrouter::auth::Credential;
/// use pgrouter::Config;
///
/// let config = Config::builder()
///     .primary("writer", "us-east-1", "host=10.0.0.1 user=app dbname=orders")
///     .password_provider(|request: pgrouter::auth::CredentialRequest| async move {
///         // Fetch it from a secret store here, for `request.node`.
///         let password = std::env::var("APP_DB_PASSWORD")?;
///         Ok(Credential::new(password).valid_for(Duration::from_secs(300)))
///     })
///     .build()?;
/// # Ok::<(), pgrouter::error::ConfigError>(())
/// ```
pub trait PasswordProvider: Send + Sync + 'static {
    /// The password for a new connection described by `request`.
    fn password<'a>(&'a self, request: &'a CredentialRequest) -> CredentialFuture<'a>;
}

impl<F, Fut> PasswordProvider for F
where
    F: Fn(CredentialRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credential, ProviderError>> + Send + 'static,
{
    fn password<'a>(&'a self, request: &'a CredentialRequest) -> CredentialFuture<'a> {
        Box::pin(self(request.clone()))
    }
}

/// A [`PasswordProvider`] shared by every node; what the configuration's
/// `password_provider` holds.
/// `Debug` shows only that there is one.
#[derive(Clone)]
pub struct SharedPasswordProvider(Arc<dyn PasswordProvider>);

impl SharedPasswordProvider {
    /// Wraps a provider.
    pub fn new(provider: impl PasswordProvider) -> Self {
        Self(Arc::new(provider))
    }
}

impl fmt::Debug for SharedPasswordProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordProvider(..)")
    }
}

/// Why a node's password could not be had: what a connection fails with
/// (as the source of its I/O error) when the provider fails. Names the
/// node; never holds the secret.
#[derive(Debug, thiserror::Error)]
#[error("password provider failed for node {node:?}: {source}")]
pub(crate) struct CredentialError {
    node: String,
    #[source]
    source: ProviderError,
}

/// One node's provider and its cached answer.
pub(crate) struct CredentialCache {
    provider: SharedPasswordProvider,
    request: CredentialRequest,
    slot: Mutex<Slot>,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("node", &self.request.node)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// Bumped on every answer, so that a rejection of an old password
    /// refreshes at most once, however many connections saw it rejected.
    generation: u64,
}

struct Cached {
    password: SecretString,
    expires: Option<Instant>,
}

/// A password to connect with, and whether it came from the cache (only a
/// cached one is worth refreshing after a rejection).
pub(crate) struct Lease {
    pub(crate) password: SecretString,
    pub(crate) generation: u64,
    pub(crate) cached: bool,
}

impl CredentialCache {
    /// The cache of the node `request` describes.
    pub(crate) fn new(provider: SharedPasswordProvider, request: CredentialRequest) -> Self {
        Self {
            provider,
            request,
            slot: Mutex::new(Slot::default()),
        }
    }

    /// The cached password if it has not expired, else a fresh one.
    pub(crate) async fn current(&self) -> Result<Lease, CredentialError> {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.cached.as_ref().filter(|c| c.is_valid(Instant::now())) {
            return Ok(Lease {
                password: cached.password.clone(),
                generation: slot.generation,
                cached: true,
            });
        }
        self.fetch(&mut slot).await
    }

    /// After the server rejected the password of `rejected`: a fresh one,
    /// unless another connection already fetched one since.
    pub(crate) async fn refresh(&self, rejected: u64) -> Result<Lease, CredentialError> {
        let mut slot = self.slot.lock().await;
        match &slot.cached {
            Some(cached) if slot.generation != rejected && cached.is_valid(Instant::now()) => {
                Ok(Lease {
                    password: cached.password.clone(),
                    generation: slot.generation,
                    cached: false,
                })
            }
            _ => self.fetch(&mut slot).await,
        }
    }

    async fn fetch(&self, slot: &mut Slot) -> Result<Lease, CredentialError> {
        slot.cached = None;
        let asked = Instant::now();
        let credential = self
            .provider
            .0
            .password(&self.request)
            .await
            .map_err(|source| CredentialError {
                node: self.request.node.clone(),
                source,
            })?;
        slot.generation += 1;
        slot.cached = Some(Cached {
            password: credential.password.clone(),
            expires: credential
                .valid_for
                .and_then(|lifetime| asked.checked_add(lifetime)),
        });
        Ok(Lease {
            password: credential.password,
            generation: slot.generation,
            cached: false,
        })
    }
}

impl Cached {
    fn is_valid(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| now < expires)
    }
}

impl Lease {
    /// `config` with this password.
    pub(crate) fn apply(&self, config: &tokio_postgres::Config) -> tokio_postgres::Config {
        let mut config = config.clone();
        config.password(self.password.expose_secret());
        config
    }
}

/// The request for a node of this name and region reached with `config`.
pub(crate) fn request_for(
    node: &str,
    region: &str,
    config: &tokio_postgres::Config,
) -> CredentialRequest {
    let host = config.get_hosts().iter().find_map(|host| match host {
        Host::Tcp(name) => Some(name.clone()),
        #[allow(unreachable_patterns)]
        _ => None,
    });
    CredentialRequest {
        node: node.to_owned(),
        region: region.to_owned(),
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        user: config.get_user().map(str::to_owned),
    }
}

/// A connection attempt that fails with `error` as its cause: the
/// provider's failure, surfaced as tokio-postgres's I/O error (the only
/// error a `deadpool_postgres::Connect` may return that can carry a
/// cause of ours). Nothing is sent anywhere.
pub(crate) async fn failed_connection(
    error: CredentialError,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .user("pgrouter")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let stream = Refusing(Some(std::io::Error::other(error)));
    // The stream refuses every read and write: this always fails.
    let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
    Ok((client, tokio::spawn(async move { drop(connection.await) })))
}

/// A stream whose first write fails with the error it holds.
struct Refusing(Option<std::io::Error>);

impl Refusing {
    fn error(&mut self) -> std::io::Error {
        self.0
            .take()
            .unwrap_or_else(|| std::io::Error::other("password provider failed"))
    }
}

impl tokio::io::AsyncRead for Refusing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(self.get_mut().error()))
    }
}

impl tokio::io::AsyncWrite for Refusing {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(self.get_mut().error()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(self.get_mut().error()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Whether the server rejected the credentials (`28P01` invalid password,
/// `28000` invalid authorization, as pg_hba.conf and IAM answer).
pub(crate) fn rejected(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(lifetime: Option<Duration>) -> (CredentialCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let provider = move |_request: CredentialRequest| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let credential = Credential::new(format!("secret-{n}"));
                Ok(match lifetime {
                    Some(lifetime) => credential.valid_for(lifetime),
                    None => credential,
                })
            }
        };
        let mut config = tokio_postgres::Config::new();
        config.host("db.example").port(6432).user("app");
        let request = request_for("writer", "us-east-1", &config);
        let cache = CredentialCache::new(SharedPasswordProvider::new(provider), request);
        (cache, calls)
    }

    fn text(lease: &Lease) -> &str {
        lease.password.expose_secret()
    }

    #[tokio::test(start_paused = true)]
    async fn cached_until_the_expiry_the_provider_gave() {
        let (cache, calls) = counting(Some(Duration::from_secs(840)));
        let first = cache.current().await.expect("a password");
        assert!(!first.cached);
        assert_eq!(text(&first), "secret-1");
        tokio::time::advance(Duration::from_secs(839)).await;
        let again = cache.current().await.expect("a password");
        assert!(again.cached);
        assert_eq!(text(&again), "secret-1");
        tokio::time::advance(Duration::from_secs(1)).await;
        let expired = cache.current().await.expect("a password");
        assert_eq!(text(&expired), "secret-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_refreshes_once_however_many_saw_it() {
        let (cache, calls) = counting(None);
        let first = cache.current().await.expect("a password");
        let later = cache.current().await.expect("a password");
        assert!(later.cached, "no expiry: cached until rejected");
        let refreshed = cache.refresh(first.generation).await.expect("fresh");
        assert_eq!(text(&refreshed), "secret-2");
        // A second connection that saw the same old password rejected gets
        // the new one, without asking again.
        let other = cache.refresh(later.generation).await.expect("fresh");
        assert_eq!(text(&other), "secret-2");
        assert!(!other.cached, "no second refresh for this one");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The new one rejected too: asked again.
        let third = cache.refresh(refreshed.generation).await.expect("fresh");
        assert_eq!(text(&third), "secret-3");
    }

    #[tokio::test]
    async fn a_failing_provider_names_the_node_and_the_request_what_to_sign() {
        let provider = |request: CredentialRequest| async move {
            assert_eq!(request.host.as_deref(), Some("db.example"));
            assert_eq!(request.port, 6432);
            assert_eq!(request.user.as_deref(), Some("app"));
            Err::<Credential, ProviderError>("no credentials in the environment".into())
        };
        let mut config = tokio_postgres::Config::new();
        config.host("db.example").port(6432).user("app");
        let cache = CredentialCache::new(
            SharedPasswordProvider::new(provider),
            request_for("writer", "us-east-1", &config),
        );
        let error = cache.current().await.err().expect("an error");
        let text = error.to_string();
        assert!(text.contains("\"writer\""), "{text}");
        assert!(text.contains("no credentials in the environment"), "{text}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let credential = Credential::new("hunter2").valid_for(Duration::from_secs(1));
        let shown = format!("{credential:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let provider = SharedPasswordProvider::new(|_: CredentialRequest| async {
            Ok(Credential::new("hunter2"))
        });
        assert!(!format!("{provider:?}").contains("hunter2"));
        let lease = Lease {
            password: SecretString::from("hunter2".to_owned()),
            generation: 1,
            cached: false,
        };
        let config = lease.apply(&tokio_postgres::Config::new());
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
