//! The original sketch's environment variables, for the two-node case.
//!
//! Regions: a node is local only when its region is *known* to be the
//! service's (`AWS_REGION`). A node's region comes from its `*_REGION`
//! variable, else from its host when that is an RDS or Aurora endpoint
//! (`….us-east-1.rds.amazonaws.com` names its region), else it is
//! [`UNKNOWN_REGION`], which is never local. What is missing is a startup
//! warning naming the variable to set, never a guess.

use super::node::UNKNOWN_REGION;
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
/// The primary's region (optional; default: its RDS endpoint's, else unknown).
pub(crate) const PRIMARY_REGION: &str = "PRIMARY_DATABASE_REGION";
/// The replica's region (optional; default: its RDS endpoint's, else unknown).
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
    let mut nodes = vec![NodeConfig::new(
        "primary",
        UNKNOWN_REGION,
        primary_url,
        Role::Primary,
    )];
    if let Some(url) = get(SECONDARY_URL) {
        nodes.push(NodeConfig::new(
            "secondary",
            UNKNOWN_REGION,
            url,
            Role::Replica,
        ));
    }
    // Name the variable, not `nodes[i].url`, when a URL does not parse.
    let sources = [
        (PRIMARY_URL, PRIMARY_REGION),
        (SECONDARY_URL, SECONDARY_REGION),
    ];
    for (node, (url_var, region_var)) in nodes.iter_mut().zip(sources) {
        let parsed = node.url.parse_checked(url_var.to_owned(), &node.name)?;
        node.region = get(region_var)
            .map(|region| region.trim().to_owned())
            .or_else(|| endpoint_region(&parsed))
            .unwrap_or_else(|| UNKNOWN_REGION.to_owned());
    }
    let mut config = Config::new(nodes);
    config.local_region = get(LOCAL_REGION)
        .map(|region| region.trim().to_owned())
        .unwrap_or_default();
    config.tls.enabled = tls_enabled;
    config.tls.ca_file = get(SSL_CA).map(Into::into);
    if let Some(name) = get(READ_STRATEGY) {
        config.read_strategy = name.parse::<ReadStrategy>()?;
    }
    if let Some(mode) = get(STATEMENT_MODE) {
        config.statement_mode = parse_statement_mode(&mode)?;
    }
    config.validate()?;
    for gap in region_gaps(&config) {
        tracing::warn!(variable = gap.variable(), "{gap}");
    }
    Ok(config)
}

/// The region an RDS, Aurora or RDS Proxy endpoint names
/// (`name.id.us-east-1.rds.amazonaws.com`, also `.amazonaws.com.cn`); not
/// a global writer endpoint (`….global.rds.amazonaws.com`), which follows
/// the writer from region to region. In lower case, as AWS names regions
/// (DNS names are not case-sensitive).
fn endpoint_region(pg: &tokio_postgres::Config) -> Option<String> {
    use tokio_postgres::config::Host;
    let Some(Host::Tcp(host)) = pg.get_hosts().first() else {
        return None;
    };
    let host = host.trim_end_matches('.');
    let labels: Vec<&str> = host.split('.').collect();
    let rds = labels
        .iter()
        .rposition(|label| label.eq_ignore_ascii_case("rds"))?;
    let suffix = &labels[rds..];
    let aws = suffix.len() >= 3
        && suffix[1].eq_ignore_ascii_case("amazonaws")
        && suffix[2].eq_ignore_ascii_case("com")
        && suffix[3..]
            .iter()
            .all(|label| label.eq_ignore_ascii_case("cn"))
        && suffix.len() <= 4;
    let region = *labels.get(rds.checked_sub(1)?)?;
    let shaped = region.contains('-') && region.ends_with(|c: char| c.is_ascii_digit());
    (aws && shaped).then(|| region.to_ascii_lowercase())
}

/// Region information the environment left out, where it matters: a
/// regional-preferred configuration with a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegionGap {
    /// `AWS_REGION` is not set: no node is local.
    Service,
    /// The node's region is unknown: it is never local.
    Node {
        node: String,
        variable: &'static str,
    },
}

impl RegionGap {
    /// The variable that fills the gap.
    pub(crate) fn variable(&self) -> &'static str {
        match self {
            RegionGap::Service => LOCAL_REGION,
            RegionGap::Node { variable, .. } => variable,
        }
    }
}

impl std::fmt::Display for RegionGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionGap::Service => write!(
                f,
                "{LOCAL_REGION} is not set: no node is local, so regional-preferred reads go to \
                 any healthy node, in any region; set it to the region this service runs in"
            ),
            RegionGap::Node { node, variable } => write!(
                f,
                "the {node} node's region is unknown (set {variable}; its host is not an RDS \
                 endpoint that names one): it is never local, so a service in its region \
                 reads from the other node too"
            ),
        }
    }
}

/// What is missing for regional-preferred to read locally, from the
/// configuration [`from_env`] built. Nothing when there is one node (every
/// read goes to it) or the strategy ignores regions.
pub(crate) fn region_gaps(config: &Config) -> Vec<RegionGap> {
    if config.nodes.len() < 2 || config.read_strategy != ReadStrategy::RegionalPreferred {
        return Vec::new();
    }
    let mut gaps = Vec::new();
    if config.local_region.is_empty() {
        gaps.push(RegionGap::Service);
    }
    let variables = [PRIMARY_REGION, SECONDARY_REGION];
    for (node, variable) in config.nodes.iter().zip(variables) {
        if node.region == UNKNOWN_REGION {
            gaps.push(RegionGap::Node {
                node: node.name.clone(),
                variable,
            });
        }
    }
    gaps
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
        // Not the service's region by default: nothing says it is.
        assert_eq!(config.nodes[1].region, UNKNOWN_REGION);
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

    mod regions {
        use std::collections::BTreeSet;

        use super::*;
        use crate::config::node::is_local;
        use crate::routing::strategy::pick_read;
        use crate::routing::strategy::tests::FixedView;

        const WRITER: &str = "postgres://app:pw@writer.internal/orders";
        const READER: &str = "postgres://app:pw@reader.internal/orders";

        /// The nodes regional-preferred reads from, both nodes healthy, for
        /// the configuration these variables give.
        fn reads_from(vars: &[(&str, &str)]) -> BTreeSet<String> {
            let config = load(vars).unwrap();
            let view = FixedView(
                config
                    .nodes
                    .iter()
                    .map(|node| {
                        let local = is_local(&node.region, &config.local_region);
                        (true, local, node.role == Role::Primary)
                    })
                    .collect(),
                Vec::new(),
                0,
            );
            let mut rng = fastrand::Rng::with_seed(6);
            (0..200)
                .filter_map(|_| pick_read(config.read_strategy, &view, None, &mut rng))
                .map(|index| config.nodes[index].name.clone())
                .collect()
        }

        fn names(nodes: &[&str]) -> BTreeSet<String> {
            nodes.iter().map(|name| (*name).to_owned()).collect()
        }

        fn gaps(vars: &[(&str, &str)]) -> Vec<&'static str> {
            let config = load(vars).unwrap();
            region_gaps(&config)
                .iter()
                .map(RegionGap::variable)
                .collect()
        }

        #[test]
        fn three_pods_each_read_from_the_node_a_user_expects() {
            let deployment = [
                (PRIMARY_URL, WRITER),
                (SECONDARY_URL, READER),
                (PRIMARY_REGION, "us-east-1"),
                (SECONDARY_REGION, "eu-west-1"),
            ];
            let pod = |region| {
                let mut vars = deployment.to_vec();
                vars.push((LOCAL_REGION, region));
                vars
            };
            // In the primary's region: the primary, never the replica
            // across the ocean.
            assert_eq!(reads_from(&pod("us-east-1")), names(&["primary"]));
            // In the replica's region: the replica.
            assert_eq!(reads_from(&pod("eu-west-1")), names(&["secondary"]));
            // In a third region: no node is local, so either (the hub
            // warns at start that none is local).
            assert_eq!(
                reads_from(&pod("ap-south-1")),
                names(&["primary", "secondary"])
            );
            for region in ["us-east-1", "eu-west-1", "ap-south-1"] {
                assert_eq!(gaps(&pod(region)), [""; 0], "{region}");
            }
        }

        #[test]
        fn a_replica_of_unknown_region_is_never_taken_for_local() {
            // The old default made the secondary's region the service's:
            // a pod in the primary's region read across the ocean.
            let vars = [
                (PRIMARY_URL, WRITER),
                (SECONDARY_URL, READER),
                (PRIMARY_REGION, "us-east-1"),
                (LOCAL_REGION, "us-east-1"),
            ];
            assert_eq!(reads_from(&vars), names(&["primary"]));
            assert_eq!(gaps(&vars), [SECONDARY_REGION]);
            // In another region nothing is local, and the gap is named.
            let vars = [
                (PRIMARY_URL, WRITER),
                (SECONDARY_URL, READER),
                (PRIMARY_REGION, "us-east-1"),
                (LOCAL_REGION, "eu-west-1"),
            ];
            assert_eq!(reads_from(&vars), names(&["primary", "secondary"]));
            assert_eq!(gaps(&vars), [SECONDARY_REGION]);
        }

        #[test]
        fn missing_regions_are_warnings_naming_each_variable() {
            let vars = [(PRIMARY_URL, WRITER), (SECONDARY_URL, READER)];
            assert_eq!(
                gaps(&vars),
                [LOCAL_REGION, PRIMARY_REGION, SECONDARY_REGION]
            );
            assert_eq!(reads_from(&vars), names(&["primary", "secondary"]));
            let config = load(&vars).unwrap();
            for gap in region_gaps(&config) {
                let text = gap.to_string();
                assert!(text.contains(gap.variable()), "{text}");
            }
            // The service's region is never assumed, nor a node's taken
            // from it.
            assert_eq!(config.local_region, "");
            assert!(config.nodes.iter().all(|n| n.region == UNKNOWN_REGION));
            // "unknown" is not a region a service can be local to.
            let vars = [
                (PRIMARY_URL, WRITER),
                (SECONDARY_URL, READER),
                (LOCAL_REGION, UNKNOWN_REGION),
            ];
            assert_eq!(reads_from(&vars), names(&["primary", "secondary"]));
        }

        #[test]
        fn no_warning_where_regions_cannot_matter() {
            // One node: every read goes to it.
            assert!(gaps(&[(PRIMARY_URL, WRITER)]).is_empty());
            // Strategies that ignore regions.
            for strategy in ["global-random", "primary-only", "nearest"] {
                let vars = [
                    (PRIMARY_URL, WRITER),
                    (SECONDARY_URL, READER),
                    (READ_STRATEGY, strategy),
                ];
                assert!(gaps(&vars).is_empty(), "{strategy}");
            }
        }

        #[test]
        fn an_rds_endpoint_names_its_region() {
            let vars = [
                (
                    PRIMARY_URL,
                    "postgres://app@orders.cluster-abc123.us-east-1.rds.amazonaws.com/orders",
                ),
                (
                    SECONDARY_URL,
                    "host=orders-eu.cluster-ro-def456.eu-west-1.rds.amazonaws.com user=app",
                ),
                (LOCAL_REGION, "us-east-1"),
            ];
            let config = load(&vars).unwrap();
            assert_eq!(config.nodes[0].region, "us-east-1");
            assert_eq!(config.nodes[1].region, "eu-west-1");
            assert_eq!(reads_from(&vars), names(&["primary"]));
            assert!(gaps(&vars).is_empty());
            // A variable wins over the endpoint.
            let mut with_var = vars.to_vec();
            with_var.push((SECONDARY_REGION, "us-east-1"));
            assert_eq!(reads_from(&with_var), names(&["primary", "secondary"]));

            for (host, region) in [
                ("db.abc.cn-north-1.rds.amazonaws.com.cn", Some("cn-north-1")),
                (
                    "proxy.proxy-abc.eu-central-1.rds.amazonaws.com.",
                    Some("eu-central-1"),
                ),
                ("DB.ABC.US-WEST-2.RDS.AMAZONAWS.COM", Some("us-west-2")),
                ("orders.global-abc.global.rds.amazonaws.com", None),
                ("rds.amazonaws.com", None),
                ("db.us-east-1.rds.example.com", None),
                ("db.internal", None),
                ("10.0.0.1", None),
            ] {
                let pg: tokio_postgres::Config = format!("host={host} user=app").parse().unwrap();
                assert_eq!(endpoint_region(&pg).as_deref(), region, "{host}");
            }
            let socket: tokio_postgres::Config = "host=/run/postgresql".parse().unwrap();
            assert_eq!(endpoint_region(&socket), None);
        }
    }
}
