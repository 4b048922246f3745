//! One node: its name, region, configured role and deadpool pool.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, ManagerConfig, Metrics, Pool, RecyclingMethod, Runtime};

use crate::config::error::ConfigError;
use crate::config::node::is_local;
use crate::config::{NodeConfig, PoolSettings, Role, TlsSettings};
use crate::connect::credentials::{request_for, CredentialCache, SharedPasswordProvider};
use crate::connect::lifetime::{Closed, Lifetimes};
use crate::connect::sslmode::NodeTls;
use crate::connect::statements::Statements;
use crate::connect::tls::Connector;
use crate::failure::error::NodeContext;
use crate::observe::metrics::NodeMetrics;
use crate::topology::NodeState;

/// A configured node and its pool. Owned by the hub.
pub(crate) struct Node {
    pub(crate) context: NodeContext,
    pub(crate) role: Role,
    pub(crate) is_local: bool,
    /// The node's region's place in `nearest.preferred_regions`.
    pub(crate) region_rank: Option<usize>,
    pub(crate) pool: Pool,
    /// Connection settings for the monitor's own probe connection.
    pub(crate) probe_config: tokio_postgres::Config,
    /// Plain or TLS, as the node's `sslmode` says: its pool and its probe.
    pub(crate) connector: Connector,
    /// Where its connections go, for the call span's `server.*` fields.
    pub(crate) address: Address,
    /// Its metric handles (nothing without the `metrics` feature).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) metrics: NodeMetrics,
    /// How statements reach the server, and what unnamed mode learnt.
    pub(crate) statements: Statements,
    /// How long its connections may idle and live.
    pub(crate) lifetimes: Lifetimes,
    /// Connections its pool closed for those limits.
    pub(crate) closed: Arc<Closed>,
}

/// A node's database, host and port, as the call span records them
/// (`db.namespace`, `server.address`, `server.port`).
#[derive(Debug)]
pub(crate) struct Address {
    pub(crate) database: Arc<str>,
    pub(crate) host: Arc<str>,
    pub(crate) port: u16,
}

impl Address {
    /// The first host and port of `pg` (the one tried first), and its
    /// database (libpq's default: the user's name).
    fn of(pg: &tokio_postgres::Config) -> Self {
        use tokio_postgres::config::Host;
        let host = match pg.get_hosts().first() {
            Some(Host::Tcp(host)) => Arc::from(host.as_str()),
            Some(Host::Unix(path)) => Arc::from(path.to_string_lossy().as_ref()),
            None => Arc::from("localhost"),
        };
        let database = pg.get_dbname().or(pg.get_user()).unwrap_or_default();
        Self {
            database: Arc::from(database),
            host,
            port: pg.get_ports().first().copied().unwrap_or(5432),
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("context", &self.context)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Where a node's connections go instead of its connection string's host
/// (a discovered instance: the seed's string, another host).
pub(crate) type HostOverride<'a> = Option<&'a str>;

impl Node {
    /// This node's state before its first probe: up in its configured role.
    pub(crate) fn initial_state(&self) -> NodeState {
        NodeState::configured(self.role, self.is_local, self.region_rank)
    }

    /// Builds the node's pool. No I/O: connections are made on first use.
    pub(crate) fn build(
        config: &NodeConfig,
        settings: &PoolSettings,
        local_region: &str,
        preferred_regions: &[String],
        tls: &TlsSettings,
        provider: Option<&SharedPasswordProvider>,
    ) -> Result<Self, ConfigError> {
        Self::build_at(
            config,
            None,
            settings,
            local_region,
            preferred_regions,
            tls,
            provider,
        )
    }

    /// [`Node::build`], connecting to `host` (with the connection string's
    /// first port) when one is given.
    pub(crate) fn build_at(
        config: &NodeConfig,
        host: HostOverride<'_>,
        settings: &PoolSettings,
        local_region: &str,
        preferred_regions: &[String],
        tls: &TlsSettings,
        provider: Option<&SharedPasswordProvider>,
    ) -> Result<Self, ConfigError> {
        let (mut pg_config, node_tls) = pg_config(config, settings, tls)?;
        if let Some(host) = host {
            pg_config = rehost(&pg_config, host);
        }
        let mut connector = Connector::new(&node_tls).map_err(|reason| ConfigError::Tls {
            reason: format!("node {:?}: {reason}", config.name),
        })?;
        if let Some(provider) = provider {
            let request = request_for(&config.name, &config.region, &pg_config);
            let cache = CredentialCache::new(provider.clone(), request);
            connector = connector.with_credentials(cache);
        }
        connector.configure(&mut pg_config);
        let lifetimes = Lifetimes::new(settings);
        let closed = Arc::new(Closed::default());
        let limits = PoolLimits {
            max_size: config.pool_size.unwrap_or(settings.max_size),
            lifetimes,
            closed: Arc::clone(&closed),
        };
        let pool = build_pool(
            &connector,
            pg_config.clone(),
            settings,
            limits,
            &config.name,
        )?;
        Ok(Self {
            context: NodeContext {
                node: Arc::from(config.name.as_str()),
                region: Arc::from(config.region.as_str()),
            },
            role: config.role,
            is_local: is_local(&config.region, local_region),
            region_rank: preferred_regions.iter().position(|r| *r == config.region),
            pool,
            address: Address::of(&pg_config),
            metrics: NodeMetrics::new(&config.name),
            probe_config: pg_config,
            connector,
            statements: Statements::new(config.statement_mode.unwrap_or_default()),
            lifetimes,
            closed,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.context.node
    }

    /// Drops every idle connection, so the next caller does not pay a
    /// recycle timeout once per dead connection.
    pub(crate) fn discard_idle(&self) -> usize {
        self.pool.retain(|_, _| false).removed.len()
    }

    /// Closes the idle connections past a limit of
    /// [`Lifetimes`]; returns how many.
    pub(crate) fn close_expired(&self) -> usize {
        let now = std::time::Instant::now();
        let lifetimes = self.lifetimes;
        let removed = self.pool.retain(|_, metrics| {
            let used = metrics.recycled.unwrap_or(metrics.created);
            match lifetimes.expired_at(metrics.created, used, now) {
                Some(expiry) => {
                    self.closed.count(expiry);
                    false
                }
                None => true,
            }
        });
        let closed = removed.removed.len();
        if closed > 0 {
            tracing::debug!(node = %self.context.node, closed, "closed idle connections past their limits");
        }
        closed
    }
}

/// The node's `tokio_postgres::Config` with every timeout pgrouter relies on.
fn pg_config(
    config: &NodeConfig,
    settings: &PoolSettings,
    tls: &TlsSettings,
) -> Result<(tokio_postgres::Config, NodeTls), ConfigError> {
    let (mut pg, node_tls) = config.url.parse_tls("url".to_owned(), &config.name, tls)?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(settings.connect_timeout);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("pgrouter");
    }
    pg.keepalives(true)
        .keepalives_idle(settings.keepalive_idle)
        .tcp_user_timeout(settings.tcp_user_timeout);
    Ok((pg, node_tls))
}

/// `pg` with `host` as its only host and its first port as its only port:
/// every setting a connection string can carry is copied (tokio-postgres
/// can add hosts, not replace them).
fn rehost(pg: &tokio_postgres::Config, host: &str) -> tokio_postgres::Config {
    let mut out = tokio_postgres::Config::new();
    out.host(host);
    if let Some(port) = pg.get_ports().first() {
        out.port(*port);
    }
    if let Some(user) = pg.get_user() {
        out.user(user);
    }
    if let Some(password) = pg.get_password() {
        out.password(password);
    }
    if let Some(dbname) = pg.get_dbname() {
        out.dbname(dbname);
    }
    if let Some(options) = pg.get_options() {
        out.options(options);
    }
    if let Some(name) = pg.get_application_name() {
        out.application_name(name);
    }
    if let Some(timeout) = pg.get_connect_timeout() {
        out.connect_timeout(*timeout);
    }
    if let Some(timeout) = pg.get_tcp_user_timeout() {
        out.tcp_user_timeout(*timeout);
    }
    out.ssl_mode(pg.get_ssl_mode())
        .ssl_negotiation(pg.get_ssl_negotiation())
        .keepalives(pg.get_keepalives())
        .keepalives_idle(pg.get_keepalives_idle())
        .target_session_attrs(pg.get_target_session_attrs())
        .channel_binding(pg.get_channel_binding())
        .load_balance_hosts(pg.get_load_balance_hosts());
    if let Some(interval) = pg.get_keepalives_interval() {
        out.keepalives_interval(interval);
    }
    if let Some(retries) = pg.get_keepalives_retries() {
        out.keepalives_retries(retries);
    }
    out
}

/// What a node's pool takes beyond the shared settings.
struct PoolLimits {
    /// The node's own size, else `pool.max_size`.
    max_size: usize,
    lifetimes: Lifetimes,
    closed: Arc<Closed>,
}

fn build_pool(
    connector: &Connector,
    pg_config: tokio_postgres::Config,
    settings: &PoolSettings,
    limits: PoolLimits,
    name: &str,
) -> Result<Pool, ConfigError> {
    // Fast recycling drops closed connections without I/O; the hook adds a
    // round trip only for connections idle long enough to have gone silent,
    // and closes those past their limits.
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = connector.manager(pg_config, manager_config);
    Pool::builder(manager)
        .pre_recycle(verify_idle(
            settings.verify_idle_after,
            settings.recycle_timeout,
            limits.lifetimes,
            limits.closed,
        ))
        .max_size(limits.max_size)
        .wait_timeout(Some(settings.wait_timeout))
        .create_timeout(Some(settings.create_timeout))
        // None: recycling is `Fast` (no I/O), and the idle check above
        // bounds its own round trip; a timer here would be set on every
        // checkout for nothing.
        .recycle_timeout(None)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|error| ConfigError::InvalidValue {
            field: format!("pool for node {name:?}"),
            value: error.to_string(),
            reason: "deadpool refused the pool settings",
        })
}

/// The idle check's answer for a connection used recently: a future with
/// no state, so boxing it (deadpool's hooks return a boxed future)
/// allocates nothing at the checkouts that reuse a busy connection.
struct Fresh;

impl std::future::Future for Fresh {
    type Output = Result<(), HookError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Closes a connection past its limits (`lifetimes`, counted in
/// `closed`), and checks, with one bounded round trip, one not handed out
/// for `idle_after`; an error discards it and deadpool takes the next one.
fn verify_idle(
    idle_after: Duration,
    bound: Duration,
    lifetimes: Lifetimes,
    closed: Arc<Closed>,
) -> Hook {
    Hook::async_fn(move |client, metrics: &Metrics| {
        // One clock read for both questions (deadpool's `age()` and
        // `last_used()` would read it twice).
        let now = std::time::Instant::now();
        let used = metrics.recycled.unwrap_or(metrics.created);
        let idle = match lifetimes.idle_or_expired(metrics.created, used, now) {
            Ok(idle) => idle,
            Err(expiry) => {
                closed.count(expiry);
                return Box::pin(std::future::ready(Err(HookError::message(expiry.as_str()))));
            }
        };
        if idle < idle_after {
            return Box::pin(Fresh);
        }
        Box::pin(async move {
            match tokio::time::timeout(bound, client.simple_query("")).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(HookError::Backend(error)),
                Err(_) => Err(HookError::message("idle connection check timed out")),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use tokio_postgres::config::Host;

    use super::*;

    #[test]
    fn rehost_keeps_everything_but_the_hosts_and_extra_ports() {
        let seed = tokio_postgres::Config::from_str(
            "host=writer.example,other.example hostaddr=10.0.0.1 port=5433,5434 user=app \
             password=s3cret dbname=orders application_name=svc connect_timeout=4 \
             target_session_attrs=read-write options='-c work_mem=8MB'",
        )
        .unwrap();
        let moved = rehost(&seed, "r1.example");
        assert_eq!(moved.get_hosts(), [Host::Tcp("r1.example".to_owned())]);
        assert!(moved.get_hostaddrs().is_empty());
        assert_eq!(moved.get_ports(), [5433]);
        assert_eq!(moved.get_user(), Some("app"));
        assert_eq!(moved.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(moved.get_dbname(), Some("orders"));
        assert_eq!(moved.get_application_name(), Some("svc"));
        assert_eq!(moved.get_options(), Some("-c work_mem=8MB"));
        assert_eq!(moved.get_connect_timeout(), Some(&Duration::from_secs(4)));
        assert_eq!(
            moved.get_target_session_attrs(),
            seed.get_target_session_attrs()
        );
        // A socket directory is a Unix host, as in libpq.
        let socket = rehost(&seed, "/run/pg/r1");
        assert!(matches!(&socket.get_hosts()[0], Host::Unix(path) if path.ends_with("r1")));
    }
}
