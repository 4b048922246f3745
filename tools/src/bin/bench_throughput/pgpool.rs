//! pgpool-II in front of the same cluster, when the `pgpool2` package is
//! installed: a minimal configuration in a temporary directory, run in the
//! foreground (as `postgres` when root), stopped on `Drop`.

use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgrouter::tokio_postgres::NoTls;
use pgrouter_testkit::Cluster;

/// Where the binary is looked for when it is not on `PATH`.
const CANDIDATES: [&str; 2] = ["/usr/sbin/pgpool", "/usr/bin/pgpool"];
/// How long start-up may take before the bench gives up on pgpool.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running pgpool-II; stopped (`-m fast`, then killed) on drop.
#[derive(Debug)]
pub(crate) struct Pgpool {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Some((uid, gid)) when it runs as the cluster's owner through runuser.
    owner: Option<(u32, u32)>,
    child: Child,
}

/// The pgpool binary, if installed.
pub(crate) fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pgpool"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain(CANDIDATES.iter().map(PathBuf::from))
        .find(|path| path.is_file())
}

impl Pgpool {
    /// Starts pgpool in streaming-replication mode with load balancing over
    /// the cluster's nodes (node 0 primary), `children` client slots, and
    /// waits until it answers a query.
    pub(crate) async fn start(
        binary: PathBuf,
        cluster: &Cluster,
        children: usize,
    ) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("pgrouter-bench-pgpool-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let port = free_port()?;
        let pcp_port = free_port()?;
        let conf = config_text(dir.path(), port, pcp_port, cluster, children);
        std::fs::write(dir.path().join("pgpool.conf"), conf).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("pcp.conf"), "").map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("pool_hba.conf"), "").map_err(|e| e.to_string())?;
        let owner = owner_when_root(cluster)?;
        if let Some((uid, gid)) = owner {
            for entry in ["", "pgpool.conf", "pcp.conf", "pool_hba.conf"] {
                chown(dir.path().join(entry), Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        let log = File::create(dir.path().join("pgpool.log")).map_err(|e| e.to_string())?;
        let mut command = command(&binary, dir.path(), owner.is_some());
        command
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?);
        command.stderr(log);
        let child = command.spawn().map_err(|e| format!("spawn pgpool: {e}"))?;
        let pgpool = Self {
            binary,
            dir,
            port,
            owner,
            child,
        };
        pgpool.wait_ready().await?;
        Ok(pgpool)
    }

    /// The port clients connect to on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A config for clients of pgpool.
    pub(crate) fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(3));
        config
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < START_TIMEOUT {
            match self.pg_config().connect(NoTls).await {
                Ok((client, connection)) => {
                    let driver = tokio::spawn(connection);
                    let answered = client.simple_query("SELECT 1").await;
                    drop(client);
                    let _ = driver.await;
                    match answered {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "pgpool did not answer within {START_TIMEOUT:?} ({last}); log: {}",
            self.log_tail()
        ))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("pgpool.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Pgpool {
    fn drop(&mut self) {
        let mut stop = command(&self.binary, self.dir.path(), self.owner.is_some());
        stop.args(["-m", "fast", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgpool -f … -F … -a …`, through `runuser -u postgres --` when root.
fn command(binary: &Path, dir: &Path, as_postgres: bool) -> Command {
    let mut command = if as_postgres {
        let mut runuser = Command::new("runuser");
        runuser.args(["-u", "postgres", "--"]).arg(binary);
        runuser
    } else {
        Command::new(binary)
    };
    command
        .arg("-f")
        .arg(dir.join("pgpool.conf"))
        .arg("-F")
        .arg(dir.join("pcp.conf"))
        .arg("-a")
        .arg(dir.join("pool_hba.conf"));
    command
}

/// When running as root: the uid and gid owning the cluster (`postgres`).
fn owner_when_root(cluster: &Cluster) -> Result<Option<(u32, u32)>, String> {
    let me = std::fs::metadata("/proc/self").map_err(|e| e.to_string())?;
    if me.uid() != 0 {
        return Ok(None);
    }
    let owner = std::fs::metadata(cluster.dir()).map_err(|e| e.to_string())?;
    Ok(Some((owner.uid(), owner.gid())))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    Ok(port)
}

/// A minimal pgpool.conf: streaming replication, load balancing, no health
/// checks, no pool_hba, everything in `dir`.
fn config_text(dir: &Path, port: u16, pcp_port: u16, cluster: &Cluster, children: usize) -> String {
    let dir = dir.display();
    let mut text = format!(
        "backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = {port}
socket_dir = '{dir}'
pcp_listen_addresses = '127.0.0.1'
pcp_port = {pcp_port}
pcp_socket_dir = '{dir}'
pid_file_name = '{dir}/pgpool.pid'
logdir = '{dir}'
wd_ipc_socket_dir = '{dir}'
memqcache_oiddir = '{dir}/oiddir'
enable_pool_hba = off
pool_passwd = ''
num_init_children = {children}
max_pool = 1
child_life_time = 0
load_balance_mode = on
statement_level_load_balance = off
sr_check_period = 0
sr_check_user = 'postgres'
health_check_period = 0
health_check_user = 'postgres'
failover_on_backend_error = off
use_watchdog = off
log_destination = 'stderr'
log_min_messages = warning
"
    );
    for (index, node) in cluster.nodes().iter().enumerate() {
        let _ = write!(
            text,
            "backend_hostname{index} = '127.0.0.1'
backend_port{index} = {port}
backend_weight{index} = 1
backend_flag{index} = 'DISALLOW_TO_FAILOVER'
",
            port = node.port()
        );
    }
    text
}
