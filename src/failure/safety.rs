//! What a failed call means, decided without side effects.
//!
//! [`classify`] takes how far the call got ([`Phase`]) and what went wrong
//! ([`Cause`]) and returns a [`Verdict`]: may the call be tried again, is the
//! node at fault, is the connection still good. It never touches shared
//! state: the caller applies the verdict (marks the node suspect, asks for a
//! probe, cancels or discards the connection), so every rule is a row of the
//! table test below.
//!
//! The rules:
//! - nothing sent (checkout, connect, prepare, `BEGIN`), or a connection lost
//!   inside a transaction before `COMMIT`: nothing was applied, retry;
//! - `40001` serialization failure, `40P01` deadlock: the server rolled the
//!   statement back, retry (a transaction as a whole);
//! - `57P01`/`57P02`/`57P03` shutdown and `25006` read-only transaction: the
//!   topology changed; nothing was applied; retry, and probe the node now;
//! - class `23` integrity, `42` syntax/permission, `22` data, anything else
//!   the server rejects, and anything tokio-postgres refuses locally: a retry
//!   gets the same answer, fail;
//! - a connection lost after a statement or `COMMIT` was sent: it may have
//!   been applied; retry only what may safely run twice;
//! - the deadline passed: fail; the node is held responsible (suspect, its
//!   idle connections dropped) only when this attempt had a fair share of
//!   the time ([`fair_share`]) and spent it connecting or preparing; a
//!   statement that runs long (a lock wait) only has the node probed;
//! - a node that refuses new connections (with any SQLSTATE) is suspect,
//!   whatever its probe connection says; the monitor then probes it over a
//!   new connection.

use std::time::Duration;

use deadpool_postgres::{PoolError, TimeoutType};
use tokio_postgres::error::SqlState;

/// How far a call got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a pooled connection (pool wait, connect, idle check).
    /// Nothing was sent.
    Checkout,
    /// A connection in hand, the statement not yet run (prepare, `BEGIN`).
    /// Nothing can have been applied.
    BeforeSend,
    /// Inside an open transaction, before `COMMIT`: statements ran, but
    /// nothing is committed.
    InTransaction,
    /// A statement outside a transaction was sent: it may have been applied.
    Sent,
    /// `COMMIT` was sent: the transaction may have committed.
    CommitSent,
}

impl Phase {
    /// Every phase, for tables.
    #[cfg(test)]
    pub(crate) const ALL: [Phase; 5] = [
        Phase::Checkout,
        Phase::BeforeSend,
        Phase::InTransaction,
        Phase::Sent,
        Phase::CommitSent,
    ];

    /// Whether what was sent may already be applied.
    pub(crate) fn may_be_applied(self) -> bool {
        matches!(self, Phase::Sent | Phase::CommitSent)
    }

    /// Whether a statement may be executing on the server (as opposed to
    /// connecting or preparing).
    fn executing(self) -> bool {
        matches!(self, Phase::InTransaction | Phase::Sent | Phase::CommitSent)
    }

    /// Whether the call holds a connection that a statement may be running on.
    fn holds_connection(self) -> bool {
        !matches!(self, Phase::Checkout)
    }
}

/// How a SQLSTATE bears on retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeKind {
    /// 40001, 40P01: the server rolled it back; run it again.
    Conflict,
    /// 57P01/57P02/57P03, 25006: the node is going away or is not the
    /// primary any more; nothing was applied.
    TopologyChanged,
    /// Everything else: a retry gets the same answer.
    Permanent,
}

/// The kind of a SQLSTATE.
pub(crate) fn code_kind(code: &SqlState) -> CodeKind {
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        CodeKind::Conflict
    } else if *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
    {
        CodeKind::TopologyChanged
    } else {
        CodeKind::Permanent
    }
}

/// What went wrong, reduced to what matters for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Every pooled connection was busy until the pool's wait timeout: says
    /// nothing about the node.
    PoolExhausted,
    /// The pool is closed: the manager is shutting down.
    PoolClosed,
    /// No connection could be made, or an idle one turned out dead (refused,
    /// reset, connect or recycle timeout).
    Unreachable,
    /// The server refused the connection with a SQLSTATE of this kind (a
    /// wrong password, a database that does not exist, "starting up").
    Refused(CodeKind),
    /// The server answered the statement with an error of this kind;
    /// `closed`: and the connection is gone.
    Server {
        /// The SQLSTATE's kind.
        kind: CodeKind,
        /// The connection closed with the error (e.g. a shutdown).
        closed: bool,
    },
    /// The connection broke (closed, I/O error) with no answer.
    Lost,
    /// tokio-postgres refused the call locally (parameter count or types,
    /// row conversion), or the pool was misused.
    Local,
    /// The call's deadline passed during this attempt.
    Deadline {
        /// This attempt had its fair share of the time ([`fair_share`]).
        fair_share: bool,
    },
}

impl Cause {
    /// The cause of a failed checkout.
    pub(crate) fn of_pool(error: &PoolError) -> Self {
        match error {
            PoolError::Timeout(TimeoutType::Wait) => Cause::PoolExhausted,
            PoolError::Closed => Cause::PoolClosed,
            PoolError::NoRuntimeSpecified => Cause::Local,
            PoolError::Backend(source) => match source.code() {
                Some(code) => Cause::Refused(code_kind(code)),
                None => Cause::Unreachable,
            },
            PoolError::Timeout(_) | PoolError::PostCreateHook(_) => Cause::Unreachable,
        }
    }

    /// The cause of a failed statement.
    pub(crate) fn of_postgres(error: &tokio_postgres::Error) -> Self {
        if let Some(code) = error.code() {
            return Cause::Server {
                kind: code_kind(code),
                closed: error.is_closed(),
            };
        }
        let io =
            std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>());
        if error.is_closed() || io {
            Cause::Lost
        } else {
            Cause::Local
        }
    }
}

/// Whether the call may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing was applied, or the server rolled it back: try again.
    Retry,
    /// It may have been applied: try again only if running it twice is
    /// harmless (an idempotent write, any read); otherwise the outcome is
    /// unknown.
    RetryIfIdempotent,
    /// A retry cannot help (or the deadline is spent).
    Fail,
}

impl Action {
    /// Whether a call that may (`idempotent`) or may not run twice is tried again.
    pub(crate) fn allows_retry(self, idempotent: bool) -> bool {
        match self {
            Action::Retry => true,
            Action::RetryIfIdempotent => idempotent,
            Action::Fail => false,
        }
    }
}

/// What the failure says about the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeFault {
    /// Nothing: the statement, the caller or a busy pool.
    Blameless,
    /// The topology may have changed (shutdown, read-only): probe it now,
    /// keep routing to it meanwhile.
    Reprobe,
    /// The node failed: take it out of routing and probe it now.
    Suspect,
    /// The node let a deadline pass: as [`NodeFault::Suspect`], and drop its
    /// idle connections, so the next caller does not wait on each of them.
    Silent,
}

/// What to do with the connection the attempt held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Still good: back to the pool.
    Keep,
    /// Broken or in an unknown state: discard it.
    Discard,
    /// A statement may still be running: cancel it on the server, then
    /// discard the connection.
    Cancel,
    /// A single statement (outside a transaction) whose call was dropped
    /// mid-flight, a losing hedge among them: let it end (bounded), then
    /// back to the pool; if it does not end in time, as `Cancel`.
    Drain,
}

/// The decision for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Whether the call may be tried again.
    pub(crate) action: Action,
    /// What it says about the node.
    pub(crate) node: NodeFault,
    /// What becomes of the connection.
    pub(crate) connection: Fate,
}

/// The decision for a failure of `cause` in `phase`. Pure: see the module docs.
pub(crate) fn classify(phase: Phase, cause: Cause) -> Verdict {
    let verdict = |action, node, connection| Verdict {
        action,
        node,
        connection,
    };
    let closed = |closed: bool| if closed { Fate::Discard } else { Fate::Keep };
    match cause {
        Cause::PoolExhausted => verdict(Action::Retry, NodeFault::Blameless, Fate::Keep),
        Cause::PoolClosed => verdict(Action::Fail, NodeFault::Blameless, Fate::Discard),
        Cause::Unreachable => verdict(Action::Retry, NodeFault::Suspect, Fate::Discard),
        // The node refuses new connections (starting up, too many clients,
        // not accepting connections, a rotated password): whatever its probe
        // connection says, callers cannot use it.
        Cause::Refused(CodeKind::Permanent) => {
            verdict(Action::Fail, NodeFault::Suspect, Fate::Discard)
        }
        Cause::Refused(_) => verdict(Action::Retry, NodeFault::Suspect, Fate::Discard),
        Cause::Server { kind, closed: gone } => {
            let (action, node) = match kind {
                CodeKind::Conflict => (Action::Retry, NodeFault::Blameless),
                CodeKind::TopologyChanged => (Action::Retry, NodeFault::Reprobe),
                CodeKind::Permanent => (Action::Fail, NodeFault::Blameless),
            };
            verdict(action, node, closed(gone))
        }
        Cause::Lost if phase.may_be_applied() => {
            verdict(Action::RetryIfIdempotent, NodeFault::Suspect, Fate::Discard)
        }
        Cause::Lost => verdict(Action::Retry, NodeFault::Suspect, Fate::Discard),
        Cause::Local => verdict(Action::Fail, NodeFault::Blameless, Fate::Keep),
        Cause::Deadline { fair_share } => {
            // Waiting for a connection or a prepare's answer is the node's
            // to give; a statement that runs long (a big query, a lock
            // wait) is not its fault: have it probed, which a silent node
            // fails within the probe timeout.
            let node = match (fair_share, phase.executing()) {
                (false, _) => NodeFault::Blameless,
                (true, false) => NodeFault::Silent,
                (true, true) => NodeFault::Reprobe,
            };
            let connection = if phase.holds_connection() {
                Fate::Cancel
            } else {
                Fate::Discard
            };
            verdict(Action::Fail, node, connection)
        }
    }
}

/// Whether an attempt that ran for `spent` before the deadline passed had a
/// fair share of the time: half the smaller of the probe timeout and the
/// call's budget. A deadline spent mostly elsewhere (an earlier attempt on
/// another node) is no evidence against this node.
pub(crate) fn fair_share(spent: Duration, budget: Duration, probe_timeout: Duration) -> bool {
    spent >= probe_timeout.min(budget) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    use Action::{Fail, Retry, RetryIfIdempotent as IfIdem};
    use CodeKind::{Conflict, Permanent, TopologyChanged};
    use Fate::{Cancel, Discard, Keep};
    use NodeFault::{Blameless, Reprobe, Silent, Suspect};
    use Phase::{BeforeSend, Checkout, CommitSent, InTransaction, Sent};

    /// One row: a cause, and for each phase in `Phase::ALL` order the
    /// expected (action, node, connection).
    type Row = (Cause, [(Action, NodeFault, Fate); 5]);

    /// Same verdict in every phase.
    const fn all(verdict: (Action, NodeFault, Fate)) -> [(Action, NodeFault, Fate); 5] {
        [verdict; 5]
    }

    fn table() -> Vec<Row> {
        let server = |kind, closed| Cause::Server { kind, closed };
        vec![
            (Cause::PoolExhausted, all((Retry, Blameless, Keep))),
            (Cause::PoolClosed, all((Fail, Blameless, Discard))),
            (Cause::Unreachable, all((Retry, Suspect, Discard))),
            (
                Cause::Refused(TopologyChanged),
                all((Retry, Suspect, Discard)),
            ),
            (Cause::Refused(Conflict), all((Retry, Suspect, Discard))),
            (Cause::Refused(Permanent), all((Fail, Suspect, Discard))),
            (server(Conflict, false), all((Retry, Blameless, Keep))),
            (server(Conflict, true), all((Retry, Blameless, Discard))),
            (server(TopologyChanged, false), all((Retry, Reprobe, Keep))),
            (
                server(TopologyChanged, true),
                all((Retry, Reprobe, Discard)),
            ),
            (server(Permanent, false), all((Fail, Blameless, Keep))),
            (server(Permanent, true), all((Fail, Blameless, Discard))),
            (
                Cause::Lost,
                [
                    (Retry, Suspect, Discard),
                    (Retry, Suspect, Discard),
                    (Retry, Suspect, Discard),
                    (IfIdem, Suspect, Discard),
                    (IfIdem, Suspect, Discard),
                ],
            ),
            (Cause::Local, all((Fail, Blameless, Keep))),
            (
                Cause::Deadline { fair_share: true },
                [
                    (Fail, Silent, Discard),
                    (Fail, Silent, Cancel),
                    (Fail, Reprobe, Cancel),
                    (Fail, Reprobe, Cancel),
                    (Fail, Reprobe, Cancel),
                ],
            ),
            (
                Cause::Deadline { fair_share: false },
                [
                    (Fail, Blameless, Discard),
                    (Fail, Blameless, Cancel),
                    (Fail, Blameless, Cancel),
                    (Fail, Blameless, Cancel),
                    (Fail, Blameless, Cancel),
                ],
            ),
        ]
    }

    /// Every cause with every value of its fields. The match below does not
    /// compile when a variant is added: list it here, and give it its row.
    fn every_cause() -> Vec<Cause> {
        fn listed(cause: Cause) {
            match cause {
                Cause::PoolExhausted
                | Cause::PoolClosed
                | Cause::Unreachable
                | Cause::Refused(_)
                | Cause::Server { .. }
                | Cause::Lost
                | Cause::Local
                | Cause::Deadline { .. } => {}
            }
        }
        let kinds = [Conflict, TopologyChanged, Permanent];
        let mut causes = vec![Cause::PoolExhausted, Cause::PoolClosed, Cause::Unreachable];
        causes.extend(kinds.map(Cause::Refused));
        for closed in [false, true] {
            causes.extend(kinds.map(|kind| Cause::Server { kind, closed }));
        }
        causes.extend([Cause::Lost, Cause::Local]);
        causes.extend([true, false].map(|fair_share| Cause::Deadline { fair_share }));
        causes.iter().copied().for_each(listed);
        causes
    }

    /// `Phase::ALL` in order; does not compile when a phase is added.
    fn position(phase: Phase) -> usize {
        match phase {
            Checkout => 0,
            BeforeSend => 1,
            InTransaction => 2,
            Sent => 3,
            CommitSent => 4,
        }
    }

    #[test]
    fn the_table_covers_every_phase_and_every_cause() {
        for (index, phase) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(position(phase), index, "{phase:?}");
        }
        let rows: Vec<Cause> = table().into_iter().map(|(cause, _)| cause).collect();
        for cause in every_cause() {
            assert_eq!(
                rows.iter().filter(|row| **row == cause).count(),
                1,
                "{cause:?}"
            );
        }
        assert_eq!(rows.len(), every_cause().len());
    }

    #[test]
    fn every_phase_against_every_cause() {
        let table = table();
        for (cause, expected) in table {
            for (phase, (action, node, connection)) in Phase::ALL.into_iter().zip(expected) {
                let expected = Verdict {
                    action,
                    node,
                    connection,
                };
                assert_eq!(classify(phase, cause), expected, "{cause:?} in {phase:?}");
            }
        }
    }

    #[test]
    fn only_a_connection_lost_after_sending_is_an_unknown_outcome() {
        let causes = table().into_iter().map(|(cause, _)| cause);
        for cause in causes {
            for phase in Phase::ALL {
                let unknown = classify(phase, cause).action == IfIdem;
                let expected = cause == Cause::Lost && matches!(phase, Sent | CommitSent);
                assert_eq!(unknown, expected, "{cause:?} in {phase:?}");
            }
        }
        // Statements inside a transaction are not committed before COMMIT.
        assert_eq!(classify(InTransaction, Cause::Lost).action, Retry);
        assert_eq!(classify(BeforeSend, Cause::Lost).action, Retry);
        assert_eq!(classify(Checkout, Cause::Lost).action, Retry);
    }

    #[test]
    fn the_node_is_at_fault_only_for_its_own_failures() {
        let at_fault = |phase, cause| matches!(classify(phase, cause).node, Suspect | Silent);
        assert!(at_fault(Sent, Cause::Lost));
        assert!(at_fault(Checkout, Cause::Unreachable));
        assert!(at_fault(BeforeSend, Cause::Deadline { fair_share: true }));
        assert!(
            !at_fault(Sent, Cause::Deadline { fair_share: true }),
            "a lock wait"
        );
        assert!(!at_fault(Sent, Cause::Deadline { fair_share: false }));
        assert!(!at_fault(Checkout, Cause::PoolExhausted));
        let shutdown = Cause::Server {
            kind: TopologyChanged,
            closed: true,
        };
        assert!(!at_fault(Sent, shutdown));
        assert_eq!(classify(Sent, shutdown).node, Reprobe);
    }

    #[test]
    fn idempotence_decides_only_unknown_outcomes() {
        assert!(Retry.allows_retry(false) && Retry.allows_retry(true));
        assert!(!IfIdem.allows_retry(false) && IfIdem.allows_retry(true));
        assert!(!Fail.allows_retry(false) && !Fail.allows_retry(true));
    }

    #[test]
    fn fair_share_is_half_the_smaller_of_probe_timeout_and_budget() {
        let ms = Duration::from_millis;
        // Probe timeout 2 s, budget 10 s: 1 s is the fair share.
        assert!(fair_share(ms(1000), ms(10_000), ms(2000)));
        assert!(!fair_share(ms(999), ms(10_000), ms(2000)));
        // A short budget: half of it.
        assert!(fair_share(ms(150), ms(300), ms(2000)));
        assert!(!fair_share(ms(149), ms(300), ms(2000)));
    }

    #[test]
    fn pool_errors_map_to_causes() {
        assert_eq!(
            Cause::of_pool(&PoolError::Timeout(TimeoutType::Wait)),
            Cause::PoolExhausted
        );
        for timeout in [TimeoutType::Create, TimeoutType::Recycle] {
            assert_eq!(
                Cause::of_pool(&PoolError::Timeout(timeout)),
                Cause::Unreachable
            );
        }
        assert_eq!(Cause::of_pool(&PoolError::Closed), Cause::PoolClosed);
        assert_eq!(Cause::of_pool(&PoolError::NoRuntimeSpecified), Cause::Local);
    }

    #[test]
    fn sqlstate_table() {
        let table = [
            ("40001", Conflict),
            ("40P01", Conflict),
            ("57P01", TopologyChanged),
            ("57P02", TopologyChanged),
            ("57P03", TopologyChanged),
            ("25006", TopologyChanged),
            ("23505", Permanent),
            ("23503", Permanent),
            ("23514", Permanent),
            ("23502", Permanent),
            ("42601", Permanent),
            ("42501", Permanent),
            ("42P01", Permanent),
            ("22012", Permanent),
            ("22P02", Permanent),
            ("57014", Permanent),
            ("28P01", Permanent),
        ];
        for (code, kind) in table {
            assert_eq!(code_kind(&SqlState::from_code(code)), kind, "{code}");
        }
    }
}
