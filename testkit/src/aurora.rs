//! An emulated Aurora PostgreSQL surface over a local cluster's real
//! replication state ([`Flavour::Aurora`](crate::Flavour::Aurora)).
//!
//! - `rds.extensions` (a custom setting in every node's `postgresql.conf`)
//!   lists `aurora_stat_utils`, Aurora's marker;
//! - `aurora_version()`, `aurora_db_instance_identifier()` (the node's
//!   `cluster_name`: `node0`, `node1`, ...);
//! - `aurora_replica_status()`: on a node not in recovery, its own row with
//!   `session_id = 'MASTER_SESSION_ID'` and one row per streaming replica
//!   (`pg_stat_replication`, lag from `replay_lag`); on a replica, the row of
//!   the writer it streams from (found by the WAL receiver's sender port),
//!   while it streams, and its own row, whose `replica_lag_in_msec` is 0 when
//!   it has replayed all it received, else the time since its last replayed
//!   commit;
//! - `aurora_global_db_instance_status()`: the same instances, in region
//!   `local`, with `visibility_lag_in_msec`;
//! - for the client role, the functions Aurora rejects fail as Aurora's do
//!   (SQLSTATE `0A000`, "... is currently not supported in Aurora"; the
//!   insert position with `55000`), through [`Cluster::shadow_function`].
//!
//! What it cannot emulate: a restarted old primary still calls itself the
//! writer (real Aurora never has two), and its WAL positions do compare
//! across nodes (pgrouter ignores them once it sees Aurora).

use crate::roles::APP_USER;
use crate::{Cluster, TestkitError};

/// The `rds.extensions` value every node of an Aurora-flavoured cluster has.
pub(crate) const EXTENSIONS: &str = "aurora_stat_utils,pg_stat_statements";

/// Functions Aurora rejects, with its SQLSTATE and message.
const REJECTED: [(&str, &str, &str); 5] = [
    (
        "pg_stat_get_wal_receiver",
        "0A000",
        "Function pg_stat_get_wal_receiver() is currently not supported in Aurora",
    ),
    (
        "pg_last_wal_receive_lsn",
        "0A000",
        "Function pg_last_wal_receive_lsn() is currently not supported for Aurora",
    ),
    (
        "pg_last_wal_replay_lsn",
        "0A000",
        "Function pg_last_wal_replay_lsn() is currently not supported for Aurora",
    ),
    (
        "pg_last_xact_replay_timestamp",
        "0A000",
        "Function pg_last_xact_replay_timestamp() is currently not supported for Aurora",
    ),
    (
        "pg_current_wal_insert_lsn",
        "55000",
        "wal_level must be set to 'logical'",
    ),
];

const SURFACE: &str = r#"
CREATE TABLE public.aurora_emulation_instances (port int PRIMARY KEY, name text NOT NULL);

CREATE FUNCTION public.aurora_version() RETURNS text
LANGUAGE sql AS $$ SELECT '15.4.emulated'::text $$;

CREATE FUNCTION public.aurora_db_instance_identifier() RETURNS text
LANGUAGE sql AS $$ SELECT pg_catalog.current_setting('cluster_name') $$;

CREATE FUNCTION public.aurora_replica_status()
RETURNS TABLE (server_id text, session_id text, last_update_timestamp timestamptz,
               replica_lag_in_msec double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  -- As Aurora PostgreSQL 13.9 and later: the row of the instance asked has
  -- no last_update_timestamp (NULL); the others have one.
  IF NOT pg_is_in_recovery() THEN
    RETURN QUERY SELECT current_setting('cluster_name'), 'MASTER_SESSION_ID'::text,
                        NULL::timestamptz, NULL::double precision;
    RETURN QUERY SELECT r.application_name::text, r.pid::text, now(),
                        COALESCE(extract(epoch FROM r.replay_lag) * 1000, 0)::double precision
                 FROM pg_stat_replication r;
  ELSE
    RETURN QUERY SELECT i.name, 'MASTER_SESSION_ID'::text, now(), NULL::double precision
                 FROM pg_stat_wal_receiver w
                 JOIN public.aurora_emulation_instances i ON i.port = w.sender_port
                 WHERE w.status = 'streaming';
    RETURN QUERY SELECT current_setting('cluster_name'), 'replica-' || pg_backend_pid(),
                        NULL::timestamptz,
                        CASE WHEN pg_last_wal_receive_lsn() IS NOT NULL
                                  AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()
                             THEN 0
                             ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp())
                                           * 1000, 0)
                        END::double precision;
  END IF;
END $$;

CREATE FUNCTION public.aurora_global_db_instance_status()
RETURNS TABLE (server_id text, session_id text, aws_region text,
               visibility_lag_in_msec double precision)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT s.server_id, s.session_id, 'local'::text, s.replica_lag_in_msec
  FROM public.aurora_replica_status() s
$$;
"#;

impl Cluster {
    /// Installs the emulated Aurora surface on the primary (replicas get it
    /// through replication), records every node's port, and makes Aurora's
    /// rejected functions fail for [`APP_USER`].
    pub(crate) fn emulate_aurora(&self) -> Result<(), TestkitError> {
        self.psql(0, SURFACE)?;
        self.record_aurora_instances()?;
        for (function, sqlstate, message) in REJECTED {
            self.shadow_function(APP_USER, function, sqlstate, message)?;
        }
        Ok(())
    }

    /// Records each node's port, so a replica can name the writer it
    /// streams from.
    pub(crate) fn record_aurora_instances(&self) -> Result<(), TestkitError> {
        let values: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("({}, '{}')", node.port(), node.name()))
            .collect();
        let sql = format!(
            "INSERT INTO public.aurora_emulation_instances VALUES {} ON CONFLICT DO NOTHING",
            values.join(", ")
        );
        self.psql(0, &sql).map(drop)
    }
}
