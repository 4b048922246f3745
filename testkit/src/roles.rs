//! Client roles of a test cluster: the [`Flavour`] a cluster's connection
//! strings log in as, least-privilege roles, and built-in functions made to
//! fail for one role as a managed platform's do.

use std::str::FromStr;

use crate::{Cluster, TestkitError};

/// Environment variable choosing the [`Flavour`] of [`Flavour::from_env`].
pub const FLAVOUR_ENV: &str = "PGROUTER_TESTKIT_FLAVOUR";

/// The role a least-privilege cluster's connection strings log in as.
pub const APP_USER: &str = "app";

/// Which role a cluster's [`LocalNode::connection_string`](crate::LocalNode::connection_string)
/// and [`LocalNode::url`](crate::LocalNode::url) log in as. Administration
/// ([`Cluster::psql`], [`LocalNode::pg_config`](crate::LocalNode::pg_config))
/// always uses the superuser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Flavour {
    /// The superuser `postgres`: every function and view answers in full.
    #[default]
    Vanilla,
    /// [`APP_USER`], made by [`Cluster::create_least_privilege_role`]: no
    /// superuser, no `pg_read_all_stats` (so `pg_stat_wal_receiver` shows it
    /// only a `pid`), as the default user of Cloud SQL or RDS. It may create
    /// objects in `public` and use every table the superuser creates there.
    LeastPrivilege,
    /// Emulated Aurora PostgreSQL: [`APP_USER`] as in
    /// [`Flavour::LeastPrivilege`], plus Aurora's surface over the
    /// cluster's real replication state (`rds.extensions` listing
    /// `aurora_stat_utils`, `aurora_replica_status()`,
    /// `aurora_global_db_instance_status()`, `aurora_db_instance_identifier()`,
    /// `aurora_version()`), and the functions Aurora rejects failing for
    /// that role with Aurora's SQLSTATE and message. An emulation, not
    /// Aurora: see the `aurora` module's notes.
    Aurora,
}

impl Flavour {
    /// The flavour named by `PGROUTER_TESTKIT_FLAVOUR` (`vanilla`,
    /// `least-privilege` or `aurora`); [`Flavour::Vanilla`] when it is unset.
    pub fn from_env() -> Result<Self, TestkitError> {
        match std::env::var(FLAVOUR_ENV) {
            Ok(value) => value.parse(),
            Err(std::env::VarError::NotPresent) => Ok(Self::Vanilla),
            Err(std::env::VarError::NotUnicode(_)) => Err(invalid(FLAVOUR_ENV, "not unicode")),
        }
    }

    /// The role connection strings log in as.
    pub fn client_user(self) -> &'static str {
        match self {
            Flavour::Vanilla => crate::node::USER,
            Flavour::LeastPrivilege | Flavour::Aurora => APP_USER,
        }
    }
}

impl FromStr for Flavour {
    type Err = TestkitError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "" | "vanilla" => Ok(Self::Vanilla),
            "least-privilege" => Ok(Self::LeastPrivilege),
            "aurora" => Ok(Self::Aurora),
            other => Err(invalid(
                FLAVOUR_ENV,
                &format!("{other:?} is not vanilla, least-privilege or aurora"),
            )),
        }
    }
}

impl Cluster {
    /// Creates login role `name` on the primary (replicas get it through
    /// replication): no superuser, no `pg_read_all_stats` or other
    /// predefined role, no password (the cluster trusts local connections).
    /// It may create objects in schema `public` and use every table and
    /// sequence the superuser creates there later.
    pub fn create_least_privilege_role(&self, name: &str) -> Result<(), TestkitError> {
        identifier("role", name)?;
        let sql = format!(
            "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS; \
             GRANT USAGE, CREATE ON SCHEMA public TO {name}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {name}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO {name}"
        );
        self.psql(0, &sql).map(drop)
    }

    /// Creates a least-privilege login role `name` (as
    /// [`Cluster::create_least_privilege_role`]) that must give `password`
    /// over TCP: every node's `pg_hba.conf` gets a `host all <name>
    /// 127.0.0.1/32 scram-sha-256` line ahead of the `trust` lines, and is
    /// reloaded. Other roles keep `trust`. Change the password with
    /// [`Cluster::set_password`].
    pub fn create_password_role(&self, name: &str, password: &str) -> Result<(), TestkitError> {
        self.bin("a password role (pg_hba.conf edits)")?;
        self.create_least_privilege_role(name)?;
        self.set_password(name, password)?;
        let line = format!("host all {name} 127.0.0.1/32 scram-sha-256\n");
        for (index, node) in self.nodes.iter().enumerate() {
            let hba = node.data_dir().join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba)?;
            // Truncating keeps the file's owner (postgres when we are root).
            std::fs::write(&hba, format!("{line}{old}"))?;
            if self.is_running(index) {
                let mut cmd = self.pg_ctl(node, "reload")?;
                self.run_logged(&mut cmd, node)?;
            }
        }
        Ok(())
    }

    /// Sets `role`'s password (`ALTER ROLE … PASSWORD`, stored as
    /// SCRAM-SHA-256) on the primary; replicas get it through replication.
    /// Connections already open stay open.
    pub fn set_password(&self, role: &str, password: &str) -> Result<(), TestkitError> {
        identifier("role", role)?;
        if password.is_empty() || password.contains('\0') {
            return Err(invalid("password", "must be non-empty, without NUL"));
        }
        let password = password.replace('\'', "''");
        let sql = format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD '{password}'"
        );
        self.psql(0, &sql).map(drop)
    }

    /// Makes built-in function `pg_catalog.<function>` (every overload) raise
    /// SQLSTATE `sqlstate` with `message` when `role` calls it by its
    /// unqualified name, as a managed platform's unsupported or forbidden
    /// functions do: a function of the same name and signature in schema
    /// `pgrouter_shadow_<role>`, put ahead of `pg_catalog` on the role's
    /// `search_path` (`public, pgrouter_shadow_<role>, pg_catalog`: what the
    /// role creates still goes to `public`). Other roles, and qualified calls, are unaffected.
    /// Done on the primary; replicas get it through replication (the role
    /// picks up its new `search_path` on its next connection).
    pub fn shadow_function(
        &self,
        role: &str,
        function: &str,
        sqlstate: &str,
        message: &str,
    ) -> Result<(), TestkitError> {
        identifier("role", role)?;
        identifier("function", function)?;
        let code_ok = sqlstate.len() == 5
            && sqlstate
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if !code_ok {
            return Err(invalid("sqlstate", "must be 5 digits or capital letters"));
        }
        if message.contains('$') || message.contains('\0') {
            return Err(invalid("message", "must not contain '$' or NUL"));
        }
        let message = message.replace('\'', "''");
        let sql = format!(
            "DO $pgrouter$
            DECLARE
              f record;
              schema text := 'pgrouter_shadow_{role}';
              body text := format('BEGIN RAISE EXCEPTION USING ERRCODE = %L, MESSAGE = %L; END',
                                  '{sqlstate}', '{message}');
              found_any boolean := false;
            BEGIN
              EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', schema);
              EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema, '{role}');
              FOR f IN SELECT pg_get_function_arguments(p.oid) AS args,
                              pg_get_function_result(p.oid) AS result
                       FROM pg_proc p
                       WHERE p.pronamespace = 'pg_catalog'::regnamespace
                         AND p.proname = '{function}'
              LOOP
                found_any := true;
                EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                               schema, '{function}', f.args, f.result, body);
              END LOOP;
              IF NOT found_any THEN
                RAISE EXCEPTION 'no function pg_catalog.{function}';
              END IF;
              EXECUTE format('ALTER ROLE %I SET search_path = public, %I, pg_catalog',
                             '{role}', schema);
            END
            $pgrouter$"
        );
        self.psql(0, &sql).map(drop)
    }
}

/// Lower-case SQL identifiers only, so they need no quoting.
fn identifier(what: &'static str, value: &str) -> Result<(), TestkitError> {
    let mut bytes = value.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if first_ok && rest_ok && value.len() < 40 {
        Ok(())
    } else {
        Err(invalid(
            what,
            &format!("{value:?} is not a short lower-case identifier"),
        ))
    }
}

fn invalid(what: &str, reason: &str) -> TestkitError {
    TestkitError::InvalidArgument {
        what: what.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_parse_and_bad_input_is_an_error_naming_the_field() {
        assert_eq!(
            "least-privilege".parse::<Flavour>().ok(),
            Some(Flavour::LeastPrivilege)
        );
        assert_eq!("vanilla".parse::<Flavour>().ok(), Some(Flavour::Vanilla));
        assert_eq!("aurora".parse::<Flavour>().ok(), Some(Flavour::Aurora));
        let error = "rds".parse::<Flavour>().unwrap_err().to_string();
        assert!(error.contains(FLAVOUR_ENV), "{error}");
        assert!(identifier("role", "app_1").is_ok());
        for bad in ["", "App", "1app", "a-b", "a;b", "x'"] {
            let error = identifier("role", bad).unwrap_err().to_string();
            assert!(error.contains("role"), "{error}");
        }
    }
}
