//! The library API at HEAD: `pgrouter::config::NodeConfig`, hedging and
//! outlier settings.

use pgrouter::config::NodeConfig;
use pgrouter::{Config, DatabaseManager, Role};

use crate::Settings;

/// The manager for these settings; every other setting at its default.
pub(crate) async fn connect(settings: &Settings) -> Result<DatabaseManager, String> {
    let nodes = settings
        .nodes
        .iter()
        .map(|node| {
            let role = if node.primary {
                Role::Primary
            } else {
                Role::Replica
            };
            NodeConfig::new(&node.name, &node.region, node.url.as_str(), role)
        })
        .collect();
    let mut config = Config::new(nodes);
    config.local_region = settings.local_region.clone();
    if let Some(enabled) = settings.hedging {
        config.hedging.enabled = enabled;
    }
    if let Some(enabled) = settings.outliers {
        config.outliers.enabled = enabled;
    }
    DatabaseManager::new(config)
        .await
        .map_err(|error| error.to_string())
}

/// The settings that differ between runs, for the log.
pub(crate) fn describe(db: &DatabaseManager) -> String {
    let config = db.config();
    format!(
        "HEAD API; {} reads, local region {:?}; hedging {}; outlier detection {}; pool {} per node",
        config.read_strategy,
        config.local_region,
        config.hedging.enabled,
        config.outliers.enabled,
        config.pool.max_size
    )
}
