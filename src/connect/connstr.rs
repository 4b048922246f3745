//! A PostgreSQL connection string that keeps its password out of logs.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::error::ConfigError;
use crate::config::tls::TlsSettings;
use crate::connect::sslmode::{self, NodeTls};

/// A connection string, in URL form (`postgres://user:pass@host:5432/db`) or
/// key-value form (`host=… port=… user=… password=…`).
///
/// The text is held as a [`SecretString`]: it is zeroed on drop, and its
/// `Debug` shows host, port, user and database but never the password.
/// It serializes with the password replaced by `REDACTED`, so a
/// configuration written back out (to a log, a debug endpoint) holds no
/// secret: keep the real one where it was read from (an environment
/// variable, a secret store), or hand [`ConnectionString::expose`] to
/// whatever must have it.
#[derive(Clone)]
pub struct ConnectionString(SecretString);

impl ConnectionString {
    /// Wraps a connection string. Nothing is checked here; see
    /// [`Config::validate`](crate::Config::validate).
    pub fn new(text: impl Into<String>) -> Self {
        Self(SecretString::from(text.into()))
    }

    /// Parses the text into a `tokio_postgres::Config`, without libpq's TLS
    /// parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`): pgrouter
    /// takes those out and applies them itself. If they cannot be read, the
    /// text is parsed whole, and tokio-postgres says what it rejects.
    pub fn parse(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        let text = self.0.expose_secret();
        match sslmode::strip(text) {
            Ok((rest, _)) => tokio_postgres::Config::from_str(&rest),
            Err(_) => tokio_postgres::Config::from_str(text),
        }
    }

    /// [`ConnectionString::parse`], with a [`ConfigError`] that names
    /// `field` and `node` and carries the parser's reason (never the text,
    /// which may hold a password).
    pub(crate) fn parse_checked(
        &self,
        field: String,
        node: &str,
    ) -> Result<tokio_postgres::Config, ConfigError> {
        self.parse_tls(field, node, &TlsSettings::default())
            .map(|(config, _)| config)
    }

    /// The `tokio_postgres::Config` and the node's TLS settings: its TLS
    /// parameters, with `tls` (see `sslmode::resolve`). Errors as
    /// [`ConnectionString::parse_checked`]'s.
    pub(crate) fn parse_tls(
        &self,
        field: String,
        node: &str,
        tls: &TlsSettings,
    ) -> Result<(tokio_postgres::Config, NodeTls), ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidConnectionString {
            field: field.clone(),
            node: node.to_owned(),
            reason: self.scrub(&reason),
        };
        let (rest, params) = sslmode::strip(self.0.expose_secret()).map_err(invalid)?;
        let config =
            tokio_postgres::Config::from_str(&rest).map_err(|error| invalid(reason_of(&error)))?;
        let tls = sslmode::resolve(params, tls).map_err(invalid)?;
        Ok((config, tls))
    }

    /// `text` with the password, if one can be found, replaced by `_`.
    fn scrub(&self, text: &str) -> String {
        let secret = self.0.expose_secret();
        let in_url = secret
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password.to_owned());
        let password = in_url.or_else(|| {
            secret.split_whitespace().find_map(|pair| {
                pair.strip_prefix("password=")
                    .map(|value| value.trim_matches('\'').to_owned())
            })
        });
        match password.filter(|password| !password.is_empty()) {
            Some(password) => text.replace(&password, "_"),
            None => text.to_owned(),
        }
    }

    /// The raw text, password included. Use it only to hand to a client.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<&str> for ConnectionString {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for ConnectionString {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(config) = self.parse() else {
            return f.write_str("ConnectionString(<unparsable, redacted>)");
        };
        let hosts: Vec<String> = config.get_hosts().iter().map(host_text).collect();
        f.debug_struct("ConnectionString")
            .field("hosts", &hosts)
            .field("ports", &config.get_ports())
            .field("user", &config.get_user())
            .field("dbname", &config.get_dbname())
            .field("password", &config.get_password().map(|_| Redacted))
            .finish()
    }
}

/// tokio-postgres's message and its cause: "invalid connection string"
/// alone says nothing.
fn reason_of(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => cause.to_string(),
        None => error.to_string(),
    }
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("_")
    }
}

fn host_text(host: &tokio_postgres::config::Host) -> String {
    match host {
        tokio_postgres::config::Host::Tcp(name) => name.clone(),
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    }
}

impl Serialize for ConnectionString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact(self.expose()))
    }
}

/// Written in place of a password.
const REDACTED: &str = "REDACTED";

/// `text` with every password it carries replaced by [`REDACTED`]: the
/// URL's userinfo and `password=` query parameter, or the key-value form's
/// `password` (quoted or not).
fn redact(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_url(rest)),
        None => redact_key_values(text),
    }
}

fn redact_url(rest: &str) -> String {
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some(("password", _)) => format!("password={REDACTED}"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{authority}{tail}")
}

/// Walks `key = value` pairs as libpq does (values may be single-quoted,
/// with backslash escapes) and replaces the password's value.
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            out.push(c);
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        out.push_str(&key);
        while let Some(&c) = chars.peek().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        out.push('=');
        chars.next();
        while let Some(&c) = chars.peek().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        let value = take_value(&mut chars);
        if key == "password" {
            out.push_str(REDACTED);
        } else {
            out.push_str(&value);
        }
    }
    out
}

/// One value, as written (quotes and escapes kept).
fn take_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut value = String::new();
    if chars.peek() == Some(&'\'') {
        value.push('\'');
        chars.next();
        while let Some(c) = chars.next() {
            value.push(c);
            match c {
                '\\' => value.extend(chars.next()),
                '\'' => break,
                _ => {}
            }
        }
        return value;
    }
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            break;
        }
        value.push(c);
        chars.next();
        if c == '\\' {
            value.extend(chars.next());
        }
    }
    value
}

impl<'de> Deserialize<'de> for ConnectionString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        for text in [
            "postgres://app:hunter2@db.example:5432/orders",
            "host=db.example user=app password=hunter2 dbname=orders",
            "postgres://app:hunter2@[not a url",
        ] {
            let shown = format!("{:?}", ConnectionString::new(text));
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn debug_keeps_the_useful_parts() {
        let shown = format!(
            "{:?}",
            ConnectionString::new("postgres://app:pw@db1:6543/orders")
        );
        assert!(shown.contains("db1") && shown.contains("6543") && shown.contains("orders"));
        assert!(shown.contains("password: Some(_)"), "{shown}");
    }

    #[test]
    fn parse_errors_name_the_field_and_keep_the_cause_but_not_the_password() {
        let cases = [
            ("postgres://app:s3cret@db:notaport/orders", "port"),
            ("host=db port=99999999 user=app password=s3cret", "port"),
            ("host=db user=app password='s3cret", "quoted"),
            (
                "host=db user=app password=s3cret sslmode=sometimes",
                "sslmode",
            ),
        ];
        for (text, mentions) in cases {
            let error = ConnectionString::new(text)
                .parse_checked("nodes[1].url".to_owned(), "reader")
                .expect_err(text);
            let shown = format!("{error} {error:?}");
            assert!(
                shown.contains("nodes[1].url") && shown.contains("reader"),
                "{shown}"
            );
            assert!(shown.contains(mentions), "{text}: {shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                !shown.ends_with("invalid connection string: invalid connection string"),
                "{shown}"
            );
        }
    }

    #[test]
    fn serializes_without_the_password() {
        let cases = [
            (
                "postgres://app:hunter2@db1:5432/orders",
                "postgres://app:REDACTED@db1:5432/orders",
            ),
            (
                "postgresql://app:hun@ter2@db1,db2/orders?sslmode=require&password=hunter2",
                "postgresql://app:REDACTED@db1,db2/orders?sslmode=require&password=REDACTED",
            ),
            ("postgres://app@db1/orders", "postgres://app@db1/orders"),
            (
                "host=db1 user=app password=hunter2 dbname=orders",
                "host=db1 user=app password=REDACTED dbname=orders",
            ),
            (
                "host=db1 password = 'hun ter\\'2' user=app",
                "host=db1 password = REDACTED user=app",
            ),
            ("host=db1 user=app", "host=db1 user=app"),
        ];
        for (text, expected) in cases {
            let json = serde_json::to_string(&ConnectionString::new(text)).unwrap();
            let back: ConnectionString = serde_json::from_str(&json).unwrap();
            assert_eq!(back.expose(), expected);
            assert!(
                !json.contains("hunter2") && !json.contains("hun ter"),
                "{json}"
            );
        }
    }
}
