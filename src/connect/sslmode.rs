//! libpq's TLS parameters in a connection string — `sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey` — taken out before tokio-postgres sees the string
//! (it knows only `sslmode` disable/prefer/require and rejects the rest),
//! and the rule that turns them, with [`TlsSettings`], into what one node's
//! connections do. Pure: files are read when the connector is built
//! (`tls/`).

use std::path::PathBuf;

use crate::config::tls::TlsSettings;

/// libpq's `sslmode`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text; TLS (unverified) only if the server refuses plain text.
    Allow,
    /// TLS (unverified) if the server offers it, else plain text. libpq's
    /// default.
    Prefer,
    /// TLS, certificate not verified (verified against the roots as
    /// `verify-ca` when a root certificate file is given, as libpq does).
    Require,
    /// TLS, certificate chained to a trusted root; any host name.
    VerifyCa,
    /// TLS, certificate chained to a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?}: expected disable, allow, prefer, require, verify-ca \
                     or verify-full"
                ))
            }
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Which certificates a node's server certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// Mozilla's roots (`webpki-roots`): nothing was given.
    Bundled,
    /// A PEM file (`sslrootcert=<file>`, or `tls.ca_file`).
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// The TLS parameters one connection string carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) mode: Option<SslMode>,
    /// `sslrootcert`: `None` when absent.
    pub(crate) root_cert: Option<Roots>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// What one node's connections do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeTls {
    pub(crate) mode: SslMode,
    pub(crate) roots: Roots,
    /// Where a root file came from, for errors: `sslrootcert` or
    /// `tls.ca_file`.
    pub(crate) roots_from: &'static str,
    /// A client certificate chain and its key (PEM files).
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// The keys taken out of a connection string.
const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits `text` (URL or key-value form) into the string tokio-postgres
/// gets and the TLS parameters. A bad value is an error naming its key
/// (never the rest of the text, which may hold a password).
pub(crate) fn strip(text: &str) -> Result<(String, TlsParams), String> {
    let (rest, pairs) = match text.split_once("://") {
        Some((scheme, rest)) => {
            let (rest, pairs) = strip_url(rest)?;
            (format!("{scheme}://{rest}"), pairs)
        }
        None => strip_key_values(text)?,
    };
    let mut params = TlsParams::default();
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => params.mode = Some(SslMode::parse(&value)?),
            "sslrootcert" if value == "system" => params.root_cert = Some(Roots::System),
            "sslrootcert" => params.root_cert = Some(Roots::File(path("sslrootcert", value)?)),
            "sslcert" => params.cert = Some(path("sslcert", value)?),
            _ => params.key = Some(path("sslkey", value)?),
        }
    }
    Ok((rest, params))
}

fn path(key: &str, value: String) -> Result<PathBuf, String> {
    match value.is_empty() {
        true => Err(format!("{key} is empty")),
        false => Ok(PathBuf::from(value)),
    }
}

/// Applies libpq's rules, and pgrouter's: `tls.enabled` (`DB_SSL=true`)
/// means verify-full, and the stronger of it and `sslmode` wins; a
/// contradiction is an error, never a silently weaker connection.
pub(crate) fn resolve(params: TlsParams, global: &TlsSettings) -> Result<NodeTls, String> {
    let (roots, roots_from) = match (params.root_cert, &global.ca_file) {
        (Some(roots), _) => (roots, "sslrootcert"),
        (None, Some(file)) => (Roots::File(file.clone()), "tls.ca_file"),
        (None, None) => (Roots::Bundled, "sslrootcert"),
    };
    let mut mode = match (params.mode, &roots) {
        (Some(mode), _) => mode,
        // libpq 16: sslrootcert=system makes verify-full the default.
        (None, Roots::System) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
    };
    if global.enabled {
        if mode == SslMode::Disable {
            return Err(
                "sslmode=disable contradicts tls.enabled (DB_SSL), which asks for \
                        verify-full"
                    .to_owned(),
            );
        }
        mode = mode.max(SslMode::VerifyFull);
    }
    if roots == Roots::System && mode != SslMode::VerifyFull {
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full, not {}",
            mode.name()
        ));
    }
    // libpq: require with a root certificate file verifies the chain.
    if mode == SslMode::Require && matches!(roots, Roots::File(_)) {
        mode = SslMode::VerifyCa;
    }
    let client = match (params.cert, params.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err("sslcert without sslkey".to_owned()),
        (None, Some(_)) => return Err("sslkey without sslcert".to_owned()),
    };
    if client.is_some() && mode == SslMode::Disable {
        return Err("sslcert with sslmode=disable: the certificate would never be sent".to_owned());
    }
    Ok(NodeTls {
        mode,
        roots,
        roots_from,
        client,
    })
}

type Pairs = Vec<(String, String)>;

/// `authority/path?query`: the query's TLS keys out, percent-decoded.
fn strip_url(rest: &str) -> Result<(String, Pairs), String> {
    let Some((head, query)) = rest.split_once('?') else {
        return Ok((rest.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for param in query.split('&').filter(|param| !param.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match KEYS.contains(&key) {
            true => taken.push((key.to_owned(), percent_decode(key, value)?)),
            false => kept.push(param),
        }
    }
    let text = match kept.is_empty() {
        true => head.to_owned(),
        false => format!("{head}?{}", kept.join("&")),
    };
    Ok((text, taken))
}

fn percent_decode(key: &str, value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte != b'%' {
            out.push(byte);
            index += 1;
            continue;
        }
        let hex = value
            .get(index + 1..index + 3)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        let Some(decoded) = hex else {
            return Err(format!("{key}: bad percent-encoding"));
        };
        out.push(decoded);
        index += 3;
    }
    String::from_utf8(out).map_err(|_| format!("{key}: not UTF-8 once decoded"))
}

/// `key = value …`: the TLS keys out (values unquoted and unescaped), the
/// rest rebuilt as written.
fn strip_key_values(text: &str) -> Result<(String, Pairs), String> {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            // Not `key=value`: left for tokio-postgres to reject.
            kept.push(key);
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let (raw, value) = take_value(&mut chars);
        match KEYS.contains(&key.as_str()) {
            true => taken.push((key, value)),
            false => kept.push(format!("{key}={raw}")),
        }
    }
    Ok((kept.join(" "), taken))
}

/// One value: as written, and unquoted/unescaped.
fn take_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> (String, String) {
    let mut raw = String::new();
    let mut value = String::new();
    let quoted = chars.next_if_eq(&'\'').is_some();
    if quoted {
        raw.push('\'');
    }
    while let Some(c) = chars.next() {
        if !quoted && c.is_whitespace() {
            break;
        }
        raw.push(c);
        match c {
            '\\' => {
                if let Some(escaped) = chars.next() {
                    raw.push(escaped);
                    value.push(escaped);
                }
            }
            '\'' if quoted => break,
            _ => value.push(c),
        }
    }
    (raw, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> (String, TlsParams) {
        strip(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn tls_keys_are_taken_out_of_both_forms() {
        let (rest, p) = params(
            "postgres://app:pw@db:5432/orders?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fetc%2Frds%20bundle.pem&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(rest, "postgres://app:pw@db:5432/orders?application_name=x");
        assert_eq!(p.mode, Some(SslMode::VerifyFull));
        assert_eq!(p.root_cert, Some(Roots::File("/etc/rds bundle.pem".into())));
        assert_eq!(p.cert, Some("/c.pem".into()));
        assert_eq!(p.key, Some("/k.pem".into()));

        let (rest, p) = params(
            "host=db sslmode = verify-ca  sslrootcert='/a b\\'c.pem' password='x y' user=app",
        );
        assert_eq!(rest, "host=db password='x y' user=app");
        assert_eq!(p.mode, Some(SslMode::VerifyCa));
        assert_eq!(p.root_cert, Some(Roots::File("/a b'c.pem".into())));

        let (rest, p) = params("postgres://db/x?sslrootcert=system");
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(p.root_cert, Some(Roots::System));
        let (rest, p) = params("host=db user=app");
        assert_eq!(
            (rest.as_str(), p),
            ("host=db user=app", TlsParams::default())
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        for (text, key) in [
            ("host=db sslmode=sometimes password=s3cret", "sslmode"),
            ("postgres://u:s3cret@db/x?sslmode=VERIFY-FULL", "sslmode"),
            ("postgres://u:s3cret@db/x?sslrootcert=%zz", "sslrootcert"),
            ("host=db sslcert='' password=s3cret", "sslcert"),
            ("postgres://u:s3cret@db/x?sslkey=", "sslkey"),
        ] {
            let error = strip(text).expect_err(text);
            assert!(error.contains(key), "{text}: {error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    fn resolved(
        mode: Option<SslMode>,
        root: Option<Roots>,
        global: (bool, bool),
    ) -> Result<NodeTls, String> {
        let params = TlsParams {
            mode,
            root_cert: root,
            ..TlsParams::default()
        };
        let settings = TlsSettings {
            enabled: global.0,
            ca_file: global.1.then(|| "/global-ca.pem".into()),
        };
        resolve(params, &settings)
    }

    /// (sslmode, sslrootcert, (tls.enabled, tls.ca_file)) -> mode, or an
    /// error saying this.
    type Case = (
        Option<SslMode>,
        Option<Roots>,
        (bool, bool),
        Result<SslMode, &'static str>,
    );

    #[test]
    fn libpq_rules_and_never_weaker_than_asked() {
        use SslMode::*;
        let file = || Some(Roots::File("/ca.pem".into()));
        // (sslmode, sslrootcert, tls.enabled / ca_file) -> mode, or an error
        let table: [Case; 14] = [
            (None, None, (false, false), Ok(Prefer)),
            (Some(Disable), None, (false, false), Ok(Disable)),
            (Some(Allow), None, (false, false), Ok(Allow)),
            (Some(Require), None, (false, false), Ok(Require)),
            (Some(Require), file(), (false, false), Ok(VerifyCa)),
            (Some(Require), None, (false, true), Ok(VerifyCa)),
            (Some(VerifyCa), None, (false, false), Ok(VerifyCa)),
            (None, Some(Roots::System), (false, false), Ok(VerifyFull)),
            (
                Some(VerifyCa),
                Some(Roots::System),
                (false, false),
                Err("verify-full"),
            ),
            (
                Some(Require),
                Some(Roots::System),
                (false, false),
                Err("verify-full"),
            ),
            // DB_SSL=true: verify-full, the stronger one wins…
            (None, None, (true, false), Ok(VerifyFull)),
            (Some(Require), None, (true, true), Ok(VerifyFull)),
            (Some(Prefer), file(), (true, false), Ok(VerifyFull)),
            // …and an explicit disable is a contradiction.
            (Some(Disable), None, (true, false), Err("contradicts")),
        ];
        for (mode, root, global, expected) in table {
            let case = format!("{mode:?} {root:?} {global:?}");
            match (resolved(mode, root, global), expected) {
                (Ok(tls), Ok(expected)) => assert_eq!(tls.mode, expected, "{case}"),
                (Err(error), Err(says)) => assert!(error.contains(says), "{case}: {error}"),
                (got, expected) => panic!("{case}: {got:?}, expected {expected:?}"),
            }
        }
        let tls = resolved(None, None, (false, true)).unwrap();
        assert_eq!(tls.roots, Roots::File("/global-ca.pem".into()));
        let tls = resolved(None, file(), (false, true)).unwrap();
        assert_eq!(tls.roots, Roots::File("/ca.pem".into()), "the URL's wins");
    }

    #[test]
    fn client_certificates_need_both_files_and_tls() {
        let with = |cert: Option<&str>, key: Option<&str>, mode| {
            let params = TlsParams {
                mode: Some(mode),
                cert: cert.map(Into::into),
                key: key.map(Into::into),
                ..TlsParams::default()
            };
            resolve(params, &TlsSettings::default())
        };
        let ok = with(Some("/c"), Some("/k"), SslMode::VerifyFull).unwrap();
        assert_eq!(ok.client, Some(("/c".into(), "/k".into())));
        assert!(with(Some("/c"), None, SslMode::Require)
            .unwrap_err()
            .contains("sslkey"));
        assert!(with(None, Some("/k"), SslMode::Require)
            .unwrap_err()
            .contains("sslcert"));
        assert!(with(Some("/c"), Some("/k"), SslMode::Disable).is_err());
    }
}
