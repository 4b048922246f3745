//! [`OutcomeSettings`]: how a transaction whose `COMMIT` answer was lost is
//! resolved.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// The shortest marker retention: markers must outlive every resolution.
const MIN_MARKER_RETENTION: Duration = Duration::from_secs(60);

/// How pgrouter finds out whether a transaction whose `COMMIT` answer was
/// lost committed; see the [writes guide](crate::guide::writes#unknown-outcomes-resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutcomeSettings {
    /// Transactions (and [`exactly_once`](crate::WriteBuilder::exactly_once)
    /// writes) learn their transaction id in the round trip of `BEGIN`,
    /// and a lost `COMMIT` is resolved by asking the server within the
    /// call's deadline instead of failing with
    /// [`ErrorKind::OutcomeUnknown`](crate::error::ErrorKind::OutcomeUnknown). Costs one
    /// transaction id per transaction, also for one that writes nothing.
    /// Default: true.
    pub resolve: bool,
    /// A table (`name` or `schema.name`) in which every resolved
    /// transaction also inserts a random id, so that a lost `COMMIT` can be
    /// resolved on a newly promoted primary (or a server restarted after a
    /// crash) too, where a transaction id may have been handed out again.
    /// Create it with [`OutcomeSettings::marker_table_sql`]; the role needs
    /// `INSERT`, `SELECT` and `DELETE` on it. Default: none (a lost
    /// `COMMIT` is resolved only by the server that ran it, or proven
    /// uncommitted by the new primary).
    pub marker_table: Option<String>,
    /// Markers older than this are deleted (by a background task, about
    /// every quarter of it). Keep it above the longest call deadline; at
    /// least 1 min. Default: 1 h.
    #[serde(with = "humantime_serde")]
    pub marker_retention: Duration,
}

impl Default for OutcomeSettings {
    fn default() -> Self {
        Self {
            resolve: true,
            marker_table: None,
            marker_retention: Duration::from_secs(3600),
        }
    }
}

impl OutcomeSettings {
    /// The `CREATE TABLE` statement for [`OutcomeSettings::marker_table`]
    /// (`None` without one): an id column and the time it was written.
    pub fn marker_table_sql(&self) -> Option<String> {
        self.marker_table.as_ref().map(|table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} \
                 (id text PRIMARY KEY, written timestamptz NOT NULL DEFAULT now())"
            )
        })
    }

    /// Checks every field; the error names it (`outcomes.marker_table`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.marker_retention < MIN_MARKER_RETENTION {
            return Err(check::invalid(
                "outcomes.marker_retention",
                self.marker_retention,
                "must be at least 1min",
            ));
        }
        if let Some(table) = &self.marker_table {
            if !is_table_name(table) {
                return Err(ConfigError::InvalidValue {
                    field: "outcomes.marker_table".to_owned(),
                    value: format!("{table:?}"),
                    reason: "must be `name` or `schema.name`, each an unquoted SQL identifier \
                             (a letter or _, then letters, digits or _; at most 63 bytes)",
                });
            }
        }
        Ok(())
    }
}

/// `name` or `schema.name`, plain identifiers: safe to write into SQL as is.
fn is_table_name(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut bytes = part.bytes();
        part.len() <= 63
            && bytes
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match name.split_once('.') {
        Some((schema, table)) => identifier(schema) && identifier(table),
        None => identifier(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_table(table: &str) -> OutcomeSettings {
        OutcomeSettings {
            marker_table: Some(table.to_owned()),
            ..OutcomeSettings::default()
        }
    }

    #[test]
    fn marker_tables_are_plain_identifiers() {
        for good in ["pgrouter_outcomes", "ops.outcomes", "_x1", &"a".repeat(63)] {
            with_table(good)
                .validate()
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "1table",
            "a.b.c",
            "x; DROP TABLE users",
            "\"quoted\"",
            "a.",
            ".b",
            "caf\u{e9}",
            &"a".repeat(64),
        ] {
            let err = with_table(bad).validate().unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidValue { field, .. } if field == "outcomes.marker_table"),
                "{bad}: {err}"
            );
        }
        let short = OutcomeSettings {
            marker_retention: Duration::from_secs(59),
            ..OutcomeSettings::default()
        };
        let err = short.validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::InvalidValue { field, .. } if field == "outcomes.marker_retention")
        );
    }
}
