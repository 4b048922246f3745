//! The causal token's query: sent right behind a write (or `COMMIT`, or a
//! lost `COMMIT`'s question) on the same connection, and read from its row.

use super::session::{Columns, PgError};
use crate::causal::lsn::{timeline_of_walfile, CausalToken};
use crate::health::capability::degrades;

/// Read right after a write on the same connection: at least the end of
/// the write's commit record, and the timeline it is on (the current WAL
/// file's, which a promotion changes at once).
pub(crate) const TOKEN_SQL: &str =
    "SELECT pg_current_wal_insert_lsn(), pg_walfile_name(pg_current_wal_insert_lsn())";

/// The server refuses the WAL position functions (a managed platform such
/// as Aurora, or a role without the privilege): a write's token then sends
/// reads to the primary, as a node without positions does for routing.
pub(crate) fn position_refused(error: &PgError) -> bool {
    error.code().is_some_and(degrades)
}

/// The causal token in a `TOKEN_SQL` row.
pub(crate) fn token_of(row: &impl Columns) -> Result<CausalToken, PgError> {
    let lsn = row.lsn(0)?;
    let walfile = row.text(1)?;
    Ok(match timeline_of_walfile(walfile) {
        Some(timeline) => CausalToken::on_timeline(timeline, lsn),
        None => CausalToken::new(lsn),
    })
}
