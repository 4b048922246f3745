//! The Docker backend: each node is a container on a private Docker network
//! of its own cluster, started with the `testcontainers` crate, in which the
//! same steps as the local backend's run (`initdb`, `pg_basebackup`,
//! `pg_ctl`, `psql`) through `docker exec`, as user `postgres`. Any image
//! with the server binaries and a `postgres` user will do: the binaries are
//! found as `initdb` on the image's `PATH`, `pg_config --bindir`, or the
//! newest `/usr/lib/postgresql/*/bin`. Nothing is pulled if the image is
//! already there; `testkit/docker/build.sh` builds one from Debian packages.
//!
//! A node's container runs `sleep` as its main process, so the server
//! inside can be stopped, promoted and started again while the container
//! stays; the container runtime adds the faults a local cluster cannot
//! have: [`Cluster::kill_container`](crate::Cluster::kill_container),
//! [`Cluster::pause_container`](crate::Cluster::pause_container) and
//! [`Cluster::disconnect`](crate::Cluster::disconnect).
//!
//! Each node's server listens inside its container on the same port number
//! that is published on the host's `127.0.0.1`, so `inet_server_port()`
//! and [`LocalNode::port`](crate::LocalNode::port) agree as on a local
//! cluster, and the published port survives a container restart.

pub mod api;
mod faults;
mod setup;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use testcontainers::bollard::models::{NetworkConnectRequest, NetworkDisconnectRequest};
use testcontainers::core::client::docker_client_instance;
use testcontainers::core::{ContainerPort, ExecCommand};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::TestkitError;

/// Environment variable naming the image of [`ClusterBuilder::image`](crate::ClusterBuilder::image)'s default.
pub const IMAGE_ENV: &str = "PGROUTER_TEST_IMAGE";
/// The image used when neither the builder nor [`IMAGE_ENV`] names one.
pub const DEFAULT_IMAGE: &str = "postgres:17";
/// Environment variable that makes [`image_or_skip`] fail instead of
/// skipping when Docker or the image is missing (`.ci/run` sets it to `require`).
pub const REQUIRE_ENV: &str = "PGROUTER_DOCKER_TESTS";
/// A node's data directory inside its container.
pub(crate) const DATA_DIR: &str = "/var/lib/postgresql/pgrouter";
/// A node's server log inside its container.
pub(crate) const LOG_FILE: &str = "/var/lib/postgresql/pgrouter.log";
/// Settings added after the testkit's defaults in containers: listen on
/// the network, sockets where `postgres` may write.
pub(crate) const EXTRA_CONF: &str = "listen_addresses = '*'\nunix_socket_directories = '/tmp'\n";
/// Seconds a container gets to stop before it is killed, for
/// [`Containers::stop`] (0: at once).
const KILL_TIMEOUT: i32 = 0;

/// Tells clusters of one process apart.
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// The containers of one cluster, their network, and the runtime that
/// drives testcontainers' async API behind the cluster's blocking one.
#[derive(Debug)]
pub(crate) struct Containers {
    /// Always `Some` but in `Drop`, which shuts it down without blocking
    /// (a runtime may not be dropped inside another's async context).
    runtime: Option<tokio::runtime::Runtime>,
    network: String,
    nodes: Vec<Arc<ContainerAsync<GenericImage>>>,
    names: Vec<String>,
    /// Where the image keeps `initdb` and the others.
    bindir: String,
}

/// The programs looked for in the image's binaries directory.
const PG_PROGRAMS: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "psql"];

/// Prints the image's PostgreSQL binaries directory: `initdb` on `PATH`,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
const FIND_BINDIR: &str = r#"d=$(command -v initdb 2>/dev/null) && d=${d%/initdb}
[ -x "$d/initdb" ] || d=$(pg_config --bindir 2>/dev/null)
[ -x "$d/initdb" ] || d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$d/initdb" ] && echo "$d""#;

/// The image to test with (`$PGROUTER_TEST_IMAGE`, else
/// [`DEFAULT_IMAGE`]), if the Docker engine answers and has it. Nothing is
/// pulled: a missing image is reported with how to build one.
pub fn test_image() -> Result<String, TestkitError> {
    let image = std::env::var(IMAGE_ENV).unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
    api::ensure_compatible()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let name = image.clone();
    let found = block(&runtime, move || async move {
        let client = docker_client_instance().await.map_err(|e| e.to_string())?;
        client
            .inspect_image(&name)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    });
    runtime.shutdown_background();
    found?.map_err(|e| {
        docker(format!(
            "image {image:?} not available ({e}); build one with testkit/docker/build.sh \
             and set {IMAGE_ENV}"
        ))
    })?;
    Ok(image)
}

/// For tests that need Docker: [`test_image`], or `None` after printing
/// `skipped: <test>: <why> (set PGROUTER_DOCKER_TESTS=require to fail
/// instead)` on stderr (past the test harness's output capture).
///
/// # Panics
///
/// When Docker or the image is missing and `PGROUTER_DOCKER_TESTS` is
/// `require` (as in CI), so that such tests never pass by skipping.
pub fn image_or_skip() -> Option<String> {
    crate::skip::or_skip(test_image(), REQUIRE_ENV)
}

/// `name[:tag]` split for testcontainers (`latest` when there is no tag).
pub(crate) fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (image.to_owned(), "latest".to_owned()),
    }
}

impl Containers {
    /// Starts one container per port (node `i` publishes `ports[i]`) on a
    /// fresh network, in parallel.
    pub(crate) fn start(image: &str, ports: &[u16]) -> Result<Self, TestkitError> {
        api::ensure_compatible()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pgrouter-testkit-docker")
            .enable_all()
            .build()?;
        let cluster = format!(
            "pgrouter-testkit-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let names: Vec<String> = (0..ports.len())
            .map(|index| format!("{cluster}-node{index}"))
            .collect();
        let (name, tag) = split_image(image);
        let starts: Vec<_> = names
            .iter()
            .zip(ports)
            .map(|(container, &port)| {
                GenericImage::new(name.clone(), tag.clone())
                    .with_entrypoint("sleep")
                    .with_cmd(["infinity"])
                    .with_user("postgres")
                    .with_network(cluster.clone())
                    .with_container_name(container.clone())
                    .with_hostname(container.clone())
                    .with_mapped_port(port, ContainerPort::Tcp(port))
                    .with_label("org.pgrouter.testkit", cluster.clone())
                    .start()
            })
            .collect();
        let started = block(&runtime, move || join_all(starts));
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let mut nodes = Vec::new();
        let mut first_error = None;
        for result in started {
            match result {
                Ok(container) => nodes.push(Arc::new(container)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut containers = Self {
            runtime: Some(runtime),
            network: cluster,
            nodes,
            names,
            bindir: String::new(),
        };
        if let Some(e) = first_error {
            // Dropping `containers` removes those that did start.
            return Err(docker(format!(
                "could not start a container of image {image:?} (build one with \
                 testkit/docker/build.sh, or set {IMAGE_ENV}): {e}"
            )));
        }
        containers.bindir = containers
            .exec(0, &["sh", "-c", FIND_BINDIR], &[])
            .map(|out| out.trim().to_owned())
            .map_err(|e| {
                docker(format!(
                    "no PostgreSQL server binaries (initdb) in image {image:?}: {e}"
                ))
            })?;
        Ok(containers)
    }

    /// The container (and host) name of node `index`, as other nodes reach it.
    pub(crate) fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// Runs `args` in node `index`'s container as `postgres` and returns
    /// its standard output; a non-zero exit is a [`TestkitError::Command`].
    pub(crate) fn exec(
        &self,
        index: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String, TestkitError> {
        let container = self.container(index)?;
        let mut command: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if let Some(program) = command.first_mut() {
            if PG_PROGRAMS.contains(&program.as_str()) && !self.bindir.is_empty() {
                *program = format!("{}/{program}", self.bindir);
            }
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let described = format!("docker exec {} {}", self.names[index], command.join(" "));
        let outcome = self.block(move || async move {
            let mut result = container
                .exec(ExecCommand::new(command).with_env_vars(env))
                .await?;
            let stdout = result.stdout_to_vec().await?;
            let stderr = result.stderr_to_vec().await?;
            let code = result.exit_code().await?;
            Ok::<_, testcontainers::TestcontainersError>((stdout, stderr, code))
        })?;
        let (stdout, stderr, code) = outcome.map_err(|e| docker(format!("{described}: {e}")))?;
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        match code {
            Some(0) => Ok(stdout),
            other => {
                let mut stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
                if stderr.is_empty() {
                    stderr = stdout.trim().to_owned();
                }
                Err(TestkitError::Command {
                    command: described,
                    status: match other {
                        Some(code) => format!("exit status: {code}"),
                        None => "still running".to_owned(),
                    },
                    stderr,
                })
            }
        }
    }

    /// Kills node `index`'s container (every process in it, at once); its
    /// file system stays for [`Containers::start_container`].
    pub(crate) fn kill(&self, index: usize) -> Result<(), TestkitError> {
        let container = self.container(index)?;
        self.run(move || async move { container.stop_with_timeout(Some(KILL_TIMEOUT)).await })
    }

    /// Starts node `index`'s stopped container again (its server is not
    /// started: see [`Cluster::start_container`](crate::Cluster::start_container)).
    pub(crate) fn start_container(&self, index: usize) -> Result<(), TestkitError> {
        let container = self.container(index)?;
        self.run(move || async move { container.start().await })
    }

    /// Freezes (`true`) or thaws (`false`) every process of node `index`'s
    /// container (`docker pause` / `docker unpause`).
    pub(crate) fn pause(&self, index: usize, paused: bool) -> Result<(), TestkitError> {
        let container = self.container(index)?;
        self.run(move || async move {
            match paused {
                true => container.pause().await,
                false => container.unpause().await,
            }
        })
    }

    /// Whether node `index`'s container runs (paused counts as running).
    pub(crate) fn is_running(&self, index: usize) -> bool {
        let Ok(container) = self.container(index) else {
            return false;
        };
        matches!(
            self.block(move || async move { container.is_running().await }),
            Ok(Ok(true))
        )
    }

    /// Takes node `index` off the cluster's network (`connected: false`)
    /// or puts it back.
    pub(crate) fn connect(&self, index: usize, connected: bool) -> Result<(), TestkitError> {
        let id = self.container(index)?.id().to_owned();
        let network = self.network.clone();
        let outcome = self.block(move || async move {
            let client = docker_client_instance().await.map_err(|e| e.to_string())?;
            let result = match connected {
                true => {
                    let request = NetworkConnectRequest {
                        container: id,
                        ..Default::default()
                    };
                    client.connect_network(&network, request).await
                }
                false => {
                    let request = NetworkDisconnectRequest {
                        container: id,
                        force: Some(true),
                    };
                    client.disconnect_network(&network, request).await
                }
            };
            result.map_err(|e| e.to_string())
        })?;
        outcome.map_err(docker)
    }

    fn container(&self, index: usize) -> Result<Arc<ContainerAsync<GenericImage>>, TestkitError> {
        self.nodes
            .get(index)
            .cloned()
            .ok_or(TestkitError::NoSuchNode(index))
    }

    fn run<F>(&self, make: impl FnOnce() -> F + Send) -> Result<(), TestkitError>
    where
        F: Future<Output = testcontainers::core::error::Result<()>>,
    {
        self.block(make)?.map_err(|e| docker(e.to_string()))
    }

    fn block<T: Send, F: Future<Output = T>>(
        &self,
        make: impl FnOnce() -> F + Send,
    ) -> Result<T, TestkitError> {
        match &self.runtime {
            Some(runtime) => block(runtime, make),
            None => Err(docker("the cluster's containers are gone".to_owned())),
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        let _ = self.block(move || async move {
            let removals = nodes
                .into_iter()
                .filter_map(|node| Arc::try_unwrap(node).ok())
                .map(|node| node.rm());
            join_all(removals).await;
        });
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs the future `make` returns on `runtime` and waits for it from any
/// thread, inside an async context or not: a scoped thread of its own
/// blocks on it (the future need not be `Send`; the caller's thread just
/// blocks).
fn block<T, F>(
    runtime: &tokio::runtime::Runtime,
    make: impl FnOnce() -> F + Send,
) -> Result<T, TestkitError>
where
    F: Future<Output = T>,
    T: Send,
{
    std::thread::scope(|scope| scope.spawn(|| runtime.block_on(make())).join())
        .map_err(|_| docker("a Docker request panicked".to_owned()))
}

/// Runs every future as its own task (so they make progress together) and
/// returns their outputs in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        match task.await {
            Ok(output) => outputs.push(output),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    outputs
}

pub(crate) fn docker(reason: String) -> TestkitError {
    TestkitError::Docker { reason }
}
