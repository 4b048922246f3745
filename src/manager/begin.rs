//! What `BEGIN` says: a transaction's options (isolation level, read only,
//! deferrable), and the `SET TRANSACTION` statements that must run before
//! the transaction's first query. Pure: the words, and which statements
//! are such settings.

use tokio_postgres::IsolationLevel;

use crate::failure::error::Error;

/// A transaction's options, sent with its `BEGIN` (as tokio-postgres's
/// `TransactionBuilder` sends them); `None` leaves the server's default.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TxOptions {
    pub(crate) isolation: Option<IsolationLevel>,
    pub(crate) read_only: Option<bool>,
    pub(crate) deferrable: Option<bool>,
}

impl TxOptions {
    /// The first option set, by its builder name, if any.
    pub(crate) fn first_set(&self) -> Option<&'static str> {
        if self.isolation.is_some() {
            Some("isolation_level")
        } else if self.read_only.is_some() {
            Some("read_only")
        } else if self.deferrable.is_some() {
            Some("deferrable")
        } else {
            None
        }
    }

    /// Whether the transaction is declared read only: it writes nothing.
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only == Some(true)
    }

    /// `BEGIN` with the options; an isolation level this version does not
    /// know is refused rather than silently left out.
    pub(crate) fn begin_sql(&self) -> Result<String, Error> {
        let mut sql = String::from("BEGIN");
        if let Some(level) = self.isolation {
            sql.push_str(" ISOLATION LEVEL ");
            sql.push_str(match level {
                IsolationLevel::ReadUncommitted => "READ UNCOMMITTED",
                IsolationLevel::ReadCommitted => "READ COMMITTED",
                IsolationLevel::RepeatableRead => "REPEATABLE READ",
                IsolationLevel::Serializable => "SERIALIZABLE",
                _ => {
                    return Err(Error::invalid_argument(
                        "isolation_level",
                        "an isolation level pgrouter does not know",
                    ))
                }
            });
        }
        match self.read_only {
            Some(true) => sql.push_str(" READ ONLY"),
            Some(false) => sql.push_str(" READ WRITE"),
            None => {}
        }
        match self.deferrable {
            Some(true) => sql.push_str(" DEFERRABLE"),
            Some(false) => sql.push_str(" NOT DEFERRABLE"),
            None => {}
        }
        Ok(sql)
    }
}

/// `begin` followed by statements held back until the transaction opens,
/// each on lines of its own (a statement ending in a `--` comment cannot
/// swallow the next).
pub(crate) fn with_held(begin: &str, held: &[String]) -> String {
    let mut sql = begin.to_owned();
    for statement in held {
        sql.push_str(";\n");
        sql.push_str(statement);
        sql.push('\n');
    }
    sql
}

/// Whether `sql` sets the current transaction's characteristics: `SET
/// TRANSACTION …` (isolation level, read only, deferrable, snapshot) or
/// `SET [LOCAL | SESSION] transaction_isolation | transaction_read_only |
/// transaction_deferrable …`. PostgreSQL accepts most of them only before
/// the transaction's first query (else 25001). A multi-statement text
/// counts when its first statement is one.
pub(crate) fn sets_transaction(sql: &str) -> bool {
    let mut words = Words(sql);
    if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("SET")) {
        return false;
    }
    let mut word = words.next();
    if word.is_some_and(|w| w.eq_ignore_ascii_case("LOCAL") || w.eq_ignore_ascii_case("SESSION")) {
        word = words.next();
    }
    let Some(word) = word else {
        return false;
    };
    let lower = word.to_ascii_lowercase();
    lower == "transaction"
        || [
            "transaction_isolation",
            "transaction_read_only",
            "transaction_deferrable",
        ]
        .iter()
        .any(|name| lower == *name || lower.starts_with(&format!("{name}=")))
}

/// Whether a setting statement may make the transaction read only (`READ
/// ONLY`, `transaction_read_only`). Errs towards yes: a yes only costs the
/// transaction its lost-`COMMIT` resolution (a read-only transaction may
/// not insert the outcome marker).
pub(crate) fn may_set_read_only(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    upper.contains("TRANSACTION_READ_ONLY")
        || words
            .windows(2)
            .any(|pair| pair[0] == "READ" && pair[1].starts_with("ONLY"))
}

/// Whether `sql` is one statement (nothing but blanks after a `;`), so it
/// can travel in a simple query with `BEGIN` and give what the extended
/// protocol would have.
pub(crate) fn is_single_statement(sql: &str) -> bool {
    match sql.find(';') {
        Some(at) => sql[at..].chars().all(|c| c == ';' || c.is_whitespace()),
        None => true,
    }
}

/// `sql` from its first word on: leading blanks, `--` and `/* */`
/// comments skipped.
fn skip_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.find('\n').map_or("", |end| &rest[end..]);
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.find("*/").map_or("", |end| &rest[end + 2..]);
        } else {
            return sql;
        }
    }
}

/// The words of a statement's start, split at blanks and comments and
/// before a `;`.
struct Words<'a>(&'a str);

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let rest = skip_comments(self.0);
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ';' || c == '/' || c == '-')
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        self.0 = &rest[end..];
        Some(&rest[..end])
    }
}

#[cfg(test)]
mod tests {
    use tokio_postgres::IsolationLevel;

    use super::{is_single_statement, may_set_read_only, sets_transaction, with_held, TxOptions};

    #[test]
    fn begin_words_the_options_as_tokio_postgres_does() {
        let plain = TxOptions::default();
        assert_eq!(plain.begin_sql().unwrap(), "BEGIN");
        assert_eq!(plain.first_set(), None);
        let all = TxOptions {
            isolation: Some(IsolationLevel::Serializable),
            read_only: Some(true),
            deferrable: Some(true),
        };
        assert_eq!(
            all.begin_sql().unwrap(),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
        );
        assert!(all.is_read_only());
        assert_eq!(all.first_set(), Some("isolation_level"));
        let written = TxOptions {
            isolation: Some(IsolationLevel::RepeatableRead),
            read_only: Some(false),
            deferrable: Some(false),
        };
        assert_eq!(
            written.begin_sql().unwrap(),
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ WRITE NOT DEFERRABLE"
        );
        assert!(!written.is_read_only());
        for (level, words) in [
            (IsolationLevel::ReadUncommitted, "READ UNCOMMITTED"),
            (IsolationLevel::ReadCommitted, "READ COMMITTED"),
        ] {
            let options = TxOptions {
                isolation: Some(level),
                ..TxOptions::default()
            };
            assert_eq!(
                options.begin_sql().unwrap(),
                format!("BEGIN ISOLATION LEVEL {words}")
            );
        }
        let deferrable = TxOptions {
            deferrable: Some(true),
            ..TxOptions::default()
        };
        assert_eq!(deferrable.first_set(), Some("deferrable"));
    }

    #[test]
    fn transaction_settings_are_recognised_and_nothing_else() {
        for sql in [
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "  set transaction read only;",
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            "-- why\nSET TRANSACTION DEFERRABLE",
            "/* a */ SET /* b */ TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET LOCAL transaction_isolation = 'serializable'",
            "SET SESSION transaction_read_only TO on",
            "SET transaction_deferrable=on",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY",
        ] {
            assert!(sets_transaction(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "SET LOCAL statement_timeout = '1s'",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET transactions_are_fun = on",
            "SET",
            "",
            "-- SET TRANSACTION READ ONLY",
            "/* unterminated SET TRANSACTION",
            "INSERT INTO t VALUES (1); SET TRANSACTION READ ONLY",
        ] {
            assert!(!sets_transaction(sql), "{sql}");
        }
    }

    #[test]
    fn read_only_settings_are_caught_erring_towards_yes() {
        assert!(may_set_read_only("SET TRANSACTION READ ONLY"));
        assert!(may_set_read_only(
            "set transaction isolation level serializable, read only, deferrable"
        ));
        assert!(may_set_read_only("SET TRANSACTION READ\n  ONLY"));
        assert!(may_set_read_only("SET LOCAL transaction_read_only = on"));
        // Errs towards yes: costs only the resolution.
        assert!(may_set_read_only("SET transaction_read_only = off"));
        assert!(!may_set_read_only("SET TRANSACTION READ WRITE"));
        assert!(!may_set_read_only(
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
        ));
    }

    #[test]
    fn held_statements_ride_behind_begin_on_lines_of_their_own() {
        let held = vec![
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ -- note".to_owned(),
            "SET TRANSACTION SNAPSHOT '1-2-3'".to_owned(),
        ];
        assert_eq!(
            with_held("BEGIN READ ONLY", &held),
            "BEGIN READ ONLY;\nSET TRANSACTION ISOLATION LEVEL REPEATABLE READ -- note\n\
             ;\nSET TRANSACTION SNAPSHOT '1-2-3'\n"
        );
        assert_eq!(with_held("BEGIN", &[]), "BEGIN");
    }

    #[test]
    fn one_statement_may_end_in_semicolons_and_blanks() {
        assert!(is_single_statement("SET TRANSACTION READ ONLY"));
        assert!(is_single_statement("SET TRANSACTION READ ONLY ; \n"));
        assert!(!is_single_statement("SET TRANSACTION READ ONLY; SELECT 1"));
    }
}
