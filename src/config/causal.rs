//! [`CausalSettings`]: how reads in a causal scope see the writes made
//! before them in that scope ([`ReadYourWrites`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// How a read inside a [`causal_scope`](crate::causal::causal_scope) (or an
/// HTTP request under the `CausalLayer`) sees the writes made before it in
/// that scope.
///
/// A position wins where there is one: it is proof, so a read can go to a
/// replica as soon as that replica has replayed the write (usually within
/// milliseconds), and never before. A window is a guess: too short, a
/// replica lagging longer serves a read that misses the write; too long,
/// the primary serves reads a replica could have. Choose the window where
/// no position can be had, or where a guess is what you want.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReadYourWrites {
    /// Each write in the scope fetches its WAL position (the token query
    /// rides behind the statement or `COMMIT`) and advances the scope's
    /// causal token to it: later reads go to a node shown to have replayed
    /// it, else to the primary. Where the primary reports no position that
    /// other nodes can be compared with (Aurora, or a role refused
    /// `pg_current_wal_insert_lsn()`), the write opens the
    /// [`CausalSettings::primary_window`] instead.
    #[default]
    Positions,
    /// Every write in the scope opens the [`CausalSettings::primary_window`]:
    /// reads in the scope go to the primary until it closes, whatever
    /// positions say, and no token query is sent (as Rails'
    /// `DatabaseSelector` does). Reads after the window may miss the write
    /// if a replica lags by more than the window; a
    /// [`Config::max_staleness`](crate::Config::max_staleness) bound guards
    /// against that.
    Window,
}

/// Read-your-writes in a causal scope. See [`ReadYourWrites`] and the
/// [reads guide](crate::guide::reads#read-your-writes-by-time-window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CausalSettings {
    /// Positions where the primary reports them, or always the window.
    /// Default: [`ReadYourWrites::Positions`].
    pub read_your_writes: ReadYourWrites,
    /// How long after a write in a causal scope the scope's reads go to the
    /// primary, when the write leaves no position to wait for (see
    /// [`ReadYourWrites`]): measured on a monotonic clock from the moment
    /// the write's answer (its `COMMIT`'s, for a transaction) came back,
    /// and restarted by every later write in the scope. After it, the
    /// scope's reads use the read strategy again. Set it above the
    /// replicas' usual lag (Aurora's `replica_lag_in_msec` is typically
    /// under 100 ms in one region; an Aurora Global secondary region's
    /// about a second). Greater than zero. Default: 2 s (as Rails'
    /// `DatabaseSelector`).
    #[serde(with = "humantime_serde")]
    pub primary_window: Duration,
}

impl Default for CausalSettings {
    fn default() -> Self {
        Self {
            read_your_writes: ReadYourWrites::default(),
            primary_window: Duration::from_secs(2),
        }
    }
}

impl CausalSettings {
    /// Checks every field; the error names it (`causal.primary_window`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.primary_window.is_zero() {
            return Err(check::invalid(
                "causal.primary_window",
                self.primary_window,
                "must be greater than zero (a write would not be read back)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_window_is_an_error_naming_the_field() {
        let settings = CausalSettings {
            primary_window: Duration::ZERO,
            ..CausalSettings::default()
        };
        match settings.validate() {
            Err(ConfigError::InvalidValue { field, value, .. }) => {
                assert_eq!(
                    (field.as_str(), value.as_str()),
                    ("causal.primary_window", "0ns")
                );
            }
            other => panic!("{other:?}"),
        }
        CausalSettings::default().validate().unwrap();
        let huge = CausalSettings {
            primary_window: Duration::MAX,
            ..CausalSettings::default()
        };
        huge.validate().unwrap();
    }

    #[test]
    fn every_field_is_optional_and_modes_are_kebab_case() {
        let parsed: CausalSettings =
            serde_json::from_str(r#"{"read_your_writes": "window"}"#).unwrap();
        assert_eq!(parsed.read_your_writes, ReadYourWrites::Window);
        assert_eq!(parsed.primary_window, Duration::from_secs(2));
        let parsed: CausalSettings =
            serde_json::from_str(r#"{"primary_window": "500ms"}"#).unwrap();
        assert_eq!(parsed.read_your_writes, ReadYourWrites::Positions);
        assert_eq!(parsed.primary_window, Duration::from_millis(500));
        assert!(serde_json::from_str::<CausalSettings>(r#"{"window": "1s"}"#).is_err());
        assert!(serde_json::from_str::<CausalSettings>(r#"{"read_your_writes": "time"}"#).is_err());
    }
}
