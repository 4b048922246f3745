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
    let config = set(config, &settings.set)?;
    DatabaseManager::new(config)
        .await
        .map_err(|error| error.to_string())
}

/// `config` with `SERVICE_SET`'s `field.path=value` pairs applied through
/// its serde form (a value that parses as JSON is taken as such, any
/// other as a string: `outcomes.resolve=false health.interval=5s`).
fn set(config: Config, pairs: &[(String, String)]) -> Result<Config, String> {
    if pairs.is_empty() {
        return Ok(config);
    }
    let mut tree = serde_json::to_value(&config).map_err(|error| error.to_string())?;
    for (path, value) in pairs {
        let mut at = &mut tree;
        for key in path.split('.') {
            at = at
                .get_mut(key)
                .ok_or_else(|| format!("SERVICE_SET: no setting {path:?}"))?;
        }
        *at = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.clone()));
    }
    let mut changed: Config =
        serde_json::from_value(tree).map_err(|error| format!("SERVICE_SET: {error}"))?;
    changed.password_provider = config.password_provider;
    Ok(changed)
}

/// The settings that differ between runs, for the log.
pub(crate) fn describe(db: &DatabaseManager) -> String {
    let config = db.config();
    format!(
        "HEAD API; {} reads, local region {:?}; hedging {}; outlier detection {}; \
         resolving lost COMMITs {}; health probes every {:?}; pool {} per node",
        config.read_strategy,
        config.local_region,
        config.hedging.enabled,
        config.outliers.enabled,
        config.outcomes.resolve,
        config.health.interval,
        config.pool.max_size
    )
}

/// The hedging counters so far, for the log (every 5 s while the service
/// runs: the hedges a window sent are the difference of two lines).
pub(crate) fn counters(db: &DatabaseManager) -> Option<String> {
    let hedging = db.status().hedging;
    Some(format!(
        "hedges sent {} won {} refused {}; outliers {}; connections kept {} discarded {}",
        hedging.sent,
        hedging.won,
        hedging.refused,
        hedging.outliers,
        hedging.connections_kept,
        hedging.connections_discarded
    ))
}
