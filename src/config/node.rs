//! [`NodeConfig`]: one PostgreSQL server, its [`Role`] and how statements
//! reach it ([`StatementMode`]).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;
use super::pool::MAX_POOL_SIZE;
use super::tls::TlsSettings;
use crate::connect::connstr::ConnectionString;

/// One PostgreSQL server.
///
/// ```
/// use pgrouter::config::{NodeConfig, StatementMode};
/// use pgrouter::Role;
///
/// let node = NodeConfig::new("reader", "eu-west-1", "host=10.1.0.1 user=app", Role::Replica)
///     .with_statement_mode(StatementMode::Unnamed);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NodeConfig {
    /// A unique name, used in logs, errors and
    /// [`Status`](crate::status::Status). Required, not empty.
    pub name: String,
    /// The region the node runs in (e.g. `us-east-1`). Required, not empty;
    /// `unknown` says it is not known, and such a node is never local
    /// (`Config::from_env` gives it to a node whose region it cannot tell).
    pub region: String,
    /// How to connect; the password never reaches logs or `Debug`.
    /// Required.
    pub url: ConnectionString,
    /// The configured role. Default: [`Role::Replica`].
    #[serde(default)]
    pub role: Role,
    /// How statements are sent to this node (set
    /// [`StatementMode::Unnamed`] when it is reached through a
    /// transaction-pooling proxy such as PgBouncer). Default: none (the
    /// config's [`Config::statement_mode`](super::Config::statement_mode)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_mode: Option<StatementMode>,
    /// The most connections this node's pool opens, 1 to 10000, instead of
    /// [`PoolSettings::max_size`](super::PoolSettings::max_size): e.g. more
    /// for the local replica that takes most reads, fewer for a far
    /// region's node that serves only when the local ones cannot. Default:
    /// none (`pool.max_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
}

impl NodeConfig {
    /// A node with this name, region, connection string and role.
    pub fn new(
        name: impl Into<String>,
        region: impl Into<String>,
        url: impl Into<ConnectionString>,
        role: Role,
    ) -> Self {
        Self {
            name: name.into(),
            region: region.into(),
            url: url.into(),
            role,
            statement_mode: None,
            pool_size: None,
        }
    }

    /// This node with its own statement mode (see
    /// [`NodeConfig::statement_mode`]).
    pub fn with_statement_mode(mut self, mode: StatementMode) -> Self {
        self.statement_mode = Some(mode);
        self
    }

    /// This node with its own pool size (see [`NodeConfig::pool_size`]).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// Checks this node, the `index`th of `nodes`: a name, a region, a pool
    /// size deadpool can take, and a connection string that parses and
    /// agrees with `tls`.
    pub(crate) fn validate(&self, index: usize, tls: &TlsSettings) -> Result<(), ConfigError> {
        check::non_empty(format!("nodes[{index}].name"), &self.name)?;
        check::non_empty(format!("nodes[{index}].region"), &self.region)?;
        if let Some(size) = self.pool_size {
            if !(1..=MAX_POOL_SIZE).contains(&size) {
                return Err(ConfigError::InvalidValue {
                    field: format!("nodes[{index}].pool_size"),
                    value: size.to_string(),
                    reason: "must be from 1 to 10000",
                });
            }
        }
        self.url
            .parse_tls(format!("nodes[{index}].url"), &self.name, tls)?;
        Ok(())
    }
}

/// The region of a node whose region is not known: never the service's
/// own, whatever [`Config::local_region`](super::Config::local_region) says.
pub(crate) const UNKNOWN_REGION: &str = "unknown";

/// Whether a node in `region` is local to a service in `local_region`: only
/// when both are known and equal.
pub(crate) fn is_local(region: &str, local_region: &str) -> bool {
    !local_region.is_empty() && region != UNKNOWN_REGION && region == local_region
}

/// Checks the node set: at least one node, each valid, no name twice, and
/// exactly one primary.
pub(crate) fn validate_nodes(nodes: &[NodeConfig], tls: &TlsSettings) -> Result<(), ConfigError> {
    if nodes.is_empty() {
        return Err(ConfigError::NoNodes);
    }
    let mut names = HashSet::new();
    let mut primary: Option<&str> = None;
    for (index, node) in nodes.iter().enumerate() {
        node.validate(index, tls)?;
        if !names.insert(node.name.as_str()) {
            return Err(ConfigError::DuplicateNodeName {
                name: node.name.clone(),
            });
        }
        if node.role == Role::Primary {
            if let Some(first) = primary {
                return Err(ConfigError::MultiplePrimaries {
                    first: first.to_owned(),
                    second: node.name.clone(),
                });
            }
            primary = Some(&node.name);
        }
    }
    primary.map(|_| ()).ok_or(ConfigError::NoPrimary)
}

/// A node's role in replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// The writer: every write and transaction goes here.
    Primary,
    /// A streaming replica: serves reads only.
    #[default]
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// How pgrouter sends statements to a node's server; see
/// [behind a connection pooler](crate::guide::platforms#behind-a-connection-pooler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StatementMode {
    /// Named server-side statements, prepared once per pooled connection
    /// and cached there (deadpool's `prepare_cached`): each later call is
    /// one round trip that sends no SQL text and reuses the server's plan.
    /// Fastest when every connection is a session of its own; breaks
    /// behind a proxy that pools by transaction (PgBouncer's
    /// `pool_mode = transaction`, RDS Proxy), where the next statement
    /// can land on a server connection that never saw the prepare.
    #[default]
    Prepared,
    /// Unnamed statements: each call sends its SQL text, parameter types
    /// and values in one round trip (parse, bind, execute, sync) and leaves
    /// no state on the server, so it is safe behind a transaction-pooling
    /// proxy. The server parses and plans every call. Parameter types are
    /// learnt once per node and statement text inside a transaction block
    /// (which a pooler keeps on one server connection) and cached per node;
    /// statements without parameters (no `$` in their text) need no such
    /// step.
    Unnamed,
}

impl StatementMode {
    /// Every mode, in documentation order.
    pub const ALL: [StatementMode; 2] = [StatementMode::Prepared, StatementMode::Unnamed];

    /// The name used in configuration and `DB_STATEMENT_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementMode::Prepared => "prepared",
            StatementMode::Unnamed => "unnamed",
        }
    }
}

impl fmt::Display for StatementMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatementMode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text.trim())
            .ok_or_else(|| ConfigError::InvalidValue {
                field: "statement_mode".to_owned(),
                value: text.to_owned(),
                reason: "expected prepared or unnamed",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: Role) -> NodeConfig {
        NodeConfig::new(name, "r1", "host=127.0.0.1 user=app", role)
    }

    fn error_of(edit: impl FnOnce(&mut Vec<NodeConfig>)) -> ConfigError {
        let mut nodes = vec![node("a", Role::Primary), node("b", Role::Replica)];
        validate_nodes(&nodes, &TlsSettings::default()).unwrap();
        edit(&mut nodes);
        validate_nodes(&nodes, &TlsSettings::default()).expect_err("nodes should be rejected")
    }

    #[test]
    fn node_set_errors() {
        assert!(matches!(error_of(|n| n.clear()), ConfigError::NoNodes));
        assert!(matches!(
            error_of(|n| n[0].role = Role::Replica),
            ConfigError::NoPrimary
        ));
        let two = error_of(|n| n[1].role = Role::Primary);
        assert!(
            matches!(&two, ConfigError::MultiplePrimaries { first, second } if first == "a" && second == "b")
        );
        let dup = error_of(|n| n[1].name = "a".into());
        assert!(matches!(&dup, ConfigError::DuplicateNodeName { name } if name == "a"));
        let empty = error_of(|n| n[1].region = " ".into());
        assert!(matches!(&empty, ConfigError::EmptyField { field } if field == "nodes[1].region"));
        let empty = error_of(|n| n[0].name = String::new());
        assert!(matches!(&empty, ConfigError::EmptyField { field } if field == "nodes[0].name"));
        for size in [0, 10_001] {
            let bad = error_of(|n| n[1].pool_size = Some(size));
            assert!(
                matches!(&bad, ConfigError::InvalidValue { field, value, .. }
                    if field == "nodes[1].pool_size" && *value == size.to_string()),
                "{bad:?}"
            );
        }
        let mut nodes = vec![
            node("a", Role::Primary),
            node("b", Role::Replica).with_pool_size(64),
        ];
        validate_nodes(&nodes, &TlsSettings::default()).unwrap();
        nodes[0].pool_size = Some(10_000);
        validate_nodes(&nodes, &TlsSettings::default()).unwrap();
    }

    #[test]
    fn an_unparsable_connection_string_names_the_node_not_the_secret() {
        let err = error_of(|n| n[1].url = "postgres://u:s3cret@h:notaport/db".into());
        assert!(matches!(&err, ConfigError::InvalidConnectionString { node, .. } if node == "b"));
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn statement_modes_parse_by_name() {
        for mode in StatementMode::ALL {
            assert_eq!(mode.as_str().parse::<StatementMode>(), Ok(mode));
        }
        let error = "named".parse::<StatementMode>().unwrap_err().to_string();
        assert!(error.starts_with("statement_mode = named"), "{error}");
    }
}
