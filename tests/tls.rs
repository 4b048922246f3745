//! TLS with rustls against real servers that serve a throwaway CA's
//! certificate: encrypted and verified, or refused — never plain text.

mod support;

use std::time::Duration;

use pgrouter::{ConfigError, DatabaseManager, Error, ReadStrategy};
use pgrouter_testkit::Cluster;
use support::*;

fn tls_config(cluster: &Cluster, ca_file: Option<&std::path::Path>) -> pgrouter::Config {
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(cluster, &ports));
    config.tls.enabled = true;
    config.tls.ca_file = ca_file.map(Into::into);
    config.write_hold = Duration::ZERO;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_encrypted_and_verified() {
    let cluster = Cluster::builder().replicas(1).tls(true).start().unwrap();
    let db = DatabaseManager::new(tls_config(&cluster, cluster.ca_file()))
        .await
        .unwrap();
    assert!(db.status().is_ready(), "{:?}", db.status());
    const SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let write: bool = db.write().query_one(SSL, &[]).await.unwrap().get(0);
    let read: bool = db.query_one(SSL, &[]).await.unwrap().get(0);
    assert!(write && read);
    // The monitor's probes are encrypted too.
    let probes = cluster
        .psql(0, "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pgrouter'")
        .unwrap();
    assert_eq!(probes, "t");
    db.close().await;

    // Trusting only Mozilla's roots, the throwaway CA is rejected.
    let db = DatabaseManager::new(tls_config(&cluster, None))
        .await
        .unwrap();
    let status = db.status();
    assert!(!status.can_read(), "{status:?}");
    let error = status.nodes[0].last_error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    let err = db.query("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err, Error::NoHealthyNode { .. }), "{err:?}");
    let err = db.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err, Error::NoPrimary { .. }), "{err:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_is_refused_not_used_in_plain_text() {
    let cluster = Cluster::builder().replicas(0).start().unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    let tls = Cluster::builder().replicas(0).tls(true).start().unwrap();
    std::fs::copy(tls.ca_file().unwrap(), ca.path()).unwrap();
    drop(tls);
    let mut config = tls_config(&cluster, Some(ca.path()));
    config.read_strategy = ReadStrategy::PrimaryOnly;
    let db = DatabaseManager::new(config).await.unwrap();
    assert!(!db.status().can_read(), "{:?}", db.status());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ca_file_is_a_typed_configuration_error() {
    let cluster = Cluster::builder().replicas(0).start().unwrap();
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "not a certificate").unwrap();
    for path in [garbage.path(), std::path::Path::new("/nonexistent/ca.pem")] {
        let err = DatabaseManager::new(tls_config(&cluster, Some(path)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Config(ConfigError::Tls { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("tls.ca_file"), "{err}");
    }
}
