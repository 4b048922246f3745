//! The original sketch's environment variables, for the two-node case.

use super::{Config, NodeConfig, ReadStrategy, Role, StatementMode};
use crate::config::error::ConfigError;

/// The writer's connection string (required).
pub(crate) const PRIMARY_URL: &str = "PRIMARY_DATABASE_URL";
/// The replica's connection string (optional).
pub(crate) const SECONDARY_URL: &str = "SECONDARY_DATABASE_URL";
/// The service's own region (optional).
pub(crate) const LOCAL_REGION: &str = "AWS_REGION";
/// `regional-preferred` | `global-random` | `primary-only` (optional).
pub(crate) const READ_STRATEGY: &str = "DB_READ_STRATEGY";
/// The primary's region (optional; default `primary`).
pub(crate) const PRIMARY_REGION: &str = "PRIMARY_DATABASE_REGION";
/// The replica's region (optional; default: the service's region).
pub(crate) const SECONDARY_REGION: &str = "SECONDARY_DATABASE_REGION";
/// `true`: TLS with certificate verification.
pub(crate) const SSL: &str = "DB_SSL";
/// A PEM file of CA certificates to trust for `DB_SSL` (optional).
pub(crate) const SSL_CA: &str = "DB_SSL_CA";
/// `prepared` | `unnamed`, for every node (optional).
pub(crate) const STATEMENT_MODE: &str = "DB_STATEMENT_MODE";

pub(super) fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let tls_enabled = parse_flag(get(SSL))?;
    let primary_url = get(PRIMARY_URL).ok_or(ConfigError::MissingEnv { var: PRIMARY_URL })?;
    let local_region = get(LOCAL_REGION).unwrap_or_default();
    let primary_region = get(PRIMARY_REGION).unwrap_or_else(|| "primary".to_owned());
    let mut nodes = vec![NodeConfig::new(
        "primary",
        primary_region,
        primary_url,
        Role::Primary,
    )];
    if let Some(url) = get(SECONDARY_URL) {
        let region = get(SECONDARY_REGION)
            .or_else(|| Some(local_region.clone()).filter(|r| !r.is_empty()))
            .unwrap_or_else(|| "secondary".to_owned());
        nodes.push(NodeConfig::new("secondary", region, url, Role::Replica));
    }
    // Name the variable, not `nodes[i].url`, when a URL does not parse.
    for (node, var) in nodes.iter().zip([PRIMARY_URL, SECONDARY_URL]) {
        node.url.parse_checked(var.to_owned(), &node.name)?;
    }
    let mut config = Config::new(nodes);
    config.local_region = local_region;
    config.tls.enabled = tls_enabled;
    config.tls.ca_file = get(SSL_CA).map(Into::into);
    if let Some(name) = get(READ_STRATEGY) {
        config.read_strategy = name.parse::<ReadStrategy>()?;
    }
    if let Some(mode) = get(STATEMENT_MODE) {
        config.statement_mode = parse_statement_mode(&mode)?;
    }
    config.validate()?;
    Ok(config)
}

fn parse_statement_mode(value: &str) -> Result<StatementMode, ConfigError> {
    value.parse().map_err(|_| ConfigError::InvalidValue {
        field: STATEMENT_MODE.to_owned(),
        value: value.to_owned(),
        reason: "expected prepared or unnamed",
    })
}

fn parse_flag(value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::trim) {
        None | Some("false" | "0" | "no" | "off") => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some(other) => Err(ConfigError::InvalidValue {
            field: SSL.to_owned(),
            value: other.to_owned(),
            reason: "expected true or false",
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(|name| map.get(name).cloned())
    }

    #[test]
    fn two_nodes_from_the_original_variables() {
        let config = load(&[
            (PRIMARY_URL, "postgres://app:pw@writer/db"),
            (SECONDARY_URL, "postgres://app:pw@reader/db"),
            (LOCAL_REGION, "eu-west-1"),
            (PRIMARY_REGION, "us-east-1"),
            (READ_STRATEGY, "global-random"),
        ])
        .unwrap();
        assert_eq!(config.nodes.len(), 2);
        assert_eq!(config.nodes[0].role, Role::Primary);
        assert_eq!(config.nodes[0].region, "us-east-1");
        assert_eq!(config.nodes[1].region, "eu-west-1");
        assert_eq!(config.local_region, "eu-west-1");
        assert_eq!(config.read_strategy, ReadStrategy::GlobalRandom);
    }

    #[test]
    fn primary_only_deployments_work() {
        let config = load(&[(PRIMARY_URL, "host=writer")]).unwrap();
        assert_eq!(config.nodes.len(), 1);
        assert_eq!(config.read_strategy, ReadStrategy::RegionalPreferred);
    }

    #[test]
    fn missing_and_bad_values_are_typed() {
        assert!(matches!(
            load(&[]),
            Err(ConfigError::MissingEnv { var }) if var == PRIMARY_URL
        ));
        assert!(matches!(
            load(&[(PRIMARY_URL, "host=w"), (READ_STRATEGY, "nearest-ish")]),
            Err(ConfigError::UnknownStrategy { value }) if value == "nearest-ish"
        ));
        let tls = load(&[
            (PRIMARY_URL, "host=w"),
            (SSL, "true"),
            (SSL_CA, "/etc/ca.pem"),
        ])
        .unwrap();
        assert!(tls.tls.enabled);
        assert_eq!(
            tls.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(matches!(
            load(&[(PRIMARY_URL, "host=w"), (SSL, "maybe")]),
            Err(ConfigError::InvalidValue { .. })
        ));
        let unnamed = load(&[(PRIMARY_URL, "host=w"), (STATEMENT_MODE, "unnamed")]).unwrap();
        assert_eq!(unnamed.statement_mode, StatementMode::Unnamed);
        assert_eq!(
            unnamed.statement_mode_of(&unnamed.nodes[0]),
            StatementMode::Unnamed
        );
        assert!(matches!(
            load(&[(PRIMARY_URL, "host=w"), (STATEMENT_MODE, "named")]),
            Err(ConfigError::InvalidValue { field, value, .. })
                if field == STATEMENT_MODE && value == "named"
        ));
        assert!(matches!(
            load(&[(PRIMARY_URL, "postgres://a:b@h:port/db")]),
            Err(ConfigError::InvalidConnectionString { field, .. }) if field == PRIMARY_URL
        ));
        let bad_secondary = load(&[
            (PRIMARY_URL, "host=w"),
            (SECONDARY_URL, "host=r port=x password=hunter2"),
        ]);
        let Err(error) = bad_secondary else {
            panic!("{bad_secondary:?}")
        };
        let shown = error.to_string();
        assert!(shown.starts_with("SECONDARY_DATABASE_URL"), "{shown}");
        assert!(
            shown.contains("port") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
