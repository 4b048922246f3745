//! Which functions a node answers resolution's questions with, learnt per
//! node, and the SQL of each.
//!
//! PostgreSQL 13 and later name a transaction's 64-bit id
//! `pg_current_xact_id()` and its fate `pg_xact_status()`; 10 to 12 (and
//! servers or roles that refuse the newer names) have `txid_current()` and
//! `txid_status()`, the same values. A node starts on the newer functions;
//! one that answers "unsupported", "not permitted" or "no such function"
//! (see [`degrades`]) steps down to the older ones, then to none: its
//! transactions run without resolution (a lost `COMMIT` there is an unknown
//! outcome), and [`status()`](crate::DatabaseManager::status) lists
//! [`Capability::CommitStatus`] among the node's missing capabilities.

use std::sync::{Mutex, PoisonError};

use crate::config::Role;
use crate::health::capability::{degrades, Capability, MissingCapability};

/// How a node is asked about transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `pg_current_xact_id()`, `pg_xact_status()` (PostgreSQL 13+).
    Xact,
    /// `txid_current()`, `txid_status()` (PostgreSQL 10+).
    Txid,
    /// Neither: the node's transactions are not resolved.
    Off,
}

impl Dialect {
    /// The one to try when this one is refused.
    fn next(self) -> Dialect {
        match self {
            Dialect::Xact => Dialect::Txid,
            Dialect::Txid | Dialect::Off => Dialect::Off,
        }
    }
}

/// Which life of a server this is: its postmaster's start and the last
/// reset of its shared statistics, in microseconds since the Unix epoch.
/// A backend crash reinitialises the server under the same postmaster, and
/// crash recovery may hand out again the transaction ids that were not
/// flushed; it also discards the statistics, which sets their reset time
/// (so does `pg_stat_reset_shared()`, which then only costs a resolution).
const LIFE: &str = "(extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint, \
    coalesce((extract(epoch FROM pg_stat_get_bgwriter_stat_reset_time()) * 1000000)::bigint, 0)";

/// Sent right behind `BEGIN`: the transaction id (assigned now), the
/// session's backend, and the server's life.
fn identity_sql(dialect: Dialect) -> String {
    let xid = match dialect {
        Dialect::Xact => "pg_current_xact_id()::text::bigint",
        Dialect::Txid | Dialect::Off => "txid_current()",
    };
    format!("SELECT {xid}, pg_backend_pid(), {LIFE}")
}

/// Asked of a node about transaction `$1`: whether it is out of recovery,
/// which life of the server answers, and the transaction's status (`future`
/// when the id is not handed out yet there). Only core functions, no WAL
/// position function (which managed platforms may refuse): the causal
/// token of a commit found is asked for separately. A snapshot's `xmax` is
/// the latest *completed* id + 1, so an id at or past it is either not
/// handed out (the status function would raise) or still running: its lock
/// on itself (`pg_locks`, readable by any role) tells which.
fn status_sql(dialect: Dialect) -> String {
    let (id, xmax, locked, status) = match dialect {
        Dialect::Xact => (
            "$1::bigint::text::xid8",
            "pg_snapshot_xmax(pg_current_snapshot())",
            "xid($1::bigint::text::xid8)",
            "pg_xact_status($1::bigint::text::xid8)",
        ),
        Dialect::Txid | Dialect::Off => (
            "$1::bigint",
            "txid_snapshot_xmax(txid_current_snapshot())",
            "($1::bigint % 4294967296)::text::xid",
            "txid_status($1::bigint)",
        ),
    };
    format!(
        "SELECT NOT pg_is_in_recovery(), {LIFE}, \
        CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN {id} >= {xmax} THEN \
                CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' \
                    AND transactionid = {locked}) \
                THEN 'in progress' ELSE 'future' END \
            ELSE {status} END"
    )
}

/// The SQL a resolved transaction runs, fixed by the configuration, and
/// what each node was learnt to accept.
#[derive(Debug)]
pub(crate) struct OutcomeSql {
    /// [`identity_sql`], newer and older.
    identity: [String; 2],
    /// [`status_sql`] (plus, with a marker table, whether marker `$2` is
    /// there), newer and older.
    status: [String; 2],
    /// Inserts marker `$1` into the marker table.
    pub(crate) insert_marker: Option<String>,
    /// Deletes markers older than `$1` seconds.
    pub(crate) prune: Option<String>,
    /// Per node: what it was learnt to accept.
    learnt: Box<[Mutex<Learnt>]>,
}

/// What one node was learnt to accept.
#[derive(Debug)]
struct Learnt {
    dialect: Dialect,
    /// Why resolution is off there.
    missing: Option<MissingCapability>,
}

impl OutcomeSql {
    /// The SQL for `marker_table`, every one of `nodes` nodes on the newer
    /// functions until it refuses them.
    pub(crate) fn new(marker_table: Option<&str>, nodes: usize) -> Self {
        let status = |dialect| match marker_table {
            Some(table) => format!(
                "{}, EXISTS (SELECT 1 FROM {table} WHERE id = $2::text)",
                status_sql(dialect)
            ),
            None => status_sql(dialect),
        };
        Self {
            identity: [identity_sql(Dialect::Xact), identity_sql(Dialect::Txid)],
            status: [status(Dialect::Xact), status(Dialect::Txid)],
            insert_marker: marker_table
                .map(|table| format!("INSERT INTO {table} (id) VALUES ($1)")),
            prune: marker_table.map(|table| {
                format!("DELETE FROM {table} WHERE written < now() - make_interval(secs => $1)")
            }),
            learnt: (0..nodes)
                .map(|_| {
                    Mutex::new(Learnt {
                        dialect: Dialect::Xact,
                        missing: None,
                    })
                })
                .collect(),
        }
    }

    /// Node `node`'s dialect now.
    pub(crate) fn dialect(&self, node: usize) -> Dialect {
        self.learnt.get(node).map_or(Dialect::Off, |learnt| {
            learnt
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .dialect
        })
    }

    /// The identity query in `dialect` (`None` when off).
    pub(crate) fn identity(&self, dialect: Dialect) -> Option<&str> {
        match dialect {
            Dialect::Xact => Some(&self.identity[0]),
            Dialect::Txid => Some(&self.identity[1]),
            Dialect::Off => None,
        }
    }

    /// The status query in `dialect` (`None` when off).
    pub(crate) fn status(&self, dialect: Dialect) -> Option<&str> {
        match dialect {
            Dialect::Xact => Some(&self.status[0]),
            Dialect::Txid => Some(&self.status[1]),
            Dialect::Off => None,
        }
    }

    /// Node `node` answered a question in `dialect` with `error`: if the
    /// answer means it lacks the functions, it steps down (once per
    /// dialect, however many calls saw it) and `true` says to ask again in
    /// its new dialect.
    pub(crate) fn refused(
        &self,
        node: usize,
        dialect: Dialect,
        error: &tokio_postgres::Error,
    ) -> bool {
        let Some(db) = error.as_db_error().filter(|db| degrades(db.code())) else {
            return false;
        };
        let Some(learnt) = self.learnt.get(node) else {
            return false;
        };
        let mut learnt = learnt.lock().unwrap_or_else(PoisonError::into_inner);
        if learnt.dialect == dialect {
            learnt.dialect = dialect.next();
            let missing = MissingCapability {
                capability: Capability::CommitStatus,
                role: Role::Primary,
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
            };
            match learnt.dialect {
                Dialect::Off => {
                    tracing::warn!(node, %missing, "lost COMMITs on this node will not be resolved");
                    learnt.missing = Some(missing);
                }
                _ => tracing::info!(node, %missing,
                    "resolving lost COMMITs with txid_current() and txid_status() instead"),
            }
        }
        true
    }

    /// Why node `node` runs without resolution, if it does.
    pub(crate) fn missing(&self, node: usize) -> Option<MissingCapability> {
        let learnt = self.learnt.get(node)?;
        learnt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .missing
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_ask_the_same_questions() {
        let sql = OutcomeSql::new(None, 1);
        let newer = sql.status(Dialect::Xact).unwrap();
        let older = sql.status(Dialect::Txid).unwrap();
        assert!(newer.contains("pg_xact_status") && !newer.contains("txid_"));
        assert!(older.contains("txid_status") && !older.contains("xid8"));
        for text in [newer, older] {
            assert!(text.contains("pg_stat_get_bgwriter_stat_reset_time"));
        }
        assert!(sql
            .identity(Dialect::Txid)
            .unwrap()
            .starts_with("SELECT txid_current()"));
        assert_eq!(sql.identity(Dialect::Off), None);
        let marked = OutcomeSql::new(Some("pgrouter_markers"), 1);
        assert!(marked
            .status(Dialect::Txid)
            .unwrap()
            .ends_with("WHERE id = $2::text)"));
    }
}
