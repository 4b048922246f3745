//! Throwaway local clusters: one primary and streaming replicas.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binaries::{self, file_len, PgBin};
pub use crate::builder::ClusterBuilder;
pub use crate::node::LocalNode;
use crate::node::{DBNAME, HOST, USER};
use crate::{Flavour, TestkitError};

/// Seconds `pg_ctl` waits for a start, stop or promotion.
const PG_CTL_TIMEOUT: &str = "30";
/// How long [`Cluster::pause_replay`] waits for replay to pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between polls.
const POLL: Duration = Duration::from_millis(20);
/// Retries of [`Cluster::start_node`] while its port is taken.
const PORT_RETRIES: usize = 10;
/// Pause between those retries.
const PORT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How [`Cluster::stop`] shuts a node down (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// `-m immediate`: like a crash; no checkpoint, clients are cut off.
    Immediate,
    /// `-m fast`: clients are disconnected, then a clean shutdown.
    Fast,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Immediate => "immediate",
            StopMode::Fast => "fast",
        }
    }
}

/// A throwaway PostgreSQL cluster on this machine: a primary (node 0) and
/// streaming replicas (nodes 1..), in a temporary directory (under `/dev/shm`
/// when it has room, else `/tmp`; `PGROUTER_TESTKIT_DIR` overrides).
///
/// Every node listens on `127.0.0.1` on a free port, with `trust`
/// authentication for user `postgres`, `wal_level = replica`, the `C` locale,
/// and durability switched off for speed (`fsync`, `synchronous_commit`,
/// `full_page_writes` off; `wal_writer_delay = 10ms` keeps replication lag of
/// asynchronous commits short). Each node's `cluster_name` is its
/// [`LocalNode::name`]. Methods are blocking: from async code they briefly
/// block a runtime worker, which is fine in tests.
///
/// The server binaries are looked for in: [`ClusterBuilder::bindir`], the
/// `PGROUTER_PG_BINDIR` environment variable, `pg_config --bindir`, `initdb` on
/// `PATH`, and the newest `/usr/lib/postgresql/*/bin`. When run as root, they
/// run as the `postgres` user through `runuser`.
///
/// Dropping the cluster stops every node (`-m immediate`) and deletes the
/// directory, also when a test panics.
#[derive(Debug)]
pub struct Cluster {
    pub(crate) nodes: Vec<LocalNode>,
    pub(crate) bin: PgBin,
    pub(crate) dir: TempDir,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) flavour: Flavour,
    /// One per node when the cluster was built with a pooler.
    pub(crate) poolers: Vec<crate::PgBouncer>,
}

impl Cluster {
    /// A builder, to choose the number of replicas, the binaries or settings.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A client certificate and its key (PEM files, the key mode 0600) for
    /// `user` (`postgres` or [`APP_USER`](crate::APP_USER)), signed by
    /// [`Cluster::ca_file`]'s CA with `user` as its common name, as
    /// `pg_hba.conf`'s `cert` method wants; `None` without
    /// [`ClusterBuilder::tls`] or for another user.
    pub fn client_certificate(&self, user: &str) -> Option<(PathBuf, PathBuf)> {
        self.ca_file.as_ref()?;
        crate::tls::CLIENT_USERS
            .contains(&user)
            .then(|| crate::tls::client_files(self.dir(), user))
    }

    /// The role its connection strings log in as (see [`Flavour`]).
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The CA certificate (PEM) that signed the servers' certificates, when
    /// the cluster was built with [`ClusterBuilder::tls`].
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Shorthand: a primary and `replicas` streaming replicas, started and
    /// ready (replicas streaming).
    pub fn start(replicas: usize) -> Result<Cluster, TestkitError> {
        Self::builder().replicas(replicas).start()
    }

    /// All nodes: index 0 is the initial primary, 1.. the replicas.
    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    /// The node at `index`.
    ///
    /// # Panics
    ///
    /// Panics if `index` is out of range; see [`Cluster::get`] for a
    /// non-panicking variant.
    pub fn node(&self, index: usize) -> &LocalNode {
        match self.nodes.get(index) {
            Some(node) => node,
            None => panic!("no node {index} in a cluster of {} nodes", self.nodes.len()),
        }
    }

    /// The node at `index`, or `None` if it is out of range.
    pub fn get(&self, index: usize) -> Option<&LocalNode> {
        self.nodes.get(index)
    }

    /// The initial primary, node 0 (even after another node was promoted).
    pub fn primary(&self) -> &LocalNode {
        &self.nodes[0]
    }

    /// The cluster's temporary directory (data directories and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops node `index` with `pg_ctl stop -m immediate|fast -w`.
    pub fn stop(&self, index: usize, mode: StopMode) -> Result<(), TestkitError> {
        let node = self.checked(index)?;
        let mut cmd = self.pg_ctl(node, "stop");
        cmd.args(["-m", mode.as_arg()]);
        self.run_logged(&mut cmd, node)
    }

    /// Starts node `index` again (`pg_ctl start -w`) on the same port and data
    /// directory. If another process holds the port, it retries for about two
    /// seconds before failing.
    pub fn start_node(&self, index: usize) -> Result<(), TestkitError> {
        let node = self.checked(index)?;
        let mut attempt = 0;
        loop {
            let from = file_len(node.log_file());
            match self.pg_ctl_start(node.data_dir(), node.log_file()) {
                Err(_) if attempt < PORT_RETRIES && port_taken(node.log_file(), from) => {
                    attempt += 1;
                    std::thread::sleep(PORT_RETRY_DELAY);
                }
                result => return result,
            }
        }
    }

    /// Promotes replica `index` to a primary (`pg_ctl promote -w`); returns
    /// once it accepts writes. Other replicas keep following their upstream.
    pub fn promote(&self, index: usize) -> Result<(), TestkitError> {
        let node = self.checked(index)?;
        let mut cmd = self.pg_ctl(node, "promote");
        self.run_logged(&mut cmd, node)
    }

    /// Makes node `index` a fresh streaming replica of node `upstream`, on
    /// the same port: stops it if it runs, replaces its data directory with
    /// a base backup of `upstream` (`pg_basebackup -R`) and starts it, then
    /// waits until it streams. This is how an old primary rejoins after a
    /// failover (a real deployment would use `pg_rewind` or its operator's
    /// re-clone), so that a cluster can go through many promotions.
    pub fn rejoin(&self, index: usize, upstream: usize) -> Result<(), TestkitError> {
        let node = self.checked(index)?.clone();
        let source = self.checked(upstream)?.clone();
        if self.is_running(index) {
            self.stop(index, StopMode::Immediate)?;
        }
        std::fs::remove_dir_all(node.data_dir())?;
        let port = source.port().to_string();
        let mut cmd = self.bin.command("pg_basebackup");
        cmd.args(["-h", HOST, "-p", &port, "-U", USER, "-D"])
            .arg(node.data_dir());
        cmd.args(["-X", "stream", "-R", "--no-sync", "-c", "fast"]);
        self.run_logged(&mut cmd, &source)?;
        let conf = node.data_dir().join("postgresql.conf");
        let mut settings = std::fs::OpenOptions::new().append(true).open(&conf)?;
        std::io::Write::write_all(
            &mut settings,
            format!("cluster_name = 'node{index}'\nport = {}\n", node.port()).as_bytes(),
        )?;
        self.start_node(index)?;
        let sql = "SELECT pg_is_in_recovery() AND EXISTS \
                   (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')";
        let what = format!("node{index} to stream from node{upstream}");
        self.poll_until(index, sql, "t", Duration::from_secs(60), &what)
    }

    /// Pauses WAL replay on replica `index` (`pg_wal_replay_pause()`) and
    /// waits until replay has actually paused: it then misses new writes until
    /// [`Cluster::resume_replay`].
    pub fn pause_replay(&self, index: usize) -> Result<(), TestkitError> {
        self.psql(index, "SELECT pg_wal_replay_pause()")?;
        let what = format!("WAL replay to pause on node{index}");
        self.poll_until(
            index,
            "SELECT pg_get_wal_replay_pause_state()",
            "paused",
            PAUSE_TIMEOUT,
            &what,
        )
    }

    /// Resumes WAL replay on replica `index` (`pg_wal_replay_resume()`).
    pub fn resume_replay(&self, index: usize) -> Result<(), TestkitError> {
        self.psql(index, "SELECT pg_wal_replay_resume()").map(drop)
    }

    /// Runs `sql` on node `index` with `psql -X -A -t` (unaligned, tuples
    /// only: one row per line, columns separated by `|`) and returns its
    /// trimmed output. A failure carries psql's standard error. Connecting
    /// gives up after 10 s; the statement itself has no time limit.
    pub fn psql(&self, index: usize, sql: &str) -> Result<String, TestkitError> {
        let node = self.checked(index)?;
        let port = node.port().to_string();
        let mut cmd = self.bin.command("psql");
        cmd.env("PGCONNECT_TIMEOUT", "10");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", HOST, "-p", &port, "-U", USER, "-d", DBNAME, "-c", sql]);
        binaries::run(&mut cmd, None).map(|out| out.trim().to_owned())
    }

    /// Waits until every running replica has replayed all WAL the primary
    /// has written so far, polling every 20 ms.
    ///
    /// The primary is node 0 if it is running and not in recovery, else the
    /// first running node that is not. Its pending asynchronous commits are
    /// flushed first, so everything committed before the call is covered.
    /// Replicas are the running nodes in recovery; one whose replay is paused
    /// or that follows a stopped primary makes this time out.
    pub fn wait_for_replicas(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        let mut primary = None;
        let mut replicas = Vec::new();
        for index in 0..self.nodes.len() {
            if !self.is_running(index) {
                continue;
            }
            if self.psql(index, "SELECT pg_is_in_recovery()")? == "t" {
                replicas.push(index);
            } else if primary.is_none() {
                primary = Some(index);
            }
        }
        let Some(primary) = primary else {
            return Err(TestkitError::Timeout {
                what: "replicas to catch up: no running primary".to_owned(),
            });
        };
        // A locally synchronous commit flushes all WAL before it, async
        // commits included. If it fails, the next query reports the problem.
        let _ = self.psql(
            primary,
            "SET synchronous_commit = local; SELECT txid_current()",
        );
        let target = self.psql(primary, "SELECT pg_current_wal_lsn()")?;
        let sql = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}', false)");
        for index in replicas {
            let left = deadline.saturating_duration_since(Instant::now());
            let what = format!("node{index} to replay up to {target} of node{primary}");
            self.poll_until(index, &sql, "t", left, &what)?;
        }
        Ok(())
    }

    /// Whether node `index` is running, per `pg_ctl status` (false for an
    /// out-of-range index).
    pub fn is_running(&self, index: usize) -> bool {
        let Some(node) = self.get(index) else {
            return false;
        };
        self.pg_ctl(node, "status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn checked(&self, index: usize) -> Result<&LocalNode, TestkitError> {
        self.get(index).ok_or(TestkitError::NoSuchNode(index))
    }

    /// `pg_ctl <action> -D <data> -w -t 30`.
    pub(crate) fn pg_ctl(&self, node: &LocalNode, action: &str) -> Command {
        let mut cmd = self.bin.command("pg_ctl");
        cmd.arg(action).arg("-D").arg(node.data_dir());
        if action != "status" {
            cmd.args(["-w", "-t", PG_CTL_TIMEOUT]);
        }
        cmd
    }

    /// Runs `cmd`, quoting what it added to `node`'s log if it fails.
    pub(crate) fn run_logged(
        &self,
        cmd: &mut Command,
        node: &LocalNode,
    ) -> Result<(), TestkitError> {
        let from = file_len(node.log_file());
        binaries::run(cmd, Some((node.log_file(), from))).map(drop)
    }

    pub(crate) fn pg_ctl_start(&self, data: &Path, log: &Path) -> Result<(), TestkitError> {
        let from = file_len(log);
        let mut cmd = self.bin.command("pg_ctl");
        cmd.arg("start").arg("-D").arg(data).arg("-l").arg(log);
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT]);
        binaries::run(&mut cmd, Some((log, from))).map(drop)
    }

    /// Runs `sql` on node `index` until it prints `expected` or time is up.
    pub(crate) fn poll_until(
        &self,
        index: usize,
        sql: &str,
        expected: &str,
        timeout: Duration,
        what: &str,
    ) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.psql(index, sql) {
                Ok(out) if out == expected => return Ok(()),
                Ok(out) => format!("last result {out:?}"),
                Err(e) => format!("last error: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::Timeout {
                    what: format!("{what} ({last})"),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Whether what a failed start wrote to `log` from byte `from` on says that
/// the port was taken.
pub(crate) fn port_taken(log: &Path, from: u64) -> bool {
    let tail = binaries::log_tail(log, from);
    tail.contains("could not bind") || tail.contains("could not create any TCP/IP sockets")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop all nodes in parallel; errors (e.g. already stopped) are ignored.
        let children: Vec<Child> = self
            .nodes
            .iter()
            .filter_map(|node| {
                let mut cmd = self.pg_ctl(node, "stop");
                cmd.args(["-m", "immediate"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut child in children {
            let _ = child.wait();
        }
        // The `TempDir` field then removes the directory.
    }
}
