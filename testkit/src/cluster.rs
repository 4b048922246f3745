//! Throwaway local clusters: one primary and streaming replicas.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binaries::{self, file_len, PgBin};
pub use crate::node::LocalNode;
use crate::node::{DBNAME, HOST, USER};
use crate::TestkitError;

/// Seconds `pg_ctl` waits for a start, stop or promotion.
const PG_CTL_TIMEOUT: &str = "30";
/// How long cluster start-up waits for a replica to stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Cluster::pause_replay`] waits for replay to pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between polls.
const POLL: Duration = Duration::from_millis(20);
/// Fresh ports tried when a node cannot bind its port.
const PORT_ATTEMPTS: usize = 5;

/// Settings appended to every node's `postgresql.conf` (before the builder's).
const BASE_CONF: &str = "
# ---- added by pgrouter-testkit ----
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
hot_standby = on
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
wal_keep_size = 256MB
logging_collector = off
wal_writer_delay = 10ms
";

/// `pg_hba.conf` of every node: trust everything local.
const HBA_CONF: &str = "\
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
";

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

/// Configures and starts a [`Cluster`]; get one from [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    replicas: usize,
    bindir: Option<PathBuf>,
    settings: Vec<(String, String)>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            replicas: 2,
            bindir: None,
            settings: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// The number of streaming replicas next to the primary (default 2).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// The directory holding `initdb`, `pg_ctl`, `pg_basebackup` and `psql`,
    /// instead of discovering it (see [`Cluster`] for the discovery order).
    pub fn bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// An extra `postgresql.conf` setting for all nodes, written as
    /// `name = 'value'` (the value is quoted for you, so pass e.g. `"100ms"`).
    /// It comes after the testkit's defaults, so it overrides them.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Creates the cluster and blocks until the primary accepts connections
    /// and every replica is streaming from it.
    ///
    /// If any step fails, whatever was already started is stopped again.
    pub fn start(self) -> Result<Cluster, TestkitError> {
        let started = Instant::now();
        let bin = PgBin::discover(self.bindir.as_deref())?;
        let dir = tempfile::Builder::new()
            .prefix("pgrouter-")
            .tempdir_in("/tmp")?;
        if let Some((uid, gid)) = bin.owner() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        // Built first so that `Drop` stops nodes if a later step fails.
        let mut cluster = Cluster {
            nodes: Vec::new(),
            bin,
            dir,
        };
        cluster.init_primary(&self.settings)?;
        for index in 1..=self.replicas {
            cluster.add_replica(index)?;
        }
        for index in 1..=self.replicas {
            cluster.wait_streaming(index)?;
        }
        tracing::debug!(dir = %cluster.dir().display(), elapsed = ?started.elapsed(), "test cluster ready");
        Ok(cluster)
    }
}

/// A throwaway PostgreSQL cluster on this machine: a primary (node 0) and
/// streaming replicas (nodes 1..), in a temporary directory under `/tmp`.
///
/// Every node listens on `127.0.0.1` on a free port, with `trust`
/// authentication for user `postgres`, `wal_level = replica`, and durability
/// switched off for speed (`fsync`, `synchronous_commit`, `full_page_writes`
/// off). Methods are blocking: from async code they briefly block a runtime
/// worker, which is fine in tests.
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
    nodes: Vec<LocalNode>,
    bin: PgBin,
    dir: TempDir,
}

impl Cluster {
    /// A builder, to choose the number of replicas, the binaries or settings.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
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
    /// directory; fails if another process took the port in the meantime.
    pub fn start_node(&self, index: usize) -> Result<(), TestkitError> {
        let node = self.checked(index)?;
        self.pg_ctl_start(node.data_dir(), node.log_file())
    }

    /// Promotes replica `index` to a primary (`pg_ctl promote -w`); returns
    /// once it accepts writes. Other replicas keep following their upstream.
    pub fn promote(&self, index: usize) -> Result<(), TestkitError> {
        let node = self.checked(index)?;
        let mut cmd = self.pg_ctl(node, "promote");
        self.run_logged(&mut cmd, node)
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
    /// trimmed output. A failure carries psql's standard error.
    pub fn psql(&self, index: usize, sql: &str) -> Result<String, TestkitError> {
        let node = self.checked(index)?;
        let port = node.port().to_string();
        let mut cmd = self.bin.command("psql");
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
        // A synchronous commit flushes all WAL before it, async commits included.
        self.psql(
            primary,
            "SET synchronous_commit = on; SELECT txid_current()",
        )?;
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
    fn pg_ctl(&self, node: &LocalNode, action: &str) -> Command {
        let mut cmd = self.bin.command("pg_ctl");
        cmd.arg(action).arg("-D").arg(node.data_dir());
        if action != "status" {
            cmd.args(["-w", "-t", PG_CTL_TIMEOUT]);
        }
        cmd
    }

    /// Runs `cmd`, quoting what it added to `node`'s log if it fails.
    fn run_logged(&self, cmd: &mut Command, node: &LocalNode) -> Result<(), TestkitError> {
        let from = file_len(node.log_file());
        binaries::run(cmd, Some((node.log_file(), from))).map(drop)
    }

    fn pg_ctl_start(&self, data: &Path, log: &Path) -> Result<(), TestkitError> {
        let from = file_len(log);
        let mut cmd = self.bin.command("pg_ctl");
        cmd.arg("start").arg("-D").arg(data).arg("-l").arg(log);
        cmd.args(["-w", "-t", PG_CTL_TIMEOUT]);
        binaries::run(&mut cmd, Some((log, from))).map(drop)
    }

    /// Runs `sql` on node `index` until it prints `expected` or time is up.
    fn poll_until(
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

    fn init_primary(&mut self, settings: &[(String, String)]) -> Result<(), TestkitError> {
        let data = self.dir().join("node0");
        let mut cmd = self.bin.command("initdb");
        cmd.arg("-D").arg(&data);
        cmd.args([
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        binaries::run(&mut cmd, None)?;

        let mut conf = BASE_CONF.to_owned();
        let socket_dir = self.dir().display().to_string();
        writeln!(conf, "unix_socket_directories = {}", quote(&socket_dir)).ok();
        for (name, value) in settings {
            writeln!(conf, "{name} = {}", quote(value)).ok();
        }
        append(&data.join("postgresql.conf"), &conf)?;
        // Truncating keeps the file's owner (postgres when we are root).
        std::fs::write(data.join("pg_hba.conf"), HBA_CONF)?;
        self.start_new_node(0, data)
    }

    fn add_replica(&mut self, index: usize) -> Result<(), TestkitError> {
        let data = self.dir().join(format!("node{index}"));
        let primary = self.primary().clone();
        let port = primary.port().to_string();
        let mut cmd = self.bin.command("pg_basebackup");
        cmd.args(["-h", HOST, "-p", &port, "-U", USER, "-D"])
            .arg(&data);
        cmd.args(["-X", "stream", "-R", "--no-sync", "-c", "fast"]);
        self.run_logged(&mut cmd, &primary)?;
        self.start_new_node(index, data)
    }

    /// Gives a fresh node a free port and starts it, retrying with another
    /// port if the chosen one was taken in the meantime.
    fn start_new_node(&mut self, index: usize, data: PathBuf) -> Result<(), TestkitError> {
        let log = self.dir().join(format!("node{index}.log"));
        let conf = data.join("postgresql.conf");
        append(&conf, &format!("cluster_name = 'node{index}'\n"))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            append(&conf, &format!("port = {port}\n"))?;
            let from = file_len(&log);
            match self.pg_ctl_start(&data, &log) {
                Ok(()) => {
                    self.nodes.push(LocalNode::new(index, port, data, log));
                    return Ok(());
                }
                Err(e) => {
                    // A timed-out start may have left a server behind.
                    let mut stop = self.bin.command("pg_ctl");
                    stop.arg("stop")
                        .arg("-D")
                        .arg(&data)
                        .args(["-m", "immediate", "-w"]);
                    let _ = binaries::run(&mut stop, None);
                    let tail = binaries::log_tail(&log, from);
                    let port_taken = tail.contains("could not bind")
                        || tail.contains("could not create any TCP/IP sockets");
                    if !port_taken || attempt >= PORT_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::debug!(port, "port taken, retrying node{index} with another");
                }
            }
        }
    }

    /// Waits until replica `index` is in recovery and streaming.
    fn wait_streaming(&self, index: usize) -> Result<(), TestkitError> {
        let sql = "SELECT pg_is_in_recovery() AND EXISTS \
                   (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')";
        let what = format!("node{index} to stream from the primary");
        self.poll_until(index, sql, "t", STREAM_TIMEOUT, &what)
    }
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

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// `value` as a single-quoted `postgresql.conf` string.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn append(path: &Path, text: &str) -> Result<(), TestkitError> {
    let mut file = OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
