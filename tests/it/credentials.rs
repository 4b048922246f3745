//! Passwords per connection, on a real cluster whose role must log in with
//! SCRAM: a provider whose password is rotated (`ALTER ROLE … PASSWORD`)
//! between connections is asked again once per node, and connections go on
//! working; a wrong or failing provider fails the connection without the
//! secret reaching errors, status or `Debug`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use pgrouter::auth::Credential;
use pgrouter::auth::CredentialRequest;
use pgrouter::auth::ProviderError;
use pgrouter::auth::SharedPasswordProvider;
use pgrouter::config::NodeConfig;
use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::tokio_postgres::NoTls;
use pgrouter::DatabaseManager;
use pgrouter_testkit::Cluster;

const ROLE: &str = "rotator";

/// A primary and one replica where [`ROLE`] needs `password`.
fn cluster_with_password(password: &str) -> Cluster {
    blocking(|| {
        let cluster = Cluster::builder().replicas(1).start()?;
        cluster.create_password_role(ROLE, password)?;
        Ok::<_, pgrouter_testkit::TestkitError>(cluster)
    })
    .expect("a cluster with a password role")
}

/// Node configs logging in as [`ROLE`], with no password in them.
fn nodes(cluster: &Cluster) -> Vec<NodeConfig> {
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut nodes = node_configs(cluster, &ports);
    for node in &mut nodes {
        let from = format!("user={}", cluster.node(0).client_user());
        let url = node.url.expose().replace(&from, &format!("user={ROLE}"));
        node.url = url.into();
    }
    nodes
}

/// The password the provider hands out, and how often each node asked.
#[derive(Default)]
struct Vault {
    password: Mutex<String>,
    asked: Mutex<HashMap<String, usize>>,
}

impl Vault {
    fn new(password: &str) -> Arc<Self> {
        let vault = Self::default();
        *vault.password.lock().expect("lock") = password.to_owned();
        Arc::new(vault)
    }

    fn asked(&self, node: &str) -> usize {
        self.asked
            .lock()
            .expect("lock")
            .get(node)
            .copied()
            .unwrap_or(0)
    }

    fn provider(
        self: &Arc<Self>,
    ) -> impl Fn(CredentialRequest) -> std::future::Ready<Result<Credential, ProviderError>>
           + Send
           + Sync
           + 'static {
        let vault = Arc::clone(self);
        move |request: CredentialRequest| {
            assert_eq!(request.user.as_deref(), Some(ROLE));
            assert_eq!(request.host.as_deref(), Some("127.0.0.1"));
            *vault
                .asked
                .lock()
                .expect("lock")
                .entry(request.node)
                .or_default() += 1;
            let password = vault.password.lock().expect("lock").clone();
            // Valid for an hour: only a rejection makes pgrouter ask again.
            std::future::ready(Ok(
                Credential::new(password).valid_for(Duration::from_secs(3600))
            ))
        }
    }
}

async fn ready(db: &DatabaseManager) {
    let up = wait_until(Duration::from_secs(20), || {
        let status = db.status();
        status.can_write() && status.nodes.iter().all(|node| node.healthy)
    })
    .await;
    assert!(up.is_some(), "{:#?}", db.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_is_fetched_again_once_per_node_and_connections_go_on() {
    let cluster = cluster_with_password("first-secret");
    // The role really needs its password: a wrong one is refused.
    let mut wrong = cluster.node(0).pg_config();
    wrong.user(ROLE).password("not-it");
    let refused = wrong.connect(NoTls).await.err().expect("refused");
    assert_eq!(refused.code(), Some(&SqlState::INVALID_PASSWORD));

    let vault = Vault::new("first-secret");
    let mut config = fast_config(nodes(&cluster));
    config.password_provider = Some(SharedPasswordProvider::new(vault.provider()));
    assert!(!format!("{config:?}").contains("first-secret"));
    let db = DatabaseManager::new(config).await.expect("manager");
    ready(&db).await;
    db.execute("CREATE TABLE rotation (n int)", &[])
        .await
        .expect("write with the first password");
    // Pool and probe share one cached password per node.
    assert_eq!((vault.asked("node0"), vault.asked("node1")), (1, 1));

    // Rotate, then cut every session of the role: new connections follow.
    blocking(|| cluster.set_password(ROLE, "second-secret")).expect("rotate");
    *vault.password.lock().expect("lock") = "second-secret".to_owned();
    for index in 0..2 {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{ROLE}'"
        );
        blocking(|| cluster.psql(index, &sql)).expect("terminate the role's sessions");
    }
    // A write on a connection cut before it was sent is retried; one whose
    // statement was lost in flight is an unknown outcome: try again.
    let mut written = false;
    for _ in 0..20 {
        if db
            .execute("INSERT INTO rotation VALUES (1)", &[])
            .await
            .is_ok()
        {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written, "{:#?}", db.status());
    // The replica's probe reconnects too (its session was cut).
    let replica = wait_until(Duration::from_secs(20), || vault.asked("node1") >= 2).await;
    assert!(replica.is_some(), "{:#?}", db.status());
    ready(&db).await;
    let read = db
        .read()
        .strategy(pgrouter::ReadStrategy::GlobalRandom)
        .query("SELECT 1", &[])
        .await;
    assert!(read.is_ok(), "{read:?}");
    // Each node rejected the cached password once and asked once more,
    // however many of its connections (pool, probe) saw the rejection.
    assert_eq!((vault.asked("node0"), vault.asked("node1")), (2, 2));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_without_a_loop_and_never_shows_the_secret() {
    let cluster = cluster_with_password("right-secret");
    let vault = Vault::new("wrong-secret-6f2a");
    let mut config = fast_config(nodes(&cluster));
    config.deadline = Duration::from_millis(800);
    config.password_provider = Some(SharedPasswordProvider::new(vault.provider()));
    let db = DatabaseManager::new(config).await.expect("manager");
    let error = db
        .execute("SELECT 1", &[])
        .await
        .expect_err("the wrong password is refused");
    for shown in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{:?}", db.status()),
    ] {
        assert!(!shown.contains("wrong-secret-6f2a"), "{shown}");
    }
    let status = db.status();
    let node0 = status.node("node0").expect("node0");
    assert!(!node0.healthy, "{node0:#?}");
    // A fresh password that is refused is not asked again at once: the
    // provider is asked once per connection attempt, never in a loop.
    let attempts = vault.asked("node0");
    assert!(attempts >= 1, "asked {attempts}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_fails_the_connection_naming_the_node_and_its_reason() {
    let cluster = cluster_with_password("right-secret");
    let mut config = fast_config(nodes(&cluster));
    config.deadline = Duration::from_millis(800);
    config.password_provider = Some(SharedPasswordProvider::new(
        |_request: CredentialRequest| async {
            Err::<Credential, ProviderError>("secret store unreachable".into())
        },
    ));
    let db = DatabaseManager::new(config).await.expect("manager");
    let failed = wait_until(Duration::from_secs(10), || {
        db.status()
            .node("node0")
            .and_then(|n| n.last_error.clone())
            .is_some()
    })
    .await;
    assert!(failed.is_some(), "{:#?}", db.status());
    let status = db.status();
    let error = status
        .node("node0")
        .and_then(|node| node.last_error.clone())
        .expect("an error");
    assert!(error.contains("password provider failed"), "{error}");
    assert!(error.contains("secret store unreachable"), "{error}");
    assert!(error.contains("\"node0\""), "{error}");
    let write = db.execute("SELECT 1", &[]).await;
    assert!(write.is_err(), "{write:?}");
    db.close().await;
}
