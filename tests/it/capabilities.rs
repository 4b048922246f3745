//! The probe degrades per capability, on a real cluster: each optional
//! function failing with each SQLSTATE a managed platform or a
//! least-privilege role answers keeps every node healthy, with exactly the
//! right capability off (and shown in status).

use std::time::Duration;

use crate::support::*;
use pgrouter::config::NodeConfig;
use pgrouter::status::Capability;
use pgrouter::status::Status;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter::Role;
use pgrouter_testkit::{Cluster, Flavour};

/// The SQLSTATEs that mean "this node cannot tell you", with a message as
/// the platforms word them.
const CODES: [(&str, &str); 4] = [
    ("0A000", "Function is currently not supported in Aurora"),
    ("42501", "permission denied for function"),
    ("42883", "function does not exist"),
    ("55000", "wal_level must be set to 'logical'"),
];

/// Which function each optional fact comes from, the capability it gives,
/// and the nodes that ask it (0: the primary; 1, 2: replicas).
const FUNCTIONS: [(&str, Capability, &[usize]); 7] = [
    ("pg_current_wal_insert_lsn", Capability::Positions, &[0]),
    ("pg_walfile_name", Capability::Timeline, &[0]),
    ("pg_last_wal_replay_lsn", Capability::Positions, &[1, 2]),
    ("pg_control_checkpoint", Capability::Timeline, &[1, 2]),
    ("pg_stat_get_wal_receiver", Capability::Receiver, &[1, 2]),
    (
        "pg_last_xact_replay_timestamp",
        Capability::ReplayTimestamp,
        &[1, 2],
    ),
    ("pg_control_system", Capability::SystemId, &[0, 1, 2]),
];

/// One node config per node, logging in as `user`.
fn nodes_as(cluster: &Cluster, user: &str) -> Vec<NodeConfig> {
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut nodes = node_configs(cluster, &ports);
    for node in &mut nodes {
        let from = format!("user={}", cluster.node(0).client_user());
        let url = node.url.expose().replace(&from, &format!("user={user}"));
        node.url = url.into();
    }
    nodes
}

/// Every node healthy, the write target node0, and `capability` missing on
/// exactly `on` (with `code`), nothing else missing anywhere.
fn assert_degraded(status: &Status, capability: Capability, on: &[usize], code: &str, case: &str) {
    assert_eq!(
        status.write_target.as_deref(),
        Some("node0"),
        "{case}: {status:#?}"
    );
    for (index, node) in status.nodes.iter().enumerate() {
        assert!(node.healthy, "{case}: {node:#?}");
        let missing: Vec<_> = node.missing_capabilities.iter().collect();
        if on.contains(&index) {
            assert_eq!(missing.len(), 1, "{case}: {node:#?}");
            assert_eq!(missing[0].capability, capability, "{case}");
            assert_eq!(missing[0].code, code, "{case}");
            let expected_role = if index == 0 {
                Role::Primary
            } else {
                Role::Replica
            };
            assert_eq!(missing[0].role, expected_role, "{case}");
        } else {
            assert!(missing.is_empty(), "{case}: {node:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_optional_function_failing_with_each_sqlstate_turns_off_only_its_capability() {
    let cluster = start_cluster();
    // One role per case, each with its own shadow schema ahead of
    // pg_catalog: all cases share one cluster.
    let mut cases = Vec::new();
    for (f, (function, capability, on)) in FUNCTIONS.iter().enumerate() {
        for (c, (code, message)) in CODES.iter().enumerate() {
            let role = format!("case_{f}_{c}");
            blocking(|| {
                cluster.create_least_privilege_role(&role)?;
                cluster.shadow_function(&role, function, code, message)
            })
            .unwrap();
            cases.push((role, *function, *capability, *on, *code));
        }
    }
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();

    for (role, function, capability, on, code) in cases {
        let case = format!("{function} raising {code}");
        let db = DatabaseManager::new(fast_config(nodes_as(&cluster, &role)))
            .await
            .unwrap();
        let status = db.status();
        assert_degraded(&status, capability, on, code, &case);
        // A second round asks nothing it knows the node cannot answer and
        // changes nothing.
        tokio::time::sleep(db.config().health.interval * 2).await;
        assert_degraded(&db.status(), capability, on, code, &case);
        // The node still serves: a read on each replica, a write.
        for strategy in [ReadStrategy::GlobalRandom, ReadStrategy::PrimaryOnly] {
            db.read()
                .strategy(strategy)
                .query_one("SELECT 1", &[])
                .await
                .unwrap();
        }
        db.execute("SELECT 1", &[]).await.unwrap();
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_role_misses_nothing_and_a_real_revoke_degrades() {
    let builder = Cluster::builder().flavour(Flavour::LeastPrivilege);
    let cluster = blocking(|| builder.start()).unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let nodes = node_configs(&cluster, &ports);
    let db = DatabaseManager::new(fast_config(nodes.clone()))
        .await
        .unwrap();
    let status = db.status();
    for node in &status.nodes {
        assert!(node.healthy, "{node:#?}");
        assert!(node.missing_capabilities.is_empty(), "{node:#?}");
        assert_eq!(node.timeline, Some(1), "{node:#?}");
        assert!(node.wal_position.is_some(), "{node:#?}");
    }
    db.close().await;

    // The real thing, not a stand-in: EXECUTE revoked from PUBLIC.
    blocking(|| {
        cluster.psql(
            0,
            "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_current_wal_insert_lsn() FROM PUBLIC; \
             REVOKE EXECUTE ON FUNCTION pg_catalog.pg_last_wal_replay_lsn() FROM PUBLIC",
        )
    })
    .unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let db = DatabaseManager::new(fast_config(nodes)).await.unwrap();
    let status = db.status();
    assert_degraded(
        &status,
        Capability::Positions,
        &[0, 1, 2],
        "42501",
        "revoked",
    );
    for node in &status.nodes {
        assert!(
            node.wal_position.is_none() && node.lag.is_none(),
            "{node:#?}"
        );
        assert_eq!(node.timeline, Some(1), "other facts still come: {node:#?}");
        let text = node.missing_capabilities[0].to_string();
        assert!(text.contains("causal reads go to the primary"), "{text}");
    }
    // With no lag known, a bounded read goes to the primary.
    for _ in 0..10 {
        let port: i32 = db
            .read()
            .strategy(ReadStrategy::GlobalRandom)
            .max_staleness(Duration::from_secs(60))
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port, i32::from(port_of(&cluster, 0)));
    }
    db.close().await;
}
