//! Did a transaction whose `COMMIT` answer was lost commit? The pure rule.
//!
//! A transaction run by pgrouter learns its identity in the round trip of
//! its `BEGIN` ([`Identity`]): its transaction id, the backend serving it,
//! and the postmaster that assigned the id (its start time). When the
//! answer to `COMMIT` is lost, the caller asks nodes about that identity
//! ([`Answer`]) and [`judge`] says what an answer proves.
//!
//! Transaction ids are only unique within one postmaster's lifetime: a
//! promoted replica, or a server restarted after a crash, hands out again
//! the ids the old postmaster assigned after the last record it replayed.
//! So "committed" is believed only from the postmaster that assigned the
//! id, or from a marker row the transaction wrote (a client-generated id in
//! an opt-in table, replicated with the transaction itself). "Not
//! committed" is believed from the node that is primary now whatever its
//! postmaster: if our commit were in its history, the id would be marked
//! committed there (a reused id that is aborted, in progress or not yet
//! handed out proves our commit is not in that history either).

/// Asked of a node about transaction `$1`: whether it is out of recovery,
/// which life of the server answers, and the transaction's status (`future`
/// when the id is not handed out yet there). Only core functions, no WAL
/// position function (which managed platforms may refuse): the causal
/// token of a commit found is asked for separately. A snapshot's `xmax` is
/// the latest *completed* id + 1, so an id at or past it is either not
/// handed out (`pg_xact_status` would raise) or still running: its lock on
/// itself (`pg_locks`, readable by any role) tells which.
const STATUS_SQL: &str = "SELECT NOT pg_is_in_recovery(), \
    (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint, \
    CASE WHEN pg_is_in_recovery() THEN NULL \
        WHEN $1::bigint::text::xid8 >= pg_snapshot_xmax(pg_current_snapshot()) THEN \
            CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' \
                AND transactionid = xid($1::bigint::text::xid8)) \
            THEN 'in progress' ELSE 'future' END \
        ELSE pg_xact_status($1::bigint::text::xid8) END";

/// The SQL a resolved transaction runs, fixed by the configuration.
#[derive(Debug)]
pub(crate) struct OutcomeSql {
    /// Inserts marker `$1` into the marker table.
    pub(crate) insert_marker: Option<String>,
    /// [`STATUS_SQL`], plus whether marker `$2` is there.
    pub(crate) status: String,
    /// Deletes markers older than `$1` seconds.
    pub(crate) prune: Option<String>,
}

impl OutcomeSql {
    pub(crate) fn new(marker_table: Option<&str>) -> Self {
        match marker_table {
            Some(table) => Self {
                insert_marker: Some(format!("INSERT INTO {table} (id) VALUES ($1)")),
                status: format!("{STATUS_SQL}, EXISTS (SELECT 1 FROM {table} WHERE id = $2::text)"),
                prune: Some(format!(
                    "DELETE FROM {table} WHERE written < now() - make_interval(secs => $1)"
                )),
            },
            None => Self {
                insert_marker: None,
                status: STATUS_SQL.to_owned(),
                prune: None,
            },
        }
    }
}

/// What a transaction learned about itself in its `BEGIN` round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The node it ran on.
    pub(crate) node: usize,
    /// `pg_current_xact_id()`: epoch and transaction id, 64 bits.
    pub(crate) xid: i64,
    /// `pg_backend_pid()` of the session that ran it.
    pub(crate) pid: i32,
    /// `pg_postmaster_start_time()` in microseconds since the Unix epoch:
    /// which life of the server assigned `xid`.
    pub(crate) postmaster: i64,
    /// The marker row's id, when a marker table is configured.
    pub(crate) marker: Option<u128>,
}

/// `pg_xact_status` of the id on the node asked, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XactStatus {
    /// `committed`.
    Committed,
    /// `aborted` (also a transaction that was in progress when its server
    /// crashed or was promoted).
    Aborted,
    /// `in progress`.
    InProgress,
    /// Not yet handed out on this node (at or past its next id).
    Future,
    /// The status is no longer kept (older than the commit log's horizon),
    /// or the node could not say (in recovery).
    Unknown,
}

impl XactStatus {
    /// The status named by `pg_xact_status` (or by the resolution query's
    /// own `future`).
    pub(crate) fn parse(text: Option<&str>) -> Self {
        match text {
            Some("committed") => XactStatus::Committed,
            Some("aborted") => XactStatus::Aborted,
            Some("in progress") => XactStatus::InProgress,
            Some("future") => XactStatus::Future,
            _ => XactStatus::Unknown,
        }
    }
}

/// One node's answer about an [`Identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The node asked.
    pub(crate) node: usize,
    /// Its postmaster's start time, as in [`Identity::postmaster`].
    pub(crate) postmaster: i64,
    /// The node is out of recovery (it says so itself).
    pub(crate) writable: bool,
    /// pgrouter's view elects this node primary now (not fenced).
    pub(crate) elected: bool,
    /// The id's status there.
    pub(crate) status: XactStatus,
    /// Whether the marker row is there; `None` without a marker table.
    pub(crate) marker: Option<bool>,
}

/// What an [`Answer`] proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The transaction committed.
    Committed,
    /// It did not commit, and never will: running it again is safe.
    NotCommitted,
    /// Its session is still running it (or still finishing `COMMIT`) on
    /// the postmaster that assigned it: ask again, or end that session.
    Pending,
    /// This answer proves nothing; ask again or elsewhere.
    Inconclusive,
}

/// What `answer` proves about the transaction `identity`.
pub(crate) fn judge(identity: &Identity, answer: &Answer) -> Outcome {
    let same_postmaster = answer.node == identity.node && answer.postmaster == identity.postmaster;
    if same_postmaster {
        // No restart since the id was assigned: it is ours alone here.
        return match answer.status {
            XactStatus::Committed => Outcome::Committed,
            XactStatus::Aborted => Outcome::NotCommitted,
            XactStatus::InProgress => Outcome::Pending,
            // Handed out before, so never "future" here; "unknown" is a
            // status the server no longer keeps.
            XactStatus::Future | XactStatus::Unknown => Outcome::Inconclusive,
        };
    }
    // Another postmaster speaks only for the history that survives: the
    // primary pgrouter elects, out of recovery.
    if !(answer.writable && answer.elected) {
        return Outcome::Inconclusive;
    }
    match answer.marker {
        // The marker was written in the transaction: it is there exactly
        // when the transaction's commit is in this node's history.
        Some(true) => Outcome::Committed,
        Some(false) => Outcome::NotCommitted,
        None => match answer.status {
            // Maybe ours replayed, maybe the id handed out again after a
            // promotion or crash: nothing tells them apart without a marker.
            XactStatus::Committed | XactStatus::Unknown => Outcome::Inconclusive,
            // Had our commit been replayed, the id would be committed here.
            XactStatus::Aborted | XactStatus::InProgress | XactStatus::Future => {
                Outcome::NotCommitted
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATUSES: [XactStatus; 5] = [
        XactStatus::Committed,
        XactStatus::Aborted,
        XactStatus::InProgress,
        XactStatus::Future,
        XactStatus::Unknown,
    ];

    fn identity(marker: bool) -> Identity {
        Identity {
            node: 0,
            xid: 740,
            pid: 3162,
            postmaster: 1_000,
            marker: marker.then_some(7),
        }
    }

    /// An answer from node 0's same postmaster.
    fn same(status: XactStatus) -> Answer {
        Answer {
            node: 0,
            postmaster: 1_000,
            writable: true,
            elected: true,
            status,
            marker: None,
        }
    }

    #[test]
    fn the_assigning_postmaster_is_believed_on_every_status() {
        use Outcome::*;
        let expected = [Committed, NotCommitted, Pending, Inconclusive, Inconclusive];
        for (status, outcome) in ALL_STATUSES.into_iter().zip(expected) {
            assert_eq!(
                judge(&identity(false), &same(status)),
                outcome,
                "{status:?}"
            );
            // A marker adds nothing the assigning postmaster does not know,
            // and its absence there means "not yet committed", not "never".
            let with_marker = Answer {
                marker: Some(false),
                ..same(status)
            };
            assert_eq!(judge(&identity(true), &with_marker), outcome, "{status:?}");
        }
    }

    #[test]
    fn another_postmaster_never_proves_a_commit_by_transaction_id_alone() {
        // The same node after a restart, and a promoted replica.
        for (node, postmaster) in [(0, 2_000), (1, 1_000), (1, 5_000)] {
            for status in ALL_STATUSES {
                let answer = Answer {
                    node,
                    postmaster,
                    ..same(status)
                };
                let outcome = judge(&identity(false), &answer);
                assert_ne!(outcome, Outcome::Committed, "{answer:?}");
                assert_ne!(outcome, Outcome::Pending, "{answer:?}");
                let expected = match status {
                    XactStatus::Committed | XactStatus::Unknown => Outcome::Inconclusive,
                    _ => Outcome::NotCommitted,
                };
                assert_eq!(outcome, expected, "{answer:?}");
            }
        }
    }

    #[test]
    fn a_marker_decides_on_the_elected_primary_whatever_the_status_says() {
        for status in ALL_STATUSES {
            for (found, outcome) in [(true, Outcome::Committed), (false, Outcome::NotCommitted)] {
                let answer = Answer {
                    node: 1,
                    postmaster: 5_000,
                    marker: Some(found),
                    ..same(status)
                };
                assert_eq!(judge(&identity(true), &answer), outcome, "{answer:?}");
            }
        }
    }

    #[test]
    fn a_node_that_is_not_the_elected_writable_primary_proves_nothing() {
        for (writable, elected) in [(false, true), (true, false), (false, false)] {
            for status in ALL_STATUSES {
                for marker in [None, Some(true), Some(false)] {
                    let answer = Answer {
                        node: 1,
                        postmaster: 5_000,
                        writable,
                        elected,
                        status,
                        marker,
                    };
                    assert_eq!(
                        judge(&identity(marker.is_some()), &answer),
                        Outcome::Inconclusive,
                        "{answer:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn statuses_parse_from_the_server_words() {
        assert_eq!(XactStatus::parse(Some("committed")), XactStatus::Committed);
        assert_eq!(XactStatus::parse(Some("aborted")), XactStatus::Aborted);
        assert_eq!(
            XactStatus::parse(Some("in progress")),
            XactStatus::InProgress
        );
        assert_eq!(XactStatus::parse(Some("future")), XactStatus::Future);
        assert_eq!(XactStatus::parse(None), XactStatus::Unknown);
        assert_eq!(XactStatus::parse(Some("whatever")), XactStatus::Unknown);
    }
}
