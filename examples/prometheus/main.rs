//! pgrouter's metrics for Prometheus: installs `metrics-exporter-prometheus`
//! with an HTTP listener, builds the manager from the original's
//! environment variables, and serves a little traffic until Ctrl-C.
//!
//! ```text
//! PRIMARY_DATABASE_URL=postgres://app@primary/app \
//! SECONDARY_DATABASE_URL=postgres://app@replica/app \
//! AWS_REGION=eu-west-1 METRICS_ADDR=127.0.0.1:9187 \
//!     cargo run --example prometheus --features metrics
//! curl -s http://127.0.0.1:9187/metrics | grep pgrouter_
//! ```

mod exporter;

use std::net::SocketAddr;
use std::time::Duration;

use pgrouter::DatabaseManager;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9187".to_owned())
        .parse()?;
    // The recorder first: the manager registers its handles with it.
    exporter::install(addr)?;
    let db = DatabaseManager::from_env().await?;
    println!("metrics on http://{addr}/metrics; Ctrl-C stops");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                if let Err(error) = db.query_one("SELECT 1", &[]).await {
                    eprintln!("read failed: {error}");
                }
            }
        }
    }
    db.close().await;
    Ok(())
}
