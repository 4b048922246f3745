//! The probe's statements, and which of them a node can answer.
//!
//! The role comes from `pg_catalog.pg_is_in_recovery()` in a statement of its
//! own: it is the one fact every platform gives, and it is schema-qualified
//! so nothing on a `search_path` can stand in for it. Every other fact is a
//! [`Check`]: one statement each, because PostgreSQL checks `EXECUTE` on
//! every function of a statement before running it (even in a `CASE` branch
//! that will not run), so one revoked or unsupported function would sink
//! every fact sharing its statement.
//!
//! Checks call functions and views by *unqualified* name, resolved through
//! the probe role's `search_path`. `pg_catalog` is searched first unless the
//! `search_path` lists it explicitly later, so on an ordinary role these are
//! the built-ins; a schema placed ahead of `pg_catalog` on purpose (a
//! platform's wrapper, or the test kit's stand-ins that raise a managed
//! platform's SQLSTATE) is what the probe asks.
//!
//! [`Capabilities`] remembers, per node, which checks answered and which
//! answered with a SQLSTATE that means "this node cannot tell you"
//! ([`degrades`]): those are never asked again, and the node stays healthy
//! without the fact.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_postgres::error::SqlState;

use super::aurora;
use crate::causal::lsn::{timeline_of_walfile, Lsn};
use crate::config::Role;
use crate::health::capability::{degrades, Capability, MissingCapability};

/// The role check, in a statement of its own.
pub(crate) const ROLE_SQL: &str = "SELECT pg_catalog.pg_is_in_recovery()";

/// One optional statement of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// A primary's WAL insert position: with `synchronous_commit = off` a
    /// commit is acknowledged before it is flushed, so only the insert
    /// position is sure to cover every acknowledged write.
    PrimaryPosition,
    /// A primary's timeline: the first 8 hex digits of its WAL file name.
    PrimaryTimeline,
    /// A replica's replayed position.
    ReplicaPosition,
    /// A replica's timeline as of its last restartpoint (any role may read
    /// it; it may trail a timeline switch by a checkpoint interval).
    ReplicaTimeline,
    /// Whether a replica's WAL receiver runs (`pg_stat_get_wal_receiver()`,
    /// as `pg_stat_wal_receiver`; its `pid` shows to any role)
    /// and the timeline it streams (hidden without `pg_read_all_stats`).
    Receiver,
    /// A replica's last replayed commit time, as seconds since the epoch.
    ReplayTimestamp,
    /// The cluster's system identifier.
    SystemId,
    /// Whether the node is Aurora: `rds.extensions` lists
    /// `aurora_stat_utils` (raises on no platform). Asked until answered.
    AuroraMarker,
    /// On Aurora: this instance and `aurora_replica_status()`.
    AuroraReplicas,
    /// On Aurora: `aurora_global_db_instance_status()`.
    AuroraGlobal,
}

/// Every check, in a fixed order (their index in [`Capabilities`]).
const CHECKS: [Check; 10] = [
    Check::PrimaryPosition,
    Check::PrimaryTimeline,
    Check::ReplicaPosition,
    Check::ReplicaTimeline,
    Check::Receiver,
    Check::ReplayTimestamp,
    Check::SystemId,
    Check::AuroraMarker,
    Check::AuroraReplicas,
    Check::AuroraGlobal,
];

impl Check {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Check::PrimaryPosition => "SELECT pg_current_wal_insert_lsn()",
            Check::PrimaryTimeline => "SELECT pg_walfile_name(pg_current_wal_lsn())",
            Check::ReplicaPosition => "SELECT pg_last_wal_replay_lsn()",
            Check::ReplicaTimeline => "SELECT timeline_id FROM pg_control_checkpoint()",
            // The function behind `pg_stat_wal_receiver` (the view calls
            // it by OID, out of a search_path's reach): one row, all null
            // when no receiver runs.
            Check::Receiver => {
                "SELECT pid IS NOT NULL, received_tli FROM pg_stat_get_wal_receiver()"
            }
            Check::ReplayTimestamp => "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())",
            Check::SystemId => "SELECT system_identifier FROM pg_control_system()",
            Check::AuroraMarker => aurora::MARKER_SQL,
            Check::AuroraReplicas => aurora::REPLICAS_SQL,
            Check::AuroraGlobal => aurora::GLOBAL_SQL,
        }
    }

    pub(crate) fn capability(self) -> Capability {
        match self {
            Check::PrimaryPosition | Check::ReplicaPosition => Capability::Positions,
            Check::PrimaryTimeline | Check::ReplicaTimeline => Capability::Timeline,
            Check::Receiver => Capability::Receiver,
            Check::ReplayTimestamp => Capability::ReplayTimestamp,
            Check::SystemId => Capability::SystemId,
            // The marker never raises; if a platform made it, nothing to lose.
            Check::AuroraMarker | Check::AuroraReplicas => Capability::PlatformLag,
            Check::AuroraGlobal => Capability::GlobalLag,
        }
    }

    /// Whether it is asked of a node in this state (a primary's functions
    /// raise 55000 on a replica; a replica's facts mean nothing on a
    /// primary).
    pub(crate) fn applies(self, in_recovery: bool) -> bool {
        match self {
            Check::PrimaryPosition | Check::PrimaryTimeline => !in_recovery,
            Check::ReplicaPosition
            | Check::ReplicaTimeline
            | Check::Receiver
            | Check::ReplayTimestamp => in_recovery,
            Check::SystemId | Check::AuroraMarker | Check::AuroraReplicas | Check::AuroraGlobal => {
                true
            }
        }
    }

    fn index(self) -> usize {
        CHECKS
            .iter()
            .position(|check| *check == self)
            .unwrap_or_default()
    }
}

/// The optional facts one probe learnt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) position: Option<Lsn>,
    /// A primary's WAL-file timeline, or a replica's restartpoint one.
    pub(crate) timeline: Option<u32>,
    /// Whether a replica's WAL receiver runs (`None`: not asked).
    pub(crate) receiving: Option<bool>,
    /// The timeline a replica's WAL receiver streams, when visible.
    pub(crate) received_timeline: Option<u32>,
    pub(crate) replayed_at: Option<SystemTime>,
    pub(crate) system: Option<u64>,
    /// `rds.extensions` marks Aurora.
    pub(crate) aurora_marked: bool,
    /// `aurora_db_instance_identifier()`, when asked.
    pub(crate) aurora_instance: Option<String>,
    /// `aurora_replica_status()` rows as text (see `aurora.rs`).
    pub(crate) aurora_rows: Option<String>,
    /// `aurora_global_db_instance_status()` rows as text.
    pub(crate) aurora_global: Option<String>,
}

impl Facts {
    /// Takes in the first row of `check`'s answer, as text columns.
    pub(crate) fn absorb(&mut self, check: Check, row: &[Option<&str>]) {
        let text = |index: usize| row.get(index).copied().flatten();
        let number = |index: usize| text(index).and_then(|value| value.parse::<u32>().ok());
        match check {
            Check::PrimaryPosition | Check::ReplicaPosition => {
                self.position = text(0).and_then(|value| value.parse().ok());
            }
            Check::PrimaryTimeline => self.timeline = text(0).and_then(timeline_of_walfile),
            Check::ReplicaTimeline => self.timeline = number(0),
            Check::Receiver => {
                self.receiving = Some(text(0) == Some("t"));
                self.received_timeline = number(1);
            }
            Check::ReplayTimestamp => self.replayed_at = text(0).and_then(epoch_seconds),
            Check::SystemId => self.system = text(0).and_then(|value| value.parse().ok()),
            Check::AuroraMarker => self.aurora_marked = aurora::is_marked(text(0)),
            Check::AuroraReplicas => {
                self.aurora_instance = text(0).map(str::to_owned);
                self.aurora_rows = Some(text(1).unwrap_or_default().to_owned());
            }
            Check::AuroraGlobal => self.aurora_global = text(0).map(str::to_owned),
        }
    }
}

/// `1718000000.123456` (seconds since the epoch) as a `SystemTime`.
fn epoch_seconds(text: &str) -> Option<SystemTime> {
    let seconds: f64 = text.parse().ok()?;
    let offset = Duration::try_from_secs_f64(seconds.abs()).ok()?;
    if seconds >= 0.0 {
        SystemTime::UNIX_EPOCH.checked_add(offset)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(offset)
    }
}

/// What a node said to one check so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Answered {
    /// Not asked yet.
    #[default]
    Unknown,
    /// Answered: asked at every probe.
    Yes,
    /// Cannot: never asked again.
    Cannot,
}

/// One node's capabilities, detected on first contact and cached for the
/// manager's life.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capabilities {
    answered: [Answered; CHECKS.len()],
    /// `rds.extensions` marked the node Aurora: its checks are asked.
    aurora: bool,
    /// Every check that cannot be answered, for status; replaced whole.
    missing: Arc<[MissingCapability]>,
}

impl Capabilities {
    /// The checks to send to a node in this state.
    pub(crate) fn to_ask(&self, in_recovery: bool) -> Vec<Check> {
        CHECKS
            .into_iter()
            .filter(|check| check.applies(in_recovery))
            .filter(|check| self.answered[check.index()] != Answered::Cannot)
            .filter(|check| match check {
                Check::AuroraMarker => self.answered[check.index()] == Answered::Unknown,
                Check::AuroraReplicas | Check::AuroraGlobal => self.aurora,
                _ => true,
            })
            .collect()
    }

    /// `rds.extensions` said Aurora: ask Aurora's functions from now on.
    pub(crate) fn marked_aurora(&mut self) {
        self.aurora = true;
    }

    /// Aurora's functions answered: no WAL position compares across its
    /// instances, so positions are off for good (shown in status as
    /// unsupported), whether or not the functions would answer.
    pub(crate) fn confirmed_aurora(&mut self) {
        let checks = [
            (Check::PrimaryPosition, Role::Primary),
            (Check::ReplicaPosition, Role::Replica),
        ];
        for (check, role) in checks {
            if self.answered[check.index()] == Answered::Cannot {
                continue;
            }
            self.answered[check.index()] = Answered::Cannot;
            let mut missing = self.missing.to_vec();
            missing.push(MissingCapability {
                capability: Capability::Positions,
                role,
                code: SqlState::FEATURE_NOT_SUPPORTED.code().to_owned(),
                message: "Aurora: no WAL position is comparable across instances".to_owned(),
            });
            self.missing = missing.into();
        }
    }

    /// The check answered.
    pub(crate) fn answered(&mut self, check: Check) {
        self.answered[check.index()] = Answered::Yes;
    }

    /// The check was answered with `code`: if that means the node cannot
    /// tell (see [`degrades`]), it is off from now on and the new entry is
    /// returned (to log it, once); otherwise `None` (the probe fails).
    pub(crate) fn refused(
        &mut self,
        check: Check,
        in_recovery: bool,
        code: &SqlState,
        message: &str,
    ) -> Option<MissingCapability> {
        if !degrades(code) {
            return None;
        }
        let role = match in_recovery {
            true => Role::Replica,
            false => Role::Primary,
        };
        let entry = MissingCapability {
            capability: check.capability(),
            role,
            code: code.code().to_owned(),
            message: message.to_owned(),
        };
        self.answered[check.index()] = Answered::Cannot;
        let mut missing = self.missing.to_vec();
        missing.push(entry.clone());
        self.missing = missing.into();
        Some(entry)
    }

    /// Every check this node cannot answer, in the order found.
    pub(crate) fn missing(&self) -> Arc<[MissingCapability]> {
        Arc::clone(&self.missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_gets_its_own_checks() {
        let all = Capabilities::default();
        assert_eq!(
            all.to_ask(false),
            [
                Check::PrimaryPosition,
                Check::PrimaryTimeline,
                Check::SystemId,
                Check::AuroraMarker
            ]
        );
        assert_eq!(
            all.to_ask(true),
            [
                Check::ReplicaPosition,
                Check::ReplicaTimeline,
                Check::Receiver,
                Check::ReplayTimestamp,
                Check::SystemId,
                Check::AuroraMarker
            ]
        );
        for check in CHECKS {
            assert_eq!(CHECKS[check.index()], check);
            assert!(!check.sql().contains("CASE"), "one fact per statement");
        }
    }

    #[test]
    fn aurora_is_asked_only_once_marked_and_then_has_no_positions() {
        let mut caps = Capabilities::default();
        caps.answered(Check::AuroraMarker);
        assert!(
            !caps.to_ask(false).contains(&Check::AuroraMarker),
            "asked once"
        );
        assert!(!caps.to_ask(true).contains(&Check::AuroraReplicas));
        caps.marked_aurora();
        for in_recovery in [false, true] {
            let asked = caps.to_ask(in_recovery);
            assert!(asked.contains(&Check::AuroraReplicas));
            assert!(asked.contains(&Check::AuroraGlobal));
        }
        caps.confirmed_aurora();
        caps.confirmed_aurora();
        assert!(!caps.to_ask(false).contains(&Check::PrimaryPosition));
        assert!(!caps.to_ask(true).contains(&Check::ReplicaPosition));
        let missing = caps.missing();
        assert_eq!(missing.len(), 2, "once per role: {missing:?}");
        assert!(missing
            .iter()
            .all(|m| m.capability == Capability::Positions && m.code == "0A000"));

        let mut facts = Facts::default();
        facts.absorb(
            Check::AuroraMarker,
            &[Some("aurora_stat_utils,pg_stat_statements")],
        );
        facts.absorb(Check::AuroraReplicas, &[Some("node1"), None]);
        assert!(facts.aurora_marked);
        assert_eq!(facts.aurora_instance.as_deref(), Some("node1"));
        assert_eq!(facts.aurora_rows.as_deref(), Some(""));
    }

    #[test]
    fn a_degrading_answer_turns_the_check_off_for_good_and_others_fail_the_probe() {
        let mut caps = Capabilities::default();
        caps.answered(Check::ReplicaPosition);
        let refused = caps.refused(
            Check::ReplicaPosition,
            true,
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "permission denied for function pg_last_wal_replay_lsn",
        );
        let entry = refused.expect("42501 turns it off");
        assert_eq!(entry.capability, Capability::Positions);
        assert_eq!(entry.role, Role::Replica);
        assert_eq!(entry.code, "42501");
        assert!(!caps.to_ask(true).contains(&Check::ReplicaPosition));
        // The primary's statement is another one: still asked.
        assert!(caps.to_ask(false).contains(&Check::PrimaryPosition));
        assert_eq!(caps.missing().len(), 1);

        let crash = caps.refused(Check::SystemId, true, &SqlState::ADMIN_SHUTDOWN, "bye");
        assert!(crash.is_none());
        assert!(caps.to_ask(true).contains(&Check::SystemId));
        assert_eq!(caps.missing().len(), 1);
    }

    #[test]
    fn facts_from_text_columns() {
        let mut facts = Facts::default();
        facts.absorb(Check::PrimaryPosition, &[Some("0/3000148")]);
        facts.absorb(Check::PrimaryTimeline, &[Some("000000020000000000000003")]);
        facts.absorb(Check::SystemId, &[Some("7000000000000000001")]);
        assert_eq!(facts.position, Some(Lsn(0x300_0148)));
        assert_eq!(facts.timeline, Some(2));
        assert_eq!(facts.system, Some(7_000_000_000_000_000_001));

        let mut replica = Facts::default();
        replica.absorb(Check::ReplicaPosition, &[None]);
        replica.absorb(Check::ReplicaTimeline, &[Some("3")]);
        replica.absorb(Check::Receiver, &[Some("t"), None]);
        replica.absorb(Check::ReplayTimestamp, &[Some("1700000000.5")]);
        assert_eq!(replica.position, None);
        assert_eq!(replica.timeline, Some(3));
        assert_eq!(replica.receiving, Some(true));
        assert_eq!(replica.received_timeline, None, "hidden from the role");
        let at = replica.replayed_at.expect("a time");
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        assert_eq!(since, Duration::from_millis(1_700_000_000_500));

        // Garbage is no fact, never a panic.
        let mut garbage = Facts::default();
        for check in CHECKS {
            garbage.absorb(check, &[Some("x"), Some("y")]);
            garbage.absorb(check, &[]);
        }
        garbage.absorb(Check::ReplayTimestamp, &[Some("1e400")]);
        garbage.absorb(Check::ReplayTimestamp, &[Some("NaN")]);
        assert_eq!(garbage.position, None);
        assert_eq!(garbage.replayed_at, None);
    }
}
