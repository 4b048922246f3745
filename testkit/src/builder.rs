//! Building a cluster: `initdb`, configuration, base backups, start-up.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::binaries::{self, file_len, PgBin};
use crate::cluster::port_taken;
use crate::node::{LocalNode, HOST, USER};
use crate::roles::APP_USER;
use crate::{tls, Backend, Cluster, Flavour, PgBouncer, Pooler, TestkitError};

/// Environment variable naming the directory to create clusters in.
const DIR_ENV: &str = "PGROUTER_TESTKIT_DIR";
/// Prefix of cluster directories.
const DIR_PREFIX: &str = "pgrouter-testkit-";
/// File in a cluster directory holding the pid of the process that owns it.
const OWNER_FILE: &str = "owner.pid";
/// Free space `/dev/shm` needs (in KiB) to be used for clusters.
const SHM_MIN_KIB: u64 = 1024 * 1024;
/// `initdb`'s options after the data directory, on either backend.
pub(crate) const INITDB_OPTIONS: [&str; 7] = [
    "-U",
    USER,
    "--auth=trust",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
];
/// How long cluster start-up waits for a replica to stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried when a node cannot bind its port.
const PORT_ATTEMPTS: usize = 5;
/// Lowest port given to a node.
const MIN_PORT: u16 = 10_000;

/// Settings appended to every node's `postgresql.conf` (before the builder's).
pub(crate) const BASE_CONF: &str = "
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

/// Configures and starts a [`Cluster`]; get one from [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    replicas: usize,
    bindir: Option<PathBuf>,
    settings: Vec<(String, String)>,
    tls: bool,
    flavour: Flavour,
    pooler: Pooler,
    backend: Backend,
    image: Option<String>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            replicas: 2,
            bindir: None,
            settings: Vec::new(),
            tls: false,
            flavour: Flavour::Vanilla,
            pooler: Pooler::None,
            backend: Backend::Local,
            image: None,
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

    /// Serve TLS as well as plain connections, with a server certificate for
    /// `127.0.0.1` and `localhost` signed by a throwaway CA; clients trust
    /// [`Cluster::ca_file`]. Default: off.
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// The role connection strings log in as (default
    /// [`Flavour::Vanilla`]); [`Flavour::LeastPrivilege`] creates it.
    pub fn flavour(mut self, flavour: Flavour) -> Self {
        self.flavour = flavour;
        self
    }

    /// Puts a pooler in front of every node: their
    /// [`client_port`](crate::LocalNode::client_port), connection strings
    /// and URLs then lead through it (administration still goes straight to
    /// the servers). Default: [`Pooler::None`].
    pub fn pooler(mut self, pooler: Pooler) -> Self {
        self.pooler = pooler;
        self
    }

    /// Where the servers run (default [`Backend::Local`]; see
    /// [`Backend::from_env`] to let an environment variable choose).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The image of [`Backend::Docker`]'s containers, as `name[:tag]`: any
    /// image with the PostgreSQL server binaries on its `PATH` and a
    /// `postgres` user, such as the official `postgres` image or one built
    /// by `testkit/docker/build.sh`. Default: `$PGROUTER_TEST_IMAGE`, else
    /// `postgres:17`. Ignored by the local backend.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Creates the cluster and blocks until the primary accepts connections
    /// and every replica is streaming from it.
    ///
    /// If any step fails, whatever was already started is stopped again.
    pub fn start(self) -> Result<Cluster, TestkitError> {
        match self.backend {
            Backend::Local => self.start_local(),
            Backend::Docker => self.start_docker(),
        }
    }

    #[cfg(not(feature = "docker"))]
    fn start_docker(self) -> Result<Cluster, TestkitError> {
        Err(TestkitError::Unsupported {
            backend: "docker",
            what: "pgrouter-testkit was built without its `docker` feature".to_owned(),
        })
    }

    #[cfg(feature = "docker")]
    fn start_docker(self) -> Result<Cluster, TestkitError> {
        if self.tls || self.bindir.is_some() || self.flavour == Flavour::Aurora {
            return Err(TestkitError::Unsupported {
                backend: "docker",
                what: "TLS, a bindir or the Aurora flavour".to_owned(),
            });
        }
        let started = Instant::now();
        let image = match self.image {
            Some(image) => image,
            None => std::env::var(crate::docker::IMAGE_ENV)
                .unwrap_or_else(|_| crate::docker::DEFAULT_IMAGE.to_owned()),
        };
        let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir()?;
        let ports = (0..=self.replicas)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>, _>>()?;
        let containers = crate::docker::Containers::start(&image, &ports)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            servers: crate::cluster::Servers::Docker(containers),
            dir,
            ca_file: None,
            flavour: self.flavour,
            poolers: Vec::new(),
        };
        let mut conf = BASE_CONF.to_owned();
        conf.push_str(crate::docker::EXTRA_CONF);
        for (name, value) in &self.settings {
            writeln!(conf, "{name} = {}", quote(value)).ok();
        }
        cluster.docker_init_primary(&conf, ports[0])?;
        if self.flavour == Flavour::LeastPrivilege {
            cluster.create_least_privilege_role(APP_USER)?;
        }
        for (index, &port) in ports.iter().enumerate().skip(1) {
            cluster.docker_add_replica(index, port)?;
        }
        for index in 1..=self.replicas {
            cluster.wait_streaming(index)?;
        }
        cluster.front_with(self.pooler)?;
        tracing::debug!(%image, elapsed = ?started.elapsed(), "test cluster in containers ready");
        Ok(cluster)
    }

    fn start_local(self) -> Result<Cluster, TestkitError> {
        let started = Instant::now();
        let bin = PgBin::discover(self.bindir.as_deref())?;
        let base = base_dir();
        reap_abandoned(&base, &bin);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(&base)?;
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
        if let Some((uid, gid)) = bin.owner() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        // Built first so that `Drop` stops nodes if a later step fails.
        let mut settings = Vec::new();
        let ca_file = match self.tls {
            true => {
                let files = tls::write_certificates(dir.path(), bin.owner())?;
                settings.push(("ssl".to_owned(), "on".to_owned()));
                settings.push(("ssl_cert_file".to_owned(), files.cert.display().to_string()));
                settings.push(("ssl_key_file".to_owned(), files.key.display().to_string()));
                // To check client certificates (pg_hba.conf `cert`).
                settings.push(("ssl_ca_file".to_owned(), files.ca.display().to_string()));
                Some(files.ca)
            }
            false => None,
        };
        if self.flavour == Flavour::Aurora {
            let extensions = crate::aurora::EXTENSIONS.to_owned();
            settings.push(("rds.extensions".to_owned(), extensions));
        }
        settings.extend(self.settings);
        let mut cluster = Cluster {
            nodes: Vec::new(),
            servers: crate::cluster::Servers::Local(bin),
            dir,
            ca_file,
            flavour: self.flavour,
            poolers: Vec::new(),
        };
        cluster.init_primary(&settings)?;
        if matches!(self.flavour, Flavour::LeastPrivilege | Flavour::Aurora) {
            cluster.create_least_privilege_role(APP_USER)?;
        }
        for index in 1..=self.replicas {
            cluster.add_replica(index)?;
        }
        for index in 1..=self.replicas {
            cluster.wait_streaming(index)?;
        }
        if self.flavour == Flavour::Aurora {
            cluster.emulate_aurora()?;
            cluster.wait_for_replicas(STREAM_TIMEOUT)?;
        }
        cluster.front_with(self.pooler)?;
        tracing::debug!(dir = %cluster.dir().display(), elapsed = ?started.elapsed(), "test cluster ready");
        Ok(cluster)
    }
}

/// Set-up steps, run by [`ClusterBuilder::start`].
impl Cluster {
    /// Puts `pooler` (run here, whatever the backend) in front of every
    /// node.
    fn front_with(&mut self, pooler: Pooler) -> Result<(), TestkitError> {
        if pooler == Pooler::PgBouncer {
            for index in 0..self.nodes.len() {
                let bouncer = PgBouncer::start(self.nodes[index].addr())?;
                self.nodes[index].set_pooler_port(bouncer.port());
                self.poolers.push(bouncer);
            }
        }
        Ok(())
    }

    fn init_primary(&mut self, settings: &[(String, String)]) -> Result<(), TestkitError> {
        let data = self.dir().join("node0");
        let mut cmd = self.bin("initdb")?.command("initdb");
        cmd.arg("-D").arg(&data);
        cmd.args(INITDB_OPTIONS);
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
        let mut cmd = self.bin("pg_basebackup")?.command("pg_basebackup");
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
                    let user = self.flavour.client_user();
                    self.nodes
                        .push(LocalNode::new(index, port, data, log, user));
                    return Ok(());
                }
                Err(e) => {
                    // A timed-out start may have left a server behind.
                    let mut stop = self.bin("pg_ctl stop")?.command("pg_ctl");
                    stop.arg("stop")
                        .arg("-D")
                        .arg(&data)
                        .args(["-m", "immediate", "-w"]);
                    let _ = binaries::run(&mut stop, None);
                    if !port_taken(&log, from) || attempt >= PORT_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::debug!(port, "port taken, retrying node{index} with another");
                }
            }
        }
    }

    /// Waits until replica `index` is in recovery and streaming.
    fn wait_streaming(&self, index: usize) -> Result<(), TestkitError> {
        let what = format!("node{index} to stream from the primary");
        self.poll_until(index, crate::cluster::STREAMING, "t", STREAM_TIMEOUT, &what)
    }
}

/// Where cluster directories are created: `$PGROUTER_TESTKIT_DIR` if set,
/// else `/dev/shm` when it has at least 1 GiB free (a RAM disk: creating the
/// ~1000 files of a data directory there is many times faster than on disk),
/// else `/tmp`. Both keep the Unix socket paths short.
fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        return PathBuf::from(dir);
    }
    let shm_free_kib = Command::new("df")
        .args(["-Pk", "/dev/shm"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let fields = text
                .lines()
                .nth(1)?
                .split_whitespace()
                .nth(3)?
                .parse::<u64>();
            fields.ok()
        });
    if shm_free_kib.is_some_and(|kib| kib >= SHM_MIN_KIB) {
        PathBuf::from("/dev/shm")
    } else {
        PathBuf::from("/tmp")
    }
}

/// Stops the servers of, and deletes, cluster directories in `base` whose
/// owning process is gone (killed before `Drop` could run, e.g. by Ctrl-C).
fn reap_abandoned(base: &Path, bin: &PgBin) {
    // Without /proc every owner would look dead.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Ok(pid) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let pid = pid.trim();
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        tracing::info!(dir = %dir.display(), pid, "removing a test cluster whose process is gone");
        let nodes = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        for node in nodes.filter(|node| node.path().join("PG_VERSION").is_file()) {
            let mut stop = bin.command("pg_ctl");
            stop.arg("stop").arg("-D").arg(node.path());
            stop.args(["-m", "immediate", "-w"]);
            let _ = binaries::run(&mut stop, None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Ports [`free_port`] handed out in this process.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port that was free on 127.0.0.1 a moment ago, and that this process
/// never handed out before.
///
/// It is picked at random below the kernel's ephemeral port range when there
/// is room, so that the local ends of outgoing connections (which take
/// ephemeral ports) cannot occupy the port of a stopped node. And never
/// twice in one process: the tests of one binary run side by side, and a
/// node one test stopped keeps its port from the nodes other tests start
/// meanwhile (the stopped node's manager, still probing that port, would
/// otherwise reach another test's cluster).
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    if ephemeral_low > MIN_PORT + 1000 {
        let span = u64::from(ephemeral_low - MIN_PORT);
        for _ in 0..40 {
            let offset = u16::try_from(random() % span).unwrap_or(0);
            let port = MIN_PORT + offset;
            if !handed_out.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            {
                handed_out.insert(port);
                return Ok(port);
            }
        }
    }
    for _ in 0..40 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port left that this process has not handed out",
    )
    .into())
}

/// A random number from the standard library's randomly seeded hasher.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// `value` as a single-quoted `postgresql.conf` string.
pub(crate) fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn append(path: &Path, text: &str) -> Result<(), TestkitError> {
    let mut file = OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::free_port;

    #[test]
    fn a_port_is_handed_out_once_a_process() {
        // Drawn at random from ~22,000 ports, 300 draws would repeat one
        // more than eight times in ten without the record.
        let ports: Vec<u16> = (0..300)
            .map(|_| free_port().expect("a free port"))
            .collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
