//! libpq's TLS parameters in connection strings (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`), against real servers with and without TLS: every
//! `sslmode` with libpq's meaning, and never a weaker connection than asked.

use std::time::Duration;

use crate::support::*;
use pgrouter::config::NodeConfig;
use pgrouter::error::ConfigError;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use pgrouter::Role;
use pgrouter_testkit::{Cluster, ClusterBuilder, Flavour};

fn start(builder: ClusterBuilder) -> Cluster {
    blocking(|| builder.start()).expect("start a local cluster")
}

/// A manager of node 0 alone, reached through `url`.
async fn manager(url: String) -> Result<DatabaseManager, Error> {
    let node = NodeConfig::new("node0", REGIONS[0], url, Role::Primary);
    let mut config = fast_config(vec![node]);
    config.write_hold = Duration::ZERO;
    DatabaseManager::new(config).await
}

/// A key-value connection string to node 0 that names `host` (what TLS
/// verifies) but connects to 127.0.0.1, plus `extra`.
fn key_values(cluster: &Cluster, host: &str, extra: &str) -> String {
    let node = cluster.primary();
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user={} dbname={} {extra}",
        node.port(),
        node.client_user(),
        node.dbname()
    )
}

/// Whether the session that answered is encrypted; `Err` with the
/// monitor's last error when the node never became ready.
async fn encrypted(url: String) -> Result<bool, String> {
    let db = manager(url).await.map_err(|error| error.to_string())?;
    if !db.status().can_write() {
        let status = db.status();
        db.close().await;
        let node = status.node("node0").expect("node0");
        return Err(node.last_error.clone().unwrap_or_default());
    }
    const SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let ssl: bool = db.write().query_one(SSL, &[]).await.unwrap().get(0);
    // The probe's own connection is the same kind.
    db.close().await;
    Ok(ssl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_server_with_tls() {
    let cluster = start(Cluster::builder().replicas(0).tls(true));
    let ca = cluster.ca_file().unwrap().display().to_string();
    let root = format!("sslrootcert='{ca}'");
    // (host, parameters, Ok(encrypted) or Err(part of the error))
    let cases: Vec<(&str, String, Result<bool, &str>)> = vec![
        ("localhost", "sslmode=disable".into(), Ok(false)),
        ("localhost", "sslmode=allow".into(), Ok(false)),
        ("localhost", String::new(), Ok(true)), // libpq's default: prefer
        ("localhost", "sslmode=prefer".into(), Ok(true)),
        // Encrypted, certificate not checked (the CA is nobody's root).
        ("wrong.invalid", "sslmode=require".into(), Ok(true)),
        // verify-ca: the chain, not the name.
        (
            "wrong.invalid",
            format!("sslmode=verify-ca {root}"),
            Ok(true),
        ),
        ("localhost", "sslmode=verify-ca".into(), Err("certificate")),
        // require with a root file verifies the chain, as libpq does.
        ("localhost", format!("sslmode=require {root}"), Ok(true)),
        ("localhost", format!("sslmode=verify-full {root}"), Ok(true)),
        (
            "wrong.invalid",
            format!("sslmode=verify-full {root}"),
            Err("certificate not valid for name"),
        ),
        // The system's store does not hold the throwaway CA.
        ("localhost", "sslrootcert=system".into(), Err("certificate")),
    ];
    for (host, params, expected) in cases {
        let got = encrypted(key_values(&cluster, host, &params)).await;
        let case = format!("{host} {params}");
        match (&got, expected) {
            (Ok(ssl), Ok(want)) => assert_eq!(*ssl, want, "{case}"),
            (Err(error), Err(says)) => assert!(error.contains(says), "{case}: {error}"),
            _ => panic!("{case}: got {got:?}, expected {expected:?}"),
        }
    }

    // The URL form, percent-encoded path and all.
    let node = cluster.primary();
    let url = format!(
        "postgres://{}@localhost:{}/{}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        node.client_user(),
        node.port(),
        node.dbname(),
        ca.replace('/', "%2F")
    );
    assert_eq!(encrypted(url).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_serves_only_the_modes_that_allow_plain_text() {
    let tls = start(Cluster::builder().replicas(0).tls(true));
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(tls.ca_file().unwrap(), ca.path()).unwrap();
    blocking(|| drop(tls));
    let cluster = start(Cluster::builder().replicas(0));
    let root = format!("sslrootcert='{}'", ca.path().display());
    for mode in ["disable", "allow", "prefer"] {
        let params = format!("sslmode={mode}");
        let got = encrypted(key_values(&cluster, "localhost", &params)).await;
        assert_eq!(got, Ok(false), "{mode}");
    }
    for mode in ["require", "verify-ca", "verify-full"] {
        let params = format!("sslmode={mode} {root}");
        let got = encrypted(key_values(&cluster, "localhost", &params)).await;
        let error = got.expect_err(mode);
        assert!(
            error.contains("server does not support TLS"),
            "{mode}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_allow_when_the_server_wants_tls() {
    let builder = Cluster::builder()
        .replicas(0)
        .tls(true)
        .flavour(Flavour::LeastPrivilege);
    let cluster = start(builder);
    // `app` only over TLS, with a certificate naming it; the superuser (for
    // psql) as before.
    let hba = "local all all trust\n\
               hostssl all app 127.0.0.1/32 cert\n\
               host all postgres 127.0.0.1/32 trust\n\
               host replication all 127.0.0.1/32 trust\n";
    std::fs::write(cluster.primary().data_dir().join("pg_hba.conf"), hba).unwrap();
    blocking(|| cluster.psql(0, "SELECT pg_reload_conf()")).unwrap();

    let ca = cluster.ca_file().unwrap().display().to_string();
    let (cert, key) = cluster.client_certificate("app").unwrap();
    let (other_cert, other_key) = cluster.client_certificate("postgres").unwrap();
    let client = format!("sslcert='{}' sslkey='{}'", cert.display(), key.display());
    let other = format!(
        "sslcert='{}' sslkey='{}'",
        other_cert.display(),
        other_key.display()
    );
    let full = format!("sslmode=verify-full sslrootcert='{ca}'");
    let cases: Vec<(String, Result<bool, &str>)> = vec![
        (format!("{full} {client}"), Ok(true)),
        (format!("sslmode=require {client}"), Ok(true)),
        // Plain text is refused; allow then tries TLS.
        (format!("sslmode=allow {client}"), Ok(true)),
        ("sslmode=disable".to_owned(), Err("pg_hba.conf")),
        // No certificate, or one naming another user.
        (full.clone(), Err("")),
        (format!("{full} {other}"), Err("")),
    ];
    for (params, expected) in cases {
        let got = encrypted(key_values(&cluster, "localhost", &params)).await;
        match (&got, expected) {
            (Ok(ssl), Ok(want)) => assert_eq!(*ssl, want, "{params}"),
            (Err(error), Err(says)) => assert!(error.contains(says), "{params}: {error}"),
            _ => panic!("{params}: got {got:?}, expected {expected:?}"),
        }
    }
}

// No server needed: the parameters are judged when the manager is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradictions_and_bad_files_are_typed_errors_naming_the_parameter() {
    let base = "host=127.0.0.1 port=1 user=app password=s3cret";
    let cases = [
        ("sslmode=sometimes", "sslmode"),
        ("sslmode=require sslrootcert=system", "verify-full"),
        ("sslcert=/nonexistent/c.pem", "sslkey"),
        (
            "sslmode=verify-full sslcert=/nonexistent/c.pem sslkey=/nonexistent/k.pem",
            "sslcert",
        ),
        (
            "sslmode=verify-ca sslrootcert=/nonexistent/ca.pem",
            "sslrootcert",
        ),
    ];
    for (params, names) in cases {
        let err = manager(format!("{base} {params}")).await.unwrap_err();
        assert!(
            matches!(
                err.as_config_error(),
                Some(ConfigError::InvalidConnectionString { .. } | ConfigError::Tls { .. })
            ),
            "{params}: {err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(names), "{params}: {shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
    // DB_SSL=true (tls.enabled) and sslmode=disable contradict each other.
    let node = NodeConfig::new(
        "node0",
        REGIONS[0],
        format!("{base} sslmode=disable"),
        Role::Primary,
    );
    let mut config = fast_config(vec![node]);
    config.tls.enabled = true;
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("contradicts"), "{err}");
}
