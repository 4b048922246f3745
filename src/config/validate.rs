//! `Config::validate`: every rule, each with a typed error naming the field.

use std::collections::HashSet;
use std::time::Duration;

use super::{Config, Role};
use crate::config::error::ConfigError;
use crate::topology::discovery::HostPattern;

/// The shortest gap between two probes of a node.
const MIN_PROBE_GAP: Duration = Duration::from_millis(1);
/// The largest `TCP_KEEPIDLE` Linux accepts.
const MAX_KEEPALIVE_IDLE: Duration = Duration::from_secs(32_767);
/// The largest `TCP_USER_TIMEOUT` Linux accepts (`i32::MAX` ms).
const MAX_TCP_USER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// Connections per node: deadpool sets aside a slot for each up front.
const MAX_POOL_SIZE: usize = 10_000;

pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_nodes(config)?;
    validate_durations(config)?;
    validate_outcomes(config)?;
    validate_discovery(config)?;
    validate_readiness(config)?;
    validate_hedging(config)?;
    validate_counts(config)
}

fn validate_readiness(config: &Config) -> Result<(), ConfigError> {
    let readiness = &config.readiness;
    if readiness.window.is_zero() {
        return Err(invalid(
            "readiness.window",
            readiness.window,
            "must be greater than zero",
        ));
    }
    let ratio = readiness.max_failure_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(ConfigError::InvalidValue {
            field: "readiness.max_failure_ratio".to_owned(),
            value: ratio.to_string(),
            reason: "must be between 0 and 1",
        });
    }
    Ok(())
}

/// Configured and discovered nodes together: one word of routing bits.
const MAX_NODES_WITH_DISCOVERY: usize = 64;

fn validate_discovery(config: &Config) -> Result<(), ConfigError> {
    let Some(discovery) = &config.discovery else {
        return Ok(());
    };
    HostPattern::parse(
        "discovery.instance_host_pattern",
        &discovery.instance_host_pattern,
    )?;
    let room = MAX_NODES_WITH_DISCOVERY.saturating_sub(config.nodes.len());
    if discovery.max_nodes == 0 || discovery.max_nodes > room {
        return Err(ConfigError::InvalidValue {
            field: "discovery.max_nodes".to_owned(),
            value: discovery.max_nodes.to_string(),
            reason: "must be from 1 to 64 less the configured nodes",
        });
    }
    if discovery.removal_grace.is_zero() {
        return Err(invalid(
            "discovery.removal_grace",
            discovery.removal_grace,
            "must be greater than zero",
        ));
    }
    if let Some(region) = &discovery.region {
        require_non_empty("discovery.region".to_owned(), region)?;
    }
    Ok(())
}

fn validate_nodes(config: &Config) -> Result<(), ConfigError> {
    if config.nodes.is_empty() {
        return Err(ConfigError::NoNodes);
    }
    let mut names = HashSet::new();
    let mut primary: Option<&str> = None;
    for (index, node) in config.nodes.iter().enumerate() {
        require_non_empty(format!("nodes[{index}].name"), &node.name)?;
        require_non_empty(format!("nodes[{index}].region"), &node.region)?;
        if !names.insert(node.name.as_str()) {
            return Err(ConfigError::DuplicateNodeName {
                name: node.name.clone(),
            });
        }
        node.url
            .parse_tls(format!("nodes[{index}].url"), &node.name, &config.tls)?;
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

fn require_non_empty(field: String, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::EmptyField { field });
    }
    Ok(())
}

fn validate_durations(config: &Config) -> Result<(), ConfigError> {
    let pool = &config.pool;
    let health = &config.health;
    let retry = &config.retry;
    for (field, value) in [
        ("deadline", config.deadline),
        ("pool.wait_timeout", pool.wait_timeout),
        ("pool.create_timeout", pool.create_timeout),
        ("pool.recycle_timeout", pool.recycle_timeout),
        ("pool.connect_timeout", pool.connect_timeout),
        ("pool.keepalive_idle", pool.keepalive_idle),
        ("pool.tcp_user_timeout", pool.tcp_user_timeout),
        ("health.interval", health.interval),
        ("health.probe_timeout", health.probe_timeout),
        ("health.recovery_initial", health.recovery_initial),
        ("health.recovery_max", health.recovery_max),
        (
            "health.failover_probe_interval",
            health.failover_probe_interval,
        ),
        ("retry.min_delay", retry.min_delay),
        ("retry.max_delay", retry.max_delay),
    ] {
        if value.is_zero() {
            return Err(invalid(field, value, "must be greater than zero"));
        }
    }
    if config.max_staleness.is_some_and(|bound| bound.is_zero()) {
        return Err(invalid(
            "max_staleness",
            Duration::ZERO,
            "must be greater than zero (use the primary-only strategy for no staleness)",
        ));
    }
    // Faster than this, a monitor probing unreachable nodes only burns CPU.
    for (field, value) in [
        ("health.interval", health.interval),
        ("health.recovery_initial", health.recovery_initial),
        (
            "health.failover_probe_interval",
            health.failover_probe_interval,
        ),
    ] {
        if value < MIN_PROBE_GAP {
            return Err(invalid(field, value, "must be at least 1ms"));
        }
    }
    // The kernel's own limits: outside them every connection fails (EINVAL).
    if !(Duration::from_secs(1)..=MAX_KEEPALIVE_IDLE).contains(&pool.keepalive_idle) {
        return Err(invalid(
            "pool.keepalive_idle",
            pool.keepalive_idle,
            "must be from 1s to 32767s (TCP_KEEPIDLE takes whole seconds up to 32767)",
        ));
    }
    if pool.tcp_user_timeout > MAX_TCP_USER_TIMEOUT {
        return Err(invalid(
            "pool.tcp_user_timeout",
            pool.tcp_user_timeout,
            "must be at most 2147483647ms (TCP_USER_TIMEOUT is a signed 32-bit count of ms)",
        ));
    }
    for (index, region) in config.nearest.preferred_regions.iter().enumerate() {
        require_non_empty(format!("nearest.preferred_regions[{index}]"), region)?;
    }
    require_ordered(
        ("health.recovery_initial", health.recovery_initial),
        ("health.recovery_max", health.recovery_max),
    )?;
    require_ordered(
        ("retry.min_delay", retry.min_delay),
        ("retry.max_delay", retry.max_delay),
    )
}

fn validate_hedging(config: &Config) -> Result<(), ConfigError> {
    let (hedging, outliers) = (&config.hedging, &config.outliers);
    for (field, value) in [
        ("hedging.min_delay", Some(hedging.min_delay)),
        ("hedging.delay", hedging.delay),
        ("outliers.silence", Some(outliers.silence)),
    ] {
        if value.is_some_and(|value| value.is_zero()) {
            return Err(invalid(field, Duration::ZERO, "must be greater than zero"));
        }
    }
    if hedging.budget_percent > 100 {
        return Err(ConfigError::InvalidValue {
            field: "hedging.budget_percent".to_owned(),
            value: hedging.budget_percent.to_string(),
            reason: "must be from 0 to 100",
        });
    }
    if hedging.budget_burst == 0 {
        return Err(ConfigError::InvalidValue {
            field: "hedging.budget_burst".to_owned(),
            value: "0".to_owned(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

/// The shortest marker retention: markers must outlive every resolution.
const MIN_MARKER_RETENTION: Duration = Duration::from_secs(60);

fn validate_outcomes(config: &Config) -> Result<(), ConfigError> {
    let outcomes = &config.outcomes;
    if outcomes.marker_retention < MIN_MARKER_RETENTION {
        return Err(invalid(
            "outcomes.marker_retention",
            outcomes.marker_retention,
            "must be at least 1min",
        ));
    }
    if let Some(table) = &outcomes.marker_table {
        if !is_table_name(table) {
            return Err(ConfigError::InvalidValue {
                field: "outcomes.marker_table".to_owned(),
                value: format!("{table:?}"),
                reason: "must be `name` or `schema.name`, each an unquoted SQL identifier \
                         (a letter or _, then letters, digits or _; at most 63 bytes)",
            });
        }
    }
    Ok(())
}

/// `name` or `schema.name`, plain identifiers: safe to write into SQL as is.
fn is_table_name(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut bytes = part.bytes();
        part.len() <= 63
            && bytes
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match name.split_once('.') {
        Some((schema, table)) => identifier(schema) && identifier(table),
        None => identifier(name),
    }
}

fn require_ordered(low: (&str, Duration), high: (&str, Duration)) -> Result<(), ConfigError> {
    if low.1 > high.1 {
        return Err(ConfigError::InvertedRange {
            low: low.0.to_owned(),
            low_value: low.1,
            high: high.0.to_owned(),
            high_value: high.1,
        });
    }
    Ok(())
}

fn validate_counts(config: &Config) -> Result<(), ConfigError> {
    if config.pool.max_size > MAX_POOL_SIZE {
        return Err(ConfigError::InvalidValue {
            field: "pool.max_size".to_owned(),
            value: config.pool.max_size.to_string(),
            reason: "must be at most 10000 (deadpool sets aside a slot per connection up front)",
        });
    }
    for (field, value) in [
        ("pool.max_size", config.pool.max_size as u64),
        ("health.fall", u64::from(config.health.fall)),
        ("health.rise", u64::from(config.health.rise)),
    ] {
        if value == 0 {
            return Err(ConfigError::InvalidValue {
                field: field.to_owned(),
                value: "0".to_owned(),
                reason: "must be at least 1",
            });
        }
    }
    Ok(())
}

fn invalid(field: &str, value: Duration, reason: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        field: field.to_owned(),
        value: format!("{value:?}"),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{DiscoverySettings, NodeConfig};

    fn node(name: &str, role: Role) -> NodeConfig {
        NodeConfig::new(name, "r1", "host=127.0.0.1 user=app", role)
    }

    fn valid() -> Config {
        Config::new(vec![node("a", Role::Primary), node("b", Role::Replica)])
    }

    fn error_of(edit: impl FnOnce(&mut Config)) -> ConfigError {
        let mut config = valid();
        edit(&mut config);
        config.validate().expect_err("config should be rejected")
    }

    #[test]
    fn a_plain_config_is_valid() {
        valid().validate().unwrap();
    }

    #[test]
    fn statement_modes_are_set_per_node_or_for_all() {
        use crate::config::StatementMode;
        let json = r#"{"statement_mode": "unnamed", "nodes": [
            {"name": "a", "region": "r", "url": "host=a", "role": "primary"},
            {"name": "b", "region": "r", "url": "host=b", "statement_mode": "prepared"}]}"#;
        let config: Config = serde_json::from_str(json).unwrap();
        config.validate().unwrap();
        let modes: Vec<_> = config
            .nodes
            .iter()
            .map(|node| config.statement_mode_of(node))
            .collect();
        assert_eq!(modes, [StatementMode::Unnamed, StatementMode::Prepared]);
        assert_eq!(
            valid().statement_mode_of(&valid().nodes[0]),
            StatementMode::Prepared
        );
        let bad = r#"{"nodes": [{"name": "a", "region": "r", "url": "host=a",
            "statement_mode": "named"}]}"#;
        let error = serde_json::from_str::<Config>(bad).unwrap_err().to_string();
        assert!(
            error.contains("prepared") && error.contains("unnamed"),
            "{error}"
        );
        let error = "named".parse::<StatementMode>().unwrap_err().to_string();
        assert!(error.starts_with("statement_mode = named"), "{error}");
    }

    #[test]
    fn readiness_errors_name_the_field() {
        type Edit = fn(&mut Config);
        let cases: [Edit; 4] = [
            |c| c.readiness.window = Duration::ZERO,
            |c| c.readiness.max_failure_ratio = -0.1,
            |c| c.readiness.max_failure_ratio = 1.5,
            |c| c.readiness.max_failure_ratio = f64::NAN,
        ];
        for edit in cases {
            match error_of(edit) {
                ConfigError::InvalidValue { field, .. } => {
                    assert!(field.starts_with("readiness."), "{field}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn discovery_errors_name_the_field() {
        let with = |edit: fn(&mut DiscoverySettings)| {
            move |c: &mut Config| {
                let mut discovery = DiscoverySettings::new("?.abc.rds.amazonaws.com");
                edit(&mut discovery);
                c.discovery = Some(discovery);
            }
        };
        let mut ok = valid();
        with(|_| {})(&mut ok);
        ok.validate().unwrap();
        let field_of = |error: ConfigError| match error {
            ConfigError::InvalidValue { field, .. } | ConfigError::EmptyField { field } => field,
            other => panic!("{other:?}"),
        };
        type Edit = fn(&mut DiscoverySettings);
        let cases: [(Edit, &str); 6] = [
            (
                |d| d.instance_host_pattern = "abc.rds.amazonaws.com".into(),
                "discovery.instance_host_pattern",
            ),
            (
                |d| d.instance_host_pattern = "?.?.amazonaws.com".into(),
                "discovery.instance_host_pattern",
            ),
            (|d| d.max_nodes = 0, "discovery.max_nodes"),
            (|d| d.max_nodes = 63, "discovery.max_nodes"),
            (
                |d| d.removal_grace = Duration::ZERO,
                "discovery.removal_grace",
            ),
            (|d| d.region = Some(" ".into()), "discovery.region"),
        ];
        for (edit, field) in cases {
            assert_eq!(field_of(error_of(with(edit))), field);
        }
        // 62 discovered beside 2 configured fill the 64 routing bits.
        let mut full = valid();
        with(|d| d.max_nodes = 62)(&mut full);
        full.validate().unwrap();
    }

    #[test]
    fn node_set_errors() {
        assert!(matches!(
            error_of(|c| c.nodes.clear()),
            ConfigError::NoNodes
        ));
        assert!(matches!(
            error_of(|c| c.nodes[0].role = Role::Replica),
            ConfigError::NoPrimary
        ));
        let two = error_of(|c| c.nodes[1].role = Role::Primary);
        assert!(
            matches!(&two, ConfigError::MultiplePrimaries { first, second } if first == "a" && second == "b")
        );
        let dup = error_of(|c| c.nodes[1].name = "a".into());
        assert!(matches!(&dup, ConfigError::DuplicateNodeName { name } if name == "a"));
        let empty = error_of(|c| c.nodes[1].region = " ".into());
        assert!(matches!(&empty, ConfigError::EmptyField { field } if field == "nodes[1].region"));
        let empty = error_of(|c| c.nodes[0].name = String::new());
        assert!(matches!(&empty, ConfigError::EmptyField { field } if field == "nodes[0].name"));
    }

    #[test]
    fn bad_hedging_and_outlier_settings_name_the_field() {
        let field_of = |error: ConfigError| match error {
            ConfigError::InvalidValue { field, .. } => field,
            other => panic!("{other:?}"),
        };
        for (field, edit) in [
            (
                "hedging.min_delay",
                (|c| c.hedging.min_delay = Duration::ZERO) as fn(&mut Config),
            ),
            ("hedging.delay", |c| c.hedging.delay = Some(Duration::ZERO)),
            ("outliers.silence", |c| c.outliers.silence = Duration::ZERO),
            ("hedging.budget_percent", |c| c.hedging.budget_percent = 101),
            ("hedging.budget_burst", |c| c.hedging.budget_burst = 0),
        ] {
            assert_eq!(field_of(error_of(edit)), field);
        }
        let mut extremes = valid();
        extremes.hedging.delay = Some(Duration::MAX);
        extremes.hedging.budget_percent = 100;
        extremes.hedging.budget_per_second = u32::MAX;
        extremes.hedging.budget_burst = u32::MAX;
        extremes.outliers.silence = Duration::MAX;
        extremes.validate().unwrap();
    }

    #[test]
    fn an_unparsable_connection_string_names_the_node_not_the_secret() {
        let err = error_of(|c| c.nodes[1].url = "postgres://u:s3cret@h:notaport/db".into());
        assert!(matches!(&err, ConfigError::InvalidConnectionString { node, .. } if node == "b"));
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn zero_values_are_rejected_by_field() {
        type Edit = fn(&mut Config);
        let cases: [(&str, Edit); 9] = [
            ("max_staleness", |c| c.max_staleness = Some(Duration::ZERO)),
            ("deadline", |c| c.deadline = Duration::ZERO),
            ("pool.max_size", |c| c.pool.max_size = 0),
            ("pool.wait_timeout", |c| {
                c.pool.wait_timeout = Duration::ZERO
            }),
            ("pool.recycle_timeout", |c| {
                c.pool.recycle_timeout = Duration::ZERO
            }),
            ("health.interval", |c| c.health.interval = Duration::ZERO),
            ("health.probe_timeout", |c| {
                c.health.probe_timeout = Duration::ZERO
            }),
            ("health.rise", |c| c.health.rise = 0),
            ("retry.min_delay", |c| c.retry.min_delay = Duration::ZERO),
        ];
        for (name, edit) in cases {
            match error_of(edit) {
                ConfigError::InvalidValue { field, .. } => assert_eq!(field, name),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn values_the_kernel_or_deadpool_cannot_take_are_rejected_by_field() {
        type Edit = fn(&mut Config);
        let cases: [(&str, Edit); 5] = [
            ("pool.keepalive_idle", |c| {
                c.pool.keepalive_idle = Duration::from_millis(999)
            }),
            ("pool.keepalive_idle", |c| {
                c.pool.keepalive_idle = Duration::from_secs(32_768)
            }),
            ("pool.tcp_user_timeout", |c| {
                c.pool.tcp_user_timeout = Duration::from_millis(1 << 31)
            }),
            ("pool.max_size", |c| c.pool.max_size = 10_001),
            ("pool.max_size", |c| c.pool.max_size = u32::MAX as usize),
        ];
        for (name, edit) in cases {
            match error_of(edit) {
                ConfigError::InvalidValue { field, .. } => assert_eq!(field, name),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
        let mut edge = valid();
        edge.pool.keepalive_idle = Duration::from_secs(32_767);
        edge.pool.tcp_user_timeout = Duration::from_millis(i32::MAX as u64);
        edge.pool.max_size = 10_000;
        edge.validate().unwrap();
    }

    #[test]
    fn inverted_ranges_are_rejected() {
        let err = error_of(|c| c.retry.min_delay = Duration::from_secs(10));
        assert!(matches!(&err, ConfigError::InvertedRange { low, .. } if low == "retry.min_delay"));
        let err = error_of(|c| c.health.recovery_initial = Duration::from_secs(60));
        assert!(
            matches!(&err, ConfigError::InvertedRange { high, .. } if high == "health.recovery_max")
        );
    }

    #[test]
    fn marker_tables_are_plain_identifiers() {
        for good in ["pgrouter_outcomes", "ops.outcomes", "_x1", &"a".repeat(63)] {
            let mut config = valid();
            config.outcomes.marker_table = Some(good.to_owned());
            config.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "1table",
            "a.b.c",
            "x; DROP TABLE users",
            "\"quoted\"",
            "a.",
            ".b",
            "caf\u{e9}",
            &"a".repeat(64),
        ] {
            let err = error_of(|c| c.outcomes.marker_table = Some(bad.to_owned()));
            assert!(
                matches!(&err, ConfigError::InvalidValue { field, .. } if field == "outcomes.marker_table"),
                "{bad}: {err}"
            );
        }
        let err = error_of(|c| c.outcomes.marker_retention = Duration::from_secs(59));
        assert!(
            matches!(&err, ConfigError::InvalidValue { field, .. } if field == "outcomes.marker_retention")
        );
    }
}
