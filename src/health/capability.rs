//! What a node can report beyond its role: [`Capability`], and
//! [`MissingCapability`] for one a node turned out not to have.
//!
//! The role (`pg_is_in_recovery()`) is the one fact every platform gives.
//! Everything else is optional: each node is asked once, on first contact,
//! and a node that answers "unsupported", "not permitted", "no such
//! function" or "not in this state" (see [`degrades`]) simply lacks that
//! fact from then on. It stays healthy; the features that need the fact fall
//! back, as each variant's documentation says.

use std::fmt;

use tokio_postgres::error::SqlState;

use crate::config::Role;

/// An optional fact a node may or may not be able to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// WAL positions: a primary's insert position
    /// (`pg_current_wal_insert_lsn()`), a replica's replayed position
    /// (`pg_last_wal_replay_lsn()`). Lag is derived from them (the
    /// replica's and the primary's). Missing on a replica: causal reads skip
    /// it (they go to the primary) and it has no lag, so it serves no read
    /// with a staleness bound. Missing on the primary: no replica's lag can
    /// be measured, so bounded reads go to the primary.
    Positions,
    /// The node's timeline: a primary's from its current WAL file name
    /// (`pg_walfile_name(pg_current_wal_lsn())`), a replica's from its last
    /// restartpoint (`pg_control_checkpoint()`). Missing: fencing judges
    /// the node by the timelines other nodes show (a lone primary with no
    /// timeline still takes writes; two claimants of which one has no
    /// timeline are a split brain), a replica cannot be found on another
    /// timeline than the primary, and causal tokens carrying a timeline are
    /// not satisfied on it (they go to the primary).
    Timeline,
    /// A replica's WAL receiver (`pg_stat_wal_receiver`): whether it runs,
    /// and the timeline it streams. Missing: a replica that stops receiving
    /// is not marked orphaned (its replay position stops, so it still drops
    /// out of bounded reads as it grows stale), and its timeline comes only
    /// from its last restartpoint.
    Receiver,
    /// A replica's last replayed transaction's commit time
    /// (`pg_last_xact_replay_timestamp()`, on the server's clock). Shown in
    /// status only; routing never uses servers' clocks. Missing: status
    /// shows none.
    ReplayTimestamp,
    /// The cluster's system identifier (`pg_control_system()`). Missing:
    /// fencing cannot tell a rebuilt or upgraded cluster (timeline 1 again)
    /// from the old one, so every node without it is judged as one system.
    SystemId,
    /// The platform's own view of the cluster, asked only where the
    /// platform marks itself (Aurora: `rds.extensions` lists
    /// `aurora_stat_utils`): the writer and each reader's lag from
    /// `aurora_replica_status()`. Missing on Aurora: readers have no lag
    /// figure (no bounded reads there) and a writer is not cross-checked.
    PlatformLag,
    /// Aurora Global's view (`aurora_global_db_instance_status()`):
    /// secondary-region readers' `visibility_lag_in_msec` and `aws_region`.
    /// Missing: a secondary-region reader has no lag figure (no bounded
    /// reads there).
    GlobalLag,
    /// A primary's transaction ids and their fate (`pg_current_xact_id()`
    /// and `pg_xact_status()`, or the older `txid_current()` and
    /// `txid_status()` where those are refused), asked by the transactions
    /// themselves, not the probe. Missing: a transaction on this node whose
    /// `COMMIT` answer is lost is not resolved; it ends as an unknown
    /// outcome.
    CommitStatus,
}

impl Capability {
    /// Every capability, in the order status lists them.
    pub const ALL: [Capability; 8] = [
        Capability::Positions,
        Capability::Timeline,
        Capability::Receiver,
        Capability::ReplayTimestamp,
        Capability::SystemId,
        Capability::PlatformLag,
        Capability::GlobalLag,
        Capability::CommitStatus,
    ];

    /// A short name: `positions`, `timeline`, `receiver`,
    /// `replay-timestamp`, `system-id`, `platform-lag`, `global-lag`,
    /// `commit-status`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Positions => "positions",
            Capability::Timeline => "timeline",
            Capability::Receiver => "receiver",
            Capability::ReplayTimestamp => "replay-timestamp",
            Capability::SystemId => "system-id",
            Capability::PlatformLag => "platform-lag",
            Capability::GlobalLag => "global-lag",
            Capability::CommitStatus => "commit-status",
        }
    }

    /// What a node without this capability does not get, in one sentence.
    pub fn disables(self) -> &'static str {
        match self {
            Capability::Positions => {
                "no WAL positions: causal reads go to the primary, and no lag is measured \
                 (no bounded reads on this node; on the primary, on any replica)"
            }
            Capability::Timeline => {
                "no timeline: fencing uses the other nodes' timelines only, and causal \
                 tokens with a timeline go to the primary"
            }
            Capability::Receiver => {
                "no WAL receiver state: a replica that stops receiving is not marked \
                 orphaned (its growing staleness still counts)"
            }
            Capability::ReplayTimestamp => "no last-replay time in status (informational only)",
            Capability::SystemId => {
                "no system identifier: fencing cannot tell a rebuilt cluster from this one"
            }
            Capability::PlatformLag => {
                "no platform replica status: readers have no lag figure (no bounded reads \
                 there) and the writer is not cross-checked"
            }
            Capability::GlobalLag => {
                "no global status: secondary-region readers have no lag figure (no bounded \
                 reads there)"
            }
            Capability::CommitStatus => {
                "no transaction status functions: a lost COMMIT on this node is not resolved \
                 (an unknown outcome)"
            }
        }
    }
}

/// Its [`name`](Capability::name), as in logs.
impl serde::Serialize for Capability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A capability a node turned out not to have, and why. Shown in
/// [`NodeStatus::missing_capabilities`](crate::status::NodeStatus::missing_capabilities)
/// and logged once at warn level; the node stays healthy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MissingCapability {
    /// The capability.
    pub capability: Capability,
    /// The role the node had when it was asked (the statements differ:
    /// a node may report a fact as a replica and not as a primary).
    pub role: Role,
    /// The SQLSTATE of the server's answer (`0A000`, `42501`, `42883` or
    /// `55000`).
    pub code: String,
    /// The server's message.
    pub message: String,
}

impl MissingCapability {
    /// What its absence disables (see [`Capability::disables`]).
    pub fn disables(&self) -> &'static str {
        self.capability.disables()
    }
}

impl fmt::Display for MissingCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Primary => "primary",
            Role::Replica => "replica",
        };
        write!(
            f,
            "{} unavailable as a {role} ({}: {}); {}",
            self.capability,
            self.code,
            self.message,
            self.disables()
        )
    }
}

/// Whether a server error answering an optional probe statement means the
/// node lacks that capability (rather than that the node is unwell):
/// unsupported (`0A000`, as Aurora answers), not permitted (`42501`, a
/// revoked `EXECUTE`), no such function (`42883`), or not in this state
/// (`55000`, e.g. WAL control functions on a standby or without the
/// `wal_level` they need).
pub(crate) fn degrades(code: &SqlState) -> bool {
    [
        SqlState::FEATURE_NOT_SUPPORTED,
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::UNDEFINED_FUNCTION,
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    ]
    .contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_answers_turn_a_capability_off() {
        let table = [
            ("0A000", true),
            ("42501", true),
            ("42883", true),
            ("55000", true),
            // The node is unwell, or the statement was cut short: the probe
            // fails instead.
            ("57P01", false),
            ("57014", false),
            ("53300", false),
            ("XX000", false),
            ("42P01", false),
            ("P0001", false),
        ];
        for (code, off) in table {
            assert_eq!(degrades(&SqlState::from_code(code)), off, "{code}");
        }
    }

    #[test]
    fn display_says_what_is_missing_why_and_what_it_disables() {
        let missing = MissingCapability {
            capability: Capability::Positions,
            role: Role::Replica,
            code: "42501".to_owned(),
            message: "permission denied for function pg_last_wal_replay_lsn".to_owned(),
        };
        let text = missing.to_string();
        assert!(text.starts_with("positions unavailable as a replica (42501: permission denied"));
        assert!(text.contains("causal reads go to the primary"), "{text}");
        for capability in Capability::ALL {
            assert!(!capability.disables().is_empty());
        }
    }
}
