//! Regions from the original's environment variables, on a real primary
//! and replica: three pods (the primary's region, the replica's, a third)
//! each read from the node a user would expect.

use std::collections::BTreeSet;
use std::collections::HashMap;

use pgrouter::{CallInfo, Config, DatabaseManager};

use crate::support::*;

/// The nodes that served 60 regional-preferred reads of a manager built
/// from these variables (timings from [`fast_config`]).
async fn served(vars: &HashMap<&str, String>) -> BTreeSet<String> {
    let mut config = Config::from_lookup(|name| vars.get(name).cloned()).expect("config");
    let fast = fast_config(config.nodes.clone());
    config.health = fast.health;
    config.pool = fast.pool;
    config.deadline = fast.deadline;
    let db = DatabaseManager::new(config).await.expect("manager");
    let mut nodes = BTreeSet::new();
    for _ in 0..60 {
        let info = CallInfo::new();
        db.read()
            .info(&info)
            .query_one("SELECT 1", &[])
            .await
            .expect("read");
        nodes.insert(info.server().expect("served").node);
    }
    db.close().await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_read_from_the_node_their_region_says() {
    let cluster = start_cluster();
    let url = |index: usize| {
        let node = cluster.node(index);
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            node.client_port(),
            node.client_user(),
            node.dbname()
        )
    };
    let base = HashMap::from([
        ("PRIMARY_DATABASE_URL", url(0)),
        ("SECONDARY_DATABASE_URL", url(1)),
        ("PRIMARY_DATABASE_REGION", "us-east-1".to_owned()),
        ("SECONDARY_DATABASE_REGION", "eu-west-1".to_owned()),
    ]);
    let pod = |region: &str| {
        let mut vars = base.clone();
        vars.insert("AWS_REGION", region.to_owned());
        vars
    };
    let names = |nodes: &[&str]| -> BTreeSet<String> {
        nodes.iter().map(|name| (*name).to_owned()).collect()
    };
    assert_eq!(served(&pod("us-east-1")).await, names(&["primary"]));
    assert_eq!(served(&pod("eu-west-1")).await, names(&["secondary"]));
    assert_eq!(
        served(&pod("ap-south-1")).await,
        names(&["primary", "secondary"])
    );
    // The old default took the replica for local wherever the pod ran.
    let mut unknown = pod("us-east-1");
    unknown.remove("SECONDARY_DATABASE_REGION");
    assert_eq!(served(&unknown).await, names(&["primary"]));
}
