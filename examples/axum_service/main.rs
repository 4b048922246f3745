//! A small real service over pgrouter: CRUD on items, `/health` for
//! liveness, `/health/ready` for readiness, errors answered with the HTTP
//! status pgrouter suggests, the serving node in `x-served-by`, and
//! read-your-writes across requests (and instances) through
//! `pgrouter::causal::CausalLayer`.
//!
//! ```text
//! cargo run --example axum_service                 # starts a local cluster
//! PRIMARY_DATABASE_URL=… SECONDARY_DATABASE_URL=… AWS_REGION=… \
//!     cargo run --example axum_service             # your own nodes
//! curl -si localhost:3000/health/ready
//! curl -si -X POST localhost:3000/items -H 'content-type: application/json' \
//!     -d '{"name":"apple","qty":3}'
//! ```
//!
//! Listens on `LISTEN_ADDR` (default `127.0.0.1:3000`). Without
//! `PRIMARY_DATABASE_URL` it starts a local primary and two replicas
//! (pgrouter-testkit; needs the PostgreSQL server binaries) and stops them
//! on exit.
//!
//! Stops as Kubernetes expects: on SIGTERM, readiness turns not ready at
//! once, requests are still served for `SHUTDOWN_DELAY_SECONDS` (default 5)
//! while the pod leaves its Service's endpoints, then the listener stops
//! accepting, the requests in flight finish (axum's graceful shutdown), and
//! `db.close()` lets any database call still in flight finish within
//! `Config::close_timeout` before it closes the pools. Ctrl-C does the same
//! without the delay.

mod app;

use std::net::SocketAddr;
use std::time::Duration;

use pgrouter::Config;

use pgrouter::DatabaseManager;

use pgrouter::config::NodeConfig;

use pgrouter::Role;
use pgrouter_testkit::Cluster;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pgrouter=info,axum_service=debug".into()),
        )
        .init();
    let (config, cluster) = config()?;
    let db = DatabaseManager::new(config).await?;
    app::migrate(&db).await?;
    let addr: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving; SIGTERM or ctrl-c stops");
    app::serve_until(listener, db, true, stop_signal(shutdown_delay()?)).await?;
    drop(cluster);
    Ok(())
}

/// `SHUTDOWN_DELAY_SECONDS`: how long a pod told to stop keeps serving
/// while not ready (default 5 s: Kubernetes removes a terminating pod from
/// its Service's endpoints at the same time as it sends SIGTERM, and load
/// balancers and kube-proxy take a few seconds to stop sending to it).
fn shutdown_delay() -> Result<Duration, Box<dyn std::error::Error>> {
    match std::env::var("SHUTDOWN_DELAY_SECONDS") {
        Ok(seconds) => Ok(Duration::from_secs(seconds.trim().parse().map_err(
            |error| format!("SHUTDOWN_DELAY_SECONDS={seconds:?}: {error}"),
        )?)),
        Err(_) => Ok(Duration::from_secs(5)),
    }
}

/// Resolves when the pod is told to stop, with how long to keep serving
/// while not ready: `delay` after SIGTERM (what Kubernetes sends), none
/// after ctrl-c.
async fn stop_signal(delay: Duration) -> Duration {
    let terminated = async {
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; ctrl-c only");
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = terminated => delay,
        _ = tokio::signal::ctrl_c() => Duration::ZERO,
    }
}

/// The environment's nodes ([`Config::from_env`]), or a local cluster's.
fn config() -> Result<(Config, Option<Cluster>), Box<dyn std::error::Error>> {
    if std::env::var_os("PRIMARY_DATABASE_URL").is_some() {
        return Ok((Config::from_env()?, None));
    }
    tracing::info!("PRIMARY_DATABASE_URL is not set: starting a local primary and two replicas");
    let cluster = Cluster::builder().replicas(2).start()?;
    let regions = ["us-east-1", "eu-west-1", "ap-south-1"];
    let nodes = cluster
        .nodes()
        .iter()
        .zip(regions)
        .enumerate()
        .map(|(index, (node, region))| {
            let role = if index == 0 {
                Role::Primary
            } else {
                Role::Replica
            };
            let url = format!(
                "host=127.0.0.1 port={} user={} dbname={}",
                node.port(),
                node.client_user(),
                node.dbname()
            );
            NodeConfig::new(node.name(), region, url, role)
        })
        .collect();
    let mut config = Config::new(nodes);
    config.local_region = "eu-west-1".to_owned();
    Ok((config, Some(cluster)))
}
