//! The Aurora dialect: what `aurora_replica_status()` and
//! `aurora_global_db_instance_status()` say about one node, judged as pure
//! functions over their rows.
//!
//! Aurora has no WAL position comparable across instances, so on Aurora the
//! writer and each reader's lag come from these functions instead:
//!
//! - the writer is the instance whose row has `session_id =
//!   'MASTER_SESSION_ID'`; several such rows: the most recently updated
//!   wins; none: a failover is in progress. A node that says it is not in
//!   recovery but is not that writer takes no writes (its probe fails, so it
//!   is not routed to);
//! - a reader's lag is `replica_lag_in_msec` of its own row, or for a
//!   reader of an Aurora Global secondary region, `visibility_lag_in_msec`
//!   of its own row in `aurora_global_db_instance_status()`;
//! - rows not updated for [`STALE_ROW`] are ignored (an instance gone
//!   without its row being removed).
//!
//! Rows arrive as text, one per line, fields separated by `|`, their age in
//! seconds computed on the server's clock (`now() - last_update_timestamp`),
//! so the client's clock never enters into it.

use std::time::Duration;

/// Rows older than this are ignored.
pub(crate) const STALE_ROW: Duration = Duration::from_secs(300);

/// The session id that marks the writer's row.
pub(crate) const WRITER_SESSION: &str = "MASTER_SESSION_ID";

/// The statement that detects Aurora without raising an error anywhere:
/// the `rds.extensions` setting lists `aurora_stat_utils` on Aurora.
pub(crate) const MARKER_SQL: &str = "SELECT current_setting('rds.extensions', true)";

/// The marker, in `rds.extensions`.
const MARKER: &str = "aurora_stat_utils";

/// This instance and the cluster's rows, one statement.
pub(crate) const REPLICAS_SQL: &str = "SELECT aurora_db_instance_identifier(), \
     string_agg(format('%s|%s|%s|%s', server_id, session_id, \
       extract(epoch FROM now() - last_update_timestamp), replica_lag_in_msec), E'\\n') \
     FROM aurora_replica_status()";

/// Aurora Global's rows (every region), one statement.
pub(crate) const GLOBAL_SQL: &str =
    "SELECT string_agg(format('%s|%s|%s|%s', server_id, session_id, \
       aws_region, visibility_lag_in_msec), E'\\n') \
     FROM aurora_global_db_instance_status()";

/// Whether an `rds.extensions` value marks Aurora.
pub(crate) fn is_marked(extensions: Option<&str>) -> bool {
    extensions.is_some_and(|list| list.split(',').any(|item| item.trim() == MARKER))
}

/// One row of `aurora_replica_status()`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplicaRow {
    pub(crate) server_id: String,
    pub(crate) writer: bool,
    /// Time since `last_update_timestamp`, on the server's clock.
    pub(crate) age: Duration,
    pub(crate) lag: Option<Duration>,
}

/// One row of `aurora_global_db_instance_status()`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GlobalRow {
    pub(crate) server_id: String,
    pub(crate) writer: bool,
    pub(crate) region: String,
    pub(crate) lag: Option<Duration>,
}

/// What Aurora says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuroraFacts {
    /// This instance's identifier.
    pub(crate) instance: String,
    /// The writer Aurora names, if any (none: failover in progress).
    pub(crate) writer: Option<String>,
    /// A reader's lag behind the writer, from its own fresh row.
    pub(crate) lag: Option<Duration>,
    /// The AWS region of this instance, from the global status.
    pub(crate) region: Option<String>,
}

/// Parses `aurora_replica_status()` rows; malformed lines are skipped.
pub(crate) fn parse_replica_rows(text: Option<&str>) -> Vec<ReplicaRow> {
    lines(text)
        .filter_map(|fields| {
            let [server_id, session_id, age, lag] = fields.as_slice() else {
                return None;
            };
            Some(ReplicaRow {
                server_id: (*server_id).to_owned(),
                writer: *session_id == WRITER_SESSION,
                // Aurora PostgreSQL 13.9 and later leave the asked
                // instance's own `last_update_timestamp` NULL (an empty
                // field here): that row is current, as AWS's JDBC wrapper
                // also takes it.
                age: match *age {
                    "" => Duration::ZERO,
                    age => seconds(age)?,
                },
                lag: milliseconds(lag),
            })
        })
        .collect()
}

/// Parses `aurora_global_db_instance_status()` rows; malformed lines are
/// skipped.
pub(crate) fn parse_global_rows(text: Option<&str>) -> Vec<GlobalRow> {
    lines(text)
        .filter_map(|fields| {
            let [server_id, session_id, region, lag] = fields.as_slice() else {
                return None;
            };
            Some(GlobalRow {
                server_id: (*server_id).to_owned(),
                writer: *session_id == WRITER_SESSION,
                region: (*region).to_owned(),
                lag: milliseconds(lag),
            })
        })
        .collect()
}

fn lines(text: Option<&str>) -> impl Iterator<Item = Vec<&str>> {
    text.unwrap_or_default()
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.split('|').collect())
}

fn seconds(text: &str) -> Option<Duration> {
    let value: f64 = text.parse().ok()?;
    // A row stamped a little in the future (clock steps) is fresh.
    Duration::try_from_secs_f64(value.max(0.0)).ok()
}

fn milliseconds(text: &str) -> Option<Duration> {
    let value: f64 = text.parse().ok()?;
    (value >= 0.0)
        .then(|| Duration::try_from_secs_f64(value / 1000.0).ok())
        .flatten()
}

/// The writer among fresh rows: the most recently updated of those marked
/// writer; `None` while there is none (a failover in progress).
pub(crate) fn elect_writer(rows: &[ReplicaRow]) -> Option<&ReplicaRow> {
    rows.iter()
        .filter(|row| row.writer && row.age <= STALE_ROW)
        .min_by_key(|row| row.age)
}

/// The instances listed with a fresh row, in the rows' order: what
/// topology discovery follows.
pub(crate) fn listed_instances(rows: &[ReplicaRow]) -> Vec<String> {
    rows.iter()
        .filter(|row| row.age <= STALE_ROW)
        .map(|row| row.server_id.clone())
        .collect()
}

/// A node's facts: its identity, the writer, its lag (own fresh row, or its
/// own global row), its region. `Err` (with the reason) when the node says
/// it is not in recovery but Aurora names another writer or none: it must
/// take no writes.
pub(crate) fn judge(
    in_recovery: bool,
    instance: &str,
    rows: &[ReplicaRow],
    global: &[GlobalRow],
) -> Result<AuroraFacts, String> {
    let writer = elect_writer(rows).map(|row| row.server_id.clone());
    if !in_recovery && writer.as_deref() != Some(instance) {
        return Err(match &writer {
            Some(other) => format!(
                "aurora_replica_status() names {other:?} the writer, not this instance \
                 ({instance:?}), though pg_is_in_recovery() is false"
            ),
            None => "aurora_replica_status() names no writer: a failover is in progress".to_owned(),
        });
    }
    let own_global = global.iter().find(|row| row.server_id == instance);
    let lag = if in_recovery {
        rows.iter()
            .find(|row| row.server_id == instance && !row.writer && row.age <= STALE_ROW)
            .and_then(|row| row.lag)
            .or_else(|| own_global.filter(|row| !row.writer).and_then(|row| row.lag))
    } else {
        None
    };
    Ok(AuroraFacts {
        instance: instance.to_owned(),
        writer,
        lag,
        region: own_global.map(|row| row.region.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, writer: bool, age_s: u64, lag_ms: Option<u64>) -> ReplicaRow {
        ReplicaRow {
            server_id: id.to_owned(),
            writer,
            age: Duration::from_secs(age_s),
            lag: lag_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn the_marker_is_one_item_of_the_list() {
        assert!(is_marked(Some("aurora_stat_utils")));
        assert!(is_marked(Some(
            "pg_stat_statements, aurora_stat_utils,plpgsql"
        )));
        assert!(!is_marked(Some("pg_stat_statements")));
        assert!(!is_marked(Some("not_aurora_stat_utils")));
        assert!(!is_marked(Some("")));
        assert!(!is_marked(None));
    }

    #[test]
    fn the_asked_instance_s_row_without_a_timestamp_is_current() {
        // Aurora 13.9+: the connected writer's own row has no timestamp.
        let rows = parse_replica_rows(Some("w1|MASTER_SESSION_ID||\nr1|abc|0.5|12"));
        assert_eq!(rows[0].age, Duration::ZERO);
        assert_eq!(
            elect_writer(&rows).map(|row| row.server_id.as_str()),
            Some("w1")
        );
        assert!(judge(false, "w1", &rows, &[]).is_ok());
        // A reader's own row without a timestamp still gives its lag.
        let rows = parse_replica_rows(Some("w1|MASTER_SESSION_ID|0.2|\nr1|abc||12"));
        let facts = judge(true, "r1", &rows, &[]).expect("a reader");
        assert_eq!(facts.lag, Some(Duration::from_millis(12)));
    }

    #[test]
    fn only_fresh_rows_list_an_instance() {
        let rows = [
            row("w", true, 0, None),
            row("gone", false, 301, Some(1)),
            row("r1", false, 300, Some(1)),
        ];
        assert_eq!(listed_instances(&rows), ["w", "r1"]);
    }

    #[test]
    fn rows_parse_from_text_and_garbage_is_skipped() {
        let text = "w|MASTER_SESSION_ID|0.5|\nr1|a1b2|1.25|17.5\nbad\nr2|x|nan?|3\n";
        let rows = parse_replica_rows(Some(text));
        assert_eq!(
            rows,
            [
                ReplicaRow {
                    server_id: "w".into(),
                    writer: true,
                    age: Duration::from_millis(500),
                    lag: None
                },
                ReplicaRow {
                    server_id: "r1".into(),
                    writer: false,
                    age: Duration::from_millis(1250),
                    lag: Some(Duration::from_micros(17_500))
                },
            ]
        );
        assert!(parse_replica_rows(None).is_empty());
        let global = parse_global_rows(Some("w|MASTER_SESSION_ID|us-east-1|\nr9|s|eu-west-1|950"));
        assert_eq!(global.len(), 2);
        assert_eq!(global[1].region, "eu-west-1");
        assert_eq!(global[1].lag, Some(Duration::from_millis(950)));
        assert_eq!(parse_global_rows(Some("a|b|c|-1"))[0].lag, None);
    }

    #[test]
    fn the_writer_is_the_most_recently_updated_fresh_writer_row() {
        let rows = [
            row("old", true, 20, None),
            row("new", true, 1, None),
            row("r", false, 0, Some(5)),
        ];
        assert_eq!(
            elect_writer(&rows).map(|r| r.server_id.as_str()),
            Some("new")
        );
        // A writer row not updated for 300 s is ignored.
        let stale = [row("gone", true, 301, None), row("r", false, 0, Some(5))];
        assert_eq!(elect_writer(&stale), None);
        let at_limit = [row("w", true, 300, None)];
        assert_eq!(
            elect_writer(&at_limit).map(|r| r.server_id.as_str()),
            Some("w")
        );
        assert_eq!(elect_writer(&[]), None);
    }

    #[test]
    fn a_claiming_writer_must_be_the_elected_one() {
        let rows = [row("w", true, 0, None), row("r", false, 0, Some(40))];
        let facts = judge(false, "w", &rows, &[]).expect("the writer");
        assert_eq!(facts.writer.as_deref(), Some("w"));
        assert_eq!(facts.lag, None);
        // pg_is_in_recovery() false on another instance: a stale writer.
        let error = judge(false, "r", &rows, &[]).unwrap_err();
        assert!(error.contains("\"w\""), "{error}");
        // No writer at all: failover in progress; readers are fine.
        let none = [row("r", false, 0, Some(40))];
        let error = judge(false, "w", &none, &[]).unwrap_err();
        assert!(error.contains("failover"), "{error}");
        assert!(judge(true, "r", &none, &[]).is_ok());
    }

    #[test]
    fn a_readers_lag_is_its_own_fresh_row_else_its_global_row() {
        let rows = [
            row("w", true, 0, None),
            row("r1", false, 0, Some(40)),
            row("r2", false, 400, Some(1)),
        ];
        let global = [
            GlobalRow {
                server_id: "w".into(),
                writer: true,
                region: "us-east-1".into(),
                lag: None,
            },
            GlobalRow {
                server_id: "far".into(),
                writer: false,
                region: "eu-west-1".into(),
                lag: Some(Duration::from_millis(900)),
            },
        ];
        let r1 = judge(true, "r1", &rows, &global).expect("reader");
        assert_eq!(r1.lag, Some(Duration::from_millis(40)));
        assert_eq!(r1.writer.as_deref(), Some("w"));
        // Its row is stale: no lag figure (no bounded reads there).
        let r2 = judge(true, "r2", &rows, &global).expect("reader");
        assert_eq!(r2.lag, None);
        // A secondary-region reader: not in the local rows, in the global ones.
        let far = judge(true, "far", &rows, &global).expect("reader");
        assert_eq!(far.lag, Some(Duration::from_millis(900)));
        assert_eq!(far.region.as_deref(), Some("eu-west-1"));
    }
}
