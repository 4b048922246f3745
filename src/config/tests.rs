//! `Config::validate` as a whole: its own rules, the rules across fields,
//! and that it reaches every part's own; serde's defaults.

use super::*;

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

fn field_of(error: ConfigError) -> String {
    match error {
        ConfigError::InvalidValue { field, .. }
        | ConfigError::EmptyField { field }
        | ConfigError::InvalidConnectionString { field, .. } => field,
        ConfigError::InvertedRange { low, .. } => low,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_plain_config_is_valid() {
    valid().validate().unwrap();
}

#[test]
fn only_the_nodes_are_required() {
    let json = r#"{"nodes": [{"name": "a", "region": "r", "url": "host=a", "role": "primary"}]}"#;
    let parsed: Config = serde_json::from_str(json).unwrap();
    let defaults = Config::new(parsed.nodes.clone());
    assert_eq!(parsed.deadline, defaults.deadline);
    assert_eq!(parsed.write_hold, defaults.write_hold);
    assert_eq!(parsed.pool, defaults.pool);
    assert_eq!(parsed.readiness, defaults.readiness);
    let error = serde_json::from_str::<Config>("{}")
        .unwrap_err()
        .to_string();
    assert!(error.contains("nodes"), "{error}");
    let round_trip: Config =
        serde_json::from_str(&serde_json::to_string(&defaults).unwrap()).unwrap();
    assert_eq!(round_trip.deadline, defaults.deadline);
}

#[test]
fn statement_modes_are_set_per_node_or_for_all() {
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
fn zero_values_are_rejected_by_field() {
    type Edit = fn(&mut Config);
    let cases: [(&str, Edit); 2] = [
        ("max_staleness", |c| c.max_staleness = Some(Duration::ZERO)),
        ("deadline", |c| c.deadline = Duration::ZERO),
    ];
    for (name, edit) in cases {
        match error_of(edit) {
            ConfigError::InvalidValue { field, .. } => assert_eq!(field, name),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}

/// `Config::validate` reaches every part's own rules.
#[test]
fn every_part_is_checked() {
    type Edit = fn(&mut Config);
    let cases: [(&str, Edit); 11] = [
        ("nodes[1].region", |c| c.nodes[1].region = " ".into()),
        ("nearest.preferred_regions[0]", |c| {
            c.nearest.preferred_regions = vec![String::new()]
        }),
        ("pool.max_size", |c| c.pool.max_size = 0),
        ("nodes[0].url", |c| {
            // Each node's URL is checked against `tls`.
            c.nodes[0].url = "host=a sslmode=disable".into();
            c.tls.enabled = true;
        }),
        ("health.rise", |c| c.health.rise = 0),
        ("retry.min_delay", |c| c.retry.min_delay = Duration::ZERO),
        ("hedging.budget_burst", |c| c.hedging.budget_burst = 0),
        ("outliers.silence", |c| c.outliers.silence = Duration::ZERO),
        ("outcomes.marker_table", |c| {
            c.outcomes.marker_table = Some("a b".into())
        }),
        ("readiness.window", |c| c.readiness.window = Duration::ZERO),
        ("discovery.region", |c| {
            let mut discovery = DiscoverySettings::new("?.abc.rds.amazonaws.com");
            discovery.region = Some(" ".into());
            c.discovery = Some(discovery);
        }),
    ];
    for (field, edit) in cases {
        assert_eq!(field_of(error_of(edit)), field);
    }
}

#[test]
fn discovery_leaves_room_for_the_configured_nodes() {
    let with = |max_nodes| {
        let mut config = valid();
        let mut discovery = DiscoverySettings::new("?.abc.rds.amazonaws.com");
        discovery.max_nodes = max_nodes;
        config.discovery = Some(discovery);
        config.validate()
    };
    // 62 discovered beside 2 configured fill the 64 routing bits.
    with(62).unwrap();
    assert_eq!(field_of(with(63).unwrap_err()), "discovery.max_nodes");
}
