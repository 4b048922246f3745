//! One PostgreSQL server of a test cluster.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The host every test node listens on.
pub(crate) const HOST: &str = "127.0.0.1";
/// The superuser created by `initdb`.
pub(crate) const USER: &str = "postgres";
/// The database every node has.
pub(crate) const DBNAME: &str = "postgres";

/// How to reach one node of a [`Cluster`](crate::Cluster): a PostgreSQL server
/// listening on `127.0.0.1` with `trust` authentication for user `postgres`.
///
/// The node keeps its port and data directory for the cluster's whole life,
/// also across [`Cluster::stop`](crate::Cluster::stop) and
/// [`Cluster::start_node`](crate::Cluster::start_node).
#[derive(Debug, Clone)]
pub struct LocalNode {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log_file: PathBuf,
    client_user: &'static str,
    /// The port of the pooler in front of the node, if any.
    pooler_port: Option<u16>,
}

impl LocalNode {
    pub(crate) fn new(
        index: usize,
        port: u16,
        data_dir: PathBuf,
        log_file: PathBuf,
        client_user: &'static str,
    ) -> Self {
        Self {
            name: format!("node{index}"),
            port,
            data_dir,
            log_file,
            client_user,
            pooler_port: None,
        }
    }

    pub(crate) fn set_pooler_port(&mut self, port: u16) {
        self.pooler_port = Some(port);
    }

    /// The port clients connect to: the [`PgBouncer`](crate::PgBouncer) in
    /// front of the node when the cluster has one
    /// ([`ClusterBuilder::pooler`](crate::ClusterBuilder::pooler)), else
    /// the node's own [`LocalNode::port`].
    pub fn client_port(&self) -> u16 {
        self.pooler_port.unwrap_or(self.port)
    }

    /// `127.0.0.1:`[`client_port`](LocalNode::client_port).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port()))
    }

    /// The node's name: `"node0"`, `"node1"`, ... (also its `cluster_name`, so
    /// replicas show up under it in the primary's `pg_stat_replication`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host the node listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the node listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser: `"postgres"` (no password needed). [`LocalNode::pg_config`]
    /// and [`Cluster::psql`](crate::Cluster::psql) use it.
    pub fn user(&self) -> &str {
        USER
    }

    /// The role [`LocalNode::connection_string`] and [`LocalNode::url`] log
    /// in as: the superuser, or [`APP_USER`](crate::APP_USER) in a
    /// [`Flavour::LeastPrivilege`](crate::Flavour::LeastPrivilege) cluster.
    pub fn client_user(&self) -> &str {
        self.client_user
    }

    /// The database to connect to: `"postgres"`.
    pub fn dbname(&self) -> &str {
        DBNAME
    }

    /// The node's socket address, `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A libpq key/value connection string as the
    /// [client user](LocalNode::client_user), at the
    /// [client port](LocalNode::client_port):
    /// `"host=127.0.0.1 port=P user=postgres dbname=postgres"`.
    pub fn connection_string(&self) -> String {
        let user = self.client_user;
        let port = self.client_port();
        format!("host={HOST} port={port} user={user} dbname={DBNAME}")
    }

    /// A connection URL as the [client user](LocalNode::client_user), at
    /// the [client port](LocalNode::client_port):
    /// `"postgres://postgres@127.0.0.1:P/postgres"`.
    pub fn url(&self) -> String {
        let user = self.client_user;
        format!("postgres://{user}@{HOST}:{}/{DBNAME}", self.client_port())
    }

    /// A [`tokio_postgres::Config`] for this node (host, port, user, dbname).
    ///
    /// Note that [`tokio_postgres::Config::port`] adds a port rather than
    /// replacing it: to connect through a [`FaultProxy`](crate::FaultProxy),
    /// build a fresh config with the proxy's port.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host(HOST).port(self.port).user(USER).dbname(DBNAME);
        config
    }

    /// The node's data directory (inside the cluster's temporary directory).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's server log file (`<cluster dir>/nodeN.log`), handy when a
    /// test fails.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }
}
