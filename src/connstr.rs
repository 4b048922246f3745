//! A PostgreSQL connection string that keeps its password out of logs.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;

/// A connection string, in URL form (`postgres://user:pass@host:5432/db`) or
/// key-value form (`host=… port=… user=… password=…`).
///
/// The text is held as a [`SecretString`]: it is zeroed on drop, and its
/// `Debug` shows host, port, user and database but never the password.
/// It serializes back to the original text so a configuration round-trips.
#[derive(Clone)]
pub struct ConnectionString(SecretString);

impl ConnectionString {
    /// Wraps a connection string. Nothing is checked here; see
    /// [`Config::validate`](crate::Config::validate).
    pub fn new(text: impl Into<String>) -> Self {
        Self(SecretString::from(text.into()))
    }

    /// Parses the text into a `tokio_postgres::Config`.
    pub fn parse(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        tokio_postgres::Config::from_str(self.0.expose_secret())
    }

    /// [`ConnectionString::parse`], with a [`ConfigError`] that names
    /// `field` and `node` and carries the parser's reason (never the text,
    /// which may hold a password).
    pub(crate) fn parse_checked(
        &self,
        field: String,
        node: &str,
    ) -> Result<tokio_postgres::Config, ConfigError> {
        self.parse()
            .map_err(|error| ConfigError::InvalidConnectionString {
                field,
                node: node.to_owned(),
                reason: self.scrub(&reason_of(&error)),
            })
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
        serializer.serialize_str(self.expose())
    }
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
    fn serializes_to_the_original_text() {
        let text = "postgres://app:pw@db1/orders";
        let json = serde_json::to_string(&ConnectionString::new(text)).unwrap();
        let back: ConnectionString = serde_json::from_str(&json).unwrap();
        assert_eq!(back.expose(), text);
    }
}
