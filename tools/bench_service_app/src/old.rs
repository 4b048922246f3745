//! The library API at 37aa5ce: `pgrouter::NodeConfig` at the crate root,
//! no hedging and no outlier detection.

use pgrouter::{Config, DatabaseManager, NodeConfig, Role};

use crate::Settings;

/// The manager for these settings; every other setting at its default.
pub(crate) async fn connect(settings: &Settings) -> Result<DatabaseManager, String> {
    if settings.hedging.is_some() || settings.outliers.is_some() || !settings.set.is_empty() {
        return Err("SERVICE_HEDGING, SERVICE_OUTLIERS, SERVICE_SET: HEAD's build only".to_owned());
    }
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
    DatabaseManager::new(config)
        .await
        .map_err(|error| error.to_string())
}

/// The settings that differ between runs, for the log.
pub(crate) fn describe(db: &DatabaseManager) -> String {
    let config = db.config();
    format!(
        "37aa5ce API; {:?} reads, local region {:?}; no hedging, no outlier detection; pool {} per node",
        config.read_strategy, config.local_region, config.pool.max_size
    )
}

/// `37aa5ce` counts no hedges.
pub(crate) fn counters(_db: &DatabaseManager) -> Option<String> {
    None
}
