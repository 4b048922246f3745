//! Real, throwaway PostgreSQL clusters and a fault-injection TCP proxy for
//! tests — no mocks.
//!
//! * [`Cluster`] runs a primary and streaming replicas on this machine, on
//!   free ports of `127.0.0.1`, in a temporary directory that is deleted
//!   (servers stopped) when the cluster is dropped. It can stop, restart and
//!   promote nodes, pause replay on replicas, run SQL through `psql`, and wait
//!   for the replicas to catch up.
//! * [`FaultProxy`] sits between a client and a server and can add latency,
//!   black-hole traffic, refuse connections or reset them, switched at run
//!   time with a [`Fault`].
//! * [`Flavour`] chooses the role the nodes' connection strings log in as:
//!   the superuser, or a least-privilege role (no superuser, no
//!   `pg_read_all_stats`), and [`Cluster::shadow_function`] makes a built-in
//!   raise a managed platform's SQLSTATE for one role.
//! * [`PgBouncer`] runs PgBouncer in transaction pooling mode in front of a
//!   node; [`ClusterBuilder::pooler`] (or `PGROUTER_TESTKIT_POOLER=pgbouncer`
//!   through [`Pooler::from_env`]) fronts every node of a cluster with one.
//!   Tests that need it start with [`PgBouncer::installed_or_skip`]: skipped
//!   where `pgbouncer` is not installed, failed there under
//!   `PGROUTER_PGBOUNCER_TESTS=require`.
//!
//! * [`Backend`] chooses where the servers run: on this machine (the
//!   default), or, with the `docker` feature, one container per node on a
//!   private Docker network ([`Backend::Docker`], see the `docker` module),
//!   which adds faults only a container runtime has: a killed host, a frozen
//!   one (`docker pause`), a partition (`docker network disconnect`).
//!
//! The local backend needs the PostgreSQL server binaries (`initdb`, `pg_ctl`,
//! `pg_basebackup`, `psql`), e.g. from `apt-get install postgresql`; set
//! `PGROUTER_PG_BINDIR` if they are somewhere unusual. Run as root, the servers
//! run as the `postgres` user. A primary with two replicas starts in about a
//! second.
//!
//! Cluster directories go under `/dev/shm` when it has at least 1 GiB free
//! (much faster than a disk), else under `/tmp`; set `PGROUTER_TESTKIT_DIR` to
//! pick another (short: it also holds the Unix sockets). Dropping a [`Cluster`]
//! stops its servers and deletes its directory, also when a test panics. If
//! the test process is killed before that, the next cluster started in the
//! same place stops and deletes the abandoned one.
//!
//! # Example
//!
//! A service's own test: write on the primary, read on a replica, then see
//! how the client copes with a dead network path.
//!
//! ```no_run
//! use std::time::Duration;
//! use pgrouter_testkit::{Cluster, Fault, FaultProxy};
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn reads_from_a_replica() -> Result<(), Box<dyn std::error::Error>> {
//!     // Primary (node 0) and two streaming replicas (nodes 1 and 2).
//!     let cluster = Cluster::start(2)?;
//!
//!     let (client, connection) = cluster
//!         .primary()
//!         .pg_config()
//!         .connect(tokio_postgres::NoTls)
//!         .await?;
//!     tokio::spawn(connection);
//!     client.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)").await?;
//!
//!     cluster.wait_for_replicas(Duration::from_secs(10))?;
//!     assert_eq!(cluster.psql(1, "SELECT count(*) FROM t")?, "1");
//!
//!     // Put a fault-injection proxy in front of replica 1.
//!     let proxy = FaultProxy::start(cluster.node(1).addr()).await?;
//!     let (replica, connection) = tokio_postgres::Config::new()
//!         .host("127.0.0.1")
//!         .port(proxy.port())
//!         .user("postgres")
//!         .dbname("postgres")
//!         .connect(tokio_postgres::NoTls)
//!         .await?;
//!     tokio::spawn(connection);
//!
//!     proxy.set(Fault::BlackHole);
//!     let query = replica.simple_query("SELECT 1");
//!     assert!(tokio::time::timeout(Duration::from_millis(300), query).await.is_err());
//!     Ok(())
//!     // Dropping `proxy` and `cluster` closes the connections, stops the
//!     // servers and deletes their data.
//! }
//! # fn main() {}
//! ```
// Lints: the workspace's `[workspace.lints]` table; no unsafe code here.
#![forbid(unsafe_code)]

mod aurora;
mod backend;
mod binaries;
mod builder;
mod cluster;
#[cfg(feature = "docker")]
pub mod docker;
mod error;
mod node;
mod pgbouncer;
mod proxy;
mod roles;
mod skip;
mod tls;

pub use backend::{Backend, BACKEND_ENV};
pub use cluster::{Cluster, ClusterBuilder, LocalNode, StopMode};
pub use error::TestkitError;
pub use pgbouncer::{PgBouncer, Pooler, PGBOUNCER_ENV, PGBOUNCER_REQUIRE_ENV, POOLER_ENV};
pub use proxy::{Fault, FaultProxy};
pub use roles::{Flavour, APP_USER, FLAVOUR_ENV};
