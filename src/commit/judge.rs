//! Did a transaction whose `COMMIT` answer was lost commit? The pure rule.
//!
//! A transaction run by pgrouter learns its identity in the round trip of
//! its `BEGIN` ([`Identity`]): its transaction id, the backend serving it,
//! and the life of the server that assigned the id. When the
//! answer to `COMMIT` is lost, the caller asks nodes about that identity
//! ([`Answer`]) and [`judge`] says what an answer proves.
//!
//! Transaction ids are only unique within one life of a server: a
//! promoted replica, a server restarted, or one reinitialised after a
//! backend crashed (under the same postmaster), hands out again the ids
//! assigned after the last record it replayed. So "committed" is believed
//! only from the life that assigned the id ([`Life`]), or from a marker row the transaction wrote (a client-generated id in
//! an opt-in table, replicated with the transaction itself). "Not
//! committed" is believed from the node that is primary now whatever its
//! life: if our commit were in its history, the id would be marked
//! committed there (a reused id that is aborted, in progress or not yet
//! handed out proves our commit is not in that history either).

/// Which life of a server assigned or answers about an id: its
/// postmaster's start, and the last reset of its shared statistics (a crash
/// restart under the same postmaster resets them), each in microseconds
/// since the Unix epoch (see `commit/dialect.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Life {
    pub(crate) postmaster: i64,
    pub(crate) stats_reset: i64,
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
    /// Which life of the server assigned `xid`.
    pub(crate) life: Life,
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
    /// Which life of the server answers.
    pub(crate) life: Life,
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
    /// the life that assigned it: ask again, or end that session.
    Pending,
    /// This answer proves nothing; ask again or elsewhere.
    Inconclusive,
}

/// What `answer` proves about the transaction `identity`.
pub(crate) fn judge(identity: &Identity, answer: &Answer) -> Outcome {
    let same_life = answer.node == identity.node && answer.life == identity.life;
    if same_life {
        // No restart (nor crash) since the id was assigned: it is ours
        // alone here.
        return match answer.status {
            XactStatus::Committed => Outcome::Committed,
            XactStatus::Aborted => Outcome::NotCommitted,
            XactStatus::InProgress => Outcome::Pending,
            // Handed out before, so never "future" here; "unknown" is a
            // status the server no longer keeps.
            XactStatus::Future | XactStatus::Unknown => Outcome::Inconclusive,
        };
    }
    // Another life speaks only for the history that survives: the
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
            life: life(1_000, 900),
            marker: marker.then_some(7),
        }
    }

    fn life(postmaster: i64, stats_reset: i64) -> Life {
        Life {
            postmaster,
            stats_reset,
        }
    }

    /// An answer from node 0's same life.
    fn same(status: XactStatus) -> Answer {
        Answer {
            node: 0,
            life: life(1_000, 900),
            writable: true,
            elected: true,
            status,
            marker: None,
        }
    }

    #[test]
    fn the_assigning_life_is_believed_on_every_status() {
        use Outcome::*;
        let expected = [Committed, NotCommitted, Pending, Inconclusive, Inconclusive];
        for (status, outcome) in ALL_STATUSES.into_iter().zip(expected) {
            assert_eq!(
                judge(&identity(false), &same(status)),
                outcome,
                "{status:?}"
            );
            // A marker adds nothing the assigning life does not know,
            // and its absence there means "not yet committed", not "never".
            let with_marker = Answer {
                marker: Some(false),
                ..same(status)
            };
            assert_eq!(judge(&identity(true), &with_marker), outcome, "{status:?}");
        }
    }

    #[test]
    fn another_life_never_proves_a_commit_by_transaction_id_alone() {
        // The same node after a restart, the same postmaster after a crash
        // (its statistics reset), and a promoted replica.
        let lives = [
            (0, life(2_000, 900)),
            (0, life(1_000, 1_500)),
            (1, life(1_000, 900)),
            (1, life(5_000, 5_000)),
        ];
        for (node, life) in lives {
            for status in ALL_STATUSES {
                let answer = Answer {
                    node,
                    life,
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
                    life: life(5_000, 5_000),
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
                        life: life(5_000, 5_000),
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
