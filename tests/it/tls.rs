//! TLS with rustls against real servers that serve a throwaway CA's
//! certificate: encrypted and verified, or refused — never plain text.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use pgrouter::config::NodeConfig;
use pgrouter::error::ConfigError;
use pgrouter::error::ErrorKind;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter_testkit::{Cluster, ClusterBuilder};

fn tls_config(cluster: &Cluster, ca_file: Option<&Path>) -> Config {
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    tls_settings(fast_config(node_configs(cluster, &ports)), ca_file)
}

fn tls_settings(mut config: Config, ca_file: Option<&Path>) -> Config {
    config.tls.enabled = true;
    config.tls.ca_file = ca_file.map(Into::into);
    config.write_hold = Duration::ZERO;
    config
}

fn start(builder: ClusterBuilder) -> Cluster {
    blocking(|| builder.start()).expect("start a local cluster")
}

/// The monitor's last error for `node`, once it mentions `expected`
/// (a probe timing out on a loaded machine may be reported first; the next
/// probe then says why the connection was refused). `None` if it never does.
async fn last_error_mentioning(db: &DatabaseManager, node: &str, expected: &str) -> Option<String> {
    let says_it = || {
        db.status()
            .node(node)
            .and_then(|n| n.last_error.clone())
            .is_some_and(|error| error.contains(expected))
    };
    wait_until(Duration::from_secs(10), says_it).await?;
    db.status().node(node).and_then(|n| n.last_error.clone())
}

/// How many client sessions other than the asking `psql` the server on node
/// `index` has: pgrouter's, plain or not, would be among them.
fn other_client_sessions(cluster: &Cluster, index: usize) -> String {
    blocking(|| {
        cluster.psql(
            index,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_encrypted_and_verified() {
    let cluster = start(Cluster::builder().replicas(1).tls(true));
    let db = DatabaseManager::new(tls_config(&cluster, cluster.ca_file()))
        .await
        .unwrap();
    assert!(db.status().can_write(), "{:?}", db.status());
    const SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let write: bool = db.write().query_one(SSL, &[]).await.unwrap().get(0);
    let read: bool = db.query_one(SSL, &[]).await.unwrap().get(0);
    assert!(write && read);
    // The monitor's probes are encrypted too.
    let probes = blocking(|| cluster.psql(0, "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pgrouter'"))
        .unwrap();
    assert_eq!(probes, "t");
    db.close().await;

    // Trusting only Mozilla's roots, the throwaway CA is rejected.
    let db = DatabaseManager::new(tls_config(&cluster, None))
        .await
        .unwrap();
    let status = db.status();
    assert!(!status.can_read(), "{status:?}");
    let error = last_error_mentioning(&db, "node0", "certificate").await;
    assert!(error.is_some(), "{:?}", db.status());
    let err = db.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NoHealthyNode { .. }),
        "{err:?}"
    );
    let err = db.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoPrimary { .. }), "{err:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_is_refused_not_used_in_plain_text() {
    let cluster = start(Cluster::builder().replicas(0));
    // A CA the client trusts, so the only fault is the server's missing TLS.
    let ca = tempfile::NamedTempFile::new().unwrap();
    let tls = start(Cluster::builder().replicas(0).tls(true));
    std::fs::copy(tls.ca_file().unwrap(), ca.path()).unwrap();
    blocking(|| drop(tls));
    let mut config = tls_config(&cluster, Some(ca.path()));
    config.read_strategy = ReadStrategy::PrimaryOnly;
    let db = DatabaseManager::new(config).await.unwrap();
    assert!(!db.status().can_read(), "{:?}", db.status());
    // tokio-postgres's words when the server answers the TLS request with
    // "no": the connection is dropped there, before any plain-text startup.
    let error = last_error_mentioning(&db, "node0", "server does not support TLS").await;
    let error = error.unwrap_or_else(|| panic!("{:?}", db.status()));
    eprintln!("node0: {error}");
    let err = db.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NoHealthyNode { .. }),
        "{err:?}"
    );
    // And the server has no session of pgrouter's, plain or otherwise.
    assert_eq!(other_client_sessions(&cluster, 0), "0");
    assert!(!db.status().can_read(), "{:?}", db.status());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused() {
    let cluster = start(Cluster::builder().replicas(0).tls(true));
    let node = cluster.primary();
    // `host` is the name TLS verifies; `hostaddr` is where TCP connects.
    let config_for = |host: &str| {
        let url = format!(
            "host={host} hostaddr=127.0.0.1 port={} user={} dbname={}",
            node.port(),
            node.user(),
            node.dbname()
        );
        let nodes = vec![NodeConfig::new(
            node.name(),
            REGIONS[0],
            url,
            pgrouter::Role::Primary,
        )];
        tls_settings(fast_config(nodes), cluster.ca_file())
    };

    // Control: a name the certificate lists, through the same `hostaddr`,
    // with the same trusted CA, is accepted.
    let db = DatabaseManager::new(config_for("localhost")).await.unwrap();
    assert!(db.status().can_write(), "{:?}", db.status());
    db.execute("SELECT 1", &[]).await.unwrap();
    db.close().await;

    // The certificate names only 127.0.0.1 and localhost.
    let db = DatabaseManager::new(config_for("wrong.invalid"))
        .await
        .unwrap();
    assert!(!db.status().can_read(), "{:?}", db.status());
    // rustls: "invalid peer certificate: certificate not valid for name
    // \"wrong.invalid\"; certificate is only valid for ...".
    let error = last_error_mentioning(&db, "node0", "certificate not valid for name").await;
    let error = error.unwrap_or_else(|| panic!("{:?}", db.status()));
    eprintln!("node0: {error}");
    assert!(error.contains("wrong.invalid"), "{error}");
    let err = db.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NoHealthyNode { .. }),
        "{err:?}"
    );
    let err = db.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoPrimary { .. }), "{err:?}");
    assert!(!db.status().can_read(), "{:?}", db.status());
    db.close().await;
}

// The CA file is read when the manager is built, before any connection: no
// server is needed (the nodes are unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ca_file_is_a_typed_configuration_error() {
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "not a certificate").unwrap();
    for path in [garbage.path(), Path::new("/nonexistent/ca.pem")] {
        let config = tls_settings(fast_config(unreachable_node_configs()), Some(path));
        let err = DatabaseManager::new(config).await.unwrap_err();
        assert!(
            matches!(err.as_config_error(), Some(ConfigError::Tls { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("tls.ca_file"), "{err}");
    }
}
