//! A PostgreSQL connection string that keeps its password out of logs.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    fn serializes_to_the_original_text() {
        let text = "postgres://app:pw@db1/orders";
        let json = serde_json::to_string(&ConnectionString::new(text)).unwrap();
        let back: ConnectionString = serde_json::from_str(&json).unwrap();
        assert_eq!(back.expose(), text);
    }
}
