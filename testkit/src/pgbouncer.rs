//! PgBouncer in transaction pooling mode in front of a node: each
//! transaction (and each statement outside one) may get another server
//! connection, as behind PgBouncer, RDS Proxy or Supavisor in production.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binaries::{log_tail, run_as};
use crate::builder::free_port;
use crate::node::{HOST, USER};
use crate::{TestkitError, APP_USER};

/// Environment variable naming the `pgbouncer` binary, when it is not on
/// `PATH` or in `/usr/sbin`.
pub const PGBOUNCER_ENV: &str = "PGROUTER_PGBOUNCER";

/// Environment variable that puts a pooler in front of every node of the
/// tests' clusters: `pgbouncer` (see [`Pooler::from_env`]).
pub const POOLER_ENV: &str = "PGROUTER_TESTKIT_POOLER";

/// Environment variable that makes [`PgBouncer::installed_or_skip`] fail
/// instead of skipping when `pgbouncer` is missing (`.ci/run` sets it to
/// `require`).
pub const PGBOUNCER_REQUIRE_ENV: &str = "PGROUTER_PGBOUNCER_TESTS";

/// How long PgBouncer may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What stands between clients and each node of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Pooler {
    /// Nothing: clients connect to the servers.
    #[default]
    None,
    /// A [`PgBouncer`] in transaction pooling mode per node.
    PgBouncer,
}

impl Pooler {
    /// The pooler `PGROUTER_TESTKIT_POOLER` names (`pgbouncer`, or `none`);
    /// [`Pooler::None`] when it is unset.
    pub fn from_env() -> Result<Self, TestkitError> {
        match std::env::var(POOLER_ENV).as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("" | "none") => Ok(Self::None),
            Ok("pgbouncer") => Ok(Self::PgBouncer),
            Ok(other) => Err(TestkitError::InvalidArgument {
                what: POOLER_ENV.to_owned(),
                reason: format!("{other:?} is not pgbouncer or none"),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(TestkitError::InvalidArgument {
                what: POOLER_ENV.to_owned(),
                reason: "not unicode".to_owned(),
            }),
        }
    }
}

/// A PgBouncer process (`pool_mode = transaction`, `trust` authentication
/// for `postgres` and [`APP_USER`]) listening on a free port of
/// `127.0.0.1` and forwarding every database to one server. Run as the
/// `postgres` user when we are root (PgBouncer refuses root). Dropping it
/// kills the process and deletes its directory.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl PgBouncer {
    /// Starts PgBouncer in front of the server at `server` and waits until
    /// it listens. PgBouncer 1.18 (Debian 12's) has no prepared statement
    /// support: a named statement prepared through it lives on whichever
    /// server connection took it.
    pub fn start(server: SocketAddr) -> Result<Self, TestkitError> {
        let binary = find_binary()?;
        let owner = run_as()?;
        let dir = tempfile::Builder::new().prefix("pgbouncer").tempdir()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let port = free_port()?;
        std::fs::write(dir.path().join("users.txt"), users())?;
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini, config(server, port, dir.path()))?;
        let mut cmd = Command::new(&binary);
        cmd.arg(&ini)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = owner {
            cmd.gid(gid).uid(uid);
        }
        let child = cmd.spawn()?;
        let mut bouncer = Self { child, port, dir };
        bouncer.wait_listening()?;
        tracing::debug!(port, %server, "pgbouncer ready");
        Ok(bouncer)
    }

    /// The `pgbouncer` binary [`PgBouncer::start`] runs: `PGROUTER_PGBOUNCER`,
    /// else the first on `PATH`, in `/usr/sbin` or in `/usr/local/sbin`.
    pub fn binary() -> Result<PathBuf, TestkitError> {
        find_binary()
    }

    /// For tests that need PgBouncer, first thing: whether it is
    /// installed (see [`PgBouncer::binary`]). When it is not, prints
    /// `skipped: <test>: pgbouncer not installed (set
    /// PGROUTER_PGBOUNCER_TESTS=require to fail instead)` on stderr (past
    /// the test harness's output capture) and returns `false`; the test
    /// returns.
    ///
    /// # Panics
    ///
    /// When it is not installed and `PGROUTER_PGBOUNCER_TESTS` is `require`
    /// (as in CI), so that such tests never pass by skipping.
    pub fn installed_or_skip() -> bool {
        let found = find_binary().map_err(|_| "pgbouncer not installed");
        crate::skip::or_skip(found, PGBOUNCER_REQUIRE_ENV).is_some()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its socket address, `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("pgbouncer.log")
    }

    fn wait_listening(&mut self) -> Result<(), TestkitError> {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                return Err(TestkitError::Command {
                    command: "pgbouncer".to_owned(),
                    status: status.to_string(),
                    stderr: log_tail(&self.log_file(), 0),
                });
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestkitError::Timeout {
            what: format!("pgbouncer to listen on port {}", self.port),
        })
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgbouncer` from `PGROUTER_PGBOUNCER`, `PATH` or `/usr/sbin`.
fn find_binary() -> Result<PathBuf, TestkitError> {
    if let Some(path) = std::env::var_os(PGBOUNCER_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(TestkitError::InvalidArgument {
            what: PGBOUNCER_ENV.to_owned(),
            reason: format!("{} is not a file", path.display()),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| TestkitError::InvalidArgument {
            what: "pgbouncer".to_owned(),
            reason: format!(
                "not found on PATH or in /usr/sbin; install it (`apt-get install pgbouncer`) \
                 or set {PGBOUNCER_ENV}"
            ),
        })
}

/// The auth file: the users the cluster's clients log in as (no password:
/// `auth_type = trust` only needs them listed).
fn users() -> String {
    format!("\"{USER}\" \"\"\n\"{APP_USER}\" \"\"\n")
}

fn config(server: SocketAddr, port: u16, dir: &Path) -> String {
    let mut ini = String::new();
    let dir = dir.display();
    let _ = writeln!(ini, "[databases]");
    let _ = writeln!(ini, "* = host={} port={}", server.ip(), server.port());
    let _ = writeln!(ini, "[pgbouncer]");
    for (name, value) in [
        ("listen_addr", HOST.to_owned()),
        ("listen_port", port.to_string()),
        ("unix_socket_dir", String::new()),
        ("auth_type", "trust".to_owned()),
        ("auth_file", format!("{dir}/users.txt")),
        ("logfile", format!("{dir}/pgbouncer.log")),
        ("pool_mode", "transaction".to_owned()),
        ("max_client_conn", "1000".to_owned()),
        ("default_pool_size", "20".to_owned()),
        // tokio-postgres sends none of these, but other clients do.
        (
            "ignore_startup_parameters",
            "extra_float_digits,options".to_owned(),
        ),
        // Tests stop, restart and promote servers: come back quickly.
        ("server_login_retry", "1".to_owned()),
        ("server_connect_timeout", "2".to_owned()),
        ("query_wait_timeout", "30".to_owned()),
    ] {
        let _ = writeln!(ini, "{name} = {value}");
    }
    ini
}
