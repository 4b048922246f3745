//! A throwaway certificate authority, a server certificate, and client
//! certificates for the cluster's users, so a cluster can serve TLS
//! (`ClusterBuilder::tls`) and check client certificates (`pg_hba.conf`
//! `cert`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::error::TestkitError;

/// Where the files went.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// The CA certificate clients should trust (PEM).
    pub(crate) ca: PathBuf,
    /// The server's certificate (PEM), for `127.0.0.1` and `localhost`.
    pub(crate) cert: PathBuf,
    /// The server's private key (PEM, mode 0600, owned by the server's user).
    pub(crate) key: PathBuf,
}

/// The users client certificates are made for (their common name).
pub(crate) const CLIENT_USERS: [&str; 2] = [crate::node::USER, crate::roles::APP_USER];

/// Where the client certificate and key of `user` are, in `dir`.
pub(crate) fn client_files(dir: &Path, user: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("client-{user}.crt")),
        dir.join(format!("client-{user}.key")),
    )
}

/// Writes a fresh CA and a server certificate signed by it into `dir`.
pub(crate) fn write_certificates(
    dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<TlsFiles, TestkitError> {
    let tls_error = |error: rcgen::Error| TestkitError::Tls {
        reason: error.to_string(),
    };
    let (ca_pem, cert_pem, key_pem, clients) = generate().map_err(tls_error)?;
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.ca, ca_pem)?;
    std::fs::write(&files.cert, cert_pem)?;
    std::fs::write(&files.key, key_pem)?;
    // PostgreSQL refuses a key readable by others.
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))?;
    for (user, (cert, key)) in CLIENT_USERS.iter().zip(clients) {
        let (cert_file, key_file) = client_files(dir, user);
        std::fs::write(&cert_file, cert)?;
        std::fs::write(&key_file, key)?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    }
    if let Some((uid, gid)) = owner {
        for path in [&files.ca, &files.cert, &files.key] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
    }
    Ok(files)
}

/// PEM texts: CA, server certificate, server key, and a certificate and
/// key per client user.
type Generated = (String, String, String, Vec<(String, String)>);

fn generate() -> Result<Generated, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgrouter-testkit CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pgrouter-testkit server");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer)?;
    let mut clients = Vec::new();
    for user in CLIENT_USERS {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        let cert = params.signed_by(&key, &issuer)?;
        clients.push((cert.pem(), key.serialize_pem()));
    }
    Ok((
        ca_cert.pem(),
        server_cert.pem(),
        server_key.serialize_pem(),
        clients,
    ))
}
